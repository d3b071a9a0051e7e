// Who leads each session-mode service on this relay, and the takeovers (docs/SESSION.md). A
// session connection's replies come from its service's leader: the primary the controller
// named, until that member fails on any connection; then the successor the controller named
// takes over every open connection of the service at once (a failed primary is fenced: it must
// not go on serving some connections while others moved, it would miss their writes). New
// connections go to the leader. The controller's later choice of primary is followed when it
// names a different member (a planned switchover: open connections move, too).
import type { ReplicaSets } from "./replica-sets.ts";
import type { RelayMetrics } from "./metrics.ts";

/** What a takeover asks of one open connection. */
export interface LedConnection {
  readonly service: string;
  /** Move to `to`: "carried" if it did, "reset" if the client connection was reset instead
   *  (`to` may not take it over), "unaffected" if it was not led by `from`. */
  moveLeader(from: string, to: string, why: string): "carried" | "reset" | "unaffected";
}

export interface TakeoverEvent {
  readonly at: string;
  readonly service: string;
  readonly from: string;
  readonly to: string;
  readonly why: string;
  /** Open connections that went on with `to`, and those reset. */
  carried: number;
  reset: number;
}

/** Takeover events kept for the API (the newest). */
const EVENTS_KEPT = 100;

export class SessionLeaders {
  private readonly leaders = new Map<string, string>();
  private readonly named = new Map<string, string>();
  private readonly open = new Map<string, Set<LedConnection>>();
  readonly events: TakeoverEvent[] = [];

  constructor(private readonly sets: ReplicaSets, private readonly metrics: RelayMetrics, private readonly log: (line: string) => void) {}

  /** The member new connections of `service` go to (undefined: none known yet). */
  leader(service: string): string | undefined { return this.leaders.get(service) ?? this.sets.primary(service); }

  track(c: LedConnection): void {
    let s = this.open.get(c.service);
    if (!s) this.open.set(c.service, (s = new Set()));
    s.add(c);
  }
  untrack(c: LedConnection): void { this.open.get(c.service)?.delete(c); }
  openCount(service: string): number { return this.open.get(service)?.size ?? 0; }

  /** The controller set the service's primary: follow it when it names a member other than
   *  the one it named before (a switchover, or its own failover). */
  primaryNamed(service: string, primary: string | undefined): void {
    if (primary === undefined || this.named.get(service) === primary) return;
    const first = !this.named.has(service);
    this.named.set(service, primary);
    const from = this.leader(service);
    this.leaders.set(service, primary);
    if (!first && from !== undefined && from !== primary) this.move(service, from, primary, "the controller named a new primary", false);
  }

  /** A connection saw `member`, its leader, fail: if it still leads the service and a
   *  successor is named, the successor takes over every open connection. With none to take
   *  over nothing moves: the connection that saw the failure resets itself, and the others go
   *  on while their primary serves them (with no successor, no other member can be written to). */
  failed(service: string, member: string, why: string): void {
    if (this.leader(service) !== member) return;
    const to = this.sets.successor(service);
    if (to === undefined || to === member || !this.sets.get(service)?.some((t) => t.name === to)) return;
    this.leaders.set(service, to);
    this.move(service, member, to, why);
  }

  /** Move the open connections of `from` to `to`; an event is kept if it is the relay's own
   *  decision (`always`), or if it moved or reset any connection. */
  private move(service: string, from: string, to: string, why: string, always = true): void {
    const event: TakeoverEvent = { at: new Date().toISOString(), service, from, to, why, carried: 0, reset: 0 };
    for (const c of [...(this.open.get(service) ?? [])]) {
      const r = c.moveLeader(from, to, why);
      if (r === "carried") event.carried++;
      else if (r === "reset") event.reset++;
    }
    if (!always && event.carried + event.reset === 0) return;
    this.events.push(event);
    if (this.events.length > EVENTS_KEPT) this.events.shift();
    this.metrics.sessionTakeovers.add(1, { service });
    this.metrics.sessionCarried.add(event.carried, { service });
    this.log(`takeover: service "${service}" ${from} -> ${to} (${why}): ${event.carried} connections carried over, ${event.reset} reset`);
  }

  /** A connection reset after its move was counted (its successor diverged while catching up). */
  resetLater(service: string): void {
    const e = [...this.events].reverse().find((x) => x.service === service);
    if (e && e.carried > 0) { e.carried--; e.reset++; }
  }

  eventsOf(service: string): TakeoverEvent[] { return this.events.filter((e) => e.service === service); }
}
