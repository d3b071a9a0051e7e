// Must show 3 on real Envoy: a replica down from the start, one killed mid-stream and one
// that stops reading never break the client's exchange with the primary; each is counted
// detached (out of sync), a healthy replica still gets every byte, and what the relay held for
// them is given back. Past the relay's total bound (limits.maxQueuedBytesTotal), the replica
// whose write would cross it is cut from that connection (RELAY_BOUND), and only there: the
// other connections' replicas go on, and the relay's memory as the OS sees it stays within the
// bound plus a fixed overhead.
import { describe, it, expect, beforeAll } from "vitest";
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { RecordingBackend, startBackends } from "../support/backends.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { freePort, waitFor } from "../support/ports.ts";
import { expectExactWithPrimary, expectMirrored } from "../support/exchanges.ts";
import { runClient, pool, type ClientPlan, type ClientResult } from "../support/clients.ts";

// The shipped defaults (README, "Bounded memory"): 4 MiB per replica per connection,
// 64 MiB over the relay here (256 MiB by default), 4 MiB in flight per connection in Envoy.
const CONNECTIONS = 6;
const BYTES_PER_CONNECTION = 32 << 20; // far past the kernel's socket buffers plus the lag bound
const LAG_BOUND = 4 << 20;
const RELAY_TOTAL_BOUND = 64 << 20;

describe("faulty replicas never hurt the primary path", () => {
  let primary: RecordingBackend;
  let good: RecordingBackend;
  let dies: RecordingBackend;
  let stuck: RecordingBackend;
  let downAddress: string;
  let relay: RelayHandle;
  let envoy: EnvoyHandle;
  let results: ClientResult[];
  let plans: ClientPlan[];

  beforeAll(async () => {
    [primary, good, dies] = await startBackends(["primary", "good", "dies"]);
    stuck = await new RecordingBackend("stuck", { stopReading: true }).start();
    downAddress = `127.0.0.1:${await freePort()}`; // nothing listens there
    const replicas = [
      { name: "good", address: good.address },
      { name: "down", address: downAddress },
      { name: "dies", address: dies.address },
      { name: "stuck", address: stuck.address },
    ];
    relay = await startRelay({ replicas, limits: { maxLagBytesPerConnection: LAG_BOUND, maxQueuedBytesTotal: RELAY_TOTAL_BOUND } });
    envoy = await startEnvoy({ primary: primary.address, replicas, relayPort: relay.port });

    plans = Array.from({ length: CONNECTIONS }, () => {
      const id = randomBytes(16);
      const writes = [id];
      for (let n = 0; n < BYTES_PER_CONNECTION; n += 64 << 10) writes.push(randomBytes(64 << 10));
      return { id, writes, halfCloseFirst: true };
    });
    let killed = false;
    results = await pool(CONNECTIONS, 3, async (i) => {
      // Kill "dies" while connections are streaming through it.
      if (i === 2 && !killed) { killed = true; setTimeout(() => void dies.kill(), 50); }
      return runClient(envoy.listenerPort, plans[i], undefined, 60_000);
    });
    await waitFor("the relay to finish every stream", async () => (await relay.metric("lockstep_relay_streams_active")) === 0, 30_000);
  });

  it("completes every client exchange with the primary unchanged", async () => {
    expectExactWithPrimary(primary, results);
  });

  it("still mirrors everything to the healthy replica", async () => {
    expectMirrored(good, results);
  });

  it("counts each faulty replica as detached, with the reason", async () => {
    expect(await relay.metric("lockstep_relay_replica_detaches_total", { replica: "down", reason: "CONNECT_FAILED" })).toBe(CONNECTIONS);
    // A replica that stops reading holds its connection back until it has written nothing for
    // the stall timeout (or passed the lag bound), then it is cut loose.
    expect(await relay.metric("lockstep_relay_replica_detaches_total", { replica: "stuck" })).toBe(CONNECTIONS);
    expect(await relay.metric("lockstep_relay_replica_detaches_total", { replica: "stuck", reason: "STALLED" }) +
      await relay.metric("lockstep_relay_replica_detaches_total", { replica: "stuck", reason: "LAG_BOUND" })).toBe(CONNECTIONS);
    expect(await relay.metric("lockstep_relay_replica_detaches_total", { replica: "dies" })).toBeGreaterThanOrEqual(1);
    expect(await relay.metric("lockstep_relay_replica_detaches_total", { replica: "good" })).toBe(0);
    const stats = await envoy.stats();
    expect(stats.get("wasmcustom.lockstep.itest.replica.down.detaches")).toBe(CONNECTIONS);
    expect(stats.get("wasmcustom.lockstep.itest.replica.stuck.detaches")).toBe(CONNECTIONS);
    expect(stats.get("wasmcustom.lockstep.itest.replica.dies.detaches")).toBeGreaterThanOrEqual(1);
    expect(stats.get("wasmcustom.lockstep.itest.replica.good.detaches")).toBe(0);
    expect(stats.get("wasmcustom.lockstep.itest.streams_lost")).toBe(0);
    expect(stats.get("wasmcustom.lockstep.itest.overflows")).toBe(0);
    expect(stats.get("wasmcustom.lockstep.itest.replica.good.completed")).toBe(CONNECTIONS);
  });

  it("gives back every byte and every replica connection held for the lagging replicas once the connections end", async () => {
    expect(await relay.metric("lockstep_relay_queued_bytes")).toBe(0);
    expect(await relay.metric("lockstep_relay_replica_lag_bytes")).toBe(0);
    expect(await relay.metric("lockstep_relay_replica_connections_active")).toBe(0);
  });
});

