// The plugin's root context: reads the configuration, owns every connection's mirror (gRPC
// callbacks arrive here and are routed by token, and on a shared stream by channel), enforces
// the in-flight bounds (a connection whose next bytes would pass one waits, its bytes held by
// Envoy, until the relay catches up) and reaps mirrors whose relay never answered.
import { RootContext, NetworkContext } from "../abi/context";
import { BufferType, GrpcStatus } from "../abi/constants";
import * as host from "../abi/host";
import { parseMirrorConfig, MirrorConfig } from "./config";
import { decodeAck, decodeClose, decodeStatus, lastDecodeError, Ack, ChannelStatus, FRAME_CLOSE, FRAME_STATUS, CHANNEL_BYTES, MIRROR_SERVICE, MIRROR_METHOD } from "./frames";
import { MirrorStats } from "./stats";
import { MirrorConnection, STATE_IDLE, STATE_CLOSING, STATE_DONE, STATE_NO_REPLICAS } from "./connection";
import { SharedStreams } from "./shared-streams";
import { MirrorFilter } from "./filter";
import { EnvoyInstance } from "./instance";

/** Checks paused connections (resume, stall timeout) and streams the relay never finished. */
const TICK_PERIOD_MS: u32 = 100;

export class MirrorRoot extends RootContext {
  config: MirrorConfig = new MirrorConfig();
  stats: MirrorStats | null = null;
  grpcService: ArrayBuffer = new ArrayBuffer(0);
  /** Mirrors whose stream or channel is open, by context id (= channel id). */
  active: Map<u32, MirrorConnection> = new Map();
  /** Streams of their own (mirror_streams 0), by token. */
  ownStreams: Map<u32, MirrorConnection> = new Map();
  /** The worker's shared streams (mirror_streams >= 1). */
  shared: SharedStreams | null = null;
  /** Bytes sent and not yet acknowledged, over all this worker's connections. */
  inflightTotal: u64 = 0;
  /** Streams whose client connection is over while the relay still finishes them. */
  finishingStreams: u64 = 0;
  /** Connections waiting, in arrival order, for a finishing stream to end before theirs opens. */
  awaitingStream: MirrorConnection[] = [];
  instance: EnvoyInstance | null = null;

  onConfigure(size: usize): bool {
    const raw = host.getBufferBytes(BufferType.PLUGIN_CONFIGURATION, 0, size);
    const parsed = parseMirrorConfig(raw === null ? "" : String.UTF8.decode(raw));
    if (parsed.config === null) {
      host.logCritical("lockstep: invalid plugin configuration: " + parsed.error);
      return false;
    }
    this.config = changetype<MirrorConfig>(parsed.config);
    this.stats = new MirrorStats(this.config.service);
    this.grpcService = host.grpcServiceForCluster(this.config.relayCluster);
    if (this.config.mirrorStreams > 0) this.shared = new SharedStreams(this.config.mirrorStreams, this.config.mirrorStreamLifetimeMs * 1_000_000, this.grpcService);
    host.setTickPeriodMilliseconds(TICK_PERIOD_MS);
    const instance = new EnvoyInstance();
    instance.publish();
    this.instance = instance;
    host.logInfo("lockstep: mirroring service \"" + this.config.service + "\" through cluster \"" + this.config.relayCluster + "\"");
    return true;
  }

  createNetworkContext(contextId: u32): NetworkContext {
    const stats = changetype<MirrorStats>(this.stats);
    stats.add(stats.connections, 1);
    return new MirrorFilter(contextId, this, new MirrorConnection(contextId, this.config, stats));
  }

  /** Start `mirror` if it has not started: a channel on the next shared stream, or a stream of
   *  its own (mirror_streams 0). */
  open(mirror: MirrorConnection): void {
    if (mirror.state != STATE_IDLE) return;
    const shared = this.shared;
    if (shared === null) mirror.start(host.grpcStream(this.grpcService, MIRROR_SERVICE, MIRROR_METHOD), 0);
    else mirror.start(shared.take(host.nowNanoseconds()), mirror.contextId);
    if (mirror.token == 0) return;
    this.active.set(mirror.contextId, mirror);
    if (mirror.channel == 0) this.ownStreams.set(mirror.token, mirror);
  }

  private forget(mirror: MirrorConnection): void {
    if (!this.active.has(mirror.contextId)) return;
    this.active.delete(mirror.contextId);
    if (mirror.channel == 0) this.ownStreams.delete(mirror.token);
    else changetype<SharedStreams>(this.shared).release(mirror.token);
  }

