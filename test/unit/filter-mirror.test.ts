// The compiled lockstep filter in the host emulator, release and debug builds alike: the
// frames it sends match the shared wire fixtures, ACKs drive its stats, flow control pauses
// and resumes the client at the documented bounds (4 MiB per connection, 64 MiB per worker, by
// default), a finished connection's stream is reset after close_timeout_ms if the relay never
// answers, and the relay's failures never touch the bytes to the primary; the primary's
// replies are digested in offset-aligned windows (or, with compare_replies off, never read).
import { describe, it, expect } from "vitest";
import { writeFileSync, mkdtempSync, readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { crc32 } from "node:zlib";
import { join } from "node:path";
import { createNetworkHost, type NetworkHost } from "../emulator/network-host.ts";
import { Action, BufferType } from "../emulator/abi-spec.ts";
import { PeerType } from "../emulator/abi-status.ts";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { encodeAck, decodeFilterFrame, type FilterFrame } from "../../relay/frames.ts";
import { fixtureBytes, fixture, DIGEST_VECTORS, vectorBytes } from "../support/wire-fixtures.ts";

const BUILDS = ["build/lockstep.wasm", "build/lockstep.debug.wasm"];
// These tests speak the stream-per-connection transport (mirror_streams 0); filter-channels.test.ts
// covers the channels transport.
const CONFIG = { relay_cluster: "lockstep_relay", service: "demo", mirror_streams: 0 };

function load(build: string, config: object = CONFIG) {
  return createNetworkHost({ wasmPath: join(PROJECT_ROOT, build), pluginConfig: JSON.stringify(config) });
}

/** A connection as in the OPEN fixture: id 42, client 127.0.0.1:50000, primary 127.0.0.1:7001. */
function fixtureConnection(host: NetworkHost) {
  return host.newConnection({ connectionId: 42n, source: "127.0.0.1:50000", upstream: "127.0.0.1:7001" });
}

const stat = (host: NetworkHost, name: string) => host.metric(`lockstep.demo.${name}`);

/** The reply the reply fixtures describe: 40000 bytes of "+OK\r\n". */
const OK_REPLY = vectorBytes({ name: "", note: "", patternHex: Buffer.from("+OK\r\n").toString("hex"), length: 40000, crc32: "" });

/** The frames a connection's stream carried after OPEN, decoded. */
function framesOf(host: NetworkHost): FilterFrame[] {
  const [stream] = host.grpcStreams.values();
  return stream.sent.slice(1).map((b) => decodeFilterFrame(b));
}
const replyFrames = (host: NetworkHost) => framesOf(host).filter((f) => f.type === "REPLY_DIGEST" || f.type === "REPLY_END");

/** Chunk sizes from a seeded generator: 1 byte to a few windows, never aligned on purpose. */
function oddChunks(bytes: Buffer, seed: number): Buffer[] {
  const out: Buffer[] = [];
  let x = seed;
  for (let at = 0; at < bytes.length;) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const n = [1, 2, 3, 7, 16383, 16384, 16385, 5000, 40000][x % 9];
    out.push(bytes.subarray(at, at + n));
    at += n;
  }
  return out;
}

