// Must show 1, 2 and 5 of the mirror path, on the real Envoy binary: 1,000 client
// connections with random writes reach the primary and both replicas byte for byte; the
// client sees only the primary's bytes; nothing is left open afterwards.
import { describe, it, expect, beforeAll } from "vitest";
import { RecordingBackend, startBackends } from "../support/backends.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { freePort, waitFor } from "../support/ports.ts";
import { expectExactWithPrimary, expectMirrored } from "../support/exchanges.ts";
import { randomPlan, runClient, pool, type ClientResult } from "../support/clients.ts";

const CONNECTIONS = 1000;

describe("mirror path on real Envoy", () => {
  let primary: RecordingBackend;
  let replicas: RecordingBackend[];
  let relay: RelayHandle;
  let envoy: EnvoyHandle;
  let results: ClientResult[];

  beforeAll(async () => {
    [primary, ...replicas] = await startBackends(["primary", "replica-a", "replica-b"]);
    const replicaSpecs = replicas.map((r) => ({ name: r.name, address: r.address }));
    relay = await startRelay({ replicas: replicaSpecs });
    envoy = await startEnvoy({ primary: primary.address, replicas: replicaSpecs, relayPort: relay.port });

    const started = Date.now();
    let done = 0;
    results = await pool(CONNECTIONS, 24, async () => {
      const plan = randomPlan();
      const total = plan.writes.reduce((n, w) => n + w.length, 0);
      const idHex = plan.id.toString("hex");
      const seen = () => primary.connections.some((c) => c.head.toString("hex") === idHex && c.received === total);
      const result = await runClient(envoy.listenerPort, plan, seen);
      if (++done % 250 === 0) console.log(`  ${done}/${CONNECTIONS} connections (${((Date.now() - started) / 1000).toFixed(1)} s)`);
      return result;
    });
    // Replica connections finish after the client's: the relay flushes, then closes.
    await waitFor("every replica connection to finish", () =>
      replicas.every((r) => r.connections.length >= CONNECTIONS && r.connections.every((c) => c.closed)), 60_000);
  });

  it("completes every client exchange without error", () => {
    expect(results.filter((r) => r.error)).toEqual([]);
    expect(results.filter((r) => r.sentBytes < 17)).toEqual([]);
  });

  it("delivers each connection's bytes to each replica exactly once and in order (SHA-256)", () => {
    for (const replica of replicas) {
      expect(replica.connections.length, `${replica.name}: one connection per client connection`).toBe(CONNECTIONS);
      expectMirrored(replica, results);
    }
  });

  it("gives the client exactly what the primary sent, none of the replicas' replies", async () => {
    expectExactWithPrimary(primary, results);
    for (const replica of replicas) {
      const answered = replica.connections.reduce((n, c) => n + c.sent, 0);
      expect(answered).toBeGreaterThan(0);
      // The relay read and dropped them (all, unless a replica answered after the relay closed
      // its connection, replyWaitMs after it took the last byte: a slow machine's farewells).
      const dropped = await relay.metric("lockstep_relay_replica_reply_bytes_dropped_total", { replica: replica.name });
      expect(dropped).toBeGreaterThan(0);
      expect(dropped).toBeLessThanOrEqual(answered);
    }
  });

  it("reports per-replica figures in Envoy's stats and Prometheus output", async () => {
    const totalBytes = results.reduce((n, r) => n + r.sentBytes, 0);
    await waitFor("final ACKs to reach Envoy", async () => (await envoy.stat("wasmcustom.lockstep.itest.streams_active")) === 0, 20_000);
    const stats = await envoy.stats();
    expect(stats.get("wasmcustom.lockstep.itest.connections")).toBe(CONNECTIONS);
    expect(stats.get("wasmcustom.lockstep.itest.bytes_sent")).toBe(totalBytes);
    expect(stats.get("wasmcustom.lockstep.itest.bytes_unmirrored")).toBe(0);
    expect(stats.get("wasmcustom.lockstep.itest.streams_lost")).toBe(0);
    for (const r of replicas) {
      expect(stats.get(`wasmcustom.lockstep.itest.replica.${r.name}.connections`)).toBe(CONNECTIONS);
      expect(stats.get(`wasmcustom.lockstep.itest.replica.${r.name}.bytes_mirrored`)).toBe(totalBytes);
      expect(stats.get(`wasmcustom.lockstep.itest.replica.${r.name}.bytes_acked`)).toBe(totalBytes);
      expect(stats.get(`wasmcustom.lockstep.itest.replica.${r.name}.detaches`)).toBe(0);
    }
    const prom = await envoy.prometheus();
    expect(prom).toMatch(new RegExp(`lockstep_itest_replica_replica_a_bytes_acked\\{\\} ${totalBytes}`));
  });

  it("leaves no gRPC stream or replica connection open", async () => {
    await waitFor("Envoy's relay streams to drain", async () => (await envoy.stat("cluster.lockstep_relay.upstream_rq_active")) === 0, 20_000);
    expect(await envoy.stat("wasmcustom.lockstep.itest.streams_active")).toBe(0);
    expect(await envoy.stat("wasmcustom.lockstep.itest.inflight_bytes")).toBe(0);
    expect(await envoy.stat("cluster.lockstep_relay.upstream_rq_total")).toBe(CONNECTIONS);
    expect(await relay.metric("lockstep_relay_streams_active")).toBe(0);
    expect(await relay.metric("lockstep_relay_streams_total")).toBe(CONNECTIONS);
    expect(await relay.metric("lockstep_relay_replica_connections_active")).toBe(0);
    expect(await relay.metric("lockstep_relay_queued_bytes")).toBe(0);
    for (const r of replicas) expect(r.connections.every((c) => c.closed)).toBe(true);
  });
});
