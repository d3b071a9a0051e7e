// Where the time goes in bulk mirroring (for docs/BENCHMARKS.md): one lockstep set-up with N
// replicas, placed as in the suite, streams BYTES through Envoy while
//   - the relay runs under `node --cpu-prof` (its self time by function is summarised),
//   - `perf record` samples Envoy (cpu-clock; the release binary is stripped, so Envoy's own
//     code shows as one object: the split is kernel / Envoy / V8-generated code),
//   - Envoy's /stats and the relay's /stats are read before and after.
//
//   npx tsx bench/profile.ts [--replicas 1] [--mib 512] [--windows STREAM_KIB:CONNECTION_KIB] [--relay-cpu 0] [--out FILE]
//   npx tsx bench/profile.ts --rate SECONDS [--replicas 2] ...   (the connection-rate load instead:
//       16 clients looping connect, 64 B exchange, close, as the suite's conns-rate section)
//   npx tsx bench/profile.ts --latency EXCHANGES [--size 64] ...   (one connection's closed-loop
//       exchanges instead, as the suite's latency section: where the relay's CPU per exchange goes)
//   npx tsx bench/profile.ts --hold CONNECTIONS [--replicas 2] ...   (the many-connections section:
//       open and hold that many, each after a 16 B exchange, until the relay holds them all)
//
// --windows sets the relay's HTTP/2 receive windows (relay.json http2; default: the relay's own);
// --relay-cpu moves the relay to another core. Writes bench/results/profile.md (or --out) (the .cpuprofile and perf data go to bench/results/profiles/,
// not committed).
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { PROJECT_ROOT } from "../scripts/envoy-binary.ts";
import * as native from "./suite/native.ts";
import { cpuSeconds } from "./suite/procfs.ts";
import { ENVOY_CPU, ENVOY_WORKERS, LOAD_CPU, relayStats, replicaSpecs, SERVICE, startPlain, stopSetup, sumFamily } from "./suite/setups.ts";
import { startEnvoy } from "../test/support/envoy.ts";
import { RELAY_DEFAULTS } from "../relay/config.ts";
import type { RelayHandle } from "../test/support/relay.ts";
import { startProcess } from "../test/support/processes.ts";
import { freePorts, waitFor } from "../test/support/ports.ts";

const { values } = parseArgs({ options: {
  replicas: { type: "string", default: "1" }, mib: { type: "string", default: "512" },
  windows: { type: "string" }, "relay-cpu": { type: "string", default: LOAD_CPU }, out: { type: "string" }, rate: { type: "string" },
  latency: { type: "string" }, size: { type: "string", default: "64" }, hold: { type: "string" },
} });
const N = Number(values.replicas);
const windows = values.windows?.split(":").map((kib) => Number(kib) * 1024);
const http2 = windows ? { streamWindowBytes: windows[0], connectionWindowBytes: windows[1] } : RELAY_DEFAULTS.http2;
const BYTES = Number(values.mib) * 2 ** 20;
const dir = join(PROJECT_ROOT, "bench", "results", "profiles");
mkdirSync(dir, { recursive: true });
const log = (s: string) => process.stderr.write(`${s}\n`);

function perfAvailable(): boolean {
  try { execFileSync("perf", ["record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"], { stdio: "ignore" }); return true; } catch { return false; }
}

/** Self time by function from a V8 .cpuprofile, top `n`, over the samples taken between
 *  `fromUs` and `toUs` (CLOCK_MONOTONIC µs, V8's and process.hrtime's clock), idle left out:
 *  shares of the relay's busy time during the transfer. */
function topFunctions(file: string, n: number, fromUs: number, toUs: number): { fn: string; pct: number }[] {
  const prof = JSON.parse(readFileSync(file, "utf8"));
  const byId = new Map<number, any>(prof.nodes.map((x: any) => [x.id, x]));
  const self = new Map<string, number>();
  const counts = new Map<number, number>();
  let t = prof.startTime;
  prof.samples.forEach((id: number, i: number) => {
    t += prof.timeDeltas[i];
    if (t < fromUs || t > toUs || byId.get(id).callFrame.functionName === "(idle)") return;
    counts.set(id, (counts.get(id) ?? 0) + 1);
  });
  let total = 0;
  for (const [id, c] of counts) {
    const node = byId.get(id);
    const cf = node.callFrame;
    const where = cf.url ? `${cf.url.replace(/^.*\/(node_modules\/)?/, "")}:${cf.lineNumber + 1}` : "";
    const key = `${cf.functionName || "(anonymous)"} ${where}`.trim();
    self.set(key, (self.get(key) ?? 0) + c);
    total += c;
  }
  return [...self].sort((a, b) => b[1] - a[1]).slice(0, n).map(([fn, c]) => ({ fn, pct: (100 * c) / total }));
}