describe.each(BUILDS)("filter (%s)", (build) => {
  it("loads with exactly the spec's import signatures and configures", () => {
    const { host } = load(build);
    expect(host.configured).toBe(true);
    expect(host.logs).toContainEqual({ level: "info", message: 'lockstep: mirroring service "demo" through cluster "lockstep_relay"' });
    expect(host.tickPeriodMs).toBeGreaterThan(0);
  });

  it.each([
    ["not JSON", "relay_cluster", 'configuration is not valid JSON: expected \'{\' (the configuration must be a JSON object) at offset 0'],
    ["an unknown field", { ...CONFIG, colour: 1 }, 'unknown field "colour"'],
    ["no relay cluster", { service: "demo" }, '"relay_cluster" must be'],
    ["a bad service name", { ...CONFIG, service: "a b" }, '"service" must be 1 to 64 characters'],
    ["a fractional bound", { ...CONFIG, max_inflight_bytes_per_connection: 1.5 }, '"max_inflight_bytes_per_connection" must be a whole number'],
    ["a nested value", { ...CONFIG, limits: {} }, 'configuration is not valid JSON: nested objects and arrays are not supported for "limits" at offset'],
    ["a total below the per-connection bound", { ...CONFIG, max_inflight_bytes_per_connection: 10, max_inflight_bytes_total: 5 }, '"max_inflight_bytes_total" must be at least'],
  ])("refuses a configuration with %s, saying why", (_what, config, message) => {
    const { host } = createNetworkHost({ wasmPath: join(PROJECT_ROOT, build), pluginConfig: typeof config === "string" ? config : JSON.stringify(config) });
    expect(host.configured).toBe(false);
    const critical = host.logs.filter((l) => l.level === "critical").map((l) => l.message);
    expect(critical).toHaveLength(1);
    expect(critical[0]).toContain("lockstep: invalid plugin configuration: " + message);
  });

  it("sends OPEN, DATA and END frames byte for byte as the wire fixtures, and never changes the client's bytes", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    expect(conn.downstreamData("SET a 1\n")).toEqual({ action: Action.CONTINUE, forwarded: Buffer.from("SET a 1\n") });
    expect(conn.downstreamData("GET a\n", true).forwarded).toEqual(Buffer.from("GET a\n"));
    const [stream] = host.grpcStreams.values();
    expect(stream).toMatchObject({ cluster: "lockstep_relay", service: "lockstep.mirror.v1.Mirror", method: "Stream" });
    expect(stream.sent.map((b) => b.toString("hex"))).toEqual(["open", "data", "data-offset", "end"].map((n) => fixture(n).hex));
    expect(stat(host, "bytes_sent")).toBe(14);
    expect(host.violations).toEqual([]);
  });

  it("applies an ACK (fixture) to the per-replica stats, routed by token from the root", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("SET a 1\n");
    conn.downstreamData("GET a\n", true);
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token + 1000, fixtureBytes("ack-two-replicas")); // unknown token: ignored
    host.grpcReceive(stream.token, fixtureBytes("ack-two-replicas"));
    expect(stat(host, "inflight_bytes")).toBe(0);
    expect(stat(host, "replica.replica-a.connections")).toBe(1);
    expect(stat(host, "replica.replica-a.bytes_mirrored")).toBe(14);
    expect(stat(host, "replica.replica-a.bytes_acked")).toBe(8);
    expect(stat(host, "replica.replica-b.detaches")).toBe(1);
    expect(stat(host, "replica.replica-a.detaches")).toBe(0);
    expect(stat(host, "relay_protocol_errors")).toBe(0);
  });

  it("opens the mirror when the primary speaks first, and never pauses the primary's bytes", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    expect(conn.upstreamData("+banner\r\n").action).toBe(Action.CONTINUE);
    const [stream] = host.grpcStreams.values();
    expect(decodeFilterFrame(stream.sent[0])).toMatchObject({ type: "OPEN", primary: "127.0.0.1:7001" });
    expect(host.violations).toEqual([]);
  });

  it("half-closes the stream when the connection ends and counts a complete mirror", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("SET a 1\n", true); // the client half-closes, then the connection ends
    conn.closeDownstream();
    conn.done();
    const [stream] = host.grpcStreams.values();
    expect(stream.closedByModule).toBe("close");
    expect(stat(host, "streams_active")).toBe(1); // waiting for the relay's final answer
    host.grpcReceive(stream.token, encodeAck(8, [{ name: "r1", queued: 8, acked: 8, state: "CLOSED", reason: "NONE" }]));
    host.grpcClose(stream.token, 0);
    expect(stat(host, "streams_active")).toBe(0);
    expect(stat(host, "streams_lost")).toBe(0);
    expect(stat(host, "replica.r1.completed")).toBe(1);
  });

  it("stops sending once the relay says the connection has no replica, without counting a loss", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("first");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, fixtureBytes("ack-empty"));
    expect(stream.closedByModule).toBe("close");
    expect(conn.downstreamData("second", true).forwarded).toEqual(Buffer.from("second"));
    expect(stream.sent).toHaveLength(2); // OPEN and the first DATA only
    conn.closeDownstream(); conn.done();
    host.grpcClose(stream.token, 0);
    expect(stat(host, "connections_without_replicas")).toBe(1);
    expect(stat(host, "bytes_unmirrored")).toBe(0);
    expect(stat(host, "streams_lost")).toBe(0);
    expect(stat(host, "streams_active")).toBe(0);
  });

  it("counts the loss when the relay fails, and keeps passing the client's bytes", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("abc");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, encodeAck(0, [{ name: "r1", queued: 0, acked: 0, state: "LIVE", reason: "NONE" }]));
    host.grpcClose(stream.token, 14); // UNAVAILABLE
    expect(conn.downstreamData("defg").forwarded).toEqual(Buffer.from("defg"));
    expect(stream.sent).toHaveLength(2); // OPEN + the first DATA; nothing after the loss
    expect(stat(host, "streams_lost")).toBe(1);
    expect(stat(host, "bytes_unmirrored")).toBe(7);
    expect(stat(host, "replica.r1.detaches")).toBe(1);
    expect(stat(host, "inflight_bytes")).toBe(0);
  });

  it("closes the client connection when the relay says its primary is a primary no more (CLOSE fixture), and finishes the stream as usual", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("SET a 1\n");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, fixtureBytes("close-demoted"));
    expect(conn.closeRequests).toEqual(["downstream"]);
    expect(stat(host, "closed_demoted")).toBe(1);
    expect(stat(host, "relay_protocol_errors")).toBe(0);
    expect(stream.closedByModule).toBeNull(); // the stream ends with the connection
    conn.closeDownstream(PeerType.LOCAL); conn.done();
    expect(stream.closedByModule).toBe("close");
    expect(host.violations).toEqual([]);
  });

  it("cuts the mirror on a malformed or impossible ACK, not the connection", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("abc");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, encodeAck(99, [])); // acknowledges more than was sent
    expect(stream.closedByModule).toBe("cancel");
    expect(stat(host, "relay_protocol_errors")).toBe(1);
    expect(host.logs.some((l) => l.level === "error" && l.message.includes("acknowledged more than was sent"))).toBe(true);
    expect(conn.downstreamData("more").action).toBe(Action.CONTINUE);
  });

  it("goes on unmirrored when Envoy refuses to open the stream", () => {
    const { host } = load(build);
    host.grpcFailNextStreamOpen(1);
    const conn = fixtureConnection(host);
    expect(conn.downstreamData("hello").forwarded).toEqual(Buffer.from("hello"));
    expect(stat(host, "stream_open_failures")).toBe(1);
    expect(stat(host, "bytes_unmirrored")).toBe(5);
  });

  /** An ACK from a relay with one live replica that took everything received. */
  const ackLive = (received: number) => encodeAck(received, [{ name: "r1", queued: received, acked: received, state: "LIVE", reason: "NONE" }]);
  /** Frames of the connection's stream after OPEN, as [type, offset or total, length]. */
  const shape = (host: NetworkHost) => framesOf(host).map((f) =>
    f.type === "DATA" ? ["DATA", f.offset, f.length] : f.type === "END" ? ["END", f.totalBytes] : [f.type]);

  it("holds the client's bytes unsent while the relay is behind, and mirrors them exactly when they go on to the primary", () => {
    const { host } = load(build, { ...CONFIG, max_inflight_bytes_per_connection: 1000 });
    const conn = fixtureConnection(host);
    expect(conn.downstreamData(Buffer.alloc(1500, 1)).action).toBe(Action.CONTINUE); // nothing in flight: it goes
    expect(conn.downstreamData(Buffer.alloc(200, 2)).action).toBe(Action.PAUSE); // 1500 in flight + 200 > 1000
    expect(conn.downstreamData(Buffer.alloc(100, 3)).action).toBe(Action.PAUSE); // Envoy hands over its 300 bytes
    expect(shape(host)).toEqual([["DATA", 0, 1500]]); // held bytes are not sent
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, ackLive(900)); // 600 in flight: above half the bound
    expect(conn.continued).toBe(0);
    host.grpcReceive(stream.token, ackLive(1500));
    expect(conn.continued).toBe(1);
    expect(shape(host)).toEqual([["DATA", 0, 1500], ["DATA", 1500, 300]]);
    expect(Buffer.concat(conn.toUpstream)).toEqual(Buffer.concat([Buffer.alloc(1500, 1), Buffer.alloc(200, 2), Buffer.alloc(100, 3)]));
    expect(stat(host, "pauses")).toBe(1);
    expect(conn.downstreamData("x").action).toBe(Action.CONTINUE);
    expect(host.violations).toEqual([]);
  });

  it("never sends the replicas bytes the primary did not get: a client reset while its bytes are held (issue 8, defect 3)", () => {
    const { host } = load(build, { ...CONFIG, max_inflight_bytes_per_connection: 1000 });
    const conn = fixtureConnection(host);
    conn.downstreamData(Buffer.alloc(1500, 1));
    expect(conn.downstreamData(Buffer.alloc(700, 2)).action).toBe(Action.PAUSE);
    conn.closeDownstream(); // the client reset: Envoy drops the 700 held bytes
    conn.done();
    const [stream] = host.grpcStreams.values();
    expect(shape(host)).toEqual([["DATA", 0, 1500]]);
    expect(Buffer.concat(conn.toUpstream).length).toBe(1500);
    expect(stat(host, "bytes_sent")).toBe(1500);
    // What the primary consumed of the 1500 bytes before Envoy reset its connection is unknown:
    // the stream is reset too (the relay resets the replica connections), and counted.
    expect(stream.closedByModule).toBe("cancel");
    expect(stat(host, "client_resets")).toBe(1);
  });

  it("counts every replica of a connection its client reset after bytes went on missed (what the primary consumed is unknown), but not one the client half-closed first, nor one Envoy closed", () => {
    const { host } = load(build);
    const r = (name: string, acked: number) => ({ name, queued: acked, acked, state: "LIVE" as const, reason: "NONE" as const });
    const run = (end: (c: ReturnType<typeof fixtureConnection>) => void) => {
      const conn = fixtureConnection(host);
      conn.downstreamData(Buffer.alloc(100, 7));
      const stream = [...host.grpcStreams.values()].at(-1)!;
      host.grpcReceive(stream.token, encodeAck(100, [r("a", 100), r("b", 100)]));
      end(conn);
      conn.done();
      return stream;
    };
    const reset = run((c) => c.closeDownstream(PeerType.REMOTE));
    expect(reset.closedByModule).toBe("cancel");
    expect(stat(host, "replica.a.missed_connections")).toBe(1); // even though it had acked every byte
    expect(stat(host, "replica.b.missed_connections")).toBe(1);
    const halfClosed = run((c) => { c.downstreamData("", true); c.closeDownstream(PeerType.REMOTE); });
    const byEnvoy = run((c) => c.closeDownstream(PeerType.LOCAL)); // the primary went away, or a switchover
    for (const s of [halfClosed, byEnvoy]) expect(s.closedByModule).toBe("close");
    expect(stat(host, "client_resets")).toBe(1);
    expect(stat(host, "replica.a.missed_connections")).toBe(1);
  });

  it("sends END after the held bytes when the client half-closed while they were held", () => {
    const { host } = load(build, { ...CONFIG, max_inflight_bytes_per_connection: 1000 });
    const conn = fixtureConnection(host);
    conn.downstreamData(Buffer.alloc(1500, 1));
    expect(conn.downstreamData(Buffer.alloc(10, 2), true).action).toBe(Action.PAUSE);
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, ackLive(1500));
    expect(shape(host)).toEqual([["DATA", 0, 1500], ["DATA", 1500, 10], ["END", 1510]]);
  });

  it("clears the wait when Envoy's next read finds the relay caught up, so the stall timeout never cuts a flowing connection (issue 8, defect 7)", () => {
    const { host } = load(build, { ...CONFIG, max_inflight_bytes_per_connection: 1000, relay_stall_timeout_ms: 300 });
    const conn = fixtureConnection(host);
    conn.downstreamData(Buffer.alloc(900, 1));
    expect(conn.downstreamData(Buffer.alloc(200, 2)).action).toBe(Action.PAUSE);
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, ackLive(300)); // 600 in flight: not enough to resume (half the bound)...
    expect(conn.continued).toBe(0);
    expect(conn.downstreamData(Buffer.alloc(50, 3)).action).toBe(Action.CONTINUE); // ...but 600 + 250 fits: it goes on
    // Flowing again, with bytes in flight all the time, for longer than the stall timeout.
    let sent = 1150;
    for (let i = 0; i < 10; i++) {
      host.advance(100); host.tick();
      host.grpcReceive(stream.token, ackLive(sent - 200));
      expect(conn.downstreamData(Buffer.alloc(300, 4)).action).toBe(Action.CONTINUE);
      sent += 300;
    }
    expect(stat(host, "overflows")).toBe(0);
    expect(stream.closedByModule).not.toBe("cancel");
    expect(shape(host)).toEqual([["DATA", 0, 900], ["DATA", 900, 250], ...Array.from({ length: 10 }, (_, i) => ["DATA", 1150 + 300 * i, 300])]);
  });

  it("gives up on a stalled relay after the stall timeout: mirror cut, held bytes go on unmirrored, counted", () => {
    const { host } = load(build, { ...CONFIG, max_inflight_bytes_per_connection: 1000, relay_stall_timeout_ms: 300 });
    const conn = fixtureConnection(host);
    conn.downstreamData(Buffer.alloc(2000));
    expect(conn.downstreamData(Buffer.alloc(50)).action).toBe(Action.PAUSE);
    host.advance(200); host.tick();
    expect(conn.continued).toBe(0);
    host.advance(200); host.tick();
    expect(conn.continued).toBe(1);
    const [stream] = host.grpcStreams.values();
    expect(stream.closedByModule).toBe("cancel");
    expect(stat(host, "overflows")).toBe(1);
    expect(stat(host, "inflight_bytes")).toBe(0);
    expect(stat(host, "bytes_unmirrored")).toBe(2050);
    expect(stat(host, "unmirrored_connections")).toBe(1); // the relay never named a replica
    expect(conn.downstreamData("after").action).toBe(Action.CONTINUE);
  });

  it("when the worker's total is the bound and the relay stalls, cuts the connection holding the most in flight, not the one waiting with nothing in flight (issue 8, defect 7)", () => {
    const { host } = load(build, { ...CONFIG, max_inflight_bytes_per_connection: 4000, max_inflight_bytes_total: 5000, relay_stall_timeout_ms: 300 });
    const big = host.newConnection({ source: "127.0.0.1:1", upstream: "127.0.0.1:2" });
    const small = host.newConnection({ source: "127.0.0.1:3", upstream: "127.0.0.1:2" });
    expect(big.downstreamData(Buffer.alloc(4000)).action).toBe(Action.CONTINUE);
    expect(small.downstreamData(Buffer.alloc(1000)).action).toBe(Action.CONTINUE);
    const [bigStream, smallStream] = host.grpcStreams.values();
    host.grpcReceive(smallStream.token, ackLive(1000)); // small has nothing in flight now
    expect(small.downstreamData(Buffer.alloc(1500)).action).toBe(Action.PAUSE); // 4000 + 1500 > 5000
    for (let t = 0; t < 300; t += 100) { host.advance(100); host.tick(); } // the relay stays silent for the stall timeout
    expect(small.continued).toBe(0);
    expect(stat(host, "overflows")).toBe(0);
    host.advance(100); host.tick();
    expect(bigStream.closedByModule).toBe("cancel");
    expect(smallStream.closedByModule).toBeNull();
    expect(small.continued).toBe(1); // the total fell: small goes on, mirrored
    expect(decodeFilterFrame(smallStream.sent.at(-1)!)).toMatchObject({ type: "DATA", offset: 1000 });
    expect(stat(host, "overflows")).toBe(1);
    expect(stat(host, "bytes_unmirrored")).toBe(4000); // big's bytes, not small's
  });

  // The shipped bounds, with no configuration: the README's numbers, as Envoy hands them over
  // (reads of up to 1 MiB).
  const MiB = 1 << 20;
  /** ACK `received` bytes of `stream` (one live replica that took them all). */
  const ackStream = (host: NetworkHost, token: number, received: number) => host.grpcReceive(token, ackLive(received));

  it("by default holds a connection once 4 MiB are in flight, not before, and lets it go on once the relay is back under half", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    for (let i = 0; i < 3; i++) expect(conn.downstreamData(Buffer.alloc(MiB, i)).action).toBe(Action.CONTINUE);
    expect(conn.downstreamData(Buffer.alloc(MiB - 1, 3)).action).toBe(Action.CONTINUE);
    expect(conn.downstreamData(Buffer.alloc(1, 4)).action).toBe(Action.CONTINUE); // exactly 4 MiB in flight: not past the bound
    expect(stat(host, "inflight_bytes")).toBe(4 * MiB);
    expect(stat(host, "pauses")).toBe(0);
    expect(conn.downstreamData(Buffer.alloc(1, 5)).action).toBe(Action.PAUSE); // one byte more would pass it
    expect(stat(host, "pauses")).toBe(1);
    expect(stat(host, "bytes_sent")).toBe(4 * MiB); // the held byte is neither sent nor passed on
    expect(Buffer.concat(conn.toUpstream).length).toBe(4 * MiB);
    const [stream] = host.grpcStreams.values();
    ackStream(host, stream.token, 2 * MiB - 1); // 2 MiB + 1 still in flight: above half
    host.advance(100); host.tick();
    expect(conn.continued).toBe(0);
    ackStream(host, stream.token, 2 * MiB + 1); // under half
    expect(conn.continued).toBe(1);
    expect(stat(host, "bytes_sent")).toBe(4 * MiB + 1);
    expect(Buffer.concat(conn.toUpstream).length).toBe(4 * MiB + 1);
    expect(stat(host, "overflows")).toBe(0);
    expect(host.violations).toEqual([]);
  });

  it.each([
    ["the default 30 s", undefined, 30_000],
    ["close_timeout_ms 1500", 1500, 1500],
  ])("resets the stream of a finished connection whose relay never gives its final answer after %s, and counts the loss", (_what, configured, timeoutMs) => {
    const { host } = load(build, configured === undefined ? CONFIG : { ...CONFIG, close_timeout_ms: configured });
    const conn = fixtureConnection(host);
    conn.downstreamData("SET a 1\n");
    const [stream] = host.grpcStreams.values();
    ackStream(host, stream.token, 8);
    // An open connection is never reset, however long it lives.
    for (let t = 0; t < 2 * timeoutMs; t += 1000) { host.advance(1000); host.tick(); }
    expect(stream.closedByModule).toBeNull();
    conn.downstreamData("GET a\n", true);
    conn.closeDownstream(); conn.done();
    expect(stream.closedByModule).toBe("close"); // half-closed: waiting for the relay's final answer
    host.advance(timeoutMs - 100); host.tick();
    expect(stream.closedByModule).toBe("close");
    expect(stat(host, "streams_active")).toBe(1);
    host.advance(200); host.tick();
    expect(stream.closedByModule).toBe("cancel");
    expect(stat(host, "streams_active")).toBe(0);
    expect(stat(host, "streams_lost")).toBe(1);
    expect(stat(host, "bytes_unmirrored")).toBe(6); // sent, never acknowledged
    expect(stat(host, "replica.r1.detaches")).toBe(1);
    expect(stat(host, "replica.r1.missed_connections")).toBe(1); // never confirmed complete: out of sync
    expect(host.logs.some((l) => l.level === "warn" && /relay gave no final answer for connection \d+; stream reset/.test(l.message))).toBe(true);
  });

  it("resets after close_timeout_ms a stream the relay left open after saying the connection has no replica", () => {
    const { host } = load(build, { ...CONFIG, close_timeout_ms: 1500 });
    const conn = fixtureConnection(host);
    conn.downstreamData("first");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, fixtureBytes("ack-empty"));
    conn.closeDownstream(); conn.done();
    host.advance(1400); host.tick();
    expect(stat(host, "streams_active")).toBe(1);
    host.advance(200); host.tick();
    expect(stream.closedByModule).toBe("cancel");
    expect(stat(host, "streams_active")).toBe(0);
  });

  it("by default holds a connection with nothing in flight once its worker's connections hold 64 MiB, not before, and lets it go on at 48 MiB", () => {
    const { host } = load(build);
    const full = Array.from({ length: 16 }, (_, i) => host.newConnection({ source: `127.0.0.1:${1000 + i}`, upstream: "127.0.0.1:2" }));
    for (const c of full) for (let i = 0; i < 4; i++) expect(c.downstreamData(Buffer.alloc(MiB)).action).toBe(Action.CONTINUE);
    expect(stat(host, "inflight_bytes")).toBe(64 * MiB); // 16 connections at their own bound: the total is exactly reached
    expect(stat(host, "pauses")).toBe(0);
    const late = host.newConnection({ source: "127.0.0.1:3000", upstream: "127.0.0.1:2" });
    expect(late.downstreamData("hello").action).toBe(Action.PAUSE); // its own in flight is 0; the total would pass 64 MiB
    expect(stat(host, "pauses")).toBe(1);
    const streams = [...host.grpcStreams.values()];
    const lateStream = streams[16];
    expect(lateStream.sent.map((b) => decodeFilterFrame(b).type)).toEqual(["OPEN"]); // its bytes wait unsent
    // Other connections' ACKs bring the total down: 60 MiB is not enough, 48 MiB is.
    ackStream(host, streams[0].token, 4 * MiB);
    host.advance(100); host.tick();
    expect(late.continued).toBe(0);
    for (let i = 1; i < 4; i++) ackStream(host, streams[i].token, 4 * MiB);
    host.advance(100); host.tick();
    expect(late.continued).toBe(1);
    expect(Buffer.concat(late.toUpstream).toString()).toBe("hello");
    expect(decodeFilterFrame(lateStream.sent.at(-1)!)).toMatchObject({ type: "DATA", offset: 0 });
    expect(stat(host, "overflows")).toBe(0);
    expect(streams.some((s) => s.closedByModule === "cancel")).toBe(false);
    expect(host.violations).toEqual([]);
  });

  it("lets a connection waiting for the worker's total go on when another connection's ACK brings the total down, cutting nothing", () => {
    const { host } = load(build, { ...CONFIG, max_inflight_bytes_per_connection: 4000, max_inflight_bytes_total: 5000, relay_stall_timeout_ms: 300 });
    const big = host.newConnection({ source: "127.0.0.1:1", upstream: "127.0.0.1:2" });
    const small = host.newConnection({ source: "127.0.0.1:3", upstream: "127.0.0.1:2" });
    big.downstreamData(Buffer.alloc(4000));
    small.downstreamData(Buffer.alloc(1000));
    const [bigStream, smallStream] = host.grpcStreams.values();
    ackStream(host, smallStream.token, 1000);
    expect(small.downstreamData(Buffer.alloc(1500, 7)).action).toBe(Action.PAUSE); // 4000 + 1500 > 5000
    host.advance(100); host.tick();
    host.advance(100); host.tick();
    expect(small.continued).toBe(0); // still 4000 of 5000 in flight
    ackStream(host, bigStream.token, 1000); // big's ACK: the total falls to 3000
    host.advance(100); host.tick();
    expect(small.continued).toBe(1);
    expect(decodeFilterFrame(smallStream.sent.at(-1)!)).toMatchObject({ type: "DATA", offset: 1000 });
    expect(Buffer.concat(small.toUpstream)).toEqual(Buffer.concat([Buffer.alloc(1000), Buffer.alloc(1500, 7)]));
    for (let t = 0; t < 500; t += 100) { host.advance(100); host.tick(); } // past the stall timeout: nothing waits any more
    expect(stat(host, "overflows")).toBe(0);
    expect([bigStream.closedByModule, smallStream.closedByModule]).toEqual([null, null]);
  });

  it("holds a new connection while max_finishing_streams mirrors of closed connections are still finishing, and opens it when one ends (issue 8, defect 4)", () => {
    const { host } = load(build, { ...CONFIG, max_finishing_streams: 2 });
    const closed = [1, 2].map((i) => {
      const c = host.newConnection({ source: `127.0.0.1:${i}`, upstream: "127.0.0.1:2" });
      c.downstreamData("bye\n", true);
      c.closeDownstream(); c.done();
      return [...host.grpcStreams.values()].at(-1)!;
    });
    const next = host.newConnection({ source: "127.0.0.1:9", upstream: "127.0.0.1:2" });
    expect(next.downstreamData("hello").action).toBe(Action.PAUSE);
    expect(host.grpcStreams.size).toBe(2); // its stream waits
    host.grpcReceive(closed[0].token, encodeAck(4, [{ name: "r1", queued: 4, acked: 4, state: "CLOSED", reason: "NONE" }]));
    host.grpcClose(closed[0].token, 0); // the relay finished one
    expect(next.continued).toBe(1);
    expect(host.grpcStreams.size).toBe(3);
    const stream = [...host.grpcStreams.values()].at(-1)!;
    expect(stream.sent.slice(1).map((b) => decodeFilterFrame(b))).toMatchObject([{ type: "DATA", offset: 0, parts: [Buffer.from("hello")], length: 5 }]);
    expect(Buffer.concat(next.toUpstream)).toEqual(Buffer.from("hello"));
  });

  it("lets a connection that waited the stall timeout for a finishing stream go on unmirrored, counted", () => {
    const { host } = load(build, { ...CONFIG, max_finishing_streams: 1, relay_stall_timeout_ms: 300 });
    const c = host.newConnection({ source: "127.0.0.1:1", upstream: "127.0.0.1:2" });
    c.downstreamData("bye\n", true);
    c.closeDownstream(); c.done(); // its stream never finishes: the relay hangs
    const next = host.newConnection({ source: "127.0.0.1:9", upstream: "127.0.0.1:2" });
    expect(next.downstreamData("hello").action).toBe(Action.PAUSE);
    host.advance(400); host.tick();
    expect(next.continued).toBe(1);
    expect(Buffer.concat(next.toUpstream)).toEqual(Buffer.from("hello"));
    expect(stat(host, "overflows")).toBe(1);
    expect(stat(host, "bytes_unmirrored")).toBe(5);
    expect(stat(host, "unmirrored_connections")).toBe(1);
  });

  describe("evidence the controller reads: which replicas missed bytes", () => {
    const r = (name: string, acked: number, state: "LIVE" | "CLOSED" | "DETACHED", reason: "NONE" | "LAG_BOUND" | "REPLICA_CLOSED" = "NONE") =>
      ({ name, queued: acked, acked, state, reason });

    it("counts no replica that the relay reported CLOSED, and one that was left short of bytes", () => {
      const { host } = load(build);
      const conn = fixtureConnection(host);
      conn.downstreamData(Buffer.alloc(100));
      conn.downstreamData(Buffer.alloc(50), true);
      conn.closeDownstream(); conn.done();
      const [stream] = host.grpcStreams.values();
      host.grpcReceive(stream.token, encodeAck(150, [r("a", 150, "CLOSED"), r("b", 100, "DETACHED", "LAG_BOUND"), r("c", 150, "DETACHED", "REPLICA_CLOSED")]));
      host.grpcClose(stream.token, 0);
      expect(stat(host, "replica.a.missed_connections")).toBe(0);
      expect(stat(host, "replica.b.missed_connections")).toBe(1);
      expect(stat(host, "replica.c.missed_connections")).toBe(0); // it took every byte, then closed (a protocol's QUIT)
      expect(stat(host, "unmirrored_connections")).toBe(0);
    });

    it("counts every replica not CLOSED when the stream is lost after bytes went on, once per connection", () => {
      const { host } = load(build);
      const conn = fixtureConnection(host);
      conn.downstreamData(Buffer.alloc(100));
      const [stream] = host.grpcStreams.values();
      host.grpcReceive(stream.token, encodeAck(100, [r("a", 100, "LIVE"), r("b", 100, "LIVE")]));
      host.grpcClose(stream.token, 14); // the relay died: what it wrote may not have reached them
      conn.downstreamData(Buffer.alloc(10));
      conn.closeDownstream(); conn.done();
      expect(stat(host, "replica.a.missed_connections")).toBe(1);
      expect(stat(host, "replica.b.missed_connections")).toBe(1);
      expect(stat(host, "unmirrored_connections")).toBe(1); // the last bytes reached no replica at all
    });

    it("counts nothing for a stream lost before any byte went on, until one does", () => {
      const { host } = load(build);
      const conn = fixtureConnection(host);
      conn.upstreamData("+banner\r\n"); // opens the stream; no client byte yet
      const [stream] = host.grpcStreams.values();
      host.grpcReceive(stream.token, encodeAck(0, [r("a", 0, "LIVE")]));
      host.grpcClose(stream.token, 14);
      expect(stat(host, "replica.a.missed_connections")).toBe(0);
      expect(stat(host, "unmirrored_connections")).toBe(0);
      conn.downstreamData("late");
      expect(stat(host, "replica.a.missed_connections")).toBe(1);
      expect(stat(host, "unmirrored_connections")).toBe(1);
    });

    it("counts nothing for a service without replicas when the connection ends before the relay's first answer", () => {
      const { host } = load(build);
      const conn = fixtureConnection(host);
      conn.downstreamData("quick", true);
      conn.closeDownstream(); conn.done();
      const [stream] = host.grpcStreams.values();
      host.grpcReceive(stream.token, fixtureBytes("ack-empty"));
      host.grpcClose(stream.token, 0);
      expect(stat(host, "unmirrored_connections")).toBe(0);
      expect(stat(host, "streams_lost")).toBe(0);
    });

    it("counts the connection unmirrored when some of its bytes reached no replica, and not when the relay has none for it", () => {
      const { host } = load(build);
      host.grpcFailNextStreamOpen(1);
      const lost = host.newConnection({ source: "127.0.0.1:1", upstream: "127.0.0.1:2" });
      lost.downstreamData("x");
      lost.downstreamData("y");
      expect(stat(host, "unmirrored_connections")).toBe(1);
      const none = fixtureConnection(host);
      none.downstreamData("first");
      const stream = [...host.grpcStreams.values()].at(-1)!;
      host.grpcReceive(stream.token, fixtureBytes("ack-empty"));
      none.downstreamData("second");
      none.closeDownstream(); none.done();
      host.grpcClose(stream.token, 0);
      expect(stat(host, "unmirrored_connections")).toBe(1);
    });
  });

  it("digests the primary's reply into the fixtures' REPLY_DIGEST and REPLY_END, passing it on unchanged", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("SET a 1\n");
    expect(conn.upstreamData(OK_REPLY, true)).toEqual({ action: Action.CONTINUE, forwarded: OK_REPLY });
    const [stream] = host.grpcStreams.values();
    expect(stream.sent.slice(2).map((b) => b.toString("hex"))).toEqual([fixture("reply-digest").hex, fixture("reply-end").hex]);
    expect(stat(host, "reply_bytes_digested")).toBe(40000);
    expect(host.violations).toEqual([]);
  });

  it.each([1, 2, 3, 4])("cuts the reply into the same windows whatever Envoy's chunk sizes (seed %i)", (seed) => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    const chunks = oddChunks(OK_REPLY, seed);
    chunks.forEach((c, i) => expect(conn.upstreamData(c, i === chunks.length - 1).action).toBe(Action.CONTINUE));
    expect(Buffer.concat(conn.toClient)).toEqual(OK_REPLY);
    const frames = replyFrames(host);
    const digests = frames.filter((f) => f.type === "REPLY_DIGEST");
    let next = 0;
    for (const d of digests) { expect(d.firstWindow).toBe(next); next += d.crcs.length; }
    expect(digests.flatMap((d) => d.crcs)).toEqual(fixture("reply-digest").decoded.crcs);
    expect(frames.at(-1)).toEqual(fixture("reply-end").decoded);
    expect(frames.filter((f) => f.type === "REPLY_END")).toHaveLength(1);
  });

  it("agrees with zlib's CRC-32 on the digest vectors", () => {
    for (const v of DIGEST_VECTORS.filter((x) => x.length <= 16384)) {
      const { host } = load(build);
      const conn = fixtureConnection(host);
      conn.upstreamData(vectorBytes(v), true);
      const frames = replyFrames(host);
      const crc = v.length === 16384 ? (frames[0] as any).crcs[0] : (frames.at(-1) as any).tailCrc;
      expect(crc.toString(16).padStart(8, "0"), v.name).toBe(v.crc32);
    }
  });

  it("sends several REPLY_DIGEST frames for one read longer than a frame's 256 windows", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    const big = Buffer.alloc(300 * 16384 + 10);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    conn.upstreamData(big);
    const digests = replyFrames(host);
    expect(digests.map((d) => d.type === "REPLY_DIGEST" && [d.firstWindow, d.crcs.length])).toEqual([[0, 256], [256, 44]]);
    expect((digests[1] as any).crcs[43]).toBe(crc32(big.subarray(299 * 16384, 300 * 16384)));
  });

  it("ends the reply as CUT when the connection closes before the primary ends it", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("PING\r\n", true);
    conn.upstreamData("+OK\r\n");
    conn.closeDownstream();
    conn.done();
    const [stream] = host.grpcStreams.values();
    expect(stream.sent.at(-1)!.toString("hex")).toBe(fixture("reply-end-cut").hex);
    expect(stream.closedByModule).toBe("close");
  });

  it("with compare_replies off: OPEN says so, and the primary's replies are never read", () => {
    const { host } = load(build, { ...CONFIG, compare_replies: false });
    const conn = fixtureConnection(host);
    conn.downstreamData("SET a 1\n");
    for (const c of oddChunks(OK_REPLY, 7)) expect(conn.upstreamData(c).forwarded).toEqual(c);
    conn.upstreamData("", true);
    conn.closeDownstream(); conn.done();
    const [stream] = host.grpcStreams.values();
    expect(decodeFilterFrame(stream.sent[0])).toMatchObject({ type: "OPEN", flags: 0 });
    expect(replyFrames(host)).toEqual([]);
    expect(host.bufferReads.get(BufferType.UPSTREAM_DATA)).toBeUndefined();
    expect(stat(host, "reply_bytes_digested")).toBe(0);
    // The same with comparison on reads each reply chunk once.
    const on = load(build).host;
    const c2 = fixtureConnection(on);
    c2.downstreamData("SET a 1\n");
    const chunks = oddChunks(OK_REPLY, 7);
    for (const c of chunks) c2.upstreamData(c);
    expect(on.bufferReads.get(BufferType.UPSTREAM_DATA)).toEqual({ calls: chunks.length, bytes: OK_REPLY.length });
  });

  it("stops reading the primary's replies once the relay says there is no replica", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("first");
    conn.upstreamData("one");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, fixtureBytes("ack-empty"));
    conn.upstreamData("two");
    expect(host.bufferReads.get(BufferType.UPSTREAM_DATA)).toEqual({ calls: 1, bytes: 3 });
    expect(host.violations).toEqual([]);
  });

  it("refuses a compare_replies that is not a boolean", () => {
    const { host } = load(build, { ...CONFIG, compare_replies: "yes" });
    expect(host.configured).toBe(false);
    expect(host.logs.some((l) => l.level === "critical" && l.message.includes('"compare_replies" must be true or false'))).toBe(true);
  });

  it("counts a DIVERGED replica (fixture) in its divergences and detaches, and only that one", () => {
    const { host } = load(build);
    const conn = fixtureConnection(host);
    conn.downstreamData("SET a 1\n");
    conn.downstreamData("GET a\n");
    const [stream] = host.grpcStreams.values();
    host.grpcReceive(stream.token, fixtureBytes("ack-diverged"));
    expect(stat(host, "replica.replica-b.divergences")).toBe(1);
    expect(stat(host, "replica.replica-b.detaches")).toBe(1);
    expect(stat(host, "replica.replica-a.divergences")).toBe(0);
    expect(stat(host, "replica.replica-a.detaches")).toBe(0);
    expect(host.logs).toContainEqual({ level: "warn", message: 'lockstep: replica "replica-b" diverged on connection 42: its replies differ from the primary\'s; detached from this connection' });
    expect(conn.downstreamData("more").forwarded).toEqual(Buffer.from("more"));
    expect(conn.upstreamData("+OK\r\n").forwarded).toEqual(Buffer.from("+OK\r\n"));
  });

  it("does not grow its memory over many connections", () => {
    const { host } = load(build);
    const run = (n: number) => {
      for (let i = 0; i < n; i++) {
        const conn = host.newConnection({ source: "127.0.0.1:1", upstream: "127.0.0.1:2" });
        conn.downstreamData(Buffer.alloc(512, i), true);
        conn.upstreamData(Buffer.alloc(20000 + (i % 7), i)); // a window and a partial one digested
        const stream = [...host.grpcStreams.values()].at(-1)!;
        host.grpcReceive(stream.token, encodeAck(512, [{ name: "r", queued: 512, acked: 512, state: "LIVE", reason: "NONE" }]));
        conn.closeDownstream();
        conn.done();
        host.grpcClose(stream.token, 0);
        host.grpcStreams.delete(stream.token);
      }
    };
    run(300);
    const after300 = host.memoryBytes();
    run(3000);
    expect(host.memoryBytes()).toBe(after300);
    expect(stat(host, "streams_active")).toBe(0);
    expect(host.violations).toEqual([]);
  });

  it("holds an open, mirrored connection in under 1 KiB of its memory (docs/BENCHMARKS.md: Envoy's per-connection cost is elsewhere)", () => {
    const { host } = load(build, { ...CONFIG, compare_replies: true });
    const open = (n: number) => {
      for (let i = 0; i < n; i++) {
        const conn = host.newConnection({ source: "127.0.0.1:50000", upstream: "127.0.0.1:7001" });
        conn.downstreamData("0123456789abcdef");
        host.grpcReceive(host.streamFor(conn)!.token, encodeAck(16, ["r1", "r2"].map((name) => ({ name, queued: 16, acked: 16, state: "LIVE" as const, reason: "NONE" as const }))));
        conn.upstreamData("0123456789abcdef");
      }
    };
    open(200);
    const before = host.memoryBytes();
    open(4000);
    expect(stat(host, "streams_active")).toBe(4200);
    expect((host.memoryBytes() - before) / 4000).toBeLessThan(1024);
    expect(host.violations).toEqual([]);
  });
});

