// One replica's TCP connection for one client connection: the replica sees an ordinary
// client. Bytes are queued in order and written exactly once; what the replica answers is
// read, handed to the reply observer (the consistency check, when the connection has one)
// and dropped. Bounded: past the per-connection lag bound or the relay-wide budget the
// link detaches (socket destroyed, queue freed) and stays detached.
//
//   CONNECTING ──connect──► LIVE ──(session) delivered, replies judged──► CLOSED
//        │                   │
//        └──────────────┬────┘ connect failure, replica reset or gone with bytes to take,
//                       ▼       bound exceeded, stalled, replies differ (DIVERGED)
//                    DETACHED (reason)
//
// The link knows its socket; the session decides when a delivered link is done (it knows
// the client connection's end and the reply check's verdict).
import { connect, type Socket } from "node:net";
import type { ReplicaState, DetachReason, ReplicaProgress } from "./frames.ts";
import type { ReplicaTarget, RelayLimits } from "./config.ts";
import type { ByteBudget } from "./budget.ts";
import type { RelayMetrics } from "./metrics.ts";
import { splitHostPort } from "../config/address.ts";

/** Who reads a replica's replies (the session's reply check). */
export interface ReplyObserver {
  bytes(reply: Buffer): void;
}

export interface LinkEvents {
  /** The state changed, or the replica's connection closed: the session re-judges and ACKs. */
  changed(): void;
  /** Bytes were written to the socket (the session may release backpressure and ACK). */
  progress(): void;
  /** The member ended its side (a FIN: its replies are over), its connection still open for
   *  the client's bytes. Session mode judges its leader's end at once. */
  replyEnd?(): void;
}

/** Gathered bytes of at least this much go to the replica at once (writeDelayMs). */
const GATHER_BYTES = 64 << 10;

/** Private libuv handle field: bytes of the current write not yet taken by the kernel. */
type WithHandle = Socket & { _handle?: { writeQueueSize?: number } | null };

export class ReplicaLink {
  state: ReplicaState = "CONNECTING";
  reason: DetachReason = "NONE";
  /** Bytes accepted for this replica. */
  queued = 0;
  /** Bytes written to the socket and flushed to the kernel. */
  acked = 0;
  /** When the replica last took bytes (or the link connected). */
  lastProgressAt = Date.now();
  /** No more bytes will come: the client half-closed or its connection ended. */
  ending = false;
  /** The replica's connection is closed (its replies are over). */
  closed = false;
  /** The replica ended its side (FIN): its replies are over, it may still take bytes. */
  repliesOver = false;
  private endSent = false;
  private sampledAcked = 0;
  private sampledUnwritten = 0;
  private sampledUnacknowledged = Infinity;
  /** Bytes accepted and not yet handed to the socket (writeDelayMs), in order. */
  private gathered: Buffer[] = [];
  private gatheredBytes = 0;
  private gatherTimer?: NodeJS.Timeout;
  private readonly socket: Socket;
  private readonly labels: { service: string; replica: string };

  constructor(
    readonly service: string,
    readonly target: ReplicaTarget,
    private readonly limits: RelayLimits,
    private readonly budget: ByteBudget,
    private readonly metrics: RelayMetrics,
    private readonly events: LinkEvents,
    private readonly replies?: ReplyObserver,
    /** How long small writes wait to be gathered into one (relay config replicaWriteDelayMs); 0: at once. */
    private readonly writeDelayMs = 0,
  ) {
    this.labels = { service, replica: target.name };
    metrics.replicaConnections.add(1, this.labels);
    metrics.replicaActive.add(1, this.labels);
    this.socket = connect({ ...splitHostPort(target.address), allowHalfOpen: true, noDelay: true });
    this.socket.setTimeout(limits.connectTimeoutMs, () => {
      if (this.state === "CONNECTING") this.detach("CONNECT_FAILED");
    });
    this.socket.on("connect", () => {
      this.socket.setTimeout(0);
      this.lastProgressAt = Date.now();
      if (this.state !== "CONNECTING") return;
      this.state = "LIVE";
      this.maybeEnd();
      this.events.changed();
    });
    this.socket.on("data", (reply: Buffer) => {
      metrics.replicaReplyDropped.add(reply.length, this.labels);
      if (!this.terminal) this.replies?.bytes(reply);
    });
    this.socket.on("end", () => { if (!this.terminal) { this.repliesOver = true; this.events.replyEnd?.(); } });
    // A reset or error is the replica failing (or refusing), never a protocol's normal close.
    this.socket.on("error", () => this.detach(this.state === "CONNECTING" ? "CONNECT_FAILED" : "REPLICA_CLOSED"));
    this.socket.on("close", () => {
      if (this.terminal) return;
      if (this.state === "CONNECTING") return this.detach("CONNECT_FAILED");
      // Bytes it never took are lost to it; else its replies are over (a protocol's close after
      // its last answer, like QUIT), and it is judged on them once the client's stream ends.
      if (this.acked < this.queued) return this.detach("REPLICA_CLOSED");
      this.closed = true;
      this.events.changed();
    });
  }

  get terminal(): boolean { return this.state === "DETACHED" || this.state === "CLOSED"; }
  get lag(): number { return this.queued - this.acked; }
  /** Every byte of the connection was written to the replica (and its end sent, or it had closed). */
  get delivered(): boolean { return this.ending && this.acked === this.queued && (this.endSent || this.closed); }

  progress(): ReplicaProgress {
    return { name: this.target.name, queued: this.queued, acked: this.acked, state: this.state, reason: this.reason };
  }

