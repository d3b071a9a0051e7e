// A whole lockstep set-up from real processes, for the controller's tests, the failover
// benchmark and the fault-injection test: the members (sample key-value servers, or Debian's
// redis-server; each its own process, so kill -9 and SIGSTOP are real, restartable on its
// port), the relay (restartable on its ports), the controller (its own process, restartable
// on the same store) and Envoy taking the primary from the controller's EDS.
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import ts from "typescript";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startProcess, type Managed } from "./processes.ts";
import { freePorts, waitFor } from "./ports.ts";
import { startRelay, type RelayHandle } from "./relay.ts";
import { startEnvoy, type EnvoyHandle } from "./envoy.ts";
import { startRedis, redisCall } from "./redis.ts";
import { kvExchange } from "../../samples/kv-client.ts";

export { kvExchange };

export const TOKEN = "stack-test-token";

/** What the members are: the sample key-value server or Debian's redis-server. */
export type Backend = "kv" | "redis";

export interface Member {
  readonly name: string;
  readonly port: number;
  readonly address: string;
  process: Managed;
  /** Start it again on the same port (empty, as a restarted process is). */
  restart(): Promise<void>;
}

/** samples/kv-server.ts as plain JavaScript (TypeScript's own transpiler, once per test
 *  process): it starts in ~0.1 s instead of ~0.7 s under tsx, as fast as a supervisor's
 *  restart of a real server. */
let kvScript: string | undefined;
function kvServerScript(): string {
  if (kvScript) return kvScript;
  const source = readFileSync(join(PROJECT_ROOT, "samples", "kv-server.ts"), "utf8");
  const js = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
  kvScript = join(mkdtempSync(join(tmpdir(), "lockstep-kv-")), "kv-server.mjs");
  writeFileSync(kvScript, js);
  return kvScript;
}

const kvPing = async (port: number) => (await kvExchange(port, ["PING"]).catch(() => []))[0] === "PONG";
const redisPing = async (port: number) => (await redisCall(port, ["PING"], 2000).catch(() => null)) === "PONG";

interface BackendSpec {
  /** The health check (lockstep config `healthCheck`) unless the caller gives one. */
  readonly healthCheck: Record<string, unknown>;
  start(name: string, port: number): Promise<Managed>;
  /** True if the server on `port` (a member, or Envoy's listener) answers a PING. */
  ping(port: number): Promise<boolean>;
}

/** Start a sample key-value server on `port` (a member of a hand-built set-up). */
export function startKv(name: string, port: number): Promise<Managed> { return BACKENDS.kv.start(name, port); }

const BACKENDS: Record<Backend, BackendSpec> = {
  kv: {
    healthCheck: { send: "PING\n", expect: "PONG", intervalMs: 100, timeoutMs: 250 },
    async start(name, port) {
      const proc = startProcess(`kv ${name}`, process.execPath, [kvServerScript(), "--port", String(port), "--name", name], { cwd: PROJECT_ROOT });
      await waitFor(`kv ${name} to listen`, async () => {
        if (proc.exited()) throw new Error(`kv ${name} exited:\n${proc.output()}`);
        return kvPing(port);
      }, 20_000, 5);
      return proc;
    },
    ping: kvPing,
  },
  redis: {
    healthCheck: { send: "*1\r\n$4\r\nPING\r\n", expect: "+PONG", intervalMs: 100, timeoutMs: 250 },
    async start(name, port) { return (await startRedis(name, port)).process; },
    ping: redisPing,
  },
};

export interface StackOptions {
  /** The members' server (default: the sample key-value server). */
  backend?: Backend;
  replicas?: number;
  service?: string;
  /** Health check settings (lockstep config `healthCheck`); default the backend's PING every 100 ms. */
  healthCheck?: Record<string, unknown>;
  /** More lockstep config fields (reply comparison is on unless `compareReplies: false`). */
  extra?: Record<string, unknown>;
}

export interface Stack {
  readonly service: string;
  readonly backend: Backend;
  readonly members: Map<string, Member>;
  readonly envoy: EnvoyHandle;
  /** The relay process now (restartRelay replaces it). */
  readonly relay: RelayHandle;
  /** The controller process now (restartController replaces it). */
  readonly controller: Managed;
  readonly apiPort: number;
  readonly xdsPort: number;
  readonly storePath: string;
  /** Kill the controller (signal), wait `downMs`, start it again on the same store and ports. */
  restartController(signal?: NodeJS.Signals, downMs?: number): Promise<void>;
  /** Kill the relay (signal), wait `downMs`, start it again on the same ports (it comes back
   *  with no replica set: its connections wait for the controller's). */
  restartRelay(signal?: NodeJS.Signals, downMs?: number): Promise<void>;
  /** GET (no body) or another call on the controller's API, with the token. */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }>;
  /** The service as the API shows it. */
  view(): Promise<{ primary: string; successor: string | null; members: { name: string; role: string; alive: boolean; address: string }[] }>;
  /** Which member a new connection through the listener reaches ("FAILED" if none). Its WHO
   *  answers differ between members: only with compareReplies off, and only with kv members. */
  whoServes(timeoutMs?: number): Promise<string>;
  close(): Promise<void>;
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const service = options.service ?? "kv";
  const backend = BACKENDS[options.backend ?? "kv"];
  const names = ["m0", ...Array.from({ length: options.replicas ?? 2 }, (_, i) => `m${i + 1}`)];
  const ports = await freePorts(names.length + 3);
  const [apiPort, xdsPort, envoyAdminPort] = ports.slice(names.length);
  const started = await Promise.all(names.map(async (name, i) => {
    const port = ports[i];
    const m: Member = {
      name, port, address: `127.0.0.1:${port}`, process: await backend.start(name, port),
      async restart() { m.process = await backend.start(name, port); },
    };
    return m;
  }));
  const members = new Map(started.map((m) => [m.name, m]));
  const all = [...members.values()];
  let relay = await startRelay({}); // the controller sets the replica set
  const dir = mkdtempSync(join(tmpdir(), "lockstep-stack-"));
  const storePath = join(dir, "controller.json");
  const healthCheck = options.healthCheck ?? backend.healthCheck;
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
  // A GET that fails on the network (a kept-alive connection closed by the controller just as it
  // was reused) is tried again: reads are idempotent. Other calls fail at once.
  const api = async (method: string, path: string, body?: unknown) => {
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await fetch(`http://127.0.0.1:${apiPort}${path}`, {
          method, headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: res.status, json: await res.json() };
      } catch (err) {
        if (method !== "GET" || attempt === 3) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  const stack: Stack = {
    service, backend: options.backend ?? "kv", members, envoy, apiPort, xdsPort, storePath,
    get controller() { return controller; },
    get relay() { return relay; },
    async restartController(signal = "SIGKILL", downMs = 0) {
      await controller.kill(signal);
      await new Promise((r) => setTimeout(r, downMs));
      controller = await startController();
    },
    async restartRelay(signal = "SIGKILL", downMs = 0) {
      const { port, metricsPort, controlToken } = relay;
      await relay.kill(signal);
      await new Promise((r) => setTimeout(r, downMs));
      relay = await startRelay({ port, metricsPort, controlToken });
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
  await waitFor("Envoy to serve through the listener", () => backend.ping(envoy.listenerPort), 20_000, 50);
  await waitFor("the controller's first health verdicts", async () => (await stack.view()).members.every((m: any) => m.alive && m.rttMs !== null), 20_000, 20);
  return stack;
}
