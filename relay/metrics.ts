// The relay's metrics: counters and gauges with labels, rendered as Prometheus text
// (/metrics) and JSON (/stats).
//
//   lockstep_relay_streams_active                      gauge    gRPC streams (client connections) open
//   lockstep_relay_streams_total                       counter  streams accepted
//   lockstep_relay_streams_lost_total                  counter  streams reset by Envoy before they finished
//   lockstep_relay_bytes_received_total                counter  client bytes received from the filter
//   lockstep_relay_connections_unmirrored_total{service,reason} counter  streams mirrored nowhere: no_primary (Envoy named
//                                                      none), no_replica_set (none set within setWaitMs), relay_bound
//   lockstep_relay_protocol_errors_total               counter  malformed or out-of-order frames
//   lockstep_relay_channel_frames_dropped_total        counter  frames on a Channels stream dropped: not OPEN, on a channel the
//                                                      relay does not know (or has ended: the filter had not yet read its STATUS)
//   lockstep_relay_connections_closed_demoted_total{service} counter  connections closed because their primary was demoted (switchover)
//   lockstep_relay_queued_bytes                        gauge    bytes held for replicas, all connections (session mode: and the
//                                                      reply bytes held to compare members)
// Session mode (docs/SESSION.md), label {service}:
//   lockstep_relay_session_connections_active          gauge    session connections open
//   lockstep_relay_session_connections_total           counter  session connections accepted
//   lockstep_relay_session_takeovers_total             counter  takeovers (the leader failed; its successor took every open connection)
//   lockstep_relay_session_connections_carried_total   counter  open connections carried over to a successor
//   lockstep_relay_session_connections_reset_total{…,reason}  counter  session connections the relay reset (no_leader,
//                                                      leader_failed: no successor to take over, not_eligible: the successor
//                                                      diverged or fell out of the comparison on it)
//
// Per-replica series carry the labels {service, replica} (a replica's name is unique within
// its service):
//   lockstep_relay_replica_connections_active   gauge    replica connections open
//   lockstep_relay_replica_connections_total    counter  replica connections opened
//   lockstep_relay_replica_bytes_queued_total   counter  bytes accepted for the replica
//   lockstep_relay_replica_bytes_acked_total    counter  bytes written to the replica's socket
//   lockstep_relay_replica_lag_bytes            gauge    accepted and not yet written, over its open connections
//   lockstep_relay_replica_reply_bytes_dropped_total  counter  replica replies read and dropped
//   lockstep_relay_replica_detaches_total{…,reason}   counter  connections it left early (reason; STREAM_LOST: the stream was reset)
//   lockstep_relay_replica_missed_connections_total   counter  connections on which it did not provably take every client
//                                                               byte: it is out of sync (the controller reads this)
// The consistency check (docs/CONSISTENCY.md), same labels:
//   lockstep_relay_replica_divergences_total          counter  connections whose replies differed from the primary's
//   lockstep_relay_replica_replies_matched_total      counter  connections whose replies matched the primary's to its end
//   lockstep_relay_replica_reply_windows_compared_total  counter  reply windows (16 KiB) found equal
//   lockstep_relay_replica_reply_checks_abandoned_total  counter  connections whose check was given up (digest bound)

type Labels = Record<string, string>;

/** Series keys by labels object: a replica link passes the same object on every update, so its
 *  key is built once (on short connections, building it per update was 5% of the relay's time). */
const keys = new WeakMap<Labels, string>();
const NO_LABELS: Labels = Object.freeze({});
function keyOf(labels: Labels): string {
  let key = keys.get(labels);
  if (key === undefined) { key = JSON.stringify(labels); keys.set(labels, key); }
  return key;
}

class Family {
  readonly series = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly kind: "counter" | "gauge", readonly help: string) {}
  private entry(labels: Labels) {
    const key = keyOf(labels);
    let e = this.series.get(key);
    if (!e) { e = { labels, value: 0 }; this.series.set(key, e); }
    return e;
  }
  add(n: number, labels: Labels = NO_LABELS): void { this.entry(labels).value += n; }
  set(n: number, labels: Labels = NO_LABELS): void { this.entry(labels).value = n; }
  /** Sum of the series whose labels include all of `labels` ({} sums the whole family). */
  get(labels: Labels = {}): number {
    let total = 0;
    for (const e of this.series.values()) if (Object.entries(labels).every(([k, v]) => e.labels[k] === v)) total += e.value;
    return total;
  }
}

