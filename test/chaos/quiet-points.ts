// Quiet points: every reseed first quiesces the service (no client connection open, the relay
// drained), and at that moment, before anything is copied, the checker runs on the data as
// they are. A violation's findings (its evidence) are then dated: first seen at a quiet point,
// so after the faults injected since the one before. A long run's report says when each
// violation appeared and which faults are the suspects, even when later faults pile on.
import type { Stack } from "../support/stack.ts";
import { check, formatViolations, timeline, type Violation } from "./checker.ts";
import { describeFault, seconds, type History } from "./history.ts";
import { readSnapshot } from "./snapshot.ts";
import type { Target } from "./target.ts";

interface QuietPoint { readonly at: number; readonly previous: number }

export class QuietPoints {
  private previous = 0;
  /** Evidence already seen, by violation (key below), and at which quiet point first. */
  private readonly seen = new Map<string, Map<string, QuietPoint>>();
  count = 0;
  /** Every violation a quiet point found (with the findings new there), repaired since or not. */
  readonly found: Violation[] = [];

  constructor(private readonly history: History, private readonly stack: Stack, private readonly target: Target, private readonly log: (line: string) => void) {}

  /** Check now (the caller has quiesced the service) and log what is new since the last time. */
  async check(): Promise<void> {
    const point: QuietPoint = { at: this.history.now(), previous: this.previous };
    const violations = check(this.history, await readSnapshot(this.stack, this.target, false));
    const fresh: string[] = [];
    const freshViolations: Violation[] = [];
    for (const v of violations) {
      const seen = this.seen.get(key(v)) ?? new Map<string, QuietPoint>();
      this.seen.set(key(v), seen);
      const added = v.evidence.filter((e) => !seen.has(e));
      for (const e of added) seen.set(e, point);
      if (added.length) { fresh.push(`(${v.check}) ${v.kind} on ${v.member}: ${added.length} new finding(s)`); freshViolations.push(v); this.found.push(v); }
    }
    this.count++;
    this.previous = point.at;
    this.log(`chaos: quiet point at ${seconds(point.at)}: ${fresh.length ? fresh.join("; ") : "no new violation"}`);
    // A long run shows a new violation's context at once (the final report repeats it).
    if (freshViolations.length) {
      const events = (await this.stack.api("GET", `/v1/events?service=${this.stack.service}`).catch(() => ({ json: { events: [] } }))).json.events ?? [];
      const since = point.previous - 10_000;
      const lines = timeline(this.history, events, since);
      this.log(`${formatViolations(freshViolations, (v) => this.dating(v))}\n  faults and controller events from ${seconds(Math.max(0, since))}:\n${lines.join("\n")}`);
    }
  }

  /** When a violation of the final check was first seen, and the faults before that. */
  dating(v: Violation): string[] {
    const points = v.evidence.map((e) => this.seen.get(key(v))?.get(e)).filter((p): p is QuietPoint => p !== undefined);
    if (!points.length) return [`  first seen at the end (after the last quiet point, at ${seconds(this.previous)})`];
    const first = points.reduce((a, b) => (b.at < a.at ? b : a));
    const suspects = this.history.faults.filter((f) => f.at >= first.previous && f.at < first.at && !f.detail.startsWith("skipped"));
    return [`  first seen at the quiet point at ${seconds(first.at)}; faults since the one before (${seconds(first.previous)}):`, ...suspects.map((f) => `    ${describeFault(f)}`)];
  }
}

/** Acknowledged writes are judged on whichever member is primary; the rest per member. */
const key = (v: Violation) => (v.check === "a" ? v.kind : `${v.kind}|${v.member}`);
