// The Channels transport (docs/wire-format.md, "Transport"): one long-lived gRPC stream from an
// Envoy worker carries many client connections, each a channel; every message is a channel id
// (u32 LE) and one frame. This file owns the demultiplexing: ChannelStream reads the shared
// stream and hands each new channel, as a ChannelCall (the MirrorCall a MirrorSession uses),
// to its owner; a ChannelCall's frames out go back on the shared stream behind its channel id,
// and its end goes out as a STATUS frame.
//
// What a stream of its own says by itself, a channel says in frames: FINISH is its half-close
// ('end'), CANCEL its reset ('cancelled', 'close'), STATUS (relay → filter) its status.
//
// Flow control: the shared stream is always read (holding it would hold every channel). A
// paused ChannelCall keeps its frames (and a FINISH after them) unread, in order: they are not
// acknowledged, so the filter's in-flight bound holds that client alone. A channel holding more
// than maxHeldBytes of them ends RESOURCE_EXHAUSTED.
//
// A shared stream that ends, however it ends, ends every channel still open on it as a reset.
// When the relay shuts down it drains a shared stream (which would otherwise never end): the
// channels open on it go on to their end, a new one is refused, and the stream ends OK once none
// is left.
import { EventEmitter } from "node:events";
import { CallStatus, type CallStatusCode, type MirrorCall } from "./mirror-call.ts";
import { GrpcFramingError } from "./grpc-framing.ts";
import { channelPrefix, encodeStatus, splitChannel, CHANNEL_BYTES, FRAME_CANCEL, FRAME_FINISH, FRAME_OPEN } from "./frames.ts";

/** The shared stream, as ChannelStream needs it: a MirrorCall that can send a message given in
 *  pieces (GrpcH2Call). It is never paused. */
export interface SharedCall extends MirrorCall {
  writeMessage(pieces: readonly Buffer[]): void;
}

export interface ChannelStreamHandlers {
  /** A new channel: its OPEN frame comes next, as its first 'data'. */
  channel(call: ChannelCall): void;
  /** A frame on a channel the relay does not know (or no longer knows) that is not OPEN: dropped. */
  dropped(channel: number, frameType: number): void;
  /** The shared stream ended for a message too short to name a channel and a frame, or a channel
   *  ended for holding too many unread bytes (either already ended with its status). */
  failed(error: GrpcFramingError): void;
}

const frameBytes = (frame: readonly Buffer[]) => frame.reduce((n, piece) => n + piece.length, 0);

export class ChannelStream {
  private readonly channels = new Map<number, ChannelCall>();
  /** The shared stream is over: every channel on it ended, nothing more is read. */
  private over = false;
  /** The relay is shutting down (see drain). */
  private draining = false;

  /** `maxHeldBytes`: what one paused channel may hold unread before it ends RESOURCE_EXHAUSTED
   *  (the relay's http2.connectionWindowBytes). */
  constructor(private readonly call: SharedCall, readonly maxHeldBytes: number, private readonly handlers: ChannelStreamHandlers) {
    call.on("data", (message: readonly Buffer[]) => this.onMessage(message));
    call.on("end", () => {
      // The filter half-closed the shared stream: channels still open on it end as reset, and
      // the relay ends its side.
      this.closeAll();
      if (!call.destroyed) call.end(CallStatus.OK);
    });
    for (const event of ["cancelled", "error", "close"] as const) call.on(event, () => this.closeAll());
  }

  /** Channels open on the stream. */
  get size(): number { return this.channels.size; }

  /** The relay is shutting down: end the shared stream OK once no channel is open on it (at once
   *  if none is); an OPEN from now on is refused with STATUS UNAVAILABLE (the filter counts that
   *  connection unmirrored, as a stream refused by a relay going away). */
  drain(): void {
    this.draining = true;
    this.endIfDrained();
  }

  /** Nothing more can go out on the shared stream. */
  get destroyed(): boolean { return this.over || this.call.destroyed; }

  /** @internal A ChannelCall's frame out. */
  send(channel: number, frame: Buffer): void {
    if (this.destroyed) return;
    this.call.writeMessage([channelPrefix(channel), frame]);
  }

  /** @internal A ChannelCall is over: its id is free (a later frame on it is dropped, a later
   *  OPEN starts a new channel). */
  forget(call: ChannelCall): void {
    if (this.channels.get(call.channel) === call) this.channels.delete(call.channel);
    this.endIfDrained();
  }

  /** @internal A ChannelCall ended for holding too much. */
  failed(error: GrpcFramingError): void { this.handlers.failed(error); }

