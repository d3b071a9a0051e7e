// The online consistency check of one client connection (docs/CONSISTENCY.md): the filter
// digests the primary's reply stream in fixed windows aligned by byte offset (REPLY_DIGEST,
// REPLY_END: docs/wire-format.md); here each replica's reply stream is digested the same way
// and compared window by window as both sides become available, so chunk boundaries never
// matter. Pure logic: no I/O, no timers; the session feeds it and acts on its verdicts.
//
// Per replica:   open ──window mismatch / more or fewer bytes than the primary──► diverged
//                  │ ──every byte the primary said is matched──► matched
//                  ├──more than MAX_PENDING_WINDOWS digests waiting for the other side──► abandoned
//                  └──given up (left the connection for another reason, replies too late)──► abandoned
//
// Memory: the primary's digests not yet compared by every open replica, and each replica's
// digests not yet matched by the primary's, each at most MAX_PENDING_WINDOWS numbers.
import { crc32 } from "node:zlib";
import { FrameError, REPLY_WINDOW_BYTES as W, type ReplyEndKind } from "./frames.ts";

/** Digests one side may hold while waiting for the other: 4096 windows of 16 KiB = 64 MiB of
 *  reply one side is ahead by; past it the connection's check of that replica is abandoned. */
export const MAX_PENDING_WINDOWS = 4096;

/** CRC-32 (zlib's) over a byte stream cut into windows at multiples of REPLY_WINDOW_BYTES. */
export class WindowedDigest {
  /** Bytes seen. */
  total = 0;
  private crc = 0;
  /** Feed `bytes`; returns the CRCs of the windows they completed, in order. If `markAt` lies
   *  within them, `onMark` gets the CRC of the window's part up to that offset. */
  push(bytes: Buffer, markAt = -1, onMark?: (crc: number) => void): number[] {
    const done: number[] = [];
    let at = 0;
    while (at < bytes.length) {
      let n = Math.min(W - (this.total % W), bytes.length - at);
      if (markAt > this.total && markAt < this.total + n) n = markAt - this.total;
      this.crc = crc32(bytes.subarray(at, at + n), this.crc);
      this.total += n;
      at += n;
      if (this.total === markAt) onMark?.(this.total % W === 0 ? 0 : this.crc);
      if (this.total % W === 0) { done.push(this.crc); this.crc = 0; }
    }
    return done;
  }
  /** Whole windows seen. */
  get windows(): number { return Math.floor(this.total / W); }
  /** CRC of the bytes after the last whole window (0 if none). */
  get tail(): number { return this.crc; }
}

export type Verdict = "open" | "matched" | "diverged" | "abandoned";

export interface Divergence {
  /** Reply offset of the first window (or byte) that differs. */
  offset: number;
  detail: string;
}

export interface ReplyCheckEvents<K> {
  diverged(replica: K, d: Divergence): void;
  matched(replica: K, bytes: number): void;
  abandoned(replica: K, why: string): void;
  /** Windows compared equal (for a counter). */
  compared(replica: K, windows: number): void;
}

class ReplicaSide {
  readonly digest = new WindowedDigest();
  /** CRCs of the replica's windows [compared, compared + pending.length - head). */
  pending: number[] = [];
  head = 0;
  /** Windows compared equal so far: the next window to compare. */
  compared = 0;
  ended = false;
  /** CRC of the replica's bytes from the last whole window below the primary's total up to that
   *  total, once its stream passed it (needed when the primary's stream was CUT there). */
  tailAtPrimaryTotal?: number;
  /** While the primary's end is not known: the replica's bytes from the primary's current window
   *  (the one its end will fall in) on, so the last partial window can be judged even when the
   *  replica answered past that point first. At most KEPT_WINDOWS windows (32 KiB). */
  readonly kept = new KeptWindow();
  verdict: Verdict = "open";
  get pendingCount(): number { return this.pending.length - this.head; }
}

/** Windows of a replica's reply kept while the primary's end is not known. */
export const KEPT_WINDOWS = 2;

/** A replica's reply bytes from the start of window `window` (the primary's current one, where
 *  its end will fall) on, at most KEPT_WINDOWS windows: `complete` is false once a byte from the
 *  window's start went by without being kept (the replica was that far ahead). */
class KeptWindow {
  window = 0;
  complete = true;
  private bytes = Buffer.alloc(0);

  /** Keep what of `bytes`, which start at reply offset `at`, falls in the kept range. */
  add(bytes: Buffer, at: number): void {
    if (!this.complete) return;
    const from = this.window * W + this.bytes.length; // the next byte to keep
    const start = Math.max(at, from), end = Math.min(at + bytes.length, (this.window + KEPT_WINDOWS) * W);
    if (at > from) { this.release(); return; } // a gap: bytes went by unkept
    if (start < end) this.bytes = Buffer.concat([this.bytes, bytes.subarray(start - at, end - at)]);
  }

