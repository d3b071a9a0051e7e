// One client connection, as seen by the relay: one gRPC stream from the filter (or one channel
// of a shared stream: relay/channel-stream.ts; the session sees a MirrorCall either way), and one
// link per replica of the service's set when the stream opens (never the connection's
// primary). Checks the frames' order, fans the client's bytes out to the links, and
// acknowledges offsets. When the filter digests the primary's replies (OPEN flag
// REPLY_DIGESTS), the session's ReplyCheck compares every replica's replies with them: each
// replica ends the connection with exactly one verdict (matched, diverged or given up), and a
// replica is reported CLOSED (completed) only once its verdict is in.
//
// Life of a session:
//   OPEN ── set known? ──► links started ── DATA/END ... ── stream half-closed (client gone) ──►
//     │                                                     finishing: each link delivers its last
//     └─ no set yet: frames wait (no ACK, so the filter's     bytes (finishTimeoutMs, else STALLED),
//        in-flight bound holds the client) up to setWaitMs,   waits replyWaitMs at most for its
//        then the stream fails: the filter counts the         replies, then its connection closes
//        connection unmirrored                                ──► final ACK, stream ends OK
// A stream reset (Envoy gone, or the filter cut the mirror) drops every replica connection.
//
// Evidence for the controller: when a session ends, every replica that did not provably take
// all of the connection's client bytes is counted in lockstep_relay_replica_missed_connections_total.
import { CallStatus, type CallStatusCode, type MirrorCall } from "./mirror-call.ts";
import { decodeFilterFrame, encodeAck, encodeClose, FrameError, OPEN_FLAG_REPLY_DIGESTS, type FilterFrame, type OpenFrame } from "./frames.ts";
import { ReplicaLink } from "./replica-link.ts";
import { ReplyCheck } from "./reply-check.ts";
import { unacknowledgedBytes } from "./kernel-queue.ts";
import type { RelayConfig, ReplicaTarget } from "./config.ts";
import type { ByteBudget } from "./budget.ts";
import type { RelayMetrics } from "./metrics.ts";
import type { ReplicaSets, OpenConnection } from "./replica-sets.ts";
import { sameEndpoint } from "../config/address.ts";
import { MissedMembers } from "./missed-members.ts";

export interface SessionContext {
  readonly config: RelayConfig;
  readonly budget: ByteBudget;
  readonly metrics: RelayMetrics;
  readonly sets: ReplicaSets;
  log(line: string): void;
}

export class MirrorSession implements OpenConnection {
  private links: ReplicaLink[] = [];
  private openFrame?: OpenFrame;
  /** The consistency check, when the filter digests the primary's replies. */
  private check?: ReplyCheck<ReplicaLink>;
  /** Frames that came while the service's set was unknown, replayed once it is known. */
  private early?: FilterFrame[];
  private earlyBytes = 0;
  private stopWaiting?: () => void;
  private waitTimer?: NodeJS.Timeout;
  /** Client bytes received (the next DATA frame must start here). */
  private received = 0;
  private endedAt = -1;
  private lastAckReceived = -1;
  /** Links that had left the connection (terminal) when the last ACK went out. */
  private terminalAcked = 0;
  private ackTimer?: NodeJS.Timeout;
  /** When the filter half-closed the stream (the client connection ended). */
  private finishAt = 0;
  private deadlineTimer?: NodeJS.Timeout;
  private deliveredAt = new Map<ReplicaLink, number>();
  /** Not reading the stream while a live replica is far behind (see holdIfBehind). */
  private holding = false;
  private stallTimer?: NodeJS.Timeout;
  private state: "open" | "finishing" | "done" = "open";
  started = false;
  /** The former primary this connection was on, once it was demoted (switchover). */
  private demoted: string | undefined;
  private readonly missed: MissedMembers;

  constructor(private readonly call: MirrorCall, private readonly ctx: SessionContext) {
    ctx.metrics.streamsActive.add(1);
    ctx.metrics.streamsTotal.add(1);
    this.missed = new MissedMembers(ctx.metrics);
    call.on("data", (frame: readonly Buffer[]) => this.onFrame(frame));
    call.on("end", () => this.finish());
    call.on("cancelled", () => this.abort());
    call.on("error", () => this.abort());
    call.on("close", () => this.abort());
    call.on("protocolError", (message: string) => { if (this.state !== "done") this.protocolError(message); });
  }

