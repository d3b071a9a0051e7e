// Whether a primary that Envoy's health check failed is provably the process Envoy was sending
// connections to, so that it may be re-admitted when nobody can take over (a primary that
// stalled past Envoy's check timeout under a slow request, with no in-sync replica). The proof
// is the controller's own probe connection to it: the same connection (same id) must have been
// open while Envoy still used the primary, for long enough that a crash and quick restart before
// it opened would have failed the host in Envoy first, and still be the same now. A member that
// closed that connection, or whose connection was replaced, or that the controller never saw
// this way (a controller restarted meanwhile), is not provably the same: it stays out.
interface Seen { member: string; connection: number; first: number; last: number }

export class PrimaryContinuity {
  /** service -> the probe connection to its primary while Envoy used it. */
  private readonly seen = new Map<string, Seen>();

  /** Envoy uses the primary of `service` now, and the controller's probe connection to it is
   *  `connection` (undefined: none open). */
  inUse(service: string, member: string, connection: number | undefined, now: number): void {
    const s = this.seen.get(service);
    if (connection === undefined) this.seen.delete(service);
    else if (s?.member === member && s.connection === connection) s.last = now;
    else this.seen.set(service, { member, connection, first: now, last: now });
  }

  /** Whether `member`, primary of `service`, still answers on the connection that was open
   *  while Envoy used it, for at least `confirmMs`. */
  unbroken(service: string, member: string, connection: number | undefined, confirmMs: number): boolean {
    const s = this.seen.get(service);
    return s !== undefined && s.member === member && s.connection === connection && s.last - s.first >= confirmMs;
  }

  /** Forget services whose primary changed (a promotion, a removed service). */
  prune(primaryOf: (service: string) => string | undefined): void {
    for (const [service, s] of this.seen) if (primaryOf(service) !== s.member) this.seen.delete(service);
  }
}
