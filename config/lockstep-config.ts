// The user's description of one replicated service: where clients connect, the primary,
// the replicas, and where the relay listens. Read once from a JSON file, validated with
// messages that name the field, then frozen. The demo, `envoy/` examples and the tests
// all derive their Envoy bootstrap and relay configuration from it.
import { readFileSync } from "node:fs";
import { NAME, NAME_RULE, parseEndpoint, parseHost, AddressError } from "./address.ts";
import { MIN_CONTROL_TOKEN_LENGTH } from "../relay/config.ts";

export interface ReplicaSpec { readonly name: string; readonly address: string }

export interface HealthCheckSpec {
  /** Text sent on each probe ("" : connect only). Envoy and the controller both use it. */
  readonly send: string;
  /** Text the answer must contain. */
  readonly expect: string;
  /** Controller: between two probes of a member. Envoy probes twice as often. */
  readonly intervalMs: number;
  readonly timeoutMs: number;
  /** Controller: failed probes in a row before a member is down (Envoy acts on the first). */
  readonly unhealthyThreshold: number;
  readonly healthyThreshold: number;
}

export interface ControllerSpec {
  /** Where the HTTP API listens (127.0.0.1 unless you mean it). */
  readonly address: string;
  readonly apiPort: number;
  /** Where Envoy fetches endpoints (REST long-poll EDS). */
  readonly xdsPort: number;
  /** The embedded store (one JSON file, replaced atomically), unless `etcd` is set. */
  readonly store: string;
  /** `"store": {"etcd": {...}}` in the file: several controllers share the state in etcd, one
   *  elected to decide (docs/FLEET.md). */
  readonly etcd?: { readonly endpoints: readonly string[]; readonly prefix: string; readonly leaseTtlSeconds: number };
  /** With etcd: this controller's API base URL as the others give it to clients (default
   *  http://<address>:<apiPort>). */
  readonly advertise?: string;
  /** The HTTP (metrics and control) address of every relay of the service, one per Envoy
   *  (empty, the default: this config's relay, <relay.address>:<relay.metricsPort>). */
  readonly relays: readonly string[];
  /** Admin addresses of the Envoys running the service (default: this config's Envoy,
   *  127.0.0.1:<envoy.adminPort>): the controller reads their filters' evidence and their
   *  health-check verdicts there. */
  readonly envoyAdmins: readonly string[];
}

/** How a service's client connections are carried (docs/SESSION.md): "mirror" (the default),
 *  Envoy's tcp_proxy to the primary, the wasm filter copying client bytes to the relay; "session",
 *  Envoy tunnels each connection to the relay, which carries the primary's stream as well, so a
 *  connection survives the primary's death. */
export type ServiceMode = "mirror" | "session";
export const SERVICE_MODES: readonly ServiceMode[] = ["mirror", "session"];

export interface LockstepConfig {
  readonly service: string;
  readonly mode: ServiceMode;
  readonly listener: { readonly address: string; readonly port: number };
  readonly primary: string;
  /** The primary's member name in the controller (default "primary"). */
  readonly primaryName: string;
  readonly healthCheck: HealthCheckSpec;
  /** Compare each replica's replies with the primary's (docs/CONSISTENCY.md); turn off for
   *  services whose replies legitimately differ between instances. Default true. */
  readonly compareReplies: boolean;
  /** With a controller: Envoy takes the primary from its EDS, and it promotes replicas. */
  readonly controller?: ControllerSpec;
  readonly replicas: readonly ReplicaSpec[];
  readonly relay: {
    readonly address: string;
    readonly port: number;
    readonly metricsPort: number;
    /** Relay processes beside this Envoy (default 1): one Node process uses one core, so give it
     *  one per core it may use. Process i listens on port + 2i and metricsPort + 2i; Envoy
     *  spreads client connections over them (round robin), the controller feeds them all. */
    readonly processes: number;
    /** The relay's controlToken (relay/control-auth.ts): the relay takes replica-set changes only
     *  from a caller holding it, and the controller sends it. Without one the relay refuses them. */
    readonly controlToken?: string;
  };
  readonly envoy: {
    readonly adminPort: number;
    readonly wasmPath: string;
    /** Client connections Envoy accepts at once (the overload manager's limit); default derived
     *  from the open-file limit Envoy runs with (config/envoy-bootstrap.ts). */
    readonly maxDownstreamConnections?: number;
  };
  readonly limits: {
    /** Filter: bytes sent to the relay and not yet acknowledged, per connection. */
    readonly maxInflightBytesPerConnection: number;
    /** Filter: the same, summed over one Envoy worker. */
    readonly maxInflightBytesTotal: number;
    /** Relay: bytes queued for one replica of one connection. */
    readonly maxLagBytesPerConnection: number;
    /** Relay: bytes queued for all replicas of all connections. */
    readonly maxQueuedBytesTotal: number;
  };
}

