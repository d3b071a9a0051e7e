// lockstep's benchmark suite (issues 5 and 10): latency, bulk throughput, connection rate, many
// connections and failover, for direct / plain Envoy tcp_proxy / Envoy + lockstep with 0..3
// replicas, in one run.
//
//   npm run bench                 full mode, for people (about 10-15 minutes)
//   npm run bench -- --quick      quick mode: proves the harness in seconds (CI runs it)
//   npx tsx bench/run.ts [--quick] [--only latency,bulk,conns-rate,conns,failover] [--out DIR] [--conns 1000,10000]
//
// Progress goes to stderr; the results (results.md, results.svg, results.json) go to
// bench/results/ in full mode, bench/results/quick/ in quick mode and bench/results/partial/
// with --only, unless --out says otherwise. Method and findings: docs/BENCHMARKS.md.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { findEnvoy, PROJECT_ROOT } from "../scripts/envoy-binary.ts";
import * as native from "./suite/native.ts";
import { loadAverage } from "./suite/procfs.ts";
import { bulkSection, connsSection, failoverSection, latencySection, placementCheck, rateSection, type Progress } from "./suite/sections.ts";
import { ENVOY_CPU, ENVOY_WORKERS, envoyWorkers, LOAD_CPU, startAll, stopSetup, type Setup } from "./suite/setups.ts";
import { renderMarkdown, renderSvg, type Results } from "./suite/report.ts";

export interface SuiteOptions {
  quick: boolean;
  only?: string[];
  outDir?: string;
  /** Override the connection counts of the mode (e.g. [10000]). */
  connCounts?: number[];
  progress?: Progress;
}

/** The sizes of each mode. Full mode is what docs/BENCHMARKS.md reports; quick mode only proves the harness. */
export function modeSettings(quick: boolean) {
  return quick
    ? { latencyExchanges: 2000, latencyRounds: 2, bulkBytes: 32 * 2 ** 20, bulkRounds: 1, connCounts: [100, 300], connRounds: 1, failover: { kill: 2, stop: 1 }, placementExchanges: 0,
        rate: { clients: 16, size: 64, seconds: 1, rounds: 1, warmupSeconds: 0.2, drainLimitS: 30 } }
    : { latencyExchanges: 20000, latencyRounds: 5, bulkBytes: 2 ** 30, bulkRounds: 3, connCounts: [1000, 10000], connRounds: 3, failover: { kill: 30, stop: 10 }, placementExchanges: 10000,
        rate: { clients: 16, size: 64, seconds: 10, rounds: 3, warmupSeconds: 1, drainLimitS: 120 } };
}

