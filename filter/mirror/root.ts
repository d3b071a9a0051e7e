// The plugin's root context: reads the configuration, owns every connection's mirror
// (gRPC callbacks arrive here and are routed by token), enforces the per-worker in-flight
// bound and reaps streams whose relay never answered.
import { RootContext, NetworkContext } from "../abi/context";
import { BufferType, GrpcStatus } from "../abi/constants";
import * as host from "../abi/host";
import { parseMirrorConfig, MirrorConfig } from "./config";
import { decodeAck, lastDecodeError, Ack } from "./frames";
import { MirrorStats } from "./stats";
import { MirrorConnection, STATE_CLOSING, STATE_DONE, STATE_NO_REPLICAS } from "./connection";
import { MirrorFilter } from "./filter";

/** Checks paused connections (resume, stall timeout) and streams the relay never finished. */
const TICK_PERIOD_MS: u32 = 100;

export class MirrorRoot extends RootContext {
  config: MirrorConfig = new MirrorConfig();
  stats: MirrorStats | null = null;
  grpcService: ArrayBuffer = new ArrayBuffer(0);
  /** Streams still open, by token. */
  byToken: Map<u32, MirrorConnection> = new Map();
  /** Bytes sent and not yet acknowledged, over all this worker's connections. */
  inflightTotal: u64 = 0;

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
    host.setTickPeriodMilliseconds(TICK_PERIOD_MS);
    host.logInfo("lockstep: mirroring service \"" + this.config.service + "\" through cluster \"" + this.config.relayCluster + "\"");
    return true;
  }

  createNetworkContext(contextId: u32): NetworkContext {
    const stats = changetype<MirrorStats>(this.stats);
    stats.add(stats.connections, 1);
    return new MirrorFilter(contextId, this, new MirrorConnection(contextId, this.config, stats, this.grpcService));
  }

  /** Open `mirror`'s stream if it is not yet open, and track it by token. */
  open(mirror: MirrorConnection): void {
    const before = mirror.token;
    const token = mirror.open();
    if (token != 0 && before == 0) this.byToken.set(token, mirror);
  }

  /** Mirror DOWNSTREAM_DATA. Returns true if the connection must wait for the relay (PAUSE). */
  mirrorDownstream(mirror: MirrorConnection, size: usize): bool {
    const before = mirror.sent;
    mirror.mirrorDownstream(size);
    this.inflightTotal += mirror.sent - before;
    if (!mirror.mirroring) return false;
    if (mirror.inflight > this.config.maxInflightBytesPerConnection || this.inflightTotal > this.config.maxInflightBytesTotal) {
      if (!mirror.paused) {
        mirror.paused = true;
        mirror.pausedSinceNs = host.nowNanoseconds();
        const stats = changetype<MirrorStats>(this.stats);
        stats.add(stats.pauses, 1);
      }
      return true;
    }
    return false;
  }

  /** Let a paused connection's bytes go on to the primary once the relay has caught up. */
  private maybeResume(mirror: MirrorConnection, force: bool): void {
    if (!mirror.paused) return;
    const caughtUp = mirror.inflight <= this.config.maxInflightBytesPerConnection / 2 &&
      this.inflightTotal <= this.config.maxInflightBytesTotal / 4 * 3;
    if (!force && !caughtUp) return;
    mirror.paused = false;
    mirror.bufferedMirrored = 0;
    if (host.setEffectiveContext(mirror.contextId)) host.continueDownstream();
  }

  /** Forget `mirror`'s stream: cancel it (if `cancel`), release its in-flight bytes, and let
   *  its connection go on if it was waiting. */
  drop(mirror: MirrorConnection, cancel: bool): void {
    this.inflightTotal -= mirror.inflight;
    this.byToken.delete(mirror.token);
    if (cancel) mirror.cancel();
    this.maybeResume(mirror, true);
  }

  onGrpcReceive(token: u32, size: usize): void {
    if (!this.byToken.has(token)) return;
    const mirror = this.byToken.get(token);
    const raw = host.getBufferBytes(BufferType.GRPC_RECEIVE_BUFFER, 0, size);
    let ack: Ack | null = null;
    if (raw !== null) ack = decodeAck(raw);
    const receivedBefore = mirror.received;
    if (ack !== null && mirror.applyAck(changetype<Ack>(ack))) {
      this.inflightTotal -= mirror.received - receivedBefore;
      this.maybeResume(mirror, false);
    } else {
      host.logError("lockstep: bad frame from the relay on connection " + mirror.contextId.toString() + ": " +
        (ack === null ? lastDecodeError : "acknowledged more than was sent") + "; mirror cut");
      const stats = changetype<MirrorStats>(this.stats);
      stats.add(stats.relayProtocolErrors, 1);
      this.drop(mirror, true);
    }
  }

  onGrpcClose(token: u32, statusCode: u32): void {
    if (!this.byToken.has(token)) return;
    const mirror = this.byToken.get(token);
    const complete = statusCode == GrpcStatus.OK && (mirror.state == STATE_CLOSING || mirror.state == STATE_NO_REPLICAS);
    if (!complete) {
      host.logWarn("lockstep: mirror stream of connection " + mirror.contextId.toString() + " ended with gRPC status " +
        statusCode.toString() + "; replicas out of sync for it");
    }
    this.drop(mirror, false);
    mirror.end(complete);
  }

  onTick(): void {
    if (this.byToken.size == 0) return;
    const now = host.nowNanoseconds();
    const closeLimit = this.config.closeTimeoutMs * 1_000_000;
    const stallLimit = this.config.relayStallTimeoutMs * 1_000_000;
    const stats = changetype<MirrorStats>(this.stats);
    const mirrors = this.byToken.values();
    for (let i = 0; i < mirrors.length; i++) {
      const m = mirrors[i];
      if (m.paused && now - m.pausedSinceNs > stallLimit) {
        host.logWarn("lockstep: relay stalled for " + this.config.relayStallTimeoutMs.toString() + " ms on connection " +
          m.contextId.toString() + " (" + m.inflight.toString() + " bytes unacknowledged); mirror cut, connection goes on");
        stats.add(stats.overflows, 1);
        this.drop(m, true);
      } else if (m.paused) {
        this.maybeResume(m, false); // the worker-wide total may have fallen through other connections' ACKs
      } else if ((m.state == STATE_CLOSING || m.state == STATE_NO_REPLICAS) && now - m.closingSinceNs > closeLimit) {
        host.logWarn("lockstep: relay gave no final answer for connection " + m.contextId.toString() + "; stream reset");
        this.drop(m, true);
      } else if (m.state == STATE_DONE) {
        this.byToken.delete(m.token);
      }
    }
  }
}
