// The compiled filter's channels transport (mirror_streams >= 1, the default) in the host
// emulator, release and debug builds: every connection of a worker rides a channel of a few
// long-lived streams (docs/wire-format.md, "Transport"), its frames exactly those of a stream of
// its own behind the channel id; the relay's ACK, CLOSE and STATUS reach the right connection;
// a lost shared stream loses each of its channels (counted), and the next connection reopens it.
import { describe, it, expect } from "vitest";
import { join } from "node:path";
import { createNetworkHost, type NetworkHost, type GrpcStreamRecord } from "../emulator/network-host.ts";
import { Action } from "../emulator/abi-spec.ts";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { encodeAck, encodeClose, decodeFilterFrame } from "../../relay/frames.ts";
import { fixture } from "../support/wire-fixtures.ts";

const BUILDS = ["build/lockstep.wasm", "build/lockstep.debug.wasm"];
const CONFIG = { relay_cluster: "lockstep_relay", service: "demo" };
const stat = (host: NetworkHost, name: string) => host.metric(`lockstep.demo.${name}`);

function load(build: string, config: object = CONFIG) {
  return createNetworkHost({ wasmPath: join(PROJECT_ROOT, build), pluginConfig: JSON.stringify(config) });
}

const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };
const onChannel = (channel: number, frame: Uint8Array) => Buffer.concat([u32(channel), frame]);
/** STATUS: 0x83 | code u8 | details str. */
const status = (code: number, details = "") => Buffer.concat([Buffer.from([0x83, code]), Buffer.from(new Uint16Array([Buffer.byteLength(details)]).buffer), Buffer.from(details)]);
const live = (received: number, acked = received) => encodeAck(received, [{ name: "r1", queued: received, acked, state: "LIVE", reason: "NONE" }]);
const closed = (received: number) => encodeAck(received, [{ name: "r1", queued: received, acked: received, state: "CLOSED", reason: "NONE" }]);

/** The messages a shared stream carried, split into channel and frame (hex). */
const messages = (stream: GrpcStreamRecord) => stream.sent.map((m) => [m.readUInt32LE(0), m.subarray(4).toString("hex")] as const);