  get service(): string { return this.openFrame?.service ?? ""; }
  get primary(): string { return this.openFrame?.primary ?? ""; }
  get mirroredTo(): string[] { return this.links.map((l) => l.target.name); }

  private onFrame(raw: readonly Buffer[]): void {
    if (this.state !== "open") return;
    try {
      const f = decodeFilterFrame(raw);
      if (!this.openFrame && f.type !== "OPEN") throw new FrameError(`first frame must be OPEN, got ${f.type}`);
      if (f.type === "OPEN") return this.onOpen(f);
      this.checkOrder(f);
      if (!this.early) return this.apply(f);
      if (f.type === "DATA") {
        if (!this.ctx.budget.take(f.length)) {
          this.ctx.metrics.unmirrored.add(1, { service: this.service, reason: "relay_bound" });
          return this.fail(CallStatus.RESOURCE_EXHAUSTED, "the relay's memory bound is reached while this connection waits for its replica set");
        }
        this.earlyBytes += f.length;
      }
      this.early.push(f);
    } catch (err) {
      this.protocolError(err instanceof Error ? err.message : String(err));
    }
  }

  private onOpen(f: OpenFrame): void {
    if (this.openFrame) throw new FrameError("second OPEN on one stream");
    if (f.flags & ~OPEN_FLAG_REPLY_DIGESTS) throw new FrameError(`OPEN frame: unknown flags 0x${f.flags.toString(16).padStart(2, "0")}`);
    this.openFrame = f;
    this.ctx.sets.track(this);
    if (f.primary === "") {
      this.ctx.metrics.unmirrored.add(1, { service: f.service, reason: "no_primary" });
      this.ctx.log(`connection ${f.connectionId}: Envoy reported no primary address; not mirrored (no backend may get its bytes twice)`);
      this.startLinks([]);
      return;
    }
    if (this.ctx.sets.get(f.service)) { this.startLinks(this.ctx.sets.get(f.service)!); return; }
    // No set for this service yet (a relay just started, before the controller set it): hold
    // the frames (not acknowledged, so the filter's in-flight bound holds the client) a while.
    this.early = [];
    this.stopWaiting = this.ctx.sets.whenKnown(f.service, (targets) => {
      clearTimeout(this.waitTimer);
      const frames = this.early!;
      this.early = undefined;
      this.ctx.budget.give(this.earlyBytes);
      this.earlyBytes = 0;
      this.startLinks(targets);
      for (const frame of frames) if (this.state !== "done") this.apply(frame);
      if (this.finishAt) this.finish();
    });
    this.waitTimer = setTimeout(() => {
      this.stopWaiting?.();
      this.ctx.metrics.unmirrored.add(1, { service: f.service, reason: "no_replica_set" });
      this.fail(CallStatus.UNAVAILABLE, `service "${f.service}" has no replica set on this relay after ${this.ctx.config.limits.setWaitMs} ms ` +
        `(the controller sets it; without one nothing is mirrored); the filter counts this connection unmirrored`);
    }, this.ctx.config.limits.setWaitMs);
  }

  /** Frame-order checks, made on arrival (frames held for a replica set are replayed unchecked). */
  private checkOrder(f: FilterFrame): void {
    if (f.type === "DATA") {
      if (this.endedAt >= 0) throw new FrameError("DATA after END");
      if (f.offset !== this.received) throw new FrameError(`DATA at offset ${f.offset}, expected ${this.received}`);
      this.received += f.length;
      this.ctx.metrics.bytesReceived.add(f.length);
    } else if (f.type === "END") {
      if (f.totalBytes !== this.received) throw new FrameError(`END at ${f.totalBytes}, but ${this.received} bytes were received`);
      this.endedAt = f.totalBytes;
    } else if ((f.type === "REPLY_DIGEST" || f.type === "REPLY_END") && !(this.openFrame!.flags & OPEN_FLAG_REPLY_DIGESTS)) {
      throw new FrameError(`${f.type} on a stream opened without the REPLY_DIGESTS flag`);
    }
  }

