// The controller's command line:
//   tsx controller/main.ts --config service.json [--relay http://127.0.0.1:10101] [--api-port N] [--xds-port N] [--store path]
// The service file is the lockstep config (config/lockstep-config.ts) with a "controller"
// section. The bearer token for mutating API calls comes from $LOCKSTEP_TOKEN, else from
// --token-file, else a new random token is written next to the store (mode 0600).
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { loadLockstepConfig, ConfigError, type LockstepConfig } from "../config/lockstep-config.ts";
import { startController } from "./server.ts";
import { StoreError } from "./store/file-store.ts";
import type { HealthSettings } from "./health/checker.ts";
import type { Service } from "./model/service.ts";

const { values } = parseArgs({ options: {
  config: { type: "string" }, relay: { type: "string" }, "api-port": { type: "string" }, "xds-port": { type: "string" },
  store: { type: "string" }, "token-file": { type: "string" },
} });

const log = (line: string) => console.log(`${new Date().toISOString()} controller: ${line}`);

/** The service a lockstep config describes, as the controller's model. */
export function serviceOf(c: LockstepConfig): { service: Service; health: HealthSettings } {
  const h = c.healthCheck;
  return {
    service: Object.freeze({ name: c.service, members: Object.freeze([
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

try {
  if (!values.config) throw new ConfigError("usage: controller/main.ts --config service.json (a lockstep config with a \"controller\" section)");
  const c = loadLockstepConfig(values.config);
  const spec = c.controller ?? { address: "127.0.0.1", apiPort: 9100, xdsPort: 9102, store: `.cache/controller/${c.service}.json` };
  const storePath = resolve(values.store ?? spec.store);
  const running = await startController({
    services: [serviceOf(c)],
    api: { host: spec.address, port: values["api-port"] ? Number(values["api-port"]) : spec.apiPort },
    xds: { host: "127.0.0.1", port: values["xds-port"] ? Number(values["xds-port"]) : spec.xdsPort },
    token: token(storePath),
    storePath,
    relay: { url: values.relay ?? `http://${c.relay.address}:${c.relay.metricsPort}` },
    log,
  });
  log(`API on http://${spec.address}:${running.apiPort}/v1 (OpenAPI: /v1/openapi.json), xDS on 127.0.0.1:${running.xdsPort}, store ${storePath}`);
  const stop = async () => { log("shutting down"); await running.close(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} catch (err) {
  console.error(err instanceof ConfigError || err instanceof StoreError ? err.message : err);
  process.exit(2);
}
