// Session mode's benchmark (issue 11): its latency and bulk rows beside direct, plain Envoy
// tcp_proxy and today's mode (lockstep, mirror), in one run with the suite's sections and
// placement (bench/suite/), and its takeover time over fresh set-ups (bench/session-takeover.ts).
//
//   npm run bench:session [-- --quick] [--trials 20] [--out DIR]
//
// Writes results.md, results.svg (the suite's report) and takeover.md to bench/results/session/
// (quick: bench/results/session-quick/). Discussion: docs/SESSION.md, docs/BENCHMARKS.md.
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { execFileSync } from "node:child_process";
import { findEnvoy, PROJECT_ROOT } from "../scripts/envoy-binary.ts";
import * as native from "./suite/native.ts";
import { loadAverage } from "./suite/procfs.ts";
import { bulkSection, latencySection } from "./suite/sections.ts";
import { ENVOY_CPU, ENVOY_WORKERS, LOAD_CPU, startLockstep, startPlain, startSession, stopSetup, type Setup } from "./suite/setups.ts";
import { renderMarkdown, renderSvg, type Results } from "./suite/report.ts";
import { measureTakeover, type TakeoverResult } from "./session-takeover.ts";

const { values } = parseArgs({ options: { quick: { type: "boolean", default: false }, trials: { type: "string" }, out: { type: "string" } } });
const quick = values.quick!;
const m = quick
  ? { exchanges: 2000, rounds: 1, bulkBytes: 32 * 2 ** 20, bulkRounds: 1, trials: 3 }
  : { exchanges: 20000, rounds: 3, bulkBytes: 2 ** 30, bulkRounds: 3, trials: 20 };
const trials = values.trials ? Number(values.trials) : m.trials;
const outDir = resolve(values.out ?? join(PROJECT_ROOT, "bench", "results", quick ? "session-quick" : "session"));
const progress = (line: string) => process.stderr.write(`${line}\n`);
const started = Date.now();

native.raiseFileLimit();
native.pin(process.pid, LOAD_CPU);
native.buildLoadgen();
const results: Results = {
  meta: {
    date: new Date().toISOString(), mode: quick ? "quick" : "full", loadBefore: loadAverage(), loadAfter: "", seconds: 0,
    cpus: `${cpus().length} × ${cpus()[0]?.model ?? "?"}`,
    envoy: execFileSync(findEnvoy(), ["--version"]).toString().trim().split("\n").pop()!.replace(/^.*version: /, ""),
    node: process.version, fileLimit: 0, requestedConnCounts: [], envoyWorkers: ENVOY_WORKERS,
    placement: `Envoy (${ENVOY_WORKERS} workers) on CPU ${ENVOY_CPU}; load generator, backends (one process each) and relay on CPU ${LOAD_CPU}; takeover trials unpinned`,
  },
};
const primary = await native.startServers(1, LOAD_CPU);
const replicaServers = await native.startServers(2, LOAD_CPU);
const setups: Setup[] = [{ key: "direct", label: "direct to backend", port: primary.ports[0], replicas: 0 }];
try {
  progress("bench:session: starting direct, tcp_proxy, lockstep (mirror) with 1 and 2 replicas, session mode with 1 and 2");
  setups.push(await startPlain(primary.ports[0]));
  for (const n of [1, 2]) setups.push(await startLockstep(primary.ports[0], replicaServers, n));
  for (const n of [1, 2]) setups.push(await startSession(primary.ports[0], replicaServers, n));
  results.latency = [];
  for (const size of [64, 4096]) results.latency.push(await latencySection(setups, size, m.exchanges, m.rounds, progress));
  results.bulk = await bulkSection(setups, m.bulkBytes, m.bulkRounds, progress);
} finally {
  for (const s of setups) await stopSetup(s);
  primary.kill();
  replicaServers.kill();
}
native.pin(process.pid, "0,1");
const takeovers: TakeoverResult[] = [];
for (const kind of ["kill", "stop"] as const) {
  progress(`takeover ${kind}: ${trials} trials`);
  takeovers.push(await measureTakeover({ kind, trials, progress: (line) => progress(`takeover ${kind}: ${line}`) }));
}
results.meta.loadAfter = loadAverage();
results.meta.seconds = Math.round((Date.now() - started) / 1000);

const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; };
const f = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1));
const takeoverMd = [
  `# Session mode: takeover time (${results.meta.date.slice(0, 16).replace("T", " ")} UTC, ${quick ? "quick" : "full"} mode)`,
  "",
  "Written by `npm run bench:session` (bench/session-takeover.ts). From the signal to the primary to the first byte",
  "of the successor's answer on connections that sent a request right after it; per trial the first connection",
  "answered and the last. The research lockstep comes from measured 5-6 ms from detection (../shared/BACKGROUND.md).",
  "",
  "The relay's takeover time is its event's (wall clock, 1 ms resolution): \"after the takeover\" is the part the",
  "research's 5-6 ms compares with; the rest is detection.",
  "",
  "| signal | trials | first answer p50 | p99 | max | last connection p50 | p99 | max | after the takeover p50 | p99 | failed connections |",
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ...takeovers.map((t) => `| ${t.kind === "kill" ? "kill -9" : "SIGSTOP"} | ${t.trials} | ${f(pct(t.firstMs, 50))} ms | ${f(pct(t.firstMs, 99))} ms | ${f(Math.max(...t.firstMs))} ms | ` +
    `${f(pct(t.lastMs, 50))} ms | ${f(pct(t.lastMs, 99))} ms | ${f(Math.max(...t.lastMs))} ms | ${f(pct(t.afterDetectionMs, 50))} ms | ${f(pct(t.afterDetectionMs, 99))} ms | ${t.failed} |`),
  "",
  ...takeovers.map((t) => `- ${t.kind}: ${t.note}`),
  "",
].join("\n");
mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, "results.md"), renderMarkdown(results).replace(/^Written by .*$/m,
  `Written by \`npm run bench:session${quick ? " -- --quick" : ""}\` (bench/session.ts): session mode beside direct, tcp_proxy and mirror mode; takeover time in [takeover.md](takeover.md); discussion: [docs/SESSION.md](../../../docs/SESSION.md).`));
writeFileSync(join(outDir, "results.svg"), renderSvg(results));
writeFileSync(join(outDir, "results.json"), JSON.stringify({ ...results, takeovers }, null, 2) + "\n");
writeFileSync(join(outDir, "takeover.md"), takeoverMd);
progress(`bench:session: done in ${results.meta.seconds} s; wrote ${outDir.replace(PROJECT_ROOT + "/", "")}/results.md, results.svg, results.json, takeover.md`);
process.stdout.write(takeoverMd);
