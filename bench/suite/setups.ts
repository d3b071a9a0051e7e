// The set-ups every section compares, started once and pinned:
//   direct      client straight to the backend (no Envoy)
//   tcp_proxy   plain Envoy tcp_proxy, no filter: the baseline every ratio is taken against
//   lockstep-N  Envoy + the lockstep filter + a relay mirroring to N replicas (N = 0..3), with
//               the reply check on (the default)
//   lockstep-2-nocheck  the same with 2 replicas and the reply check off: its cost is the difference
// Envoy runs with the workers scripts/run.ts gives it: no --concurrency, so Envoy's default of one
// worker per hardware thread (ENVOY_WORKERS, 2 on the project's machine).
// Placement on the 2 cores: Envoy (main thread and all its workers) on CPU 0; the load generator,
// the backends (one process each), the relay and this runner on CPU 1 (docs/BENCHMARKS.md says why).
import { cpus } from "node:os";
import { startEnvoy, type EnvoyHandle } from "../../test/support/envoy.ts";
import { startRelay, type RelayHandle } from "../../test/support/relay.ts";
import { freePort } from "../../test/support/ports.ts";
import { pin, type Backends } from "./native.ts";

export const ENVOY_CPU = "0";
export const LOAD_CPU = "1";
export const SERVICE = "bench";
/** Envoy's own default for --concurrency (the hardware threads, affinity ignored), which is what
 *  scripts/run.ts runs: it passes no --concurrency. Every Envoy's /server_info is checked against it. */
export const ENVOY_WORKERS = cpus().length;

export interface Setup {
  key: string;        // "direct" | "tcp_proxy" | "lockstep-N"
  label: string;
  port: number;
  replicas: number;
  envoy?: EnvoyHandle;
  relay?: RelayHandle;
}

export const BASELINE = "tcp_proxy";

export function replicaSpecs(replicaServers: Backends, n: number) {
  return replicaServers.ports.slice(0, n).map((p, i) => ({ name: `r${i + 1}`, address: `127.0.0.1:${p}` }));
}

export async function startPlain(primaryPort: number): Promise<Setup> {
  const envoy = await startEnvoy({ primary: `127.0.0.1:${primaryPort}`, relayPort: await freePort(), mirror: false, service: SERVICE, concurrency: ENVOY_WORKERS });
  pin(envoy.process.child.pid!, ENVOY_CPU);
  return { key: "tcp_proxy", label: "Envoy tcp_proxy (baseline)", port: envoy.listenerPort, replicas: 0, envoy };
}

export async function startLockstep(primaryPort: number, replicaServers: Backends, n: number, compareReplies = true): Promise<Setup> {
  const replicas = replicaSpecs(replicaServers, n);
  const relay = await startRelay({ replicas, service: SERVICE });
  pin(relay.process.child.pid!, LOAD_CPU);
  const envoy = await startEnvoy({ primary: `127.0.0.1:${primaryPort}`, replicas, relayPort: relay.port, service: SERVICE, compareReplies, concurrency: ENVOY_WORKERS });
  pin(envoy.process.child.pid!, ENVOY_CPU);
  return {
    key: `lockstep-${n}${compareReplies ? "" : "-nocheck"}`,
    label: `Envoy + lockstep, ${n} replica${n === 1 ? "" : "s"}${compareReplies ? "" : ", reply check off"}`,
    port: envoy.listenerPort, replicas: n, envoy, relay,
  };
}

/** Session mode (docs/SESSION.md): Envoy tunnels each connection to the relay, which carries it
 *  to the primary and `n` replicas; the relay's set named as the controller would (primary,
 *  successor r1). */
export async function startSession(primaryPort: number, replicaServers: Backends, n: number): Promise<Setup> {
  const members = [{ name: "p", address: `127.0.0.1:${primaryPort}` }, ...replicaSpecs(replicaServers, n)];
  const relay = await startRelay({});
  pin(relay.process.child.pid!, LOAD_CPU);
  const res = await fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/${SERVICE}/replicas`, {
    method: "PUT", headers: { authorization: `Bearer ${relay.controlToken}`, "content-type": "application/json" },
    body: JSON.stringify({ replicas: members, primary: "p", ...(n > 0 ? { successor: "r1" } : {}) }),
  });
  if (!res.ok) throw new Error(`relay refused the session set: ${res.status} ${await res.text()}`);
  const envoy = await startEnvoy({ primary: members[0].address, relayPort: relay.port, service: SERVICE, concurrency: ENVOY_WORKERS, compareReplies: true, extra: { mode: "session" } });
  pin(envoy.process.child.pid!, ENVOY_CPU);
  return { key: `session-${n}`, label: `Envoy + lockstep session mode, ${n} replica${n === 1 ? "" : "s"}`, port: envoy.listenerPort, replicas: n, envoy, relay };
}

/** direct, tcp_proxy, lockstep-0..maxReplicas, lockstep-2-nocheck: one Envoy (and relay) each,
 *  started one after another (each Envoy compiles the filter once per worker and once on its main
 *  thread: started all at once on a busy machine they missed their readiness deadline). */
export async function startAll(primary: Backends, replicaServers: Backends, maxReplicas: number): Promise<Setup[]> {
  const direct: Setup = { key: "direct", label: "direct to backend", port: primary.ports[0], replicas: 0 };
  const starts = [
    () => startPlain(primary.ports[0]),
    ...Array.from({ length: maxReplicas + 1 }, (_, n) => () => startLockstep(primary.ports[0], replicaServers, n)),
    () => startLockstep(primary.ports[0], replicaServers, Math.min(2, maxReplicas), false),
  ];
  const out: Setup[] = [direct];
  try {
    for (const start of starts) out.push(await start());
  } catch (err) {
    for (const s of out) await stopSetup(s);
    throw err;
  }
  return out;
}

/** The worker count an Envoy runs with, as its admin /server_info reports it. */
export async function envoyWorkers(envoy: EnvoyHandle): Promise<number> {
  const info = await (await fetch(`http://127.0.0.1:${envoy.adminPort}/server_info`)).json() as { command_line_options?: { concurrency?: number } };
  return Number(info.command_line_options?.concurrency);
}

export async function stopSetup(s: Setup): Promise<void> {
  await s.envoy?.kill();
  await s.relay?.kill();
}

/** The relay's /stats JSON: family name → series. */
export async function relayStats(relay: RelayHandle): Promise<Record<string, { labels: Record<string, string>; value: number }[]>> {
  return (await fetch(`http://127.0.0.1:${relay.metricsPort}/stats`)).json() as any;
}

export function sumFamily(stats: Record<string, { labels: Record<string, string>; value: number }[]>, name: string, labels: Record<string, string> = {}): number {
  return (stats[name] ?? []).filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
}

/** Sum of the filter's Envoy stats whose name ends with `suffix` (e.g. ".pauses"). */
export function sumEnvoy(stats: Map<string, number>, pattern: RegExp): number {
  let n = 0;
  for (const [k, v] of stats) if (pattern.test(k)) n += v;
  return n;
}