async function main(): Promise<void> {
  native.raiseFileLimit();
  native.pin(process.pid, LOAD_CPU);
  const primary = await native.startServers(1, LOAD_CPU);
  const replicas = await native.startServers(3, LOAD_CPU);
  const profDir = join(dir, `relay-${Date.now()}`);
  // test/support's startRelay runs `node --import tsx relay/main.ts`; node refuses --cpu-prof in
  // NODE_OPTIONS, so the profiled relay is started here the same way with the flag added.
  const [relayPort, metricsPort] = await freePorts(2);
  const relayConfig = join(profDir, "relay.json");
  mkdirSync(profDir, { recursive: true });
  writeFileSync(relayConfig, JSON.stringify({ listen: { host: "127.0.0.1", port: relayPort }, metrics: { host: "127.0.0.1", port: metricsPort }, services: { [SERVICE]: replicaSpecs(replicas, N) }, http2 }));
  const relayProc = startProcess("relay", process.execPath, ["--cpu-prof", `--cpu-prof-dir=${profDir}`, "--import", "tsx", join(PROJECT_ROOT, "relay", "main.ts"), "--config", relayConfig], { cwd: PROJECT_ROOT });
  await waitFor("the relay", async () => (await fetch(`http://127.0.0.1:${metricsPort}/healthz`)).ok, 20_000, 50);
  native.pin(relayProc.child.pid!, values["relay-cpu"]!);
  const envoy = await startEnvoy({ primary: `127.0.0.1:${primary.ports[0]}`, replicas: replicaSpecs(replicas, N), relayPort, service: SERVICE, concurrency: ENVOY_WORKERS });
  native.pin(envoy.process.child.pid!, ENVOY_CPU);
  const relay = { metricsPort, process: relayProc, kill: (sig: NodeJS.Signals = "SIGTERM") => relayProc.kill(sig) } as unknown as RelayHandle;
  const s = { key: `lockstep-${N}`, label: "", port: envoy.listenerPort, replicas: N, envoy, relay };
  const plain = await startPlain(primary.ports[0]);
  const envoyPid = s.envoy!.process.child.pid!;
  const relayPid = s.relay!.process.child.pid!;
  const RATE_S = values.rate === undefined ? undefined : Number(values.rate);
  const EXCHANGES = values.latency === undefined ? undefined : Number(values.latency);
  const SIZE = Number(values.size);
  if (values.hold !== undefined) return holdProfile(s, Number(values.hold), relayPid, profDir, envoy, async () => {
    await stopSetup(s); await stopSetup(plain);
    primary.kill(); replicas.kill();
  });
  if (EXCHANGES !== undefined) return latencyProfile(s, plain.port, EXCHANGES, SIZE, envoyPid, relayPid, profDir, async () => {
    await stopSetup(s); await stopSetup(plain);
    primary.kill(); replicas.kill();
  });
  if (RATE_S === undefined) await native.bulk(s.port, 32 * 2 ** 20, LOAD_CPU); // warm-up
  else await native.rate(s.port, 16, 1, 64, LOAD_CPU);
  const plainRun = RATE_S === undefined ? await native.bulk(plain.port, BYTES, LOAD_CPU) : undefined;
  const plainRate = RATE_S === undefined ? undefined : await native.rate(plain.port, 16, RATE_S, 64, LOAD_CPU);
  const envoyBefore = await s.envoy!.stats();
  const relayBefore = await relayStats(s.relay!);
  const e0 = cpuSeconds(envoyPid), r0 = cpuSeconds(relayPid);
  const perfFile = join(dir, "envoy.perf.data");
  const perf = perfAvailable() ? spawn("perf", ["record", "-e", "cpu-clock", "-F", "999", "-g", "-p", String(envoyPid), "-o", perfFile], { stdio: "ignore" }) : null;
  await new Promise((r) => setTimeout(r, 300));
  log(RATE_S === undefined ? `profile: streaming ${values.mib} MiB through lockstep with ${N} replica(s)` : `profile: connection rate for ${RATE_S} s through lockstep with ${N} replica(s)`);
  const t0 = Date.now();
  const windowStartUs = Number(process.hrtime.bigint() / 1000n);
  const run = RATE_S === undefined ? await native.bulk(s.port, BYTES, LOAD_CPU) : undefined;
  const rateRun = RATE_S === undefined ? undefined : await native.rate(s.port, 16, RATE_S, 64, LOAD_CPU);
  if (run) {
    const want = sumFamily(relayBefore, "lockstep_relay_replica_bytes_acked_total") + BYTES * N;
    while (sumFamily(await relayStats(s.relay!), "lockstep_relay_replica_bytes_acked_total") < want && Date.now() - t0 < 120_000) await new Promise((r) => setTimeout(r, 20));
  } else {
    while (sumFamily(await relayStats(s.relay!), "lockstep_relay_streams_active") > 0 && Date.now() - t0 < 120_000) await new Promise((r) => setTimeout(r, 20));
  }
  const wall = (Date.now() - t0) / 1000;
  const windowEndUs = Number(process.hrtime.bigint() / 1000n);
  const envoyCpu = cpuSeconds(envoyPid) - e0, relayCpu = cpuSeconds(relayPid) - r0;
  if (perf) { perf.kill("SIGINT"); await new Promise((r) => perf.once("exit", r)); }
  const envoyAfter = await s.envoy!.stats();
  const relayAfter = await relayStats(s.relay!);
  await stopSetup(s); await stopSetup(plain);
  primary.kill(); replicas.kill();
  await new Promise((r) => setTimeout(r, 500));

  const d = (name: string) => (envoyAfter.get(name) ?? 0) - (envoyBefore.get(name) ?? 0);
  const envoyDeltas = [...envoyAfter.keys()].filter((k) => /^(wasmcustom\.lockstep\.|cluster\.lockstep_relay\.|cluster\.bench_primary\.(upstream_cx_tx_bytes_total|upstream_flow_control)|tcp\.bench\.)/.test(k))
    .map((k) => [k, d(k)] as const).filter(([, v]) => v !== 0);
  const relayDeltas = Object.keys(relayAfter).filter((name) => Array.isArray(relayAfter[name])).flatMap((name) => { // (not "instance")
    const delta = sumFamily(relayAfter, name) - sumFamily(relayBefore, name);
    return delta ? [[name, delta] as const] : [];
  });

  const what = run
    ? `one connection streams ${values.mib} MiB through Envoy + lockstep with ${N} replica(s)`
    : `16 clients loop connect, 64 B exchange, close for ${RATE_S} s through Envoy + lockstep with ${N} replica(s)`;
  const lines: string[] = [
    `# ${run ? "Bulk mirroring" : "Connection rate"} profile (${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC)`, "",
    `\`npx tsx bench/profile.ts ${process.argv.slice(2).join(" ")}\`: ${what}; Envoy on CPU ${ENVOY_CPU}, client and backends on CPU ${LOAD_CPU}, relay on CPU ${values["relay-cpu"]}; relay's HTTP/2 windows ${http2.streamWindowBytes / 1024} KiB per stream, ${http2.connectionWindowBytes / 1024} KiB per connection${windows ? "" : " (its defaults)"}.`, "",
    ...(run
      ? [`- throughput: ${run.mb_s.toFixed(0)} MB/s (plain tcp_proxy in the same run: ${plainRun!.mb_s.toFixed(0)} MB/s); until the last replica byte: ${wall.toFixed(2)} s`]
      : [`- connections/s: ${rateRun!.conns_s.toFixed(0)} (plain tcp_proxy in the same run: ${plainRate!.conns_s.toFixed(0)}); ${rateRun!.ok} connections, ${rateRun!.failed} failed; until the relay's last stream ended: ${wall.toFixed(2)} s`,
         `- per connection: Envoy ${(envoyCpu / rateRun!.ok * 1e6).toFixed(0)} µs CPU, relay ${(relayCpu / rateRun!.ok * 1e6).toFixed(0)} µs CPU`]),
    `- Envoy CPU: ${envoyCpu.toFixed(2)} s (${(envoyCpu / wall * 100).toFixed(0)}% of one core over the run); relay CPU: ${relayCpu.toFixed(2)} s (${(relayCpu / wall * 100).toFixed(0)}% of one core)`,
    `- client CPU: ${(((run ?? rateRun)!.cpu_s / (run ?? rateRun)!.wall_s) * 100).toFixed(0)}% of its wall time`, "",
    "## Envoy stats over the run (changed ones)", "", "| stat | delta |", "| --- | ---: |",
    ...envoyDeltas.map(([k, v]) => `| ${k} | ${v} |`), "",
    "## Relay /stats over the run (changed ones)", "", "| metric | delta |", "| --- | ---: |",
    ...relayDeltas.map(([k, v]) => `| ${k} | ${v} |`), "",
  ];
  // One file per thread that ran JS (tsx's loader has a worker too): the main thread's is the largest.
  const profiles = readdirSync(profDir).filter((f) => f.endsWith(".cpuprofile")).sort((a, b) => statSync(join(profDir, b)).size - statSync(join(profDir, a)).size);
  if (profiles.length) {
    lines.push("## Relay: self time by function during the transfer (node --cpu-prof; share of busy samples, idle left out)", "", "| function | self % |", "| --- | ---: |",
      ...topFunctions(join(profDir, profiles[0]), 25, windowStartUs, windowEndUs).map((x) => `| \`${x.fn}\` | ${x.pct.toFixed(1)} |`), "");
  }
  if (perf) {
    const byDso = execFileSync("perf", ["report", "-i", perfFile, "--stdio", "--no-children", "--sort", "dso", "-q", "-g", "none"], { maxBuffer: 64 << 20 }).toString()
      .split("\n").filter((l) => l.trim() && /%/.test(l)).slice(0, 8);
    const bySym = execFileSync("perf", ["report", "-i", perfFile, "--stdio", "--no-children", "--sort", "sym", "-q", "-g", "none"], { maxBuffer: 64 << 20 }).toString()
      .split("\n").filter((l) => l.trim() && /%/.test(l)).slice(0, 25);
    lines.push("## Envoy: perf samples by object (cpu-clock, 999 Hz)", "", "```", ...byDso.map((l) => l.trim()), "```", "",
      "## Envoy: top symbols (kernel symbols resolve; the stripped Envoy binary does not)", "", "```", ...bySym.map((l) => l.trim()), "```", "");
  }
  const outFile = values.out ?? join(PROJECT_ROOT, "bench", "results", "profile.md");
  writeFileSync(outFile, lines.join("\n"));
  log(`profile: wrote ${outFile}`);
  process.exit(0);
}
/** The hold mode: open `n` connections, each after one exchange, and wait until the relay holds
 *  every stream and replica connection, the relay profiled meanwhile. */
