// Scale of the control plane, by simulation (issue 12): one controller on a real etcd with
// 1,000 services of 3 members each, and 50 simulated xDS subscribers (a child process, so
// their JSON parsing does not run on the controller's CPU) each holding a long-poll for every
// service's endpoints. Members are probed by a simulated probe (no sockets): a trial marks one
// service's primary down and asks for a probe round now (what the controller's kept probe
// connection does when a member crashes), then measures until every subscriber holds a
// snapshot built from the stored state that records the promotion (received in full). Reports
// p50/p99 of that time, its phases, and the controller's memory.
//
//   npx tsx bench/fleet-scale.ts [--services 1000] [--subscribers 50] [--trials 30]
import { parseArgs } from "node:util";
import { spawn } from "node:child_process";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { request, Agent } from "node:http";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startController, type RunningController } from "../controller/server.ts";
import type { Probe } from "../controller/health/probe.ts";
import { HEALTH_DEFAULTS } from "../controller/health/checker.ts";
import { newerVersion } from "../controller/xds/ordered-version.ts";
import { startEtcd } from "../test/support/etcd.ts";
import { freePorts, waitFor } from "../test/support/ports.ts";

const { values } = parseArgs({ options: {
  services: { type: "string", default: "1000" }, subscribers: { type: "string", default: "50" }, trials: { type: "string", default: "30" },
  "subscriber-process": { type: "string" },
} });

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Child mode: `n` subscribers long-polling every cluster on the xDS port; prints "<version> <ms>" per answer. */
async function subscribe(port: number, n: number): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: n });
  const poll = (id: number, version: string): Promise<string> => new Promise((resolve) => {
    const body = JSON.stringify({ version_info: version, node: { id: `sim-${id}` }, resource_names: [] });
    const req = request({ host: "127.0.0.1", port, method: "POST", path: "/v3/discovery:endpoints", agent, headers: { "content-type": "application/json" } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        if (res.statusCode !== 200) return resolve(version);
        // Received in full is "holding" it; the version leads the body (parsing all of it would
        // charge every subscriber's parse to this one process, not to 50 Envoys' own CPUs).
        const got = /^\{"version_info":"([^"]+)"/.exec(Buffer.concat(chunks).subarray(0, 200).toString("utf8"))?.[1] ?? version;
        process.stdout.write(`${id} ${got} ${now().toFixed(3)}\n`);
        resolve(got);
      });
    });
    req.on("error", () => setTimeout(() => resolve(version), 100));
    req.end(body);
  });
  await Promise.all(Array.from({ length: n }, async (_, id) => { let v = ""; for (;;) v = await poll(id, v); }));
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function main(): Promise<void> {
  const nServices = Number(values.services);
  const nSubscribers = Number(values.subscribers);
  const nTrials = Number(values.trials);
  const etcd = await startEtcd();
  const [apiPort, xdsPort, deadRelay] = await freePorts(3);
  const down = new Set<string>();
  const probe: Probe = async (address) => (down.has(address) ? { ok: false, error: "simulated failure", fatal: true } : { ok: true, rttMs: 0.1 });
  // Probes every second (not every 100 ms): 3,000 members; a crash is seen at once anyway (probeNow).
  const health = { ...HEALTH_DEFAULTS, intervalMs: 1000 };
  const address = (s: number, m: number) => `127.${1 + (s >> 8)}.${s & 255}.${1 + m}:7000`;
  const services = Array.from({ length: nServices }, (_, s) => ({
    service: { name: `svc${s}`, members: [0, 1, 2].map((m) => ({ name: `m${m}`, address: address(s, m), role: m === 0 ? "primary" as const : "replica" as const, lagBytes: 0 })) },
    health,
  }));
  const heapBefore = process.memoryUsage();
  let running: RunningController | undefined;
  let child: ReturnType<typeof spawn> | undefined;
  try {
    running = await startController({
      services, api: { host: "127.0.0.1", port: apiPort }, xds: { host: "127.0.0.1", port: xdsPort }, token: "bench-token-123456",
      storePath: join(mkdtempSync(join(tmpdir(), "lockstep-fleet-scale-")), "unused.json"),
      etcd: { endpoints: [etcd.url], prefix: "/bench/", leaseTtlSeconds: 2 },
      relay: { url: `http://127.0.0.1:${deadRelay}` }, probe,
      relayPollMs: 1000,
    });
    const r = running;
    const api = async (path: string) => (await fetch(`http://127.0.0.1:${apiPort}${path}`)).json() as Promise<any>;
    await waitFor("the controller to lead and declare every service", async () => (await api("/v1/services")).services.length === nServices && r.xds.version?.startsWith("0.") === false, 120_000, 200);
    await waitFor("every member seen up", () => r.state.list().every((s) => s.members.every((m) => m.alive === true) && s.successor !== undefined), 120_000, 200);
    await sleep(2000);
    // Subscribers, in their own process.
    child = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--subscriber-process", `${xdsPort}:${nSubscribers}`], { stdio: ["ignore", "pipe", "inherit"] });
    const latest = new Map<number, { version: string; at: number }[]>();
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const [id, version, at] = line.split(" ");
      const list = latest.get(Number(id)) ?? [];
      list.push({ version, at: Number(at) });
      latest.set(Number(id), list);
    });
    await waitFor("every subscriber to hold the current snapshot", () => latest.size === nSubscribers && [...latest.values()].every((l) => l.at(-1)!.version === r.xds.version), 60_000, 100);
    const settled = process.memoryUsage();
    const times: number[] = [];
    const decided: number[] = [];
    const published: number[] = [];
    for (let t = 0; t < nTrials; t++) {
      const s = r.state.list()[(t * 37) % nServices];
      const primary = s.members.find((m) => m.role === "primary")!;
      const failedAt = now();
      down.add(primary.address);
      r.controller.probeNow();
      await waitFor(`the failover of ${s.name}`, () => r.state.get(s.name)!.members.find((m) => m.name === primary.name)!.role === "stale", 30_000, 1);
      decided.push(now() - failedAt);
      // The first version published from a stored state that holds the promotion.
      const target = await waitFor("the snapshot with the promotion", () => {
        const v = r.xds.version!;
        const cla = r.xds.current?.endpoints.get(`${s.name}_primary`);
        return cla && cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address !== primary.address.split(":")[0] ? v : undefined;
      }, 30_000, 1);
      published.push(now() - failedAt);
      const holds = (id: number) => latest.get(id)!.find((x) => x.version === target || newerVersion(x.version, target!));
      await waitFor("every subscriber to hold it", () => [...latest.keys()].every(holds), 30_000, 5);
      const last = Math.max(...[...latest.keys()].map((id) => holds(id)!.at));
      times.push(last - failedAt);
      process.stdout.write(`fleet-scale: trial ${t + 1}/${nTrials}: ${s.name} failed over, every subscriber held it after ${(last - failedAt).toFixed(1)} ms\n`);
      await sleep(300);
    }
    const sorted = [...times].sort((a, b) => a - b);
    const mib = (n: number) => (n / 2 ** 20).toFixed(0);
    console.log(`\nfleet-scale: ${nServices} services x 3 members, ${nSubscribers} subscribers (each holding every service's endpoints), etcd store, ${nTrials} primary failures`);
    console.log(`  failure -> every subscriber holds the new snapshot: p50 ${percentile(sorted, 50).toFixed(1)} ms, p99 ${percentile(sorted, 99).toFixed(1)} ms, max ${sorted.at(-1)!.toFixed(1)} ms`);
    const p50 = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50).toFixed(1);
    console.log(`  phases (p50): decided ${p50(decided)} ms, stored and published ${p50(published)} ms, held by every subscriber ${p50(times)} ms`);
    console.log(`  controller process: RSS ${mib(settled.rss)} MiB, heap used ${mib(settled.heapUsed)} MiB with every subscriber served (before starting: RSS ${mib(heapBefore.rss)} MiB); after the trials: RSS ${mib(process.memoryUsage().rss)} MiB`);
    console.log(`  snapshot: ${(JSON.stringify([...r.xds.current!.endpoints.values()]).length / 1024).toFixed(0)} KiB of JSON per answer`);
  } finally {
    child?.kill("SIGKILL");
    await running?.close();
    await etcd.process.kill("SIGKILL");
  }
}

if (values["subscriber-process"]) {
  const [port, n] = values["subscriber-process"].split(":").map(Number);
  await subscribe(port, n);
} else {
  await main();
  process.exit(0);
}
