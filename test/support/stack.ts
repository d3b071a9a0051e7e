// A whole lockstep set-up from real processes, for the controller's tests and the failover
// benchmark: sample key-value servers (each its own process, so kill -9 and SIGSTOP are
// real), the relay, the controller (its own process, restartable on the same store) and
// Envoy taking the primary from the controller's EDS.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startProcess, type Managed } from "./processes.ts";
import { freePorts, waitFor } from "./ports.ts";
import { startRelay, type RelayHandle } from "./relay.ts";
import { startEnvoy, type EnvoyHandle } from "./envoy.ts";
import { kvExchange } from "../../samples/kv-client.ts";

export { kvExchange };

export const TOKEN = "stack-test-token";

export interface KvMember {
  readonly name: string;
  readonly port: number;
  readonly address: string;
  process: Managed;
  /** Start it again on the same port (empty, as a restarted process is). */
  restart(): Promise<void>;
}

export async function startKv(name: string, port: number): Promise<Managed> {
  const proc = startProcess(`kv ${name}`, process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "samples", "kv-server.ts"), "--port", String(port), "--name", name], { cwd: PROJECT_ROOT });
  await waitFor(`kv ${name} to listen`, async () => {
    if (proc.exited()) throw new Error(`kv ${name} exited:\n${proc.output()}`);
    return (await kvExchange(port, ["PING"]).catch(() => []))[0] === "PONG";
  }, 20_000, 20);
  return proc;
}

export interface StackOptions {
  replicas?: number;
  service?: string;
  /** Health check settings (lockstep config `healthCheck`); default PING/PONG every 100 ms. */
  healthCheck?: Record<string, unknown>;
  /** More lockstep config fields (reply comparison is on unless `compareReplies: false`). */
  extra?: Record<string, unknown>;
}

export interface Stack {
  readonly service: string;
  readonly members: Map<string, KvMember>;
  readonly envoy: EnvoyHandle;
  readonly relay: RelayHandle;
  /** The controller process now (restartController replaces it). */
  readonly controller: Managed;
  readonly apiPort: number;
  readonly xdsPort: number;
  readonly storePath: string;
  /** Kill the controller (signal) and start it again on the same store and ports. */
  restartController(signal?: NodeJS.Signals): Promise<void>;
  /** GET (no body) or another call on the controller's API, with the token. */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }>;
  /** The service as the API shows it. */
  view(): Promise<{ primary: string; successor: string | null; members: { name: string; role: string; alive: boolean; address: string }[] }>;
  /** Which member a new connection through the listener reaches ("FAILED" if none). Its WHO
   *  answers differ between members: only with compareReplies off. */
  whoServes(timeoutMs?: number): Promise<string>;
  close(): Promise<void>;
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const service = options.service ?? "kv";
  const names = ["m0", ...Array.from({ length: options.replicas ?? 2 }, (_, i) => `m${i + 1}`)];
  const ports = await freePorts(names.length + 3);
  const [apiPort, xdsPort, envoyAdminPort] = ports.slice(names.length);
  const started = await Promise.all(names.map(async (name, i) => {
    const port = ports[i];
    const m: KvMember = {
      name, port, address: `127.0.0.1:${port}`, process: await startKv(name, port),
      async restart() { m.process = await startKv(name, port); },
    };
    return m;
  }));
  const members = new Map(started.map((m) => [m.name, m]));
  const all = [...members.values()];
  const relay = await startRelay({}); // the controller sets the replica set
  const dir = mkdtempSync(join(tmpdir(), "lockstep-stack-"));
  const storePath = join(dir, "controller.json");
  const healthCheck = options.healthCheck ?? { send: "PING\n", expect: "PONG", intervalMs: 100, timeoutMs: 250 };
  const config = {
    service,
    listener: { port: 1 },
    primary: all[0].address,
    primaryName: all[0].name,
    replicas: all.slice(1).map((m) => ({ name: m.name, address: m.address })),
    relay: { address: "127.0.0.1", port: relay.port, metricsPort: relay.metricsPort, controlToken: relay.controlToken },
    healthCheck,
    controller: { apiPort, xdsPort, store: storePath },
    envoy: { adminPort: envoyAdminPort },
    ...options.extra,
  };
  const configPath = join(dir, "service.json");
  writeFileSync(configPath, JSON.stringify(config));
  const startController = async () => {
    const proc = startProcess("controller", process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "controller", "main.ts"), "--config", configPath],
      { cwd: PROJECT_ROOT, env: { ...process.env, LOCKSTEP_TOKEN: TOKEN } });
    await waitFor("the controller's API", async () => {
      if (proc.exited()) throw new Error(`controller exited:\n${proc.output()}`);
      return (await fetch(`http://127.0.0.1:${apiPort}/v1/services`)).ok;
    }, 20_000, 20);
    return proc;
  };
  let controller = await startController();
  const envoy = await startEnvoy({
    primary: all[0].address, relayPort: relay.port, service, controller: `127.0.0.1:${xdsPort}`, adminPort: envoyAdminPort,
    extra: { healthCheck, primaryName: all[0].name, compareReplies: true, ...options.extra },
  });
  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`http://127.0.0.1:${apiPort}${path}`, {
      method, headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, json: await res.json() };
  };
  const stack: Stack = {
    service, members, envoy, relay, apiPort, xdsPort, storePath,
    get controller() { return controller; },
    async restartController(signal = "SIGKILL") {
      await controller.kill(signal);
      controller = await startController();
    },
    api,
    async view() { return (await api("GET", `/v1/services/${service}`)).json; },
    async whoServes(timeoutMs = 2000) {
      try { return (await kvExchange(envoy.listenerPort, ["WHO"], timeoutMs))[0].replace(/^I-AM /, ""); } catch { return "FAILED"; }
    },
    async close() {
      await envoy.kill();
      await controller.kill("SIGKILL");
      await relay.kill("SIGKILL");
      for (const m of members.values()) await m.process.kill("SIGKILL");
    },
  };
  // PING, not WHO: WHO's answers differ between members, which the reply check (when on) flags.
  await waitFor("Envoy to serve through the listener", async () => (await kvExchange(envoy.listenerPort, ["PING"]).catch(() => []))[0] === "PONG", 20_000, 50);
  await waitFor("the controller's first health verdicts", async () => (await stack.view()).members.every((m: any) => m.alive && m.rttMs !== null), 20_000, 20);
  return stack;
}