  private onMessage(message: readonly Buffer[]): void {
    if (this.over) return;
    const split = splitChannel(message);
    if (!split) {
      const details = `a message of ${frameBytes(message)} bytes on a Channels stream: every message is a channel id (${CHANNEL_BYTES} bytes) and a frame (1 byte at least)`;
      this.call.end(CallStatus.INVALID_ARGUMENT, details);
      this.handlers.failed(new GrpcFramingError(CallStatus.INVALID_ARGUMENT, details));
      this.closeAll();
      return;
    }
    const { channel, frame } = split;
    const type = frame[0][0];
    const known = this.channels.get(channel);
    if (!known) {
      if (type !== FRAME_OPEN) { this.handlers.dropped(channel, type); return; }
      if (this.draining) { this.send(channel, encodeStatus(CallStatus.UNAVAILABLE, "the relay is shutting down: this connection is not mirrored")); return; }
      const call = new ChannelCall(channel, this);
      this.channels.set(channel, call);
      this.handlers.channel(call);
      call.deliver(frame);
      return;
    }
    const body = frameBytes(frame) - 1;
    if (type === FRAME_OPEN) known.protocolError(`second OPEN on channel ${channel}, which is in use`);
    else if (type === FRAME_FINISH) body === 0 ? known.finish() : known.protocolError(`FINISH with a body (${body} bytes) on channel ${channel}`);
    else if (type === FRAME_CANCEL) body === 0 ? known.cancel() : known.protocolError(`CANCEL with a body (${body} bytes) on channel ${channel}`);
    else known.deliver(frame);
  }

  private endIfDrained(): void {
    if (!this.draining || this.over || this.channels.size > 0) return;
    this.over = true;
    if (!this.call.destroyed) this.call.end(CallStatus.OK);
  }

  /** The shared stream is over: every channel still open ends as reset. */
  private closeAll(): void {
    this.over = true;
    for (const call of [...this.channels.values()]) call.cancel();
    this.channels.clear();
  }
}

/** One channel of a shared stream, as the MirrorCall of its client connection's session. */
export class ChannelCall extends EventEmitter implements MirrorCall {
  /** Frames that came while paused (or before the ones held were delivered), in order. */
  private held: Buffer[][] = [];
  private heldBytes = 0;
  private paused = false;
  /** FINISH came: 'end' follows the frames held. */
  private finished = false;
  private endDelivered = false;
  /** Ended (STATUS sent), cancelled, or its stream gone: nothing more in or out. */
  private over = false;

  /** @internal Made by ChannelStream. */
  constructor(readonly channel: number, private readonly stream: ChannelStream) { super(); }

  get destroyed(): boolean { return this.over || this.stream.destroyed; }

  write(frame: Buffer): void {
    if (this.destroyed) return;
    this.stream.send(this.channel, frame);
  }

  /** Hold this channel's frames (the shared stream goes on). */
  pause(): void { this.paused = true; }

  resume(): void {
    this.paused = false;
    process.nextTick(() => this.deliverHeld());
  }

  /** End the channel with a STATUS frame; 'close' follows. */
  end(code: CallStatusCode = CallStatus.OK, details = ""): void {
    if (this.over) return;
    if (!this.stream.destroyed) this.stream.send(this.channel, encodeStatus(code, details));
    this.stop();
    process.nextTick(() => this.emit("close"));
  }

  /** @internal A frame for the session (never FINISH or CANCEL). */
  deliver(frame: Buffer[]): void {
    if (this.over) return;
    if (this.finished) return this.protocolError(`a frame (type 0x${frame[0][0].toString(16).padStart(2, "0")}) after FINISH on channel ${this.channel}`);
    if (!this.paused && this.held.length === 0) { this.emit("data", frame); return; }
    this.held.push(frame);
    this.heldBytes += frameBytes(frame);
    if (this.heldBytes > this.stream.maxHeldBytes) {
      const error = new GrpcFramingError(CallStatus.RESOURCE_EXHAUSTED, `channel ${this.channel} holds ${this.heldBytes} bytes of frames not yet read, ` +
        `more than the ${this.stream.maxHeldBytes} it may (http2.connectionWindowBytes): more than the filter's bounds let it send`);
      this.fail(error);
      this.stream.failed(error);
    }
  }

  /** @internal FINISH: the filter half-closed the channel. */
  finish(): void {
    if (this.over) return;
    if (this.finished) return this.protocolError(`a second FINISH on channel ${this.channel}`);
    this.finished = true;
    this.deliverHeld();
  }

  /** @internal CANCEL, or the shared stream is gone: the channel is reset. */
  cancel(): void {
    if (this.over) return;
    this.stop();
    this.emit("cancelled");
    this.emit("close");
  }

  /** @internal A frame out of place: the session ends the channel as for a bad frame (its
   *  replicas detached PROTOCOL); failing that, the channel ends INVALID_ARGUMENT itself. */
  protocolError(message: string): void {
    if (this.over) return;
    this.emit("protocolError", message);
    if (!this.over) this.fail(new GrpcFramingError(CallStatus.INVALID_ARGUMENT, message));
  }

  private fail(error: GrpcFramingError): void {
    this.end(error.code, error.message);
    if (this.listenerCount("error") > 0) this.emit("error", error);
  }

  private stop(): void {
    this.over = true;
    this.held = [];
    this.heldBytes = 0;
    this.stream.forget(this);
  }

  private deliverHeld(): void {
    while (!this.paused && !this.over && this.held.length > 0) {
      const frame = this.held.shift()!;
      this.heldBytes -= frameBytes(frame);
      this.emit("data", frame);
    }
    if (this.paused || this.over || !this.finished || this.endDelivered) return;
    this.endDelivered = true;
    this.emit("end");
  }
}