async function holdProfile(s: { port: number; relay?: RelayHandle }, n: number, relayPid: number, profDir: string,
  envoy: { stats(): Promise<Map<string, number>> }, stop: () => Promise<void>): Promise<void> {
  log(`profile: holding ${n} connections through lockstep with ${N} replica(s)`);
  const r0 = cpuSeconds(relayPid);
  const fromUs = Number(process.hrtime.bigint() / 1000n);
  const t0 = Date.now();
  const held = await native.holdConnections(s.port, n, LOAD_CPU);
  const openS = (Date.now() - t0) / 1000;
  let heldAll = 0;
  await waitFor("the relay to hold every stream and replica connection", async () => {
    const st = await relayStats(s.relay!);
    return sumFamily(st, "lockstep_relay_streams_active") >= n && sumFamily(st, "lockstep_relay_replica_connections_active") >= n * N;
  }, 60_000, 200).then(() => { heldAll = (Date.now() - t0) / 1000; }).catch((e) => log(`profile: ${(e as Error).message}`));
  const last = await relayStats(s.relay!);
  const gauges = ["lockstep_relay_streams_active", "lockstep_relay_streams_total", "lockstep_relay_replica_connections_active", "lockstep_relay_replica_connections_total", "lockstep_relay_replica_detaches_total", "lockstep_relay_connections_unmirrored_total"]
    .map((name) => `${name} ${sumFamily(last, name)}`);
  log(`profile: relay at the end of the wait: ${gauges.join(", ")}`);
  const envoyStats = [...(await envoy.stats())].filter(([k, v]) => v !== 0 && /^(cluster\.lockstep_relay\.|wasmcustom\.)/.test(k) && !/bucket|_ms|histogram/.test(k));
  log(`profile: Envoy at the end of the wait: ${envoyStats.map(([k, v]) => `${k}=${v}`).join(" ")}`);
  const toUs = Number(process.hrtime.bigint() / 1000n);
  const relayCpu = cpuSeconds(relayPid) - r0;
  await held.release();
  await stop();
  await new Promise((r) => setTimeout(r, 500));
  const lines = [
    `# Many-connections profile (${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC)`, "",
    `\`npx tsx bench/profile.ts ${process.argv.slice(2).join(" ")}\`: ${n} connections opened and held through Envoy + lockstep with ${N} replica(s), each after a 16 B exchange.`, "",
    `- the client had every answer after ${openS.toFixed(2)} s; the relay held every stream and replica connection after ${heldAll ? `${heldAll.toFixed(2)} s` : "(not within 60 s)"}; relay CPU meanwhile ${relayCpu.toFixed(2)} s`,
    `- the relay at the end of the wait: ${gauges.join(", ")}`, "",
  ];
  writeProfile(lines, "", profDir, fromUs, toUs, "profile-hold.md");
}

