// Bad input from the mirror side and more than one Envoy worker, on real Envoy: a "relay"
// that answers garbage is counted and cut loose without touching the primary path; with two
// workers (two wasm VMs, two root contexts) every connection is still mirrored exactly, on
// either transport (channels of shared streams, or a stream per connection).
import { describe, it, expect } from "vitest";
import { Server, ServerCredentials, type ServerDuplexStream } from "@grpc/grpc-js";
import { MIRROR_SERVICE } from "../../relay/server.ts";
import { startBackends } from "../support/backends.ts";
import { startEnvoy } from "../support/envoy.ts";
import { startRelay } from "../support/relay.ts";
import { waitFor } from "../support/ports.ts";
import { randomPlan, runClient, pool } from "../support/clients.ts";
import { expectExactWithPrimary, expectMirrored } from "../support/exchanges.ts";

describe("robustness", () => {
  it("counts a relay that answers garbage, cuts its mirror, and keeps every exchange exact", async () => {
    const grpc = new Server();
    const garbage = (channels: boolean) => (call: ServerDuplexStream<Buffer, Buffer>) => {
      call.on("data", (message: Buffer) => {
        if (call.destroyed) return;
        const ack = Buffer.from([0x81, 1, 2, 3]); // a truncated ACK, on the message's channel
        call.write(channels ? Buffer.concat([message.subarray(0, 4), ack]) : ack);
      });
      call.on("error", () => {});
      call.on("end", () => call.end());
    };
    grpc.addService(MIRROR_SERVICE, { Stream: garbage(false), Channels: garbage(true) });
    const port = await new Promise<number>((resolve, reject) =>
      grpc.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    const [primary] = await startBackends(["primary"]);
    const envoy = await startEnvoy({ primary: primary.address, relayPort: port });
    const results = await pool(20, 4, () => runClient(envoy.listenerPort, randomPlan(32 << 10, 4, 0.5)));
    expectExactWithPrimary(primary, results);
    await waitFor("the bad frames to be counted", async () => (await envoy.stat("wasmcustom.lockstep.itest.relay_protocol_errors")) === 20);
    expect(await envoy.stat("wasmcustom.lockstep.itest.streams_active")).toBe(0);
    expect(envoy.process.output()).toContain("bad frame from the relay");
    await envoy.kill();
    grpc.forceShutdown();
    await primary.kill();
  });

  it.each([
    ["channels of shared streams (mirror_streams 2)", 2],
    ["a gRPC stream per connection (mirror_streams 0)", 0],
  ])("mirrors exactly with two Envoy workers, on %s", async (_transport, mirrorStreams) => {
    const [primary, replica] = await startBackends(["primary", "replica-a"]);
    const replicas = [{ name: "replica-a", address: replica.address }];
    const relay = await startRelay({ replicas });
    const envoy = await startEnvoy({ primary: primary.address, replicas, relayPort: relay.port, concurrency: 2, mirrorStreams });
    const results = await pool(300, 16, () => runClient(envoy.listenerPort, randomPlan(64 << 10, 4, 1)));
    expectExactWithPrimary(primary, results);
    await waitFor("replica connections to finish", () => replica.connections.length === 300 && replica.connections.every((c) => c.closed), 30_000);
    expectMirrored(replica, results);
    await waitFor("streams to drain", async () => (await envoy.stat("wasmcustom.lockstep.itest.streams_active")) === 0);
    expect(await envoy.stat("wasmcustom.lockstep.itest.connections")).toBe(300);
    expect(await envoy.stat("wasmcustom.lockstep.itest.replica.replica-a.completed")).toBe(300);
    // Two workers: at most 2 × 2 shared streams (one more per slot every 10 s), or one per connection.
    const streams = await envoy.stat("cluster.lockstep_relay.upstream_rq_total");
    if (mirrorStreams === 0) expect(streams).toBe(300);
    else expect(streams).toBeLessThanOrEqual(8);
    await envoy.kill();
    await relay.kill();
  });
});
