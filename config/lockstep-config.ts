// The user's description of one replicated service: where clients connect, the primary,
// the replicas, and where the relay listens. Read once from a JSON file, validated with
// messages that name the field, then frozen. The demo, `envoy/` examples and the tests
// all derive their Envoy bootstrap and relay configuration from it.
import { readFileSync } from "node:fs";

export interface ReplicaSpec { readonly name: string; readonly address: string }

export interface LockstepConfig {
  readonly service: string;
  readonly listener: { readonly address: string; readonly port: number };
  readonly primary: string;
  readonly replicas: readonly ReplicaSpec[];
  readonly relay: { readonly address: string; readonly port: number; readonly metricsPort: number };
  readonly envoy: { readonly adminPort: number; readonly wasmPath: string };
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

export const DEFAULT_LIMITS = Object.freeze({
  maxInflightBytesPerConnection: 4 << 20,
  maxInflightBytesTotal: 64 << 20,
  maxLagBytesPerConnection: 4 << 20,
  maxQueuedBytesTotal: 256 << 20,
});

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

export class ConfigError extends Error {}

function fail(field: string, message: string): never { throw new ConfigError(`lockstep config: "${field}" ${message}`); }

function port(value: unknown, field: string, fallback?: number): number {
  if (value === undefined && fallback !== undefined) return fallback;
  if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > 65535) fail(field, "must be a port number (0-65535)");
  return value as number;
}

function hostPort(value: unknown, field: string): string {
  if (typeof value !== "string" || !HOST_PORT.test(value)) fail(field, `must be "host:port" (got ${JSON.stringify(value)})`);
  const p = Number(HOST_PORT.exec(value)![2]);
  if (p < 1 || p > 65535) fail(field, "has a port outside 1-65535");
  return value;
}

/** Envoy reads up to 1 MiB from a connection at a time: a bound below that detaches on one read. */
export const MIN_BOUND_BYTES = 1 << 20;

function bound(value: unknown, field: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || (value as number) < MIN_BOUND_BYTES) fail(field, `must be a whole number of bytes, at least ${MIN_BOUND_BYTES} (1 MiB, one Envoy read)`);
  return value as number;
}

/** Validate a parsed JSON object; throws ConfigError naming the first bad field. */
export function parseLockstepConfig(raw: unknown): LockstepConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail("(top level)", "must be a JSON object");
  const r = raw as Record<string, any>;
  const known = ["service", "listener", "primary", "replicas", "relay", "envoy", "limits"];
  for (const key of Object.keys(r)) if (!known.includes(key)) fail(key, `is not a known field (known: ${known.join(", ")})`);
  const service = r.service ?? "default";
  if (typeof service !== "string" || !NAME.test(service)) fail("service", "must be 1-64 characters of [A-Za-z0-9_-]");
  const primary = hostPort(r.primary, "primary");
  if (!Array.isArray(r.replicas)) fail("replicas", "must be a list of {name, address}");
  const names = new Set<string>();
  const replicas = r.replicas.map((rep: any, i: number) => {
    const field = `replicas[${i}]`;
    if (typeof rep !== "object" || rep === null) fail(field, "must be {name, address}");
    if (typeof rep.name !== "string" || !NAME.test(rep.name)) fail(`${field}.name`, "must be 1-64 characters of [A-Za-z0-9_-]");
    if (names.has(rep.name)) fail(`${field}.name`, `repeats the name "${rep.name}"`);
    names.add(rep.name);
    const address = hostPort(rep.address, `${field}.address`);
    if (address === primary) fail(`${field}.address`, "is the primary's address: a backend cannot be its own replica");
    return Object.freeze({ name: rep.name, address });
  });
  const listener = r.listener ?? {};
  const relay = r.relay ?? {};
  const envoy = r.envoy ?? {};
  const limits = r.limits ?? {};
  const config: LockstepConfig = {
    service,
    listener: Object.freeze({ address: listener.address ?? "127.0.0.1", port: port(listener.port, "listener.port", 10000) }),
    primary,
    replicas: Object.freeze(replicas),
    relay: Object.freeze({ address: relay.address ?? "127.0.0.1", port: port(relay.port, "relay.port", 10100), metricsPort: port(relay.metricsPort, "relay.metricsPort", 10101) }),
    envoy: Object.freeze({ adminPort: port(envoy.adminPort, "envoy.adminPort", 9901), wasmPath: envoy.wasmPath ?? "build/lockstep.wasm" }),
    limits: Object.freeze({
      maxInflightBytesPerConnection: bound(limits.maxInflightBytesPerConnection, "limits.maxInflightBytesPerConnection", DEFAULT_LIMITS.maxInflightBytesPerConnection),
      maxInflightBytesTotal: bound(limits.maxInflightBytesTotal, "limits.maxInflightBytesTotal", DEFAULT_LIMITS.maxInflightBytesTotal),
      maxLagBytesPerConnection: bound(limits.maxLagBytesPerConnection, "limits.maxLagBytesPerConnection", DEFAULT_LIMITS.maxLagBytesPerConnection),
      maxQueuedBytesTotal: bound(limits.maxQueuedBytesTotal, "limits.maxQueuedBytesTotal", DEFAULT_LIMITS.maxQueuedBytesTotal),
    }),
  };
  if (config.limits.maxInflightBytesTotal < config.limits.maxInflightBytesPerConnection) fail("limits.maxInflightBytesTotal", "must be at least limits.maxInflightBytesPerConnection");
  return Object.freeze(config);
}

export function loadLockstepConfig(path: string): LockstepConfig {
  let raw: unknown;
  try { raw = JSON.parse(readFileSync(path, "utf8")); }
  catch (err) { throw new ConfigError(`lockstep config: cannot read ${path}: ${(err as Error).message}`); }
  return parseLockstepConfig(raw);
}
