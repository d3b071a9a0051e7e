// The four sections of the suite. Each takes its options and a progress callback, runs its
// rounds (interleaving the set-ups so drift hits them alike) and returns plain data for the
// report.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { waitFor } from "../../test/support/ports.ts";
import * as native from "./native.ts";
import { cpuSeconds, rssBytes } from "./procfs.ts";
import { spread, type Spread } from "./stats.ts";
import {
  BASELINE, ENVOY_CPU, LOAD_CPU, relayStats, startLockstep, startPlain, stopSetup, sumEnvoy, sumFamily, type Setup,
} from "./setups.ts";

export type Progress = (line: string) => void;

// ---------------------------------------------------------------- latency

export interface LatencyRow {
  setup: string; label: string;
  p50: Spread; p99: Spread; p999: Spread;
  ratio: { p50: number; p99: number; p999: number };
  /** The noise gauge beside p99: the direct set-up's p99 measured just before each round of this
   *  row (same size and count), over the rounds; null for the direct row itself. A direct p99 far
   *  above its quiet value (about 15 µs here) says the machine was busy while this row ran. */
  noiseP99: Spread | null;
  /** The client's CPU time over its wall time, worst round: far below 1 means it was waiting, not working. */
  clientBusy: number;
  /** CPU time per timed exchange (median over rounds), µs, from /proc/<pid>/stat; null where there is no such process. */
  envoyCpuUs: number | null; relayCpuUs: number | null;
}
export interface LatencySection { size: number; exchanges: number; rounds: number; rows: LatencyRow[] }

export async function latencySection(setups: Setup[], size: number, exchanges: number, rounds: number, progress: Progress): Promise<LatencySection> {
  const raw = new Map(setups.map((s) => [s.key, [] as (native.LatencyRun & { envoyCpu?: number; relayCpu?: number; noiseP99?: number })[]]));
  const direct = setups.find((s) => s.key === "direct");
  for (let round = 1; round <= rounds; round++) {
    for (const s of setups) {
      progress(`latency ${size}B: ${s.key} round ${round}/${rounds}`);
      // The noise gauge: a direct run just before this one (a direct exchange takes ~13 µs, so
      // this costs an eighth of the round's time).
      const gauge = direct && s !== direct ? await native.latency(direct.port, size, exchanges, 200, LOAD_CPU) : undefined;
      const envoyPid = s.envoy?.process.child.pid, relayPid = s.relay?.process.child.pid;
      const e0 = envoyPid ? cpuSeconds(envoyPid) : 0, r0 = relayPid ? cpuSeconds(relayPid) : 0;
      // (the warm-up exchanges are counted too: CPU per exchange is over warm-up + timed)
      const warmup = Math.max(200, Math.floor(exchanges / 10));
      const run = await native.latency(s.port, size, exchanges, warmup, LOAD_CPU);
      raw.get(s.key)!.push({
        ...run, noiseP99: gauge?.p99,
        envoyCpu: envoyPid ? ((cpuSeconds(envoyPid) - e0) / (exchanges + warmup)) * 1e6 : undefined,
        relayCpu: relayPid ? ((cpuSeconds(relayPid) - r0) / (exchanges + warmup)) * 1e6 : undefined,
      });
    }
  }
  const rows = setups.map((s) => {
    const runs = raw.get(s.key)!;
    return {
      setup: s.key, label: s.label,
      p50: spread(runs.map((r) => r.p50)), p99: spread(runs.map((r) => r.p99)), p999: spread(runs.map((r) => r.p999)),
      ratio: { p50: 0, p99: 0, p999: 0 },
      noiseP99: runs.every((r) => r.noiseP99 !== undefined) ? spread(runs.map((r) => r.noiseP99!)) : null,
      clientBusy: Math.max(...runs.map((r) => r.cpu_s / r.wall_s)),
      envoyCpuUs: s.envoy ? spread(runs.map((r) => r.envoyCpu!)).median : null,
      relayCpuUs: s.relay ? spread(runs.map((r) => r.relayCpu!)).median : null,
    };
  });
  const base = rows.find((r) => r.setup === BASELINE)!;
  for (const r of rows) r.ratio = { p50: r.p50.median / base.p50.median, p99: r.p99.median / base.p99.median, p999: r.p999.median / base.p999.median };
  return { size, exchanges, rounds, rows };
}

