// One session-mode connection's reply stream (docs/SESSION.md). What the client gets is one
// byte stream R, produced by the connection's leader (its primary; after a takeover, the
// successor). Every other member's replies are compared with R byte for byte at the same
// offsets: a member's bytes past R's end wait (bounded: `aheadBytes`) until R reaches them; R's
// bytes that a member has not produced yet are kept (bounded: `behindBytes`) until it does.
// A takeover makes another member the leader: its replies below R's end are checked against R
// (the client has them already), and only what lies past R's end is sent on. So the client sees
// one stream, and a member whose replies differ from it anywhere is never its source.
// Pure logic: no I/O, no timers; the session feeds it and acts on its events.
//
// Per member:  in ──differs from R──► diverged      in ──a bound passed──► overflow
// Only a member "in" may take over.

export type SpliceState = "in" | "diverged" | "overflow";

export interface SpliceBounds {
  /** Reply bytes one member may be ahead of R by (past this it is not compared: "overflow"). */
  readonly aheadBytes: number;
  /** Bytes of R kept for a member that has not produced them yet (past this: "overflow"). */
  readonly behindBytes: number;
  /** A shared budget every byte held here is taken from (the relay's ByteBudget): when it
   *  refuses, the member that needed the bytes kept overflows. */
  readonly budget?: { take(n: number): boolean; give(n: number): void };
}

export interface SpliceEvents<K> {
  /** The next bytes of R, to send to the client. */
  send(bytes: Buffer): void;
  /** `member`'s replies differ from R at reply offset `offset`. */
  diverged(member: K, offset: number, detail: string): void;
  /** `member` is compared no more (a bound passed): it cannot take over this connection. */
  overflowed(member: K, why: string): void;
}

interface Side {
  /** Reply bytes the member produced. */
  offset: number;
  /** Its bytes past R's end: [R's end, offset). */
  ahead: Buffer[];
  aheadBytes: number;
  state: SpliceState;
}

/** R's bytes from `start` on, as received (no copies). */
class ByteLog {
  start = 0;
  bytes = 0;
  private chunks: Buffer[] = [];
  append(b: Buffer): void { this.chunks.push(b); this.bytes += b.length; }
  /** Drop everything before offset `to`; returns how many bytes were dropped. */
  trimTo(to: number): number {
    const before = this.bytes;
    while (this.chunks.length && this.start + this.chunks[0].length <= to) { this.start += this.chunks[0].length; this.bytes -= this.chunks[0].length; this.chunks.shift(); }
    if (this.chunks.length && to > this.start) {
      const cut = to - this.start;
      this.chunks[0] = this.chunks[0].subarray(cut);
      this.start += cut;
      this.bytes -= cut;
    }
    return before - this.bytes;
  }
  /** Drop everything; the log restarts at `at`. Returns how many bytes were dropped. */
  clear(at: number): number {
    const dropped = this.bytes;
    this.chunks = [];
    this.bytes = 0;
    this.start = at;
    return dropped;
  }
  /** Index in `b` of the first byte that differs from R at offset `at` (-1: none). */
  firstDifference(at: number, b: Buffer): number {
    let pos = this.start;
    let i = 0;
    for (const c of this.chunks) {
      if (i >= b.length) break;
      const end = pos + c.length;
      if (end > at + i) {
        const from = at + i - pos;
        const n = Math.min(c.length - from, b.length - i);
        if (c.compare(b, i, i + n, from, from + n) !== 0) {
          for (let k = 0; k < n; k++) if (c[from + k] !== b[i + k]) return i + k;
        }
        i += n;
      }
      pos = end;
    }
    return i < b.length ? i : -1;
  }
}

export class ReplySplice<K> {
  /** R's length so far: every byte of it was sent to the client. */
  private total = 0;
  private readonly log = new ByteLog();
  private readonly sides = new Map<K, Side>();
  private current: K;

  constructor(leader: K, followers: readonly K[], private readonly bounds: SpliceBounds, private readonly events: SpliceEvents<K>) {
    this.current = leader;
    for (const k of [leader, ...followers]) this.sides.set(k, { offset: 0, ahead: [], aheadBytes: 0, state: "in" });
  }

  get leader(): K { return this.current; }
  /** Bytes of R sent to the client. */
  get sent(): number { return this.total; }
  state(member: K): SpliceState | undefined { return this.sides.get(member)?.state; }
  /** Reply bytes `member` produced. */
  produced(member: K): number { return this.sides.get(member)?.offset ?? 0; }
  /** Bytes `member` produced past R's end (it answered what the leader has not yet). */
  ahead(member: K): number { return this.sides.get(member)?.aheadBytes ?? 0; }
  /** Bytes of R kept for members behind (memory held besides the members' ahead bytes). */
  get keptBytes(): number { return this.log.bytes; }

