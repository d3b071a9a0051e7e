// The set-ups every section compares, started once and pinned:
//   direct      client straight to the backend (no Envoy)
//   tcp_proxy   plain Envoy tcp_proxy, no filter: the baseline every ratio is taken against
//   lockstep-N  Envoy + the lockstep filter + a relay mirroring to N replicas (N = 0..3), with
//               the reply check on (the default)
//   lockstep-2-nocheck  the same with 2 replicas and the reply check off: its cost is the difference
// Placement on the 2 cores: Envoy (main thread and its one worker) on CPU 0; the load generator,
// the backends, the relay and this runner on CPU 1.
import { startEnvoy, type EnvoyHandle } from "../../test/support/envoy.ts";
import { startRelay, type RelayHandle } from "../../test/support/relay.ts";
import { freePort } from "../../test/support/ports.ts";
import { pin, type Backends } from "./native.ts";

export const ENVOY_CPU = "0";
export const LOAD_CPU = "1";
export const SERVICE = "bench";

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
  const envoy = await startEnvoy({ primary: `127.0.0.1:${primaryPort}`, relayPort: await freePort(), mirror: false, service: SERVICE });
  pin(envoy.process.child.pid!, ENVOY_CPU);
  return { key: "tcp_proxy", label: "Envoy tcp_proxy (baseline)", port: envoy.listenerPort, replicas: 0, envoy };
}

export async function startLockstep(primaryPort: number, replicaServers: Backends, n: number, compareReplies = true): Promise<Setup> {
  const replicas = replicaSpecs(replicaServers, n);
  const relay = await startRelay({ replicas, service: SERVICE });
  pin(relay.process.child.pid!, LOAD_CPU);
  const envoy = await startEnvoy({ primary: `127.0.0.1:${primaryPort}`, replicas, relayPort: relay.port, service: SERVICE, compareReplies });
  pin(envoy.process.child.pid!, ENVOY_CPU);
  return {
    key: `lockstep-${n}${compareReplies ? "" : "-nocheck"}`,
    label: `Envoy + lockstep, ${n} replica${n === 1 ? "" : "s"}${compareReplies ? "" : ", reply check off"}`,
    port: envoy.listenerPort, replicas: n, envoy, relay,
  };
}

/** direct, tcp_proxy, lockstep-0..maxReplicas, lockstep-2-nocheck: one Envoy (and relay) each, started together. */
export async function startAll(primary: Backends, replicaServers: Backends, maxReplicas: number): Promise<Setup[]> {
  const direct: Setup = { key: "direct", label: "direct to backend", port: primary.ports[0], replicas: 0 };
  const rest = await Promise.all([
    startPlain(primary.ports[0]),
    ...Array.from({ length: maxReplicas + 1 }, (_, n) => startLockstep(primary.ports[0], replicaServers, n)),
    startLockstep(primary.ports[0], replicaServers, Math.min(2, maxReplicas), false),
  ]);
  return [direct, ...rest];
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
