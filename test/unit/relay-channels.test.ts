// The relay's Channels transport (docs/wire-format.md, "Transport"; relay/channel-stream.ts): a
// raw node:http2 client plays an Envoy worker's shared stream, many client connections on it
// as channels; real TCP servers play the replicas. Also the ChannelStream on its own against a
// fake shared call (what only it can show: the hold bound, frames and FINISH held in order) and
// the channel fixtures of test/fixtures/wire-frames.json on the relay's side.
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import { EventEmitter } from "node:events";
import { createHash, randomBytes } from "node:crypto";
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream } from "node:http2";
import { startRelay, type RelayServer } from "../../relay/server.ts";
import { parseRelayConfig } from "../../relay/config.ts";
import { CHANNELS_METHOD_PATH } from "../../relay/grpc-h2-server.ts";
import { ChannelStream, type ChannelCall, type SharedCall } from "../../relay/channel-stream.ts";
import { frameMessage, GrpcMessageDecoder, type GrpcFramingError } from "../../relay/grpc-framing.ts";
import { CallStatus } from "../../relay/mirror-call.ts";
import {
  channelPrefix, decodeAck, decodeFilterFrame, decodeRelayFrame, decodeStatus, encodeAck, encodeCancel, encodeChannelMessage, encodeData,
  encodeEnd, encodeFinish, encodeOpen, encodeStatus, splitChannel, FRAME_ACK, FRAME_CANCEL, FRAME_FINISH, FRAME_STATUS,
  type AckFrame, type CloseFrame, type StatusFrame,
} from "../../relay/frames.ts";
import { RecordingBackend, startBackends, type ConnectionRecord } from "../support/backends.ts";
import { waitFor } from "../support/ports.ts";
import { CHANNEL_FIXTURES, channelFixtureBytes } from "../support/wire-fixtures.ts";

interface ChannelLog { acks: AckFrame[]; closes: CloseFrame[]; statuses: StatusFrame[]; order: string[] }

/** One shared stream on the Channels method, as an Envoy worker's filter would hold it. */
class ChannelsClient {
  readonly session: ClientHttp2Session;
  readonly stream: ClientHttp2Stream;
  private readonly channels = new Map<number, ChannelLog>();
  /** The shared stream's gRPC status, once the relay ended it (undefined: it closed without one). */
  readonly status: Promise<{ code: number | undefined; details: string }>;
  trailersSeen = false;

  constructor(port: number) {
    this.session = connect(`http://127.0.0.1:${port}`);
    this.session.on("error", () => {});
    this.stream = this.session.request({ ":method": "POST", ":path": CHANNELS_METHOD_PATH, "content-type": "application/grpc", te: "trailers" });
    this.stream.on("error", () => {});
    const decoder = new GrpcMessageDecoder(64 << 20);
    this.stream.on("data", (chunk: Buffer) => decoder.push(chunk, (pieces) => this.onMessage(Buffer.concat(pieces))));
    this.status = new Promise((resolve) => {
      const done = (h: Record<string, unknown>) => {
        this.trailersSeen = true;
        // The call is over: a gRPC client (Envoy) resets what is left of the stream.
        if (!this.stream.closed) this.stream.close(constants.NGHTTP2_NO_ERROR);
        resolve({ code: Number(h["grpc-status"]), details: decodeURIComponent(String(h["grpc-message"] ?? "")) });
      };
      this.stream.on("response", (h) => { if (h["grpc-status"] !== undefined) done(h); });
      this.stream.on("trailers", done);
      this.stream.on("close", () => resolve({ code: undefined, details: "" }));
    });
  }

  private onMessage(message: Buffer): void {
    const channel = message.readUInt32LE(0);
    const frame = message.subarray(4);
    const log = this.channel(channel);
    if (frame[0] === FRAME_STATUS) { log.statuses.push(decodeStatus(frame)); log.order.push("STATUS"); return; }
    const f = decodeRelayFrame(frame);
    if (f.type === "ACK") log.acks.push(f); else log.closes.push(f);
    log.order.push(f.type);
  }

  channel(channel: number): ChannelLog {
    let log = this.channels.get(channel);
    if (!log) { log = { acks: [], closes: [], statuses: [], order: [] }; this.channels.set(channel, log); }
    return log;
  }

