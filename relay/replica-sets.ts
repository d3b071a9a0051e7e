// Each service's replica set as the relay knows it now, and the connections open under it.
// A service has a set only if one was configured or the controller set it: a service without
// one never borrows another's; its new connections wait for one (MirrorSession). The
// connections open now are kept per service so the controller can see, per member, how many
// were opened without it (a member that joined the set takes part only in connections opened
// after: it is in sync once none of the older ones is still open). The controller also names
// the service's primary: when it changes (a planned switchover), connections still open on the
// former primary are closed (their clients reconnect to the new one), so that no write lands
// on two primaries at once (a mirror lost meanwhile would split the service's data).
import type { ReplicaTarget } from "./config.ts";
import { sameEndpoint } from "../config/address.ts";

/** What the registry needs of an open connection. */
export interface OpenConnection {
  readonly service: string;
  /** The connection's primary, as Envoy named it ("" if unknown). */
  readonly primary: string;
  /** Whether its replica set is chosen yet (false while it waits for the service's set). */
  readonly started: boolean;
  /** Names of the members its bytes are copied to. */
  readonly mirroredTo: readonly string[];
  /** Its primary (named `former`) is a primary no more: have its client connection closed. */
  demote(former: string): void;
}

export interface ServiceView {
  readonly service: string;
  /** null: no set known (connections wait, then go unmirrored). */
  readonly replicas: readonly ReplicaTarget[] | null;
  /** The member the controller named primary, if it did. */
  readonly primary: string | null;
  /** The member the controller named to take over session-mode connections from the primary. */
  readonly successor: string | null;
  /** Connections open now, and per member of the current set how many of them it is not part
   *  of (opened before it joined; its primary excepted). */
  readonly connections: { readonly open: number; readonly without: Readonly<Record<string, number>> };
}

export class ReplicaSets {
  private readonly sets = new Map<string, readonly ReplicaTarget[]>();
  private readonly waiting = new Map<string, Set<(targets: readonly ReplicaTarget[]) => void>>();
  private readonly open = new Map<string, Set<OpenConnection>>();
  /** Per service: the primary's name as the controller set it, and former primaries' addresses
   *  (with whether each has left the set since). */
  private readonly primaries = new Map<string, string>();
  /** Per service: the member the controller names to take over from the primary (session mode). */
  private readonly successors = new Map<string, string>();
  private readonly demoted = new Map<string, Map<string, boolean>>();

  constructor(initial: Readonly<Record<string, readonly ReplicaTarget[]>> = {}) {
    for (const [service, targets] of Object.entries(initial)) this.sets.set(service, targets);
  }

  get(service: string): readonly ReplicaTarget[] | undefined { return this.sets.get(service); }
  /** The primary the controller named (a member's name), if it did. */
  primary(service: string): string | undefined { return this.primaries.get(service); }
  /** The successor the controller named, if it did. */
  successor(service: string): string | undefined { return this.successors.get(service); }

  /** Replace a service's set for connections that open from now on; wakes those waiting for it.
   *  With `primary` (a name in `targets`), connections open on a former primary are closed. */
  set(service: string, targets: readonly ReplicaTarget[], primary?: string, successor?: string): void {
    this.sets.set(service, targets);
    if (successor === undefined) this.successors.delete(service); else this.successors.set(service, successor);
    if (primary !== undefined) this.setPrimary(service, targets, primary);
    const waiters = this.waiting.get(service);
    this.waiting.delete(service);
    for (const wake of waiters ?? []) wake(targets);
  }

  /** Call `then` once the service has a set (now, if it has one). Returns a cancel function. */
  whenKnown(service: string, then: (targets: readonly ReplicaTarget[]) => void): () => void {
    const known = this.sets.get(service);
    if (known) { then(known); return () => {}; }
    let waiters = this.waiting.get(service);
    if (!waiters) this.waiting.set(service, (waiters = new Set()));
    waiters.add(then);
    return () => { waiters!.delete(then); };
  }

  private setPrimary(service: string, targets: readonly ReplicaTarget[], primary: string): void {
    const before = this.primaries.get(service);
    this.primaries.set(service, primary);
    const demoted = this.demoted.get(service) ?? new Map<string, boolean>();
    this.demoted.set(service, demoted);
    const address = (name: string | undefined) => targets.find((t) => t.name === name)?.address;
    const now = address(primary);
    for (const d of demoted.keys()) if (now !== undefined && sameEndpoint(d, now)) demoted.delete(d);
    // A demotion lasts until the former primary is primary again, or comes back into the set
    // after it left it (an operator reseeded and rejoined it): until then Envoy may still send it
    // a new connection (a frozen primary wakes up with connections Envoy sent it before it
    // applied the new endpoints), and those are closed. Once rejoined it is a replica like any
    // other: a connection Envoy sends it as a successor is not closed.
    const inSet = (address: string) => targets.some((t) => sameEndpoint(t.address, address));
    for (const [d, left] of demoted) {
      if (!inSet(d)) demoted.set(d, true);
      else if (left) demoted.delete(d);
    }
    const former = before !== undefined && before !== primary ? (this.lastAddresses.get(`${service}|${before}`) ?? address(before)) : undefined;
    for (const t of targets) this.lastAddresses.set(`${service}|${t.name}`, t.address);
    if (former === undefined) return;
    demoted.set(former, !inSet(former));
    for (const c of this.open.get(service) ?? []) if (c.started && sameEndpoint(former, c.primary)) c.demote(before!);
  }

  /** Addresses members last had, by "service|name" (a former primary may have left the set). */
  private readonly lastAddresses = new Map<string, string>();

  /** The name of the former primary of the service that `primary` (a connection's, as Envoy
   *  named it) is, if it is one. */
  demotedMember(service: string, primary: string): string | undefined {
    if (![...this.demoted.get(service)?.keys() ?? []].some((d) => sameEndpoint(d, primary))) return undefined;
    for (const [key, address] of this.lastAddresses) {
      const [s, name] = [key.slice(0, key.indexOf("|")), key.slice(key.indexOf("|") + 1)];
      if (s === service && sameEndpoint(address, primary)) return name;
    }
    return primary; // never set by name: the address stands for it
  }

  track(c: OpenConnection): void {
    let s = this.open.get(c.service);
    if (!s) this.open.set(c.service, (s = new Set()));
    s.add(c);
  }

  untrack(c: OpenConnection): void { this.open.get(c.service)?.delete(c); }

  view(service: string): ServiceView {
    const targets = this.sets.get(service) ?? null;
    const open = [...(this.open.get(service) ?? [])];
    const without: Record<string, number> = {};
    for (const t of targets ?? []) {
      without[t.name] = open.filter((c) => c.started && !c.mirroredTo.includes(t.name) && !sameEndpoint(t.address, c.primary)).length;
    }
    return { service, replicas: targets, primary: this.primaries.get(service) ?? null, successor: this.successors.get(service) ?? null, connections: { open: open.length, without } };
  }

  services(): string[] { return [...new Set([...this.sets.keys(), ...this.open.keys()])].sort(); }
}
