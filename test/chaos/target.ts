// What the fault-injection test needs from the service it runs on, in that service's own
// protocol: the workload's append (a token to a connection's list, and the client's counter
// in the same step), a large write for uploads, parsing the replies, and, for the checker and
// the operator's reseed, a member's digest, its whole state, and copying one member's data
// into another. kv-target.ts and redis-target.ts implement it.
import type { Backend } from "../support/stack.ts";

/** A member's data, read for the checker: lists `log:*` (the appended tokens, in order),
 *  counters `n:*`, uploads `upload:*` (their values summarised: see summarise), anything else. */
export interface State {
  readonly lists: Map<string, string[]>;
  readonly counters: Map<string, number>;
  readonly uploads: Map<string, string>;
  readonly others: Map<string, string>;
}

/** A workload reply: the list's new length, or the server's error. */
export type Reply = { length: number } | { error: string };

export interface Target {
  readonly name: Backend;
  /** Append `token` to the list `key` and count it in `counter`, atomically; the reply is the
   *  list's new length only (so concurrent connections of one client get replies that do not
   *  depend on the order they were served in: the reply check stays quiet). */
  append(key: string, token: string, counter: string): Buffer;
  /** Set `key` to `value` (one command of an upload). */
  upload(key: string, value: string): Buffer;
  /** The complete replies at the start of `buffer`, and the bytes after them. */
  takeReplies(buffer: Buffer): { replies: Reply[]; rest: Buffer };
  /** The server's own digest of its whole data set (a member's port, or Envoy's listener:
   *  then that of whichever member clients reach). */
  digest(port: number): Promise<string>;
  /** Which server process answers on `port` (a member's, or Envoy's listener), read cheaply:
   *  a whole-data-set read through Envoy can outlast Envoy's health-check timeout, and Envoy
   *  then closes the connection running it. */
  identity(port: number): Promise<string>;
  state(port: number): Promise<State>;
  /** Make the member on `toPort` hold exactly the data of the member on `fromPort` (nothing
   *  else may write to either meanwhile); throws unless their digests then match. */
  copy(fromPort: number, toPort: number): Promise<void>;
}

/** Long values (uploads) are compared by digest; the checker shows their start and length. */
export function summarise(value: string): string {
  return value.length > 200 ? `${value.slice(0, 40)}...(${value.length} bytes)` : value;
}

/** Sort a member's keys into the State's families. */
export function toState(entries: Iterable<[string, string | string[]]>): State {
  const state: State = { lists: new Map(), counters: new Map(), uploads: new Map(), others: new Map() };
  for (const [key, value] of entries) {
    if (key.startsWith("log:")) state.lists.set(key, Array.isArray(value) ? value : value.split(" "));
    else if (key.startsWith("n:") && typeof value === "string") state.counters.set(key, Number(value));
    else if (key.startsWith("upload:") && typeof value === "string") state.uploads.set(key, summarise(value));
    else state.others.set(key, JSON.stringify(value));
  }
  return state;
}

/** Split `buffer` into the lines it holds in full (without their line end) and the rest. */
export function takeLines(buffer: Buffer): { lines: string[]; rest: Buffer } {
  const lines: string[] = [];
  let at = 0;
  for (let nl = buffer.indexOf(10); nl >= 0; nl = buffer.indexOf(10, at)) {
    lines.push(buffer.toString("utf8", at, nl).replace(/\r$/, ""));
    at = nl + 1;
  }
  return { lines, rest: buffer.subarray(at) };
}
