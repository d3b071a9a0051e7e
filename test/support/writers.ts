// Clients writing through several Envoys at once, as the fleet tests need them: each write a
// new connection (`SET <key> <value>`), alternating between the Envoys' listeners, and every
// write the service acknowledged ("OK") remembered, so it can be read back after failures.
import { kvExchange } from "../../samples/kv-client.ts";

export interface WriteLoad {
  /** Acknowledged writes: key → value. */
  readonly acked: Map<string, string>;
  /** Connections that failed (no answer, refused, reset). */
  failures(): number;
  attempts(): number;
  stop(): Promise<void>;
}

/** Write `prefix<n>` keys through `listenerPorts` in turn, one connection every `intervalMs`. */
export function startWrites(listenerPorts: readonly number[], prefix: string, intervalMs = 5): WriteLoad {
  const acked = new Map<string, string>();
  let failed = 0;
  let n = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const key = `${prefix}${n}`;
      const value = `v${n}`;
      const port = listenerPorts[n % listenerPorts.length];
      n++;
      try {
        const [answer] = await kvExchange(port, [`SET ${key} ${value}`], 2000);
        if (answer === "OK") acked.set(key, value); else failed++;
      } catch { failed++; }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return {
    acked,
    failures: () => failed,
    attempts: () => n,
    async stop() { stopped = true; await loop; },
  };
}

/** Keys whose value read through `port` is not the acknowledged one. */
export async function lostWrites(port: number, acked: ReadonlyMap<string, string>): Promise<string[]> {
  const lost: string[] = [];
  const entries = [...acked];
  for (let i = 0; i < entries.length; i += 200) {
    const batch = entries.slice(i, i + 200);
    const answers = await kvExchange(port, batch.map(([k]) => `GET ${k}`), 10_000);
    batch.forEach(([k, v], j) => { if (answers[j] !== `VALUE ${v}`) lost.push(`${k}: ${answers[j]} (acknowledged ${v})`); });
  }
  return lost;
}
