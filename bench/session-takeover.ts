// Session mode's takeover time (issue 11): the whole set-up as separate processes (controller,
// relay, Envoy in session mode, three sample key-value servers), a fresh one per trial. Each
// trial opens `waiting` client connections through Envoy and has each write once; then the
// primary gets the signal (`kill`: SIGKILL, its exit observed; `stop`: SIGSTOP), and every
// connection sends a request at once. A sample is the time from the signal to the first byte of
// the successor's answer on a connection: per trial the first connection's and the last's.
// The research lockstep comes from measured 5-6 ms from detection to the first byte of the
// successor (../shared/BACKGROUND.md).
import { startStack, kvExchange } from "../test/support/stack.ts";
import { connect, type Socket } from "node:net";

export interface TakeoverResult {
  kind: "kill" | "stop";
  trials: number;
  /** Per trial: signal -> first answer byte on the first connection answered, and on the last. */
  firstMs: number[];
  lastMs: number[];
  /** Per trial: the relay's takeover (its event's time, wall clock) -> the first answer byte. */
  afterDetectionMs: number[];
  /** Connections that got an error or a wrong answer (must be 0). */
  failed: number;
  note: string;
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: "127.0.0.1" });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

/** Write `line`, resolve with the time the first byte of its answer came, and the answer line. */
function ask(s: Socket, line: string, timeoutMs = 10_000): Promise<{ at: number; wall: number; answer: string }> {
  return new Promise((resolve, reject) => {
    let at = 0, wall = 0;
    let got = "";
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no answer to ${line.trim()} within ${timeoutMs} ms`)); }, timeoutMs);
    const onData = (c: Buffer) => {
      if (!at) { at = performance.now(); wall = Date.now(); }
      got += c.toString();
      if (got.endsWith("\n")) { cleanup(); resolve({ at, wall, answer: got.trim() }); }
    };
    const onClose = () => { cleanup(); reject(new Error("connection closed")); };
    const cleanup = () => { clearTimeout(timer); s.off("data", onData); s.off("close", onClose); };
    s.on("data", onData);
    s.on("close", onClose);
    s.write(line);
  });
}

export async function measureTakeover(o: { kind: "kill" | "stop"; trials: number; waiting?: number; progress: (line: string) => void }): Promise<TakeoverResult> {
  const waiting = o.waiting ?? 20;
  const firstMs: number[] = [], lastMs: number[] = [], afterDetectionMs: number[] = [];
  let failed = 0;
  let error = "";
  for (let t = 0; t < o.trials; t++) {
    const stack = await startStack({ replicas: 2, extra: { mode: "session" } });
    try {
      const port = stack.envoy.listenerPort;
      await kvExchange(port, ["SET k before"]);
      const sockets = await Promise.all(Array.from({ length: waiting }, () => open(port)));
      // Each connection is in use (its members connected, one exchange done) before the signal.
      await Promise.all(sockets.map((s, i) => ask(s, `SET c${i} ${i}\n`)));
      const m0 = stack.members.get("m0")!;
      const signalled = performance.now();
      if (o.kind === "kill") await m0.process.kill("SIGKILL");
      else process.kill(m0.process.child.pid!, "SIGSTOP");
      const signalDoneMs = performance.now() - signalled;
      const answers = await Promise.allSettled(sockets.map((s, i) => ask(s, `GET c${i}\n`)));
      const ok = answers.flatMap((a, i) => (a.status === "fulfilled" && a.value.answer === `VALUE ${i}` ? [a.value.at - signalled] : []));
      failed += waiting - ok.length;
      if (ok.length) { firstMs.push(Math.min(...ok)); lastMs.push(Math.max(...ok)); }
      const view = await (await fetch(`http://127.0.0.1:${stack.relay.metricsPort}/v1/services/${stack.service}/replicas`)).json() as any;
      const takeover = view.session?.takeovers?.[0];
      const firstWall = Math.min(...answers.flatMap((a) => (a.status === "fulfilled" ? [a.value.wall] : [])));
      if (takeover) afterDetectionMs.push(firstWall - Date.parse(takeover.at));
      o.progress(`trial ${t + 1}/${o.trials}: ${o.kind === "kill" ? `exit observed after ${signalDoneMs.toFixed(1)} ms; ` : ""}first answer ${Math.min(...ok).toFixed(1)} ms, last ${Math.max(...ok).toFixed(1)} ms after the signal` +
        `${takeover ? `, ${firstWall - Date.parse(takeover.at)} ms after the relay's takeover` : ""}; ` +
        `${ok.length}/${waiting} answered right; relay: ${takeover ? `${takeover.from} -> ${takeover.to} (${takeover.why}), ${takeover.carried} carried, ${takeover.reset} reset` : "no takeover"}`);
      for (const s of sockets) s.destroy();
      if (o.kind === "stop") process.kill(m0.process.child.pid!, "SIGCONT");
    } catch (err) {
      error = `; stopped after ${firstMs.length} trial(s): ${(err as Error).message.split("\n")[0]}`;
      o.progress(`trial ${t + 1} failed: ${(err as Error).message}`);
      break;
    } finally {
      await stack.close();
    }
  }
  return {
    kind: o.kind, trials: firstMs.length, firstMs, lastMs, afterDetectionMs, failed,
    note: `${waiting} connections per trial, each sending a request right after the signal; kv health check every 100 ms, timeout 250 ms; relay stallTimeoutMs 500 ms${error}`,
  };
}
