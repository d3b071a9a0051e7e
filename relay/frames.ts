// The mirror channel's frames, as defined once in docs/wire-format.md (fixtures:
// test/fixtures/wire-frames.json): decode what the filter sends (client bytes, and digests of
// the primary's replies), encode the relay's ACKs.
// On the Channels transport every message is a channel id followed by one frame, and three more
// frames say what a stream of its own says by itself (FINISH, CANCEL, STATUS): their codecs and
// the channel id's are here too; relay/channel-stream.ts does the demultiplexing.
// Malformed input throws FrameError with a precise message; nothing here does I/O.

export const FRAME_OPEN = 0x01;
export const FRAME_DATA = 0x02;
export const FRAME_END = 0x03;
export const FRAME_REPLY_DIGEST = 0x04;
export const FRAME_REPLY_END = 0x05;
/** Channels only (no body): the filter half-closed the channel (the client connection ended). */
export const FRAME_FINISH = 0x06;
/** Channels only (no body): the filter reset the channel (it gave up the mirror). */
export const FRAME_CANCEL = 0x07;
export const FRAME_ACK = 0x81;
export const FRAME_CLOSE = 0x82;
/** Channels only: the relay ended the channel with a gRPC status (code u8, details str). */
export const FRAME_STATUS = 0x83;
/** The channel id (u32 LE) in front of every frame on a Channels stream. */
export const CHANNEL_BYTES = 4;
export const WIRE_VERSION = 1;
/** OPEN flags bit 0: the filter digests the primary's replies on this connection (REPLY_DIGEST,
 *  REPLY_END follow) and the relay compares each replica's replies with them. */
export const OPEN_FLAG_REPLY_DIGESTS = 0x01;
/** Reply windows: window i is reply bytes [i * REPLY_WINDOW_BYTES, (i + 1) * REPLY_WINDOW_BYTES). */
export const REPLY_WINDOW_BYTES = 16 * 1024;

export const REPLICA_STATES = ["CONNECTING", "LIVE", "DETACHED", "CLOSED"] as const;
export type ReplicaState = (typeof REPLICA_STATES)[number];
export const DETACH_REASONS = ["NONE", "CONNECT_FAILED", "REPLICA_CLOSED", "LAG_BOUND", "RELAY_BOUND", "PROTOCOL", "STALLED", "DIVERGED"] as const;
export type DetachReason = (typeof DETACH_REASONS)[number];
/** How the primary's reply stream ended (REPLY_END): CUT, the connection ended first (bytes past
 *  total_bytes are unknown); PRIMARY_CLOSED, the primary ended it (total_bytes is all it said). */
export const REPLY_END_KINDS = ["CUT", "PRIMARY_CLOSED"] as const;
export type ReplyEndKind = (typeof REPLY_END_KINDS)[number];

export interface OpenFrame { type: "OPEN"; version: number; connectionId: bigint; flags: number; service: string; primary: string; client: string }
/** `parts`: the client bytes in the pieces they arrived in (views, never joined); `length` in all. */
export interface DataFrame { type: "DATA"; offset: number; parts: readonly Buffer[]; length: number }
export interface EndFrame { type: "END"; totalBytes: number }
export interface ReplyDigestFrame { type: "REPLY_DIGEST"; firstWindow: number; crcs: number[] }
export interface ReplyEndFrame { type: "REPLY_END"; totalBytes: number; tailCrc: number; end: ReplyEndKind }
export interface ReplicaProgress { name: string; queued: number; acked: number; state: ReplicaState; reason: DetachReason }
export interface AckFrame { type: "ACK"; received: number; replicas: ReplicaProgress[] }
/** Why the relay asks the filter to close the client connection. */
export const CLOSE_REASONS = ["NONE", "PRIMARY_DEMOTED"] as const;
export type CloseReason = (typeof CLOSE_REASONS)[number];
export interface CloseFrame { type: "CLOSE"; reason: CloseReason }
export type RelayFrame = AckFrame | CloseFrame;
/** Channels only: how the relay ended a channel (gRPC's status codes, as in mirror-call.ts). */
export interface StatusFrame { type: "STATUS"; code: number; details: string }
export type FilterFrame = OpenFrame | DataFrame | EndFrame | ReplyDigestFrame | ReplyEndFrame;

