// Saving the controller's state when the disk may fail. An operator's call is saved before it
// takes effect, or refused (StoreUnavailableError: the API answers 503 and nothing changes). A
// decision the controller takes itself (a failover, a member marked stale) is a fact about the
// backends and takes effect at once: if it cannot be saved, the writer keeps the latest state
// and retries until a save succeeds, and reports the failure meanwhile. A save never throws
// into a health-check or relay-poll callback.
import type { FileStore } from "./file-store.ts";

export class StoreUnavailableError extends Error {}

/** A replicated store takes writes from the elected controller only (controller/leader/). */
export class NotLeaderError extends Error {}

export interface StoreStatus {
  readonly ok: boolean;
  /** Why the last save failed (null while saves succeed). */
  readonly error: string | null;
  /** When saves started failing. */
  readonly since: string | null;
}

export class StoreWriter<T> {
  private failure?: { error: string; since: string };
  /** The latest document not saved yet, retried every `retryMs`. */
  private pending?: T;
  private timer?: NodeJS.Timeout;

  constructor(private readonly store: FileStore<T>, private readonly log: (line: string) => void, private readonly retryMs = 1000) {}

  status(): StoreStatus {
    return { ok: !this.failure, error: this.failure?.error ?? null, since: this.failure?.since ?? null };
  }

  /** Save `doc` now; throws StoreUnavailableError if it could not be saved. */
  saveNow(doc: T): void {
    if (!this.trySave(doc)) throw new StoreUnavailableError(`the store ${this.store.path} cannot be written (${this.failure!.error}); nothing was changed, try again later`);
  }

  /** Save `doc` now, or keep retrying it (and any later document) until a save succeeds. Never throws. */
  saveEventually(doc: T): void {
    if (this.trySave(doc)) return;
    this.pending = doc;
    this.timer ??= setInterval(() => { if (this.pending !== undefined) this.trySave(this.pending); }, this.retryMs).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private trySave(doc: T): boolean {
    try {
      this.store.save(doc);
    } catch (err) {
      const error = (err as Error).message;
      if (!this.failure) this.log(`store: cannot save ${this.store.path}: ${error}; serving on from memory and retrying every ${this.retryMs} ms`);
      this.failure = { error, since: this.failure?.since ?? new Date().toISOString() };
      return false;
    }
    if (this.failure) this.log(`store: ${this.store.path} saved again (failing since ${this.failure.since})`);
    this.failure = undefined;
    this.pending = undefined;
    this.stop();
    return true;
  }
}