export interface PlacementRow { placement: string; direct: number; tcpProxy: number; lockstep1: number }

/** Why plain tcp_proxy looked slow in the first latency bench: the same 64-byte exchange with
 *  the processes placed three ways. Every core-to-core wake-up costs tens of µs on this VM. */
export async function placementCheck(setups: Setup[], backends: native.Backends[], exchanges: number, progress: Progress): Promise<PlacementRow[]> {
  const direct = setups.find((s) => s.key === "direct")!;
  const plain = setups.find((s) => s.key === BASELINE)!;
  const one = setups.find((s) => s.key === "lockstep-1")!;
  const envoyPids = [plain.envoy!.process.child.pid!, one.envoy!.process.child.pid!];
  const relayPid = one.relay!.process.child.pid!;
  const placements: { name: string; envoy: string; relay: string; others: string }[] = [
    { name: "suite: Envoy on CPU 0; client, backends, relay on CPU 1", envoy: ENVOY_CPU, relay: LOAD_CPU, others: LOAD_CPU },
    { name: "Envoy's threads free on both cores; client, backends, relay on CPU 1", envoy: "0,1", relay: LOAD_CPU, others: LOAD_CPU },
    { name: "relay moved to CPU 0, beside Envoy", envoy: ENVOY_CPU, relay: ENVOY_CPU, others: LOAD_CPU },
    { name: "all on CPU 1", envoy: LOAD_CPU, relay: LOAD_CPU, others: LOAD_CPU },
    { name: "unpinned (scheduler's choice, as bench/latency.ts ran)", envoy: "0,1", relay: "0,1", others: "0,1" },
  ];
  const rows: PlacementRow[] = [];
  for (const p of placements) {
    progress(`latency placement: ${p.name}`);
    for (const pid of envoyPids) native.pin(pid, p.envoy);
    native.pin(relayPid, p.relay);
    for (const b of backends) for (const pid of b.pids) native.pin(pid, p.others);
    const d = await native.latency(direct.port, 64, exchanges, 500, p.others);
    const t = await native.latency(plain.port, 64, exchanges, 500, p.others);
    const l = await native.latency(one.port, 64, exchanges, 500, p.others);
    rows.push({ placement: p.name, direct: d.p50, tcpProxy: t.p50, lockstep1: l.p50 });
  }
  for (const pid of envoyPids) native.pin(pid, ENVOY_CPU);
  native.pin(relayPid, LOAD_CPU);
  for (const b of backends) for (const pid of b.pids) native.pin(pid, LOAD_CPU);
  return rows;
}

// ---------------------------------------------------------------- bulk

export interface BulkRow {
  setup: string; label: string; replicas: number;
  mbps: Spread; ratio: number;
  envoyCpuPerGB: Spread | null; relayCpuPerGB: Spread | null;
  clientBusy: number;
  /** Filter pauses (the relay or a replica was behind), mirrors cut, replica detaches, over all rounds. */
  pauses: number; overflows: number; detaches: number; unmirroredBytes: number;
  /** Every replica received every byte of every round. */
  replicasComplete: boolean;
  /** Longest wait, after the client was done, for the last replica to take its last byte. */
  catchUpMs: number;
}
export interface BulkSection { bytes: number; rounds: number; rows: BulkRow[] }