  /** Reply bytes from `member`, in order. */
  bytes(member: K, b: Buffer): void {
    const s = this.sides.get(member);
    if (!s || s.state !== "in" || b.length === 0) return;
    let at = 0;
    if (s.offset < this.total) { // behind: these were sent already; they must equal R
      const n = Math.min(b.length, this.total - s.offset);
      const d = this.log.firstDifference(s.offset, b.subarray(0, n));
      if (d >= 0) return this.diverge(member, s, s.offset + d, `byte ${s.offset + d} differs from what the client got`);
      s.offset += n;
      at = n;
      this.trimLog();
    }
    if (at === b.length) return;
    const rest = at === 0 ? b : b.subarray(at);
    s.offset += rest.length;
    if (member === this.current) return this.extend(rest);
    if (s.aheadBytes + rest.length > this.bounds.aheadBytes) {
      return this.overflow(member, s, `its replies ran more than ${this.bounds.aheadBytes} bytes ahead of the leader's`);
    }
    if (this.bounds.budget && !this.bounds.budget.take(rest.length)) return this.overflow(member, s, "the relay's memory bound is reached");
    s.ahead.push(rest);
    s.aheadBytes += rest.length;
  }

  /** Stop following `member` (it left the connection). */
  drop(member: K): void {
    const s = this.sides.get(member);
    if (!s) return;
    this.release(s);
    this.sides.delete(member);
    this.trimLog();
  }

  /**
   * Make `member` (state "in") the leader: what it produced past R's end is sent now, the
   * rest of its replies follow as they come; the former leader is dropped. False (nothing
   * changed) if it may not take over.
   */
  takeOver(member: K): boolean {
    const s = this.sides.get(member);
    if (!s || s.state !== "in" || member === this.current) return false;
    this.drop(this.current);
    this.current = member;
    const ahead = s.ahead;
    this.bounds.budget?.give(s.aheadBytes); // they leave its buffer; extend keeps what others still need
    s.ahead = [];
    s.aheadBytes = 0;
    for (const b of ahead) this.extend(b);
    return true;
  }

  /** Whether `member`, whose replies are over, produced exactly R (to R's end now). */
  endsWithR(member: K): boolean {
    const s = this.sides.get(member);
    return s !== undefined && s.state === "in" && s.offset === this.total;
  }

  /** R grows by `b` (the leader's bytes): send it, match members that were ahead. */
  private extend(b: Buffer): void {
    const start = this.total;
    this.total += b.length;
    for (const [k, s] of this.sides) {
      if (k === this.current || s.state !== "in" || s.aheadBytes === 0) continue;
      // Compare its ahead bytes with the start of b.
      let i = 0;
      while (s.ahead.length && i < b.length) {
        const c = s.ahead[0];
        const n = Math.min(c.length, b.length - i);
        if (c.compare(b, i, i + n, 0, n) !== 0) {
          let k2 = 0;
          while (c[k2] === b[i + k2]) k2++;
          this.diverge(k, s, start + i + k2, `byte ${start + i + k2} differs from what the client got`);
          break;
        }
        i += n;
        s.aheadBytes -= n;
        this.bounds.budget?.give(n);
        if (n === c.length) s.ahead.shift(); else s.ahead[0] = c.subarray(n);
      }
    }
    // Kept only while a member still has to produce these bytes.
    const behind = [...this.sides].filter(([, s]) => s.state === "in" && s.offset < this.total);
    if (behind.length) {
      if (!this.bounds.budget || this.bounds.budget.take(b.length)) this.log.append(b);
      else {
        this.bounds.budget.give(this.log.clear(this.total));
        for (const [k, s] of behind) this.overflow(k, s, "the relay's memory bound is reached");
      }
    } else if (this.log.bytes === 0) this.log.start = this.total;
    this.trimLog();
    this.events.send(b);
  }

  /** Keep R only from the offset of the member furthest behind; past the bound, it overflows. */
  private trimLog(): void {
    for (;;) {
      let min = this.total;
      let laggard: [K, Side] | undefined;
      for (const [k, s] of this.sides) {
        if (s.state === "in" && s.offset < min) { min = s.offset; laggard = [k, s]; }
      }
      if (min > this.log.start) {
        const dropped = this.log.trimTo(Math.min(min, this.log.start + this.log.bytes));
        this.bounds.budget?.give(dropped);
        if (this.log.bytes === 0) this.log.start = min;
      }
      if (!laggard || this.log.bytes <= this.bounds.behindBytes) return;
      this.overflow(laggard[0], laggard[1], `its replies fell more than ${this.bounds.behindBytes} bytes behind the leader's`);
    }
  }

  private release(s: Side): void {
    this.bounds.budget?.give(s.aheadBytes);
    s.ahead = [];
    s.aheadBytes = 0;
  }

  /** The connection is over: give back every byte held. */
  dispose(): void {
    for (const s of this.sides.values()) this.release(s);
    this.bounds.budget?.give(this.log.clear(this.total));
  }

  private diverge(member: K, s: Side, offset: number, detail: string): void {
    s.state = "diverged";
    this.release(s);
    this.events.diverged(member, offset, detail);
  }

  private overflow(member: K, s: Side, why: string): void {
    s.state = "overflow";
    this.release(s);
    this.events.overflowed(member, why);
  }
}
