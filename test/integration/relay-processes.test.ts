// Issue 10, "the relay uses the cores it is given": a lockstep config's `relay.processes` runs
// several relay processes beside one Envoy, whose relay cluster lists them all. On real Envoy
// (two workers) with real TCP servers: client connections spread over the processes and every
// one reaches both replicas byte for byte; a relay process killed with -9 costs the mirrors of
// the connections on its streams and of the few Envoy sends to it before it skips it (outlier
// detection: its first refused connect), each counted, never a client's bytes to the primary,
// while the other process goes on mirroring; restarted, it gets its share again once the
// workers' shared streams are replaced (mirror_stream_lifetime_ms, 10 s).
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { RecordingBackend, startBackends } from "../support/backends.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { freeSpacedPorts, waitFor } from "../support/ports.ts";
import { expectExactWithPrimary, expectMirrored, hex } from "../support/exchanges.ts";
import { connectionsTo, type ClientResult } from "../support/clients.ts";

const SERVICE = "itest";

describe("several relay processes behind one Envoy (relay.processes)", () => {
  let primary: RecordingBackend;
  let replicas: RecordingBackend[];
  let relays: RelayHandle[];
  let envoy: EnvoyHandle;

  const connections = (n: number) => connectionsTo(envoy.listenerPort, primary, n, { maxWrite: 16 * 1024, maxWrites: 4 });
  const streams = (relay: RelayHandle) => relay.metric("lockstep_relay_streams_total");
  const allFinished = (n: number) => waitFor(`${n} replica connections to finish`, () =>
    replicas.every((r) => r.connections.length >= n && r.connections.every((c) => c.closed)), 30_000);

  beforeAll(async () => {
    [primary, ...replicas] = await startBackends(["primary", "replica-a", "replica-b"]);
    const specs = replicas.map((r) => ({ name: r.name, address: r.address }));
    const ports = await freeSpacedPorts(2, 2);
    relays = await Promise.all(ports.map((port) => startRelay({ replicas: specs, port, metricsPort: port + 1 })));
    envoy = await startEnvoy({ primary: primary.address, replicas: specs, relayPort: ports[0], relayProcesses: 2, concurrency: 2 });
  });

  afterAll(async () => {
    await envoy?.kill();
    for (const r of relays ?? []) await r.kill();
    for (const b of [primary, ...(replicas ?? [])]) await b?.kill();
  });

  it("spreads client connections over both processes, and every connection reaches both replicas byte for byte", async () => {
    const results = await connections(400);
    await allFinished(400);
    expect(results.filter((r) => r.error)).toEqual([]);
    const perRelay = await Promise.all(relays.map(streams));
    expect(perRelay[0] + perRelay[1]).toBe(400);
    for (const n of perRelay) expect(n).toBeGreaterThanOrEqual(100); // round robin: about half each
    expectExactWithPrimary(primary, results);
    for (const replica of replicas) expectMirrored(replica, results);
    expect(await envoy.stat(`wasmcustom.lockstep.${SERVICE}.unmirrored_connections`)).toBe(0);
  });

  it("a process killed with -9 costs only the mirrors of the few connections sent to it before Envoy skips it, each counted; the other goes on", async () => {
    const unmirroredBefore = await envoy.stat(`wasmcustom.lockstep.${SERVICE}.unmirrored_connections`);
    const streamsBefore = await streams(relays[0]);
    await relays[1].kill("SIGKILL");
    const results: ClientResult[] = await connections(100);
    expect(results.filter((r) => r.error)).toEqual([]);
    expectExactWithPrimary(primary, results); // the primary's path never depended on the relay
    const mirrored = await streams(relays[0]) - streamsBefore;
    await waitFor("the filter to count the connections sent to the dead process", async () =>
      (await envoy.stat(`wasmcustom.lockstep.${SERVICE}.unmirrored_connections`)) - unmirroredBefore === 100 - mirrored, 15_000);
    console.log(`  after the kill: ${mirrored} of 100 connections mirrored by the live process, ${100 - mirrored} counted unmirrored`);
    expect(100 - mirrored).toBeLessThan(35); // round robin alone would send it 50
    // Each connection is on both replicas, exactly, or on neither; those on them are the live process's.
    await allFinished(400 + mirrored);
    const onReplicas = results.filter((r) => replicas.every((rep) => rep.byHead().has(r.idHex)));
    const onNone = results.filter((r) => replicas.every((rep) => !rep.byHead().has(r.idHex)));
    expect(onReplicas.length + onNone.length).toBe(100);
    expect(onReplicas.length).toBe(mirrored);
    for (const replica of replicas) {
      const byHead = replica.byHead();
      for (const r of onReplicas) expect(hex(byHead.get(r.idHex)!.receivedHash)).toBe(r.sentHash);
    }
  });

  it("gives a restarted process its share again, and mirrors every connection", async () => {
    const specs = replicas.map((r) => ({ name: r.name, address: r.address }));
    relays[1] = await startRelay({ replicas: specs, port: relays[1].port, metricsPort: relays[1].metricsPort });
    // Envoy takes it back once its ejection ends (1 s, longer after several), for the streams the
    // workers open after that: a stream is replaced after 10 s (mirror_stream_lifetime_ms).
    await waitFor("Envoy to send the restarted process connections again", async () => {
      await connections(10);
      return (await streams(relays[1])) > 0;
    }, 40_000, 100);
    const lifetimeOver = Date.now() + 11_000; // every stream replaced since: each worker's two alternate
    while (Date.now() < lifetimeOver) await connections(10);
    const unmirroredBefore = await envoy.stat(`wasmcustom.lockstep.${SERVICE}.unmirrored_connections`);
    const before = await Promise.all(relays.map(streams));
    const results = await connections(100);
    expect(results.filter((r) => r.error)).toEqual([]);
    const after = await Promise.all(relays.map(streams));
    expect(after[0] - before[0] + after[1] - before[1]).toBe(100);
    expect(after[1] - before[1]).toBeGreaterThanOrEqual(25);
    expect(await envoy.stat(`wasmcustom.lockstep.${SERVICE}.unmirrored_connections`)).toBe(unmirroredBefore);
    await waitFor("the replicas to take every byte", () => replicas.every((rep) => {
      const byHead = rep.byHead();
      return results.every((r) => byHead.get(r.idHex)?.received === r.sentBytes);
    }), 15_000);
    for (const replica of replicas) expectMirrored(replica, results);
  });
});