export async function bulkSection(setups: Setup[], bytes: number, rounds: number, progress: Progress): Promise<BulkSection> {
  type Run = { mbps: number; envoyCpu?: number; relayCpu?: number; clientBusy: number; catchUpMs: number; complete: boolean };
  const raw = new Map(setups.map((s) => [s.key, [] as Run[]]));
  const before = new Map<string, { envoy?: Map<string, number>; relay?: any }>();
  for (const s of setups) before.set(s.key, { envoy: await s.envoy?.stats(), relay: s.relay ? await relayStats(s.relay) : undefined });
  for (let round = 1; round <= rounds; round++) {
    for (const s of setups) {
      progress(`bulk ${(bytes / 2 ** 20).toFixed(0)} MiB: ${s.key} round ${round}/${rounds}`);
      const envoyPid = s.envoy?.process.child.pid;
      const relayPid = s.relay?.process.child.pid;
      const ackedBefore = s.relay ? sumFamily(await relayStats(s.relay), "lockstep_relay_replica_bytes_acked_total") : 0;
      const e0 = envoyPid ? cpuSeconds(envoyPid) : 0;
      const r0 = relayPid ? cpuSeconds(relayPid) : 0;
      const run = await native.bulk(s.port, bytes, LOAD_CPU);
      const done = Date.now();
      let complete = true;
      if (s.relay && s.replicas > 0) {
        const want = ackedBefore + bytes * s.replicas;
        complete = await waitFor("replicas to take every byte", async () => sumFamily(await relayStats(s.relay!), "lockstep_relay_replica_bytes_acked_total") >= want, 30_000, 20)
          .then(() => true, () => false);
      }
      const catchUpMs = Date.now() - done;
      raw.get(s.key)!.push({
        mbps: run.mb_s,
        envoyCpu: envoyPid ? cpuSeconds(envoyPid) - e0 : undefined,
        relayCpu: relayPid ? cpuSeconds(relayPid) - r0 : undefined,
        clientBusy: run.cpu_s / run.wall_s, catchUpMs, complete,
      });
    }
  }
  const rows: BulkRow[] = [];
  for (const s of setups) {
    const runs = raw.get(s.key)!;
    const gb = bytes / 1e9;
    const b = before.get(s.key)!;
    const envoyAfter = await s.envoy?.stats();
    const relayAfter = s.relay ? await relayStats(s.relay) : undefined;
    const envoyDelta = (re: RegExp) => envoyAfter && b.envoy ? sumEnvoy(envoyAfter, re) - sumEnvoy(b.envoy, re) : 0;
    rows.push({
      setup: s.key, label: s.label, replicas: s.replicas,
      mbps: spread(runs.map((r) => r.mbps)), ratio: 0,
      envoyCpuPerGB: s.envoy ? spread(runs.map((r) => r.envoyCpu! / gb)) : null,
      relayCpuPerGB: s.relay ? spread(runs.map((r) => r.relayCpu! / gb)) : null,
      clientBusy: Math.max(...runs.map((r) => r.clientBusy)),
      pauses: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.pauses$/),
      overflows: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.overflows$/),
      unmirroredBytes: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.bytes_unmirrored$/),
      detaches: relayAfter ? sumFamily(relayAfter, "lockstep_relay_replica_detaches_total") - sumFamily(b.relay, "lockstep_relay_replica_detaches_total") : 0,
      replicasComplete: runs.every((r) => r.complete),
      catchUpMs: Math.max(...runs.map((r) => r.catchUpMs)),
    });
  }
  const base = rows.find((r) => r.setup === BASELINE)!;
  for (const r of rows) r.ratio = r.mbps.median / base.mbps.median;
  return { bytes, rounds, rows };
}

// ---------------------------------------------------------------- many connections

