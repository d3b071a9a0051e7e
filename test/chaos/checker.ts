// The checker: judges the states of a quiet service (at the end of a run, healed; or at a
// reseed's quiet point) against the run's history.
//
//   (a) every write acknowledged to a client is in the primary's data, where its reply said
//       (the list's length); and clients reach that primary's data through Envoy;
//   (b) every member the controller calls in sync (role replica) has exactly the primary's
//       data (the server's own digest), and so (d) no member whose data differs from the
//       primary's (one that missed or gained a byte) is promotable;
//   (c) no write was applied twice, out of order or to another list, on any member, and every
//       client's counter equals the number of its appends the member applied.
//
// Each violation names the check, the member, the writes (token, connection, when sent and
// answered) and the faults and controller events around them, so a seed's report reads as a
// diagnosis.
import { describeFault, seconds, type History, type WriteOp } from "./history.ts";
import type { State } from "./target.ts";

export interface ControllerEvent { readonly at: string; readonly kind: string; readonly member: string; readonly detail: string }

export interface MemberView { readonly name: string; readonly role: string; readonly alive: boolean }

/** What the run saw at the end, after healing and a quiet period. */
export interface FinalSnapshot {
  readonly primary: string;
  readonly members: readonly MemberView[];
  readonly events: readonly ControllerEvent[];
  readonly states: ReadonlyMap<string, State>;
  readonly digests: ReadonlyMap<string, string>;
  /** The member clients reach through Envoy's listener (the process answering there is that
   *  member's), or what answered instead / why nothing did; not asked at a quiet point. */
  readonly servedBy?: string;
}

export interface Violation {
  readonly check: "a" | "b/d" | "c";
  /** What went wrong, in a word ("missing", "differs", "twice", ...): with the member, the
   *  identity of a violation from one check to the next. */
  readonly kind: string;
  readonly member: string;
  readonly summary: string;
  readonly details: readonly string[];
  /** The individual findings (tokens of the writes concerned, or what differs), so a later
   *  check can tell which are new. */
  readonly evidence: readonly string[];
}

/** Examples quoted per violation. */
const EXAMPLES = 5;
/** Writes further apart than this are reported as separate episodes. */
const EPISODE_GAP_MS = 2000;

export function check(history: History, final: FinalSnapshot): Violation[] {
  const context = contextOf(history, final.events);
  const held = new Map([...final.states].map(([m, state]) => [m, positions(state)]));
  const whereabouts: Whereabouts = (writes) => final.members.map((m) =>
    `${m.name} (${m.role}) ${writes.filter((w) => held.get(m.name)!.get(w.token)?.some((p) => p.key === w.key)).length}`).join(", ");
  return [
    ...checkAcknowledged(history, final, held.get(final.primary)!, context, whereabouts),
    ...checkInSync(history, final, context),
    ...[...final.states].flatMap(([member, state]) => checkApplied(history, member, state, held.get(member)!)),
  ];
}

/** Lines naming the faults and the controller's events around run time `t`. */
type Context = (t: number) => string[];

function contextOf(history: History, events: readonly ControllerEvent[]): Context {
  return (t) => {
    const lines = history.faultsAround(t).map((f) => ({ at: f.at, text: `fault ${describeFault(f)}` }));
    for (const e of events) {
      const at = history.toRunTime(e.at);
      if (at >= t - 5000 && at <= t + 1000) lines.push({ at, text: `controller ${seconds(at)} ${e.kind} ${e.member}: ${e.detail}` });
    }
    return lines.sort((a, b) => a.at - b.at).map((l) => `    ${l.text}`);
  };
}

const describeWrite = (w: WriteOp) =>
  `${w.token} (client ${w.client}, connection ${w.conn}, ${w.key}) sent ${seconds(w.sentAt)}, ${w.outcome}${w.endAt !== undefined ? ` ${seconds(w.endAt)}` : ""}${w.position !== undefined ? ` as position ${w.position}` : ""}${w.detail ? ` (${w.detail})` : ""}`;

/** Writes sorted by sending time, cut into episodes where they are more than EPISODE_GAP_MS apart. */
function episodes(writes: WriteOp[]): WriteOp[][] {
  const sorted = [...writes].sort((a, b) => a.sentAt - b.sentAt);
  const out: WriteOp[][] = [];
  for (const w of sorted) {
    const last = out.at(-1);
    if (last && w.sentAt - last.at(-1)!.sentAt <= EPISODE_GAP_MS) last.push(w);
    else out.push([w]);
  }
  return out;
}

/** Where an episode's writes are now: how many of them each member holds. */
export type Whereabouts = (writes: WriteOp[]) => string;

