// One client connection in session mode (docs/SESSION.md): Envoy's tcp_proxy tunnels it to the
// relay as an HTTP/2 CONNECT stream whose authority names the service. The relay opens one
// TCP connection to every member of the service's set (its leader, the primary, among them),
// writes each client byte to each exactly once, in order, and sends the client the leader's
// replies; every other member's replies are compared with them (ReplySplice). When the leader
// fails, the service's named successor takes over (SessionLeaders) and the client's stream
// goes on from the byte it has reached: nothing is repeated, nothing skipped.
//
// Telling a failure from a normal close: a reset, a connect failure, a stall (no bytes taken
// for stallTimeoutMs while behind) or silence (another member answered what the leader has not,
// for stallTimeoutMs) is a failure. A FIN from the leader is a normal close (the protocol's
// QUIT, an idle timeout) only if its server still accepts connections: the relay connects to
// it once and keeps the connection PROBE_HOLD_MS; a refused, reset or unanswered connect is a
// failure (kill -9 closes a process's connections with FINs, and its listening socket with
// them, sometimes after them). Another member that matched and closed at the same byte agrees.
//
//   waiting (no leader known yet; setWaitMs, then 503)
//     └─► open ── client END_STREAM / leader's normal close ─► (both) finishing: members take
//                  their last bytes, followers' replies judged ─► done
// A member cut loose while the connection carried bytes is counted missed at once (MissedMembers).
import { connect } from "node:net";
import { constants as h2, type ServerHttp2Stream } from "node:http2";
import { ReplicaLink } from "./replica-link.ts";
import { ReplySplice } from "./reply-splice.ts";
import { unacknowledgedBytes } from "./kernel-queue.ts";
import { splitHostPort } from "../config/address.ts";
import type { ReplicaTarget } from "./config.ts";
import type { SessionContext } from "./mirror-session.ts";
import type { LedConnection, SessionLeaders } from "./session-leaders.ts";
import type { OpenConnection } from "./replica-sets.ts";
import { MissedMembers } from "./missed-members.ts";

export interface SessionModeContext extends SessionContext {
  readonly leaders: SessionLeaders;
}

/** How long a probe connection must stay open to count: a process being killed closes its
 *  connections one by one, its listening socket maybe last, and resets what that socket had
 *  accepted meanwhile. */
const PROBE_HOLD_MS = 50;

/** Whether a server accepts a new connection at `address` and keeps it PROBE_HOLD_MS, all
 *  within `timeoutMs`. */
function acceptsConnections(address: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(splitHostPort(address));
    let settled = false;
    const done = (alive: boolean) => { if (settled) return; settled = true; s.destroy(); clearTimeout(timer); resolve(alive); };
    const timer = setTimeout(() => done(false), Math.max(timeoutMs, PROBE_HOLD_MS + 1));
    s.once("connect", () => setTimeout(() => done(!s.destroyed && s.readyState === "open"), PROBE_HOLD_MS));
    s.once("error", () => done(false));
    s.once("end", () => done(false));
    s.once("close", () => done(false));
  });
}

export class SessionConnection implements LedConnection, OpenConnection {
  private readonly links = new Map<string, ReplicaLink>();
  private splice?: ReplySplice<ReplicaLink>;
  private leaderName = "";
  private state: "waiting" | "open" | "finishing" | "done" = "waiting";
  private received = 0;
  private clientEnded = false;
  private repliesEnded = false;
  /** The leader's FIN is being judged (a normal close or a failure). */
  private judgingClose = false;
  private finishAt = 0;
  private deliveredAt = new Map<ReplicaLink, number>();
  private holding = false;
  private repliesPaused = false;
  private stallTimer?: NodeJS.Timeout;
  private deadlineTimer?: NodeJS.Timeout;
  private waitTimer?: NodeJS.Timeout;
  private silenceTimer?: NodeJS.Timeout;
  private stopWaiting?: () => void;
  readonly primary = ""; // OpenConnection: a session connection's leader is one of its links
  private readonly missed: MissedMembers;
  started = false;