export interface ConnsRow {
  connections: number; setup: string; label: string;
  envoyRss: Spread; relayRss: Spread | null;
  /** (RSS holding the connections − RSS before them) / connections, bytes. */
  envoyPerConn: Spread; relayPerConn: Spread | null;
  /** The same for Envoy's own heap (admin /memory "allocated", tcmalloc): the rest of its RSS
   *  growth is outside that heap (V8's heaps for the wasm VM, thread stacks). */
  envoyHeapPerConn: Spread;
  /** Envoy + relay RSS over plain tcp_proxy's Envoy RSS at the same count. */
  totalRatio: number;
  openSeconds: Spread;
}
export interface ConnsSection { counts: number[]; replicas: number; rounds: number; rows: ConnsRow[] }

async function envoyHeapBytes(s: Setup): Promise<number> {
  const m = await (await fetch(`http://127.0.0.1:${s.envoy!.adminPort}/memory`)).json() as { allocated: string };
  return Number(m.allocated);
}

/** tcp_proxy, lockstep with no replica (the filter and its gRPC stream, no replica sockets), and
 *  lockstep with `replicas` replicas, each holding every count of connections. */
export async function connsSection(primary: native.Backends, replicaServers: native.Backends, counts: number[], replicas: number, rounds: number, progress: Progress): Promise<ConnsSection> {
  const rows: ConnsRow[] = [];
  for (const n of counts) {
    const raw = new Map<string, { envoy: number; relay?: number; envoyPer: number; relayPer?: number; heapPer: number; open: number }[]>();
    const labels = new Map<string, string>();
    for (let round = 1; round <= rounds; round++) {
      for (const kind of [BASELINE, "lockstep-0", `lockstep-${replicas}`]) {
        const nReplicas = kind === BASELINE ? 0 : Number(kind.slice("lockstep-".length));
        progress(`connections ${n}: ${kind} round ${round}/${rounds}`);
        // Fresh processes every round: memory once touched is not given back.
        const s = kind === BASELINE ? await startPlain(primary.ports[0]) : await startLockstep(primary.ports[0], replicaServers, nReplicas);
        labels.set(kind, s.label);
        try {
          const envoyPid = s.envoy!.process.child.pid!;
          const relayPid = s.relay?.process.child.pid;
          // Warm-up: a few connections set up the wasm VM's per-connection paths and the relay's gRPC connection.
          const warm = await native.holdConnections(s.port, 8, LOAD_CPU);
          await warm.release();
          if (s.relay) await waitFor("warm-up streams to end", async () => sumFamily(await relayStats(s.relay!), "lockstep_relay_streams_active") === 0, 10_000, 20);
          await new Promise((r) => setTimeout(r, 300));
          const envoy0 = rssBytes(envoyPid);
          const heap0 = await envoyHeapBytes(s);
          const relay0 = relayPid ? rssBytes(relayPid) : 0;
          const held = await native.holdConnections(s.port, n, LOAD_CPU);
          if (s.relay) {
            await waitFor(`${n} streams and ${n * nReplicas} replica connections at the relay`, async () => {
              const st = await relayStats(s.relay!);
              return sumFamily(st, "lockstep_relay_streams_total") >= n && sumFamily(st, "lockstep_relay_replica_connections_active") >= n * nReplicas;
            }, 120_000, 100);
          }
          await new Promise((r) => setTimeout(r, 500));
          const envoy1 = rssBytes(envoyPid);
          const heap1 = await envoyHeapBytes(s);
          const relay1 = relayPid ? rssBytes(relayPid) : undefined;
          if (!raw.has(kind)) raw.set(kind, []);
          raw.get(kind)!.push({
            envoy: envoy1, relay: relay1, envoyPer: (envoy1 - envoy0) / n,
            relayPer: relay1 !== undefined ? (relay1 - relay0) / n : undefined, heapPer: (heap1 - heap0) / n, open: held.open_s,
          });
          await held.release();
        } catch (err) {
          // One round lost (e.g. the open-file limit hit at the edge) is reported, not fatal.
          progress(`connections ${n}: ${kind} round ${round}/${rounds} failed, skipped: ${(err as Error).message.split("\n")[0]}`);
        } finally {
          await stopSetup(s);
        }
      }
    }
    if (!raw.has(BASELINE)) continue;
    const plainEnvoy = spread(raw.get(BASELINE)!.map((r) => r.envoy)).median;
    for (const [kind, runs] of raw) {
      const envoyRss = spread(runs.map((r) => r.envoy));
      const relayRss = runs[0].relay !== undefined ? spread(runs.map((r) => r.relay!)) : null;
      rows.push({
        connections: n, setup: kind, label: labels.get(kind)!,
        envoyRss, relayRss,
        envoyPerConn: spread(runs.map((r) => r.envoyPer)),
        relayPerConn: relayRss ? spread(runs.map((r) => r.relayPer!)) : null,
        envoyHeapPerConn: spread(runs.map((r) => r.heapPer)),
        totalRatio: (envoyRss.median + (relayRss?.median ?? 0)) / plainEnvoy,
        openSeconds: spread(runs.map((r) => r.open)),
      });
    }
  }
  return { counts, replicas, rounds, rows };
}