function describeEpisodes(writes: WriteOp[], context: Context, whereabouts?: Whereabouts): string[] {
  const lines: string[] = [];
  for (const ep of episodes(writes)) {
    lines.push(`  ${ep.length} write(s) sent ${seconds(ep[0].sentAt)} to ${seconds(ep.at(-1)!.sentAt)}, from clients ${[...new Set(ep.map((w) => w.client))].sort((a, b) => a - b).join(", ")}${whereabouts ? `; now held by ${whereabouts(ep)}` : ""}; e.g.`);
    for (const w of ep.slice(0, EXAMPLES)) lines.push(`    ${describeWrite(w)}`);
    lines.push("   around the first:", ...context(ep[0].sentAt));
  }
  return lines;
}

/** Where each token is in a member's lists (more than one place: applied more than once). */
type Positions = Map<string, { key: string; index: number }[]>;

function positions(state: State): Positions {
  const out: Positions = new Map();
  for (const [key, tokens] of state.lists) {
    tokens.forEach((token, index) => {
      const at = out.get(token);
      if (at) at.push({ key, index }); else out.set(token, [{ key, index }]);
    });
  }
  return out;
}

function checkAcknowledged(history: History, final: FinalSnapshot, at: Positions, context: Context, whereabouts: Whereabouts): Violation[] {
  const violations: Violation[] = [];
  if (final.servedBy !== undefined && final.servedBy !== final.primary) {
    violations.push({ check: "a", kind: "served", member: final.primary, summary: `clients do not reach the primary ${final.primary}: through Envoy they reach ${final.servedBy}`,
      details: [], evidence: [final.servedBy] });
  }
  const state = final.states.get(final.primary)!;
  const missing: WriteOp[] = [];
  const misplaced: WriteOp[] = [];
  for (const w of history.writes) {
    if (w.outcome !== "acked") continue;
    const found = at.get(w.token)?.find((p) => p.key === w.key);
    if (!found) missing.push(w);
    else if (found.index !== w.position! - 1) misplaced.push(w);
  }
  if (missing.length) {
    const became = final.events.filter((e) => (e.kind === "promotion" || e.kind === "switchover") && e.member === final.primary)
      .map((e) => `    ${seconds(history.toRunTime(e.at))} ${e.kind}: ${e.detail}`);
    violations.push({ check: "a", kind: "missing", member: final.primary, summary: `${missing.length} acknowledged write(s) missing on the primary ${final.primary}`,
      details: [...describeEpisodes(missing, context, whereabouts), `  ${final.primary} was made primary:`, ...(became.length ? became : ["    never (the first primary)"])],
      evidence: missing.map((w) => w.token) });
  }
  if (misplaced.length) {
    violations.push({ check: "a", kind: "misplaced", member: final.primary, summary: `${misplaced.length} acknowledged write(s) on the primary ${final.primary} at another place in their list than their reply said`,
      details: [...misplaced.slice(0, EXAMPLES).map((w) => `  ${describeWrite(w)}: found at position ${at.get(w.token)!.find((p) => p.key === w.key)!.index + 1} of ${state.lists.get(w.key)!.length}`), ...describeEpisodes(misplaced, context, whereabouts)],
      evidence: misplaced.map((w) => w.token) });
  }
  return violations;
}

function checkInSync(history: History, final: FinalSnapshot, context: Context): Violation[] {
  const primaryDigest = final.digests.get(final.primary);
  const primaryState = final.states.get(final.primary)!;
  const violations: Violation[] = [];
  for (const m of final.members) {
    if (m.name === final.primary || final.digests.get(m.name) === primaryDigest) continue;
    if (m.role !== "replica") continue; // out of sync and known to be: not promotable
    const { details, evidence } = describeDifference(history, final.primary, primaryState, m.name, final.states.get(m.name)!, context);
    violations.push({ check: "b/d", kind: "differs", member: m.name,
      summary: `${m.name} is in sync for the controller (role replica${m.alive ? "" : ", down"}: promotable) but its data differ from the primary ${final.primary}'s (digest ${final.digests.get(m.name)} vs ${primaryDigest})`,
      details, evidence: evidence.length ? evidence : [`${final.digests.get(m.name)} vs ${primaryDigest}`] });
  }
  return violations;
}

/** What `member` lacks or has more than `primary`, write by write, and the other keys that differ
 *  (the evidence: "-token" lacking, "+token" extra, and the uploads and other keys that differ;
 *  counters follow the tokens). */
