// Test clients: each connection starts with a 16-byte id (so every backend's record of it
// can be found), writes random-sized chunks, and records what it received.
import { createHash, randomBytes } from "node:crypto";
import { connect } from "node:net";
import type { RecordingBackend } from "./backends.ts";

export interface ClientPlan {
  id: Buffer;
  writes: Buffer[];
  /** Half-close right after the last write, before reading the replies. */
  halfCloseFirst: boolean;
}

export interface ClientResult {
  idHex: string;
  sentBytes: number;
  sentHash: string;
  receivedBytes: number;
  receivedHash: string;
  error?: string;
}

/** Random write sizes from 1 byte to `maxWrite`, skewed towards small ones. */
export function randomPlan(maxWrite = 64 * 1024, maxWrites = 6, halfCloseShare = 0.3): ClientPlan {
  const id = randomBytes(16);
  const count = 1 + Math.floor(Math.random() * maxWrites);
  const writes: Buffer[] = [];
  for (let i = 0; i < count; i++) writes.push(randomBytes(1 + Math.floor(Math.random() ** 3 * maxWrite)));
  writes[0] = Buffer.concat([id, writes[0]]);
  return { id, writes, halfCloseFirst: Math.random() < halfCloseShare };
}

export function planBytes(plan: ClientPlan): Buffer { return Buffer.concat(plan.writes); }

/**
 * Run one connection. Without half-close-first, the client waits until `sentAllSeen()`
 * says the primary received everything, then ends. Either way it reads until the server ends.
 */
export function runClient(port: number, plan: ClientPlan, sentAllSeen?: () => boolean, timeoutMs = 30_000): Promise<ClientResult> {
  return new Promise((resolve) => {
    const sent = createHash("sha256");
    const received = createHash("sha256");
    let receivedBytes = 0;
    let sentBytes = 0;
    let error: string | undefined;
    const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    const timer = setTimeout(() => { error = "timeout"; socket.destroy(); }, timeoutMs);
    socket.on("connect", async () => {
      for (const w of plan.writes) { sent.update(w); sentBytes += w.length; socket.write(w); }
      if (plan.halfCloseFirst || !sentAllSeen) { socket.end(); return; }
      const started = Date.now();
      while (!sentAllSeen() && Date.now() - started < timeoutMs) await new Promise((r) => setTimeout(r, 5));
      socket.end();
    });
    socket.on("data", (chunk: Buffer) => { received.update(chunk); receivedBytes += chunk.length; });
    socket.on("end", () => socket.end());
    socket.on("error", (err) => { error = err.message; });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve({ idHex: plan.id.toString("hex"), sentBytes, sentHash: sent.digest("hex"), receivedBytes, receivedHash: received.digest("hex"), error });
    });
  });
}

/** `count` connections of random writes (randomPlan(maxWrite, maxWrites)), 24 at a time through
 *  `port`; each ends once `primary` holds all of its bytes (or half-closes first, as its plan says).
 *  `done` hears how many have completed, after each. */
export function connectionsTo(port: number, primary: RecordingBackend, count: number,
  { maxWrite, maxWrites, done }: { maxWrite?: number; maxWrites?: number; done?: (completed: number) => void } = {}): Promise<ClientResult[]> {
  let completed = 0;
  return pool(count, 24, async () => {
    const plan = randomPlan(maxWrite, maxWrites);
    const total = plan.writes.reduce((n, w) => n + w.length, 0);
    const idHex = plan.id.toString("hex");
    const result = await runClient(port, plan, () => primary.connections.some((c) => c.head.toString("hex") === idHex && c.received === total));
    done?.(++completed);
    return result;
  });
}

/** Run `tasks` with at most `concurrency` at once. */
export async function pool<T>(count: number, concurrency: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(count);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) { const i = next++; out[i] = await task(i); }
  }));
  return out;
}