  constructor(private readonly stream: ServerHttp2Stream, readonly service: string, private readonly ctx: SessionModeContext) {
    ctx.metrics.sessionsActive.add(1, { service });
    ctx.metrics.sessionsTotal.add(1, { service });
    this.missed = new MissedMembers(ctx.metrics);
    stream.on("close", () => this.streamClosed());
    const leader = ctx.leaders.leader(service);
    const targets = ctx.sets.get(service);
    if (leader !== undefined && targets?.some((t) => t.name === leader)) { this.start(targets, leader); return; }
    // No set or no primary yet (a relay just started): wait for the controller's.
    const tryStart = () => {
      const l = ctx.leaders.leader(service);
      const t = ctx.sets.get(service);
      if (l === undefined || !t?.some((x) => x.name === l)) return false;
      clearTimeout(this.waitTimer);
      this.start(t, l);
      return true;
    };
    const wait = () => { if (this.state === "waiting") this.stopWaiting = ctx.sets.whenKnown(service, () => { if (!tryStart() && this.state === "waiting") setTimeout(wait, 10); }); };
    wait();
    this.waitTimer = setTimeout(() => {
      if (this.state !== "waiting") return;
      this.stopWaiting?.();
      this.refuse(`service "${service}" has no primary on this relay after ${ctx.config.limits.setWaitMs} ms (the controller sets it)`);
    }, ctx.config.limits.setWaitMs);
  }

  get mirroredTo(): string[] { return [...this.links.keys()]; }
  demote(): void { /* session connections move (SessionLeaders), never close on a switchover */ }

  private get limits() { return this.ctx.config.limits; }

  private refuse(why: string): void {
    this.ctx.metrics.sessionReset.add(1, { service: this.service, reason: "no_leader" });
    this.ctx.log(`session connection of "${this.service}" refused: ${why}`);
    if (!this.stream.headersSent && !this.stream.destroyed) this.stream.respond({ ":status": 503 }, { endStream: true });
    this.end();
  }

  private start(targets: readonly ReplicaTarget[], leader: string): void {
    if (this.state !== "waiting" || this.stream.destroyed) return;
    this.state = "open";
    this.started = true;
    this.leaderName = leader;
    this.ctx.leaders.track(this);
    this.ctx.sets.track(this);
    for (const target of targets) {
      const link: ReplicaLink = new ReplicaLink(this.service, target, this.limits, this.ctx.budget, this.ctx.metrics,
        { changed: () => this.onLinkChange(link), progress: () => this.releaseIfCaughtUp(), replyEnd: () => this.onLinkChange(link) },
        { bytes: (reply) => this.onReply(link, reply) });
      this.links.set(target.name, link);
    }
    const leaderLink = this.links.get(leader)!;
    const kept = this.limits.maxLagBytesPerConnection;
    this.splice = new ReplySplice<ReplicaLink>(leaderLink, [...this.links.values()].filter((l) => l !== leaderLink), { aheadBytes: kept, behindBytes: kept, budget: this.ctx.budget }, {
      send: (bytes) => this.toClient(bytes),
      diverged: (link, offset, detail) => {
        this.ctx.metrics.replicaDivergences.add(1, { service: this.service, replica: link.target.name });
        this.ctx.log(`divergence: service "${this.service}" member "${link.target.name}" at reply offset ${offset}: ${detail}; detached from this connection (DIVERGED)`);
        if (link === this.leaderLink) return this.reset("not_eligible", `its new leader ${link.target.name} diverged while catching up`);
        link.detach("DIVERGED");
      },
      overflowed: (link, why) => {
        this.ctx.metrics.replicaChecksAbandoned.add(1, { service: this.service, replica: link.target.name });
        if (link === this.leaderLink) this.reset("not_eligible", `its new leader ${link.target.name} could not be checked: ${why}`);
      },
    });
    this.stream.respond({ ":status": 200 });
    this.stream.on("data", (chunk: Buffer) => this.fromClient(chunk));
    this.stream.on("end", () => this.clientEnd());
  }

  private get leaderLink(): ReplicaLink | undefined { return this.links.get(this.leaderName); }