  /** The primary's digests reached window `window`; `seen` is how many reply bytes went by. */
  moveTo(window: number, seen: number): void {
    if (window === this.window) return;
    const drop = (window - this.window) * W;
    const keptUpTo = this.window * W + this.bytes.length;
    this.window = window;
    // Complete if nothing of the new window went by yet, or every byte that did is kept.
    const nothingSeen = seen <= window * W;
    this.complete = nothingSeen || (this.complete && keptUpTo >= seen);
    this.bytes = !nothingSeen && this.complete ? Buffer.from(this.bytes.subarray(drop)) : Buffer.alloc(0);
  }

  /** CRC-32 of the window's bytes up to reply offset `total`, or undefined if they were not all kept. */
  crcUpTo(total: number): number | undefined {
    const want = total - this.window * W;
    if (!this.complete || this.bytes.length < want) return undefined;
    return want === 0 ? 0 : crc32(this.bytes.subarray(0, want));
  }

  release(): void { this.bytes = Buffer.alloc(0); this.complete = false; }
}

const range = (window: number) => `bytes ${window * W}-${(window + 1) * W - 1}`;
const hex = (crc: number) => crc.toString(16).padStart(8, "0");

export class ReplyCheck<K> {
  /** The primary's window CRCs [primaryWindows - primary.length, primaryWindows). */
  private primary: number[] = [];
  private primaryWindows = 0;
  private primaryEnd?: { total: number; tail: number; end: ReplyEndKind };
  private readonly sides = new Map<K, ReplicaSide>();

  constructor(private readonly events: ReplyCheckEvents<K>) {}

  addReplica(replica: K): void { this.sides.set(replica, new ReplicaSide()); }

  /** Stop checking a replica that has no verdict yet (it left the connection for another
   *  reason, or its replies did not come in time): its verdict is "abandoned", with `why`. Every
   *  replica added ends with exactly one verdict: matched, diverged or abandoned. */
  giveUp(replica: K, why: string): void {
    const s = this.sides.get(replica);
    if (!s || s.verdict !== "open") return;
    this.settle(replica, s, "abandoned");
    this.events.abandoned(replica, why);
  }

  verdict(replica: K): Verdict { return this.sides.get(replica)?.verdict ?? "open"; }

  /** The primary's windows `firstWindow`, `firstWindow + 1`, ... (a REPLY_DIGEST frame). */
  primaryDigests(firstWindow: number, crcs: readonly number[]): void {
    if (this.primaryEnd) throw new FrameError("REPLY_DIGEST after REPLY_END");
    if (firstWindow !== this.primaryWindows) throw new FrameError(`REPLY_DIGEST for window ${firstWindow}, expected ${this.primaryWindows}`);
    this.primary.push(...crcs);
    this.primaryWindows += crcs.length;
    for (const s of this.sides.values()) if (s.verdict === "open") s.kept.moveTo(this.primaryWindows, s.digest.total);
    for (const [k, s] of this.sides) this.advance(k, s);
    if (this.primary.length > MAX_PENDING_WINDOWS) {
      // Replicas this far behind in answering hold the primary's digests: stop checking them.
      for (const [k, s] of this.sides) {
        if (s.verdict === "open" && this.primaryWindows - s.compared > MAX_PENDING_WINDOWS) {
          this.settle(k, s, "abandoned");
          this.events.abandoned(k, `its replies are more than ${MAX_PENDING_WINDOWS} windows behind the primary's`);
        }
      }
    }
    this.trimPrimary();
  }

  /** The primary's reply stream ended at `total` bytes (REPLY_END). */
  primaryEnded(total: number, tail: number, end: ReplyEndKind): void {
    if (this.primaryEnd) throw new FrameError("second REPLY_END");
    if (Math.floor(total / W) !== this.primaryWindows) {
      throw new FrameError(`REPLY_END at ${total} bytes, but ${this.primaryWindows} whole windows were digested (expected ${Math.floor(total / W)})`);
    }
    this.primaryEnd = { total, tail, end };
    for (const [k, s] of this.sides) {
      if (s.verdict !== "open") continue;
      if (s.digest.total === total) s.tailAtPrimaryTotal = s.digest.tail;
      else if (s.digest.total > total) {
        // It answered past this point before the end was known: the kept window decides.
        s.tailAtPrimaryTotal = s.kept.crcUpTo(total);
        if (s.tailAtPrimaryTotal === undefined) {
          this.settle(k, s, "abandoned");
          this.events.abandoned(k, `it answered past the primary's end (${total} bytes) more than a window ahead of the primary's digests, so its last partial window cannot be compared`);
          continue;
        }
      }
      s.kept.release();
      this.advance(k, s);
    }
  }

