// The relay-wide bound on memory held for replicas: every byte queued for any replica of
// any connection is taken from here and given back once written to the socket or dropped.
import type { RelayMetrics } from "./metrics.ts";

export class ByteBudget {
  private held = 0;
  constructor(readonly limit: number, private readonly metrics: RelayMetrics) {}
  /** Take `n` bytes; false (and nothing taken) if that would pass the limit. */
  take(n: number): boolean {
    if (this.held + n > this.limit) return false;
    this.held += n;
    this.metrics.queuedBytes.set(this.held);
    return true;
  }
  give(n: number): void {
    this.held -= n;
    this.metrics.queuedBytes.set(this.held);
  }
  get bytesHeld(): number { return this.held; }
}
