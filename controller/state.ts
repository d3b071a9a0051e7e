// The controller's state: services, their members, and the event history. Every change goes
// through here, is saved to the store, and is announced to listeners (xDS snapshot, relay).
// An operator's change (API) is saved before it takes effect, or refused; a decision of the
// controller's own (failover, stale, detach) takes effect at once and is saved, or retried
// until the store takes it (store/store-writer.ts).
import type { FileStore } from "./store/file-store.ts";
import { StoreWriter, NotLeaderError, type StoreStatus } from "./store/store-writer.ts";
import { servicesFromStore, toStoredState, type StoredState } from "./store/stored-state.ts";
import { parseEndpoint } from "../config/address.ts";
import { promote, rejoin, admit, markOutOfSync, primaryOf, mirrorTargets, ModelError, type Service, type Member } from "./model/service.ts";
import type { Baselines } from "./evidence/ledger.ts";

export interface ControllerEvent {
  readonly at: string;
  readonly service: string;
  readonly kind: "promotion" | "switchover" | "stale" | "detach" | "diverged" | "rejoin" | "joined" | "member_added" | "member_removed"
    | "service_added" | "service_removed" | "no_candidate" | "xds_rejected"
    | "readmitted" | "takeover";
  readonly member: string;
  readonly detail: string;
  /** "takeover" (session mode): the relay moved the open connections of `from` to `to` (the
   *  event's member) at `relayAt`, carrying `carried` of them over and resetting `reset`. */
  readonly takeover?: { readonly from: string; readonly to: string; readonly carried: number; readonly reset: number; readonly relayAt: string; readonly relay: string };
}

/** A member to take out of sync, and why. */
export interface OutOfSync { readonly service: string; readonly member: string; readonly role: "stale" | "detached" | "diverged"; readonly detail: string }

/** Events kept in memory and in the store (older ones are dropped). */
export const MAX_EVENTS = 1000;

export interface StateOptions {
  readonly now?: () => Date;
  readonly log?: (line: string) => void;
  /** How often a failed save of the controller's own decisions is retried. */
  readonly saveRetryMs?: number;
}

/** Saves stored documents (store/store-writer.ts for the file; leader/replicated-writer.ts for etcd). */
export interface StateWriter {
  /** An operator's change: throws if it cannot be saved (or queued for a write that must succeed first). */
  saveNow(doc: StoredState): void;
  /** A decision: saved now or later; throws NotLeaderError on a controller that may not decide. */
  saveEventually(doc: StoredState): void;
  status(): StoreStatus;
  stop(): void;
}

/** A store other than the file: the document it started from, and its writer. */
export interface ReplicatedStore { readonly path: string; load(): StoredState | undefined; readonly writer: StateWriter }

/** Who made a change: an operator's call is refused if it cannot be saved; the controller's own
 *  decision about the backends stands and is saved as soon as the store allows. */
type Origin = "operator" | "decision";

/** A member as the controller starts it: address in canonical spelling, health unknown until
 *  this process's probes decide (so it cannot be promoted before one succeeded). */
function fresh(m: Pick<Member, "name" | "address" | "role">): Member {
  return Object.freeze({ name: m.name, address: parseEndpoint(m.address, `member "${m.name}" address`).text, role: m.role, lagBytes: 0 });
}

export class ControllerState {
  private services = new Map<string, Service>();
  private events: ControllerEvent[] = [];
  /** The evidence counters last acted on, per source process (evidence/ledger.ts). */
  private baselines: Baselines = {};
  private readonly listeners: ((services: readonly Service[]) => void)[] = [];
  private readonly writer?: StateWriter;
  private readonly now: () => Date;
  private readonly log: (line: string) => void;

  constructor(store?: FileStore<StoredState> | ReplicatedStore, options: StateOptions = {}) {
    this.now = options.now ?? (() => new Date());
    this.log = options.log ?? (() => {});
    this.writer = store && ("writer" in store ? store.writer : new StoreWriter(store, this.log, options.saveRetryMs));
    const saved = store?.load();
    if (!saved) return;
    const { services, dropped } = servicesFromStore(saved, store!.path);
    for (const s of services) this.services.set(s.name, s);
    this.events = saved.events.slice(-MAX_EVENTS);
    this.baselines = saved.evidence ?? {};
    if (dropped.length === 0) return;
    for (const d of dropped) this.log(`store: dropped member "${d.member}" of service "${d.service}": ${d.reason}`);
    this.commit([], dropped.map((d) => this.event(d.service, "member_removed", d.member, `${d.member} dropped when the store was read: ${d.reason}`)), "decision");
  }

  onChange(listener: (services: readonly Service[]) => void): void { this.listeners.push(listener); }

