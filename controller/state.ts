// The controller's state: services, their members, and the event history. Every change goes
// through here, is saved to the store, and is announced to listeners (xDS snapshot, relay).
import { FileStore, StoreError } from "./store/file-store.ts";
import { canonicalEndpoint, parseEndpoint } from "../config/address.ts";
import { promote, rejoin, markOutOfSync, primaryOf, mirrorTargets, ModelError, type Service, type Member } from "./model/service.ts";

export interface ControllerEvent {
  readonly at: string;
  readonly service: string;
  readonly kind: "promotion" | "switchover" | "stale" | "detach" | "diverged" | "rejoin" | "member_added" | "member_removed" | "service_added" | "no_candidate";
  readonly member: string;
  readonly detail: string;
}

export interface StoredState { schema: 1; services: Service[]; events: ControllerEvent[] }

export function validateStoredState(raw: unknown): StoredState {
  const r = raw as StoredState;
  if (typeof raw !== "object" || raw === null || r.schema !== 1 || !Array.isArray(r.services) || !Array.isArray(r.events)) {
    throw new StoreError("not a lockstep controller store (expected { schema: 1, services: [], events: [] })");
  }
  // Older stores may hold other spellings of an address: keep only the canonical one.
  for (const s of r.services) {
    for (const m of s.members as Member[]) {
      try { (m as { address: string }).address = canonicalEndpoint(m.address); }
      catch (err) { throw new StoreError(`service "${s.name}" member "${m.name}": ${(err as Error).message}`); }
    }
  }
  return r;
}

/** Events kept in memory and in the store (older ones are dropped). */
export const MAX_EVENTS = 1000;

/** A member as the controller starts it: address in canonical spelling, health unknown until
 *  this process's probes decide (so it cannot be promoted before one succeeded). */
function fresh(m: Pick<Member, "name" | "address" | "role">): Member {
  return Object.freeze({ name: m.name, address: parseEndpoint(m.address, `member "${m.name}" address`).text, role: m.role, lagBytes: 0 });
}

export class ControllerState {
  private services = new Map<string, Service>();
  private events: ControllerEvent[] = [];
  private readonly listeners: ((services: readonly Service[]) => void)[] = [];

  constructor(private readonly store?: FileStore<StoredState>, private readonly now: () => Date = () => new Date()) {
    const saved = store?.load();
    if (saved) {
      // Health is never taken from the store: this process's probes decide it again.
      for (const s of saved.services) this.services.set(s.name, Object.freeze({ ...s, members: Object.freeze(s.members.map(fresh)) }));
      this.events = saved.events;
    }
  }

  onChange(listener: (services: readonly Service[]) => void): void { this.listeners.push(listener); }
  list(): Service[] { return [...this.services.values()]; }
  get(name: string): Service | undefined { return this.services.get(name); }
  history(service?: string): ControllerEvent[] { return this.events.filter((e) => !service || e.service === service); }

  /** Declare a service (from the config file at boot) unless the store already knows it. */
  declare(service: Service): void {
    if (this.services.has(service.name)) return;
    this.commit(Object.freeze({ ...service, members: Object.freeze(service.members.map(fresh)) }), []);
  }

  promote(name: string, reason: "failure" | "switchover", member?: string): Service {
    const { service, promoted, demoted } = promote(this.require(name), reason, member);
    this.commit(service, [this.event(name, reason === "failure" ? "promotion" : "switchover", promoted.name,
      `${promoted.name} is primary${demoted ? `; ${demoted.name} is ${demoted.role}` : ""}`)]);
    return service;
  }

  /** A member fell out of sync: died (stale), fell behind (detached) or answered differently
   *  from the primary (diverged). It stops being promotable until an operator rejoins it. */
  markOutOfSync(name: string, member: string, role: "stale" | "detached" | "diverged", detail: string): Service {
    const service = markOutOfSync(this.require(name), member, role);
    this.commit(service, [this.event(name, role === "detached" ? "detach" : role, member, detail)]);
    return service;
  }