function describeDifference(history: History, primary: string, p: State, member: string, m: State, context: Context): { details: string[]; evidence: string[] } {
  const lacking: WriteOp[] = [];
  const extra: WriteOp[] = [];
  const unknown: string[] = [];
  for (const key of new Set([...p.lists.keys(), ...m.lists.keys()])) {
    const [mine, theirs] = [new Set(m.lists.get(key) ?? []), new Set(p.lists.get(key) ?? [])];
    for (const t of theirs) if (!mine.has(t)) { const w = history.byToken.get(t); if (w) lacking.push(w); else unknown.push(`${t} (on ${primary})`); }
    for (const t of mine) if (!theirs.has(t)) { const w = history.byToken.get(t); if (w) extra.push(w); else unknown.push(`${t} (on ${member})`); }
  }
  const lines: string[] = [];
  const evidence = [...lacking.map((w) => `-${w.token}`), ...extra.map((w) => `+${w.token}`), ...unknown];
  if (lacking.length) lines.push(` ${member} lacks ${lacking.length} write(s) that ${primary} applied:`, ...describeEpisodes(lacking, context));
  if (extra.length) lines.push(` ${member} applied ${extra.length} write(s) that ${primary} did not:`, ...describeEpisodes(extra, context));
  if (unknown.length) lines.push(` ${unknown.length} token(s) on one side only that no client sent, e.g. ${unknown.slice(0, EXAMPLES).join(", ")}`);
  for (const family of ["counters", "uploads", "others"] as const) {
    const [pm, mm] = [p[family] as Map<string, unknown>, m[family] as Map<string, unknown>];
    const differing = [...new Set([...pm.keys(), ...mm.keys()])].filter((k) => pm.get(k) !== mm.get(k));
    if (differing.length) lines.push(` ${differing.length} of the ${family} differ, e.g. ${differing.slice(0, EXAMPLES).map((k) => `${k}: ${primary} ${pm.get(k) ?? "(none)"}, ${member} ${mm.get(k) ?? "(none)"}`).join("; ")}`);
    if (family !== "counters") evidence.push(...differing.map((k) => `${k}: ${pm.get(k)} | ${mm.get(k)}`));
  }
  if (!lines.length) lines.push(" (the lists, counters and uploads read equal: the digests differ elsewhere)");
  return { details: lines, evidence };
}

/** (c) on one member: each token at most once, in its own connection's list, in the order sent;
 *  each client's counter equal to its appends there. */
function checkApplied(history: History, member: string, state: State, at: Positions): Violation[] {
  const violations: Violation[] = [];
  const twice: string[] = [];
  const elsewhere: string[] = [];
  const disordered: string[] = [];
  const appendsByClient = new Map<string, number>();
  for (const [token, places] of at) {
    const w = history.byToken.get(token);
    if (places.length > 1) twice.push(`${token} ${places.length} times (${places.map((p) => `${p.key}[${p.index + 1}]`).join(", ")})`);
    if (!w || places.some((p) => p.key !== w.key)) elsewhere.push(`${token} in ${places.map((p) => p.key).join(", ")}${w ? `, sent on ${w.key}` : ", never sent"}`);
    const client = `n:${token.split("-")[0]}`;
    appendsByClient.set(client, (appendsByClient.get(client) ?? 0) + places.length);
  }
  for (const [key, tokens] of state.lists) {
    for (let i = 1; i < tokens.length; i++) {
      const [a, b] = [history.byToken.get(tokens[i - 1]), history.byToken.get(tokens[i])];
      if (a && b && a.seq > b.seq) disordered.push(`${key}: ${tokens[i - 1]} before ${tokens[i]}`);
    }
  }
  const counters = [...new Set([...state.counters.keys(), ...appendsByClient.keys()])]
    .filter((k) => (state.counters.get(k) ?? 0) !== (appendsByClient.get(k) ?? 0))
    .map((k) => `${k} = ${state.counters.get(k) ?? 0}, appends applied ${appendsByClient.get(k) ?? 0}`);
  const report = (kind: string, what: string, items: string[]) => {
    if (items.length) violations.push({ check: "c", kind, member, summary: `${member}: ${items.length} ${what}`, details: items.slice(0, EXAMPLES).map((i) => `  ${i}`), evidence: items });
  };
  report("twice", "token(s) applied more than once", twice);
  report("elsewhere", "token(s) in a list they were not sent to", elsewhere);
  report("disordered", "pair(s) of tokens applied out of the order their connection sent them", disordered);
  report("counters", "counter(s) that disagree with the appends applied", counters);
  return violations;
}

/** Every fault and every controller event of the run (from run time `sinceMs` on), in time order. */
export function timeline(history: History, events: readonly ControllerEvent[], sinceMs = -Infinity): string[] {
  const lines = history.faults.map((f) => ({ at: f.at, text: `fault ${describeFault(f)}` }));
  for (const e of events) lines.push({ at: history.toRunTime(e.at), text: `controller ${seconds(history.toRunTime(e.at))} ${e.kind} ${e.member}: ${e.detail}` });
  return lines.filter((l) => l.at >= sinceMs).sort((a, b) => a.at - b.at).map((l) => `  ${l.text}`);
}

/** The violations as text; `dating` adds lines saying when each first appeared (quiet-points.ts). */
export function formatViolations(violations: readonly Violation[], dating: (v: Violation) => string[] = () => []): string {
  return violations.map((v, i) => [`VIOLATION ${i + 1} (${v.check}) ${v.summary}`, ...dating(v), ...v.details].join("\n")).join("\n");
}
