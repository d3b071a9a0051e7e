// lockstep beyond one machine, from real processes, for the fleet tests: one etcd, several
// controllers sharing it (each its own process: kill -9 and SIGSTOP are real), several Envoys,
// each with its own relay, all on one service of sample key-value servers. Every controller
// knows every relay and every Envoy's admin; every Envoy's bootstrap names every controller
// (and, with `dynamic`, nothing else: listeners and clusters come from the controllers).
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startProcess, type Managed } from "./processes.ts";
import { freePorts, waitFor } from "./ports.ts";
import { startRelay, type RelayHandle } from "./relay.ts";
import { startEnvoy, startDynamicEnvoy, type RunningEnvoy } from "./envoy.ts";
import { startEtcd, type EtcdHandle } from "./etcd.ts";
import { startKv, kvExchange, TOKEN, type Member as KvMember } from "./stack.ts";

export interface FleetController {
  readonly index: number;
  readonly apiPort: number;
  readonly xdsPort: number;
  readonly api: string;
  process: Managed | undefined;
}

export interface FleetOptions {
  controllers?: number;
  envoys?: number;
  replicas?: number;
  service?: string;
  leaseTtlSeconds?: number;
  /** Controllers run with --dynamic, Envoys take the service's listener and cluster from them. */
  dynamic?: boolean;
}

/** An Envoy of the fleet and the port its service's listener is on. */
export type FleetEnvoy = RunningEnvoy & { readonly listenerPort: number };

export interface Fleet {
  readonly service: string;
  readonly etcd: EtcdHandle;
  readonly members: Map<string, KvMember>;
  readonly relays: RelayHandle[];
  readonly envoys: FleetEnvoy[];
  readonly controllers: FleetController[];
  readonly leaseTtlSeconds: number;
  startController(index: number): Promise<void>;
  killController(index: number, signal?: NodeJS.Signals): Promise<void>;
  /** A call on one controller's API, with the token. */
  api(index: number, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }>;
  /** The index of the controller that leads now, as the controllers that answer agree (undefined: none, or they disagree). */
  leader(): Promise<number | undefined>;
  /** leader(), once the controllers agree on one. */
  waitLeader(): Promise<number>;
  /** Which member a new connection through Envoy `envoy` reaches ("FAILED" if none). */
  whoServes(envoy: number, timeoutMs?: number): Promise<string>;
  close(): Promise<void>;
}

