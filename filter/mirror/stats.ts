// The filter's Envoy stats. Envoy shows them under its custom-stat prefix (for example
//, `envoy_wasmcustom_...` in Prometheus).
// Per-replica metrics are defined the first time the relay names a replica.
import { defineMetric, incrementMetric } from "../abi/host";
import { MetricType } from "../abi/constants";

export class ReplicaStats {
  connections: u32; bytesMirrored: u32; bytesAcked: u32; detaches: u32; completed: u32;
  /** Connections on which it did not provably take every byte the primary took: out of sync
   *  for the service (the controller reads this). */
  missedConnections: u32;
  /** Connections on which its replies differed from the primary's (also counted in detaches). */
  divergences: u32;
  constructor(prefix: string) {
    this.connections = defineMetric(MetricType.COUNTER, prefix + "connections");
    this.bytesMirrored = defineMetric(MetricType.COUNTER, prefix + "bytes_mirrored");
    this.bytesAcked = defineMetric(MetricType.COUNTER, prefix + "bytes_acked");
    this.detaches = defineMetric(MetricType.COUNTER, prefix + "detaches");
    this.completed = defineMetric(MetricType.COUNTER, prefix + "completed");
    this.divergences = defineMetric(MetricType.COUNTER, prefix + "divergences");
    this.missedConnections = defineMetric(MetricType.COUNTER, prefix + "missed_connections");
  }
}

export class MirrorStats {
  /** Client connections seen. */
  connections: u32;
  /** gRPC streams to the relay open now. */
  streamsActive: u32;
  /** Streams Envoy refused to open (unknown cluster, ...). */
  streamOpenFailures: u32;
  /** Streams that ended before the connection's bytes were all accounted for (relay down, reset). */
  streamsLost: u32;
  /** Client bytes handed to the relay stream. */
  bytesSent: u32;
  /** Client bytes not mirrored (stream lost, bound exceeded, no relay). */
  bytesUnmirrored: u32;
  /** Connections whose mirror was cut because the relay stalled (behind the in-flight bound for longer than the stall timeout). */
  overflows: u32;
  /** Times a connection's client bytes waited in Envoy for the relay to catch up. */
  pauses: u32;
  /** Connections some of whose bytes reached no replica (stream never opened, lost or cut, or
   *  the relay had no set for the service): every replica of the service missed them. */
  unmirroredConnections: u32;
  /** Connections the relay had no replica for: after its first answer, nothing is sent. */
  connectionsWithoutReplicas: u32;
  /** Bytes sent to the relay and not yet acknowledged, summed over this worker. */
  inflightBytes: u32;
  /** Client connections closed because their primary was a primary no more (a planned
   *  switchover): writes go to the new primary only, never to two at once. */
  closedDemoted: u32;
  /** Client connections reset by the client (no half-close first) after bytes went on to the
   *  primary: what the primary consumed is unknown, so every replica on it is counted missed. */
  clientResets: u32;
  /** Frames from the relay that did not decode. */
  relayProtocolErrors: u32;
  /** Primary reply bytes read and digested for the consistency check (0 with compare_replies off). */
  replyBytesDigested: u32;
  private prefix: string;
  private replicaNames: string[] = [];
  private replicaStats: ReplicaStats[] = [];

  constructor(service: string) {
    this.prefix = "lockstep." + service + ".";
    const p = this.prefix;
    this.connections = defineMetric(MetricType.COUNTER, p + "connections");
    this.streamsActive = defineMetric(MetricType.GAUGE, p + "streams_active");
    this.streamOpenFailures = defineMetric(MetricType.COUNTER, p + "stream_open_failures");
    this.streamsLost = defineMetric(MetricType.COUNTER, p + "streams_lost");
    this.bytesSent = defineMetric(MetricType.COUNTER, p + "bytes_sent");
    this.bytesUnmirrored = defineMetric(MetricType.COUNTER, p + "bytes_unmirrored");
    this.overflows = defineMetric(MetricType.COUNTER, p + "overflows");
    this.pauses = defineMetric(MetricType.COUNTER, p + "pauses");
    this.connectionsWithoutReplicas = defineMetric(MetricType.COUNTER, p + "connections_without_replicas");
    this.unmirroredConnections = defineMetric(MetricType.COUNTER, p + "unmirrored_connections");
    this.inflightBytes = defineMetric(MetricType.GAUGE, p + "inflight_bytes");
    this.relayProtocolErrors = defineMetric(MetricType.COUNTER, p + "relay_protocol_errors");
    this.closedDemoted = defineMetric(MetricType.COUNTER, p + "closed_demoted");
    this.clientResets = defineMetric(MetricType.COUNTER, p + "client_resets");
    this.replyBytesDigested = defineMetric(MetricType.COUNTER, p + "reply_bytes_digested");
  }

  replica(name: string): ReplicaStats {
    for (let i = 0; i < this.replicaNames.length; i++) if (this.replicaNames[i] == name) return this.replicaStats[i];
    const stats = new ReplicaStats(this.prefix + "replica." + name + ".");
    this.replicaNames.push(name);
    this.replicaStats.push(stats);
    return stats;
  }

  add(metricId: u32, delta: i64): void { incrementMetric(metricId, delta); }
}
