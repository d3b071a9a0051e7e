// gRPC's message framing on an HTTP/2 stream ("Length-Prefixed-Message" in gRPC over HTTP/2):
// a 1-byte compressed flag, a 4-byte big-endian length, then that many bytes. The decoder
// takes DATA chunks as HTTP/2 delivers them (a message may span chunks, a chunk may hold
// several messages) and hands out whole messages as the pieces they arrived in: views of the
// chunks, never copied (Node delivers HTTP/2 DATA in chunks of at most 16 KiB, while one of the
// filter's messages can carry a megabyte: joining them was a quarter of the relay's time).
import { CallStatus, type CallStatusCode } from "./mirror-call.ts";

export const MESSAGE_PREFIX_BYTES = 5;

/** Bad framing from the peer; `code` is the status its stream ends with. */
export class GrpcFramingError extends Error {
  constructor(readonly code: CallStatusCode, message: string) { super(message); }
}

export class GrpcMessageDecoder {
  /** The prefix being read, when it spans chunks. */
  private readonly prefix = Buffer.alloc(MESSAGE_PREFIX_BYTES);
  private prefixBytes = 0;
  /** Length of the message being read; -1 while reading a prefix. */
  private messageLength = -1;
  /** The parts of the message being read, when it spans chunks (views of them). */
  private parts: Buffer[] = [];
  private partsBytes = 0;

  constructor(private readonly maxMessageBytes: number) {}

  /** Whether the bytes so far end inside a message (a stream that ends here is cut short). */
  get midMessage(): boolean { return this.prefixBytes > 0 || this.messageLength >= 0; }

  /** Feed one chunk; `message` is called for each message it completes, in order, with the
   *  message's bytes in one or more pieces (an empty message: no piece). Throws
   *  GrpcFramingError on a compressed message or one longer than maxMessageBytes (the
   *  messages before it in the chunk are handed out first). */
  push(chunk: Buffer, message: (parts: Buffer[]) => void): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.messageLength < 0) {
        if (this.prefixBytes === 0 && chunk.length - at >= MESSAGE_PREFIX_BYTES) {
          this.startMessage(chunk[at], chunk.readUInt32BE(at + 1));
          at += MESSAGE_PREFIX_BYTES;
        } else {
          const n = chunk.copy(this.prefix, this.prefixBytes, at, at + MESSAGE_PREFIX_BYTES - this.prefixBytes);
          this.prefixBytes += n;
          at += n;
          if (this.prefixBytes < MESSAGE_PREFIX_BYTES) return;
          this.prefixBytes = 0;
          this.startMessage(this.prefix[0], this.prefix.readUInt32BE(1));
        }
        if (this.messageLength > 0) continue;
        this.messageLength = -1;
        message([]);
        continue;
      }
      const missing = this.messageLength - this.partsBytes;
      const available = chunk.length - at;
      if (this.partsBytes === 0 && available >= missing) {
        message([chunk.subarray(at, at + missing)]);
        at += missing;
        this.messageLength = -1;
        continue;
      }
      const part = chunk.subarray(at, at + Math.min(missing, available));
      this.parts.push(part);
      this.partsBytes += part.length;
      at += part.length;
      if (this.partsBytes < this.messageLength) return;
      const parts = this.parts;
      this.parts = [];
      this.partsBytes = 0;
      this.messageLength = -1;
      message(parts);
    }
  }

  private startMessage(compressedFlag: number, length: number): void {
    if (compressedFlag !== 0) {
      throw new GrpcFramingError(CallStatus.INVALID_ARGUMENT, compressedFlag === 1
        ? "compressed gRPC message: this relay takes uncompressed messages only (grpc-encoding identity)"
        : `gRPC message compressed flag is ${compressedFlag}, must be 0`);
    }
    if (length > this.maxMessageBytes) {
      throw new GrpcFramingError(CallStatus.RESOURCE_EXHAUSTED, `gRPC message of ${length} bytes, larger than the ${this.maxMessageBytes} this relay accepts`);
    }
    this.messageLength = length;
  }
}

/** The 5-byte prefix of a message of `length` bytes (`flag` 1: compressed, which the relay refuses). */
export function messagePrefix(length: number, flag = 0): Buffer {
  const b = Buffer.allocUnsafe(MESSAGE_PREFIX_BYTES);
  b[0] = flag;
  b.writeUInt32BE(length, 1);
  return b;
}

/** One message with its prefix (uncompressed), ready to write to the stream: one buffer, or
 *  the pieces of one message (a channel id and a frame), copied once into the result. */
export function frameMessage(message: Buffer | readonly Buffer[]): Buffer {
  const pieces = Buffer.isBuffer(message) ? [message] : message;
  let length = 0;
  for (const piece of pieces) length += piece.length;
  const out = Buffer.allocUnsafe(MESSAGE_PREFIX_BYTES + length);
  out[0] = 0;
  out.writeUInt32BE(length, 1);
  let at = MESSAGE_PREFIX_BYTES;
  for (const piece of pieces) at += piece.copy(out, at);
  return out;
}
