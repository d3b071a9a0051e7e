// Failover under a steady stream of new connections, with the real controller, relay, Envoy
// and sample key-value servers as separate processes: `kill` sends SIGKILL to the primary,
// `stop` sends SIGSTOP (a primary that goes silent). Each trial is test/support/failover.ts's:
// an open-loop client opens a new connection every 2 ms whether or not the previous one was
// answered (so a sample may include up to 2 ms of waiting for the next connection); the time is
// from the signal to the first answer from the promoted replica; failed connects are
// connections opened after the primary was gone (its exit observed; for `stop`, the signal)
// that got no answer.
//
// Health checks as shipped (PING/PONG, controller every 100 ms), with a probe timeout of
// 150 ms: a silent primary is detected by Envoy after at most its check interval (50 ms) plus
// that timeout. Comparison is off: WHO answers differ between members by design.
import { startStack } from "../test/support/stack.ts";
import { failoverTrial } from "../test/support/failover.ts";
import { kvExchange } from "../test/support/stack.ts";

export const FAILOVER_HEALTH_CHECK = { send: "PING\n", expect: "PONG", intervalMs: 100, timeoutMs: 150 };

export async function measureFailover(opts: { kind: "kill" | "stop"; trials: number; progress: (line: string) => void }):
  Promise<{ kind: string; trials: number; samplesMs: number[]; failedConnects: number; note: string }> {
  const stack = await startStack({ replicas: 2, healthCheck: FAILOVER_HEALTH_CHECK, extra: { compareReplies: false } });
  const samplesMs: number[] = [];
  let failedConnects = 0;
  let servedByOthers = 0;
  let recorded = 0;
  let error = "";
  try {
    await kvExchange(stack.envoy.listenerPort, ["SET before-failover 1"]);
    for (let t = 0; t < opts.trials; t++) {
      const r = await failoverTrial(stack, opts.kind, async (port) => { await kvExchange(port, ["SET before-failover 1"]); }, { openLoop: true, intervalMs: 2, afterMs: 200 });
      samplesMs.push(r.ms);
      failedConnects += r.failedConnects;
      servedByOthers += r.servedByOthers;
      recorded = Math.max(recorded, r.recordedMs);
      opts.progress(`trial ${t + 1}/${opts.trials}: ${r.successor} served after ${r.ms.toFixed(1)} ms, failed connects ${r.failedConnects}`);
    }
  } catch (err) {
    // Keep what was measured; say why the rest was not.
    error = `; stopped after ${samplesMs.length} trial(s): ${(err as Error).message.split("\n")[0]}`;
    opts.progress(`trial ${samplesMs.length + 1} failed: ${(err as Error).message}`);
  } finally {
    await stack.close();
  }
  return {
    kind: opts.kind, trials: samplesMs.length, samplesMs, failedConnects,
    note: `signal -> first connection served by the promoted replica; controller recorded the promotion within ${recorded.toFixed(0)} ms; ` +
      `${servedByOthers} connection(s) served by a member other than the promoted one; health timeout ${FAILOVER_HEALTH_CHECK.timeoutMs} ms${error}`,
  };
}