export const DEFAULT_HEALTH_CHECK: HealthCheckSpec = Object.freeze({ send: "", expect: "", intervalMs: 100, timeoutMs: 250, unhealthyThreshold: 2, healthyThreshold: 2 });

export const DEFAULT_LIMITS = Object.freeze({
  maxInflightBytesPerConnection: 4 << 20,
  maxInflightBytesTotal: 64 << 20,
  maxLagBytesPerConnection: 4 << 20,
  maxQueuedBytesTotal: 256 << 20,
});


export class ConfigError extends Error {}

function fail(field: string, message: string): never { throw new ConfigError(`lockstep config: "${field}" ${message}`); }

function port(value: unknown, field: string, fallback?: number): number {
  if (value === undefined && fallback !== undefined) return fallback;
  if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > 65535) fail(field, "must be a port number (0-65535)");
  return value as number;
}

/** An endpoint in its canonical spelling (config/address.ts). */
function endpoint(value: unknown, field: string): string {
  try { return parseEndpoint(value, field).text; } catch (err) { throw new ConfigError(`lockstep config: ${(err as AddressError).message}`); }
}

function ip(value: unknown, field: string, fallback: string): string {
  if (value === undefined) return fallback;
  try { return parseHost(value, field); } catch (err) { throw new ConfigError(`lockstep config: ${(err as AddressError).message}`); }
}

/** Envoy reads up to 1 MiB from a connection at a time: a bound below that detaches on one read. */
export const MIN_BOUND_BYTES = 1 << 20;

function bound(value: unknown, field: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || (value as number) < MIN_BOUND_BYTES) fail(field, `must be a whole number of bytes, at least ${MIN_BOUND_BYTES} (1 MiB, one Envoy read)`);
  return value as number;
}

function whole(value: unknown, field: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) fail(field, `must be a whole number from ${min} to ${max}`);
  return value as number;
}

function text(value: unknown, field: string, fallback: string, max = 256): string {
  if (value === undefined) return fallback;
  if (typeof value !== "string" || value.length > max) fail(field, `must be a string of at most ${max} characters`);
  return value;
}

function parseHealthCheck(raw: unknown): HealthCheckSpec {
  if (raw === undefined) return DEFAULT_HEALTH_CHECK;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("healthCheck", "must be an object");
  const h = raw as Record<string, unknown>;
  for (const k of Object.keys(h)) if (!(k in DEFAULT_HEALTH_CHECK)) fail(`healthCheck.${k}`, `is not a known field (known: ${Object.keys(DEFAULT_HEALTH_CHECK).join(", ")})`);
  const d = DEFAULT_HEALTH_CHECK;
  const spec = {
    send: text(h.send, "healthCheck.send", d.send),
    expect: text(h.expect, "healthCheck.expect", d.expect),
    intervalMs: whole(h.intervalMs, "healthCheck.intervalMs", d.intervalMs, 10, 60_000),
    timeoutMs: whole(h.timeoutMs, "healthCheck.timeoutMs", d.timeoutMs, 10, 60_000),
    unhealthyThreshold: whole(h.unhealthyThreshold, "healthCheck.unhealthyThreshold", d.unhealthyThreshold, 1, 100),
    healthyThreshold: whole(h.healthyThreshold, "healthCheck.healthyThreshold", d.healthyThreshold, 1, 100),
  };
  if (spec.expect && !spec.send) fail("healthCheck.expect", "needs healthCheck.send (an answer to what?)");
  return Object.freeze(spec);
}

