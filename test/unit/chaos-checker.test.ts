// The chaos checker on hand-made histories and final states: a clean run (indeterminate writes
// applied or not) passes; each kind of violation is found, on the right member, and only it.
import { describe, it, expect } from "vitest";
import { History } from "../chaos/history.ts";
import { check, type FinalSnapshot } from "../chaos/checker.ts";
import { toState, type State } from "../chaos/target.ts";

/** Client 1 wrote c1-1..c1-3 on connection 1 (acked), c1-4 on connection 2 (no reply). */
function history(): History {
  const h = new History();
  for (let seq = 1; seq <= 3; seq++) h.settle(h.write(1, 1, seq), "acked", undefined, seq);
  h.settle(h.write(1, 2, 4), "indeterminate", "timeout");
  return h;
}

const state = (entries: Record<string, string>): State => toState(Object.entries(entries));
const GOOD = { "log:c1:1": "c1-1 c1-2 c1-3", "n:c1": "3" };

function final(states: Record<string, Record<string, string>>, roles: Record<string, string>, digests?: Record<string, string>): FinalSnapshot {
  const digestOf = (m: string) => digests?.[m] ?? JSON.stringify(states[m]);
  return {
    primary: Object.keys(roles).find((m) => roles[m] === "primary")!,
    members: Object.entries(roles).map(([name, role]) => ({ name, role, alive: true })),
    events: [],
    states: new Map(Object.entries(states).map(([m, s]) => [m, state(s)])),
    digests: new Map(Object.keys(states).map((m) => [m, digestOf(m)])),
    servedBy: Object.keys(roles).find((m) => roles[m] === "primary")!,
  };
}

describe("chaos checker", () => {
  it("passes a run whose indeterminate write was applied everywhere, or nowhere", () => {
    const applied = { ...GOOD, "log:c1:2": "c1-4", "n:c1": "4" };
    expect(check(history(), final({ m0: applied, m1: applied }, { m0: "primary", m1: "replica" }))).toEqual([]);
    expect(check(history(), final({ m0: GOOD, m1: GOOD }, { m0: "primary", m1: "replica" }))).toEqual([]);
  });

  it("(a) finds an acknowledged write missing on the primary (the one after it is then misplaced too)", () => {
    const lost = check(history(), final({ m0: { "log:c1:1": "c1-1 c1-3", "n:c1": "2" } }, { m0: "primary" }));
    expect(lost.map((v) => [v.check, v.member, v.summary])).toEqual([
      ["a", "m0", "1 acknowledged write(s) missing on the primary m0"],
      ["a", "m0", "1 acknowledged write(s) on the primary m0 at another place in their list than their reply said"],
    ]);
    expect(lost[0].details.join("\n")).toContain("c1-2 (client 1, connection 1, log:c1:1) sent");
  });

  it("(a) finds acknowledged writes in another order than acknowledged; (c) the pair out of order", () => {
    const moved = check(history(), final({ m0: { "log:c1:1": "c1-1 c1-3 c1-2", "n:c1": "3" } }, { m0: "primary" }));
    expect(moved.map((v) => [v.check, v.summary])).toEqual([
      ["a", "2 acknowledged write(s) on the primary m0 at another place in their list than their reply said"],
      ["c", "m0: 1 pair(s) of tokens applied out of the order their connection sent them"],
    ]);
  });

  it("(a) finds clients served by another member than the primary", () => {
    const f = { ...final({ m0: GOOD, m1: GOOD }, { m0: "primary", m1: "replica" }), servedBy: "m1" };
    expect(check(history(), f).map((v) => [v.check, v.summary])).toEqual([["a", "clients do not reach the primary m0: through Envoy they reach m1"]]);
  });

  it("(b/d) flags a promotable replica whose data differ, not an out-of-sync one", () => {
    const behind = { "log:c1:1": "c1-1 c1-2", "n:c1": "2" };
    const v = check(history(), final({ m0: GOOD, m1: behind, m2: behind }, { m0: "primary", m1: "replica", m2: "stale" }));
    expect(v.map((x) => [x.check, x.member])).toEqual([["b/d", "m1"]]);
    expect(v[0].details.join("\n")).toContain("m1 lacks 1 write(s) that m0 applied");
  });

  it("(c) finds a write applied twice, a token out of order, and a counter that disagrees, on any member", () => {
    const twice = { "log:c1:1": "c1-1 c1-2 c1-3 c1-3", "n:c1": "4" };
    const v = check(history(), final({ m0: GOOD, m1: twice }, { m0: "primary", m1: "diverged" }));
    expect(v.map((x) => [x.check, x.member, x.summary])).toEqual([["c", "m1", "m1: 1 token(s) applied more than once"]]);
    const disordered = check(history(), final({ m0: GOOD, m1: { "log:c1:1": "c1-2 c1-1 c1-3", "n:c1": "5" } }, { m0: "primary", m1: "stale" }));
    expect(disordered.map((x) => x.summary)).toEqual([
      "m1: 1 pair(s) of tokens applied out of the order their connection sent them",
      "m1: 1 counter(s) that disagree with the appends applied",
    ]);
  });
});