  private apply(f: FilterFrame): void {
    switch (f.type) {
      case "DATA":
        if (f.length === 0) break;
        for (const link of this.links) link.push(f.parts, f.length);
        this.countDetached();
        this.holdIfBehind();
        this.scheduleAck(this.received - this.lastAckReceived >= this.ctx.config.ackEveryBytes);
        break;
      case "END":
        for (const link of this.links) link.end();
        this.scheduleAck(false);
        break;
      case "REPLY_DIGEST":
        this.check?.primaryDigests(f.firstWindow, f.crcs);
        break;
      case "REPLY_END":
        this.check?.primaryEnded(f.totalBytes, f.tailCrc, f.end);
        this.settleLinks();
        break;
    }
  }

  /** Its primary is a primary no more (a planned switchover): ask the filter to close the
   *  client connection. The stream then finishes as any other. Envoy closes the connection to
   *  the former primary without flushing (tcp_proxy on a local close), so what it had not yet
   *  written to it is lost, while the replicas, the new primary among them, got every byte: the
   *  former primary is counted as having missed this connection (`end`), unless it carried none. */
  demote(former: string): void {
    if (this.demoted || this.state !== "open" || this.call.destroyed) return;
    this.demoted = former;
    this.ctx.metrics.closedDemoted.add(1, { service: this.service });
    if (this.received !== 0) this.missed.count(this.service, former);
    this.ctx.log(`connection ${this.openFrame?.connectionId}: its primary ${this.primary} is a primary no more; asking Envoy to close it`);
    this.call.write(encodeClose("PRIMARY_DEMOTED"));
  }

  private startLinks(targets: readonly ReplicaTarget[]): void {
    const open = this.openFrame!;
    this.started = true;
    const former = this.ctx.sets.demotedMember(open.service, open.primary);
    if (former !== undefined) this.demote(former);
    const check = open.flags & OPEN_FLAG_REPLY_DIGESTS ? this.startCheck(open) : undefined;
    if (open.primary !== "") {
      for (const target of targets) {
        if (sameEndpoint(target.address, open.primary)) continue; // the connection's primary is never its own mirror
        const link: ReplicaLink = new ReplicaLink(open.service, target, this.ctx.config.limits, this.ctx.budget, this.ctx.metrics,
          { changed: () => this.onLinkChange(link), progress: () => { this.releaseIfCaughtUp(); this.scheduleAck(false); } },
          check && { bytes: (reply) => check.replicaBytes(link, reply) }, this.ctx.config.replicaWriteDelayMs);
        check?.addReplica(link);
        this.links.push(link);
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
      matched: (link) => { m.replicaRepliesMatched.add(1, labels(link)); this.settleLinks(); },
      compared: (link, windows) => m.replicaWindowsCompared.add(windows, labels(link)),
      abandoned: (link, why) => {
        m.replicaChecksAbandoned.add(1, labels(link));
        this.ctx.log(`reply check given up: service "${open.service}" replica "${link.target.name}" connection ${open.connectionId}: ${why}`);
        this.settleLinks();
      },
    });
    return this.check;
  }

  private scheduleAck(now: boolean): void {
    if (this.state === "done" || this.early) return;
    if (now) { this.sendAck(); return; }
    if (!this.ackTimer) this.ackTimer = setTimeout(() => this.sendAck(), this.ctx.config.ackIntervalMs);
  }

  private terminalLinks(): number {
    let n = 0;
    for (const link of this.links) if (link.terminal) n++;
    return n;
  }

  private sendAck(): void {
    if (this.ackTimer) { clearTimeout(this.ackTimer); this.ackTimer = undefined; }
    if (this.state === "done" || this.call.destroyed || this.early) return;
    this.lastAckReceived = this.received;
    this.terminalAcked = this.terminalLinks();
    this.call.write(encodeAck(this.received, this.links.map((link) => link.progress())));
  }

  /** The filter half-closed the stream: the client connection is over. Deliver, judge, end. */
  private finish(): void {
    if (this.state !== "open") return;
    if (!this.finishAt) this.finishAt = Date.now();
    if (this.early) return; // once the set is known (or the wait is over)
    this.state = "finishing";
    for (const link of this.links) link.end();
    this.settleLinks();
  }