/** Lease of the elected controller: a dead leader keeps the others from deciding this long. */
export const DEFAULT_LEASE_TTL_SECONDS = 3;

function parseEtcd(raw: unknown): NonNullable<ControllerSpec["etcd"]> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("controller.store.etcd", "must be an object {endpoints, prefix, leaseTtlSeconds?}");
  const e = raw as Record<string, unknown>;
  const known = ["endpoints", "prefix", "leaseTtlSeconds"];
  for (const k of Object.keys(e)) if (!known.includes(k)) fail(`controller.store.etcd.${k}`, `is not a known field (known: ${known.join(", ")})`);
  if (!Array.isArray(e.endpoints) || e.endpoints.length === 0 || e.endpoints.length > 16
    || e.endpoints.some((u) => typeof u !== "string" || !/^https?:\/\/[^/\s]+$/.test(u))) {
    fail("controller.store.etcd.endpoints", 'must be a list of 1 to 16 etcd client URLs ("http://10.0.0.1:2379")');
  }
  const prefix = text(e.prefix, "controller.store.etcd.prefix", "/lockstep/", 256);
  if (!prefix) fail("controller.store.etcd.prefix", "must not be empty");
  return Object.freeze({
    endpoints: Object.freeze([...(e.endpoints as string[])]), prefix,
    // etcd grants no lease shorter than about 2 s (its election timeout's multiple).
    leaseTtlSeconds: whole(e.leaseTtlSeconds, "controller.store.etcd.leaseTtlSeconds", DEFAULT_LEASE_TTL_SECONDS, 2, 60),
  });
}

function parseController(raw: unknown, service: string, envoyAdminPort: number): ControllerSpec {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("controller", "must be an object");
  const c = raw as Record<string, unknown>;
  const known = ["address", "apiPort", "xdsPort", "store", "envoyAdmins", "relays", "advertise"];
  if (c.relays !== undefined && (!Array.isArray(c.relays) || c.relays.length === 0 || c.relays.length > 64)) {
    fail("controller.relays", 'must be a list of 1 to 64 "ip:port" (each relay\'s metrics and control address)');
  }
  if (c.advertise !== undefined && (typeof c.advertise !== "string" || !/^https?:\/\/[^/\s]+$/.test(c.advertise))) fail("controller.advertise", 'must be a base URL ("http://10.0.0.5:9100")');
  const etcd = typeof c.store === "object" && c.store !== null ? c.store as Record<string, unknown> : undefined;
  if (etcd && (Array.isArray(etcd) || Object.keys(etcd).join() !== "etcd")) fail("controller.store", 'must be a file path or {"etcd": {endpoints, prefix}}');
  if (c.envoyAdmins !== undefined && (!Array.isArray(c.envoyAdmins) || c.envoyAdmins.length === 0 || c.envoyAdmins.length > 64)) {
    fail("controller.envoyAdmins", 'must be a list of 1 to 64 "ip:port" (each Envoy\'s admin address)');
  }
  for (const k of Object.keys(c)) if (!known.includes(k)) fail(`controller.${k}`, `is not a known field (known: ${known.join(", ")})`);
  return Object.freeze({
    address: ip(c.address, "controller.address", "127.0.0.1"),
    apiPort: port(c.apiPort, "controller.apiPort", 9100),
    xdsPort: port(c.xdsPort, "controller.xdsPort", 9102),
    store: text(etcd ? undefined : c.store, "controller.store", `.cache/controller/${service}.json`, 4096),
    ...(etcd ? { etcd: parseEtcd(etcd.etcd) } : {}),
    ...(c.advertise === undefined ? {} : { advertise: c.advertise as string }),
    relays: Object.freeze(c.relays === undefined ? [] : (c.relays as unknown[]).map((a, i) => endpoint(a, `controller.relays[${i}]`))),
    envoyAdmins: Object.freeze(c.envoyAdmins === undefined ? [`127.0.0.1:${envoyAdminPort}`]
      : (c.envoyAdmins as unknown[]).map((a, i) => endpoint(a, `controller.envoyAdmins[${i}]`))),
  });
}

