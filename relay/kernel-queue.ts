// How many bytes of each socket's data its peer has not acknowledged yet (the kernel's send
// queue), from /proc/net/tcp and /proc/net/tcp6 on Linux. Node sees a write complete only once
// the kernel took all of it, and a slow reader leaves a large write sitting in multi-megabyte
// kernel buffers for seconds: this is how the relay still sees a slow replica take bytes.
// Read only for replicas suspected of stalling (the files list every socket on the host).
import { readFileSync } from "node:fs";
import type { Socket } from "node:net";

/** "localPort:remotePort" (hex, as /proc prints them) -> bytes not yet acknowledged. */
function readQueues(): Map<string, number> {
  const out = new Map<string, number>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try { text = readFileSync(file, "latin1"); } catch { continue; }
    for (const line of text.split("\n").slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue ...
      const f = line.trim().split(/\s+/);
      if (f.length < 5) continue;
      const local = f[1].split(":")[1];
      const remote = f[2].split(":")[1];
      const tx = f[4].split(":")[0];
      if (local && remote && tx) out.set(`${local}:${remote}`, parseInt(tx, 16));
    }
  }
  return out;
}

const hexPort = (port: number | undefined) => (port ?? 0).toString(16).toUpperCase().padStart(4, "0");

/** One reading serves every caller within this long (many connections finish at once), or
 *  within ten times as long as the last reading took, but never longer than the caller's
 *  `maxAgeMs`: with tens of thousands of sockets on the host one reading takes tens of
 *  milliseconds, and re-reading it every 10 ms kept the relay at 100% of its core (9,000
 *  connections closing at once); a reading older than the caller's sampling interval would hide
 *  a slow replica's progress (two samples seeing one reading) and get it detached as stalled. */
const FRESH_MS = 10;
let cached: { at: number; queues: Map<string, number>; tookMs: number } | undefined;

/** Bytes each socket's peer has not acknowledged; absent where the kernel cannot tell (not Linux).
 *  `maxAgeMs`: the oldest reading the caller can use (less than its interval between samples). */
export function unacknowledgedBytes(sockets: readonly Socket[], maxAgeMs: number): Map<Socket, number> {
  const out = new Map<Socket, number>();
  if (sockets.length === 0 || process.platform !== "linux") return out;
  const now = Date.now();
  if (!cached || now - cached.at > Math.min(maxAgeMs, Math.max(FRESH_MS, 10 * cached.tookMs))) {
    const queues = readQueues();
    cached = { at: now, queues, tookMs: Date.now() - now };
  }
  const queues = cached.queues;
  for (const s of sockets) {
    const n = queues.get(`${hexPort(s.localPort)}:${hexPort(s.remotePort)}`);
    if (n !== undefined) out.set(s, n);
  }
  return out;
}