describe("host emulator", () => {
  function compile(source: string): string {
    const dir = mkdtempSync(join(tmpdir(), "lockstep-emu-"));
    writeFileSync(join(dir, "m.ts"), source);
    execFileSync(process.execPath, [join(PROJECT_ROOT, "node_modules/assemblyscript/bin/asc.js"), "m.ts", "-o", "m.wasm",
      "--runtime", "stub", "--exportStart", "_initialize", "--use", "abort=m/ab"], { cwd: dir });
    return join(dir, "m.wasm");
  }
  const base = `export function proxy_abi_version_0_2_1(): void {}
export function malloc(n: usize): usize { return heap.alloc(n); }
export function ab(m: string | null, f: string | null, l: u32, c: u32): void { unreachable(); }
`;

  it("refuses a module whose import arity differs from the ABI, naming it", () => {
    const wasm = compile(base + `@external("env", "proxy_grpc_send") declare function send(t: u32, p: usize, n: usize): u32;
export function proxy_on_context_create(a: u32, b: u32): void { send(1, 0, 0); }`);
    expect(() => createNetworkHost({ wasmPath: wasm, pluginConfig: "" })).toThrow(/import type mismatch for env\.proxy_grpc_send: the module declares \(i32, i32, i32\) -> \(i32\), the ABI says \(i32, i32, i32, i32\) -> \(i32\)/);
  });

  it("refuses an import Envoy does not provide, and throws on a spec call it does not implement", () => {
    const bad = compile(base + `@external("env", "abort") declare function abort2(a: u32, b: u32, c: u32, d: u32): void;
export function proxy_on_context_create(a: u32, b: u32): void { abort2(0, 0, 0, 0); }`);
    expect(() => createNetworkHost({ wasmPath: bad, pluginConfig: "" })).toThrow("env.abort, which Envoy does not provide");
    const unimplemented = compile(base + `@external("env", "proxy_http_call") declare function hc(a: usize, b: usize, c: usize, d: usize, e: usize, f: usize, g: usize, h: usize, i: u32, j: usize): u32;
export function proxy_on_context_create(a: u32, b: u32): void { hc(0, 0, 0, 0, 0, 0, 0, 0, 0, 0); }`);
    expect(() => createNetworkHost({ wasmPath: unimplemented, pluginConfig: "" })).toThrow("emulator: proxy_http_call not implemented");
  });
});
