// The compiled load generator and backends (bench/loadgen.c), built at bench time with the
// machine's `cc -O2`, and every process pinned to a core with `taskset` and dying with the bench
// (scripts/child-processes.ts).
import { execFileSync, type ChildProcess } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { spawnTied } from "../../scripts/child-processes.ts";

let binary = "";

/** Compiles bench/loadgen.c into .cache/bench/loadgen (once per run). */
export function buildLoadgen(): string {
  if (binary) return binary;
  const dir = join(PROJECT_ROOT, ".cache", "bench");
  mkdirSync(dir, { recursive: true });
  binary = join(dir, "loadgen");
  execFileSync("cc", ["-O2", "-Wall", "-pthread", "-o", binary, join(PROJECT_ROOT, "bench", "loadgen.c")], { stdio: ["ignore", "inherit", "inherit"] });
  return binary;
}

/** Pins every thread of a running process (and the threads it starts later) to `cpus`. */
export function pin(pid: number, cpus: string): void {
  execFileSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { stdio: "ignore" });
}

/** Raises this process's open-file limit as far as allowed; children (Envoy, the relay, loadgen)
 *  inherit it. Returns the soft limit in force (a sandbox without CAP_SYS_RESOURCE keeps its hard limit). */
export function raiseFileLimit(n = 1_048_576): number {
  try { execFileSync("prlimit", ["--pid", String(process.pid), `--nofile=${n}:${n}`], { stdio: "ignore" }); } catch { /* not root: keep what we have */ }
  // "NOFILE max\x20number\x20of\x20open\x20files SOFT HARD files"
  const out = execFileSync("prlimit", ["--pid", String(process.pid), "--nofile", "--raw", "--noheadings"]).toString().trim().split(/\s+/);
  return Number(out[out.length - 3]);
}

function spawnPinned(cpus: string, args: string[]): ChildProcess {
  return spawnTied("taskset", ["-c", cpus, buildLoadgen(), ...args], { stdio: ["pipe", "pipe", "pipe"] });
}

function firstLine(child: ChildProcess, what: string): Promise<any> {
  return new Promise((resolve, reject) => {
    let err = "";
    child.stderr!.on("data", (d) => { err += d; });
    const rl = createInterface({ input: child.stdout! });
    rl.once("line", (line) => { rl.close(); resolve(JSON.parse(line)); });
    child.once("exit", (code) => reject(new Error(`loadgen ${what} exited ${code}: ${err.trim()}`)));
  });
}

/** Backends: ports[i] is served by the process pids[i]. */
export interface Backends { ports: number[]; pids: number[]; kill(): void }

/** `n` echo/sink servers, each its own process on a free loopback port, pinned to `cpus`: as
 *  with real replicas, every backend costs its own wake-ups (one process serving them all would
 *  take the primary's and every replica's bytes in one epoll_wait). */
export async function startServers(n: number, cpus: string): Promise<Backends> {
  const children = Array.from({ length: n }, () => spawnPinned(cpus, ["serve", "1"]));
  const kill = () => { for (const c of children) c.kill("SIGKILL"); };
  try {
    const ports = (await Promise.all(children.map((c) => firstLine(c, "serve")))).map((x: { ports: number[] }) => x.ports[0]);
    return { ports, pids: children.map((c) => c.pid!), kill };
  } catch (err) { kill(); throw err; }
}

export interface LatencyRun { p50: number; p99: number; p999: number; mean: number; max: number; count: number; wall_s: number; cpu_s: number }
export interface BulkRun { bytes: number; wall_s: number; write_s: number; mb_s: number; cpu_s: number }
export interface RateRun {
  clients: number; size: number; ok: number; failed: number;
  /** Failed connections by kind: connect (refused), no_local_port, reset, closed_early (EOF before the echo), timeout (5 s), other. */
  failures: Record<string, number>;
  conns_s: number; p50_us: number; p99_us: number; wall_s: number; cpu_s: number;
}

async function runOnce<T>(cpus: string, args: string[]): Promise<T> {
  const child = spawnPinned(cpus, args);
  const result = await firstLine(child, args[0]);
  await new Promise((r) => child.once("exit", r));
  return result as T;
}

export const latency = (port: number, size: number, count: number, warmup: number, cpus: string) =>
  runOnce<LatencyRun>(cpus, ["lat", String(port), String(size), String(count), String(warmup)]);

export const bulk = (port: number, bytes: number, cpus: string) => runOnce<BulkRun>(cpus, ["bulk", String(port), String(bytes)]);

/** `clients` threads looping connect, `size`-byte exchange, close for `seconds`. */
export const rate = (port: number, clients: number, seconds: number, size: number, cpus: string) =>
  runOnce<RateRun>(cpus, ["rate", String(port), String(clients), String(seconds), String(size)]);

/** Opens `n` connections and holds them until `release()`. */
export async function holdConnections(port: number, n: number, cpus: string): Promise<{ open_s: number; cpu_s: number; release(): Promise<void> }> {
  const child = spawnPinned(cpus, ["conns", String(port), String(n)]);
  const ready = await firstLine(child, "conns");
  return {
    ...ready,
    release: async () => { child.stdin!.end("close\n"); await new Promise((r) => child.exitCode !== null ? r(null) : child.once("exit", r)); },
  };
}