export class FrameError extends Error {}

class Reader {
  at = 0;
  constructor(private readonly buf: Buffer, private readonly what: string) {}
  need(n: number, field: string): void {
    if (this.at + n > this.buf.length) throw new FrameError(`${this.what} frame truncated: ${field} needs ${n} bytes at offset ${this.at}, frame has ${this.buf.length}`);
  }
  u8(field: string): number { this.need(1, field); return this.buf[this.at++]; }
  u16(field: string): number { this.need(2, field); const v = this.buf.readUInt16LE(this.at); this.at += 2; return v; }
  u32(field: string): number { this.need(4, field); const v = this.buf.readUInt32LE(this.at); this.at += 4; return v; }
  u64(field: string): bigint { this.need(8, field); const v = this.buf.readBigUInt64LE(this.at); this.at += 8; return v; }
  offset(field: string): number {
    const v = this.u64(field);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FrameError(`${this.what} frame: ${field} ${v} is beyond 2^53`);
    return Number(v);
  }
  str(field: string): string {
    const n = this.u16(`${field} length`);
    this.need(n, field);
    const s = this.buf.toString("utf8", this.at, this.at + n);
    this.at += n;
    return s;
  }
  rest(): Buffer { const b = this.buf.subarray(this.at); this.at = this.buf.length; return b; }
  done(): void { if (this.at !== this.buf.length) throw new FrameError(`${this.what} frame has ${this.buf.length - this.at} unexpected trailing bytes`); }
}

const DATA_HEADER_BYTES = 9;

/** Decode one frame sent by the filter: one buffer, or the pieces a transport delivered it in
 *  (a DATA frame's bytes stay in those pieces; any other frame, small, is joined first). */
export function decodeFilterFrame(frame: Buffer | readonly Buffer[]): FilterFrame {
  if (Buffer.isBuffer(frame)) return decodeOne(frame);
  if (frame.length === 1) return decodeOne(frame[0]);
  const first = frame[0];
  if (first !== undefined && first[0] === FRAME_DATA && first.length >= DATA_HEADER_BYTES) {
    const parts = [first.subarray(DATA_HEADER_BYTES), ...frame.slice(1)].filter((p) => p.length > 0);
    const offset = decodeOne(first.subarray(0, DATA_HEADER_BYTES)) as DataFrame;
    return { type: "DATA", offset: offset.offset, parts, length: parts.reduce((n, p) => n + p.length, 0) };
  }
  return decodeOne(Buffer.concat(frame));
}

function decodeOne(buf: Buffer): FilterFrame {
  if (buf.length === 0) throw new FrameError("empty frame");
  const type = buf[0];
  switch (type) {
    case FRAME_OPEN: {
      const r = new Reader(buf, "OPEN"); r.at = 1;
      const version = r.u8("version");
      if (version !== WIRE_VERSION) throw new FrameError(`OPEN frame: unsupported version ${version} (this relay speaks ${WIRE_VERSION})`);
      const frame: OpenFrame = { type: "OPEN", version, connectionId: r.u64("connection_id"), flags: r.u8("flags"), service: r.str("service"), primary: r.str("primary"), client: r.str("client") };
      r.done();
      return frame;
    }
    case FRAME_DATA: {
      const r = new Reader(buf, "DATA"); r.at = 1;
      const offset = r.offset("offset");
      const bytes = r.rest();
      return { type: "DATA", offset, parts: bytes.length > 0 ? [bytes] : [], length: bytes.length };
    }
    case FRAME_END: {
      const r = new Reader(buf, "END"); r.at = 1;
      const frame: EndFrame = { type: "END", totalBytes: r.offset("total_bytes") };
      r.done();
      return frame;
    }
    case FRAME_REPLY_DIGEST: {
      const r = new Reader(buf, "REPLY_DIGEST"); r.at = 1;
      const firstWindow = r.offset("first_window");
      const count = r.u16("count");
      if (count === 0) throw new FrameError("REPLY_DIGEST frame with count 0");
      const crcs: number[] = [];
      for (let i = 0; i < count; i++) crcs.push(r.u32(`crc ${i}`));
      r.done();
      return { type: "REPLY_DIGEST", firstWindow, crcs };
    }
    case FRAME_REPLY_END: {
      const r = new Reader(buf, "REPLY_END"); r.at = 1;
      const totalBytes = r.offset("total_bytes");
      const tailCrc = r.u32("tail_crc");
      const kind = r.u8("end");
      const end = REPLY_END_KINDS[kind];
      if (end === undefined) throw new FrameError(`REPLY_END frame: unknown end ${kind}`);
      r.done();
      return { type: "REPLY_END", totalBytes, tailCrc, end };
    }
    default:
      throw new FrameError(`unknown frame type 0x${type.toString(16).padStart(2, "0")}`);
  }
}