/** The latency mode: closed-loop exchanges on one connection, the relay profiled meanwhile. */
async function latencyProfile(s: { port: number }, plainPort: number, exchanges: number, size: number, envoyPid: number, relayPid: number,
  profDir: string, stop: () => Promise<void>): Promise<void> {
  await native.latency(s.port, size, 2000, 200, LOAD_CPU); // warm-up
  const plain = await native.latency(plainPort, size, exchanges, 200, LOAD_CPU);
  log(`profile: ${exchanges} exchanges of ${size} B through lockstep with ${N} replica(s)`);
  const e0 = cpuSeconds(envoyPid), r0 = cpuSeconds(relayPid);
  const fromUs = Number(process.hrtime.bigint() / 1000n);
  const run = await native.latency(s.port, size, exchanges, 200, LOAD_CPU);
  const toUs = Number(process.hrtime.bigint() / 1000n);
  const envoyCpu = cpuSeconds(envoyPid) - e0, relayCpu = cpuSeconds(relayPid) - r0;
  await stop();
  await new Promise((r) => setTimeout(r, 500));
  const lines = [
    `# Latency profile (${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC)`, "",
    `\`npx tsx bench/profile.ts ${process.argv.slice(2).join(" ")}\`: one connection, ${exchanges} closed-loop exchanges of ${size} B through Envoy + lockstep with ${N} replica(s); Envoy on CPU ${ENVOY_CPU}, client and backends on CPU ${LOAD_CPU}, relay on CPU ${values["relay-cpu"]}.`, "",
    `- p50 ${run.p50.toFixed(1)} µs, p99 ${run.p99.toFixed(1)} µs (plain tcp_proxy in the same run: p50 ${plain.p50.toFixed(1)}, p99 ${plain.p99.toFixed(1)} µs)`,
    `- per exchange: Envoy ${(envoyCpu / run.count * 1e6).toFixed(1)} µs CPU, relay ${(relayCpu / run.count * 1e6).toFixed(1)} µs CPU (10 ms ticks over ${run.wall_s.toFixed(1)} s)`, "",
  ];
  writeProfile(lines, " during the exchanges", profDir, fromUs, toUs, "profile-latency.md");
}

/** Add the relay's self time by function (samples between fromUs and toUs) to `lines`, write
 *  them to --out or bench/results/<defaultName>, and exit. */
function writeProfile(lines: string[], during: string, profDir: string, fromUs: number, toUs: number, defaultName: string): never {
  const profiles = readdirSync(profDir).filter((f) => f.endsWith(".cpuprofile")).sort((a, b) => statSync(join(profDir, b)).size - statSync(join(profDir, a)).size);
  if (profiles.length) {
    lines.push(`## Relay: self time by function${during} (node --cpu-prof; share of busy samples, idle left out)`, "", "| function | self % |", "| --- | ---: |",
      ...topFunctions(join(profDir, profiles[0]), 30, fromUs, toUs).map((x) => `| \`${x.fn}\` | ${x.pct.toFixed(1)} |`), "");
  }
  const outFile = values.out ?? join(PROJECT_ROOT, "bench", "results", defaultName);
  writeFileSync(outFile, lines.join("\n"));
  log(`profile: wrote ${outFile}`);
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(1); });
