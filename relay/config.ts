// The relay's configuration: where it listens, each service's replicas (if known at start),
// and its memory and time bounds. Parsed and validated once (errors name the field), then
// frozen. A service's replica set can be replaced at runtime by the controller
// (PUT /v1/services/<service>/replicas); a connection keeps the set it opened with. A service
// with no set (none configured, and the controller has not set one yet) gets none borrowed
// from another: its connections wait for one (setWaitMs), then go unmirrored and counted.
import { readFileSync } from "node:fs";
import { NAME, NAME_RULE, parseEndpoint, parseHost, AddressError } from "../config/address.ts";

export interface ReplicaTarget { readonly name: string; readonly address: string }

export interface RelayLimits {
  /** Bytes queued for one replica of one connection and not yet written to its socket. */
  readonly maxLagBytesPerConnection: number;
  /** Bytes queued over all replicas of all connections. */
  readonly maxQueuedBytesTotal: number;
  /** How long a replica connection may take to connect (10 s: a burst of new connections can
   *  overflow a replica's accept queue, and Linux resends a dropped SYN after 1, 3 and 7 s; at
   *  2 s, 818 of 18,000 replica connections of a 9,000-connection burst failed, each taking its
   *  replica out of sync). */
  readonly connectTimeoutMs: number;
  /** How long a finished connection waits at most for its replicas to take the last bytes (one
   *  that takes none for stallTimeoutMs meanwhile is cut loose sooner). A replica that has not
   *  taken them by then missed them (STALLED). */
  readonly finishTimeoutMs: number;
  /** Once a replica took every byte of a finished connection, how long its connection stays open
   *  for the rest of its replies (the reply check); then it is closed whatever they are. */
  readonly replyWaitMs: number;
  /** How long a new connection of a service whose replica set is not known yet waits for the
   *  controller to set it (client bytes wait, bounded by the filter's in-flight bound). */
  readonly setWaitMs: number;
  /** A replica behind by more than a quarter of maxLagBytesPerConnection holds the connection's
   *  stream (backpressure to Envoy, then to the client); one that writes nothing for this long
   *  meanwhile is detached (STALLED), so a stuck replica delays a connection by at most this. */
  readonly stallTimeoutMs: number;
}

/** The HTTP/2 receive windows the relay advertises to Envoy on its gRPC port. Envoy sends a
 *  stream's bytes only within both windows, and a stream the relay holds (not reading: a replica
 *  is behind) gets its window back only once read, so at most streamWindowBytes of it wait in
 *  the relay, unacknowledged (the filter's in-flight bound then holds the client). */
export interface RelayHttp2 {
  /** Per stream (SETTINGS_INITIAL_WINDOW_SIZE): what one client connection may have in flight to
   *  the relay. Node's own default, 64 KiB, costs Envoy a round trip every 64 KiB of a bulk upload. */
  readonly streamWindowBytes: number;
  /** Per connection from Envoy: what all its streams may have in flight together. */
  readonly connectionWindowBytes: number;
}

export interface RelayConfig {
  readonly listen: { readonly host: string; readonly port: number };
  readonly metrics: { readonly host: string; readonly port: number };
  /** Replica sets known at start, by service. */
  readonly services: Readonly<Record<string, readonly ReplicaTarget[]>>;
  readonly limits: RelayLimits;
  readonly http2: RelayHttp2;
  /** An ACK goes out at least this often while something changed. */
  readonly ackIntervalMs: number;
  /** An ACK goes out at once when `received` grew by this much since the last one. */
  readonly ackEveryBytes: number;
  /** Mirror mode: small client writes wait up to this long (ms) to go to each replica together,
   *  in one gathered write (64 KiB gathered go at once; a connection's end flushes). Fewer write
   *  calls and fewer wake-ups of the replica, for a replica up to this much later; 0: every
   *  frame is written at once. Never applies to session mode's members (the client waits for
   *  the leader). */
  readonly replicaWriteDelayMs: number;
  /** The control call (PUT /v1/services/<service>/replicas on the metrics port) needs
   *  `Authorization: Bearer <controlToken>`; without a controlToken the relay refuses every
   *  control call (relay/control-auth.ts). At least 16 characters. The metrics port binds
   *  127.0.0.1 by default. */
  readonly controlToken?: string;
}