export class RelayMetrics {
  private readonly families: Family[] = [];
  private family(name: string, kind: "counter" | "gauge", help: string): Family {
    const f = new Family(name, kind, help);
    this.families.push(f);
    return f;
  }
  readonly streamsActive = this.family("lockstep_relay_streams_active", "gauge", "gRPC streams (client connections) open");
  readonly streamsTotal = this.family("lockstep_relay_streams_total", "counter", "streams accepted");
  readonly streamsLost = this.family("lockstep_relay_streams_lost_total", "counter", "streams reset by Envoy before they finished");
  readonly bytesReceived = this.family("lockstep_relay_bytes_received_total", "counter", "client bytes received from the filter");
  readonly unmirrored = this.family("lockstep_relay_connections_unmirrored_total", "counter", "streams mirrored to no replica (reason: no_primary, no_replica_set, relay_bound)");
  readonly closedDemoted = this.family("lockstep_relay_connections_closed_demoted_total", "counter", "client connections the relay had closed because their primary was a primary no more (switchover)");
  readonly protocolErrors = this.family("lockstep_relay_protocol_errors_total", "counter", "malformed or out-of-order frames");
  readonly channelFramesDropped = this.family("lockstep_relay_channel_frames_dropped_total", "counter", "frames on a Channels stream dropped: not OPEN, on a channel the relay does not know (or has ended)");
  readonly queuedBytes = this.family("lockstep_relay_queued_bytes", "gauge", "bytes held for replicas over all connections");
  readonly sessionsActive = this.family("lockstep_relay_session_connections_active", "gauge", "session connections open");
  readonly sessionsTotal = this.family("lockstep_relay_session_connections_total", "counter", "session connections accepted");
  readonly sessionTakeovers = this.family("lockstep_relay_session_takeovers_total", "counter", "takeovers: the leader failed and its successor took every open connection");
  readonly sessionCarried = this.family("lockstep_relay_session_connections_carried_total", "counter", "open session connections carried over to a successor");
  readonly sessionReset = this.family("lockstep_relay_session_connections_reset_total", "counter", "session connections the relay reset, by reason");
  readonly replicaActive = this.family("lockstep_relay_replica_connections_active", "gauge", "replica connections open");
  readonly replicaConnections = this.family("lockstep_relay_replica_connections_total", "counter", "replica connections opened");
  readonly replicaQueued = this.family("lockstep_relay_replica_bytes_queued_total", "counter", "bytes accepted for the replica");
  readonly replicaAcked = this.family("lockstep_relay_replica_bytes_acked_total", "counter", "bytes written to the replica's socket");
  readonly replicaLag = this.family("lockstep_relay_replica_lag_bytes", "gauge", "bytes accepted for the replica and not yet written, over its open connections");
  readonly replicaReplyDropped = this.family("lockstep_relay_replica_reply_bytes_dropped_total", "counter", "replica reply bytes read and dropped");
  readonly replicaDetaches = this.family("lockstep_relay_replica_detaches_total", "counter", "connections the replica left early, by reason");
  readonly replicaMissed = this.family("lockstep_relay_replica_missed_connections_total", "counter", "connections on which the replica did not provably take every client byte (it is out of sync)");
  readonly replicaDivergences = this.family("lockstep_relay_replica_divergences_total", "counter", "connections on which the replica's replies differed from the primary's (it is detached: DIVERGED)");
  readonly replicaRepliesMatched = this.family("lockstep_relay_replica_replies_matched_total", "counter", "connections on which the replica's replies matched the primary's to its end");
  readonly replicaWindowsCompared = this.family("lockstep_relay_replica_reply_windows_compared_total", "counter", "reply windows of 16 KiB found equal to the primary's");
  readonly replicaChecksAbandoned = this.family("lockstep_relay_replica_reply_checks_abandoned_total", "counter", "connections whose reply check was given up (more digests waiting than the bound)");

  prometheus(): string {
    const lines: string[] = [];
    for (const f of this.families) {
      lines.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.kind}`);
      if (f.series.size === 0 && f.name.indexOf("_replica_") < 0) lines.push(`${f.name} 0`);
      for (const { labels, value } of f.series.values()) {
        const l = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(",");
        lines.push(`${f.name}${l ? `{${l}}` : ""} ${value}`);
      }
    }
    return lines.join("\n") + "\n";
  }

  json(): Record<string, { labels: Labels; value: number }[]> {
    return Object.fromEntries(this.families.map((f) => [f.name, [...f.series.values()]]));
  }
}
