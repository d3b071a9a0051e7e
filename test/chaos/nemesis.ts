// The nemesis: injects one fault at a time, drawn from the seed, with a random gap between
// faults. Kinds come from a shuffled bag holding each kind once (refilled when empty; a kind
// skipped for want of its precondition goes into the next bag too), so every kind is
// injected about as often as the others. Each fault ends with everything running again
// (restarted, continued); the damage it did (members out of sync, writes lost) is left for the
// controller to notice, the reseeds to repair and the checker to judge.
//
//   kill-primary     kill -9 the primary, restart it empty 50-150 ms later (a supervisor)
//   stop-primary     SIGSTOP the primary for 0.3-1.5 s, then SIGCONT
//   stop-replica     SIGSTOP another member for 0.2-1.5 s, then SIGCONT
//   kill-relay       kill -9 the relay, restart it on its ports 50-500 ms later
//   kill-controller  kill -9 the controller, restart it on its store 0.1-1 s later
//   client-reset     a client resets its connection in the middle of a 2-8 MiB upload
//   switchover       POST /v1/services/<s>/promote (a random in-sync replica, or the best)
//   reseed           reseed and rejoin every out-of-sync member (reseed.ts)
//
// A fault the system is not promised to survive is not injected: the primary is killed,
// stopped or switched away from only while the controller lists a live in-sync replica. When
// that is missing and members are out of sync, they are reseeded first.
import type { Stack } from "../support/stack.ts";
import type { Prng } from "./prng.ts";
import type { History, FaultOp } from "./history.ts";
import type { Target } from "./target.ts";
import type { Workload } from "./workload.ts";
import { resetMidUpload } from "./upload.ts";
import { OUT_OF_SYNC_ROLES, ReseedSkipped, reseedOutOfSync } from "./reseed.ts";
import { waitFor } from "../support/ports.ts";

export const FAULT_KINDS = ["kill-primary", "stop-primary", "stop-replica", "kill-relay", "kill-controller", "client-reset", "switchover", "reseed"] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** Kinds that need a live in-sync replica to take over. */
const NEEDS_SUCCESSOR: readonly FaultKind[] = ["kill-primary", "stop-primary", "switchover"];

export interface NemesisOptions {
  readonly stack: Stack;
  readonly target: Target;
  readonly workload: Workload;
  readonly history: History;
  readonly prng: Prng;
  /** Gap between the end of one fault and the start of the next, ms: [min, max]. */
  readonly gapMs: readonly [number, number];
  /** The kinds to inject (default all); a reseed is still done when a kind needs one first. */
  readonly kinds?: readonly FaultKind[];
  /** Called at each reseed's quiet moment, before anything is copied. */
  readonly atQuiet: () => Promise<void>;
}

