// The members that missed bytes of one client connection, counted in
// lockstep_relay_replica_missed_connections_total (the controller takes them out of sync):
// each at most once per connection, and as soon as it is certain, not only when the connection
// ends: a member cut loose from a connection that stays open for hours must not stay
// promotable meanwhile.
import type { RelayMetrics } from "./metrics.ts";

export class MissedMembers {
  private readonly counted = new Set<string>();
  constructor(private readonly metrics: RelayMetrics) {}

  /** `member` of `service` missed bytes of this connection (counted once). */
  count(service: string, member: string): void {
    if (this.counted.has(member)) return;
    this.counted.add(member);
    this.metrics.replicaMissed.add(1, { service, replica: member });
  }
}
