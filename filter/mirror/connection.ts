// One client connection's mirror: its gRPC stream to the relay, the bytes sent and
// acknowledged, and what the relay reports of each replica. Lives from the connection's
// first event until the relay's final answer (or a cancel), which may outlast the
// connection's own context. Never holds client bytes itself: a client byte is sent to the
// relay exactly when it is passed on to the primary (bytes Envoy holds while the connection
// waits for the relay are sent when they go on, and never if the connection ends first), so
// the replicas get exactly the bytes the primary got. With compare_replies it also digests
// the primary's reply stream (read, never changed or held) in windows aligned by offset, and
// sends the digests; its state for that is a few numbers per connection.
//
// Evidence for the controller, counted once per connection when it is known: a replica that
// did not provably take every byte the primary took (replica.<name>.missed_connections), and a
// connection whose bytes reached no replica the relay named (unmirrored_connections: every
// replica of the service missed them).
import * as host from "../abi/host";
import { BufferType } from "../abi/constants";
import { freeHostBuffer, HOST_BUFFER_HEADROOM } from "../abi/memory";
import {
  encodeOpen, encodeEnd, writeDataHeader, DATA_HEADER_BYTES, Ack,
  REPLICA_DETACHED, REPLICA_CLOSED, REASON_DIVERGED,
  OPEN_FLAG_REPLY_DIGESTS, REPLY_DIGEST_HEADER_BYTES, writeReplyDigestHeader, encodeReplyEnd,
  REPLY_END_CUT, REPLY_END_PRIMARY_CLOSED, CHANNEL_BYTES, FRAME_FINISH, FRAME_CANCEL,
} from "./frames";
import { crc32Update, REPLY_WINDOW_BYTES } from "./digest";
import { MirrorStats } from "./stats";
import { MirrorConfig } from "./config";
import { sanitizeName } from "./names";

// The DATA header (and on a channel, the channel id before it) is written into the headroom of
// the host's buffer.
assert(CHANNEL_BYTES + DATA_HEADER_BYTES <= HOST_BUFFER_HEADROOM, "channel + DATA header do not fit the host buffer headroom");

/** Window digests per REPLY_DIGEST frame: 256 x 16 KiB = 4 MiB of reply, more than one Envoy
 *  read; a longer read sends several frames. The frame is built in this static scratch. */
const MAX_WINDOWS_PER_DIGEST_FRAME: usize = 256;
const DIGEST_FRAME = memory.data(<i32>(CHANNEL_BYTES + REPLY_DIGEST_HEADER_BYTES + 4 * MAX_WINDOWS_PER_DIGEST_FRAME)) + CHANNEL_BYTES;


/** Not yet opened: no frame sent. */
export const STATE_IDLE: u8 = 0;
/** Stream open, mirroring. */
export const STATE_STREAMING: u8 = 1;
/** The client connection ended; our side is half-closed, waiting for the relay's final ACK. */
export const STATE_CLOSING: u8 = 2;
/** Nothing more will be mirrored (stream done, lost, cancelled, or never opened). */
export const STATE_DONE: u8 = 3;
/** The relay has no replica for this connection (the set is fixed when it opens): the stream
 *  is half-closed and the client's bytes are not sent anywhere, and not counted as lost. */
export const STATE_NO_REPLICAS: u8 = 4;

class ReplicaView {
  /** Counted in missed_connections for this connection. */
  missed: bool = false;
  constructor(public name: string, public queued: u64, public acked: u64, public state: u8) {}
}