  /** Whether a connection's stream must wait before it opens: as many streams as the bound
   *  are still finishing for clients already gone (or others wait before it). */
  mustAwaitStream(mirror: MirrorConnection): bool {
    if (mirror.awaitingStream) return true;
    if (mirror.state != STATE_IDLE) return false;
    return this.finishingStreams >= this.config.maxFinishingStreams || this.awaitingStream.length > 0;
  }

  /** Hold a connection's bytes until its stream may open. */
  awaitStream(mirror: MirrorConnection, size: usize, endOfStream: bool): void {
    if (!mirror.awaitingStream) { mirror.awaitingStream = true; this.awaitingStream.push(mirror); }
    this.hold(mirror, size, endOfStream);
  }

  /** The client connection is over: half-close its stream; it is finishing until the relay ends it. */
  finish(mirror: MirrorConnection): void {
    if (mirror.awaitingStream) this.stopAwaiting(mirror); // its held bytes never reached the primary
    mirror.finish(host.nowNanoseconds());
    if ((mirror.state == STATE_CLOSING || mirror.state == STATE_NO_REPLICAS) && !mirror.finishing) {
      mirror.finishing = true;
      this.finishingStreams++;
    }
  }

  private stopAwaiting(mirror: MirrorConnection): void {
    mirror.awaitingStream = false;
    const i = this.awaitingStream.indexOf(mirror);
    if (i >= 0) this.awaitingStream.splice(i, 1);
  }

  /** Connections that waited the stall timeout for a stream go on unmirrored (counted): the
   *  relay is not finishing streams. */
  private giveUpAwaiting(now: u64, stallLimit: u64): void {
    while (this.awaitingStream.length > 0 && now - this.awaitingStream[0].pausedSinceNs > stallLimit) {
      const mirror = this.awaitingStream.shift();
      mirror.awaitingStream = false;
      host.logWarn("lockstep: connection " + mirror.contextId.toString() + " waited " + this.config.relayStallTimeoutMs.toString() +
        " ms for the relay to finish " + this.finishingStreams.toString() + " streams of closed connections; it goes on unmirrored");
      const stats = changetype<MirrorStats>(this.stats);
      stats.add(stats.overflows, 1);
      mirror.forgo();
      if (!host.setEffectiveContext(mirror.contextId)) continue;
      this.pass(mirror, mirror.heldBytes, false);
      host.continueDownstream();
    }
  }

  /** Open the streams of waiting connections while the bound allows, oldest first. */
  private admitAwaiting(): void {
    while (this.awaitingStream.length > 0 && this.finishingStreams < this.config.maxFinishingStreams) {
      const mirror = this.awaitingStream.shift();
      mirror.awaitingStream = false;
      if (!host.setEffectiveContext(mirror.contextId)) continue; // the connection is gone
      this.open(mirror);
      this.pass(mirror, mirror.heldBytes, false);
      host.continueDownstream();
    }
  }

  /** Whether `size` more bytes would pass a bound while the relay still holds some: then the
   *  connection waits (PAUSE) with the bytes unsent. A connection with nothing in flight always
   *  goes on (one read may pass the bound: at most 1 MiB, Envoy's read size). */
  mustWait(mirror: MirrorConnection, size: usize): bool {
    if (!mirror.mirroring) return false;
    return (mirror.inflight > 0 && mirror.inflight + size > this.config.maxInflightBytesPerConnection) ||
      (this.inflightTotal > 0 && this.inflightTotal + size > this.config.maxInflightBytesTotal);
  }

  /** Hold the connection's bytes (Envoy keeps them; `size` is its whole buffer by now). */
  hold(mirror: MirrorConnection, size: usize, endOfStream: bool): void {
    mirror.heldBytes = size;
    if (endOfStream) mirror.endHeld = true;
    if (mirror.paused) return;
    mirror.paused = true;
    mirror.pausedSinceNs = host.nowNanoseconds();
    const stats = changetype<MirrorStats>(this.stats);
    stats.add(stats.pauses, 1);
  }

  /** `size` bytes of DOWNSTREAM_DATA go on to the primary: mirror them first. */
  pass(mirror: MirrorConnection, size: usize, endOfStream: bool): void {
    const before = mirror.sent;
    mirror.paused = false;
    mirror.heldBytes = 0;
    mirror.passDownstream(size);
    this.inflightTotal += mirror.sent - before;
    if (endOfStream || mirror.endHeld) mirror.endDownstream();
    mirror.endHeld = false;
  }

