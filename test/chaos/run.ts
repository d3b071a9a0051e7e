// A chaos run (Jepsen's nemesis + checker, on real processes): start a stack (3 members of the
// target, relay, controller, Envoy), run the workload, inject faults until the time is up,
// heal (SIGCONT everything, restart what is down), stop the workload, wait for a quiet moment,
// read every member's data and digest and the controller's view, and check (checker.ts).
//
//   npm run chaos -- --seed N --minutes M [--target kv|redis] [--mode mirror|session] [--gap MIN_MS:MAX_MS] [--faults kill-relay,switchover,...]
//
// prints the seed first, progress while it runs, every violation with its context, and a
// verdict line; exits 1 on a violation, 2 if the harness itself failed. A seed replays the same
// schedule of faults and sessions (timing on a shared machine still varies).
import { randomInt } from "node:crypto";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startStack, type Backend, type Stack } from "../support/stack.ts";
import { keepProcessLogs, killAllProcesses } from "../support/processes.ts";
import { History } from "./history.ts";
import { Prng } from "./prng.ts";
import { Workload } from "./workload.ts";
import { FAULT_KINDS, Nemesis, type FaultKind } from "./nemesis.ts";
import { quiesce } from "./reseed.ts";
import { check, formatViolations, timeline, type Violation } from "./checker.ts";
import { readSnapshot } from "./snapshot.ts";
import { QuietPoints } from "./quiet-points.ts";
import { kvTarget } from "./kv-target.ts";
import { redisTarget } from "./redis-target.ts";
import type { Target } from "./target.ts";

export interface ChaosOptions {
  readonly target: Backend;
  /** The service's mode (default "mirror"; "session": docs/SESSION.md). */
  readonly mode?: "mirror" | "session";
  readonly seed: number;
  /** How long faults are injected (the run takes some seconds more: start, heal, check). */
  readonly faultMs: number;
  /** Gap between faults, ms [min, max] (default 2-5 s: about 13 faults a minute, reseeds included). */
  readonly gapMs?: readonly [number, number];
  /** Only these kinds of fault (default all: nemesis.ts). */
  readonly faultKinds?: readonly FaultKind[];
  readonly clients?: number;
  readonly meanGapMs?: number;
  /** Where every process's output is kept (default: not kept). */
  readonly logDir?: string;
  readonly log?: (line: string) => void;
}

export interface ChaosResult {
  readonly target: Backend;
  readonly seed: number;
  readonly faults: Record<FaultKind, number>;
  readonly writes: { acked: number; indeterminate: number; rejected: number };
  readonly violations: readonly Violation[];
  readonly ms: number;
  /** The verdict line. */
  readonly verdict: string;
}

const TARGETS: Record<Backend, Target> = { kv: kvTarget, redis: redisTarget };

function minutes(ms: number): string {
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Milliseconds between faults, drawn between these bounds, unless said otherwise. */
const DEFAULT_GAP_MS = [2000, 5000] as const;

export function rerunCommand(o: ChaosOptions): string {
  const gap = o.gapMs && (o.gapMs[0] !== DEFAULT_GAP_MS[0] || o.gapMs[1] !== DEFAULT_GAP_MS[1]) ? ` --gap ${o.gapMs[0]}:${o.gapMs[1]}` : "";
  return `npm run chaos -- --seed ${o.seed} --minutes ${+(o.faultMs / 60_000).toFixed(3)} --target ${o.target}${o.mode === "session" ? " --mode session" : ""}${gap}${o.faultKinds ? ` --faults ${o.faultKinds.join(",")}` : ""}`;
}

export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const log = o.log ?? ((line: string) => console.log(line));
  const target = TARGETS[o.target];
  const started = Date.now();
  log(`chaos: target ${o.target}${o.mode === "session" ? " (session mode)" : ""}, seed ${o.seed}, faults for ${minutes(o.faultMs)} (re-run: ${rerunCommand(o)})${o.logDir ? `; process logs in ${o.logDir}` : ""}`);
  keepProcessLogs(o.logDir);
  const stack = await startStack({ backend: o.target, replicas: 2, ...(o.mode === "session" ? { extra: { mode: "session" } } : {}) });
  const history = new History();
  const workload = new Workload({ port: stack.envoy.listenerPort, target, history, seed: o.seed, clients: o.clients ?? 6, meanGapMs: o.meanGapMs ?? 400, replyTimeoutMs: 3000 });
  try {
    const quietPoints = new QuietPoints(history, stack, target, log);
    const nemesis = new Nemesis({ stack, target, workload, history, prng: new Prng(o.seed, "nemesis"), gapMs: o.gapMs ?? DEFAULT_GAP_MS, kinds: o.faultKinds, atQuiet: () => quietPoints.check() });
    const faultsFrom = Date.now();
    const deadline = faultsFrom + o.faultMs;
    const progress = () => {
      const w = history.counts();
      const faults = Object.entries(nemesis.counts()).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(", ");
      log(`chaos: ${minutes(Date.now() - faultsFrom)} of ${minutes(o.faultMs)}: ${nemesis.total()} faults (${faults}); writes acked ${w.acked}, indeterminate ${w.indeterminate}, rejected ${w.rejected}; ${workload.connections} connections; ${minutes(Math.max(0, deadline - Date.now()))} left`);
    };
    const ticker = setInterval(progress, o.faultMs >= 300_000 ? 30_000 : 10_000);
    workload.start();
    try { await nemesis.run(deadline); } finally { clearInterval(ticker); }
    progress();
    log("chaos: healing (SIGCONT all, restart what is down), stopping the workload, waiting for a quiet moment");
    await heal(stack);
    await workload.stop();
    await quiesce(stack, 30_000).catch((err) => log(`chaos: not quiet after 30 s (${(err as Error).message}); checking anyway`));
    // Let the controller take in the relay's last figures and fresh health verdicts.
    await sleep(2000);
    const final = await readSnapshot(stack, target, true);
    // A violation seen at a quiet point counts even if a later reseed repaired it.
    const atEnd = check(history, final);
    const violations = [...atEnd, ...quietPoints.found.filter((v) => !atEnd.some((e) => e.check === v.check && e.kind === v.kind && e.member === v.member))];
    const faults = nemesis.counts();
    const writes = history.counts();
    const ms = Date.now() - started;
    const total = Object.values(faults).reduce((a, b) => a + b, 0);
    const verdict = `chaos: ${violations.length ? "FAIL" : "PASS"} target ${o.target} seed ${o.seed}: ${violations.length} violation(s); ${total} faults in ${minutes(o.faultMs)} (${(total / (o.faultMs / 60_000)).toFixed(1)} a minute: ${FAULT_KINDS.map((k) => `${k} ${faults[k]}`).join(", ")}); writes acked ${writes.acked}, indeterminate ${writes.indeterminate}, rejected ${writes.rejected}, over ${workload.connections} connections; checked at ${quietPoints.count} quiet point(s) and at the end; final primary ${final.primary}, roles ${final.members.map((m) => `${m.name} ${m.role}`).join(", ")}; run took ${minutes(ms)}. Re-run: ${rerunCommand(o)}`;
    if (violations.length) {
      log(formatViolations(violations, (v) => quietPoints.dating(v)));
      log(`chaos: the run's faults and the controller's events:\n${timeline(history, final.events).join("\n")}`);
      log(`chaos: Envoy at the end: ${await envoyEndpoints(stack)}; filter counted ${await stack.envoy.stat(`wasmcustom.lockstep.${stack.service}.bytes_unmirrored`)} bytes unmirrored, ${await stack.envoy.stat(`wasmcustom.lockstep.${stack.service}.streams_lost`)} streams lost`);
    }
    log(verdict);
    return { target: o.target, seed: o.seed, faults, writes, violations, ms, verdict };
  } finally {
    await workload.stop();
    await stack.close();
    keepProcessLogs(undefined);
  }
}