/** One client connection's mirror: stream state, offsets, and the replicas the relay reported. */
export class MirrorConnection {
  state: u8 = STATE_IDLE;
  /** The gRPC stream the mirror goes on: its own, or the shared stream its channel is on. */
  token: u32 = 0;
  /** Its channel on a shared stream (the context id), or 0 on a stream of its own. */
  channel: u32 = 0;
  /** Client bytes handed to the stream. */
  sent: u64 = 0;
  /** Client bytes the relay holds (from its last ACK). */
  received: u64 = 0;
  endSent: bool = false;
  closingSinceNs: u64 = 0;
  /** The client's bytes are held in Envoy (we returned PAUSE) until the relay catches up;
   *  none of them is sent before they go on to the primary. */
  paused: bool = false;
  pausedSinceNs: u64 = 0;
  /** Size of Envoy's held buffer (it grows, and is handed over whole, on each read). */
  heldBytes: usize = 0;
  /** The client half-closed while its bytes were held: END follows them. */
  endHeld: bool = false;
  /** Waiting (paused) for the worker's finishing streams to drop below the bound before its
   *  stream opens. */
  awaitingStream: bool = false;
  /** Counted in the worker's finishing streams: the client is gone, the stream is not. */
  finishing: bool = false;
  /** Client bytes passed on to the primary, mirrored or not. */
  taken: u64 = 0;
  /** Counted in unmirrored_connections. */
  private unmirroredCounted: bool = false;
  /** The relay said this connection has no replica: its bytes are mirrored nowhere, by design. */
  private withoutReplicas: bool = false;
  replicas: ReplicaView[] = [];
  /** Digesting the primary's replies (compare_replies, and the stream is usable for it). */
  comparing: bool;
  /** Reply bytes digested, and the CRC-32 of those after the last whole window. */
  replyTotal: u64 = 0;
  replyCrc: u32 = 0;
  replyEndSent: bool = false;
  /** Envoy's connection_id (as in OPEN and the relay's log lines), once the stream is open. */
  connectionId: u64 = 0;

  constructor(
    public readonly contextId: u32,
    private readonly config: MirrorConfig,
    private readonly stats: MirrorStats,
  ) {
    this.comparing = config.compareReplies;
  }

  get inflight(): u64 { return this.sent - this.received; }
  get mirroring(): bool { return this.state == STATE_STREAMING; }

  /** Start mirroring on `token` (`channel` 0: a stream of its own; else a channel of a shared
   *  stream) with an OPEN frame. Token 0: no stream could be opened, nothing will be mirrored. */
  start(token: u32, channel: u32): void {
    if (this.state != STATE_IDLE) return;
    if (token == 0) {
      this.state = STATE_DONE;
      this.stats.add(this.stats.streamOpenFailures, 1);
      host.logWarn("lockstep: could not open a mirror stream on cluster \"" + this.config.relayCluster + "\"; this connection is not mirrored");
      return;
    }
    this.token = token;
    this.channel = channel;
    this.state = STATE_STREAMING;
    this.connectionId = host.getPropertyU64("connection_id", <u64>this.contextId);
    this.stats.add(this.stats.streamsActive, 1);
    this.sendFrame(encodeOpen(
      this.connectionId,
      this.comparing ? OPEN_FLAG_REPLY_DIGESTS : 0,
      this.config.service,
      host.getPropertyString("upstream.address"),
      host.getPropertyString("source.address"),
    ));
  }

  /** Send the frame at `at` (`size` bytes). On a channel, the CHANNEL_BYTES in front of it are
   *  the caller's to spare: the channel id goes there, and both go out in one message. */
  private send(at: usize, size: usize): void {
    if (this.channel == 0) { host.grpcSend(this.token, at, size, false); return; }
    store<u32>(at - CHANNEL_BYTES, this.channel);
    host.grpcSend(this.token, at - CHANNEL_BYTES, CHANNEL_BYTES + size, false);
  }

  /** Send a small frame built on its own (copied once behind the channel id on a channel). */
  private sendFrame(frame: ArrayBuffer): void {
    if (this.channel == 0) { host.grpcSend(this.token, changetype<usize>(frame), frame.byteLength, false); return; }
    const message = new ArrayBuffer(<i32>CHANNEL_BYTES + frame.byteLength);
    memory.copy(changetype<usize>(message) + CHANNEL_BYTES, changetype<usize>(frame), frame.byteLength);
    this.send(changetype<usize>(message) + CHANNEL_BYTES, frame.byteLength);
  }

