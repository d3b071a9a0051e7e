// Whether a replica is the backend a connection's primary points at. Envoy reports the
// primary as "ip:port" ("[ip]:port" for IPv6); replicas may be configured by name, so
// names are resolved once and compared by address.
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import type { ReplicaTarget } from "./config.ts";

const resolved = new Map<string, string>();

function split(address: string): { host: string; port: string } {
  const i = address.lastIndexOf(":");
  return { host: address.slice(0, i).replace(/^\[|\]$/g, "").toLowerCase(), port: address.slice(i + 1) };
}

function canonicalHost(host: string): string {
  if (host === "localhost") return "127.0.0.1";
  if (host.startsWith("::ffff:") && isIP(host.slice(7)) === 4) return host.slice(7);
  return resolved.get(host) ?? host;
}

/** Resolve the replicas' host names now, so sameEndpoint can compare addresses. */
export async function resolveTargets(targets: readonly ReplicaTarget[]): Promise<void> {
  for (const t of targets) {
    const { host } = split(t.address);
    if (isIP(host) || host === "localhost" || resolved.has(host)) continue;
    try { resolved.set(host, (await lookup(host)).address); } catch { /* unresolvable: compared by name */ }
  }
}

export function sameEndpoint(target: ReplicaTarget, primary: string): boolean {
  const a = split(target.address);
  const b = split(primary);
  return a.port === b.port && canonicalHost(a.host) === canonicalHost(b.host);
}
