// Primary-path latency of one small request/reply exchange, closed loop on one connection:
// direct to the backend, plain Envoy tcp_proxy, and Envoy + lockstep with 0, 1 and 2
// replicas, all measured in the same run. Reports p50/p99/p99.9 and ratios to tcp_proxy.
//
//   npx tsx bench/latency.ts [--exchanges 20000] [--size 64] [--rounds 3]
//
// Writes bench/results/latency.md. Processes share the machine's 2 cores: the client, Envoy
// (1 worker), the relay and the backends are not pinned; rounds interleave the set-ups so
// drift hits them alike, and the median over rounds is reported with its spread.
import { createServer, connect, type Socket } from "node:net";
import { writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startEnvoy, type EnvoyHandle } from "../test/support/envoy.ts";
import { startRelay, type RelayHandle } from "../test/support/relay.ts";
import { freePort } from "../test/support/ports.ts";
import { PROJECT_ROOT } from "../scripts/envoy-binary.ts";

const { values } = parseArgs({ options: {
  exchanges: { type: "string", default: "20000" }, size: { type: "string", default: "64" }, rounds: { type: "string", default: "3" },
} });
const EXCHANGES = Number(values.exchanges);
const SIZE = Number(values.size);
const ROUNDS = Number(values.rounds);

async function echoServer(): Promise<{ port: number; close: () => void }> {
  const server = createServer((s) => { s.on("data", (d) => s.write(d)); s.on("error", () => {}); });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { port: (server.address() as { port: number }).port, close: () => server.close() };
}

/** Closed loop: send SIZE bytes, wait for SIZE bytes back, repeat. Returns latencies in µs. */
async function closedLoop(port: number, exchanges: number): Promise<number[]> {
  const socket: Socket = await new Promise((resolve, reject) => {
    const s = connect(port, "127.0.0.1", () => resolve(s));
    s.on("error", reject);
  });
  socket.setNoDelay(true);
  const request = Buffer.alloc(SIZE, 0x61);
  const out: number[] = [];
  await new Promise<void>((resolve) => {
    let pending = 0;
    let started = 0n;
    const next = () => { pending = SIZE; started = process.hrtime.bigint(); socket.write(request); };
    socket.on("data", (d: Buffer) => {
      pending -= d.length;
      if (pending > 0) return;
      out.push(Number(process.hrtime.bigint() - started) / 1000);
      if (out.length === exchanges) resolve(); else next();
    });
    next();
  });
  socket.destroy();
  return out;
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface Setup { name: string; port: number; }

async function main(): Promise<void> {
  const backends = await Promise.all([echoServer(), echoServer(), echoServer()]);
  const [primary, r1, r2] = backends;
  const replicaSpecs = [{ name: "r1", address: `127.0.0.1:${r1.port}` }, { name: "r2", address: `127.0.0.1:${r2.port}` }];
  const relays: RelayHandle[] = [];
  const envoys: EnvoyHandle[] = [];
  const setups: Setup[] = [{ name: "direct to backend", port: primary.port }];
  const plain = await startEnvoy({ primary: `127.0.0.1:${primary.port}`, relayPort: await freePort(), mirror: false, service: "bench" });
  envoys.push(plain);
  setups.push({ name: "Envoy tcp_proxy (baseline)", port: plain.listenerPort });
  for (const n of [0, 1, 2]) {
    const relay = await startRelay({ replicas: replicaSpecs.slice(0, n) });
    relays.push(relay);
    const envoy = await startEnvoy({ primary: `127.0.0.1:${primary.port}`, replicas: replicaSpecs.slice(0, n), relayPort: relay.port, service: "bench" });
    envoys.push(envoy);
    setups.push({ name: `Envoy + lockstep, ${n} replica${n === 1 ? "" : "s"}`, port: envoy.listenerPort });
  }
  const results = new Map<string, { p50: number[]; p99: number[]; p999: number[] }>();
  for (const s of setups) results.set(s.name, { p50: [], p99: [], p999: [] });
  for (let round = 1; round <= ROUNDS; round++) {
    for (const s of setups) {
      await closedLoop(s.port, Math.min(2000, EXCHANGES)); // warm-up
      const sorted = (await closedLoop(s.port, EXCHANGES)).sort((a, b) => a - b);
      const r = results.get(s.name)!;
      r.p50.push(pct(sorted, 50)); r.p99.push(pct(sorted, 99)); r.p999.push(pct(sorted, 99.9));
      console.error(`round ${round}/${ROUNDS} ${s.name.padEnd(34)} p50 ${pct(sorted, 50).toFixed(1)} µs  p99 ${pct(sorted, 99).toFixed(1)} µs`);
    }
  }
  const base = results.get("Envoy tcp_proxy (baseline)")!;
  const fmt = (xs: number[], b: number[]) => `${median(xs).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)}) · ×${(median(xs) / median(b)).toFixed(3)}`;
  const rows = setups.map((s) => {
    const r = results.get(s.name)!;
    return `| ${s.name} | ${fmt(r.p50, base.p50)} | ${fmt(r.p99, base.p99)} | ${fmt(r.p999, base.p999)} |`;
  });
  const table = [
    `Latency of one ${SIZE}-byte request / ${SIZE}-byte reply, closed loop, one connection; ${EXCHANGES} exchanges per round, ${ROUNDS} rounds.`,
    "Each cell: median over rounds in µs (min–max over rounds) · ratio to Envoy tcp_proxy.",
    "",
    "| set-up | p50 µs | p99 µs | p99.9 µs |",
    "| --- | --- | --- | --- |",
    ...rows,
    "",
  ].join("\n");
  console.log(table);
  mkdirSync(join(PROJECT_ROOT, "bench", "results"), { recursive: true });
  writeFileSync(join(PROJECT_ROOT, "bench", "results", "latency.md"), `# Primary-path latency (${new Date().toISOString().slice(0, 10)})\n\n${table}`);
  for (const e of envoys) await e.kill();
  for (const r of relays) await r.kill();
  backends.forEach((b) => b.close());
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
