// The clients of a chaos run. Several concurrent clients, each starting connections on an
// open-loop schedule (the next starts on time whether or not the last has finished, up to a
// few at once): short and long ones, one write at a time or pipelined, some half-closed right
// after sending. Every write appends a token unique to the run (`c<client>-<seq>`) to its
// connection's own list and counts it in its client's counter (target.ts: one atomic
// command); each is recorded as acked, indeterminate or rejected (history.ts).
//
// Why a list per connection: lockstep keeps byte order within a connection, not the order of
// different connections (docs/CONSISTENCY.md), so only what one connection writes has a
// defined order on every member. The counter is shared by a client's connections, and its
// value never appears in a reply, so replicas still answer exactly as the primary does.
import { connect, type Socket } from "node:net";
import { Prng } from "./prng.ts";
import { counterKey, type History, type WriteOp } from "./history.ts";
import type { Target } from "./target.ts";

export interface WorkloadOptions {
  /** Envoy's listener. */
  readonly port: number;
  readonly target: Target;
  readonly history: History;
  readonly seed: number;
  readonly clients: number;
  /** Mean gap between the starts of a client's connections. */
  readonly meanGapMs: number;
  /** A connection with a write unanswered this long is given up (its writes indeterminate). */
  readonly replyTimeoutMs: number;
}

/** Connections one client may have open at once (the open loop's cap). */
const MAX_OPEN_PER_CLIENT = 3;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One client connection: sends appends, matches replies to them in order, and settles every
 *  write still unanswered when it closes as indeterminate. */
class Connection {
  private readonly socket: Socket;
  private readonly waiting: WriteOp[] = [];
  private buffer: Buffer = Buffer.alloc(0);
  private lastProgress = Date.now();
  private error?: string;
  private wake = () => {};
  private readonly timer: NodeJS.Timeout;
  closed = false;
  readonly ended: Promise<void>;

  constructor(private readonly o: WorkloadOptions, private readonly client: number, private readonly conn: number, private readonly nextSeq: () => number) {
    this.socket = connect({ port: o.port, host: "127.0.0.1", allowHalfOpen: true, noDelay: true });
    this.timer = setInterval(() => {
      if (this.waiting.length && Date.now() - this.lastProgress > o.replyTimeoutMs) { this.error = "timeout"; this.socket.destroy(); }
    }, 100);
    this.socket.on("data", (chunk: Buffer) => this.onData(chunk));
    // The server closed its side: close ours (allowHalfOpen keeps reading after our own end).
    this.socket.on("end", () => this.socket.end());
    this.socket.on("error", (err) => { this.error ??= (err as NodeJS.ErrnoException).code ?? err.message; });
    this.ended = new Promise((resolve) => this.socket.on("close", () => {
      this.closed = true;
      clearInterval(this.timer);
      for (const op of this.waiting.splice(0)) o.history.settle(op, "indeterminate", this.error ?? "closed before its reply");
      this.wake();
      resolve();
    }));
  }

  private onData(chunk: Buffer): void {
    this.lastProgress = Date.now();
    const { replies, rest } = this.o.target.takeReplies(Buffer.concat([this.buffer, chunk]));
    this.buffer = rest;
    for (const reply of replies) {
      const op = this.waiting.shift();
      if (!op) { this.error = `a reply nobody asked for: ${JSON.stringify(reply)}`; this.socket.destroy(); return; }
      if ("length" in reply) this.o.history.settle(op, "acked", undefined, reply.length);
      else this.o.history.settle(op, "rejected", reply.error);
    }
    if (!this.waiting.length) this.wake();
  }

  /** Send `n` appends in one write (pipelined when n > 1). */
  send(n: number): void {
    if (this.closed) return;
    const bytes: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const op = this.o.history.write(this.client, this.conn, this.nextSeq());
      this.waiting.push(op);
      bytes.push(this.o.target.append(op.key, op.token, counterKey(this.client)));
    }
    if (this.waiting.length === n) this.lastProgress = Date.now();
    this.socket.write(Buffer.concat(bytes));
  }

  /** Resolves once every write sent has its reply (true) or the connection closed (false). */
  async replies(): Promise<boolean> {
    while (this.waiting.length && !this.closed) await new Promise<void>((r) => { this.wake = r; });
    return !this.closed;
  }

  halfClose(): void { this.socket.end(); }

  /** Close cleanly (after the replies) and wait until the server has closed too. */
  async finish(): Promise<void> {
    this.socket.end();
    const late = setTimeout(() => this.socket.destroy(), this.o.replyTimeoutMs);
    await this.ended;
    clearTimeout(late);
  }
}

export class Workload {
  private paused = false;
  private stopped = false;
  private resumed = Promise.resolve();
  private release = () => {};
  private readonly open = new Set<Promise<void>>();
  private clients: Promise<void>[] = [];
  /** Connections opened so far. */
  connections = 0;

  constructor(private readonly o: WorkloadOptions) {}

  start(): void {
    this.clients = Array.from({ length: this.o.clients }, (_, i) => this.client(i + 1));
  }

  /** No new connections; long ones stop after their current write. Resolves once every
   *  connection of the workload has closed. */
  async pause(): Promise<void> {
    if (!this.paused) {
      this.paused = true;
      this.resumed = new Promise((r) => { this.release = r; });
    }
    while (this.open.size) await Promise.all([...this.open]);
  }

  resume(): void {
    this.paused = false;
    this.release();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.pause();
    this.release();
    await Promise.all(this.clients);
  }

  private async client(id: number): Promise<void> {
    const schedule = new Prng(this.o.seed, `client ${id}`);
    let conn = 0;
    let seq = 0;
    const mine = new Set<Promise<void>>();
    while (!this.stopped) {
      if (this.paused) { await this.resumed; continue; }
      if (mine.size >= MAX_OPEN_PER_CLIENT) { await Promise.race(mine); continue; }
      const run = this.session(id, ++conn, () => ++seq).finally(() => { mine.delete(run); this.open.delete(run); });
      mine.add(run);
      this.open.add(run);
      await sleep(schedule.exponential(this.o.meanGapMs));
    }
  }

  /** One connection of client `id`, of a shape drawn from the seed. */
  private async session(id: number, conn: number, nextSeq: () => number): Promise<void> {
    this.connections++;
    const prng = new Prng(this.o.seed, `client ${id} connection ${conn}`);
    const c = new Connection(this.o, id, conn, nextSeq);
    const shape = prng.next();
    if (shape < 0.45) {
      // Short: one to three writes, each waiting for its reply.
      for (let i = prng.int(1, 3); i > 0 && (await this.step(c, 1)); i--);
    } else if (shape < 0.7) {
      // Pipelined: one batch; some connections half-close before reading the replies.
      c.send(prng.int(5, 40));
      if (prng.chance(0.3)) c.halfClose();
      await c.replies();
    } else if (shape < 0.9) {
      // Long: many writes one at a time, with think time, until paused.
      for (let i = prng.int(10, 60); i > 0 && !this.paused && (await this.step(c, 1)); i--) await sleep(prng.int(5, 30));
    } else {
      // Long and pipelined: batches with think time.
      for (let i = prng.int(3, 8); i > 0 && !this.paused && (await this.step(c, prng.int(5, 20))); i--) await sleep(prng.int(10, 50));
    }
    await c.finish();
  }

  private async step(c: Connection, n: number): Promise<boolean> {
    c.send(n);
    return c.replies();
  }
}
