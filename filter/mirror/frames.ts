// The mirror channel's frames, as defined once in docs/wire-format.md (fixtures:
// test/fixtures/wire-frames.json). One frame per gRPC message; integers little-endian;
// strings are u16 length + UTF-8. No host calls.
//
//   OPEN  0x01 | version u8 | connection_id u64 | flags u8 | service str | primary str | client str
//   DATA  0x02 | offset u64 | bytes ...
//   END   0x03 | total_bytes u64
//   REPLY_DIGEST 0x04 | first_window u64 | count u16 | count x crc32 u32     (the primary's reply windows)
//   REPLY_END    0x05 | total_bytes u64 | tail_crc u32 | end u8             (the primary's reply stream ended)
//   ACK   0x81 | received u64 | count u8 | count x ( name str | queued u64 | acked u64 | state u8 | reason u8 )
//   CLOSE 0x82 | reason u8                                                  (close the client connection)
// On a channels stream every message is channel u32 + one frame, and three more frames stand for
// what a stream of its own says by itself:
//   FINISH 0x06 (the client connection ended)   CANCEL 0x07 (mirror given up)
//   STATUS 0x83 | code u8 | details str          (the relay ended the channel with a gRPC status)

/** The gRPC service and its two methods: a stream per connection, or shared channels streams. */
export const MIRROR_SERVICE = "lockstep.mirror.v1.Mirror";
export const MIRROR_METHOD = "Stream";
export const CHANNELS_METHOD = "Channels";

export const FRAME_OPEN: u8 = 0x01;
export const FRAME_DATA: u8 = 0x02;
export const FRAME_END: u8 = 0x03;
export const FRAME_REPLY_DIGEST: u8 = 0x04;
export const FRAME_REPLY_END: u8 = 0x05;
export const FRAME_FINISH: u8 = 0x06;
export const FRAME_CANCEL: u8 = 0x07;
export const FRAME_ACK: u8 = 0x81;
export const FRAME_CLOSE: u8 = 0x82;
export const FRAME_STATUS: u8 = 0x83;
/** The channel id in front of every frame on a channels stream. */
export const CHANNEL_BYTES: usize = 4;
/** CLOSE reason: the connection's primary is a primary no more (a planned switchover). */
export const CLOSE_PRIMARY_DEMOTED: u8 = 1;
export const WIRE_VERSION: u8 = 1;
/** Bytes in front of a DATA frame's payload (fits in abi/memory's HOST_BUFFER_HEADROOM). */
export const DATA_HEADER_BYTES: usize = 9;

/** OPEN flags bit 0: REPLY_DIGEST and REPLY_END frames follow on this stream. */
export const OPEN_FLAG_REPLY_DIGESTS: u8 = 0x01;
/** REPLY_DIGEST header: type, first_window, count; then count CRCs of 4 bytes. */
export const REPLY_DIGEST_HEADER_BYTES: usize = 11;
/** REPLY_END `end`: the connection ended first (bytes past total_bytes unknown). */
export const REPLY_END_CUT: u8 = 0;
/** REPLY_END `end`: the primary ended its reply stream (total_bytes is all it said). */
export const REPLY_END_PRIMARY_CLOSED: u8 = 1;

export const REPLICA_CONNECTING: u8 = 0;
export const REPLICA_LIVE: u8 = 1;
export const REPLICA_DETACHED: u8 = 2;
export const REPLICA_CLOSED: u8 = 3;
/** ACK reason: the replica's replies differed from the primary's. */
export const REASON_DIVERGED: u8 = 7;

function strSize(bytes: ArrayBuffer): usize { return <usize>2 + <usize>bytes.byteLength; }

function putStr(at: usize, bytes: ArrayBuffer): usize {
  store<u16>(at, <u16>bytes.byteLength);
  memory.copy(at + 2, changetype<usize>(bytes), bytes.byteLength);
  return at + strSize(bytes);
}

/** OPEN: the first frame of every stream. Strings longer than 65535 bytes are cut. */
export function encodeOpen(connectionId: u64, flags: u8, service: string, primary: string, client: string): ArrayBuffer {
  const s = String.UTF8.encode(service.substring(0, 1024));
  const p = String.UTF8.encode(primary.substring(0, 1024));
  const c = String.UTF8.encode(client.substring(0, 1024));
  const frame = new ArrayBuffer(<i32>(<usize>11 + strSize(s) + strSize(p) + strSize(c)));
  const base = changetype<usize>(frame);
  store<u8>(base, FRAME_OPEN);
  store<u8>(base + 1, WIRE_VERSION);
  store<u64>(base + 2, connectionId);
  store<u8>(base + 10, flags);
  putStr(putStr(putStr(base + 11, s), p), c);
  return frame;
}