export async function runSuite(options: SuiteOptions): Promise<{ results: Results; files: string[] }> {
  const progress = options.progress ?? ((line: string) => process.stderr.write(`${line}\n`));
  const want = (section: string) => !options.only || options.only.includes(section);
  const m = { ...modeSettings(options.quick), ...(options.connCounts ? { connCounts: options.connCounts } : {}) };
  const fileLimit = native.raiseFileLimit();
  // Envoy holds two descriptors per proxied connection (client and primary), the relay two per
  // connection with two replicas: a count above what the open-file limit allows would crash
  // Envoy (EMFILE), so such counts are lowered to the largest whole thousand that fits.
  const connCap = Math.max(100, Math.floor((fileLimit - 1000) / 2 / 1000) * 1000);
  const requestedConnCounts = m.connCounts;
  m.connCounts = [...new Set(m.connCounts.map((n) => Math.min(n, connCap)))];
  // A partial run (--only) never overwrites the full run's files.
  const outDir = resolve(options.outDir ?? join(PROJECT_ROOT, "bench", "results", options.quick ? "quick" : options.only ? "partial" : ""));
  const started = Date.now();

  native.pin(process.pid, LOAD_CPU);
  // Measure the filter as the tree has it now (npm test builds it too; quick mode reuses a build).
  if (!options.quick || !existsSync(join(PROJECT_ROOT, "build", "lockstep.wasm"))) {
    progress("bench: building the filter (npm run build)");
    execFileSync("npm", ["run", "--silent", "build"], { cwd: PROJECT_ROOT, stdio: ["ignore", "ignore", "inherit"] });
  }
  progress(`bench: ${options.quick ? "quick" : "full"} mode; compiling bench/loadgen.c with cc -O2`);
  native.buildLoadgen();
  const results: Results = {
    meta: {
      date: new Date().toISOString(), mode: options.quick ? "quick" : "full",
      loadBefore: loadAverage(), loadAfter: "", seconds: 0,
      cpus: `${cpus().length} × ${cpus()[0]?.model ?? "?"}`,
      envoy: execFileSync(findEnvoy(), ["--version"]).toString().trim().split("\n").pop()!.replace(/^.*version: /, ""),
      node: process.version, fileLimit, requestedConnCounts,
      envoyWorkers: ENVOY_WORKERS,
      placement: `Envoy (${ENVOY_WORKERS} workers, Envoy's default as scripts/run.ts runs it) on CPU ${ENVOY_CPU}; load generator, backends (one process each), relay and runner on CPU ${LOAD_CPU} (taskset); the failover stack (bench/failover.ts) unpinned`,
    },
  };

  /** Run one section; a failure is recorded in the report and the run goes on. */
  const section = async <T>(name: string, run: () => Promise<T>): Promise<T | undefined> => {
    try { return await run(); } catch (err) {
      const why = (err as Error).message.split("\n")[0];
      progress(`bench: section ${name} failed: ${why}`);
      (results.errors ??= []).push(`${name}: ${why}`);
      return undefined;
    }
  };

  const primary = await native.startServers(1, LOAD_CPU);
  const replicaServers = await native.startServers(3, LOAD_CPU);
  let setups: Setup[] = [];
  try {
    if (want("latency") || want("bulk") || want("conns-rate")) {
      progress("bench: starting direct, tcp_proxy and lockstep with 0-3 replicas");
      setups = await startAll(primary, replicaServers, 3);
      for (const s of setups) {
        const workers = s.envoy ? await envoyWorkers(s.envoy) : ENVOY_WORKERS;
        if (workers !== ENVOY_WORKERS) throw new Error(`${s.key}: Envoy runs ${workers} workers, not the ${ENVOY_WORKERS} of its default`);
      }
    }
    if (want("latency")) {
      results.latency = [];
      for (const size of [64, 4096]) results.latency.push(await latencySection(setups, size, m.latencyExchanges, m.latencyRounds, progress));
      if (m.placementExchanges) results.placement = await placementCheck(setups, [primary, replicaServers], m.placementExchanges, progress);
    }
    if (want("bulk")) results.bulk = await section("bulk", () => bulkSection(setups, m.bulkBytes, m.bulkRounds, progress));
    // Last on these set-ups: churn can leave a relay slow to drain (the section waits for it).
    if (want("conns-rate")) results.connRate = await section("conns-rate", () => rateSection(setups.filter((s) => !s.key.endsWith("-nocheck")), m.rate, progress));
    for (const s of setups) await stopSetup(s);
    setups = [];
    if (want("conns")) results.conns = await section("conns", () => connsSection(primary, replicaServers, m.connCounts, 2, m.connRounds, progress));
    if (want("failover")) {
      // bench/failover.ts starts its own stack (controller, Envoy, relay, backends) and places
      // nothing: let it use both cores, as its tests do.
      native.pin(process.pid, "0,1");
      results.failover = await section("failover", () => failoverSection(m.failover, progress));
    }
  } finally {
    for (const s of setups) await stopSetup(s);
    primary.kill();
    replicaServers.kill();
  }
  results.meta.loadAfter = loadAverage();
  results.meta.seconds = Math.round((Date.now() - started) / 1000);

  mkdirSync(outDir, { recursive: true });
  const files = [join(outDir, "results.md"), join(outDir, "results.svg"), join(outDir, "results.json")];
  writeFileSync(files[0], renderMarkdown(results));
  writeFileSync(files[1], renderSvg(results));
  writeFileSync(files[2], JSON.stringify(results, null, 2) + "\n");
  progress(`bench: done in ${results.meta.seconds} s; wrote ${files.map((f) => f.replace(PROJECT_ROOT + "/", "")).join(", ")}`);
  return { results, files };
}

const invokedDirectly = process.argv[1] && resolve(process.argv[1]) === resolve(PROJECT_ROOT, "bench", "run.ts");
if (invokedDirectly) {
  const { values } = parseArgs({ options: { quick: { type: "boolean", default: false }, only: { type: "string" }, out: { type: "string" }, conns: { type: "string" } } });
  runSuite({ quick: values.quick!, only: values.only?.split(","), outDir: values.out, connCounts: values.conns?.split(",").map(Number) })
    .then(({ files }) => { process.stdout.write(`${files[0]}\n`); process.exit(0); }, (err) => { console.error(err); process.exit(1); });
}