  /** A link connected, detached, took its last bytes or its replica closed: judge, then ACK. */
  private onLinkChange(link: ReplicaLink): void {
    this.countDetached();
    if (link.terminal) this.check?.giveUp(link, `the replica left the connection (${link.state}${link.reason !== "NONE" ? `, ${link.reason}` : ""}) before its replies could be judged`);
    this.releaseIfCaughtUp();
    this.settleLinks();
  }

  /**
   * Finish every link that took all of the connection's bytes once its replies are judged: at
   * once if its verdict is in (or there is no check) and its replica closed or the client's
   * connection is over; a replica still answering after the client's connection ended gets
   * replyWaitMs, then its check is given up. A link still short of bytes finishTimeoutMs after
   * the end missed them (STALLED). Completes the session when every link is done.
   */
  private settleLinks(): void {
    if (this.state === "done") return;
    const now = Date.now();
    const limits = this.ctx.config.limits;
    let next = Infinity;
    for (const link of this.links) {
      if (link.terminal) continue;
      if (!link.delivered) {
        if (this.state !== "finishing") continue;
        // Still taking the last bytes: fine while it takes some (a slow replica is not stalled),
        // up to finishTimeoutMs in all.
        if (link.state === "LIVE") this.sampleProgress([link], now);
        const stalled = link.state === "LIVE" && now - link.lastProgressAt >= limits.stallTimeoutMs;
        if (stalled || now >= this.finishAt + limits.finishTimeoutMs) link.detach("STALLED");
        else next = Math.min(next, now + this.stallCheckMs, this.finishAt + limits.finishTimeoutMs);
        continue;
      }
      if (!this.deliveredAt.has(link)) this.deliveredAt.set(link, now);
      if (this.check?.verdict(link) === "open" && link.closed) this.check.replicaEnded(link); // its replies are all there are
      if (link.terminal) continue; // judged diverged just now
      const judged = (this.check?.verdict(link) ?? "none") !== "open";
      // It closed (so it read every byte): done once judged. Else give it replyWaitMs after the
      // client's connection ended to read the last bytes and answer, then close it.
      if (link.closed && judged) { link.finish(); continue; }
      if (this.state !== "finishing") continue;
      const deadline = Math.max(this.finishAt, this.deliveredAt.get(link)!) + limits.replyWaitMs;
      if (now < deadline) { next = Math.min(next, deadline); continue; }
      // Closing a socket whose bytes the replica has not acknowledged could lose them (the
      // kernel may reset an orphaned connection): wait until it has, while it takes some.
      const unacknowledged = unacknowledgedBytes([link.tcp], this.stallCheckMs / 2).get(link.tcp);
      if (unacknowledged !== undefined && unacknowledged > 0) {
        link.tookBytes(now, unacknowledged);
        if (now - link.lastProgressAt >= limits.stallTimeoutMs || now >= this.finishAt + limits.finishTimeoutMs) link.detach("STALLED");
        else next = Math.min(next, now + this.stallCheckMs);
        continue;
      }
      this.check?.giveUp(link, `its replies did not reach the primary's within ${limits.replyWaitMs} ms of the client's close`);
      if (!link.terminal) link.finish();
    }
    if ((this.state as string) === "done") return; // completed by a link finished above
    if (this.state === "finishing" && this.links.every((l) => l.terminal)) return this.complete();
    // A replica that left an open connection is reported at once; any other change (connected,
    // delivered, or a replica done on a finishing connection, whose final ACK is near) goes with
    // the next timed ACK: each ACK costs Envoy a message into the filter.
    this.scheduleAck(this.state === "open" && this.terminalLinks() !== this.terminalAcked);
    if (this.deadlineTimer) { clearTimeout(this.deadlineTimer); this.deadlineTimer = undefined; }
    if (next !== Infinity) this.deadlineTimer = setTimeout(() => this.settleLinks(), Math.max(1, next - now));
  }

  private get highWater(): number { return this.ctx.config.limits.maxLagBytesPerConnection / 4; }
  /** How often a replica's progress is sampled while it holds the connection back. */
  private get stallCheckMs(): number { return Math.max(10, Math.min(100, this.ctx.config.limits.stallTimeoutMs / 5)); }