/** Write a DATA header into the DATA_HEADER_BYTES in front of a payload. */
export function writeDataHeader(at: usize, offset: u64): void {
  store<u8>(at, FRAME_DATA);
  store<u64>(at + 1, offset);
}

export function encodeEnd(totalBytes: u64): ArrayBuffer {
  const frame = new ArrayBuffer(9);
  store<u8>(changetype<usize>(frame), FRAME_END);
  store<u64>(changetype<usize>(frame) + 1, totalBytes);
  return frame;
}

/** Write a REPLY_DIGEST header at `at`; the caller has put `count` CRCs (u32 LE) after it. */
export function writeReplyDigestHeader(at: usize, firstWindow: u64, count: u16): void {
  store<u8>(at, FRAME_REPLY_DIGEST);
  store<u64>(at + 1, firstWindow);
  store<u16>(at + 9, count);
}

export function encodeReplyEnd(totalBytes: u64, tailCrc: u32, end: u8): ArrayBuffer {
  const frame = new ArrayBuffer(14);
  const base = changetype<usize>(frame);
  store<u8>(base, FRAME_REPLY_END);
  store<u64>(base + 1, totalBytes);
  store<u32>(base + 9, tailCrc);
  store<u8>(base + 13, end);
  return frame;
}

export class ReplicaProgress {
  constructor(public name: string, public queued: u64, public acked: u64, public state: u8, public reason: u8) {}
}

export class Ack {
  received: u64 = 0;
  replicas: ReplicaProgress[] = [];
}

/** The reason of a CLOSE frame, or 0 if the bytes are not a valid CLOSE. */
export function decodeClose(frame: ArrayBuffer): u8 {
  const base = changetype<usize>(frame);
  if (frame.byteLength != 2 || load<u8>(base) != FRAME_CLOSE || load<u8>(base + 1) != CLOSE_PRIMARY_DEMOTED) return 0;
  return load<u8>(base + 1);
}

/** A STATUS frame (channels only): the relay ended the channel. */
export class ChannelStatus {
  constructor(public code: u32, public details: string) {}
}

/** Decode a STATUS frame at `base` (`size` bytes), or null (and `lastDecodeError`). */
export function decodeStatus(base: usize, size: usize): ChannelStatus | null {
  if (size < 4 || load<u8>(base) != FRAME_STATUS) { lastDecodeError = "STATUS shorter than its header (" + size.toString() + " bytes)"; return null; }
  const length = <usize>load<u16>(base + 2);
  if (<usize>4 + length != size) { lastDecodeError = "STATUS details of " + length.toString() + " bytes in a frame of " + size.toString(); return null; }
  return new ChannelStatus(<u32>load<u8>(base + 1), String.UTF8.decodeUnsafe(base + 4, length));
}

/** Decode an ACK. Returns null and sets `lastDecodeError` if the bytes are not a valid ACK. */
export let lastDecodeError: string = "";

export function decodeAck(frame: ArrayBuffer): Ack | null {
  const size = <usize>frame.byteLength;
  const base = changetype<usize>(frame);
  if (size < 10) { lastDecodeError = "frame shorter than an ACK header (" + size.toString() + " bytes)"; return null; }
  const type = load<u8>(base);
  if (type != FRAME_ACK) { lastDecodeError = "unexpected frame type 0x" + type.toString(16) + " from the relay"; return null; }
  const ack = new Ack();
  ack.received = load<u64>(base + 1);
  const count = <i32>load<u8>(base + 9);
  let at: usize = 10;
  for (let i = 0; i < count; i++) {
    if (at + 2 > size) { lastDecodeError = "ACK truncated in replica " + i.toString(); return null; }
    const nameLength = <usize>load<u16>(base + at);
    if (at + 2 + nameLength + 18 > size) { lastDecodeError = "ACK truncated in replica " + i.toString(); return null; }
    const name = String.UTF8.decodeUnsafe(base + at + 2, nameLength);
    at += 2 + nameLength;
    const state = load<u8>(base + at + 16);
    if (state > REPLICA_CLOSED) { lastDecodeError = "unknown replica state " + state.toString(); return null; }
    ack.replicas.push(new ReplicaProgress(name, load<u64>(base + at), load<u64>(base + at + 8), state, load<u8>(base + at + 17)));
    at += 18;
  }
  if (at != size) { lastDecodeError = "ACK has " + (size - at).toString() + " trailing bytes"; return null; }
  return ack;
}