  /** A FINISH or CANCEL frame: what closing or cancelling its own stream says. */
  private sendSignal(type: u8): void {
    const message = new ArrayBuffer(<i32>CHANNEL_BYTES + 1);
    store<u8>(changetype<usize>(message) + CHANNEL_BYTES, type);
    this.send(changetype<usize>(message) + CHANNEL_BYTES, 1);
  }

  /** Half-close: the client connection is over (or there is nothing to mirror). */
  private closeStream(): void {
    if (this.channel == 0) host.grpcClose(this.token);
    else this.sendSignal(FRAME_FINISH);
  }

  /** The `size` bytes of DOWNSTREAM_DATA go on to the primary now: mirror them (all of them:
   *  bytes are never sent while held). From on_downstream_data, or while Envoy holds them. */
  passDownstream(size: usize): void {
    if (size == 0) return;
    this.taken += size;
    if (this.withoutReplicas) return;
    if (!this.mirroring) { this.skip(size); return; }
    // The host copies the bytes into memory we allocate, with headroom in front of them:
    // the DATA header goes there, and header + payload go out in one send, uncopied.
    const payload = host.getBufferBytesRaw(BufferType.DOWNSTREAM_DATA, 0, size);
    if (payload == 0) { this.skip(size); return; }
    const length = host.lastReturnedSize();
    const frame = payload - DATA_HEADER_BYTES;
    writeDataHeader(frame, this.sent);
    this.send(frame, DATA_HEADER_BYTES + length);
    freeHostBuffer(payload);
    this.sent += length;
    this.stats.add(this.stats.bytesSent, <i64>length);
    this.stats.add(this.stats.inflightBytes, <i64>length);
  }

  /** Digest the primary's bytes in UPSTREAM_DATA (`size` long: we never pause that direction,
   *  so they are all new) and send the windows they complete. Only from on_upstream_data.
   *  Reads the buffer, never changes it. Nothing is read unless comparing. */
  digestUpstream(size: usize, endOfStream: bool): void {
    if (!this.comparing || this.replyEndSent) return;
    if (this.state != STATE_STREAMING) { this.comparing = false; return; } // no replica, or no stream
    if (size > 0) {
      const ptr = host.getBufferBytesRaw(BufferType.UPSTREAM_DATA, 0, size);
      if (ptr == 0) {
        // Digests with a hole would be wrong: stop here; the relay compares what it was sent.
        this.comparing = false;
        host.logWarn("lockstep: could not read the primary's reply on connection " + this.contextId.toString() + "; reply comparison stopped for it");
        return;
      }
      const length = host.lastReturnedSize();
      let firstWindow = this.replyTotal / REPLY_WINDOW_BYTES;
      let count: usize = 0;
      let at: usize = 0;
      while (at < length) {
        const room = <usize>(REPLY_WINDOW_BYTES - this.replyTotal % REPLY_WINDOW_BYTES);
        const n = min(room, length - at);
        this.replyCrc = crc32Update(this.replyCrc, ptr + at, n);
        this.replyTotal += n;
        at += n;
        if (this.replyTotal % REPLY_WINDOW_BYTES == 0) {
          store<u32>(DIGEST_FRAME + REPLY_DIGEST_HEADER_BYTES + (count << 2), this.replyCrc);
          this.replyCrc = 0;
          if (++count == MAX_WINDOWS_PER_DIGEST_FRAME) { this.sendDigests(firstWindow, count); firstWindow += count; count = 0; }
        }
      }
      freeHostBuffer(ptr);
      if (count > 0) this.sendDigests(firstWindow, count);
      this.stats.add(this.stats.replyBytesDigested, <i64>length);
    }
    if (endOfStream) this.endReplies(REPLY_END_PRIMARY_CLOSED);
  }

  private sendDigests(firstWindow: u64, count: usize): void {
    writeReplyDigestHeader(DIGEST_FRAME, firstWindow, <u16>count);
    this.send(DIGEST_FRAME, REPLY_DIGEST_HEADER_BYTES + (count << 2));
  }

