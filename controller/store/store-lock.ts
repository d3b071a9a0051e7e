// One controller per store: two controllers on one store would each act on the same backends
// and overwrite each other's decisions. The lock is a file next to the store, created with
// O_EXCL (so exactly one process creates it), holding the owner's pid, its start time (from
// /proc, so a recycled pid is not mistaken for the owner) and host. A lock whose owner is gone
// (kill -9, power loss) is stale and taken over; it is removed when its owner exits.
import { openSync, writeSync, closeSync, readFileSync, unlinkSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { hostname } from "node:os";
import { StoreError } from "./file-store.ts";

interface Owner { pid: number; startTime: string | null; host: string; since: string }

/** A process's start time in clock ticks since boot (Linux), null where /proc cannot tell. */
function startTimeOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which is in parentheses and may hold spaces): starttime is field 22.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch { return null; }
}

function running(owner: Owner): boolean {
  try { process.kill(owner.pid, 0); } catch (err) { if ((err as NodeJS.ErrnoException).code === "ESRCH") return false; }
  const now = startTimeOf(owner.pid);
  return owner.startTime === null || now === null || now === owner.startTime;
}

export class StoreLock {
  private released = false;
  private readonly onExit = () => this.release();

  private constructor(readonly path: string, private readonly owner: Owner) { process.once("exit", this.onExit); }

  /** Take the lock of the store at `storePath`, or throw StoreError naming who holds it. */
  static acquire(storePath: string): StoreLock {
    const path = `${storePath}.lock`;
    const owner: Owner = { pid: process.pid, startTime: startTimeOf(process.pid), host: hostname(), since: new Date().toISOString() };
    try { mkdirSync(dirname(path), { recursive: true }); } catch { /* the open below says why */ }
    for (let attempt = 0; ; attempt++) {
      let fd: number;
      try { fd = openSync(path, "wx", 0o600); } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw new StoreError(`store ${storePath}: cannot create its lock ${path}: ${(err as Error).message}`);
        const holder = StoreLock.read(path);
        if (holder === undefined) {
          throw new StoreError(`store ${storePath} is locked by ${path}, which names no owner; if no controller uses this store, remove the file`);
        }
        const alive = holder.host !== owner.host || running(holder);
        if (alive || attempt > 0) {
          throw new StoreError(`store ${storePath} is in use by another controller (pid ${holder.pid} on ${holder.host}, since ${holder.since}): ` +
            "two controllers on one store would overwrite each other's decisions; stop that one, or give this one another store");
        }
        // Its owner is gone: a stale lock, removed unless another process replaced it meanwhile.
        // (Two controllers taking over one stale lock in the same instant could both succeed:
        // the window is between this read and the removal.)
        if (StoreLock.read(path)?.since === holder.since) { try { unlinkSync(path); } catch { /* removed meanwhile */ } }
        continue;
      }
      try { writeSync(fd, JSON.stringify(owner) + "\n"); } finally { closeSync(fd); }
      return new StoreLock(path, owner);
    }
  }

  private static read(path: string): Owner | undefined {
    try {
      const o = JSON.parse(readFileSync(path, "utf8")) as Owner;
      return Number.isInteger(o.pid) && typeof o.host === "string" ? o : undefined;
    } catch { return undefined; }
  }

  /** Remove the lock if it is still ours. */
  release(): void {
    if (this.released) return;
    this.released = true;
    process.removeListener("exit", this.onExit);
    const holder = StoreLock.read(this.path);
    if (holder?.pid === this.owner.pid && holder.since === this.owner.since) {
      try { unlinkSync(this.path); } catch { /* already gone */ }
    }
  }
}
