// Standbys that Envoy's own health check failed while this controller sees them up and in
// sync (a check that timed out under load, say), and a primary it failed while nobody could
// take over that is provably the same process (controller/primary-continuity.ts). Envoy never
// takes a failed host back by itself (the bootstrap's healthy_threshold), so the controller
// re-admits such a member: one snapshot
// without it and, once Envoy applied that one, the next with it again (a new host passes its
// first check at once). Only after the member stayed up on the controller's own probe
// connection for a settling time since Envoy failed it: a member that crashed and came back
// empty has that connection broken, is stale, and is never re-admitted this way.
export class Readmission {
  /** "service|member" -> when Envoy was first seen failing it. */
  private readonly suspects = new Map<string, number>();
  /** "service|member" -> the versions published without it so far. */
  private readonly leaving = new Map<string, Set<string>>();

  private static key(service: string, member: string): string { return `${service}|${member}`; }

  /** Envoy failed this standby, which the controller sees up. True when it should leave Envoy
   *  now: it has stayed up for `settleMs` since. */
  failedInEnvoy(service: string, member: string, now: number, settleMs: number): boolean {
    const key = Readmission.key(service, member);
    if (this.leaving.has(key)) return false;
    const since = this.suspects.get(key);
    if (since === undefined) { this.suspects.set(key, now); return false; }
    if (now - since < settleMs) return false;
    this.suspects.delete(key);
    this.leaving.set(key, new Set());
    return true;
  }

  /** Envoy no longer fails these members of `service` (`failed` is what it fails now). */
  clearedInEnvoy(service: string, failed: (member: string) => boolean): void {
    for (const key of this.suspects.keys()) { const [s, m] = key.split("|"); if (s === service && !failed(m)) this.suspects.delete(key); }
  }

  /** Whether the member is left out of the snapshot being built. */
  isLeaving(service: string, member: string): boolean { return this.leaving.has(Readmission.key(service, member)); }

  /** The snapshot `version` is published: one without every member leaving now. */
  published(version: string): void {
    for (const versions of this.leaving.values()) versions.add(version);
  }

  /** Members one of whose snapshots without them Envoy has applied (`accepted(service)`): they
   *  come back in the next one. */
  returning(accepted: (service: string) => string | null): { service: string; member: string }[] {
    const back: { service: string; member: string }[] = [];
    for (const [key, versions] of this.leaving) {
      const [service, member] = key.split("|");
      const v = accepted(service);
      if (v !== null && versions.has(v)) { this.leaving.delete(key); back.push({ service, member }); }
    }
    return back;
  }

  /** Forget members that are no longer in-sync replicas (`current` says which still are). */
  prune(current: (service: string, member: string) => boolean): void {
    for (const map of [this.suspects, this.leaving]) {
      for (const key of map.keys()) { const [s, m] = key.split("|"); if (!current(s, m)) map.delete(key); }
    }
  }
}
