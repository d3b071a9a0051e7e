// One replica's TCP connection for one client connection: the replica sees an ordinary
// client. Bytes are queued in order and written exactly once; what the replica answers is
// read, handed to the reply observer (the consistency check, when the connection has one)
// and dropped. Bounded: past the per-connection lag bound or the relay-wide budget the
// link detaches (socket destroyed, queue freed) and stays detached.
//
//   CONNECTING ──connect──► LIVE ──end + all written + replica closed──► CLOSED
//        │                   │
//        └──────────────┬────┘ connect failure, replica closed/reset early, bound exceeded, stalled
//                       ▼
//                    DETACHED (reason; DIVERGED when its replies differ from the primary's)
import { connect, type Socket } from "node:net";
import type { ReplicaState, DetachReason, ReplicaProgress } from "./frames.ts";
import type { ReplicaTarget, RelayLimits } from "./config.ts";
import type { ByteBudget } from "./budget.ts";
import type { RelayMetrics } from "./metrics.ts";
import { splitHostPort } from "../config/address.ts";


/** Who reads a replica's replies (the session's reply check). `end` fires once, when the reply
 *  stream is over: everything was delivered and the replica closed, or the finish timeout passed
 *  after the connection ended. Not on errors (the link is then detached for that reason). */
export interface ReplyObserver {
  bytes(reply: Buffer): void;
  end(): void;
}

export class ReplicaLink {
  state: ReplicaState = "CONNECTING";
  reason: DetachReason = "NONE";
  /** Bytes accepted for this replica. */
  queued = 0;
  /** Bytes written to the socket and flushed to the kernel. */
  acked = 0;
  /** When bytes were last flushed (or the link was created). */
  lastProgressAt = Date.now();
  private readonly socket: Socket;
  private ending = false;
  private endSent = false;
  private readonly labels: { service: string; replica: string };

  constructor(
    readonly service: string,
    readonly target: ReplicaTarget,
    private readonly limits: RelayLimits,
    private readonly budget: ByteBudget,
    private readonly metrics: RelayMetrics,
    /** Called on every state change (the session sends an ACK). */
    private readonly onStateChange: () => void,
    /** Called when bytes were flushed (the session may send an ACK). */
    private readonly onProgress: () => void,
    private readonly replies?: ReplyObserver,
  ) {
    this.labels = { service, replica: target.name };
    metrics.replicaConnections.add(1, this.labels);
    metrics.replicaActive.add(1, this.labels);
    const { host, port } = splitHostPort(target.address);
    this.socket = connect({ host, port, allowHalfOpen: true, noDelay: true });
    this.socket.setTimeout(limits.connectTimeoutMs, () => {
      if (this.state === "CONNECTING") this.detach("CONNECT_FAILED");
    });
    this.socket.on("connect", () => {
      this.socket.setTimeout(0);
      this.lastProgressAt = Date.now();
      if (this.state !== "CONNECTING") return;
      this.state = "LIVE";
      this.onStateChange();
      this.maybeEnd();
    });
    this.socket.on("data", (reply: Buffer) => {
      metrics.replicaReplyDropped.add(reply.length, this.labels);
      if (!this.terminal) this.replies?.bytes(reply);
    });
    // The replica's FIN alone does not end its replies for the check: a replica that dies may
    // send one. They end when the link finishes normally, or at the finish timeout.
    this.socket.on("error", () => this.detach(this.state === "CONNECTING" ? "CONNECT_FAILED" : "REPLICA_CLOSED"));
    this.socket.on("close", () => {
      if (this.terminal) return;
      // Judge the replies first: a replica that answered differently ends DIVERGED, not CLOSED.
      if (this.endSent && this.acked === this.queued) this.replyEnd();
      if (this.terminal) return;
      if (this.endSent && this.acked === this.queued) this.finish("CLOSED");
      else this.detach(this.state === "CONNECTING" ? "CONNECT_FAILED" : "REPLICA_CLOSED");
    });
  }

  get terminal(): boolean { return this.state === "DETACHED" || this.state === "CLOSED"; }
  get lag(): number { return this.queued - this.acked; }

  progress(): ReplicaProgress {
    return { name: this.target.name, queued: this.queued, acked: this.acked, state: this.state, reason: this.reason };
  }

  /** Queue `bytes` for the replica (written in order once connected). */
  push(bytes: Buffer): void {
    if (this.terminal || this.ending) return;
    if (this.lag + bytes.length > this.limits.maxLagBytesPerConnection) return this.detach("LAG_BOUND");
    if (!this.budget.take(bytes.length)) return this.detach("RELAY_BOUND");
    this.queued += bytes.length;
    this.metrics.replicaQueued.add(bytes.length, this.labels);
    this.metrics.replicaLag.add(bytes.length, this.labels);
    // Node's socket keeps the bytes in order until connected and written; the callback
    // fires once they are flushed to the kernel (or the socket failed).
    this.socket.write(bytes, (err) => {
      if (err || this.terminal) return;
      this.acked += bytes.length;
      this.lastProgressAt = Date.now();
      this.budget.give(bytes.length);
      this.metrics.replicaAcked.add(bytes.length, this.labels);
      this.metrics.replicaLag.add(-bytes.length, this.labels);
      this.onProgress();
      this.maybeEnd();
    });
  }

  /** No more bytes: half-close the replica connection once everything is written. */
  end(): void {
    this.ending = true;
    this.maybeEnd();
  }

  private maybeEnd(): void {
    if (this.ending && !this.endSent && this.state === "LIVE" && this.acked === this.queued) {
      this.endSent = true;
      this.socket.end();
    }
  }

  /** The connection's finish timeout passed: if everything was written and half-closed, the
   *  replica merely did not close its side, so finish it ourselves; else it never took the
   *  last bytes (STALLED). */
  closeIfDelivered(): void {
    if (this.terminal) return;
    this.replyEnd(); // what it answered by now is all it answered
    if (this.terminal) return;
    if (this.endSent && this.acked === this.queued) this.finish("CLOSED");
    else this.detach("STALLED");
  }

  private replyEnded = false;
  private replyEnd(): void {
    if (this.replyEnded || this.terminal) return;
    this.replyEnded = true;
    this.replies?.end();
  }

  /** Out of sync for this connection: free everything now. */
  detach(reason: DetachReason): void {
    if (this.terminal) return;
    this.state = "DETACHED";
    this.reason = reason;
    this.metrics.replicaDetaches.add(1, { ...this.labels, reason });
    this.release();
    this.onStateChange();
  }

  /** The client connection was reset: drop the replica connection without counting a detach. */
  abandon(): void {
    if (this.terminal) return;
    this.state = "DETACHED";
    this.reason = "NONE";
    this.metrics.replicaDetaches.add(1, { ...this.labels, reason: "STREAM_LOST" });
    this.release();
  }

  private finish(state: "CLOSED"): void {
    this.state = state;
    this.release();
    this.onStateChange();
  }

  private release(): void {
    this.budget.give(this.lag);
    this.metrics.replicaLag.add(-this.lag, this.labels);
    this.socket.destroy();
    this.metrics.replicaActive.add(-1, this.labels);
  }
}
