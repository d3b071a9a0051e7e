// One gRPC call on a Node HTTP/2 server stream, as the MirrorCall a session uses: DATA chunks
// decoded into messages (grpc-framing.ts), messages framed out, the response's headers sent
// with the first message, and the status sent as trailers (a trailers-only response if
// nothing was sent before).
//
// Backpressure: pause() stops delivering messages (those already decoded wait in order) and
// pauses the HTTP/2 stream; Node then stops returning the stream's flow-control window to the
// peer, so Envoy can send at most the stream window more before it must wait, and the filter's
// in-flight bound holds the client. Nothing read while paused is acknowledged to the filter.
import { EventEmitter } from "node:events";
import type { ServerHttp2Stream } from "node:http2";
import { CallStatus, type CallStatusCode, type MirrorCall } from "./mirror-call.ts";
import { frameMessage, GrpcFramingError, GrpcMessageDecoder } from "./grpc-framing.ts";

/** grpc-message is percent-encoded: every byte outside printable ASCII, and '%' itself. */
export function encodeGrpcMessage(details: string): string {
  return Array.from(Buffer.from(details, "utf8"), (b) =>
    b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`).join("");
}

export class GrpcH2Call extends EventEmitter implements MirrorCall {
  private readonly decoder: GrpcMessageDecoder;
  /** Messages decoded while paused, delivered in order on resume. */
  private waiting: Buffer[][] = [];
  private paused = false;
  /** The peer half-closed the stream (its END_STREAM arrived). */
  private peerEnded = false;
  private endDelivered = false;
  private responded = false;
  /** The status is decided (sent, or to be sent as trailers): nothing more goes out. */
  private statusDecided = false;
  /** The peer reset the stream, or its connection broke, before the status was decided. */
  private cancelled = false;
  private trailers?: Record<string, string>;

  /** `framingError` hears of bad framing (the call has already ended with its status). */
  constructor(private readonly stream: ServerHttp2Stream, maxMessageBytes: number,
    private readonly framingError: (error: GrpcFramingError) => void) {
    super();
    this.decoder = new GrpcMessageDecoder(maxMessageBytes);
    stream.on("data", (chunk: Buffer) => this.onChunk(chunk));
    stream.on("end", () => this.onPeerEnd());
    // Emitted at once when the peer resets the stream (even one the relay is not reading, which
    // Node destroys, and so closes, only once it is read to its end).
    stream.on("aborted", () => this.onPeerGone());
    stream.on("close", () => {
      this.onPeerGone();
      this.emit("close");
    });
  }

  get destroyed(): boolean { return this.statusDecided || this.cancelled || this.stream.closed || this.stream.destroyed; }

  write(frame: Buffer): void { this.writeMessage([frame]); }

  /** Send one message given in pieces (a Channels stream's channel id and frame). */
  writeMessage(pieces: readonly Buffer[]): void {
    if (this.destroyed) return;
    this.respond();
    this.stream.write(frameMessage(pieces));
  }

  pause(): void {
    this.paused = true;
    this.stream.pause();
  }

  resume(): void {
    this.paused = false;
    process.nextTick(() => this.deliverWaiting());
  }

  end(code: CallStatusCode = CallStatus.OK, details = ""): void {
    if (this.statusDecided) return;
    this.statusDecided = true;
    // Whatever still comes is dropped, and read so that it does not hold the peer.
    this.waiting = [];
    this.stream.resume();
    if (this.stream.destroyed || this.stream.closed) return;
    const status = { "grpc-status": String(code), ...(details ? { "grpc-message": encodeGrpcMessage(details) } : {}) };
    if (this.responded) {
      this.trailers = status;
      this.stream.end();
    } else {
      this.stream.respond({ ":status": 200, "content-type": "application/grpc", ...status }, { endStream: true });
    }
  }

  private respond(): void {
    if (this.responded) return;
    this.responded = true;
    this.stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    this.stream.once("wantTrailers", () => this.stream.sendTrailers(this.trailers ?? { "grpc-status": String(CallStatus.OK) }));
  }

  private onChunk(chunk: Buffer): void {
    if (this.statusDecided || this.cancelled) return;
    try {
      this.decoder.push(chunk, (message) => {
        if (this.statusDecided || this.cancelled) return;
        if (this.paused) this.waiting.push(message);
        else this.emit("data", message);
      });
    } catch (err) {
      if (!(err instanceof GrpcFramingError)) throw err;
      this.fail(err);
    }
  }

  private onPeerGone(): void {
    if (this.statusDecided || this.cancelled) return;
    this.cancelled = true;
    this.waiting = [];
    this.stream.resume(); // read to the end, so that Node can destroy it
    this.emit("cancelled");
  }

  private onPeerEnd(): void {
    // Node also ends the readable side of a stream it tears down (a reset, a broken connection):
    // that is no half-close, and 'close' follows.
    if (this.stream.aborted || this.stream.destroyed) return;
    this.peerEnded = true;
    if (this.statusDecided) return;
    if (this.decoder.midMessage) return this.fail(new GrpcFramingError(CallStatus.INVALID_ARGUMENT, "the stream ended inside a gRPC message"));
    this.deliverWaiting();
  }

  private deliverWaiting(): void {
    while (!this.paused && !this.destroyed && this.waiting.length > 0) this.emit("data", this.waiting.shift()!);
    if (this.paused || this.destroyed) return;
    if (!this.peerEnded) { this.stream.resume(); return; }
    if (this.endDelivered) return;
    this.endDelivered = true;
    this.emit("end");
  }

  private fail(err: GrpcFramingError): void {
    this.end(err.code, err.message);
    this.framingError(err);
    this.emit("error", err);
  }
}