  /** The primary's reply stream is over (`end`: REPLY_END_PRIMARY_CLOSED or REPLY_END_CUT). */
  private endReplies(end: u8): void {
    if (!this.comparing || this.replyEndSent || this.state != STATE_STREAMING) return;
    this.sendFrame(encodeReplyEnd(this.replyTotal, this.replyCrc, end));
    this.replyEndSent = true;
  }

  /** The client half-closed (after every byte it sent went on): tell the relay where its stream ends. */
  endDownstream(): void {
    if (!this.mirroring || this.endSent) return;
    this.sendFrame(encodeEnd(this.sent));
    this.endSent = true;
  }

  /** This connection will not be mirrored (its stream never opened). */
  forgo(): void { if (this.state == STATE_IDLE) this.state = STATE_DONE; }

  /** The client connection is over: half-close the stream; the relay flushes and answers.
   *  Bytes Envoy still held never reached the primary: they are not sent. */
  finish(nowNs: u64): void {
    this.paused = false; // the connection is gone: nothing to resume
    this.heldBytes = 0;
    if (this.state == STATE_STREAMING) {
      // The connection ended before the primary ended its replies (if it had, REPLY_END is out).
      this.endReplies(REPLY_END_CUT);
      this.closeStream();
      this.state = STATE_CLOSING;
      this.closingSinceNs = nowNs;
    } else if (this.state == STATE_IDLE) {
      this.state = STATE_DONE;
    }
  }

  /** Apply an ACK. Returns false if it contradicts what we sent (a relay bug or foreign peer). */
  applyAck(ack: Ack): bool {
    if (ack.received > this.sent || ack.received < this.received) return false;
    this.stats.add(this.stats.inflightBytes, -<i64>(ack.received - this.received));
    this.received = ack.received;
    if (ack.replicas.length == 0 && this.replicas.length == 0 && this.state == STATE_STREAMING) {
      // No replica to feed: stop sending; the relay ends the stream once we half-close.
      this.state = STATE_NO_REPLICAS;
      this.withoutReplicas = true;
      this.closingSinceNs = host.nowNanoseconds();
      this.stats.add(this.stats.connectionsWithoutReplicas, 1);
      this.closeStream();
      return true;
    }
    for (let i = 0; i < ack.replicas.length; i++) {
      const update = ack.replicas[i];
      const name = sanitizeName(update.name);
      const rs = this.stats.replica(name);
      let view: ReplicaView | null = null;
      for (let j = 0; j < this.replicas.length; j++) if (this.replicas[j].name == name) { view = this.replicas[j]; break; }
      if (view === null) {
        view = new ReplicaView(name, 0, 0, 0);
        this.replicas.push(view);
        this.stats.add(rs.connections, 1);
      }
      const v = changetype<ReplicaView>(view);
      if (v.state == REPLICA_DETACHED || v.state == REPLICA_CLOSED) continue;
      if (update.queued > v.queued) { this.stats.add(rs.bytesMirrored, <i64>(update.queued - v.queued)); v.queued = update.queued; }
      if (update.acked > v.acked) { this.stats.add(rs.bytesAcked, <i64>(update.acked - v.acked)); v.acked = update.acked; }
      if (update.state == REPLICA_DETACHED) {
        this.stats.add(rs.detaches, 1);
        if (update.reason == REASON_DIVERGED) {
          this.stats.add(rs.divergences, 1);
          host.logWarn("lockstep: replica \"" + name + "\" diverged on connection " + this.connectionId.toString() +
            ": its replies differ from the primary's; detached from this connection");
        }
      }
      if (update.state == REPLICA_CLOSED) this.stats.add(rs.completed, 1);
      v.state = update.state;
    }
    return true;
  }