function parseRelay(raw: unknown): LockstepConfig["relay"] {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("relay", "must be an object");
  const r = raw as Record<string, unknown>;
  const known = ["address", "port", "metricsPort", "processes", "controlToken"];
  for (const k of Object.keys(r)) if (!known.includes(k)) fail(`relay.${k}`, `is not a known field (known: ${known.join(", ")})`);
  if (r.controlToken !== undefined && (typeof r.controlToken !== "string" || r.controlToken.length < MIN_CONTROL_TOKEN_LENGTH)) {
    fail("relay.controlToken", `must be a string of at least ${MIN_CONTROL_TOKEN_LENGTH} characters`);
  }
  const processes = r.processes ?? 1;
  if (!Number.isInteger(processes) || (processes as number) < 1 || (processes as number) > MAX_RELAY_PROCESSES) fail("relay.processes", `must be a whole number from 1 to ${MAX_RELAY_PROCESSES}`);
  const relay = Object.freeze({
    address: ip(r.address, "relay.address", "127.0.0.1"), port: port(r.port, "relay.port", 10100), metricsPort: port(r.metricsPort, "relay.metricsPort", 10101),
    processes: processes as number,
    ...(r.controlToken === undefined ? {} : { controlToken: r.controlToken as string }),
  });
  const ports = relayProcesses(relay).flatMap((p) => [p.port, p.metricsPort]).filter((p) => p !== 0); // 0: any free port
  if (ports.some((p) => p > 65535)) fail("relay.processes", `${relay.processes} processes from ports ${relay.port} and ${relay.metricsPort} (each process i: port + 2i, metricsPort + 2i) pass port 65535`);
  if (new Set(ports).size !== ports.length) fail("relay.processes", `the ports of ${relay.processes} processes collide (process i listens on port + 2i and metricsPort + 2i: give metricsPort an odd distance from port, e.g. port + 1)`);
  return relay;
}

const MAX_RELAY_PROCESSES = 64;

/** "address:port" of each relay process's gRPC port: what Envoy's relay cluster lists. */
export function relayGrpcAddresses(relay: LockstepConfig["relay"]): string[] {
  return relayProcesses(relay).map((p) => `${relay.address}:${p.port}`);
}

/** Each relay process's gRPC port and metrics (and control) port: process i on port + 2i and
 *  metricsPort + 2i. */
export function relayProcesses(relay: { readonly port: number; readonly metricsPort: number; readonly processes: number }): { port: number; metricsPort: number }[] {
  return Array.from({ length: relay.processes }, (_, i) => ({ port: relay.port + 2 * i, metricsPort: relay.metricsPort + 2 * i }));
}

