// Must show 4 on real Envoy: with the relay down, then killed with SIGKILL mid-traffic, the
// primary path keeps working throughout; every connection whose bytes the replica may have
// missed is counted in Envoy's stats (the evidence the controller reads), and none it got in
// full is counted complete unless it was; once the relay is back, new connections reach the
// replica byte-exact again and complete with nothing counted lost.
import { describe, it, expect, beforeAll } from "vitest";
import { RecordingBackend, startBackends } from "../support/backends.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { freePorts, waitFor } from "../support/ports.ts";
import { expectExactWithPrimary, expectMirrored, hex } from "../support/exchanges.ts";
import { randomPlan, runClient, pool, type ClientResult } from "../support/clients.ts";

describe("relay outage", () => {
  let primary: RecordingBackend;
  let replica: RecordingBackend;
  let envoy: EnvoyHandle;
  let relayPort: number;
  let metricsPort: number;
  const replicas = () => [{ name: "replica-a", address: replica.address }];

  async function exchange(count: number): Promise<ClientResult[]> {
    return pool(count, 8, () => runClient(envoy.listenerPort, randomPlan(16 << 10, 4, 1)));
  }

  const expectPrimaryExact = (results: ClientResult[]) => expectExactWithPrimary(primary, results);

  /** Once `count` more replica connections have finished, each got its client's bytes. */
  async function expectReplicaCaughtUp(before: number, results: ClientResult[]): Promise<void> {
    await waitFor("replica connections to finish", () => replica.connections.length === before + results.length && replica.connections.every((c) => c.closed));
    expectMirrored(replica, results);
  }

  beforeAll(async () => {
    [primary, replica] = await startBackends(["primary", "replica-a"]);
    [relayPort, metricsPort] = await freePorts(2);
    envoy = await startEnvoy({ primary: primary.address, replicas: replicas(), relayPort });
  });

  it("serves clients while the relay was never started, and counts the loss", async () => {
    const results = await exchange(40);
    expectPrimaryExact(results);
    const total = results.reduce((n, r) => n + r.sentBytes, 0);
    await waitFor("lost streams to be counted", async () => (await envoy.stat("wasmcustom.lockstep.itest.streams_lost")) === 40);
    expect(await envoy.stat("wasmcustom.lockstep.itest.bytes_unmirrored")).toBe(total);
    expect(replica.connections.length).toBe(0);
  });

  it("mirrors again once the relay starts", async () => {
    const relay = await startRelay({ replicas: replicas(), port: relayPort, metricsPort });
    const before = replica.connections.length;
    const results = await exchange(40);
    expectPrimaryExact(results);
    await expectReplicaCaughtUp(before, results);
    await relay.kill("SIGKILL");
  });

  /** Envoy's per-connection verdicts for the replica: complete, or counted as missed somewhere. */
  async function verdicts() {
    const stats = await envoy.stats();
    const get = (name: string) => stats.get(`wasmcustom.lockstep.itest.${name}`) ?? 0;
    return {
      completed: get("replica.replica-a.completed"), missed: get("replica.replica-a.missed_connections"),
      unmirrored: get("unmirrored_connections"), streamsLost: get("streams_lost"),
    };
  }
  const delta = (a: Awaited<ReturnType<typeof verdicts>>, b: typeof a) =>
    ({ completed: b.completed - a.completed, missed: b.missed - a.missed, unmirrored: b.unmirrored - a.unmirrored, streamsLost: b.streamsLost - a.streamsLost });
  /** The connections whose bytes the replica got exactly. */
  const exactOnReplica = (results: ClientResult[]) => {
    const byHead = replica.byHead();
    return results.filter((r) => { const rec = byHead.get(r.idHex); return rec && rec.received === r.sentBytes && hex(rec.receivedHash) === r.sentHash; });
  };
  const settled = async () => {
    await waitFor("Envoy to settle every mirror stream", async () => (await envoy.stat("wasmcustom.lockstep.itest.streams_active")) === 0);
    await waitFor("the replica's connections to close", () => replica.connections.every((c) => c.closed));
  };

  it("keeps the primary path whole when the relay is killed mid-traffic, and counts every connection the replica may have missed", async () => {
    const relay = await startRelay({ replicas: replicas(), port: relayPort, metricsPort });
    const before = await verdicts();
    const pending = pool(60, 6, () => runClient(envoy.listenerPort, randomPlan(64 << 10, 8, 0.5)));
    await waitFor("traffic to be flowing", () => primary.connections.length > 100);
    await relay.kill("SIGKILL");
    const results = await pending;
    expectPrimaryExact(results);
    await settled();
    const d = delta(before, await verdicts());
    const exact = exactOnReplica(results).length;
    expect(exact, "connections the replica got in full").toBeLessThan(results.length); // the kill cost the replica something
    expect(d.streamsLost).toBeGreaterThan(0);
    // Envoy calls complete only connections the replica really got in full...
    expect(d.completed).toBeLessThanOrEqual(exact);
    // ...and counts every other one as missed by the replica, or as mirrored nowhere.
    expect(d.missed + d.unmirrored).toBeGreaterThanOrEqual(results.length - d.completed);
  });

  it("recovers once the relay is back: new connections reach the replica byte-exact and complete, nothing counted lost", async () => {
    const relay = await startRelay({ replicas: replicas(), port: relayPort, metricsPort });
    const before = await verdicts();
    const results = await exchange(20);
    expectPrimaryExact(results);
    await settled();
    expect(exactOnReplica(results).map((r) => r.idHex)).toEqual(results.map((r) => r.idHex));
    expect(delta(before, await verdicts())).toEqual({ completed: 20, missed: 0, unmirrored: 0, streamsLost: 0 });
    await relay.kill();
  });
});
