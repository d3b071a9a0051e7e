// Real redis-server instances (Debian's package; .ci/run installs it) for the consistency
// and fault-injection tests: each started empty and standalone on a loopback port (free, or
// the one it had before a restart), no persistence, with DEBUG enabled so `DEBUG DIGEST` can
// compare whole data sets, and full syncs sent at once (an operator's REPLICAOF reseed).
// Plus RESP clients: a raw one that sends a pipelined script in odd-sized writes and returns
// every reply byte, and one that makes a single call and parses its reply.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startProcess, type Managed } from "./processes.ts";
import { freePort, waitFor } from "./ports.ts";

export const HAVE_REDIS = spawnSync("redis-server", ["--version"]).status === 0;

export interface RedisHandle {
  readonly name: string;
  readonly port: number;
  readonly address: string;
  readonly process: Managed;
  /** Run redis-cli against this instance (the server's own tool); returns its output, trimmed. */
  cli(...args: string[]): string;
  kill(): Promise<void>;
}

export async function startRedis(name: string, port?: number): Promise<RedisHandle> {
  if (!HAVE_REDIS) throw new Error("redis-server not found: install it (Debian: apt-get install redis-server; .ci/run does)");
  port ??= await freePort();
  const dir = mkdtempSync(join(tmpdir(), `lockstep-redis-${name}-`));
  const proc = startProcess(`redis ${name}`, "redis-server", [
    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    "--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0", "--dir", dir, "--daemonize", "no", "--loglevel", "warning",
  ]);
  const cli = (...args: string[]) => execFileSync("redis-cli", ["-p", String(port), ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
  await waitFor(`redis ${name} to answer PING`, () => {
    if (proc.exited()) throw new Error(`redis-server exited:\n${proc.output()}`);
    try { return cli("PING") === "PONG"; } catch { return false; }
  }, 10_000, 20);
  return { name, port, address: `127.0.0.1:${port}`, process: proc, cli, kill: () => proc.kill("SIGTERM") };
}

/** One command in RESP (an array of bulk strings). */
export function resp(...args: (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(a);
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from("\r\n"));
  }
  return Buffer.concat(parts);
}

export type RespValue = string | number | null | RespError | RespValue[];

/** An error reply (`-ERR ...`): a value, not thrown, so callers see what the server said. */
export class RespError {
  constructor(readonly message: string) {}
}

/** One RESP reply from `buf` at `at`: the value and where it ends, or undefined while incomplete. */
export function parseResp(buf: Buffer, at = 0): { value: RespValue; end: number } | undefined {
  const eol = buf.indexOf("\r\n", at);
  if (eol < 0) return undefined;
  const line = buf.toString("utf8", at + 1, eol);
  switch (String.fromCharCode(buf[at])) {
    case "+": return { value: line, end: eol + 2 };
    case "-": return { value: new RespError(line), end: eol + 2 };
    case ":": return { value: Number(line), end: eol + 2 };
    case "$": {
      const n = Number(line);
      if (n < 0) return { value: null, end: eol + 2 };
      if (buf.length < eol + 2 + n + 2) return undefined;
      return { value: buf.toString("utf8", eol + 2, eol + 2 + n), end: eol + 2 + n + 2 };
    }
    case "*": {
      const n = Number(line);
      if (n < 0) return { value: null, end: eol + 2 };
      const items: RespValue[] = [];
      let end = eol + 2;
      for (let i = 0; i < n; i++) {
        const item = parseResp(buf, end);
        if (!item) return undefined;
        items.push(item.value);
        end = item.end;
      }
      return { value: items, end };
    }
    default: throw new Error(`not a RESP reply: ${JSON.stringify(buf.toString("latin1", at, Math.min(buf.length, at + 40)))}`);
  }
}

/** One command on a new connection to 127.0.0.1:`port`; resolves with its parsed reply. */
export function redisCall(port: number, args: string[], timeoutMs = 10_000): Promise<RespValue> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1" });
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`redis ${args[0]} on port ${port}: no reply within ${timeoutMs} ms`)); }, timeoutMs);
    socket.on("connect", () => socket.write(resp(...args)));
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const reply = parseResp(received);
      if (!reply) return;
      clearTimeout(timer);
      socket.destroy();
      resolve(reply.value);
    });
    socket.on("error", (err) => { clearTimeout(timer); reject(err); });
    socket.on("close", () => { clearTimeout(timer); reject(new Error(`redis ${args[0]} on port ${port}: closed before a reply`)); });
  });
}

export interface SessionResult { reply: Buffer; error?: string; ms: number }

/** Connect to `port`, write `script` cut into pieces of the given sizes (cycled), and read until
 *  the server closes (the script should end with QUIT). */
export function runScript(port: number, script: Buffer, pieceSizes: number[] = [script.length], timeoutMs = 30_000): Promise<SessionResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const socket = connect({ port, host: "127.0.0.1" });
    const timer = setTimeout(() => { error = "timeout"; socket.destroy(); }, timeoutMs);
    socket.on("connect", async () => {
      let i = 0;
      for (let at = 0; at < script.length; i++) {
        const n = Math.max(1, pieceSizes[i % pieceSizes.length]);
        socket.write(script.subarray(at, at + n));
        at += n;
        if (i % 5 === 4) await new Promise((r) => setImmediate(r)); // let some pieces go out alone
      }
    });
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("error", (e) => { error = e.message; });
    socket.on("close", () => { clearTimeout(timer); resolve({ reply: Buffer.concat(chunks), error, ms: Date.now() - started }); });
  });
}

/** An open RESP connection for step-by-step exchanges (send, then wait for `n` reply bytes). */
export async function openSession(port: number) {
  const socket = connect({ port, host: "127.0.0.1" });
  await new Promise<void>((resolve, reject) => { socket.once("connect", () => resolve()); socket.once("error", reject); });
  let received = Buffer.alloc(0);
  let closed = false;
  socket.on("data", (c: Buffer) => { received = Buffer.concat([received, c]); });
  socket.on("close", () => { closed = true; });
  return {
    send(bytes: Buffer) { socket.write(bytes); },
    get received() { return received; },
    get closed() { return closed; },
    /** Wait until at least `n` bytes were received in all. */
    until(n: number, timeoutMs = 10_000) { return waitFor(`${n} reply bytes`, () => received.length >= n, timeoutMs, 2); },
    close() { socket.destroy(); },
  };
}