// ---------------------------------------------------------------- connection rate

export interface RateRow {
  setup: string; label: string; replicas: number;
  /** Connections completed per second (connect, one exchange, close), over rounds. */
  connsPerSec: Spread; ratio: number;
  /** Connections completed and failed over all rounds; failures by kind (loadgen's). */
  completed: number; failed: number; failures: Record<string, number>;
  /** One whole connection (connect..close) as a client saw it, µs. */
  p50Us: Spread; p99Us: Spread;
  clientBusy: number;
  /** CPU per completed connection, µs (the relay's counted until it drained). */
  envoyCpuUsPerConn: Spread | null; relayCpuUsPerConn: Spread | null;
  /** The relay's lockstep_relay_replica_connections_active (all replicas), sampled every
   *  100 ms: the most open at once, and the value when the clients stopped (max over rounds). */
  replicaConnsMax: number | null; replicaConnsAtStop: number | null;
  /** lockstep_relay_streams_active: the most streams the relay held at once. */
  streamsMax: number | null;
  /** From the clients' stop until the relay had no replica connection open, ms, over the rounds
   *  that drained; `undrained` rounds still had some after `drainLimitS`. */
  drainMs: Spread | null; undrained: number;
  /** Over all rounds (counter deltas). Expected replica connections: completed × replicas. */
  replicaConnsOpened: number;
  /** The relay's lockstep_relay_replica_missed_connections_total: replica connections that did
   *  not provably take every client byte (the replica is out of sync). */
  missed: number; missedShare: number;
  /** The filter's per-replica missed_connections (Envoy's view of the same). */
  envoyMissed: number;
  /** The relay's replica detaches by reason, and replies judged different (DIVERGED). */
  detaches: Record<string, number>; divergences: number;
  /** lockstep_relay_connections_unmirrored_total (streams mirrored nowhere). */
  relayUnmirrored: number;
  /** The filter's unmirrored_connections, overflows (mirror cut: the relay stalled), streams_lost. */
  envoyUnmirrored: number; overflows: number; streamsLost: number;
  /** The filter's pauses: times a connection's bytes waited in Envoy for the relay (its
   *  finishing-streams bound or in-flight bound): the push-back that keeps the relay from
   *  falling behind, paid in connection rate. */
  pauses: number;
  /** Any mirror lost (any of the loss counters above non-zero). */
  mirrorsLost: boolean;
  /** What went wrong beside the counters (a round that failed, a relay that died). */
  problems: string[];
}
export interface RateSection { clients: number; size: number; seconds: number; rounds: number; drainLimitS: number; rows: RateRow[] }

type Counters = { relay?: Record<string, { labels: Record<string, string>; value: number }[]>; envoy?: Map<string, number> };