function u64(n: number | bigint): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; }
function str(s: string): Buffer {
  const bytes = Buffer.from(s, "utf8");
  if (bytes.length > 0xffff) throw new FrameError(`string of ${bytes.length} bytes does not fit a u16 length`);
  const len = Buffer.alloc(2); len.writeUInt16LE(bytes.length);
  return Buffer.concat([len, bytes]);
}

export function encodeOpen(f: Omit<OpenFrame, "type">): Buffer {
  return Buffer.concat([Buffer.from([FRAME_OPEN, f.version]), u64(f.connectionId), Buffer.from([f.flags]), str(f.service), str(f.primary), str(f.client)]);
}
export function encodeData(offset: number, bytes: Buffer): Buffer { return Buffer.concat([Buffer.from([FRAME_DATA]), u64(offset), bytes]); }
export function encodeEnd(totalBytes: number): Buffer { return Buffer.concat([Buffer.from([FRAME_END]), u64(totalBytes)]); }
function u32(n: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32LE(n >>> 0); return b; }
export function encodeReplyDigest(firstWindow: number, crcs: readonly number[]): Buffer {
  if (crcs.length === 0 || crcs.length > 0xffff) throw new FrameError(`a REPLY_DIGEST carries 1 to 65535 windows, not ${crcs.length}`);
  const count = Buffer.alloc(2); count.writeUInt16LE(crcs.length);
  return Buffer.concat([Buffer.from([FRAME_REPLY_DIGEST]), u64(firstWindow), count, ...crcs.map(u32)]);
}
export function encodeReplyEnd(totalBytes: number, tailCrc: number, end: ReplyEndKind): Buffer {
  return Buffer.concat([Buffer.from([FRAME_REPLY_END]), u64(totalBytes), u32(tailCrc), Buffer.from([REPLY_END_KINDS.indexOf(end)])]);
}

export function encodeAck(received: number, replicas: readonly ReplicaProgress[]): Buffer {
  if (replicas.length > 255) throw new FrameError("an ACK lists at most 255 replicas");
  const parts = [Buffer.from([FRAME_ACK]), u64(received), Buffer.from([replicas.length])];
  for (const r of replicas) {
    parts.push(str(r.name), u64(r.queued), u64(r.acked), Buffer.from([REPLICA_STATES.indexOf(r.state), DETACH_REASONS.indexOf(r.reason)]));
  }
  return Buffer.concat(parts);
}

/** CLOSE: close the client connection (its primary is a primary no more). */
export function encodeClose(reason: CloseReason): Buffer { return Buffer.from([FRAME_CLOSE, CLOSE_REASONS.indexOf(reason)]); }

/** Decode a frame the relay sends (for tests playing the filter). */
export function decodeRelayFrame(buf: Buffer): RelayFrame {
  if (buf[0] !== FRAME_CLOSE) return decodeAck(buf);
  const r = new Reader(buf, "CLOSE"); r.at = 1;
  const reason = CLOSE_REASONS[r.u8("reason")];
  if (!reason || reason === "NONE") throw new FrameError("CLOSE: unknown reason");
  r.done();
  return { type: "CLOSE", reason };
}

