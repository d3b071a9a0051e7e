// One failover trial on a running stack, as the controller's test and the failover benchmark
// measure it: a client opens a new connection through the listener every few milliseconds and
// asks who serves it; the primary is killed (SIGKILL) or silenced (SIGSTOP); we record when the
// promoted member first answered a connection opened after the failure, and every connection
// opened after the primary was gone that failed or reached anyone else. Then the
// old primary is restarted, reseeded and rejoined through the API, ready for the next trial.
import type { Stack } from "./stack.ts";
import { waitFor } from "./ports.ts";

export interface TrialResult {
  readonly kind: "kill" | "stop";
  readonly failed: string;
  /** The member the controller promoted. */
  readonly successor: string;
  /** The designated successor shown by the API before the failure. */
  readonly plannedSuccessor: string;
  /** Failure (signal sent) to the first connection served by the successor, ms. */
  readonly ms: number;
  /** Failure to the controller recording the promotion (API), ms. */
  readonly recordedMs: number;
  /** Connections opened after the primary was gone that got no answer. */
  readonly failedConnects: number;
  /** Connections opened between the signal and the primary being gone that got no answer. */
  readonly failedWhileDying: number;
  /** ... that were served by a member other than the successor. */
  readonly servedByOthers: number;
  readonly connections: number;
}

const now = () => process.hrtime.bigint();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface TrialOptions {
  /** Between two new connections. */
  readonly intervalMs?: number;
  /** Open a new connection every intervalMs whether or not the previous one was answered (an
   *  open-loop client, as real traffic is); otherwise one after the other. */
  readonly openLoop?: boolean;
  /** Keep connecting this long after the promoted member first served (more connections judged). */
  readonly afterMs?: number;
}

export async function failoverTrial(stack: Stack, kind: "kill" | "stop", reseed: (port: number) => Promise<void>, options: TrialOptions = {}): Promise<TrialResult> {
  const intervalMs = options.intervalMs ?? 3;
  const before = await stack.view();
  const failed = before.primary;
  if (!before.successor) throw new Error(`no successor for ${failed}: ${JSON.stringify(before)}`);
  const victim = stack.members.get(failed)!;
  const log: { start: bigint; end: bigint; who: string }[] = [];
  let stop = false;
  const deadline = Date.now() + 15_000;
  const connect = async () => {
    const start = now();
    const who = await stack.whoServes(1500);
    log.push({ start, end: now(), who });
  };
  const loop = (async () => {
    const pending: Promise<void>[] = [];
    while (!stop && Date.now() < deadline) {
      if (options.openLoop) pending.push(connect()); else await connect();
      await sleep(intervalMs);
    }
    await Promise.all(pending);
  })();
  await sleep(50);
  const exited = new Promise<void>((r) => victim.process.child.once("exit", () => r()));
  const t0 = now();
  victim.process.child.kill(kind === "kill" ? "SIGKILL" : "SIGSTOP");
  let gone = t0;
  if (kind === "kill") { await exited; gone = now(); }
  // Whoever the controller promotes must be whom Envoy fell back to: judged against that.
  let recorded = 0n;
  let promoted = "";
  await waitFor("the controller to promote a replica", async () => {
    const v = await stack.view();
    if (v.primary !== failed && !recorded) { recorded = now(); promoted = v.primary; }
    return v.primary !== failed && v.members.find((m) => m.name === failed)?.role === "stale";
  }, 10_000, 5).catch(async (err) => {
    stop = true;
    const events = (await stack.api("GET", "/v1/events")).json.events.slice(-6);
    throw new Error(`${err.message}\nview: ${JSON.stringify(await stack.view())}\nlast events: ${JSON.stringify(events)}`);
  });
  await waitFor(`${promoted} to serve`, () => log.some((l) => l.start > t0 && l.who === promoted), 5_000, 5)
    .then(() => sleep(options.afterMs ?? 0)).finally(() => { stop = true; });
  await loop;
  const first = log.find((l) => l.start > t0 && l.who === promoted)!;
  const after = log.filter((l) => l.start > gone);
  // Bring the old primary back as a replica: restart it (empty), reseed it, rejoin it.
  if (kind === "stop") { victim.process.child.kill("SIGKILL"); await exited; }
  await victim.restart();
  await reseed(victim.port);
  const rejoin = await stack.api("POST", `/v1/services/${stack.service}/members/${failed}/rejoin`);
  if (rejoin.status !== 200) throw new Error(`rejoin of ${failed} failed: ${JSON.stringify(rejoin.json)}`);
  // Joining until no connection opened before the rejoin is open; then a replica again.
  await waitFor(`${failed} to be a live replica again`, async () => {
    const m = (await stack.view()).members.find((x) => x.name === failed);
    return m?.alive === true && m.role === "replica";
  }, 10_000, 10);
  return {
    kind, failed, successor: promoted, plannedSuccessor: before.successor,
    ms: Number(first.end - t0) / 1e6,
    recordedMs: Number(recorded - t0) / 1e6,
    failedConnects: after.filter((l) => l.who === "FAILED").length,
    failedWhileDying: log.filter((l) => l.start > t0 && l.start <= gone && l.who === "FAILED").length,
    servedByOthers: after.filter((l) => l.who !== "FAILED" && l.who !== promoted).length,
    connections: log.length,
  };
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