  /** Channels the relay said anything on. */
  get heard(): number[] { return [...this.channels.keys()].sort((a, b) => a - b); }

  send(channel: number, frame: Buffer): boolean { return this.stream.write(frameMessage([channelPrefix(channel), frame])); }
  open(channel: number, connectionId = BigInt(channel), primary = "127.0.0.1:1", service = "t"): void {
    this.send(channel, encodeOpen({ version: 1, connectionId, flags: 0, service, primary, client: "127.0.0.1:5" }));
  }
  finish(channel: number, total: number): void { this.send(channel, encodeEnd(total)); this.send(channel, encodeFinish()); }

  /** The channel's STATUS (waits for it). */
  statusOf(channel: number): Promise<StatusFrame> {
    return waitFor(`a STATUS on channel ${channel}`, () => this.channel(channel).statuses[0]);
  }

  lastAck(channel: number): AckFrame | undefined { return this.channel(channel).acks.at(-1); }

  close(): void { this.session.destroy(); }
}

/** A channel's client bytes, sent as DATA frames of random sizes; they begin with `marker` (the
 *  replica connection's head tells which channel it belongs to). */
class ChannelBytes {
  readonly chunks: Buffer[] = [];
  total = 0;
  constructor(readonly marker: string) {}
  next(size = 1 + Math.floor(Math.random() * 9000)): Buffer {
    const bytes = this.total === 0 ? Buffer.concat([Buffer.from(this.marker), randomBytes(size)]) : randomBytes(size);
    this.chunks.push(bytes);
    const frame = encodeData(this.total, bytes);
    this.total += bytes.length;
    return frame;
  }
  get sha256(): string { return createHash("sha256").update(Buffer.concat(this.chunks)).digest("hex"); }
}

