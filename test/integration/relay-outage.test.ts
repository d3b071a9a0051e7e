// Must show 4 on real Envoy: with the relay down, then killed with SIGKILL mid-traffic, the
// primary path keeps working throughout; the mirror loss shows in Envoy's stats; once the
// relay is back, new connections are mirrored again.
import { describe, it, expect, beforeAll } from "vitest";
import { RecordingBackend, startBackends } from "../support/backends.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { freePorts, waitFor } from "../support/ports.ts";
import { expectExactWithPrimary, expectMirrored } from "../support/exchanges.ts";
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

  it("keeps the primary path whole when the relay is killed mid-traffic, and recovers", async () => {
    let relay = await startRelay({ replicas: replicas(), port: relayPort, metricsPort });
    const lostBefore = await envoy.stat("wasmcustom.lockstep.itest.streams_lost");
    const pending = pool(60, 6, () => runClient(envoy.listenerPort, randomPlan(64 << 10, 8, 0.5)));
    await waitFor("traffic to be flowing", () => primary.connections.length > 100);
    await relay.kill("SIGKILL");
    const results = await pending;
    expectPrimaryExact(results);
    expect(await envoy.stat("wasmcustom.lockstep.itest.streams_lost")).toBeGreaterThan(lostBefore);

    relay = await startRelay({ replicas: replicas(), port: relayPort, metricsPort });
    const before = replica.connections.length;
    const after = await exchange(20);
    expectPrimaryExact(after);
    await expectReplicaCaughtUp(before, after);
    await relay.kill();
  });
});