/** Everything running again: stopped members continued, exited processes restarted. */
async function heal(stack: Stack): Promise<void> {
  for (const m of stack.members.values()) {
    if (m.process.exited()) await m.restart();
    else m.process.child.kill("SIGCONT");
  }
  if (stack.relay.process.exited()) await stack.restartRelay();
  if (stack.controller.exited()) await stack.restartController();
}

/** Envoy's hosts for the primary cluster: priority, member, active health check verdict. */
async function envoyEndpoints(stack: Stack): Promise<string> {
  const clusters = await (await fetch(`http://127.0.0.1:${stack.envoy.adminPort}/clusters?format=json`)).json() as any;
  const hosts = clusters.cluster_statuses.find((c: any) => c.name === `${stack.service}_primary`)?.host_statuses ?? [];
  const byPort = new Map([...stack.members.values()].map((m) => [m.port, m.name]));
  return hosts.map((h: any) => {
    const port = h.address.socket_address.port_value;
    return `priority ${h.priority ?? 0} ${byPort.get(port) ?? port}${h.health_status.failed_active_health_check ? " (failing its health check)" : ""}`;
  }).join(", ") || "no hosts in the primary cluster";
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    seed: { type: "string" }, minutes: { type: "string", default: "5" }, target: { type: "string", default: "kv" }, faults: { type: "string" }, gap: { type: "string" },
    mode: { type: "string", default: "mirror" },
  } });
  const target = values.target as Backend;
  if (values.mode !== "mirror" && values.mode !== "session") throw new Error(`--mode must be mirror or session, not ${values.mode}`);
  const mode = values.mode;
  if (!(target in TARGETS)) throw new Error(`--target must be kv or redis, not ${values.target}`);
  const seed = values.seed === undefined ? randomInt(2 ** 31) : Number(values.seed);
  const faultMs = Number(values.minutes) * 60_000;
  const faultKinds = values.faults?.split(",") as FaultKind[] | undefined;
  const unknown = faultKinds?.filter((k) => !FAULT_KINDS.includes(k));
  if (unknown?.length) throw new Error(`unknown fault kind(s) ${unknown.join(", ")}; known: ${FAULT_KINDS.join(", ")}`);
  if (!Number.isInteger(seed) || seed < 0 || !(faultMs > 0)) throw new Error("usage: npm run chaos -- [--seed N] [--minutes M] [--target kv|redis] [--gap MIN_MS:MAX_MS] [--faults kind,kind...]");
  const gapMs = values.gap === undefined ? undefined : values.gap.split(":").map(Number) as [number, number];
  if (gapMs && (gapMs.length !== 2 || !gapMs.every((g) => Number.isInteger(g) && g >= 0) || gapMs[0] > gapMs[1])) throw new Error("--gap must be MIN_MS:MAX_MS");
  const logDir = join(PROJECT_ROOT, ".cache", "chaos", `${target}${mode === "session" ? "-session" : ""}-seed${seed}-${new Date().toISOString().replace(/[:.]/g, "")}`);
  const result = await runChaos({ target, mode, seed, faultMs, faultKinds, gapMs, logDir });
  process.exitCode = result.violations.length ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const stop = async (signal: string) => { console.log(`chaos: ${signal}: stopping every process started`); await killAllProcesses(); process.exit(130); };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  try {
    await main();
  } catch (err) {
    const e = err as Error;
    console.error(`chaos: the harness failed: ${e.stack ?? e}${e.cause ? `\ncaused by: ${String(e.cause)}` : ""}`);
    process.exitCode = 2;
  } finally {
    await killAllProcesses();
    process.exit();
  }
}