export const RELAY_DEFAULTS = Object.freeze({
  listen: Object.freeze({ host: "127.0.0.1", port: 10100 }),
  metrics: Object.freeze({ host: "127.0.0.1", port: 10101 }),
  limits: Object.freeze({ maxLagBytesPerConnection: 4 << 20, maxQueuedBytesTotal: 256 << 20, connectTimeoutMs: 10_000, finishTimeoutMs: 30_000, replyWaitMs: 1000, setWaitMs: 2000, stallTimeoutMs: 500 }),
  http2: Object.freeze({ streamWindowBytes: 4 << 20, connectionWindowBytes: 64 << 20 }),
  ackIntervalMs: 10,
  ackEveryBytes: 64 << 10,
  replicaWriteDelayMs: 1,
});

export class RelayConfigError extends Error {}

/** The shortest controlToken accepted (the lockstep config's relay.controlToken has the same rule). */
export const MIN_CONTROL_TOKEN_LENGTH = 16;


function fail(field: string, message: string): never { throw new RelayConfigError(`relay config: "${field}" ${message}`); }

function host(value: unknown, field: string, fallback: string): string {
  if (value === undefined) return fallback;
  try { return parseHost(value, field); } catch (err) { throw new RelayConfigError(`relay config: ${(err as AddressError).message}`); }
}

function int(value: unknown, field: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) fail(field, `must be a whole number from ${min} to ${max}`);
  return value as number;
}

export function parseReplicas(raw: unknown, field = "replicas"): readonly ReplicaTarget[] {
  if (!Array.isArray(raw)) fail(field, "must be a list of {name, address}");
  const seen = new Set<string>();
  const addresses = new Set<string>();
  return Object.freeze(raw.map((r: any, i: number) => {
    if (typeof r !== "object" || r === null) fail(`${field}[${i}]`, "must be {name, address}");
    if (typeof r.name !== "string" || !NAME.test(r.name)) fail(`${field}[${i}].name`, `must be ${NAME_RULE}`);
    if (seen.has(r.name)) fail(`${field}[${i}].name`, `repeats "${r.name}"`);
    seen.add(r.name);
    let address: string;
    try { address = parseEndpoint(r.address, `${field}[${i}].address`).text; }
    catch (err) { throw new RelayConfigError(`relay config: ${(err as AddressError).message}`); }
    if (addresses.has(address)) fail(`${field}[${i}].address`, `repeats the address ${address}`);
    addresses.add(address);
    return Object.freeze({ name: r.name, address });
  }));
}

function parseServices(raw: unknown): Readonly<Record<string, readonly ReplicaTarget[]>> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("services", 'must be {"<service>": [{name, address}, ...]}');
  const out: Record<string, readonly ReplicaTarget[]> = {};
  for (const [service, replicas] of Object.entries(raw)) {
    if (!NAME.test(service)) fail(`services.${service}`, `: a service name must be ${NAME_RULE}`);
    out[service] = parseReplicas(replicas, `services.${service}`);
  }
  return Object.freeze(out);
}