  /** Let a paused connection's bytes go on (mirrored as they go) once the relay has caught up,
   *  or at once (`force`) when its mirror is gone. */
  private maybeResume(mirror: MirrorConnection, force: bool): void {
    if (!mirror.paused) return;
    const caughtUp = mirror.inflight <= this.config.maxInflightBytesPerConnection / 2 &&
      this.inflightTotal <= this.config.maxInflightBytesTotal / 4 * 3;
    if (!force && !caughtUp) return;
    if (!host.setEffectiveContext(mirror.contextId)) { mirror.paused = false; return; } // the connection is gone
    this.pass(mirror, mirror.heldBytes, false);
    host.continueDownstream();
  }

  /** Forget `mirror`'s stream: cancel it (if `cancel`), release its in-flight bytes, and let
   *  its connection go on if it was waiting. */
  drop(mirror: MirrorConnection, cancel: bool): void {
    this.inflightTotal -= mirror.inflight;
    this.forget(mirror);
    if (cancel) mirror.cancel();
    this.maybeResume(mirror, true);
    if (mirror.finishing) {
      mirror.finishing = false;
      this.finishingStreams--;
      this.admitAwaiting();
    }
  }

  private largestInFlight(fallback: MirrorConnection): MirrorConnection {
    let largest = fallback;
    const mirrors = this.active.values();
    for (let i = 0; i < mirrors.length; i++) if (mirrors[i].mirroring && mirrors[i].inflight > largest.inflight) largest = mirrors[i];
    return largest;
  }

  /** Cut `victim`'s mirror because the relay stalled while `waiting` waited. */
  private cut(victim: MirrorConnection, waiting: MirrorConnection): void {
    host.logWarn("lockstep: relay stalled for " + this.config.relayStallTimeoutMs.toString() + " ms" +
      (victim === waiting ? "" : " (connection " + waiting.contextId.toString() + " waits for this worker's total in flight)") +
      "; mirror of connection " + victim.contextId.toString() + " cut (" + victim.inflight.toString() + " bytes unacknowledged), it goes on unmirrored");
    const stats = changetype<MirrorStats>(this.stats);
    stats.add(stats.overflows, 1);
    this.drop(victim, true);
    if (victim !== waiting) this.maybeResume(waiting, false); // the total fell
  }

  onGrpcReceive(token: u32, size: usize): void {
    if (this.ownStreams.has(token)) {
      this.onFrame(this.ownStreams.get(token), host.getBufferBytes(BufferType.GRPC_RECEIVE_BUFFER, 0, size));
      return;
    }
    const shared = this.shared;
    if (shared === null || !shared.has(token)) return;
    const raw = host.getBufferBytes(BufferType.GRPC_RECEIVE_BUFFER, 0, size);
    if (raw === null || <usize>raw.byteLength <= CHANNEL_BYTES) {
      host.grpcCancel(token);
      this.loseSharedStream(token, "sent a message of " + size.toString() + " bytes, too short for a channel and a frame; stream reset");
      const stats = changetype<MirrorStats>(this.stats);
      stats.add(stats.relayProtocolErrors, 1);
      return;
    }
    const channel = load<u32>(changetype<usize>(raw));
    if (!this.active.has(channel)) return; // a channel over already (cut, or reset by its client)
    const mirror = this.active.get(channel);
    if (mirror.token != token) return;
    const frame = raw.slice(<i32>CHANNEL_BYTES);
    if (load<u8>(changetype<usize>(frame)) != FRAME_STATUS) { this.onFrame(mirror, frame); return; }
    const status = decodeStatus(changetype<usize>(frame), <usize>frame.byteLength);
    if (status === null) { this.badFrame(mirror, lastDecodeError); return; }
    const s = changetype<ChannelStatus>(status);
    this.streamEnded(mirror, s.code, s.details);
  }

  /** A frame from the relay for `mirror` (an ACK, or CLOSE). */
  private onFrame(mirror: MirrorConnection, raw: ArrayBuffer | null): void {
    if (raw !== null && raw.byteLength > 0 && load<u8>(changetype<usize>(raw)) == FRAME_CLOSE && decodeClose(raw) != 0) {
      this.closeDemoted(mirror);
      return;
    }
    let ack: Ack | null = null;
    if (raw !== null) ack = decodeAck(raw);
    const receivedBefore = mirror.received;
    if (ack !== null && mirror.applyAck(changetype<Ack>(ack))) {
      this.inflightTotal -= mirror.received - receivedBefore;
      this.maybeResume(mirror, false);
    } else {
      this.badFrame(mirror, ack === null ? lastDecodeError : "acknowledged more than was sent");
    }
  }