  /** Bytes the replica answered. */
  replicaBytes(replica: K, bytes: Buffer): void {
    const s = this.sides.get(replica);
    if (!s || s.verdict !== "open") return;
    const mark = this.primaryEnd && s.digest.total < this.primaryEnd.total ? this.primaryEnd.total : -1;
    if (!this.primaryEnd) s.kept.add(bytes, s.digest.total);
    for (const crc of s.digest.push(bytes, mark, (c) => { s.tailAtPrimaryTotal = c; })) s.pending.push(crc);
    if (s.pendingCount > MAX_PENDING_WINDOWS) {
      this.settle(replica, s, "abandoned");
      this.events.abandoned(replica, `it answered more than ${MAX_PENDING_WINDOWS} windows ahead of the primary's digests`);
      return;
    }
    this.advance(replica, s);
  }

  /** The replica's reply stream is over (it closed its side, or we stop waiting for it). */
  replicaEnded(replica: K): void {
    const s = this.sides.get(replica);
    if (!s || s.ended) return;
    s.ended = true;
    this.advance(replica, s);
  }

  private settle(replica: K, s: ReplicaSide, verdict: Verdict): void {
    s.verdict = verdict;
    s.kept.release();
    s.pending = [];
    s.head = 0;
    this.trimPrimary();
  }

  private diverge(replica: K, s: ReplicaSide, d: Divergence): void {
    this.settle(replica, s, "diverged");
    this.events.diverged(replica, d);
  }

  /** Compare what both sides have; judge the end once both ends are known. */
  private advance(replica: K, s: ReplicaSide): void {
    if (s.verdict !== "open") return;
    const base = this.primaryWindows - this.primary.length;
    let matched = 0;
    while (s.pendingCount > 0 && s.compared < this.primaryWindows) {
      const mine = s.pending[s.head];
      const theirs = this.primary[s.compared - base];
      if (mine !== theirs) {
        if (matched) this.events.compared(replica, matched);
        return this.diverge(replica, s, { offset: s.compared * W, detail: `window ${s.compared} (${range(s.compared)}) differs: replica CRC-32 ${hex(mine)}, primary ${hex(theirs)}` });
      }
      s.head++;
      s.compared++;
      matched++;
    }
    if (s.head > 1024) { s.pending = s.pending.slice(s.head); s.head = 0; }
    if (matched) { this.events.compared(replica, matched); this.trimPrimary(); }

    const pe = this.primaryEnd;
    if (!pe) return;
    const replicaTotal = s.digest.total;
    const wholeWindows = Math.floor(pe.total / W);
    if (s.compared >= wholeWindows && s.tailAtPrimaryTotal !== undefined && s.tailAtPrimaryTotal !== pe.tail) {
      return this.judgeTail(replica, s, wholeWindows, s.tailAtPrimaryTotal, pe); // the first difference is there
    }
    // Bytes a replica answered past the primary's end are never judged, whether the primary
    // closed its side or the connection was cut: a primary that crashed (kill -9 closes its
    // sockets with a FIN, like a normal close) stops mid-reply while its replicas go on.
    if (replicaTotal >= pe.total && s.compared >= wholeWindows) {
      // Every whole window is matched; the primary's last partial window decides.
      // At the primary's end exactly, its running CRC is the tail; past it, the CRC taken there.
      this.judgeTail(replica, s, wholeWindows, s.tailAtPrimaryTotal ?? s.digest.tail, pe);
      return;
    }
    if (s.ended && replicaTotal < pe.total) {
      this.diverge(replica, s, { offset: replicaTotal, detail: `the replica answered ${replicaTotal} bytes, the primary ${pe.total}` });
    }
  }

  private judgeTail(replica: K, s: ReplicaSide, window: number, mine: number, pe: { total: number; tail: number }): void {
    if (mine !== pe.tail) {
      return this.diverge(replica, s, { offset: window * W, detail: `last window ${window} (bytes ${window * W}-${pe.total - 1}) differs: replica CRC-32 ${hex(mine)}, primary ${hex(pe.tail)}` });
    }
    this.finishMatched(replica, s, pe.total);
  }

  private finishMatched(replica: K, s: ReplicaSide, bytes: number): void {
    this.settle(replica, s, "matched");
    this.events.matched(replica, bytes);
  }

  /** Drop the primary's digests every open replica has compared. */
  private trimPrimary(): void {
    const base = this.primaryWindows - this.primary.length;
    let low = this.primaryWindows;
    for (const s of this.sides.values()) if (s.verdict === "open") low = Math.min(low, s.compared);
    if (low > base) this.primary = this.primary.slice(low - base);
  }
}
