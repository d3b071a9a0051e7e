// The controller's embedded default store: one JSON document on local disk, replaced
// atomically (write a temporary file in the same directory, fsync it, rename it over the old
// one, fsync the directory), so a crash leaves either the old or the new state, never half.
import { openSync, writeSync, fsyncSync, closeSync, renameSync, readFileSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname, basename, join } from "node:path";

export class StoreError extends Error {}

export class FileStore<T> {
  constructor(readonly path: string, private readonly validate: (raw: unknown) => T) {}

  /** The stored document, or undefined if there is none yet. A corrupt file is an error, not an empty state. */
  load(): T | undefined {
    let text: string;
    try { text = readFileSync(this.path, "utf8"); }
    catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new StoreError(`store ${this.path}: cannot read: ${(err as Error).message}`);
    }
    let raw: unknown;
    try { raw = JSON.parse(text); }
    catch (err) { throw new StoreError(`store ${this.path}: not valid JSON (${(err as Error).message}); refusing to start from an empty state`); }
    return this.validate(raw);
  }

  /** Replace the stored document atomically. */
  save(doc: T): void {
    const dir = dirname(this.path);
    mkdirSync(dir, { recursive: true });
    const tmp = join(dir, `.${basename(this.path)}.${process.pid}.tmp`);
    const fd = openSync(tmp, "w", 0o600);
    try {
      writeSync(fd, JSON.stringify(doc, null, 2) + "\n");
      fsyncSync(fd);
    } finally { closeSync(fd); }
    try { renameSync(tmp, this.path); }
    catch (err) { try { unlinkSync(tmp); } catch { /* already gone */ } throw err; }
    const dirFd = openSync(dir, "r");
    try { fsyncSync(dirFd); } finally { closeSync(dirFd); }
  }
}