/** A field of /proc/<pid>/status, in KiB (VmRSS: resident now; VmHWM: the peak since the last reset). */
function procKiB(pid: number, field: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

describe("past the relay's total bound", () => {
  // A small total (2 MiB) and a lag bound far above it (so the relay never holds a connection
  // back for its replica before the total is reached): the total alone decides. A few
  // connections whose replica stops reading would each have it queue tens of MiB.
  const TOTAL_BOUND = 2 << 20;
  const LAG = 128 << 20;
  const STUCK = 4; // connections whose replica stops reading
  const FLOWING = 8; // connections whose replica reads everything
  const STUCK_BYTES = 32 << 20; // far past the kernel's socket buffers plus the total
  /** What the relay process may grow by besides the bytes it holds for replicas: V8 gives
   *  Buffers' memory back only after a collection, which comes after some tens of MiB. */
  const RSS_OVERHEAD = 64 << 20;
  const isStuck = (head: Buffer) => head.subarray(0, 5).toString() === "stuck";

  let primary: RecordingBackend;
  let replica: RecordingBackend;
  let relay: RelayHandle;
  let envoy: EnvoyHandle;
  let stuck: ClientResult[];
  let flowing: ClientResult[];
  let rssBefore: number;
  let rssPeak: number;

  const plan = (tag: string, bytes: number): ClientPlan => {
    const id = Buffer.concat([Buffer.from(tag), randomBytes(16 - tag.length)]);
    const writes = [id];
    for (let n = 0; n < bytes; n += 64 << 10) writes.push(randomBytes(64 << 10));
    return { id, writes, halfCloseFirst: true };
  };

  /** Connections whose replica reads, one at a time, each once the relay finished the one
   *  before: one connection's 1 MiB can never reach the 2 MiB total, whereas several at once can,
   *  however healthy their replica, when the relay takes their bytes in faster than the
   *  replica's new TCP connections take them (the relay's HTTP/2 windows are 4 MiB). */
  const oneAtATime = (count: number, tag: string) => pool(count, 1, async () => {
    const result = await runClient(envoy.listenerPort, plan(tag, 1 << 20));
    await waitFor("the relay to finish the connection", async () => (await relay.metric("lockstep_relay_streams_active")) === 0);
    return result;
  });

  beforeAll(async () => {
    primary = await new RecordingBackend("primary").start();
    // One replica, which stops reading the connections marked "stuck" (and reads the others).
    replica = await new RecordingBackend("r", { stopReadingIf: (c) => isStuck(c.head) }).start();
    const replicas = [{ name: "r", address: replica.address }];
    relay = await startRelay({ replicas, limits: { maxLagBytesPerConnection: LAG, maxQueuedBytesTotal: TOTAL_BOUND } });
    envoy = await startEnvoy({ primary: primary.address, replicas, relayPort: relay.port });
    const pid = relay.process.child.pid!;
    // Warm up (code loaded, buffers allocated), then measure from here.
    await oneAtATime(4, "warm");
    await waitFor("the warm-up to finish", async () => (await relay.metric("lockstep_relay_streams_active")) === 0);
    rssBefore = procKiB(pid, "VmRSS") * 1024;
    writeFileSync(`/proc/${pid}/clear_refs`, "5"); // reset the peak

    // The stuck connections, all at once: the replica's queue on each would grow by tens of MiB.
    stuck = await Promise.all(Array.from({ length: STUCK }, () => runClient(envoy.listenerPort, plan("stuck", STUCK_BYTES), undefined, 60_000)));
    // Then connections whose replica reads, while the stuck connections' replica still has not.
    flowing = await oneAtATime(FLOWING, "flow");
    await waitFor("the relay to finish every stream", async () => (await relay.metric("lockstep_relay_streams_active")) === 0, 30_000);
    rssPeak = procKiB(pid, "VmHWM") * 1024;
    // The replica catches up: it reads what the relay wrote to it before the cut, then the end.
    replica.resumeReading();
    await waitFor("the replica's connections to close", () => replica.connections.every((c) => c.closed), 15_000);
  });

  it("never touches the clients' exchanges with the primary", () => {
    expectExactWithPrimary(primary, [...stuck, ...flowing]);
  });

  it("cuts the stuck replica from each connection whose write would pass it (RELAY_BOUND), and from no other", async () => {
    const detaches = (reason?: string) => relay.metric("lockstep_relay_replica_detaches_total", { replica: "r", ...(reason ? { reason } : {}) });
    expect(await detaches("RELAY_BOUND")).toBe(STUCK);
    expect(await detaches()).toBe(STUCK);
    // Seen by the replica (every connection of it closed by now): each stuck connection ended
    // short of its client's bytes (or before any: cut while the relay was still connecting)...
    const byHead = replica.byHead();
    const short = stuck.filter((r) => (byHead.get(r.idHex)?.received ?? 0) < r.sentBytes);
    expect(short.map((r) => r.idHex)).toEqual(stuck.map((r) => r.idHex));
    // ...and every other one got every byte.
    expectMirrored(replica, flowing);
    // Seen by Envoy: the replica is out of sync on the stuck connections only.
    const stats = await envoy.stats();
    expect(stats.get("wasmcustom.lockstep.itest.replica.r.detaches")).toBe(STUCK);
    expect(stats.get("wasmcustom.lockstep.itest.replica.r.missed_connections")).toBe(STUCK);
    expect(stats.get("wasmcustom.lockstep.itest.replica.r.completed")).toBe(4 + FLOWING); // warm-up and flowing ones
    expect(stats.get("wasmcustom.lockstep.itest.overflows")).toBe(0);
    expect(stats.get("wasmcustom.lockstep.itest.streams_lost")).toBe(0);
  });

  it("keeps the relay's memory, as the OS sees it, within the bound plus a fixed overhead, and gives the bytes back", async () => {
    console.log(`relay RSS before the stuck connections ${(rssBefore / 2 ** 20).toFixed(1)} MiB, peak ${(rssPeak / 2 ** 20).toFixed(1)} MiB (total bound ${TOTAL_BOUND >> 20} MiB)`);
    expect(rssPeak - rssBefore).toBeLessThanOrEqual(TOTAL_BOUND + RSS_OVERHEAD);
    expect(await relay.metric("lockstep_relay_queued_bytes")).toBe(0);
    expect(await relay.metric("lockstep_relay_replica_connections_active")).toBe(0);
  });
});
