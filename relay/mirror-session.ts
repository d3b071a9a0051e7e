// One client connection, as seen by the relay: one gRPC stream from the filter, and one
// link per replica chosen when the stream opens (never the connection's primary). Checks
// the frames' order, fans the client's bytes out to the links, and acknowledges offsets.
// When the filter digests the primary's replies (OPEN flag REPLY_DIGESTS), the session's
// ReplyCheck compares every replica's replies with them and detaches a replica whose
// replies differ (DIVERGED), leaving the others and the client alone.
//
// The session owns a list of links with a role. Today every link is a mirror target; the
// planned session mode adds a link that carries the primary's stream itself.
import type { ServerDuplexStream } from "@grpc/grpc-js";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { decodeFilterFrame, encodeAck, FrameError, OPEN_FLAG_REPLY_DIGESTS, type OpenFrame } from "./frames.ts";
import { ReplicaLink } from "./replica-link.ts";
import { ReplyCheck } from "./reply-check.ts";
import type { RelayConfig, ReplicaTarget } from "./config.ts";
import type { ByteBudget } from "./budget.ts";
import type { RelayMetrics } from "./metrics.ts";
import { sameEndpoint } from "../config/address.ts";

export type MirrorCall = ServerDuplexStream<Buffer, Buffer>;

export interface SessionContext {
  readonly config: RelayConfig;
  readonly budget: ByteBudget;
  readonly metrics: RelayMetrics;
  /** The replica set for a service's connections opening now. */
  replicas(service: string): readonly ReplicaTarget[];
  log(line: string): void;
}

export class MirrorSession {
  private links: { role: "mirror"; link: ReplicaLink }[] = [];
  private open?: OpenFrame;
  /** The consistency check, when the filter digests the primary's replies. */
  private check?: ReplyCheck<ReplicaLink>;
  /** Client bytes received (the next DATA frame must start here). */
  private received = 0;
  private endedAt = -1;
  private lastAckReceived = -1;
  private ackTimer?: NodeJS.Timeout;
  private finishTimer?: NodeJS.Timeout;
  /** Not reading the stream while a live replica is far behind (see holdIfBehind). */
  private holding = false;
  private stallTimer?: NodeJS.Timeout;
  private state: "open" | "finishing" | "done" = "open";
  /** streamsActive was decremented for this session (cleanup may run more than once). */
  private uncounted = false;

  constructor(private readonly call: MirrorCall, private readonly ctx: SessionContext) {
    ctx.metrics.streamsActive.add(1);
    ctx.metrics.streamsTotal.add(1);
    call.on("data", (frame: Buffer) => this.onFrame(frame));
    call.on("end", () => this.finish());
    call.on("cancelled", () => this.abort());
    call.on("error", () => this.abort());
    call.on("close", () => this.abort());
  }

  private onFrame(frame: Buffer): void {
    if (this.state !== "open") return;
    try {
      const f = decodeFilterFrame(frame);
      if (!this.open && f.type !== "OPEN") throw new FrameError(`first frame must be OPEN, got ${f.type}`);
      switch (f.type) {
        case "OPEN":
          if (this.open) throw new FrameError("second OPEN on one stream");
          if (f.flags & ~OPEN_FLAG_REPLY_DIGESTS) throw new FrameError(`OPEN frame: unknown flags 0x${f.flags.toString(16).padStart(2, "0")}`);
          this.open = f;
          this.startLinks(f);
          break;
        case "DATA":
          if (this.endedAt >= 0) throw new FrameError("DATA after END");
          if (f.offset !== this.received) throw new FrameError(`DATA at offset ${f.offset}, expected ${this.received}`);
          if (f.bytes.length === 0) break;
          this.received += f.bytes.length;
          this.ctx.metrics.bytesReceived.add(f.bytes.length);
          for (const { link } of this.links) link.push(f.bytes);
          this.holdIfBehind();
          this.scheduleAck(this.received - this.lastAckReceived >= this.ctx.config.ackEveryBytes);
          break;
        case "END":
          if (f.totalBytes !== this.received) throw new FrameError(`END at ${f.totalBytes}, but ${this.received} bytes were received`);
          this.endedAt = f.totalBytes;
          for (const { link } of this.links) link.end();
          this.scheduleAck(true);
          break;
        case "REPLY_DIGEST":
          if (!this.check) throw new FrameError("REPLY_DIGEST on a stream opened without the REPLY_DIGESTS flag");
          this.check.primaryDigests(f.firstWindow, f.crcs);
          break;
        case "REPLY_END":
          if (!this.check) throw new FrameError("REPLY_END on a stream opened without the REPLY_DIGESTS flag");
          this.check.primaryEnded(f.totalBytes, f.tailCrc, f.end);
          break;
      }
    } catch (err) {
      this.protocolError(err instanceof Error ? err.message : String(err));
    }
  }

  private startLinks(open: OpenFrame): void {
    if (open.primary === "") {
      this.ctx.metrics.unmirrored.add(1);
      this.ctx.log(`connection ${open.connectionId}: Envoy reported no primary address; not mirrored (no backend may get its bytes twice)`);
    } else {
      const check = open.flags & OPEN_FLAG_REPLY_DIGESTS ? this.startCheck(open) : undefined;
      for (const target of this.ctx.replicas(open.service)) {
        if (sameEndpoint(target.address, open.primary)) continue; // the connection's primary is never its own mirror
        const link: ReplicaLink = new ReplicaLink(open.service, target, this.ctx.config.limits, this.ctx.budget, this.ctx.metrics,
          () => {
            if (link.terminal) check?.removeReplica(link); // verdict given, or none possible any more
            this.onLinkStateChange();
          },
          () => { this.releaseIfCaughtUp(); this.scheduleAck(false); },
          check && { bytes: (reply) => check.replicaBytes(link, reply), end: () => check.replicaEnded(link) });
        check?.addReplica(link);
        this.links.push({ role: "mirror", link });
      }
    }
    this.scheduleAck(true);
  }

