// The controller's replicated store: etcd. Under a key prefix it holds two keys: `state`, the
// whole stored document (store/stored-state.ts), and `leader`, the elected controller's key,
// attached to its lease (controller/leader/election.ts). A document is written only by a
// compare-and-swap that holds while the state key is at the revision the writer last saw AND
// the leader key is still the writer's own (same create revision): a controller that is not
// the leader any more can never write, even before anyone else wrote. Calls fail fast (no
// retries, no circuit breaker that would keep a recovered etcd unused for seconds): the
// election and the writer decide what a failure means.
import { Etcd3, type IOptions } from "etcd3";
import { noop, ConstantBackoff } from "cockatiel";
import { StoreError } from "./file-store.ts";
import { validateStoredState, type StoredState } from "./stored-state.ts";

export interface EtcdStoreSpec {
  /** etcd client URLs, "http://ip:port". */
  readonly endpoints: readonly string[];
  /** Every key lockstep writes starts with this. */
  readonly prefix: string;
  /** The leader's lease, seconds: how long a dead leader keeps the others from deciding. */
  readonly leaseTtlSeconds: number;
}

/** A stored document and the revision (etcd mod_revision) it was written at. */
export interface Revisioned { readonly doc: StoredState; readonly revision: number }

/** The CAS failed: the state changed under the writer, or it is not the leader any more. */
export class LostRaceError extends Error {}

/** Deadline of every etcd call. */
const CALL_TIMEOUT_MS = 1000;
/** A broken watch is opened again this often until etcd answers. */
const WATCH_RETRY_MS = 250;

export class EtcdStore {
  readonly client: Etcd3;
  readonly stateKey: string;
  readonly leaderKey: string;
  /** For messages: where the state lives. */
  readonly path: string;

  constructor(readonly spec: EtcdStoreSpec) {
    const options: IOptions = {
      hosts: [...spec.endpoints],
      dialTimeout: CALL_TIMEOUT_MS,
      // Not the watch: it is one stream, open as long as the store is.
      defaultCallOptions: (ctx) => (ctx.service === "Watch" ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
      faultHandling: { host: () => noop, global: noop, watchBackoff: new ConstantBackoff(WATCH_RETRY_MS).next() },
    };
    this.client = new Etcd3(options);
    this.stateKey = `${spec.prefix}state`;
    this.leaderKey = `${spec.prefix}leader`;
    this.path = `etcd ${spec.endpoints.join(",")} ${this.stateKey}`;
  }

  private parse(value: Buffer, revision: number): Revisioned {
    let raw: unknown;
    try { raw = JSON.parse(value.toString("utf8")); }
    catch (err) { throw new StoreError(`store ${this.path}: not valid JSON at revision ${revision} (${(err as Error).message})`); }
    return { doc: validateStoredState(raw), revision };
  }

  /** The stored document now, or undefined (revision 0) if there is none yet. */
  async read(): Promise<Revisioned | { doc: undefined; revision: 0 }> {
    const res = await this.client.get(this.stateKey).exec();
    const kv = res.kvs[0];
    return kv ? this.parse(kv.value, Number(kv.mod_revision)) : { doc: undefined, revision: 0 };
  }

  /** Write `doc` if the state key is still at `expected` (0: absent) and the leader key still
   *  has the create revision `leaderToken`. Returns the new revision; LostRaceError if not. */
  async compareAndSwap(doc: StoredState, expected: number, leaderToken: number): Promise<number> {
    const res = await this.client.if(this.stateKey, "Mod", "==", expected)
      .and(this.leaderKey, "Create", "==", leaderToken)
      .then(this.client.put(this.stateKey).value(JSON.stringify(doc)))
      .commit();
    if (!res.succeeded) throw new LostRaceError(`the state is not at revision ${expected} any more, or this controller is not the leader`);
    return Number(res.header.revision);
  }

  /** Call `onDoc` with every document written from now on (the watch resumes after an outage). */
  async watch(onDoc: (r: Revisioned) => void, onError: (err: Error) => void): Promise<() => Promise<void>> {
    const watcher = await this.client.watch().key(this.stateKey).create();
    watcher.on("put", (kv) => {
      try { onDoc(this.parse(kv.value, Number(kv.mod_revision))); } catch (err) { onError(err as Error); }
    });
    watcher.on("error", onError);
    return () => watcher.cancel();
  }

  close(): void { this.client.close(); }
}