  private badFrame(mirror: MirrorConnection, why: string): void {
    host.logError("lockstep: bad frame from the relay on connection " + mirror.contextId.toString() + ": " + why + "; mirror cut");
    const stats = changetype<MirrorStats>(this.stats);
    stats.add(stats.relayProtocolErrors, 1);
    this.drop(mirror, true);
  }

  /** The relay says this connection's primary is a primary no more (a planned switchover):
   *  close the client connection, so that its writes go to the new primary only. Its stream
   *  finishes as any other (the relay delivers what it holds). */
  private closeDemoted(mirror: MirrorConnection): void {
    if (!host.setEffectiveContext(mirror.contextId)) return; // the connection is gone already
    host.logInfo("lockstep: connection " + mirror.contextId.toString() + "'s primary is a primary no more (switchover); closing it so the client reconnects to the new one");
    const stats = changetype<MirrorStats>(this.stats);
    stats.add(stats.closedDemoted, 1);
    host.closeDownstream();
  }

  onGrpcClose(token: u32, statusCode: u32): void {
    if (this.ownStreams.has(token)) { this.streamEnded(this.ownStreams.get(token), statusCode, ""); return; }
    const shared = this.shared;
    if (shared !== null && shared.has(token)) this.loseSharedStream(token, "ended with gRPC status " + statusCode.toString());
  }

  /** The relay ended `mirror`'s stream (or channel) with a status: complete if OK after the
   *  client connection ended, else its replicas are out of sync for it. */
  private streamEnded(mirror: MirrorConnection, statusCode: u32, details: string): void {
    const complete = statusCode == GrpcStatus.OK && (mirror.state == STATE_CLOSING || mirror.state == STATE_NO_REPLICAS);
    if (!complete) {
      host.logWarn("lockstep: mirror stream of connection " + mirror.contextId.toString() + " ended with gRPC status " +
        statusCode.toString() + (details.length > 0 ? " (" + details + ")" : "") + "; replicas out of sync for it");
    }
    this.drop(mirror, false);
    mirror.end(complete);
  }

  /** A shared stream is gone: every channel still on it is lost, as a reset stream of its own. */
  private loseSharedStream(token: u32, why: string): void {
    changetype<SharedStreams>(this.shared).forget(token);
    const mirrors = this.active.values();
    let lost = 0;
    for (let i = 0; i < mirrors.length; i++) {
      const m = mirrors[i];
      if (m.channel == 0 || m.token != token) continue;
      lost++;
      this.drop(m, false);
      m.end(false);
    }
    host.logWarn("lockstep: shared mirror stream " + token.toString() + " to the relay " + why + "; " + lost.toString() +
      " connections on it lost their mirror (replicas out of sync for them)");
  }

  onTick(): void {
    if (this.instance !== null) changetype<EnvoyInstance>(this.instance).publish();
    const now = host.nowNanoseconds();
    const stallLimit = this.config.relayStallTimeoutMs * 1_000_000;
    this.giveUpAwaiting(now, stallLimit);
    if (this.active.size == 0) return;
    const closeLimit = this.config.closeTimeoutMs * 1_000_000;
    const mirrors = this.active.values();
    for (let i = 0; i < mirrors.length; i++) {
      const m = mirrors[i];
      if (m.paused && now - m.pausedSinceNs > stallLimit) {
        // The relay stalled. If this connection waits for its own bytes in flight, its mirror
        // is cut; if it waits for the worker's total, the connection holding the most is cut
        // (cutting one with nothing in flight frees nothing), and this one resumes as the total falls.
        const own = m.inflight > 0 && m.inflight + <u64>m.heldBytes > this.config.maxInflightBytesPerConnection;
        this.cut(own ? m : this.largestInFlight(m), m);
      } else if (m.paused) {
        this.maybeResume(m, false); // the worker-wide total may have fallen through other connections' ACKs
      } else if ((m.state == STATE_CLOSING || m.state == STATE_NO_REPLICAS) && now - m.closingSinceNs > closeLimit) {
        host.logWarn("lockstep: relay gave no final answer for connection " + m.contextId.toString() + "; stream reset");
        this.drop(m, true);
      } else if (m.state == STATE_DONE) {
        this.forget(m);
      }
    }
  }
}