  /** Take a stored document as the state (another controller wrote it, or this one's unstored
   *  decisions are dropped). Live measurements of members still there are kept. */
  replace(doc: StoredState, path: string): void {
    const { services } = servicesFromStore(doc, path);
    const live = (s: string, m: Member) => {
      const was = this.services.get(s)?.members.find((x) => x.name === m.name && x.address === m.address);
      return was ? Object.freeze({ ...m, alive: was.alive, lagBytes: was.lagBytes, rttMs: was.rttMs }) : m;
    };
    this.services = new Map(services.map((s) => [s.name, Object.freeze({ ...s, members: Object.freeze(s.members.map((m) => live(s.name, m))) })]));
    this.events = doc.events.slice(-MAX_EVENTS);
    this.baselines = doc.evidence ?? {};
    this.notify();
  }
  list(): Service[] { return [...this.services.values()]; }
  get(name: string): Service | undefined { return this.services.get(name); }
  history(service?: string): ControllerEvent[] { return this.events.filter((e) => !service || e.service === service); }
  /** Whether saves succeed (a failing store does not stop the controller; see store-writer.ts). */
  storeStatus(): StoreStatus { return this.writer?.status() ?? { ok: true, error: null, since: null }; }
  /** Stop retrying failed saves (the controller is shutting down). */
  close(): void { this.writer?.stop(); }

  /** Declare a service (from the config file at boot) unless the store already knows it. */
  declare(service: Service): void {
    if (this.services.has(service.name)) return;
    this.commit([Object.freeze({ ...service, members: Object.freeze(service.members.map(fresh)) })], [], "decision");
  }

  /** A failover (the controller's decision) or a switchover (an operator's call). */
  promote(name: string, reason: "failure" | "switchover", member?: string): Service {
    const { service, promoted, demoted } = promote(this.require(name), reason, member);
    this.commit([service], [this.event(name, reason === "failure" ? "promotion" : "switchover", promoted.name,
      `${promoted.name} is primary${demoted ? `; ${demoted.name} is ${demoted.role}` : ""}`)], reason === "failure" ? "decision" : "operator");
    return service;
  }

  /** A member fell out of sync: died (stale), fell behind (detached) or answered differently
   *  from the primary (diverged). It stops being promotable until an operator rejoins it. */
  markOutOfSync(name: string, member: string, role: "stale" | "detached" | "diverged", detail: string): Service {
    const service = markOutOfSync(this.require(name), member, role);
    this.commit([service], [this.event(name, role === "detached" ? "detach" : role, member, detail)], "decision");
    return service;
  }

  /** Record that no member could take over (kept in the history; nothing else changes). */
  recordNoCandidate(name: string, member: string, detail: string): void {
    this.commit([], [this.event(this.require(name).name, "no_candidate", member, detail)], "decision");
  }

  /** Record that a primary Envoy's health check failed is given back to Envoy (nothing else changes). */
  recordReadmission(name: string, member: string, detail: string): void {
    this.commit([], [this.event(this.require(name).name, "readmitted", member, detail)], "decision");
  }

  /** Record a takeover the relay made (once: a takeover already in the history is not added again). */
  recordTakeover(name: string, t: NonNullable<ControllerEvent["takeover"]>, why: string): boolean {
    if (!this.services.has(name)) return false;
    if (this.events.some((e) => e.kind === "takeover" && e.service === name && e.takeover?.relayAt === t.relayAt && e.takeover.relay === t.relay && e.takeover.from === t.from)) return false;
    const event = { ...this.event(name, "takeover", t.to, `${t.relay} moved the open session connections of ${t.from} to ${t.to} (${why}): ${t.carried} carried over, ${t.reset} reset`), takeover: Object.freeze({ ...t }) };
    return this.commit([], [Object.freeze(event)], "decision");
  }

  /** Record that Envoy rejected a snapshot for a service (kept in the history; nothing else changes). */
  recordXdsRejection(name: string, detail: string): void {
    if (this.services.has(name)) this.commit([], [this.event(name, "xds_rejected", "", detail)], "decision");
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
    this.notify();
  }

  /** Record the designated successor (stored, no event: it is a consequence, not a decision). */
  setSuccessor(name: string, member: string | undefined): void {
    const s = this.services.get(name);
    if (!s || s.successor === member) return;
    const { successor: _, ...rest } = s;
    this.commit([Object.freeze(member === undefined ? rest : { ...rest, successor: member })], [], "decision");
  }

  /** Declare a new service through the API; refuses a name already in use. */
  addService(service: Service): Service {
    if (this.services.has(service.name)) throw new ModelError("DUPLICATE", `a service named "${service.name}" exists`);
    const added = Object.freeze({ ...service, members: Object.freeze(service.members.map(fresh)) });
    this.commit([added], [this.event(service.name, "service_added", primaryOf(added)?.name ?? "", `service "${service.name}" declared with ${added.members.length} members`)], "operator");
    return added;
  }

