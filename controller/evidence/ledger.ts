// Evidence that replicas missed client bytes, from the processes that see the bytes: the relay
// (per replica: connections it did not provably deliver in full; per service: connections
// mirrored nowhere) and each Envoy's lockstep filter (the same, seen from the primary's side,
// which also covers a relay that died). Each source's counters only grow while its process
// lives; the controller keeps, with its state, the last values it acted on and the process
// instance they belong to, so that a restarted controller neither forgets what happened while
// it was down nor acts twice on the same loss, and a restarted source is counted from zero.
// Pure: no I/O.

/** A counter key: "<service>|<replica>|missed", "<service>|<replica>|diverged" or "<service>||unmirrored". */
export type CounterKey = string;
export type EvidenceKind = "missed" | "diverged" | "unmirrored";

export interface SourceReading {
  /** Which process: "relay" or "envoy <admin address>". */
  readonly source: string;
  /** New at every start of that process. */
  readonly instance: string;
  readonly counters: Readonly<Record<CounterKey, number>>;
}

export interface Baseline { readonly instance: string; readonly counters: Readonly<Record<CounterKey, number>> }
export type Baselines = Readonly<Record<string, Baseline>>;

export interface Evidence {
  readonly source: string;
  readonly service: string;
  /** null: every replica of the service (the connection reached none the source could name). */
  readonly replica: string | null;
  readonly kind: EvidenceKind;
  /** Connections since the last reading acted on. */
  readonly connections: number;
}

export function counterKey(service: string, replica: string | null, kind: EvidenceKind): CounterKey {
  return `${service}|${replica ?? ""}|${kind}`;
}

function parseKey(key: CounterKey): { service: string; replica: string | null; kind: EvidenceKind } | undefined {
  const [service, replica, kind] = key.split("|");
  if (!service || (kind !== "missed" && kind !== "diverged" && kind !== "unmirrored")) return undefined;
  return { service, replica: replica || null, kind };
}

export interface Assessment {
  /** What grew since the baselines (a new instance, or one never seen, counts from zero). */
  readonly evidence: Evidence[];
  /** Sources whose process is another one than the baseline's. */
  readonly restarted: readonly string[];
  /** Baselines to store with the decisions taken on this evidence. */
  readonly baselines: Baselines;
}

/** Compare readings with the stored baselines. Sources without a reading keep their baseline. */
export function assess(baselines: Baselines, readings: readonly SourceReading[]): Assessment {
  const evidence: Evidence[] = [];
  const restarted: string[] = [];
  const next: Record<string, Baseline> = { ...baselines };
  for (const r of readings) {
    const before = baselines[r.source];
    const same = before !== undefined && before.instance === r.instance;
    if (before !== undefined && !same) restarted.push(r.source);
    for (const [key, value] of Object.entries(r.counters)) {
      const parsed = parseKey(key);
      const was = same ? before.counters[key] ?? 0 : 0;
      // A counter that went down while the instance looks the same: the process restarted
      // within the reading's resolution; count from zero (never less than nothing).
      const grew = value >= was ? value - was : value;
      if (parsed && grew > 0) evidence.push({ source: r.source, ...parsed, connections: grew });
    }
    next[r.source] = { instance: r.instance, counters: { ...r.counters } };
  }
  return { evidence, restarted, baselines: next };
}

/** Whether a source was read now, and is the same process its baseline was taken from. */
export function continuous(baselines: Baselines, readings: readonly SourceReading[], source: string): boolean {
  const now = readings.find((r) => r.source === source);
  return now !== undefined && baselines[source]?.instance === now.instance;
}