export function parseRelayConfig(raw: unknown): RelayConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("(top level)", "must be a JSON object");
  const r = raw as Record<string, any>;
  const known = ["listen", "metrics", "services", "limits", "http2", "ackIntervalMs", "ackEveryBytes", "replicaWriteDelayMs", "controlToken"];
  if ("replicas" in r) fail("replicas", 'is gone: give each service its own set, {"services": {"<service>": [{name, address}, ...]}}');
  for (const k of Object.keys(r)) if (!known.includes(k)) fail(k, `is not a known field (known: ${known.join(", ")})`);
  const listen = r.listen ?? {};
  const metrics = r.metrics ?? {};
  const limits = r.limits ?? {};
  const http2 = r.http2 ?? {};
  for (const k of Object.keys(http2)) if (!(k in RELAY_DEFAULTS.http2)) fail(`http2.${k}`, `is not a known setting (known: ${Object.keys(RELAY_DEFAULTS.http2).join(", ")})`);
  for (const k of Object.keys(limits)) if (!(k in RELAY_DEFAULTS.limits)) fail(`limits.${k}`, `is not a known limit (known: ${Object.keys(RELAY_DEFAULTS.limits).join(", ")})`);
  const d = RELAY_DEFAULTS;
  return Object.freeze({
    listen: Object.freeze({ host: host(listen.host, "listen.host", d.listen.host), port: int(listen.port, "listen.port", d.listen.port, 0, 65535) }),
    metrics: Object.freeze({ host: host(metrics.host, "metrics.host", d.metrics.host), port: int(metrics.port, "metrics.port", d.metrics.port, 0, 65535) }),
    services: parseServices(r.services ?? {}),
    limits: Object.freeze({
      // At least 1 MiB: Envoy hands the filter up to 1 MiB per read, and one read is one DATA frame.
      maxLagBytesPerConnection: int(limits.maxLagBytesPerConnection, "limits.maxLagBytesPerConnection", d.limits.maxLagBytesPerConnection, 1 << 20),
      maxQueuedBytesTotal: int(limits.maxQueuedBytesTotal, "limits.maxQueuedBytesTotal", d.limits.maxQueuedBytesTotal, 1 << 20),
      connectTimeoutMs: int(limits.connectTimeoutMs, "limits.connectTimeoutMs", d.limits.connectTimeoutMs, 1),
      finishTimeoutMs: int(limits.finishTimeoutMs, "limits.finishTimeoutMs", d.limits.finishTimeoutMs, 1),
      replyWaitMs: int(limits.replyWaitMs, "limits.replyWaitMs", d.limits.replyWaitMs, 0),
      setWaitMs: int(limits.setWaitMs, "limits.setWaitMs", d.limits.setWaitMs, 0),
      stallTimeoutMs: int(limits.stallTimeoutMs, "limits.stallTimeoutMs", d.limits.stallTimeoutMs, 1),
    }),
    // HTTP/2 windows: from its initial 65,535 bytes to its largest, 2^31 - 1.
    http2: Object.freeze({
      streamWindowBytes: int(http2.streamWindowBytes, "http2.streamWindowBytes", d.http2.streamWindowBytes, 65_535, 2 ** 31 - 1),
      connectionWindowBytes: int(http2.connectionWindowBytes, "http2.connectionWindowBytes", d.http2.connectionWindowBytes, 65_535, 2 ** 31 - 1),
    }),
    ackIntervalMs: int(r.ackIntervalMs, "ackIntervalMs", d.ackIntervalMs, 1),
    ackEveryBytes: int(r.ackEveryBytes, "ackEveryBytes", d.ackEveryBytes, 1),
    replicaWriteDelayMs: int(r.replicaWriteDelayMs, "replicaWriteDelayMs", d.replicaWriteDelayMs, 0, 100),
    ...(r.controlToken === undefined ? {} : { controlToken: typeof r.controlToken === "string" && r.controlToken.length >= MIN_CONTROL_TOKEN_LENGTH ? r.controlToken : fail("controlToken", `must be a string of at least ${MIN_CONTROL_TOKEN_LENGTH} characters`) }),
  });
}

export function loadRelayConfig(path: string): RelayConfig {
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(path, "utf8")); }
  catch (err) { throw new RelayConfigError(`relay config: cannot read ${path}: ${(err as Error).message}`); }
  return parseRelayConfig(raw);
}
