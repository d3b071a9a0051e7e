// Saving the controller's state to etcd, for the leader only, in order: each document is
// written by a compare-and-swap on the revision the previous write produced (or the leader
// read when elected) and on the leader's own key (store/etcd-store.ts). Documents are whole
// states, so while one write is in flight only the latest document waiting is kept.
//
// Nothing is published before it is stored: the controller publishes (xDS, relay sets) only
// while the writer is `settled`, and an operator's call is answered once `durable` resolves. A
// write that fails, for whatever reason (lost CAS, etcd unreachable, lease gone), ends this
// controller's leadership (`onLost`): what it decided but could not store is dropped, and the
// state goes back to the last stored document. A write that timed out may still have landed;
// then the watch brings it back, like any other controller's write.
import type { EtcdStore, Revisioned } from "../store/etcd-store.ts";
import { NotLeaderError, StoreUnavailableError, type StoreStatus } from "../store/store-writer.ts";
import type { StoredState } from "../store/stored-state.ts";

/** The leader's side of the election, as the writer needs it. */
export interface WriteLeadership { isLeader(): boolean; token(): number; status(): StoreStatus }

interface Waiter { readonly generation: number; resolve(): void; reject(err: Error): void }

export class ReplicatedWriter {
  private stored?: Revisioned;
  private waiting?: { doc: StoredState; generation: number };
  private writing = false;
  private generation = 0;
  private waiters: Waiter[] = [];
  private readonly settledListeners: (() => void)[] = [];

  constructor(
    private readonly store: EtcdStore,
    private readonly election: WriteLeadership,
    private readonly onLost: (reason: string) => void,
  ) {}

  /** The last document known stored (written here, read or watched), and its revision. */
  current(): Revisioned | undefined { return this.stored; }
  revision(): number { return this.stored?.revision ?? 0; }

  /** A document read or watched: newer than what is known, it becomes the base of the next write. */
  adopt(r: Revisioned): boolean {
    if (r.revision <= this.revision()) return false;
    this.stored = r;
    return true;
  }

  /** Whether every document saved has been written (the state in memory is the stored one). */
  settled(): boolean { return !this.writing && !this.waiting; }

  /** Told when a write made the state in memory the stored one again. */
  onSettled(listener: () => void): void { this.settledListeners.push(listener); }

  status(): StoreStatus { return this.election.status(); }

  /** An operator's change: queued, refused at once on a follower (the API then waits for durable()). */
  saveNow(doc: StoredState): void { this.save(doc); }
  /** A decision: the same (a follower makes none). */
  saveEventually(doc: StoredState): void { this.save(doc); }

  /** Resolves when everything saved so far is stored; rejects if it could not be. */
  durable(): Promise<void> {
    if (this.settled()) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ generation: this.generation, resolve, reject }));
  }

  stop(): void {}

  private save(doc: StoredState): void {
    if (!this.election.isLeader()) throw new NotLeaderError("this controller is not the leader: only the leader changes the state (GET /v1/services says which controller leads)");
    this.waiting = { doc, generation: ++this.generation };
    void this.drain();
  }

  private async drain(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.waiting) {
        const { doc, generation } = this.waiting;
        this.waiting = undefined;
        if (!this.election.isLeader()) throw new NotLeaderError("the lease may have run out before the write");
        const revision = await this.store.compareAndSwap(doc, this.revision(), this.election.token());
        this.stored = { doc, revision };
        this.release(generation);
      }
    } catch (err) {
      this.waiting = undefined;
      const reason = `a state write failed (${(err as Error).message}): what was not stored is dropped`;
      const failed = this.waiters;
      this.waiters = [];
      this.writing = false;
      for (const w of failed) w.reject(new StoreUnavailableError(`not stored, nothing changed: ${(err as Error).message}`));
      this.onLost(reason);
      return;
    }
    this.writing = false;
    for (const l of this.settledListeners) l();
  }

  private release(generation: number): void {
    const done = this.waiters.filter((w) => w.generation <= generation);
    this.waiters = this.waiters.filter((w) => w.generation > generation);
    for (const w of done) w.resolve();
  }
}