/** `promise`, or a failure naming `what` after `ms` (a test never hangs on the relay's silence). */
function within<T>(what: string, promise: Promise<T>, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

const connectionOf = (replica: RecordingBackend, marker: string): ConnectionRecord[] =>
  replica.connections.filter((c) => c.head.subarray(0, marker.length).toString() === marker);

describe("the relay's Channels transport", () => {
  let relay: RelayServer;
  let replicas: RecordingBackend[];
  let clients: ChannelsClient[];

  const client = () => { const c = new ChannelsClient(relay.grpcPort); clients.push(c); return c; };

  beforeEach(async () => {
    clients = [];
    replicas = await startBackends(["ra", "rb"]);
    relay = await startRelay(parseRelayConfig({
      listen: { port: 0 }, metrics: { port: 0 }, limits: { setWaitMs: 300 },
      services: { t: replicas.map((r) => ({ name: r.name, address: r.address })) },
    }));
  });

  afterEach(async () => {
    for (const c of clients) c.close();
    await relay.close();
    for (const r of replicas) await r.kill();
  });

  it("carries two interleaved channels to their own replica connections, each acknowledged on its channel and finished with STATUS OK, and keeps the stream for more", async () => {
    const c = client();
    const one = new ChannelBytes("chan-1|");
    const two = new ChannelBytes("chan-2|");
    c.open(1);
    c.open(2);
    for (let i = 0; i < 30; i++) { c.send(1, one.next()); c.send(2, two.next(i === 0 ? 50_000 : undefined)); }
    c.finish(1, one.total);
    c.finish(2, two.total);
    expect(await c.statusOf(1)).toEqual({ type: "STATUS", code: CallStatus.OK, details: "" });
    expect(await c.statusOf(2)).toEqual({ type: "STATUS", code: CallStatus.OK, details: "" });
    expect(one.total).not.toBe(two.total);
    for (const [channel, bytes] of [[1, one], [2, two]] as const) {
      const log = c.channel(channel);
      // Every ACK on the channel counts that channel's bytes, and the last one comes just before its STATUS.
      expect(log.acks.every((a) => a.received <= bytes.total)).toBe(true);
      expect(log.order.slice(-2)).toEqual(["ACK", "STATUS"]);
      expect(log.acks.at(-1)!.received).toBe(bytes.total);
      expect(log.acks.at(-1)!.replicas.map((r) => [r.name, r.queued, r.acked, r.state])).toEqual([["ra", bytes.total, bytes.total, "CLOSED"], ["rb", bytes.total, bytes.total, "CLOSED"]]);
      for (const r of replicas) {
        const conns = connectionOf(r, bytes.marker);
        expect(conns, `${r.name}'s connections for channel ${channel}`).toHaveLength(1);
        expect(conns[0].receivedHash.copy().digest("hex")).toBe(bytes.sha256);
        expect(conns[0].ended).toBe(true);
      }
    }
    for (const r of replicas) expect(r.connections).toHaveLength(2);
    // The shared stream goes on: a third connection, later, on the same stream.
    expect(c.trailersSeen).toBe(false);
    const three = new ChannelBytes("chan-3|");
    c.open(3);
    c.send(3, three.next());
    c.finish(3, three.total);
    expect((await c.statusOf(3)).code).toBe(CallStatus.OK);
    for (const r of replicas) expect(connectionOf(r, three.marker)[0].receivedHash.copy().digest("hex")).toBe(three.sha256);
    expect(c.trailersSeen).toBe(false);
    expect(c.heard).toEqual([1, 2, 3]);
    expect(relay.metrics.replicaMissed.get()).toBe(0);
    expect(relay.metrics.channelFramesDropped.get()).toBe(0);
    expect(relay.metrics.protocolErrors.get()).toBe(0);
    await waitFor("the sessions to end", () => relay.metrics.streamsActive.get() === 0);
  });

  it("resets a CANCELled channel's replica connections (counted missed) and nothing else: the other channel goes on", async () => {
    const c = client();
    const one = new ChannelBytes("chan-1|");
    const two = new ChannelBytes("chan-2|");
    c.open(1);
    c.open(2);
    c.send(1, one.next(5000));
    c.send(2, two.next(5000));
    await waitFor("both channels acknowledged", () => c.lastAck(1)?.received === one.total && c.lastAck(2)?.received === two.total);
    c.send(1, encodeCancel());
    await waitFor("channel 1's replica connections to close", () => replicas.every((r) => connectionOf(r, one.marker)[0]?.closed));
    expect(relay.metrics.replicaMissed.get({ replica: "ra" })).toBe(1);
    expect(relay.metrics.replicaMissed.get({ replica: "rb" })).toBe(1);
    expect(relay.metrics.replicaDetaches.get({ reason: "STREAM_LOST" })).toBe(2);
    expect(replicas.every((r) => !connectionOf(r, two.marker)[0].closed)).toBe(true);
    for (let i = 0; i < 10; i++) c.send(2, two.next());
    c.finish(2, two.total);
    expect((await c.statusOf(2)).code).toBe(CallStatus.OK);
    for (const r of replicas) expect(connectionOf(r, two.marker)[0].receivedHash.copy().digest("hex")).toBe(two.sha256);
    expect(c.lastAck(2)!.replicas.map((r) => r.state)).toEqual(["CLOSED", "CLOSED"]);
    expect(c.channel(1).statuses).toEqual([]); // a reset channel hears nothing more, as a reset stream
    expect(relay.metrics.replicaMissed.get()).toBe(2);
  });

  it("ends every channel as reset when the shared stream is reset: replica connections closed, each counted missed", async () => {
    const c = client();
    const channels = [new ChannelBytes("chan-1|"), new ChannelBytes("chan-2|")];
    channels.forEach((_, i) => c.open(i + 1));
    channels.forEach((b, i) => c.send(i + 1, b.next(3000)));
    await waitFor("both channels acknowledged", () => channels.every((b, i) => c.lastAck(i + 1)?.received === b.total));
    c.stream.close(constants.NGHTTP2_CANCEL);
    await waitFor("every replica connection to close", () => replicas.every((r) => r.connections.length === 2 && r.connections.every((x) => x.closed)));
    await waitFor("the sessions to end", () => relay.metrics.streamsActive.get() === 0);
    expect(relay.metrics.replicaMissed.get()).toBe(4);
    expect(relay.metrics.streamsLost.get()).toBe(2);
    // The relay serves a new shared stream as before.
    const d = client();
    const three = new ChannelBytes("chan-3|");
    d.open(3);
    d.send(3, three.next());
    d.finish(3, three.total);
    expect((await d.statusOf(3)).code).toBe(CallStatus.OK);
  });

  it("ends a shared stream the filter half-closed with OK, every channel still on it reset", async () => {
    const c = client();
    const one = new ChannelBytes("chan-1|");
    c.open(1);
    c.send(1, one.next(3000));
    await waitFor("the channel acknowledged", () => c.lastAck(1)?.received === one.total);
    c.stream.end();
    expect(await within("the shared stream's status", c.status)).toEqual({ code: CallStatus.OK, details: "" });
    await waitFor("its replica connections to close", () => replicas.every((r) => connectionOf(r, one.marker)[0]?.closed));
    expect(relay.metrics.replicaMissed.get()).toBe(2);
    expect(c.channel(1).statuses).toEqual([]);
  });

  it("drops a frame on a channel it does not know (counted); ends a channel with a second OPEN or a FINISH with a body INVALID_ARGUMENT, that channel only", async () => {
    const c = client();
    c.send(99, encodeData(0, Buffer.from("never opened")));
    c.send(98, encodeFinish());
    await waitFor("two frames dropped", () => relay.metrics.channelFramesDropped.get() === 2);
    const one = new ChannelBytes("chan-1|");
    const two = new ChannelBytes("chan-2|");
    c.open(1);
    c.open(2);
    c.send(1, one.next(2000));
    c.send(2, two.next(2000));
    await waitFor("both channels acknowledged", () => c.lastAck(1)?.received === one.total && c.lastAck(2)?.received === two.total);
    c.open(1, 77n);
    const bad = await c.statusOf(1);
    expect(bad.code).toBe(CallStatus.INVALID_ARGUMENT);
    expect(bad.details).toContain("second OPEN on channel 1");
    // As for any bad frame: the replicas detached PROTOCOL, told in a last ACK.
    expect(c.lastAck(1)!.replicas.map((r) => [r.state, r.reason])).toEqual([["DETACHED", "PROTOCOL"], ["DETACHED", "PROTOCOL"]]);
    expect(relay.metrics.protocolErrors.get()).toBe(1);
    // The filter may still send on a channel the relay ended: dropped and counted, no answer.
    c.send(1, one.next(10));
    await waitFor("the late frame dropped", () => relay.metrics.channelFramesDropped.get() === 3);
    c.open(3);
    c.send(3, Buffer.from([FRAME_FINISH, 0]));
    const finishWithBody = await c.statusOf(3);
    expect(finishWithBody.code).toBe(CallStatus.INVALID_ARGUMENT);
    expect(finishWithBody.details).toContain("FINISH with a body");
    c.open(4);
    c.send(4, Buffer.from([FRAME_CANCEL, 1, 2]));
    expect((await c.statusOf(4)).details).toContain("CANCEL with a body");
    expect(relay.metrics.protocolErrors.get()).toBe(3);
    // Channel 2 never noticed.
    c.send(2, two.next());
    c.finish(2, two.total);
    expect((await c.statusOf(2)).code).toBe(CallStatus.OK);
    for (const r of replicas) expect(connectionOf(r, two.marker)[0].receivedHash.copy().digest("hex")).toBe(two.sha256);
    expect(c.channel(1).statuses).toHaveLength(1);
    expect(c.heard).toEqual([1, 2, 3, 4]);
    expect(c.trailersSeen).toBe(false);
  });

  it("ends the whole shared stream INVALID_ARGUMENT on a message too short for a channel and a frame type, every channel on it reset", async () => {
    const c = client();
    const one = new ChannelBytes("chan-1|");
    c.open(1);
    c.send(1, one.next(2000));
    await waitFor("the channel acknowledged", () => c.lastAck(1)?.received === one.total);
    c.stream.write(frameMessage(channelPrefix(1))); // 4 bytes: a channel, no frame
    const st = await within("the shared stream's status", c.status);
    expect(st.code).toBe(CallStatus.INVALID_ARGUMENT);
    expect(st.details).toContain("a message of 4 bytes on a Channels stream");
    await waitFor("its replica connections to close", () => replicas.every((r) => connectionOf(r, one.marker)[0]?.closed));
    expect(relay.metrics.replicaMissed.get()).toBe(2);
    expect(relay.metrics.protocolErrors.get()).toBe(1);
  });

  it("drains a shared stream when it shuts down: open channels go on to their end, a new one is refused UNAVAILABLE, then the stream ends OK", async () => {
    const own = await startRelay(parseRelayConfig({ listen: { port: 0 }, metrics: { port: 0 }, services: { t: replicas.map((r) => ({ name: r.name, address: r.address })) } }));
    const c = new ChannelsClient(own.grpcPort);
    const idle = new ChannelsClient(own.grpcPort);
    let closed = false;
    let closing: Promise<void> | undefined;
    try {
      const one = new ChannelBytes("chan-1|");
      c.open(1);
      c.send(1, one.next(3000));
      idle.open(5);
      idle.finish(5, 0);
      await waitFor("the channels acknowledged and the idle stream's channel over", () => c.lastAck(1)?.received === one.total && idle.channel(5).statuses.length === 1);
      closing = own.close().then(() => { closed = true; });
      // A stream with no channel open ends at once.
      expect(await within("the idle stream's status", idle.status)).toEqual({ code: CallStatus.OK, details: "" });
      await new Promise((r) => setTimeout(r, 50));
      c.open(2);
      const refused = await c.statusOf(2);
      expect(refused.code).toBe(CallStatus.UNAVAILABLE);
      expect(refused.details).toContain("shutting down");
      // The open channel holds the shutdown, and goes on to its end.
      expect(closed).toBe(false);
      c.send(1, one.next(1000));
      c.finish(1, one.total);
      expect((await c.statusOf(1)).code).toBe(CallStatus.OK);
      expect(await within("the shared stream's status", c.status)).toEqual({ code: CallStatus.OK, details: "" });
      await waitFor("the relay to close", () => closed, 10_000);
      for (const r of replicas) expect(connectionOf(r, one.marker)[0].receivedHash.copy().digest("hex")).toBe(one.sha256);
      expect(c.lastAck(1)!.replicas.map((r) => r.state)).toEqual(["CLOSED", "CLOSED"]);
    } finally {
      c.close();
      idle.close();
      if (!closed) await (closing ?? own.close());
    }
  });

  it("holds a channel whose replica lags, its bytes unacknowledged, while another channel on the same stream goes on", async () => {
    // Its own relay: a replica that stops reading the lagging channel's connection, never
    // detached as stalled meanwhile, and a low lag bound (the channel is held from 256 KiB behind).
    const lagging = await new RecordingBackend("ra", { stopReadingIf: (conn) => conn.head.subarray(0, 7).toString() === "slow-1|" }).start();
    const steady = await new RecordingBackend("rb").start();
    const own = await startRelay(parseRelayConfig({
      listen: { port: 0 }, metrics: { port: 0 },
      limits: { maxLagBytesPerConnection: 1 << 20, stallTimeoutMs: 60_000, finishTimeoutMs: 60_000 },
      services: { t: [lagging, steady].map((r) => ({ name: r.name, address: r.address })) },
    }));
    const c = new ChannelsClient(own.grpcPort);
    try {
      const slow = new ChannelBytes("slow-1|");
      const fast = new ChannelBytes("fast-2|");
      c.open(1);
      c.open(2);
      // Send the slow channel's bytes until the relay holds 4 MiB of them unacknowledged (the
      // kernel's buffers take some megabytes first); 48 MiB at most.
      const CHUNK = 256 << 10;
      const unacknowledged = () => slow.total - (c.lastAck(1)?.received ?? 0);
      for (let i = 0; i < 192 && unacknowledged() < 4 << 20; i++) {
        if (!c.send(1, slow.next(CHUNK))) await waitFor("the relay to read the shared stream (the client's writes to drain)", () => c.stream.writableNeedDrain === false, 10_000, 5);
        if (i % 8 === 7) await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 200));
      const heldAt = c.lastAck(1)!.received;
      expect(slow.total - heldAt).toBeGreaterThanOrEqual(4 << 20);
      // Meanwhile the other channel is read, written to both replicas and acknowledged in full.
      for (let i = 0; i < 40; i++) c.send(2, fast.next(16 << 10));
      await waitFor("the other channel acknowledged in full", () => c.lastAck(2)?.received === fast.total && c.lastAck(2)!.replicas.every((r) => r.acked === fast.total), 10_000);
      for (const r of [lagging, steady]) await waitFor(`${r.name} to get the other channel's bytes`, () => connectionOf(r, fast.marker)[0]?.received === fast.total, 10_000);
      // ... while the held channel's acknowledgement did not move.
      expect(c.lastAck(1)!.received).toBe(heldAt);
      expect(c.lastAck(1)!.replicas.map((r) => r.state)).toEqual(["LIVE", "LIVE"]);
      // The replica reads again: the held frames go on in order, and both channels finish.
      lagging.resumeReading();
      c.finish(1, slow.total);
      c.finish(2, fast.total);
      expect((await c.statusOf(1)).code).toBe(CallStatus.OK);
      expect((await c.statusOf(2)).code).toBe(CallStatus.OK);
      for (const [bytes, channel] of [[slow, 1], [fast, 2]] as const) {
        expect(c.lastAck(channel)!.replicas.map((r) => [r.acked, r.state])).toEqual([[bytes.total, "CLOSED"], [bytes.total, "CLOSED"]]);
        for (const r of [lagging, steady]) expect(connectionOf(r, bytes.marker)[0].receivedHash.copy().digest("hex")).toBe(bytes.sha256);
      }
      expect(own.metrics.replicaMissed.get()).toBe(0);
    } finally {
      c.close();
      await own.close();
      await lagging.kill();
      await steady.kill();
    }
  });
});

