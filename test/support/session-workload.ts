// Session mode's workload (issue 11): many long-lived client connections, each running rounds
// of pipelined commands on its own keys (so its reply stream does not depend on how the server
// interleaves connections, and a failure-free run with another key prefix is its reference),
// on the sample key-value server or Redis. Each connection ends normally (Redis: QUIT; kv: the
// client half-closes and the server closes) and records every reply byte and any error.
import { connect } from "node:net";
import { parseResp, resp, redisCall } from "./redis.ts";
import { kvExchange } from "../../samples/kv-client.ts";
import type { Backend } from "./stack.ts";

export interface Dialect {
  /** The commands of round `round` of connection `conn`, on keys under `prefix`. */
  batch(prefix: string, conn: number, round: number): Buffer;
  /** Answers each batch gets. */
  readonly answersPerBatch: number;
  /** Complete answers in `buf` from `at`: how many, and where the next starts. */
  count(buf: Buffer, at: number): { n: number; at: number };
  /** How the client ends: bytes to send last (then it reads until the server closes), or null
   *  to half-close. */
  readonly goodbye: Buffer | null;
  /** What connection `conn` wrote in `rounds` rounds, read back from a member at `port`, as
   *  it should be (each write exactly once, in order). */
  readBack(port: number, prefix: string, conn: number): Promise<string[]>;
  expected(conn: number, rounds: number): string[];
}

const token = (conn: number, round: number, k: string) => `c${conn}r${round}${k}`;

const kv: Dialect = {
  batch: (p, c, r) => Buffer.from(`APPEND ${p}:${c} ${token(c, r, "a")}\nAPPEND ${p}:${c} ${token(c, r, "b")}\nGET ${p}:${c}\nINCR ${p}:n:${c}\n`),
  answersPerBatch: 4,
  count(buf, at) {
    let n = 0;
    for (let i = buf.indexOf(10, at); i >= 0; i = buf.indexOf(10, at)) { n++; at = i + 1; }
    return { n, at };
  },
  goodbye: null,
  async readBack(port, p, c) { return (await kvExchange(port, [`GET ${p}:${c}`]))[0].replace(/^VALUE /, "").split(" "); },
  expected: (c, rounds) => Array.from({ length: rounds }, (_, r) => [token(c, r, "a"), token(c, r, "b")]).flat(),
};

const redis: Dialect = {
  batch: (p, c, r) => Buffer.concat([resp("RPUSH", `${p}:${c}`, token(c, r, "a"), token(c, r, "b")), resp("LRANGE", `${p}:${c}`, "-3", "-1"), resp("INCR", `${p}:n:${c}`)]),
  answersPerBatch: 3,
  count(buf, at) {
    let n = 0;
    for (let r = parseResp(buf, at); r; r = parseResp(buf, at)) { n++; at = r.end; }
    return { n, at };
  },
  goodbye: resp("QUIT"),
  async readBack(port, p, c) { return await redisCall(port, ["LRANGE", `${p}:${c}`, "0", "-1"]) as string[]; },
  expected: kv.expected,
};

export const DIALECTS: Record<Backend, Dialect> = { kv, redis };

export interface ConnectionResult {
  readonly reply: Buffer;
  /** A socket error, a close before every answer, or the timeout. */
  readonly error?: string;
  readonly rounds: number;
}

export interface WorkloadOptions {
  readonly connections: number;
  readonly rounds: number;
  /** Pause between a round's answers and the next round. */
  readonly pauseMs: number;
  readonly prefix: string;
  readonly timeoutMs?: number;
  /** Rounds answered so far, per connection (updated as they are). */
  readonly progress?: number[];
}

/** One connection: `rounds` rounds, each written at once and answered before the next. */
export function runConnection(port: number, d: Dialect, conn: number, o: WorkloadOptions): Promise<ConnectionResult> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" });
    const chunks: Buffer[] = [];
    let buf = Buffer.alloc(0);
    let at = 0;
    let answers = 0;
    let round = 0;
    let error: string | undefined;
    const timer = setTimeout(() => { error = `timed out after ${round} rounds`; socket.destroy(); }, o.timeoutMs ?? 30_000);
    const next = () => {
      if (round === o.rounds) { if (d.goodbye) socket.write(d.goodbye); else socket.end(); return; }
      socket.write(d.batch(o.prefix, conn, round));
    };
    socket.on("connect", next);
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      buf = Buffer.concat([buf, chunk]);
      const c = d.count(buf, at);
      answers += c.n;
      at = c.at;
      if (round < o.rounds && answers >= (round + 1) * d.answersPerBatch) {
        round++;
        if (o.progress) o.progress[conn] = round;
        setTimeout(next, o.pauseMs);
      }
    });
    socket.on("error", (e) => { error ??= e.message; });
    socket.on("close", () => {
      clearTimeout(timer);
      if (!error && round < o.rounds) error = `closed after ${round} of ${o.rounds} rounds`;
      resolve({ reply: Buffer.concat(chunks), error, rounds: round });
    });
  });
}

/** `o.connections` connections at once. */
export function runWorkload(port: number, d: Dialect, o: WorkloadOptions): Promise<ConnectionResult[]> {
  return Promise.all(Array.from({ length: o.connections }, (_, i) => runConnection(port, d, i, o)));
}
