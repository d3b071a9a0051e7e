// Must show 3 on real Envoy: a replica down from the start, one killed mid-stream and one
// that stops reading never break the client's exchange with the primary; memory held for
// them stays within the configured bounds; each is counted detached (out of sync), while a
// healthy replica that is merely slower than the client is held to, not cut loose.
import { describe, it, expect, beforeAll } from "vitest";
import { randomBytes } from "node:crypto";
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
const ENVOY_INFLIGHT_TOTAL = 64 << 20;

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
  const samples = { relayQueued: 0, envoyInflight: 0 };

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

    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.relayQueued = Math.max(samples.relayQueued, await relay.metric("lockstep_relay_queued_bytes"));
        samples.envoyInflight = Math.max(samples.envoyInflight, await envoy.stat("wasmcustom.lockstep.itest.inflight_bytes"));
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
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
    sampling = false;
    await sampler;
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

  it("keeps memory for lagging replicas within the stated bounds, and frees it", async () => {
    expect(samples.relayQueued).toBeLessThanOrEqual(RELAY_TOTAL_BOUND);
    expect(samples.envoyInflight).toBeLessThanOrEqual(ENVOY_INFLIGHT_TOTAL);
    expect(await relay.metric("lockstep_relay_queued_bytes")).toBe(0);
    expect(await relay.metric("lockstep_relay_replica_connections_active")).toBe(0);
  });
});
