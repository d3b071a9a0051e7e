// The shapes every lockstep component accepts for names and addresses, defined once: service
// and member names, and endpoints. An endpoint is an IP literal and a port ("10.0.0.5:7001",
// "[2001:db8::5]:7001"); host names are refused, because Envoy's EDS takes IP addresses only
// and a name's address can change under a running connection. Every endpoint is kept in one
// canonical spelling (no leading zeros, IPv6 compressed and lower-case, IPv4-mapped IPv6 as
// IPv4), so "127.0.0.1:05840" and Envoy's "127.0.0.1:5840" are the same backend everywhere:
// the config, the API, the relay and the controller compare and render only this form.
import { isIPv4, isIPv6 } from "node:net";

/** A service, member or replica name: it appears in stat names and URLs. */
export const NAME = /^[A-Za-z0-9_-]{1,64}$/;
export const NAME_RULE = "1-64 characters of [A-Za-z0-9_-]";

export class AddressError extends Error {}

export interface Endpoint {
  /** Canonical IP literal (IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
  readonly family: 4 | 6;
  /** Canonical "ip:port" ("[ip]:port" for IPv6). */
  readonly text: string;
}

const MAX_ADDRESS_LENGTH = 64;
/** Looks like a DNS name (labels of letters, digits and inner hyphens), but not like a number. */
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const looksLikeName = (host: string) => HOST_NAME.test(host) && !/^[0-9.]+$/.test(host);

/** Canonical form of an IP literal, or undefined if `host` is not one. */
function canonicalIp(host: string): { ip: string; family: 4 | 6 } | undefined {
  if (isIPv4(host)) {
    // Node accepts only dotted-decimal without leading zeros ("010.0.0.1" is refused: octal in some parsers).
    return { ip: host, family: 4 };
  }
  if (!isIPv6(host) || host.includes("%")) return undefined; // zone ids name an interface of one host
  // WHATWG URL serialises IPv6 as RFC 5952 does: lower case, no leading zeros, longest zero run compressed.
  const ip = new URL(`http://[${host}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(ip);
  if (mapped) {
    const [hi, lo] = [parseInt(mapped[1], 16), parseInt(mapped[2], 16)];
    return { ip: `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`, family: 4 };
  }
  return { ip, family: 6 };
}

function describe(value: unknown): string {
  const s = JSON.stringify(value);
  return s === undefined ? String(value) : s.length > 80 ? `${s.slice(0, 77)}..."` : s;
}

/** An IP literal (for listen and bind addresses), in canonical form. `field` names it in errors. */
export function parseHost(value: unknown, field = "address"): string {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_ADDRESS_LENGTH) {
    throw new AddressError(`"${field}" must be an IP address (got ${describe(value)})`);
  }
  const host = value.startsWith("[") && value.endsWith("]") ? value.slice(1, -1) : value;
  const ip = canonicalIp(host);
  if (!ip) {
    throw new AddressError(looksLikeName(host)
      ? `"${field}" is a host name (${describe(value)}); lockstep takes IP addresses only, as Envoy's EDS does: use e.g. 127.0.0.1`
      : `"${field}" is not an IPv4 or IPv6 address (got ${describe(value)})`);
  }
  return ip.ip;
}

/** Parse "ip:port" ("[ipv6]:port"). Throws AddressError naming `field` and what is wrong. */
export function parseEndpoint(value: unknown, field = "address"): Endpoint {
  if (typeof value !== "string" || value.length === 0 || value.length > MAX_ADDRESS_LENGTH) {
    throw new AddressError(`"${field}" must be "ip:port" of at most ${MAX_ADDRESS_LENGTH} characters (got ${describe(value)})`);
  }
  const m = /^(?:\[([^\]]*)\]|([^:[\]]*)):(\d{1,8})$/.exec(value);
  if (!m) {
    throw new AddressError(isIPv6(value)
      ? `"${field}" needs brackets around an IPv6 address and a port, like "[::1]:7001" (got ${describe(value)})`
      : `"${field}" must be "ip:port", IPv6 as "[ip]:port" (got ${describe(value)})`);
  }
  const host = m[1] ?? m[2];
  const port = Number(m[3]);
  if (port < 1 || port > 65535) throw new AddressError(`"${field}" has port ${m[3]}: a port is 1 to 65535`);
  const ip = canonicalIp(host);
  if (!ip) {
    if (m[1] === undefined && looksLikeName(host)) {
      throw new AddressError(`"${field}" names the host "${host}"; lockstep takes IP addresses only, as Envoy's EDS does: ` +
        `write the address (e.g. "127.0.0.1:${port}" for localhost)`);
    }
    throw new AddressError(`"${field}": ${describe(host)} is not an ${m[1] === undefined ? "IPv4" : "IPv6"} address`);
  }
  return Object.freeze({ host: ip.ip, port, family: ip.family, text: ip.family === 6 ? `[${ip.ip}]:${port}` : `${ip.ip}:${port}` });
}

/** The canonical spelling of an endpoint (throws AddressError if it is not one). */
export function canonicalEndpoint(value: string): string { return parseEndpoint(value).text; }

/** Whether two endpoint spellings name the same backend (false if either is not an endpoint). */
export function sameEndpoint(a: string, b: string): boolean {
  try { return canonicalEndpoint(a) === canonicalEndpoint(b); } catch { return false; }
}

/** Split a canonical endpoint (brackets removed from an IPv6 host). */
export function splitHostPort(address: string): { host: string; port: number } {
  const { host, port } = parseEndpoint(address);
  return { host, port };
}