type View = Awaited<ReturnType<Stack["view"]>>;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Nemesis {
  private bag: FaultKind[] = [];
  private deferred: FaultKind[] = [];
  private readonly done = new Map<FaultKind, number>(FAULT_KINDS.map((k) => [k, 0]));

  constructor(private readonly o: NemesisOptions) {}

  /** Faults injected so far, by kind (skipped ones not counted). */
  counts(): Record<FaultKind, number> { return Object.fromEntries(this.done) as Record<FaultKind, number>; }

  total(): number { return [...this.done.values()].reduce((a, b) => a + b, 0); }

  /** Inject faults until `deadline` (ms since the epoch); the fault under way when it passes finishes. */
  async run(deadline: number): Promise<void> {
    while (Date.now() < deadline) {
      if (!this.bag.length) [this.bag, this.deferred] = [this.o.prng.shuffle([...(this.o.kinds ?? FAULT_KINDS), ...this.deferred]), []];
      await this.inject(this.bag.pop()!);
      await sleep(this.o.prng.int(this.o.gapMs[0], this.o.gapMs[1]));
    }
  }

  private async inject(kind: FaultKind): Promise<void> {
    let view = await this.view();
    const outOfSync = view.members.some((m) => OUT_OF_SYNC_ROLES.includes(m.role));
    if (NEEDS_SUCCESSOR.includes(kind) && !promotable(view).length && outOfSync) {
      await this.record("reseed", "out-of-sync members", () => reseedOutOfSync(this.o.stack, this.o.target, this.o.workload, this.o.atQuiet));
      view = await this.view();
    }
    if ((NEEDS_SUCCESSOR.includes(kind) && !promotable(view).length) || (kind === "reseed" && !outOfSync)) {
      this.o.history.fault(kind, "-", `skipped: ${kind === "reseed" ? "every member in sync" : "no live in-sync replica"}`).endAt = this.o.history.now();
      this.deferred.push(kind);
      return;
    }
    const { stack, prng } = this.o;
    const primary = stack.members.get(view.primary)!;
    switch (kind) {
      case "kill-primary": return this.record(kind, primary.name, async () => {
        const downMs = prng.int(50, 150);
        await primary.process.kill("SIGKILL");
        await sleep(downMs);
        await primary.restart();
        return `restarted empty ${downMs} ms after the kill`;
      });
      case "stop-primary": return this.record(kind, primary.name, () => this.pause(primary.process.child, prng.int(300, 1500)));
      case "stop-replica": {
        const victim = stack.members.get(prng.pick(view.members.filter((m) => m.name !== view.primary)).name)!;
        return this.record(kind, victim.name, () => this.pause(victim.process.child, prng.int(200, 1500)));
      }
      case "kill-relay": return this.record(kind, "relay", async () => {
        const downMs = prng.int(50, 500);
        await stack.restartRelay("SIGKILL", downMs);
        return `restarted ${downMs} ms after the kill`;
      });
      case "kill-controller": return this.record(kind, "controller", async () => {
        const downMs = prng.int(100, 1000);
        await stack.restartController("SIGKILL", downMs);
        return `restarted ${downMs} ms after the kill`;
      });
      case "client-reset": return this.record(kind, "upload client", async () => {
        const label = `upload${this.done.get(kind)! + 1}`;
        const r = await resetMidUpload(stack.envoy.listenerPort, this.o.target, prng, label);
        return `${label} to ${r.key}: reset after handing over ${r.written} of ${r.chunks} chunks of 64 KiB${r.error ? ` (${r.error})` : ""}`;
      });
      case "switchover": {
        const member = prng.chance(0.3) ? undefined : prng.pick(promotable(view)).name;
        return this.record(kind, member ?? "(best replica)", async () => {
          const res = await stack.api("POST", `/v1/services/${stack.service}/promote`, member ? { member } : {}).catch((err: Error) => err);
          if (res instanceof Error) return `the call failed: ${res.message}${res.cause ? ` (${String(res.cause)})` : ""}`;
          return res.status === 200 ? `${res.json.primary} is primary; ${view.primary} a replica` : `refused: ${res.status} ${JSON.stringify(res.json.error)}`;
        });
      }
      case "reseed": return this.record(kind, "out-of-sync members", () => reseedOutOfSync(stack, this.o.target, this.o.workload, this.o.atQuiet));
    }
  }

  /** The controller's view (it answers within moments: faults are injected one at a time). */
  private view(): Promise<View> {
    return waitFor("the controller's view of the service", () => this.o.stack.view().catch(() => undefined), 10_000, 50) as Promise<View>;
  }

  private async pause(child: { kill(signal: NodeJS.Signals): boolean }, ms: number): Promise<string> {
    child.kill("SIGSTOP");
    await sleep(ms);
    child.kill("SIGCONT");
    return `stopped for ${ms} ms`;
  }

  private async record(kind: FaultKind, target: string, act: () => Promise<string>): Promise<void> {
    const op: FaultOp = this.o.history.fault(kind, target);
    try {
      op.detail = await act();
      this.done.set(kind, this.done.get(kind)! + 1);
    } catch (err) {
      if (!(err instanceof ReseedSkipped)) throw err;
      op.detail = `skipped: ${err.message}`;
      this.deferred.push(kind);
    } finally {
      op.endAt = this.o.history.now();
    }
  }
}

function promotable(view: View): View["members"] {
  return view.members.filter((m) => m.role === "replica" && m.alive);
}