/** Validate a parsed JSON object; throws ConfigError naming the first bad field. */
export function parseLockstepConfig(raw: unknown): LockstepConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("(top level)", "must be a JSON object");
  const r = raw as Record<string, any>;
  const known = ["service", "mode", "listener", "primary", "primaryName", "replicas", "relay", "envoy", "limits", "healthCheck", "controller", "compareReplies"];
  for (const key of Object.keys(r)) if (!known.includes(key)) fail(key, `is not a known field (known: ${known.join(", ")})`);
  const service = r.service ?? "default";
  if (typeof service !== "string" || !NAME.test(service)) fail("service", `must be ${NAME_RULE}`);
  const primary = endpoint(r.primary, "primary");
  if (!Array.isArray(r.replicas)) fail("replicas", "must be a list of {name, address}");
  const names = new Set<string>();
  const replicaAddresses = new Set<string>();
  const replicas = r.replicas.map((rep: any, i: number) => {
    const field = `replicas[${i}]`;
    if (typeof rep !== "object" || rep === null) fail(field, "must be {name, address}");
    if (typeof rep.name !== "string" || !NAME.test(rep.name)) fail(`${field}.name`, `must be ${NAME_RULE}`);
    if (names.has(rep.name)) fail(`${field}.name`, `repeats the name "${rep.name}"`);
    names.add(rep.name);
    const address = endpoint(rep.address, `${field}.address`);
    if (address === primary) fail(`${field}.address`, "is the primary's address: a backend cannot be its own replica");
    if (replicaAddresses.has(address)) fail(`${field}.address`, `repeats the address ${address}: one backend, one member`);
    replicaAddresses.add(address);
    return Object.freeze({ name: rep.name, address });
  });
  const primaryName = r.primaryName ?? "primary";
  if (typeof primaryName !== "string" || !NAME.test(primaryName)) fail("primaryName", `must be ${NAME_RULE}`);
  if (names.has(primaryName)) fail("primaryName", `is also a replica's name ("${primaryName}")`);
  const listener = r.listener ?? {};
  const relay = r.relay ?? {};
  const envoy = r.envoy ?? {};
  const limits = r.limits ?? {};
  const mode = r.mode ?? "mirror";
  if (!SERVICE_MODES.includes(mode)) fail("mode", `must be one of ${SERVICE_MODES.map((m) => `"${m}"`).join(", ")}`);
  const config: LockstepConfig = {
    service,
    mode,
    listener: Object.freeze({ address: ip(listener.address, "listener.address", "127.0.0.1"), port: port(listener.port, "listener.port", 10000) }),
    primary,
    primaryName,
    healthCheck: parseHealthCheck(r.healthCheck),
    compareReplies: r.compareReplies === undefined ? true : typeof r.compareReplies === "boolean" ? r.compareReplies : fail("compareReplies", "must be true or false"),
    ...(r.controller === undefined ? {} : { controller: parseController(r.controller, service, port(envoy.adminPort, "envoy.adminPort", 9901)) }),
    replicas: Object.freeze(replicas),
    relay: parseRelay(relay),
    envoy: Object.freeze({
      adminPort: port(envoy.adminPort, "envoy.adminPort", 9901),
      wasmPath: envoy.wasmPath ?? "build/lockstep.wasm",
      ...(envoy.maxDownstreamConnections === undefined ? {} : { maxDownstreamConnections: whole(envoy.maxDownstreamConnections, "envoy.maxDownstreamConnections", 0, 1, 100_000_000) }),
    }),
    limits: Object.freeze({
      maxInflightBytesPerConnection: bound(limits.maxInflightBytesPerConnection, "limits.maxInflightBytesPerConnection", DEFAULT_LIMITS.maxInflightBytesPerConnection),
      maxInflightBytesTotal: bound(limits.maxInflightBytesTotal, "limits.maxInflightBytesTotal", DEFAULT_LIMITS.maxInflightBytesTotal),
      maxLagBytesPerConnection: bound(limits.maxLagBytesPerConnection, "limits.maxLagBytesPerConnection", DEFAULT_LIMITS.maxLagBytesPerConnection),
      maxQueuedBytesTotal: bound(limits.maxQueuedBytesTotal, "limits.maxQueuedBytesTotal", DEFAULT_LIMITS.maxQueuedBytesTotal),
    }),
  };
  if (config.mode === "session" && !config.compareReplies) {
    fail("mode", '"session" needs compareReplies: a successor takes a connection over only where its replies equal the primary\'s (docs/SESSION.md)');
  }
  if (config.limits.maxInflightBytesTotal < config.limits.maxInflightBytesPerConnection) fail("limits.maxInflightBytesTotal", "must be at least limits.maxInflightBytesPerConnection");
  return Object.freeze(config);
}

export function loadLockstepConfig(path: string): LockstepConfig {
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(path, "utf8")); }
  catch (err) { throw new ConfigError(`lockstep config: cannot read ${path}: ${(err as Error).message}`); }
  return parseLockstepConfig(raw);
}