  private fromClient(chunk: Buffer): void {
    if (this.state !== "open" && this.state !== "finishing") return;
    this.received += chunk.length;
    this.ctx.metrics.bytesReceived.add(chunk.length);
    // Every member, the leader too after its FIN: a server that half-closed may still read.
    for (const link of this.links.values()) link.push(chunk);
    this.countDetached();
    this.holdIfBehind();
  }

  private onReply(link: ReplicaLink, reply: Buffer): void {
    const splice = this.splice!;
    const wasAhead = splice.ahead(link) > 0;
    splice.bytes(link, reply);
    // Another member answered what the leader has not: the leader must answer within stallTimeoutMs.
    if (!wasAhead && link !== this.leaderLink && splice.ahead(link) > 0) this.watchSilence();
  }

  private watchSilence(): void {
    if (this.silenceTimer) return;
    const sentAt = this.splice!.sent;
    this.silenceTimer = setTimeout(() => {
      this.silenceTimer = undefined;
      if (this.state === "done" || !this.splice) return;
      const someoneAhead = [...this.links.values()].some((l) => l !== this.leaderLink && !l.terminal && this.splice!.ahead(l) > 0);
      if (!someoneAhead) return;
      if (this.splice.sent === sentAt) return this.leaderFailed(`silent for ${this.limits.stallTimeoutMs} ms while another member answered`);
      this.watchSilence();
    }, this.limits.stallTimeoutMs);
  }

  private toClient(bytes: Buffer): void {
    if (this.repliesEnded || this.stream.destroyed) return;
    if (!this.stream.write(bytes) && !this.repliesPaused) {
      // The client is slow: stop reading every member's replies (none runs ahead unbounded).
      this.repliesPaused = true;
      for (const l of this.links.values()) l.pauseReplies();
      this.stream.once("drain", () => {
        this.repliesPaused = false;
        for (const l of this.links.values()) l.resumeReplies();
      });
    }
  }

  private onLinkChange(link: ReplicaLink): void {
    if (this.state === "done") return;
    this.countDetached();
    if (link === this.leaderLink && !this.repliesEnded) {
      // Closed by its server (a FIN, or a reset with client bytes it never took): judged.
      const closedByServer = link.repliesOver || link.closed || (link.state === "DETACHED" && link.reason === "REPLICA_CLOSED");
      if (closedByServer) { if (!this.judgingClose) this.judgeClose(link); return; }
      if (link.state === "DETACHED") return this.leaderFailed(`its connection failed (${link.reason})`);
    } else if (link.terminal && link !== this.leaderLink) {
      this.splice?.drop(link);
    }
    this.releaseIfCaughtUp();
    if (this.state === "finishing") this.settle();
  }

  /** The leader closed its side: normal if its server still takes connections, else a failure. */
  private judgeClose(link: ReplicaLink): void {
    this.judgingClose = true;
    // Every other member that is still in step and closed at the same point agrees: normal.
    const agreed = [...this.links.values()].some((l) => l !== link && (l.closed || l.repliesOver) && this.splice!.endsWithR(l));
    const decide = (alive: boolean) => {
      if (this.state === "done" || this.leaderLink !== link) return;
      if (alive) return this.repliesOver();
      this.judgingClose = false;
      this.leaderFailed("it closed the connection and its server refuses new ones");
    };
    if (agreed) return decide(true);
    acceptsConnections(link.target.address, this.limits.stallTimeoutMs).then(decide);
  }

  /** The leader ended its replies normally: so does the client's stream (a half-close). */
  private repliesOver(): void {
    this.repliesEnded = true;
    if (!this.stream.destroyed) this.stream.end();
    if (this.clientEnded) this.beginFinish();
  }

  private leaderFailed(why: string): void {
    const from = this.leaderName;
    this.ctx.leaders.failed(this.service, from, why);
    if (this.leaderName === from && this.state !== "done") {
      this.reset("leader_failed", `its leader ${from} failed (${why}) and no successor is named`);
    }
  }