export async function startFleet(options: FleetOptions = {}): Promise<Fleet> {
  const service = options.service ?? "kv";
  const leaseTtlSeconds = options.leaseTtlSeconds ?? 2;
  const names = ["m0", ...Array.from({ length: options.replicas ?? 2 }, (_, i) => `m${i + 1}`)];
  const nControllers = options.controllers ?? 3;
  const nEnvoys = options.envoys ?? 2;
  const ports = await freePorts(names.length + 2 * nControllers + nEnvoys + 1);
  const servicePort = ports.at(-1)!; // the listener, with `dynamic` (every Envoy binds it: SO_REUSEPORT)
  const members = new Map<string, KvMember>();
  await Promise.all(names.map(async (name, i) => {
    const port = ports[i];
    const m: KvMember = { name, port, address: `127.0.0.1:${port}`, process: await startKv(name, port), async restart() { m.process = await startKv(name, port); } };
    members.set(name, m);
  }));
  const all = names.map((n) => members.get(n)!);
  const controlToken = randomBytes(24).toString("base64url");
  const relays = await Promise.all(Array.from({ length: nEnvoys }, () => startRelay({ controlToken })));
  const etcd = await startEtcd();
  const controllerPorts = ports.slice(names.length, names.length + 2 * nControllers);
  const adminPorts = ports.slice(names.length + 2 * nControllers, names.length + 2 * nControllers + nEnvoys);
  const healthCheck = { send: "PING\n", expect: "PONG", intervalMs: 100, timeoutMs: 250 };
  const dir = mkdtempSync(join(tmpdir(), "lockstep-fleet-"));
  const controllers: FleetController[] = Array.from({ length: nControllers }, (_, i) => {
    const [apiPort, xdsPort] = [controllerPorts[2 * i], controllerPorts[2 * i + 1]];
    return { index: i, apiPort, xdsPort, api: `http://127.0.0.1:${apiPort}`, process: undefined };
  });
  const configPath = (i: number) => {
    const path = join(dir, `controller-${i}.json`);
    writeFileSync(path, JSON.stringify({
      service, listener: { port: options.dynamic ? servicePort : 1 }, primary: all[0].address, primaryName: all[0].name,
      replicas: all.slice(1).map((m) => ({ name: m.name, address: m.address })),
      relay: { address: "127.0.0.1", port: relays[0].port, metricsPort: relays[0].metricsPort, controlToken },
      healthCheck, compareReplies: false,
      controller: {
        apiPort: controllers[i].apiPort, xdsPort: controllers[i].xdsPort,
        store: { etcd: { endpoints: [etcd.url], prefix: "/lockstep-test/", leaseTtlSeconds } },
        envoyAdmins: adminPorts.map((p) => `127.0.0.1:${p}`),
        relays: relays.map((r) => `127.0.0.1:${r.metricsPort}`),
      },
    }));
    return path;
  };
  /** What each controller said in the last leader(), for failure messages. */
  let lastViews: string[] = [];
  const fleet: Fleet = {
    service, etcd, members, relays, envoys: [], controllers, leaseTtlSeconds,
    async startController(i) {
      const c = controllers[i];
      const proc = startProcess(`controller ${i}`, process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "controller", "main.ts"), "--config", configPath(i), ...(options.dynamic ? ["--dynamic"] : [])],
        { cwd: PROJECT_ROOT, env: { ...process.env, LOCKSTEP_TOKEN: TOKEN } });
      c.process = proc;
      await waitFor(`controller ${i}'s API`, async () => {
        if (proc.exited()) throw new Error(`controller ${i} exited:\n${proc.output()}`);
        return (await fetch(`${c.api}/v1/services`)).ok;
      }, 20_000, 20);
    },
    async killController(i, signal = "SIGKILL") {
      await controllers[i].process?.kill(signal);
      controllers[i].process = undefined;
    },
    async api(i, method, path, body) {
      const res = await fetch(`${controllers[i].api}${path}`, {
        method, headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(3000),
      });
      return { status: res.status, json: await res.json() };
    },
    async leader() {
      const seen = new Set<string | null>();
      const says = new Map<string, boolean>();
      lastViews = [];
      for (const c of controllers) {
        if (!c.process) continue;
        // One that does not answer (stopped) has no say.
        const json = await fetch(`${c.api}/v1/services`, { signal: AbortSignal.timeout(1000) }).then((r) => r.json()).catch(() => undefined);
        lastViews.push(`controller ${c.index}: ${json ? JSON.stringify({ leader: json.leader, store: json.store }) : "no answer"}`);
        if (!json) continue;
        seen.add(json.leader?.api ?? null);
        says.set(c.api, json.leader?.self === true);
      }
      const [api] = [...seen];
      // ... and the one they name knows it leads (its key may outlive it by a lease).
      if (seen.size !== 1 || !api || !says.get(api)) return undefined;
      return controllers.find((c) => c.api === api && c.process)?.index;
    },
    async waitLeader() {
      return waitFor("the controllers to agree on a leader", async () => {
        const l = await fleet.leader();
        return l === undefined ? undefined : { l };
      }, 30_000, 20).then((x) => x!.l, (err) => { throw new Error(`${(err as Error).message}; last seen: ${lastViews.join("; ")}`); });
    },
    async whoServes(envoy, timeoutMs = 2000) {
      try { return (await kvExchange(fleet.envoys[envoy].listenerPort, ["WHO"], timeoutMs))[0].replace(/^I-AM /, ""); } catch { return "FAILED"; }
    },
    async close() {
      for (const e of fleet.envoys) await e.kill();
      for (const c of controllers) await c.process?.kill("SIGKILL");
      for (const r of relays) await r.kill("SIGKILL");
      for (const m of members.values()) await m.process.kill("SIGKILL");
      await etcd.process.kill("SIGKILL");
    },
  };
  for (let i = 0; i < nControllers; i++) await fleet.startController(i);
  for (let i = 0; i < nEnvoys; i++) {
    const controller = controllers.map((c) => `127.0.0.1:${c.xdsPort}`);
    if (options.dynamic) {
      fleet.envoys.push({ ...await startDynamicEnvoy({ controller, relayPort: relays[i].port, adminPort: adminPorts[i] }), listenerPort: servicePort });
      continue;
    }
    fleet.envoys.push(await startEnvoy({
      primary: all[0].address, relayPort: relays[i].port, service, adminPort: adminPorts[i],
      controller: controllers.map((c) => `127.0.0.1:${c.xdsPort}`),
      extra: { healthCheck, primaryName: all[0].name, compareReplies: false },
    }));
  }
  await fleet.waitLeader().catch((err) => {
    throw new Error(`${(err as Error).message}\n${controllers.map((c) => `----- controller ${c.index}\n${c.process?.output().slice(-3000)}`).join("\n")}`);
  });
  await waitFor("every Envoy to serve through its listener", async () => {
    for (const e of fleet.envoys) if ((await kvExchange(e.listenerPort, ["PING"]).catch(() => []))[0] !== "PONG") return false;
    return true;
  }, 20_000, 50);
  return fleet;
}