describe.each(BUILDS)("filter channels (%s)", (build) => {
  it("carries every connection on one long-lived Channels stream, each frame behind its channel id, byte for byte as the fixtures", () => {
    const { host } = load(build);
    const a = host.newConnection({ connectionId: 42n, source: "127.0.0.1:50000", upstream: "127.0.0.1:7001" });
    const b = host.newConnection({ connectionId: 42n, source: "127.0.0.1:50000", upstream: "127.0.0.1:7001" });
    expect(a.downstreamData("SET a 1\n")).toEqual({ action: Action.CONTINUE, forwarded: Buffer.from("SET a 1\n") });
    b.downstreamData("SET a 1\n");
    expect(a.downstreamData("GET a\n", true).forwarded).toEqual(Buffer.from("GET a\n"));
    a.closeDownstream(); a.done();
    expect(host.grpcStreams.size).toBe(1);
    const [stream] = host.grpcStreams.values();
    expect(stream).toMatchObject({ cluster: "lockstep_relay", service: "lockstep.mirror.v1.Mirror", method: "Channels", closedByModule: null });
    const hex = (n: string) => fixture(n).hex;
    expect(messages(stream)).toEqual([
      [a.contextId, hex("open")], [a.contextId, hex("data")],
      [b.contextId, hex("open")], [b.contextId, hex("data")],
      [a.contextId, hex("data-offset")], [a.contextId, hex("end")],
      [a.contextId, "05" + "0000000000000000" + "00000000" + "00"], // REPLY_END CUT: no reply byte yet
      [a.contextId, "06"], // FINISH: the connection ended
    ]);
    expect(a.contextId).not.toBe(b.contextId);
    expect(stat(host, "streams_active")).toBe(2); // mirrors open: a waits for the relay's final answer
    expect(host.violations).toEqual([]);
  });

  it("routes the relay's ACKs, CLOSE and STATUS by channel: each connection hears only its own", () => {
    const { host } = load(build);
    const a = host.newConnection({ upstream: "127.0.0.1:7001" });
    const b = host.newConnection({ upstream: "127.0.0.1:7001" });
    a.downstreamData("aaaa"); b.downstreamData("bbbbbbbb");
    const [stream] = host.grpcStreams.values();
    expect(stat(host, "inflight_bytes")).toBe(12);
    host.grpcReceive(stream.token, onChannel(b.contextId, live(8)));
    expect(stat(host, "inflight_bytes")).toBe(4); // b's 8 acknowledged, a's 4 not
    host.grpcReceive(stream.token, onChannel(999_999, live(4))); // a channel it never had: ignored
    expect(stat(host, "inflight_bytes")).toBe(4);
    expect(stat(host, "relay_protocol_errors")).toBe(0);
    // CLOSE (switchover) on a's channel closes a's client connection only.
    host.grpcReceive(stream.token, onChannel(a.contextId, encodeClose("PRIMARY_DEMOTED")));
    expect(a.closeRequests).toEqual(["downstream"]);
    expect(b.closeRequests).toEqual([]);
    expect(stat(host, "closed_demoted")).toBe(1);
    // b finishes: the relay's final ACK and STATUS OK complete it; nothing counted missed.
    b.downstreamData("", true); b.closeDownstream(); b.done();
    host.grpcReceive(stream.token, onChannel(b.contextId, closed(8)));
    host.grpcReceive(stream.token, onChannel(b.contextId, status(0)));
    expect(stat(host, "replica.r1.completed")).toBe(1);
    expect(stat(host, "replica.r1.missed_connections")).toBe(0);
    expect(stat(host, "streams_lost")).toBe(0);
    expect(stat(host, "streams_active")).toBe(1); // a's
    expect(stream.closedByModule).toBe(null); // the shared stream stays
  });

  it("a STATUS other than OK loses that channel only: its replica is counted missed, the client's bytes still go on", () => {
    const { host } = load(build);
    const a = host.newConnection({ upstream: "127.0.0.1:7001" });
    const b = host.newConnection({ upstream: "127.0.0.1:7001" });
    a.downstreamData("aaaa"); b.downstreamData("bbbb");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, onChannel(a.contextId, live(4, 2)));
    host.grpcReceive(stream.token, onChannel(b.contextId, live(4)));
    host.grpcReceive(stream.token, onChannel(a.contextId, status(8, "relay bound")));
    expect(host.logs.some((l) => l.level === "warn" && l.message.includes("ended with gRPC status 8 (relay bound)"))).toBe(true);
    expect(stat(host, "streams_lost")).toBe(1);
    expect(stat(host, "replica.r1.missed_connections")).toBe(1);
    expect(a.downstreamData("more").forwarded).toEqual(Buffer.from("more")); // the primary's path is untouched
    b.downstreamData("more");
    expect(messages(stream).filter(([c]) => c === a.contextId).map(([, f]) => f[1])).not.toContain("more");
    expect(decodeFilterFrame(stream.sent.at(-1)!.subarray(4))).toMatchObject({ type: "DATA", offset: 4 });
    expect(stream.sent.at(-1)!.readUInt32LE(0)).toBe(b.contextId);
  });

  it("a shared stream that ends loses every channel on it (counted), and the next connection opens a new one", () => {
    const { host } = load(build);
    const conns = [0, 1, 2].map(() => host.newConnection({ upstream: "127.0.0.1:7001" }));
    for (const c of conns) c.downstreamData("abc");
    const [first] = host.grpcStreams.values();
    for (const c of conns) host.grpcReceive(first.token, onChannel(c.contextId, live(3)));
    host.grpcClose(first.token, 14); // UNAVAILABLE: the relay went away
    expect(stat(host, "streams_lost")).toBe(3);
    expect(stat(host, "replica.r1.missed_connections")).toBe(3);
    expect(stat(host, "streams_active")).toBe(0);
    expect(host.logs.some((l) => l.level === "warn" && l.message.includes("ended with gRPC status 14; 3 connections on it lost their mirror"))).toBe(true);
    const next = host.newConnection({ upstream: "127.0.0.1:7001" });
    next.downstreamData("xyz");
    expect(host.grpcStreams.size).toBe(2);
    const second = [...host.grpcStreams.values()][1];
    expect(second.method).toBe("Channels");
    expect(messages(second).map(([c]) => c)).toEqual([next.contextId, next.contextId]);
    expect(conns[0].downstreamData("on").forwarded).toEqual(Buffer.from("on")); // old connections go on, unmirrored
    expect(second.sent).toHaveLength(2);
  });

  it("spreads connections over mirror_streams streams in turn", () => {
    const { host } = load(build, { ...CONFIG, mirror_streams: 3 });
    const conns = Array.from({ length: 7 }, () => host.newConnection({ upstream: "127.0.0.1:7001" }));
    for (const c of conns) c.downstreamData("x");
    const streams = [...host.grpcStreams.values()];
    expect(streams).toHaveLength(3);
    expect(streams.map((s) => new Set(messages(s).map(([c]) => c)).size)).toEqual([3, 2, 2]);
  });

  it("replaces a stream past mirror_stream_lifetime_ms for new connections, and half-closes the old one once its last channel is over", () => {
    const { host } = load(build, { ...CONFIG, mirror_stream_lifetime_ms: 1000 });
    const a = host.newConnection({ upstream: "127.0.0.1:7001" });
    a.downstreamData("aa");
    host.advance(1500);
    const b = host.newConnection({ upstream: "127.0.0.1:7001" });
    b.downstreamData("bb");
    const [old, fresh] = host.grpcStreams.values();
    expect(messages(fresh).map(([c]) => c)).toEqual([b.contextId, b.contextId]);
    expect(old.closedByModule).toBe(null); // a still rides it
    a.downstreamData("cc"); // and goes on on it
    expect(messages(old).at(-1)![0]).toBe(a.contextId);
    a.downstreamData("", true); a.closeDownstream(); a.done();
    host.grpcReceive(old.token, onChannel(a.contextId, closed(4)));
    host.grpcReceive(old.token, onChannel(a.contextId, status(0)));
    expect(old.closedByModule).toBe("close");
    expect(fresh.closedByModule).toBe(null);
    host.grpcClose(old.token, 0); // the relay ends it: no news, nothing lost
    expect(stat(host, "streams_lost")).toBe(0);
    expect(stat(host, "replica.r1.completed")).toBe(1);
  });

  it("cuts one channel with CANCEL (the relay never answered), never the shared stream", () => {
    const { host } = load(build, { ...CONFIG, close_timeout_ms: 1000 });
    const a = host.newConnection({ upstream: "127.0.0.1:7001" });
    const b = host.newConnection({ upstream: "127.0.0.1:7001" });
    a.downstreamData("aa", true); a.closeDownstream(); a.done();
    b.downstreamData("bb");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, onChannel(b.contextId, live(2)));
    for (let i = 0; i < 12; i++) { host.advance(100); host.tick(); }
    expect(messages(stream).at(-1)).toEqual([a.contextId, "07"]); // CANCEL
    expect(stream.closedByModule).toBe(null);
    expect(stat(host, "streams_lost")).toBe(1);
    b.downstreamData("cc");
    expect(messages(stream).at(-1)![0]).toBe(b.contextId);
  });

  it("resets a shared stream whose message has no room for a channel and a frame, losing its channels", () => {
    const { host } = load(build);
    const a = host.newConnection({ upstream: "127.0.0.1:7001" });
    a.downstreamData("aa");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, Buffer.from([1, 0, 0]));
    expect(stream.closedByModule).toBe("cancel");
    expect(stat(host, "relay_protocol_errors")).toBe(1);
    expect(stat(host, "streams_lost")).toBe(1);
    expect(stat(host, "unmirrored_connections")).toBe(1); // no replica was named: every one missed it
    expect(a.downstreamData("bb").forwarded).toEqual(Buffer.from("bb"));
  });

  it.each([
    [-1], [65], [1.5], ["2"],
  ])("refuses mirror_streams %j, saying why", (value) => {
    const { host } = load(build, { ...CONFIG, mirror_streams: value });
    expect(host.configured).toBe(false);
    expect(host.logs.filter((l) => l.level === "critical").map((l) => l.message).join("\n"))
      .toContain('"mirror_streams" must be a whole number from 0 (a stream per connection) to 64');
  });

  it("holds an open, mirrored connection in under 1 KiB of its memory on a channel too", () => {
    const { host } = load(build);
    const open = (n: number) => {
      for (let i = 0; i < n; i++) {
        const conn = host.newConnection({ source: "127.0.0.1:50000", upstream: "127.0.0.1:7001" });
        conn.downstreamData("0123456789abcdef");
        const [stream] = host.grpcStreams.values();
        host.grpcReceive(stream.token, onChannel(conn.contextId, encodeAck(16, ["r1", "r2"].map((name) => ({ name, queued: 16, acked: 16, state: "LIVE" as const, reason: "NONE" as const })))));
        conn.upstreamData("0123456789abcdef");
      }
    };
    open(200);
    const before = host.memoryBytes();
    open(4000);
    expect(stat(host, "streams_active")).toBe(4200);
    expect(host.grpcStreams.size).toBe(1);
    expect((host.memoryBytes() - before) / 4000).toBeLessThan(1024);
    expect(host.violations).toEqual([]);
  });
});