export function decodeAck(buf: Buffer): AckFrame {
  const r = new Reader(buf, "ACK");
  const type = r.u8("type");
  if (type !== FRAME_ACK) throw new FrameError(`not an ACK: frame type 0x${type.toString(16)}`);
  const received = r.offset("received");
  const count = r.u8("count");
  const replicas: ReplicaProgress[] = [];
  for (let i = 0; i < count; i++) {
    const name = r.str(`replica ${i} name`);
    const queued = r.offset(`replica ${i} queued`);
    const acked = r.offset(`replica ${i} acked`);
    const state = REPLICA_STATES[r.u8(`replica ${i} state`)];
    const reason = DETACH_REASONS[r.u8(`replica ${i} reason`)];
    if (!state || !reason) throw new FrameError(`ACK: replica ${i} has an unknown state or reason`);
    replicas.push({ name, queued, acked, state, reason });
  }
  r.done();
  return { type: "ACK", received, replicas };
}

/** FINISH (channels): the client connection ended, as a half-close of the channel. */
export function encodeFinish(): Buffer { return Buffer.from([FRAME_FINISH]); }
/** CANCEL (channels): the filter gave up the channel's mirror, as a reset of the channel. */
export function encodeCancel(): Buffer { return Buffer.from([FRAME_CANCEL]); }

/** STATUS (channels): the channel is over, with a gRPC status. `details` longer than a string
 *  holds (65535 bytes of UTF-8) is cut at a character boundary. */
export function encodeStatus(code: number, details: string): Buffer {
  if (!Number.isInteger(code) || code < 0 || code > 0xff) throw new FrameError(`a STATUS code is a u8, not ${code}`);
  let bytes = Buffer.from(details, "utf8");
  if (bytes.length > 0xffff) {
    let cut = 0xffff;
    while (cut > 0 && (bytes[cut] & 0xc0) === 0x80) cut--; // not inside a character
    bytes = bytes.subarray(0, cut);
  }
  const head = Buffer.allocUnsafe(4);
  head[0] = FRAME_STATUS;
  head[1] = code;
  head.writeUInt16LE(bytes.length, 2);
  return Buffer.concat([head, bytes]);
}

/** Decode a STATUS frame (for tests playing the filter). */
export function decodeStatus(buf: Buffer): StatusFrame {
  const r = new Reader(buf, "STATUS");
  const type = r.u8("type");
  if (type !== FRAME_STATUS) throw new FrameError(`not a STATUS: frame type 0x${type.toString(16)}`);
  const frame: StatusFrame = { type: "STATUS", code: r.u8("code"), details: r.str("details") };
  r.done();
  return frame;
}

/** The channel id in front of a frame on a Channels stream. */
export function channelPrefix(channel: number): Buffer {
  if (!Number.isInteger(channel) || channel < 0 || channel > 0xffffffff) throw new FrameError(`a channel id is a u32, not ${channel}`);
  const b = Buffer.allocUnsafe(CHANNEL_BYTES);
  b.writeUInt32LE(channel);
  return b;
}

/** One message of a Channels stream: `channel` and `frame` joined (for tests and fixtures; the
 *  relay writes the two pieces as one gRPC message without joining them first). */
export function encodeChannelMessage(channel: number, frame: Buffer): Buffer { return Buffer.concat([channelPrefix(channel), frame]); }

/**
 * Split one message of a Channels stream, in the pieces it arrived in, into its channel id and
 * its frame: the frame's pieces are views of the message's (none empty), never a copy.
 * Undefined if the message is too short to hold a channel id and a frame type (5 bytes).
 */
export function splitChannel(message: readonly Buffer[]): { channel: number; frame: Buffer[] } | undefined {
  let total = 0;
  for (const piece of message) total += piece.length;
  if (total < CHANNEL_BYTES + 1) return undefined;
  let channel: number;
  const first = message[0];
  if (first.length >= CHANNEL_BYTES) channel = first.readUInt32LE(0);
  else {
    const id = Buffer.allocUnsafe(CHANNEL_BYTES);
    let n = 0;
    for (const piece of message) { n += piece.copy(id, n, 0, Math.min(piece.length, CHANNEL_BYTES - n)); if (n === CHANNEL_BYTES) break; }
    channel = id.readUInt32LE(0);
  }
  const frame: Buffer[] = [];
  let skip = CHANNEL_BYTES;
  for (const piece of message) {
    if (piece.length === 0) continue;
    if (skip >= piece.length) { skip -= piece.length; continue; }
    frame.push(skip > 0 ? piece.subarray(skip) : piece);
    skip = 0;
  }
  return { channel, frame };
}