  /** The stream is over. `complete` when the relay ended it normally after our half-close;
   *  otherwise every replica still attached is counted detached (out of sync). */
  end(complete: bool): void {
    if (this.state == STATE_STREAMING || this.state == STATE_CLOSING || this.state == STATE_NO_REPLICAS) this.stats.add(this.stats.streamsActive, -1);
    if (!complete) {
      this.stats.add(this.stats.streamsLost, 1);
      for (let i = 0; i < this.replicas.length; i++) {
        const v = this.replicas[i];
        if (v.state != REPLICA_DETACHED && v.state != REPLICA_CLOSED) {
          v.state = REPLICA_DETACHED;
          this.stats.add(this.stats.replica(v.name).detaches, 1);
        }
      }
      this.stats.add(this.stats.bytesUnmirrored, <i64>this.inflight);
    }
    this.stats.add(this.stats.inflightBytes, -<i64>this.inflight);
    this.received = this.sent;
    this.state = STATE_DONE;
    this.countMissed(complete);
  }

  /**
   * Count, once per connection, each replica that did not provably take every byte the primary
   * took so far: one the relay did not report CLOSED (every byte delivered, replies judged) that
   * is short of bytes, or any not CLOSED once the stream was lost (bytes the relay wrote may
   * still have been in its socket buffers when it went). With no replica named by the relay,
   * the connection counts as unmirrored: every replica of the service missed its bytes.
   */
  private countMissed(complete: bool): void {
    if (this.taken == 0 || this.withoutReplicas) return;
    // The relay names every replica of the connection in each ACK: a stream it ended normally
    // without naming any had none (a service with no replica); one lost first reached none.
    if (this.replicas.length == 0) { if (!complete) this.countUnmirrored(); return; }
    for (let i = 0; i < this.replicas.length; i++) {
      const v = this.replicas[i];
      if (v.missed || v.state == REPLICA_CLOSED) continue;
      if (!complete || this.taken > v.acked) {
        v.missed = true;
        this.stats.add(this.stats.replica(v.name).missedConnections, 1);
      }
    }
  }

  /**
   * The client reset its connection (it closed without half-closing first) after bytes went on
   * to the primary. Envoy then closes the primary's connection abruptly: a primary behind in
   * reading loses what its socket still held (a reset discards it), an amount nobody can know,
   * while the replicas may have read further. No replica provably holds exactly what the primary
   * took: true if the stream must be reset (the relay then resets the replica connections, and
   * cancel() counts every replica on the connection missed, so the controller takes them out
   * of sync).
   */
  resetByClient(): bool {
    if (this.taken == 0 || this.endSent || this.withoutReplicas) return false;
    if (this.state != STATE_STREAMING && this.state != STATE_CLOSING) return false;
    this.stats.add(this.stats.clientResets, 1);
    this.paused = false; // bytes Envoy held go nowhere: the connection is gone
    this.heldBytes = 0;
    host.logInfo("lockstep: connection " + this.connectionId.toString() + " was reset by its client after " + this.taken.toString() +
      " bytes went on to the primary; what the primary consumed is unknown: its replicas are counted missed");
    return true;
  }

  /** Stop mirroring at once (bound exceeded, bad relay frame): reset the stream (on a shared
   *  stream, CANCEL the channel). */
  cancel(): void {
    if (this.state == STATE_STREAMING || this.state == STATE_CLOSING || this.state == STATE_NO_REPLICAS) {
      if (this.channel == 0) host.grpcCancel(this.token);
      else this.sendSignal(FRAME_CANCEL);
    }
    this.end(false);
  }

  /** Bytes went on to the primary without a mirror (stream lost, cut, or never opened): no
   *  replica got them, not even one that joined the service's set after this connection opened. */
  private skip(size: usize): void {
    this.stats.add(this.stats.bytesUnmirrored, <i64>size);
    this.countMissed(false);
    this.countUnmirrored();
  }

  private countUnmirrored(): void {
    if (this.unmirroredCounted || this.withoutReplicas) return;
    this.unmirroredCounted = true;
    this.stats.add(this.stats.unmirroredConnections, 1);
  }
}