async function counters(s: Setup): Promise<Counters> {
  return { envoy: await s.envoy?.stats(), relay: s.relay ? await relayStats(s.relay) : undefined };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `clients` clients looping connect, one `size`-byte echo exchange, close, for `seconds`, against
 *  each set-up; meanwhile the relay's open replica connections are sampled, and afterwards the
 *  section waits for them to drain and counts every mirror lost. */
export async function rateSection(setups: Setup[], o: { clients: number; size: number; seconds: number; rounds: number; warmupSeconds: number; drainLimitS: number }, progress: Progress): Promise<RateSection> {
  type Run = { conns_s: number; p50: number; p99: number; busy: number; envoyCpu?: number; relayCpu?: number; ok: number; failed: number; failures: Record<string, number>;
    replicaMax: number; replicaAtStop: number; streamsMax: number; drainMs: number | null };
  const raw = new Map(setups.map((s) => [s.key, [] as Run[]]));
  const before = new Map<string, Counters>();
  const after = new Map<string, Counters>();
  const problems = new Map(setups.map((s) => [s.key, [] as string[]]));
  const dead = new Set<string>();
  const replicaActive = (st: Counters["relay"]) => sumFamily(st!, "lockstep_relay_replica_connections_active");

  /** Waits until the relay holds no replica connection and no stream; ms from now, or null at the limit. */
  const drain = async (s: Setup): Promise<number | null> => {
    const t0 = Date.now();
    let replicasDone: number | null = null;
    while (Date.now() - t0 < o.drainLimitS * 1000) {
      const st = await relayStats(s.relay!);
      if (replicasDone === null && replicaActive(st) === 0) replicasDone = Date.now() - t0;
      if (replicasDone !== null && sumFamily(st, "lockstep_relay_streams_active") === 0) return replicasDone;
      await sleep(50);
    }
    return replicasDone;
  };

  for (let round = 1; round <= o.rounds; round++) {
    for (const s of setups) {
      if (dead.has(s.key)) continue;
      try {
        if (round === 1) {
          // Warm-up: every Envoy worker's VM and gRPC client, the relay's first streams.
          progress(`connection rate: ${s.key} warm-up`);
          await native.rate(s.port, o.clients, o.warmupSeconds, o.size, LOAD_CPU);
          if (s.relay && (await drain(s)) === null) problems.get(s.key)!.push(`the warm-up's replica connections had not drained after ${o.drainLimitS} s`);
          before.set(s.key, await counters(s));
        }
        progress(`connection rate: ${s.key} round ${round}/${o.rounds}`);
        const envoyPid = s.envoy?.process.child.pid, relayPid = s.relay?.process.child.pid;
        const e0 = envoyPid ? cpuSeconds(envoyPid) : 0, r0 = relayPid ? cpuSeconds(relayPid) : 0;
        let running = true, replicaMax = 0, streamsMax = 0;
        const sampler = (async () => {
          while (running && s.relay) {
            try {
              const st = await relayStats(s.relay);
              replicaMax = Math.max(replicaMax, replicaActive(st));
              streamsMax = Math.max(streamsMax, sumFamily(st, "lockstep_relay_streams_active"));
            } catch { /* one missed sample; a dead relay is found below */ }
            await sleep(100);
          }
        })();
        const run = await native.rate(s.port, o.clients, o.seconds, o.size, LOAD_CPU);
        running = false;
        await sampler;
        const envoyCpu = envoyPid ? cpuSeconds(envoyPid) - e0 : undefined;
        let replicaAtStop = 0, drainMs: number | null = 0;
        if (s.relay) {
          const st = await relayStats(s.relay);
          replicaAtStop = replicaActive(st);
          replicaMax = Math.max(replicaMax, replicaAtStop);
          if (replicaAtStop > 0) progress(`connection rate: ${s.key} round ${round}/${o.rounds}: ${run.conns_s.toFixed(0)} connections/s; ${replicaAtStop} replica connections still open, draining`);
          drainMs = await drain(s);
          if (drainMs === null) problems.get(s.key)!.push(`round ${round}: replica connections still open ${o.drainLimitS} s after the clients stopped`);
        }
        const relayCpu = relayPid ? cpuSeconds(relayPid) - r0 : undefined;
        raw.get(s.key)!.push({ conns_s: run.conns_s, p50: run.p50_us, p99: run.p99_us, busy: run.cpu_s / run.wall_s, ok: run.ok, failed: run.failed, failures: run.failures,
          envoyCpu: envoyCpu !== undefined ? (envoyCpu / Math.max(1, run.ok)) * 1e6 : undefined,
          relayCpu: relayCpu !== undefined ? (relayCpu / Math.max(1, run.ok)) * 1e6 : undefined,
          replicaMax, replicaAtStop, streamsMax, drainMs });
        after.set(s.key, await counters(s));
      } catch (err) {
        const why = (err as Error).message.split("\n")[0];
        progress(`connection rate: ${s.key} round ${round}/${o.rounds} failed: ${why}`);
        problems.get(s.key)!.push(`round ${round} failed: ${why}`);
        if ((s.envoy && s.envoy.process.exited()) || (s.relay && s.relay.process.exited())) {
          problems.get(s.key)!.push(`${s.relay?.process.exited() ? "the relay" : "Envoy"} exited: ${(s.relay?.process.exited() ? s.relay.process : s.envoy!.process).output().slice(-300).replace(/\s+/g, " ")}`);
          dead.add(s.key);
        }
      }
    }
  }

  const rows: RateRow[] = [];
  for (const s of setups) {
    const runs = raw.get(s.key)!;
    if (runs.length === 0) continue;
    const b = before.get(s.key) ?? {}, a = after.get(s.key) ?? {};
    const relayDelta = (name: string, labels: Record<string, string> = {}) => a.relay && b.relay ? sumFamily(a.relay, name, labels) - sumFamily(b.relay, name, labels) : 0;
    const envoyDelta = (re: RegExp) => a.envoy && b.envoy ? sumEnvoy(a.envoy, re) - sumEnvoy(b.envoy, re) : 0;
    const detaches: Record<string, number> = {};
    for (const x of a.relay?.["lockstep_relay_replica_detaches_total"] ?? []) {
      const reason = x.labels.reason ?? "?";
      const was = (b.relay?.["lockstep_relay_replica_detaches_total"] ?? []).filter((y) => JSON.stringify(y.labels) === JSON.stringify(x.labels)).reduce((n, y) => n + y.value, 0);
      if (x.value - was > 0) detaches[reason] = (detaches[reason] ?? 0) + x.value - was;
    }
    const failures: Record<string, number> = {};
    for (const r of runs) for (const [k, v] of Object.entries(r.failures)) if (v) failures[k] = (failures[k] ?? 0) + v;
    const completed = runs.reduce((n, r) => n + r.ok, 0);
    const missed = relayDelta("lockstep_relay_replica_missed_connections_total");
    const drained = runs.filter((r) => r.drainMs !== null).map((r) => r.drainMs!);
    const row: RateRow = {
      setup: s.key, label: s.label, replicas: s.replicas,
      connsPerSec: spread(runs.map((r) => r.conns_s)), ratio: 0,
      completed, failed: runs.reduce((n, r) => n + r.failed, 0), failures,
      p50Us: spread(runs.map((r) => r.p50)), p99Us: spread(runs.map((r) => r.p99)),
      clientBusy: Math.max(...runs.map((r) => r.busy)),
      envoyCpuUsPerConn: s.envoy ? spread(runs.map((r) => r.envoyCpu!)) : null,
      relayCpuUsPerConn: s.relay ? spread(runs.map((r) => r.relayCpu!)) : null,
      replicaConnsMax: s.relay ? Math.max(...runs.map((r) => r.replicaMax)) : null,
      replicaConnsAtStop: s.relay ? Math.max(...runs.map((r) => r.replicaAtStop)) : null,
      streamsMax: s.relay ? Math.max(...runs.map((r) => r.streamsMax)) : null,
      drainMs: s.relay && drained.length ? spread(drained) : null,
      undrained: runs.length - drained.length,
      replicaConnsOpened: relayDelta("lockstep_relay_replica_connections_total"),
      missed, missedShare: s.replicas ? missed / Math.max(1, completed * s.replicas) : 0,
      envoyMissed: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.replica\.[^.]+\.missed_connections$/),
      detaches, divergences: relayDelta("lockstep_relay_replica_divergences_total"),
      relayUnmirrored: relayDelta("lockstep_relay_connections_unmirrored_total"),
      envoyUnmirrored: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.unmirrored_connections$/),
      overflows: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.overflows$/),
      streamsLost: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.streams_lost$/),
      pauses: envoyDelta(/^wasmcustom\.lockstep\.[^.]+\.pauses$/),
      mirrorsLost: false,
      problems: problems.get(s.key)!,
    };
    row.mirrorsLost = s.relay !== undefined && s.replicas > 0 && (row.missed > 0 || row.envoyMissed > 0 || row.envoyUnmirrored > 0 || row.overflows > 0 || row.relayUnmirrored > 0
      || Object.keys(row.detaches).length > 0 || row.streamsLost > 0 || dead.has(s.key));
    rows.push(row);
  }
  const base = rows.find((r) => r.setup === BASELINE);
  for (const r of rows) r.ratio = base ? r.connsPerSec.median / base.connsPerSec.median : NaN;
  return { clients: o.clients, size: o.size, seconds: o.seconds, rounds: o.rounds, drainLimitS: o.drainLimitS, rows };
}

