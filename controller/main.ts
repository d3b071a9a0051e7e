// The controller's command line:
//   tsx controller/main.ts --config service.json [--relay http://127.0.0.1:10101] [--api-port N] [--xds-port N] [--store path]
//                          [--token-file path] [--relay-token-file path] [--dynamic]
// --dynamic: serve services' listeners and primary clusters to Envoy too (LDS, CDS; the Envoy
// bootstrap names only the controller and the relay: envoy/dynamic-example.yaml), so services
// declared through the API with a "listener" need no Envoy change.
// The service file is the lockstep config (config/lockstep-config.ts) with a "controller"
// section; its "store" is a file path (one controller) or {"etcd": {...}} (several controllers,
// one elected to decide: docs/FLEET.md; give them all the same $LOCKSTEP_TOKEN). The bearer token for mutating API calls comes from $LOCKSTEP_TOKEN, else from
// --token-file, else a new random token is written next to the store (mode 0600). The relay's
// control token comes from --relay-token-file, else $LOCKSTEP_RELAY_TOKEN, else the config's
// relay.controlToken; without one the relay refuses the controller's replica sets.
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { loadLockstepConfig, ConfigError, relayProcesses, type LockstepConfig } from "../config/lockstep-config.ts";
import { MIN_CONTROL_TOKEN_LENGTH } from "../relay/config.ts";
import { startController } from "./server.ts";
import { StoreError } from "./store/file-store.ts";
import type { HealthSettings } from "./health/checker.ts";
import type { Service } from "./model/service.ts";

const { values } = parseArgs({ options: {
  config: { type: "string" }, relay: { type: "string" }, "api-port": { type: "string" }, "xds-port": { type: "string" },
  store: { type: "string" }, "token-file": { type: "string" }, "relay-token-file": { type: "string" }, dynamic: { type: "boolean" },
} });

const log = (line: string) => console.log(`${new Date().toISOString()} controller: ${line}`);

/** The service a lockstep config describes, as the controller's model. */
export function serviceOf(c: LockstepConfig): { service: Service; health: HealthSettings } {
  const h = c.healthCheck;
  return {
    service: Object.freeze({ name: c.service, ...(c.mode === "session" ? { mode: "session" as const } : {}), members: Object.freeze([
      Object.freeze({ name: c.primaryName, address: c.primary, role: "primary" as const, lagBytes: 0 }),
      ...c.replicas.map((r) => Object.freeze({ name: r.name, address: r.address, role: "replica" as const, lagBytes: 0 })),
    ]) }),
    health: Object.freeze({ intervalMs: h.intervalMs, timeoutMs: h.timeoutMs, unhealthyThreshold: h.unhealthyThreshold, healthyThreshold: h.healthyThreshold, send: h.send || undefined, expect: h.expect || undefined }),
  };
}

function token(storePath: string): string {
  if (process.env.LOCKSTEP_TOKEN) return process.env.LOCKSTEP_TOKEN;
  const file = values["token-file"] ?? `${storePath}.token`;
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  mkdirSync(dirname(file), { recursive: true });
  const t = randomBytes(24).toString("base64url");
  writeFileSync(file, t + "\n", { mode: 0o600 });
  log(`no token given: wrote a new one to ${file}`);
  return t;
}

/** The relay's control token: --relay-token-file, else $LOCKSTEP_RELAY_TOKEN, else the config's. */
function relayToken(c: LockstepConfig): string | undefined {
  const [token, from] = values["relay-token-file"] !== undefined ? [readToken(values["relay-token-file"]), `--relay-token-file ${values["relay-token-file"]}`]
    : process.env.LOCKSTEP_RELAY_TOKEN !== undefined ? [process.env.LOCKSTEP_RELAY_TOKEN, "LOCKSTEP_RELAY_TOKEN"]
    : [c.relay.controlToken, "relay.controlToken"];
  if (token !== undefined && token.length < MIN_CONTROL_TOKEN_LENGTH) throw new ConfigError(`the relay's control token (${from}) must be at least ${MIN_CONTROL_TOKEN_LENGTH} characters`);
  return token;
}

function readToken(path: string): string {
  try { return readFileSync(path, "utf8").trim(); } catch (err) { throw new ConfigError(`cannot read the relay's control token: ${(err as Error).message}`); }
}

function portFlag(name: "api-port" | "xds-port", fallback: number): number {
  const raw = values[name];
  if (raw === undefined) return fallback;
  if (!/^\d{1,5}$/.test(raw) || Number(raw) > 65535) throw new ConfigError(`--${name} must be a port number (0-65535), not ${JSON.stringify(raw)}`);
  return Number(raw);
}

try {
  if (!values.config) throw new ConfigError("usage: controller/main.ts --config service.json (a lockstep config with a \"controller\" section)");
  const c = loadLockstepConfig(values.config);
  const relayUrl = (metricsPort: number) => `http://${c.relay.address.includes(":") ? `[${c.relay.address}]` : c.relay.address}:${metricsPort}`;
  const spec = c.controller ?? { address: "127.0.0.1", apiPort: 9100, xdsPort: 9102, store: `.cache/controller/${c.service}.json`, envoyAdmins: [`127.0.0.1:${c.envoy.adminPort}`], relays: [] };
  const storePath = resolve(values.store ?? spec.store);
  const relayControlToken = relayToken(c);
  if (relayControlToken === undefined) log("no relay control token (relay.controlToken, LOCKSTEP_RELAY_TOKEN or --relay-token-file): the relay will refuse the replica sets this controller decides");
  const configured = serviceOf(c);
  const running = await startController({
    services: [values.dynamic ? { ...configured, service: Object.freeze({ ...configured.service, listener: `${c.listener.address}:${c.listener.port}` }) } : configured],
    ...(values.dynamic ? { dynamic: { wasmPath: resolve(c.envoy.wasmPath), ...c.limits, compareReplies: c.compareReplies, mirrorStreams: c.relay.processes } } : {}),
    api: { host: spec.address, port: portFlag("api-port", spec.apiPort) },
    xds: { host: "127.0.0.1", port: portFlag("xds-port", spec.xdsPort) },
    token: token(storePath),
    storePath,
    ...(spec.etcd ? { etcd: spec.etcd } : {}),
    ...(spec.advertise ? { advertise: spec.advertise } : {}),
    relay: { url: values.relay ?? relayUrl(c.relay.metricsPort), token: relayControlToken },
    // Every relay of the service: the config's list, else each of this Envoy's relay processes.
    relays: spec.relays.length ? spec.relays.map((a) => `http://${a}`)
      : c.relay.processes > 1 && !values.relay ? relayProcesses(c.relay).map((p) => relayUrl(p.metricsPort)) : [],
    envoyAdmins: spec.envoyAdmins,
    log,
  });
  const store = spec.etcd ? `etcd ${spec.etcd.endpoints.join(",")} under ${spec.etcd.prefix} (one controller decides at a time)` : storePath;
  log(`API on http://${spec.address}:${running.apiPort}/v1 (OpenAPI: /v1/openapi.json), xDS on 127.0.0.1:${running.xdsPort}, store ${store}`);
  const stop = async () => { log("shutting down"); await running.close(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} catch (err) {
  console.error(err instanceof ConfigError || err instanceof StoreError ? err.message : err);
  process.exit(2);
}