  /** Queue `bytes` (one buffer, or pieces of `length` bytes in all) for the replica, written in
   *  order once connected: pieces go out in one gathered write (writev), never joined. */
  push(bytes: Buffer | readonly Buffer[], length = Buffer.isBuffer(bytes) ? bytes.length : bytes.reduce((n, b) => n + b.length, 0)): void {
    if (this.terminal || this.ending || length === 0) return;
    if (this.closed) return this.detach("REPLICA_CLOSED"); // it closed, and the client goes on
    if (this.lag + length > this.limits.maxLagBytesPerConnection) return this.detach("LAG_BOUND");
    if (!this.budget.take(length)) return this.detach("RELAY_BOUND");
    this.queued += length;
    this.metrics.replicaQueued.add(length, this.labels);
    this.metrics.replicaLag.add(length, this.labels);
    const parts = Buffer.isBuffer(bytes) ? [bytes] : bytes;
    if (this.writeDelayMs === 0) { this.write(parts, length); return; }
    this.gathered.push(...parts);
    this.gatheredBytes += length;
    if (this.gatheredBytes >= GATHER_BYTES) this.flush();
    else this.gatherTimer ??= setTimeout(() => this.flush(), this.writeDelayMs);
  }

  /** Hand what was gathered to the socket now. */
  private flush(): void {
    const parts = this.gathered, length = this.gatheredBytes;
    this.dropGathered();
    if (length > 0 && !this.terminal) this.write(parts, length);
  }

  private dropGathered(): void {
    if (this.gatherTimer) { clearTimeout(this.gatherTimer); this.gatherTimer = undefined; }
    this.gathered = [];
    this.gatheredBytes = 0;
  }

  /** Write `parts` (`length` bytes) in one gathered write. Node's socket keeps the bytes in order
   *  until connected and written; the callback of the last piece fires once all of them are
   *  flushed to the kernel (or the socket failed). */
  private write(parts: readonly Buffer[], length: number): void {
    const written = (err?: Error | null) => {
      if (err || this.terminal) return;
      this.acked += length;
      this.lastProgressAt = Date.now();
      this.budget.give(length);
      this.metrics.replicaAcked.add(length, this.labels);
      this.metrics.replicaLag.add(-length, this.labels);
      this.events.progress();
      if (this.maybeEnd()) this.events.changed();
    };
    if (parts.length === 1) { this.socket.write(parts[0], written); return; }
    this.socket.cork();
    for (let i = 0; i < parts.length - 1; i++) this.socket.write(parts[i]);
    this.socket.write(parts[parts.length - 1], written);
    this.socket.uncork();
  }

  /** No more bytes: half-close the replica connection once everything is written. */
  end(): void {
    if (this.ending) return;
    this.ending = true;
    this.flush();
    this.maybeEnd();
  }

  private maybeEnd(): boolean {
    if (!this.ending || this.endSent || this.closed || this.state !== "LIVE" || this.acked !== this.queued) return false;
    this.endSent = true;
    this.socket.end();
    return true;
  }

  /** Whether the replica took bytes since the last call: a write completed, the kernel took
   *  part of the one in progress (a large write completes only once the whole of it is taken),
   *  or the replica acknowledged bytes sitting in the kernel's buffers (`unacknowledged`, from
   *  kernel-queue.ts, when it could be read). */
  tookBytes(now: number, unacknowledged?: number): boolean {
    const unwritten = (this.socket as WithHandle)._handle?.writeQueueSize ?? 0;
    const took = this.acked !== this.sampledAcked || unwritten < this.sampledUnwritten ||
      (unacknowledged !== undefined && this.sampledUnacknowledged !== Infinity && unacknowledged < this.sampledUnacknowledged);
    this.sampledAcked = this.acked;
    this.sampledUnwritten = unwritten;
    if (unacknowledged !== undefined) this.sampledUnacknowledged = unacknowledged;
    if (took) this.lastProgressAt = now;
    return took;
  }

  /** The socket, for reading its kernel send queue (kernel-queue.ts). */
  get tcp(): Socket { return this.socket; }

  /** Out of sync for this connection: free everything now. */
  detach(reason: DetachReason): void {
    if (this.terminal) return;
    this.state = "DETACHED";
    this.reason = reason;
    this.metrics.replicaDetaches.add(1, { ...this.labels, reason });
    this.release();
    this.events.changed();
  }

  /** A session connection's failed leader, replaced by its successor: drop it (counted as
   *  TAKEN_OVER; it is out of sync: the connection goes on without it). */
  fence(): void {
    if (this.terminal) return;
    this.state = "DETACHED";
    this.metrics.replicaDetaches.add(1, { ...this.labels, reason: "TAKEN_OVER" });
    this.release();
    this.events.changed();
  }

  /** Stop reading the member's replies (the client is not taking them fast enough), and go on. */
  pauseReplies(): void { this.socket.pause(); }
  resumeReplies(): void { if (!this.terminal) this.socket.resume(); }

  /** The client's stream was lost: drop the replica connection (counted, no ACK can follow). */
  abandon(): void {
    if (this.terminal) return;
    this.state = "DETACHED";
    this.reason = "NONE";
    this.metrics.replicaDetaches.add(1, { ...this.labels, reason: "STREAM_LOST" });
    this.release();
  }

  /** Delivered and judged: close the replica's connection (it may still be answering). */
  finish(): void {
    if (this.terminal) return;
    this.state = "CLOSED";
    this.release();
    this.events.changed();
  }

  private release(): void {
    this.dropGathered();
    this.budget.give(this.lag);
    this.metrics.replicaLag.add(-this.lag, this.labels);
    this.socket.destroy();
    this.metrics.replicaActive.add(-1, this.labels);
  }
}