/** A shared call that records what the ChannelStream sends and lets a test feed it messages. */
class FakeSharedCall extends EventEmitter implements SharedCall {
  readonly sent: Buffer[] = [];
  ended?: { code: number; details: string };
  paused = false;
  get destroyed(): boolean { return this.ended !== undefined; }
  write(frame: Buffer): void { this.sent.push(frame); }
  writeMessage(pieces: readonly Buffer[]): void { this.sent.push(Buffer.concat(pieces)); }
  pause(): void { this.paused = true; }
  resume(): void { this.paused = false; }
  end(code = 0, details = ""): void { this.ended ??= { code, details }; }
}

function channelStream(maxHeldBytes = 1 << 20) {
  const shared = new FakeSharedCall();
  const calls: { call: ChannelCall; events: string[]; frames: Buffer[] }[] = [];
  const dropped: [number, number][] = [];
  const failed: GrpcFramingError[] = [];
  const stream = new ChannelStream(shared, maxHeldBytes, {
    channel: (call) => {
      const c = { call, events: [] as string[], frames: [] as Buffer[] };
      call.on("data", (f) => { c.frames.push(Buffer.concat(f)); c.events.push("data"); });
      for (const e of ["end", "cancelled", "error", "close"] as const) call.on(e, () => c.events.push(e));
      calls.push(c);
    },
    dropped: (channel, type) => dropped.push([channel, type]),
    failed: (e) => failed.push(e),
  });
  return { shared, stream, calls, dropped, failed, feed: (m: Buffer) => shared.emit("data", [m]) };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("a ChannelStream on its own", () => {
  it("never pauses the shared stream; holds a paused channel's frames and its FINISH, then delivers them in order", async () => {
    const { shared, calls, feed } = channelStream();
    feed(channelFixtureBytes("channel-open"));
    const c = calls[0];
    c.call.pause();
    feed(channelFixtureBytes("channel-data"));
    feed(encodeChannelMessage(7, encodeData(2, Buffer.from("!"))));
    feed(channelFixtureBytes("channel-finish"));
    await tick();
    expect(shared.paused).toBe(false);
    expect(c.events).toEqual(["data"]);
    c.call.resume();
    await tick();
    expect(c.events).toEqual(["data", "data", "data", "end"]);
    expect(c.frames.slice(1).map((f) => decodeFilterFrame(f))).toMatchObject([{ type: "DATA", offset: 0 }, { type: "DATA", offset: 2 }]);
  });

  it("ends a paused channel holding more than its bound RESOURCE_EXHAUSTED, and no other", async () => {
    const { shared, stream, calls, feed, failed } = channelStream(100_000);
    feed(encodeChannelMessage(1, encodeOpen({ version: 1, connectionId: 1n, flags: 0, service: "t", primary: "p", client: "c" })));
    feed(encodeChannelMessage(2, encodeOpen({ version: 1, connectionId: 2n, flags: 0, service: "t", primary: "p", client: "c" })));
    calls[0].call.pause();
    feed(encodeChannelMessage(1, encodeData(0, Buffer.alloc(60_000))));
    expect(calls[0].events).toEqual(["data"]);
    feed(encodeChannelMessage(1, encodeData(60_000, Buffer.alloc(60_000))));
    await tick();
    expect(calls[0].events).toEqual(["data", "error", "close"]);
    expect(failed.map((e) => e.code)).toEqual([CallStatus.RESOURCE_EXHAUSTED]);
    const status = shared.sent.map((m) => splitChannel([m])!).find((m) => m.channel === 1 && m.frame[0][0] === FRAME_STATUS)!;
    expect(decodeStatus(Buffer.concat(status.frame)).code).toBe(CallStatus.RESOURCE_EXHAUSTED);
    expect(calls[0].call.destroyed).toBe(true);
    expect(calls[1].call.destroyed).toBe(false);
    expect(stream.size).toBe(1);
    expect(shared.ended).toBeUndefined();
  });

  it("tells every open channel of the shared stream's end, and ends its side OK if the filter half-closed it", () => {
    const { shared, calls, feed } = channelStream();
    feed(encodeChannelMessage(1, encodeOpen({ version: 1, connectionId: 1n, flags: 0, service: "t", primary: "p", client: "c" })));
    feed(encodeChannelMessage(2, encodeOpen({ version: 1, connectionId: 2n, flags: 0, service: "t", primary: "p", client: "c" })));
    feed(encodeChannelMessage(2, encodeFinish()));
    shared.emit("end");
    expect(calls.map((c) => c.events)).toEqual([["data", "cancelled", "close"], ["data", "end", "cancelled", "close"]]);
    expect(shared.ended).toEqual({ code: CallStatus.OK, details: "" });
    expect(calls.every((c) => c.call.destroyed)).toBe(true);
  });
  it("takes a CANCEL after FINISH (the filter gave up a finishing mirror) as a reset; any other frame after FINISH, or a second OPEN, ends the channel INVALID_ARGUMENT", async () => {
    const { shared, calls, feed } = channelStream();
    const open = (channel: number) => feed(encodeChannelMessage(channel, encodeOpen({ version: 1, connectionId: BigInt(channel), flags: 0, service: "t", primary: "p", client: "c" })));
    open(1);
    feed(encodeChannelMessage(1, encodeFinish()));
    feed(encodeChannelMessage(1, encodeCancel()));
    open(2);
    feed(encodeChannelMessage(2, encodeFinish()));
    feed(encodeChannelMessage(2, encodeData(0, Buffer.from("late"))));
    open(3);
    open(3);
    await tick();
    expect(calls.map((c) => c.events)).toEqual([["data", "end", "cancelled", "close"], ["data", "end", "error", "close"], ["data", "error", "close"]]);
    // No session here to take the 'protocolError': each channel ended itself, with STATUS INVALID_ARGUMENT.
    const statuses = shared.sent.map((m) => splitChannel([m])!).map(({ channel, frame }) => ({ channel, ...decodeStatus(Buffer.concat(frame)) }));
    expect(statuses.map((s) => [s.channel, s.code])).toEqual([[2, CallStatus.INVALID_ARGUMENT], [3, CallStatus.INVALID_ARGUMENT]]);
    expect(statuses[0].details).toContain("after FINISH on channel 2");
    expect(statuses[1].details).toContain("second OPEN on channel 3");
  });
});

describe("channel fixtures (test/fixtures/wire-frames.json, \"channels\") on the relay's side", () => {
  it("annotates every byte, and covers each channel frame", () => {
    for (const f of CHANNEL_FIXTURES) {
      expect(f.segments.map((s) => s.hex).join(""), f.name).toBe(f.hex);
      expect(f.hex.startsWith(channelPrefix(f.decoded.channel).toString("hex")), f.name).toBe(true);
    }
    expect(new Set(CHANNEL_FIXTURES.map((f) => f.decoded.frame.type))).toEqual(new Set(["OPEN", "DATA", "FINISH", "CANCEL", "ACK", "STATUS"]));
  });

  for (const f of CHANNEL_FIXTURES.filter((x) => x.direction === "filter->relay")) {
    it(`splits ${f.name} into its channel and frame from pieces cut at every byte, and the ChannelStream delivers it`, () => {
      const bytes = Buffer.from(f.hex, "hex");
      const d = f.decoded;
      for (let cut = 1; cut < bytes.length; cut++) {
        const split = splitChannel([bytes.subarray(0, cut), bytes.subarray(cut)])!;
        expect(split.channel).toBe(d.channel);
        expect(split.frame.every((p) => p.length > 0)).toBe(true);
        expect(Buffer.concat(split.frame)).toEqual(bytes.subarray(4));
      }
      const frame = bytes.subarray(4);
      if (d.frame.type === "FINISH") expect(frame).toEqual(encodeFinish());
      else if (d.frame.type === "CANCEL") expect(frame).toEqual(encodeCancel());
      else if (d.frame.type === "OPEN") {
        const open = decodeFilterFrame(frame);
        expect({ ...open, connectionId: Number((open as { connectionId: bigint }).connectionId) }).toEqual(d.frame);
        expect(encodeChannelMessage(d.channel, encodeOpen({ ...(open as any) }))).toEqual(bytes);
      } else {
        const data = decodeFilterFrame([frame.subarray(0, 3), frame.subarray(3)]);
        if (data.type !== "DATA") throw new Error(`${f.name} decodes as ${data.type}`);
        expect({ type: data.type, offset: data.offset, bytes: Buffer.concat(data.parts).toString() }).toEqual(d.frame);
        expect(encodeChannelMessage(d.channel, encodeData(d.frame.offset, Buffer.from(d.frame.bytes)))).toEqual(bytes);
      }
      // Through a ChannelStream: the OPEN first (a new channel), then the fixture's frame on it.
      const { calls, feed, dropped } = channelStream();
      feed(channelFixtureBytes("channel-open"));
      if (f.name !== "channel-open") feed(bytes);
      const events = calls[0].events;
      if (d.frame.type === "FINISH") expect(events).toEqual(["data", "end"]);
      else if (d.frame.type === "CANCEL") expect(events).toEqual(["data", "cancelled", "close"]);
      else expect(events).toEqual(f.name === "channel-open" ? ["data"] : ["data", "data"]);
      expect(calls.map((c) => c.call.channel)).toEqual([d.channel]);
      expect(dropped).toEqual([]);
    });
  }

  for (const f of CHANNEL_FIXTURES.filter((x) => x.direction === "relay->filter")) {
    it(`writes ${f.name} as the fixture's bytes through a ChannelCall, and decodes it`, async () => {
      const bytes = Buffer.from(f.hex, "hex");
      const d = f.decoded;
      const { shared, calls, feed } = channelStream();
      feed(channelFixtureBytes("channel-open"));
      const call = calls[0].call;
      if (d.frame.type === "STATUS") {
        expect(decodeStatus(bytes.subarray(4))).toEqual(d.frame);
        call.end(d.frame.code, d.frame.details);
        await tick();
        expect(calls[0].events).toEqual(["data", "close"]);
      } else {
        expect(bytes[4]).toBe(FRAME_ACK);
        expect(decodeAck(bytes.subarray(4))).toEqual(d.frame);
        call.write(encodeAck(d.frame.received, d.frame.replicas));
      }
      expect(shared.sent).toEqual([bytes]);
    });
  }

  it("cuts a STATUS's details to what a string holds, at a character boundary", () => {
    const long = "é".repeat(40_000); // 80,000 bytes of UTF-8
    const status = decodeStatus(encodeStatus(CallStatus.INVALID_ARGUMENT, long));
    expect(Buffer.byteLength(status.details)).toBe(65_534);
    expect(status.details).toBe("é".repeat(32_767));
  });
});