  /** A member cut loose from a connection that carried bytes (the former leader after a
   *  takeover among them) missed them: counted now, not when the connection ends. */
  private countDetached(): void {
    if (this.received === 0) return;
    for (const link of this.links.values()) if (link.state === "DETACHED") this.missed.count(this.service, link.target.name);
  }

  /** SessionLeaders: `from` failed (or was replaced); `to` takes this connection over if it may. */
  moveLeader(from: string, to: string, why: string): "carried" | "reset" | "unaffected" {
    if (this.state === "done" || this.state === "waiting" || this.leaderName !== from || this.repliesEnded) return "unaffected";
    const old = this.links.get(from)!;
    const next = this.links.get(to);
    if (!next || next.terminal || !this.splice!.takeOver(next)) {
      this.reset("not_eligible", `${to} may not take it over (${!next ? "not a member when it opened" : next.terminal ? `it left the connection: ${next.reason}` : `its replies ${this.splice!.state(next)}`})`);
      return "reset";
    }
    this.leaderName = to;
    this.judgingClose = false;
    old.fence();
    this.ctx.log(`session connection of "${this.service}": ${to} took over from ${from} (${why}) at reply byte ${this.splice!.sent}, client byte ${this.received}`);
    if (next.closed || next.repliesOver) this.judgeClose(next);
    return "carried";
  }

  /** End the client's connection with a reset (it never gets bytes that differ). The members
   *  still take every byte the client sent. */
  private reset(reason: string, why: string): void {
    if (this.repliesEnded && this.clientEnded) return;
    this.ctx.metrics.sessionReset.add(1, { service: this.service, reason });
    if (reason === "not_eligible") this.ctx.leaders.resetLater(this.service);
    this.ctx.log(`session connection of "${this.service}" reset: ${why}`);
    this.repliesEnded = true;
    this.clientEnded = true;
    this.closeStream(h2.NGHTTP2_CANCEL);
    this.beginFinish();
  }

  private clientEnd(): void {
    if (this.clientEnded) return;
    this.clientEnded = true;
    for (const link of this.links.values()) link.end();
    if (this.repliesEnded) this.beginFinish();
  }

  /** The stream is gone (both sides ended, or Envoy reset it: the client went away). */
  private streamClosed(): void {
    if (this.state === "waiting") { this.stopWaiting?.(); return this.end(); }
    if (this.state === "done") return;
    this.clientEnded = this.repliesEnded = true;
    this.beginFinish();
  }

  private beginFinish(): void {
    if (this.state === "finishing" || this.state === "done") return;
    this.state = "finishing";
    this.finishAt = Date.now();
    for (const link of this.links.values()) link.end();
    this.settle();
  }

  /**
   * Finish every member once it took all of the connection's bytes: at once if it closed (a
   * follower then matched if it produced exactly the client's stream, else diverged), else
   * after replyWaitMs (and once the kernel says the member acknowledged every byte). A member
   * still short of bytes finishTimeoutMs after the end, or taking none for stallTimeoutMs,
   * missed them (STALLED).
   */
  private settle(): void {
    if (this.state !== "finishing") return;
    const now = Date.now();
    let next = Infinity;
    for (const link of this.links.values()) {
      if (link.terminal) continue;
      if (!link.delivered) {
        if (link.state === "LIVE") link.tookBytes(now);
        const stalled = link.state === "LIVE" && now - link.lastProgressAt >= this.limits.stallTimeoutMs;
        if (stalled || now >= this.finishAt + this.limits.finishTimeoutMs) link.detach("STALLED");
        else next = Math.min(next, now + 50, this.finishAt + this.limits.finishTimeoutMs);
        continue;
      }
      if (!this.deliveredAt.has(link)) this.deliveredAt.set(link, now);
      if (link.closed || (link.repliesOver && link.delivered)) { this.judge(link); continue; }
      const deadline = Math.max(this.finishAt, this.deliveredAt.get(link)!) + this.limits.replyWaitMs;
      if (now < deadline) { next = Math.min(next, deadline); continue; }
      const unacknowledged = unacknowledgedBytes([link.tcp], this.limits.stallTimeoutMs / 10).get(link.tcp);
      if (unacknowledged !== undefined && unacknowledged > 0) {
        link.tookBytes(now, unacknowledged);
        if (now - link.lastProgressAt >= this.limits.stallTimeoutMs) link.detach("STALLED");
        else next = Math.min(next, now + 50);
        continue;
      }
      link.finish();
    }
    if ((this.state as string) === "done") return;
    if ([...this.links.values()].every((l) => l.terminal)) return this.end();
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = next === Infinity ? undefined : setTimeout(() => this.settle(), Math.max(1, next - now));
  }