// ---------------------------------------------------------------- failover

export interface FailoverResult { kind: string; trials: number; samplesMs: number[]; failedConnects: number; note: string }
export interface FailoverRow { kind: string; trials: number; p50: number; p99: number; max: number; failedConnects: number; note: string }
export interface FailoverSection { status: string; rows: FailoverRow[] }

/** bench/failover.ts (the controller's engineer's) runs the real controller, Envoy, relay and
 *  backends; until it exists this section says so and the rest of the suite still runs. */
export async function failoverSection(trials: { kill: number; stop: number }, progress: Progress): Promise<FailoverSection> {
  const path = join(PROJECT_ROOT, "bench", "failover.ts");
  if (!existsSync(path)) return { status: "not measured (bench/failover.ts missing)", rows: [] };
  let mod: { measureFailover?: (o: { kind: "kill" | "stop"; trials: number; progress: Progress }) => Promise<FailoverResult> };
  try { mod = await import(path); } catch (err) { return { status: `not measured (bench/failover.ts failed to load: ${(err as Error).message.split("\n")[0]})`, rows: [] }; }
  if (typeof mod.measureFailover !== "function") return { status: "not measured (bench/failover.ts has no measureFailover export)", rows: [] };
  const rows: FailoverRow[] = [];
  const problems: string[] = [];
  for (const kind of ["kill", "stop"] as const) {
    if (trials[kind] === 0) continue;
    progress(`failover ${kind}: ${trials[kind]} trials`);
    try {
      const r = await mod.measureFailover({ kind, trials: trials[kind], progress: (line) => progress(`failover ${kind}: ${line}`) });
      const sorted = [...r.samplesMs].sort((a, b) => a - b);
      const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
      rows.push({ kind, trials: r.trials, p50: pct(50), p99: pct(99), max: sorted[sorted.length - 1], failedConnects: r.failedConnects, note: r.note });
    } catch (err) {
      problems.push(`${kind}: ${(err as Error).message.split("\n")[0]}`);
    }
  }
  return { status: problems.length ? `partly measured (${problems.join("; ")})` : "measured", rows };
}