  /** The reply check of this connection: its verdicts go to the metrics, the log and the link. */
  private startCheck(open: OpenFrame): ReplyCheck<ReplicaLink> {
    const labels = (link: ReplicaLink) => ({ service: open.service, replica: link.target.name });
    const m = this.ctx.metrics;
    this.check = new ReplyCheck<ReplicaLink>({
      diverged: (link, d) => {
        m.replicaDivergences.add(1, labels(link));
        this.ctx.log(`divergence: service "${open.service}" replica "${link.target.name}" connection ${open.connectionId} ` +
          `at reply offset ${d.offset}: ${d.detail}; replica detached from this connection (DIVERGED)`);
        link.detach("DIVERGED");
      },
      matched: (link) => m.replicaRepliesMatched.add(1, labels(link)),
      compared: (link, windows) => m.replicaWindowsCompared.add(windows, labels(link)),
      abandoned: (link, why) => {
        m.replicaChecksAbandoned.add(1, labels(link));
        this.ctx.log(`reply check given up: service "${open.service}" replica "${link.target.name}" connection ${open.connectionId}: ${why}`);
      },
    });
    return this.check;
  }

  private scheduleAck(now: boolean): void {
    if (this.state === "done") return;
    if (now) { this.sendAck(); return; }
    if (!this.ackTimer) this.ackTimer = setTimeout(() => this.sendAck(), this.ctx.config.ackIntervalMs);
  }

  private sendAck(): void {
    if (this.ackTimer) { clearTimeout(this.ackTimer); this.ackTimer = undefined; }
    if (this.state === "done" || this.call.destroyed) return;
    this.lastAckReceived = this.received;
    this.call.write(encodeAck(this.received, this.links.map(({ link }) => link.progress())));
  }

  /** The filter half-closed the stream: the client connection is over. Flush, then end. */
  private finish(): void {
    if (this.state !== "open") return;
    this.state = "finishing";
    for (const { link } of this.links) link.end();
    this.finishTimer = setTimeout(() => {
      for (const { link } of this.links) link.closeIfDelivered();
      this.complete();
    }, this.ctx.config.limits.finishTimeoutMs);
    this.onLinkStateChange();
  }

  private get highWater(): number { return this.ctx.config.limits.maxLagBytesPerConnection / 4; }

  /** Backpressure: while a live replica is behind by more than the high-water mark, stop
   *  reading the stream (HTTP/2 flow control then holds Envoy, whose filter pauses the client).
   *  A replica that makes no progress for stallTimeoutMs meanwhile is detached. */
  private holdIfBehind(): void {
    if (this.holding || !this.links.some(({ link }) => !link.terminal && link.lag > this.highWater)) return;
    this.holding = true;
    this.call.pause();
    const period = Math.max(10, Math.min(100, this.ctx.config.limits.stallTimeoutMs / 5));
    this.stallTimer = setInterval(() => {
      const now = Date.now();
      for (const { link } of this.links) {
        if (!link.terminal && link.lag > 0 && now - link.lastProgressAt >= this.ctx.config.limits.stallTimeoutMs) link.detach("STALLED");
      }
      this.releaseIfCaughtUp();
    }, period);
  }

  private releaseIfCaughtUp(): void {
    if (!this.holding || this.links.some(({ link }) => !link.terminal && link.lag > this.highWater / 2)) return;
    this.holding = false;
    if (this.stallTimer) clearInterval(this.stallTimer);
    this.stallTimer = undefined;
    if (this.state === "open") this.call.resume();
  }

  /** A link connected, detached or closed: tell the filter; complete once all are done. */
  private onLinkStateChange(): void {
    this.releaseIfCaughtUp();
    if (this.state === "finishing" && this.links.every(({ link }) => link.terminal)) this.complete();
    else this.scheduleAck(true);
  }

  private complete(): void {
    if (this.state === "done") return;
    this.sendAck();
    this.state = "done";
    this.cleanup();
    this.call.end();
  }

  /** The stream was reset (Envoy cancelled it, or the connection to Envoy broke). */
  private abort(): void {
    if (this.state === "done") return;
    const wasOpen = this.state === "open" || this.links.some(({ link }) => !link.terminal);
    this.state = "done";
    for (const { link } of this.links) link.abandon();
    if (wasOpen) this.ctx.metrics.streamsLost.add(1);
    this.cleanup();
  }

  private protocolError(message: string): void {
    this.ctx.metrics.protocolErrors.add(1);
    this.ctx.log(`protocol error on connection ${this.open?.connectionId ?? "?"}: ${message}; stream closed`);
    for (const { link } of this.links) link.detach("PROTOCOL");
    this.sendAck();
    this.state = "done";
    this.cleanup();
    // grpc-js turns an 'error' event into the call's status and ends it.
    this.call.emit("error", { code: GrpcStatus.INVALID_ARGUMENT, details: message });
  }

  private cleanup(): void {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    if (this.finishTimer) clearTimeout(this.finishTimer);
    if (this.stallTimer) clearInterval(this.stallTimer);
    this.ackTimer = this.finishTimer = this.stallTimer = undefined;
    if (!this.uncounted) { this.uncounted = true; this.ctx.metrics.streamsActive.add(-1); }
  }
}