  /** Record that no member could take over (kept in the history; nothing else changes). */
  recordNoCandidate(name: string, member: string, detail: string): void {
    this.commit(this.require(name), [this.event(name, "no_candidate", member, detail)]);
  }

  /** Live measurements (health, lag, RTT): kept in memory and shown by the API; saved with the
   *  next real change, never on their own (they are re-measured after a restart). */
  observe(name: string, member: string, patch: Partial<Pick<Member, "alive" | "lagBytes" | "rttMs">>): void {
    const s = this.services.get(name);
    const m = s?.members.find((x) => x.name === member);
    if (!s || !m) return;
    if (Object.entries(patch).every(([k, v]) => m[k as keyof Member] === v)) return;
    const updated = Object.freeze({ ...m, ...patch });
    this.services = new Map(this.services).set(name, Object.freeze({ ...s, members: Object.freeze(s.members.map((x) => (x === m ? updated : x))) }));
    for (const l of this.listeners) l(this.list());
  }

  /** Record the designated successor (stored, no event: it is a consequence, not a decision). */
  setSuccessor(name: string, member: string | undefined): void {
    const s = this.services.get(name);
    if (!s || s.successor === member) return;
    const { successor: _, ...rest } = s;
    this.commit(Object.freeze(member === undefined ? rest : { ...rest, successor: member }), []);
  }

  /** Declare a new service through the API; refuses a name already in use. */
  addService(service: Service): Service {
    if (this.services.has(service.name)) throw new ModelError("DUPLICATE", `a service named "${service.name}" exists`);
    const added = Object.freeze({ ...service, members: Object.freeze(service.members.map(fresh)) });
    this.commit(added, [this.event(service.name, "service_added", primaryOf(added)?.name ?? "", `service "${service.name}" declared with ${added.members.length} members`)]);
    return added;
  }

  rejoin(name: string, member: string): Service {
    const service = rejoin(this.require(name), member);
    this.commit(service, [this.event(name, "rejoin", member, `${member} is a replica again (operator reseeded it)`)]);
    return service;
  }

  addReplica(name: string, member: { name: string; address: string }): Service {
    const s = this.require(name);
    const added = fresh({ ...member, role: "replica" });
    const same = s.members.find((m) => m.name === added.name || m.address === added.address);
    if (same) throw new ModelError("DUPLICATE", `service "${name}" already has ${same.name === added.name ? `a member named "${added.name}"` : `the member "${same.name}" at ${added.address}`}`);
    const service = Object.freeze({ ...s, members: Object.freeze([...s.members, added]) });
    this.commit(service, [this.event(name, "member_added", added.name, `${added.name} at ${added.address} joins as a replica`)]);
    return service;
  }

  removeMember(name: string, member: string): Service {
    const s = this.require(name);
    const m = s.members.find((x) => x.name === member);
    if (!m) throw new ModelError("NO_SUCH_MEMBER", `service "${name}" has no member "${member}"`);
    if (m.role === "primary") throw new ModelError("IS_PRIMARY", `"${member}" is the primary of "${name}"; promote another member first`);
    const service = Object.freeze({ ...s, members: Object.freeze(s.members.filter((x) => x.name !== member)) });
    this.commit(service, [this.event(name, "member_removed", member, `${member} removed`)]);
    return service;
  }

  private require(name: string): Service {
    const s = this.services.get(name);
    if (!s) throw new ModelError("UNKNOWN_SERVICE", `no service "${name}"`);
    return s;
  }

  private event(service: string, kind: ControllerEvent["kind"], member: string, detail: string): ControllerEvent {
    return Object.freeze({ at: this.now().toISOString(), service, kind, member, detail });
  }

  /** Save first, then make the change visible: a change that could not be stored did not happen. */
  private commit(service: Service, events: ControllerEvent[]): void {
    const services = new Map(this.services).set(service.name, service);
    const history = [...this.events, ...events].slice(-MAX_EVENTS);
    this.store?.save({ schema: 1, services: [...services.values()], events: history });
    this.services = services;
    this.events = history;
    for (const l of this.listeners) l(this.list());
  }
}

export { primaryOf, mirrorTargets };