  /** A follower whose replies are over: the same as the client's stream, or diverged. */
  private judge(link: ReplicaLink): void {
    const splice = this.splice!;
    if (link !== this.leaderLink && splice.state(link) === "in" && this.repliesEnded) {
      const labels = { service: this.service, replica: link.target.name };
      if (splice.endsWithR(link) && splice.ahead(link) === 0) this.ctx.metrics.replicaRepliesMatched.add(1, labels);
      else {
        this.ctx.metrics.replicaDivergences.add(1, labels);
        this.ctx.log(`divergence: service "${this.service}" member "${link.target.name}" answered ${splice.produced(link)} bytes, the client's stream has ${splice.sent}; DIVERGED`);
        return link.detach("DIVERGED");
      }
    }
    link.finish();
  }

  private get highWater(): number { return this.limits.maxLagBytesPerConnection / 4; }

  /** Backpressure: while a member is behind by more than the high-water mark, stop reading the
   *  client's stream (HTTP/2 flow control holds Envoy, then the client). A member taking no
   *  bytes for stallTimeoutMs meanwhile is detached (the leader: a failure, so a takeover). */
  private holdIfBehind(): void {
    if (this.holding || ![...this.links.values()].some((l) => !l.terminal && l.lag > this.highWater)) return;
    this.holding = true;
    this.stream.pause();
    this.stallTimer = setInterval(() => {
      const now = Date.now();
      for (const link of this.links.values()) {
        if (link.terminal || link.state !== "LIVE" || link.lag === 0) continue;
        const quiet = !link.tookBytes(now) && now - link.lastProgressAt >= this.limits.stallTimeoutMs / 2;
        if (quiet) link.tookBytes(now, unacknowledgedBytes([link.tcp], this.limits.stallTimeoutMs / 10).get(link.tcp));
        if (now - link.lastProgressAt >= this.limits.stallTimeoutMs) link.detach("STALLED");
      }
      this.releaseIfCaughtUp();
    }, Math.max(10, Math.min(100, this.limits.stallTimeoutMs / 5)));
  }

  private releaseIfCaughtUp(): void {
    if (!this.holding || [...this.links.values()].some((l) => !l.terminal && l.lag > this.highWater / 2)) return;
    this.holding = false;
    clearInterval(this.stallTimer);
    this.stallTimer = undefined;
    if (!this.stream.destroyed) this.stream.resume();
  }

  /** Over: count every member that did not provably take every client byte (only CLOSED did). */
  private end(): void {
    if (this.state === "done") return;
    const started = this.state !== "waiting";
    this.state = "done";
    for (const link of this.links.values()) {
      if (!link.terminal) link.abandon();
      if (link.state !== "CLOSED" && this.received !== 0) this.missed.count(this.service, link.target.name);
    }
    this.splice?.dispose();
    for (const t of [this.deadlineTimer, this.waitTimer, this.silenceTimer]) if (t) clearTimeout(t);
    if (this.stallTimer) clearInterval(this.stallTimer);
    if (started) { this.ctx.leaders.untrack(this); this.ctx.sets.untrack(this); }
    this.ctx.metrics.sessionsActive.add(-1, { service: this.service });
    this.closeStream(h2.NGHTTP2_CANCEL);
  }

  /** Reset the stream, unless its replies side has ended (it then closes by itself once the
   *  client's side ends: Node 20 spins when a stream is closed while its end is being sent). */
  private closeStream(code: number): void {
    if (!this.stream.destroyed && !this.stream.writableEnded) this.stream.close(code);
  }
}
