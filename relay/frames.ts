// The mirror channel's frames, as defined once in docs/wire-format.md (fixtures:
// test/fixtures/wire-frames.json): decode what the filter sends, encode the relay's ACKs.
// Malformed input throws FrameError with a precise message; nothing here does I/O.

export const FRAME_OPEN = 0x01;
export const FRAME_DATA = 0x02;
export const FRAME_END = 0x03;
export const FRAME_ACK = 0x81;
export const WIRE_VERSION = 1;

export const REPLICA_STATES = ["CONNECTING", "LIVE", "DETACHED", "CLOSED"] as const;
export type ReplicaState = (typeof REPLICA_STATES)[number];
export const DETACH_REASONS = ["NONE", "CONNECT_FAILED", "REPLICA_CLOSED", "LAG_BOUND", "RELAY_BOUND", "PROTOCOL", "STALLED"] as const;
export type DetachReason = (typeof DETACH_REASONS)[number];

export interface OpenFrame { type: "OPEN"; version: number; connectionId: bigint; flags: number; service: string; primary: string; client: string }
export interface DataFrame { type: "DATA"; offset: number; bytes: Buffer }
export interface EndFrame { type: "END"; totalBytes: number }
export interface ReplicaProgress { name: string; queued: number; acked: number; state: ReplicaState; reason: DetachReason }
export interface AckFrame { type: "ACK"; received: number; replicas: ReplicaProgress[] }
export type FilterFrame = OpenFrame | DataFrame | EndFrame;

export class FrameError extends Error {}

class Reader {
  at = 0;
  constructor(private readonly buf: Buffer, private readonly what: string) {}
  need(n: number, field: string): void {
    if (this.at + n > this.buf.length) throw new FrameError(`${this.what} frame truncated: ${field} needs ${n} bytes at offset ${this.at}, frame has ${this.buf.length}`);
  }
  u8(field: string): number { this.need(1, field); return this.buf[this.at++]; }
  u16(field: string): number { this.need(2, field); const v = this.buf.readUInt16LE(this.at); this.at += 2; return v; }
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

/** Decode one frame sent by the filter. */
export function decodeFilterFrame(buf: Buffer): FilterFrame {
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
      return { type: "DATA", offset: r.offset("offset"), bytes: r.rest() };
    }
    case FRAME_END: {
      const r = new Reader(buf, "END"); r.at = 1;
      const frame: EndFrame = { type: "END", totalBytes: r.offset("total_bytes") };
      r.done();
      return frame;
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

export function encodeAck(received: number, replicas: readonly ReplicaProgress[]): Buffer {
  if (replicas.length > 255) throw new FrameError("an ACK lists at most 255 replicas");
  const parts = [Buffer.from([FRAME_ACK]), u64(received), Buffer.from([replicas.length])];
  for (const r of replicas) {
    parts.push(str(r.name), u64(r.queued), u64(r.acked), Buffer.from([REPLICA_STATES.indexOf(r.state), DETACH_REASONS.indexOf(r.reason)]));
  }
  return Buffer.concat(parts);
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