  /** Backpressure: while a live replica is behind by more than the high-water mark, stop
   *  reading the stream (HTTP/2 flow control then holds Envoy, whose filter pauses the client).
   *  A connected replica that takes no bytes for stallTimeoutMs meanwhile is detached. */
  private holdIfBehind(): void {
    if (this.holding || !this.links.some((link) => !link.terminal && link.lag > this.highWater)) return;
    this.holding = true;
    this.call.pause();
    this.stallTimer = setInterval(() => {
      const now = Date.now();
      this.sampleProgress(this.links.filter((link) => !link.terminal && link.state === "LIVE" && link.lag > 0), now);
      for (const link of this.links) {
        if (link.terminal || link.state !== "LIVE" || link.lag === 0) continue;
        if (now - link.lastProgressAt >= this.ctx.config.limits.stallTimeoutMs) link.detach("STALLED");
      }
      this.releaseIfCaughtUp();
    }, this.stallCheckMs);
  }

  /** Note which replicas took bytes; the kernel's queues are read only for those that showed
   *  no progress for half the stall timeout (a slow reader's progress hides in its buffers). */
  private sampleProgress(links: readonly ReplicaLink[], now: number): void {
    const quiet = links.filter((link) => !link.tookBytes(now) && now - link.lastProgressAt >= this.ctx.config.limits.stallTimeoutMs / 2);
    if (quiet.length === 0) return;
    const unacknowledged = unacknowledgedBytes(quiet.map((link) => link.tcp), this.stallCheckMs / 2);
    for (const link of quiet) link.tookBytes(now, unacknowledged.get(link.tcp));
  }

  private releaseIfCaughtUp(): void {
    if (!this.holding || this.links.some((link) => !link.terminal && link.lag > this.highWater / 2)) return;
    this.holding = false;
    if (this.stallTimer) clearInterval(this.stallTimer);
    this.stallTimer = undefined;
    if (this.state === "open") this.call.resume();
  }

  private complete(): void {
    if (this.state === "done") return;
    this.sendAck();
    this.end(true);
    this.call.end();
  }

  /** A replica cut loose from a connection that carried bytes missed them: counted now. */
  private countDetached(): void {
    if (this.received === 0) return;
    for (const link of this.links) if (link.state === "DETACHED") this.missed.count(this.service, link.target.name);
  }

  /** The stream was reset (Envoy cancelled it, or the connection to Envoy broke). */
  private abort(): void {
    if (this.state === "done") return;
    const lost = this.state === "open" || this.links.some((link) => !link.terminal);
    for (const link of this.links) link.abandon();
    if (lost) this.ctx.metrics.streamsLost.add(1);
    this.end(false);
  }

  private protocolError(message: string): void {
    this.ctx.metrics.protocolErrors.add(1);
    this.ctx.log(`protocol error on connection ${this.openFrame?.connectionId ?? "?"}: ${message}; stream closed`);
    for (const link of this.links) link.detach("PROTOCOL");
    this.sendAck();
    this.fail(CallStatus.INVALID_ARGUMENT, message);
  }

  /** End the stream with an error status. */
  private fail(code: CallStatusCode, details: string): void {
    for (const link of this.links) link.abandon();
    this.end(false);
    this.call.end(code, details);
  }

  /**
   * The session is over: count, per replica, whether it did not provably take every client byte
   * of the connection (the controller reads this): only a replica CLOSED did, having
   * acknowledged every byte at the TCP level; any other missed some, unless the connection
   * carried none (a reset stream's total is unknown: the primary may have taken bytes that
   * never reached the relay).
   */
  private end(complete: boolean): void {
    const total = complete ? this.received : this.endedAt;
    for (const link of this.links) {
      // Only CLOSED proves it: a replica cut loose may not have received what its socket held.
      if (link.state !== "CLOSED" && total !== 0) this.missed.count(this.service, link.target.name);
    }
    if (this.demoted && this.received !== 0) this.missed.count(this.service, this.demoted);
    this.state = "done";
    this.stopWaiting?.();
    if (this.openFrame) this.ctx.sets.untrack(this);
    if (this.early) { this.ctx.budget.give(this.earlyBytes); this.early = undefined; this.earlyBytes = 0; }
    for (const t of [this.ackTimer, this.waitTimer, this.deadlineTimer]) if (t) clearTimeout(t);
    if (this.stallTimer) clearInterval(this.stallTimer);
    this.ackTimer = this.waitTimer = this.deadlineTimer = this.stallTimer = undefined;
    this.ctx.metrics.streamsActive.add(-1);
  }
}