  /** Forget a service: Envoy gets no endpoints for it any more, the relay no replicas. */
  removeService(name: string): void {
    this.require(name);
    this.commit([], [this.event(name, "service_removed", "", `service "${name}" removed`)], "operator", name);
  }

  rejoin(name: string, member: string): Service {
    const service = rejoin(this.require(name), member);
    this.commit([service], [this.event(name, "rejoin", member, `${member} joins (operator reseeded it): it gets every new connection's bytes, and is a replica once every connection open before has ended`)], "operator");
    return service;
  }

  /** A joining member is part of every open connection now: a replica. */
  admit(name: string, member: string): Service {
    const service = admit(this.require(name), member);
    this.commit([service], [this.event(name, "joined", member, `${member} is a replica: every open connection reaches it`)], "decision");
    return service;
  }

  /** The evidence counters last acted on. */
  evidence(): Baselines { return this.baselines; }

  /** Act on evidence: take members out of sync and store the counters acted on, in one save
   *  (so a restarted controller never acts twice on one loss, nor forgets one). */
  applyEvidence(baselines: Baselines, changes: readonly OutOfSync[]): void {
    const changed = new Map<string, Service>();
    const events: ControllerEvent[] = [];
    for (const c of changes) {
      const s = changed.get(c.service) ?? this.services.get(c.service);
      const m = s?.members.find((x) => x.name === c.member);
      if (!s || !m || m.role === c.role || (m.role !== "replica" && m.role !== "joining")) continue;
      changed.set(c.service, markOutOfSync(s, c.member, c.role));
      events.push(this.event(c.service, c.role === "detached" ? "detach" : c.role, c.member, c.detail));
    }
    if (!events.length && JSON.stringify(baselines) === JSON.stringify(this.baselines)) return;
    const before = this.baselines;
    this.baselines = baselines;
    if (!this.commit([...changed.values()], events, "decision")) this.baselines = before;
  }

  addReplica(name: string, member: { name: string; address: string }): Service {
    const s = this.require(name);
    const added = fresh({ ...member, role: "replica" });
    const same = s.members.find((m) => m.name === added.name || m.address === added.address);
    if (same) throw new ModelError("DUPLICATE", `service "${name}" already has ${same.name === added.name ? `a member named "${added.name}"` : `the member "${same.name}" at ${added.address}`}`);
    const service = Object.freeze({ ...s, members: Object.freeze([...s.members, added]) });
    this.commit([service], [this.event(name, "member_added", added.name, `${added.name} at ${added.address} joins as a replica`)], "operator");
    return service;
  }

  removeMember(name: string, member: string): Service {
    const s = this.require(name);
    const m = s.members.find((x) => x.name === member);
    if (!m) throw new ModelError("NO_SUCH_MEMBER", `service "${name}" has no member "${member}"`);
    if (m.role === "primary") throw new ModelError("IS_PRIMARY", `"${member}" is the primary of "${name}"; promote another member first`);
    const service = Object.freeze({ ...s, members: Object.freeze(s.members.filter((x) => x.name !== member)) });
    this.commit([service], [this.event(name, "member_removed", member, `${member} removed`)], "operator");
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

  /** Make `changed` services (and the removal of `removed`) current with `events`. An operator's
   *  change is saved first and does not happen if it cannot be; a decision happens and is saved
   *  now or later. Throws StoreUnavailableError (operator changes only). False if nothing changed:
   *  a decision on a controller that may not decide. */
  private commit(changed: Service[], events: ControllerEvent[], origin: Origin, removed?: string): boolean {
    const services = new Map(this.services);
    for (const s of changed) services.set(s.name, s);
    if (removed !== undefined) services.delete(removed);
    const history = [...this.events, ...events].slice(-MAX_EVENTS);
    const doc = toStoredState(services.values(), history, this.baselines);
    try {
      if (origin === "operator") this.writer?.saveNow(doc); else this.writer?.saveEventually(doc);
    } catch (err) {
      // A controller that may not decide (a follower) changes nothing; an operator is told.
      if (err instanceof NotLeaderError && origin === "decision") return false;
      throw err;
    }
    this.services = services;
    this.events = history;
    // Listeners publish services (snapshot, relay sets); an event alone changes neither.
    if (changed.length > 0 || removed !== undefined) this.notify();
    return true;
  }

  /** Tell the listeners; one that fails is logged, never thrown at whoever changed the state. */
  private notify(): void {
    for (const l of this.listeners) {
      try { l(this.list()); } catch (err) { this.log(`state: a listener failed: ${(err as Error).stack ?? err}`); }
    }
  }
}

export { primaryOf, mirrorTargets };
