// Issue 8, defects 3, 4 and 6, on real Envoy (two workers) and the relay, with real TCP
// servers as primary and replicas:
// - 3,000 short half-closed connections from 8 clients at a time: replica connections track
//   client connections (bounded by max_finishing_streams per worker, closed within moments of
//   the client's close), so a replica with a 1,024-connection limit takes every connection's
//   bytes; nothing is missed;
// - clients that reset mid-upload while a slower replica holds the mirror back: no replica got
//   more bytes than the primary, and one that got fewer is counted as having missed them;
// - a healthy replica reading steadily at 2 MB/s is held to, never cut loose as stalled.
import { describe, it, expect, afterEach } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { connect } from "node:net";
import { RecordingBackend, startBackends } from "../support/backends.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { waitFor } from "../support/ports.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const hex = (b: Buffer) => b.toString("hex");
const MAX_FINISHING_STREAMS = 128; // the filter's default, per Envoy worker
const WORKERS = 2;

describe("mirroring under connection churn, resets and slow replicas (issue 8)", () => {
  let relay: RelayHandle | undefined;
  let envoy: EnvoyHandle | undefined;
  const backends: RecordingBackend[] = [];
  afterEach(async () => {
    await envoy?.kill(); await relay?.kill();
    for (const b of backends.splice(0)) await b.kill();
    envoy = relay = undefined;
  });

  async function start(primary: RecordingBackend, replicas: RecordingBackend[]) {
    backends.push(primary, ...replicas);
    const specs = replicas.map((r) => ({ name: r.name, address: r.address }));
    relay = await startRelay({ replicas: specs });
    envoy = await startEnvoy({ primary: primary.address, replicas: specs, relayPort: relay.port, concurrency: WORKERS });
    return { relay, envoy };
  }

  const replicaConnectionsOpen = async (r: RelayHandle) => r.metric("lockstep_relay_replica_connections_active");

  it("keeps replica connections in step with 3,000 short connections, so a replica limited to 1,024 connections misses nothing (defect 4)", async () => {
    const reply = (c: Buffer) => Buffer.from(`ok ${c.length}\n`);
    const [primary, open] = await startBackends(["primary", "open"], { reply, farewell: null });
    const limited = await new RecordingBackend("limited", { reply, farewell: null, maxConnections: 1024 }).start();
    const { relay, envoy } = await start(primary, [open, limited]);
    let maxOpen = 0;
    let sampling = true;
    const sampler = (async () => { while (sampling) { maxOpen = Math.max(maxOpen, await replicaConnectionsOpen(relay)); await sleep(10); } })();
    const oneConnection = () => new Promise<string | undefined>((resolve) => {
      const id = randomBytes(16);
      const s = connect(envoy.listenerPort, "127.0.0.1", () => s.end(Buffer.concat([id, Buffer.from(" hello\n")])));
      s.on("data", () => {});
      s.on("error", (e) => resolve(e.message));
      s.on("close", () => resolve(undefined));
    });
    const errors: string[] = [];
    const started = Date.now();
    await Promise.all(Array.from({ length: 8 }, async () => {
      for (let i = 0; i < 375; i++) { const e = await oneConnection(); if (e) errors.push(e); }
    }));
    const clientsDone = Date.now();
    await waitFor("every replica connection to close", async () => (await replicaConnectionsOpen(relay)) === 0, 10_000, 10);
    const drainedMs = Date.now() - clientsDone;
    sampling = false;
    await sampler;
    console.log(`3,000 connections in ${clientsDone - started} ms; replica connections open at most ${maxOpen} at once; all closed ${drainedMs} ms after the last client`);
    expect(errors).toEqual([]);
    // Bounded by the clients' own connections plus the finishing ones, per replica.
    expect(maxOpen).toBeLessThanOrEqual(2 * (8 + WORKERS * MAX_FINISHING_STREAMS));
    // Every connection reached both replicas, byte for byte, including the limited one.
    const want = new Map(primary.connections.map((c) => [hex(c.head), c.receivedHash.copy().digest("hex")]));
    expect(want.size).toBe(3000);
    for (const r of [open, limited]) {
      const got = r.byHead();
      expect(got.size, `${r.name}'s connections`).toBe(3000);
      for (const [id, hash] of want) expect(got.get(id)?.receivedHash.copy().digest("hex"), `${r.name} ${id}`).toBe(hash);
    }
    expect(await relay.metric("lockstep_relay_replica_missed_connections_total")).toBe(0);
    expect(await relay.metric("lockstep_relay_replica_detaches_total")).toBe(0);
    expect(await envoy.stat("wasmcustom.lockstep.itest.unmirrored_connections")).toBe(0);
  });

  it("gives replicas exactly the bytes the primary got when clients reset mid-upload while the mirror is held back (defect 3)", async () => {
    const primary = await new RecordingBackend("primary", { reply: () => null, farewell: null }).start();
    const slow = await new RecordingBackend("slow", { reply: () => null, farewell: null, readBytesPerSecond: 8 << 20 }).start();
    const fast = await new RecordingBackend("fast", { reply: () => null, farewell: null }).start();
    const { relay, envoy } = await start(primary, [slow, fast]);
    const chunk = randomBytes(64 << 10);
    const upload = (resetAfterMs: number) => new Promise<void>((resolve) => {
      const id = randomBytes(16);
      const s = connect(envoy.listenerPort, "127.0.0.1", () => {
        s.write(id);
        const pump = () => { while (!s.destroyed && s.write(chunk)) { /* until the socket pushes back */ } };
        s.on("drain", pump);
        pump();
        setTimeout(() => { s.resetAndDestroy(); resolve(); }, resetAfterMs);
      });
      s.on("error", () => {});
    });
    for (let round = 0; round < 6; round++) await Promise.all(Array.from({ length: 5 }, (_, i) => upload(100 + 120 * i + 17 * round)));
    await waitFor("every replica connection to close", async () => (await replicaConnectionsOpen(relay)) === 0, 30_000, 20);
    // A slow replica may still be reading what the relay wrote to its socket: wait for it to close.
    await waitFor("the replicas to read every byte and close", () => [slow, fast].every((r) => r.connections.every((c) => c.closed)), 30_000, 20);
    const pauses = await envoy.stat("wasmcustom.lockstep.itest.pauses");
    console.log(`30 uploads reset mid-way; the filter held clients back ${pauses} times; primary took ${primary.connections.reduce((n, c) => n + c.received, 0)} bytes`);
    expect(pauses).toBeGreaterThan(0); // the mirror really was held back
    const ahead: string[] = [];
    const short: string[] = [];
    for (const p of primary.connections) {
      for (const r of [slow, fast]) {
        const c = r.byHead().get(hex(p.head));
        const got = c?.received ?? 0;
        if (got > p.received) ahead.push(`${r.name} got ${got} bytes, the primary ${p.received}`);
        else if (got < p.received || c!.receivedHash.copy().digest("hex") !== p.receivedHash.copy().digest("hex")) short.push(`${r.name} ${got}/${p.received}`);
      }
    }
    expect(ahead).toEqual([]);
    // A replica short of bytes (cut loose: on a loaded machine the slow one may take nothing for
    // the stall timeout) must be counted as having missed that connection; usually none is.
    // Counted by the relay, by the filter for that replica, or by the filter as reaching no replica.
    const unmirrored = await envoy.stat("wasmcustom.lockstep.itest.unmirrored_connections");
    const counted = async (r: RecordingBackend) => (await relay.metric("lockstep_relay_replica_missed_connections_total", { replica: r.name })) +
      (await envoy.stat(`wasmcustom.lockstep.itest.replica.${r.name}.missed_connections`)) + unmirrored;
    console.log(`replica connections short of bytes: ${short.length ? short.join(", ") : "none"}; counted: slow ${await counted(slow)}, fast ${await counted(fast)} ` +
      `(unmirrored ${unmirrored}, overflows ${await envoy.stat("wasmcustom.lockstep.itest.overflows")}, streams lost ${await envoy.stat("wasmcustom.lockstep.itest.streams_lost")})`);
    for (const r of [slow, fast]) {
      expect(await counted(r), `${r.name}: connections short of bytes must be counted missed`).toBeGreaterThanOrEqual(short.filter((x) => x.startsWith(`${r.name} `)).length);
    }
  });

  it("counts the replicas of a connection its client reset missed: a primary behind in reading loses what its socket held (Envoy resets it), so replicas may hold more", async () => {
    const primary = await new RecordingBackend("primary", { reply: () => null, farewell: null, readBytesPerSecond: 4 << 20 }).start();
    const replica = await new RecordingBackend("replica", { reply: () => null, farewell: null }).start();
    const { relay, envoy } = await start(primary, [replica]);
    const chunk = randomBytes(64 << 10);
    const UPLOADS = 8;
    for (let i = 0; i < UPLOADS; i++) {
      await new Promise<void>((resolve) => {
        const s = connect(envoy.listenerPort, "127.0.0.1", () => {
          s.write(randomBytes(16));
          for (let n = 0; n < 48; n++) s.write(chunk); // 3 MiB handed over at once
          setTimeout(() => { s.resetAndDestroy(); resolve(); }, 300);
        });
        s.on("error", () => {});
      });
    }
    await waitFor("every replica connection to close", async () => (await replicaConnectionsOpen(relay)) === 0, 30_000, 20);
    await waitFor("the primary's connections to end", () => primary.connections.length === UPLOADS && primary.connections.every((c) => c.closed), 30_000, 20);
    const ahead = primary.connections.filter((p) => (replica.byHead().get(hex(p.head))?.received ?? 0) > p.received).length;
    const resets = await envoy.stat("wasmcustom.lockstep.itest.client_resets");
    const missed = await envoy.stat("wasmcustom.lockstep.itest.replica.replica.missed_connections");
    console.log(`${UPLOADS} uploads reset with the primary behind: the primary took ${primary.connections.map((c) => c.received).join(", ")} bytes; ` +
      `the replica was ahead on ${ahead}; client resets ${resets}, the replica counted missed on ${missed}`);
    expect(resets).toBe(UPLOADS);
    expect(missed).toBe(UPLOADS); // out of sync, whether or not it ended up ahead this time
  });

  it("holds a connection to a healthy replica reading steadily at 2 MB/s instead of detaching it as stalled (defect 6)", async () => {
    const primary = await new RecordingBackend("primary", { reply: () => null, farewell: null }).start();
    const steady = await new RecordingBackend("steady", { reply: () => null, farewell: null, readBytesPerSecond: 2 << 20 }).start();
    const { relay, envoy } = await start(primary, [steady]);
    const payload = randomBytes(12 << 20);
    const started = Date.now();
    await new Promise<void>((resolve, reject) => {
      const s = connect(envoy.listenerPort, "127.0.0.1", () => s.end(payload));
      s.on("data", () => {});
      s.on("close", () => resolve());
      s.on("error", reject);
    });
    await waitFor("the replica to take every byte", () => steady.connections[0]?.received === payload.length, 30_000, 50)
      .catch(async (e) => { console.log(steady.connections.map((c) => c.received), (await relay.metricsText()).split("\n").filter((l) => /detaches_total\{|missed|lag/.test(l)).join("\n"), await envoy.stat("wasmcustom.lockstep.itest.overflows")); throw e; });
    console.log(`12 MiB to a replica reading 2 MB/s: delivered after ${Date.now() - started} ms`);
    expect(await relay.metric("lockstep_relay_replica_detaches_total")).toBe(0);
    expect(await envoy.stat("wasmcustom.lockstep.itest.overflows")).toBe(0);
    expect(steady.connections[0].receivedHash.copy().digest("hex")).toBe(createHash("sha256").update(payload).digest("hex"));
  });
});
