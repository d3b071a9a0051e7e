// One controller among several sharing an etcd store: it watches the stored state and serves
// it (xDS, the read API) whether it leads or not, stands for election, and decides only while
// it leads. This file ties the store, the election and the writer to the controller's state:
//
//   elected ──► read the stored state (the last one any leader wrote) ──► take over: act on what
//               this controller's own probes saw, the relays and Envoys counted meanwhile
//   a write failed, another controller wrote, the lease may have run out ──► step down: drop
//               what was not stored, serve the stored state, stand again
//   etcd unreachable ──► the leader's lease runs out (no keepalive answered): nobody decides;
//               every controller serves the last stored state; Envoys keep theirs
import type { ControllerState, ReplicatedStore } from "../state.ts";
import type { Leadership } from "../controller.ts";
import { EtcdStore, type EtcdStoreSpec, type Revisioned } from "../store/etcd-store.ts";
import type { StoreStatus } from "../store/store-writer.ts";
import type { StoredState } from "../store/stored-state.ts";
import { Election, type LeaderInfo } from "./election.ts";
import { ReplicatedWriter } from "./replicated-writer.ts";

export interface FleetHooks {
  readonly state: ControllerState;
  /** The stored state changed while the one in memory did not (a write landed): publish it. */
  readonly publish: () => void;
  /** This controller leads now and holds the latest stored state. */
  readonly takeOver: () => void;
}

export class Fleet implements Leadership {
  readonly store: EtcdStore;
  private readonly election: Election;
  readonly writer: ReplicatedWriter;
  private hooks?: FleetHooks;
  /** Elected and holding the stored state read after the election. */
  private ready = false;
  /** A document the watch brought while a write was in flight (handled once it ends). */
  private deferred?: Revisioned;
  private cancelWatch?: () => Promise<void>;

  private constructor(spec: EtcdStoreSpec, self: LeaderInfo, private readonly log: (line: string) => void, private readonly initial?: Revisioned) {
    this.store = new EtcdStore(spec);
    this.election = new Election({ store: this.store, self, log });
    this.writer = new ReplicatedWriter(this.store, this, (reason) => this.election.stepDown(reason));
    if (initial) this.writer.adopt(initial);
  }

  /** Connect and read the stored state (etcd must answer at start: the state is there). */
  static async join(spec: EtcdStoreSpec, self: LeaderInfo, log: (line: string) => void): Promise<Fleet> {
    const probe = new EtcdStore(spec);
    try {
      const r = await probe.read();
      return new Fleet(spec, self, log, r.doc ? r : undefined);
    } finally { probe.close(); }
  }

  /** What ControllerState starts from and writes through. */
  stateStore(): ReplicatedStore {
    return { path: this.store.path, load: () => this.initial?.doc, writer: this.writer };
  }

  /** Watch the stored state and stand for election. */
  async start(hooks: FleetHooks): Promise<void> {
    this.hooks = hooks;
    this.writer.onSettled(() => { this.absorbDeferred(); hooks.publish(); });
    this.election.onChange((leading) => {
      if (!leading) return this.deposed();
      this.elected().catch((err) => this.election.stepDown(`taking over failed: ${(err as Error).stack ?? err}`));
    });
    this.cancelWatch = await this.store.watch((r) => this.watched(r), (err) => this.log(`store: watch: ${err.message}`));
    this.election.start();
  }

  isLeader(): boolean { return this.ready && this.election.isLeader(); }
  token(): number { return this.election.token(); }
  settled(): boolean { return this.writer.settled(); }
  revision(): number { return this.writer.revision(); }
  status(): StoreStatus { return this.election.status(); }
  /** Who leads, as this controller knows it (null: nobody, or etcd cannot be reached). */
  leader(): (LeaderInfo & { self: boolean }) | null {
    const l = this.election.leader();
    return l && { ...l, self: this.isLeader() };
  }

  async close(): Promise<void> {
    this.ready = false;
    await this.cancelWatch?.().catch(() => {});
    await this.election.close();
    this.store.close();
  }

  private async elected(): Promise<void> {
    try {
      const r = await this.store.read();
      if (r.doc) this.take(r);
    } catch (err) {
      this.election.stepDown(`could not read the stored state after the election (${(err as Error).message})`);
      return;
    }
    if (!this.election.isLeader()) return;
    this.ready = true;
    this.log(`leader: leading from stored revision ${this.writer.revision()}`);
    this.hooks!.takeOver();
  }

  private deposed(): void {
    this.ready = false;
    // Whatever was decided and not stored is dropped: serve the stored state.
    const stored = this.writer.current();
    if (stored) this.hooks!.state.replace(stored.doc, this.store.path);
  }

  private watched(r: Revisioned): void {
    if (!this.writer.settled()) { if (!this.deferred || r.revision > this.deferred.revision) this.deferred = r; return; }
    if (r.revision <= this.writer.revision()) return;
    // A state this controller did not write: while it believes it leads, it is deposed.
    if (this.isLeader()) this.election.stepDown(`another controller wrote the state (revision ${r.revision})`);
    this.take(r);
  }

  private absorbDeferred(): void {
    const r = this.deferred;
    this.deferred = undefined;
    if (r) this.watched(r);
  }

  private take(r: Revisioned): void {
    if (this.writer.adopt(r)) this.hooks!.state.replace(r.doc as StoredState, this.store.path);
  }
}
