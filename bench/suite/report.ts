// The report of one run: a Markdown table per section, the targets of issues 10 and 5 reported
// against (never asserted), and an SVG plot drawn here by hand (no plotting dependency).
import type { BulkSection, ConnsSection, FailoverSection, LatencySection, PlacementRow, RateRow, RateSection } from "./sections.ts";
import type { Spread } from "./stats.ts";

export interface Results {
  meta: {
    date: string; mode: string; loadBefore: string; loadAfter: string; seconds: number;
    cpus: string; envoy: string; node: string; fileLimit: number; requestedConnCounts: number[]; placement: string;
    /** Envoy's worker threads in every set-up (its default, as scripts/run.ts runs it). Absent in runs before issue 10. */
    envoyWorkers?: number;
  };
  latency?: LatencySection[];
  placement?: PlacementRow[];
  bulk?: BulkSection;
  /** Connection rate (issue 10): short connections through each set-up. */
  connRate?: RateSection;
  conns?: ConnsSection;
  failover?: FailoverSection;
  /** Sections that failed, with why (the others are still reported). */
  errors?: string[];
}

const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "–");
const sp = (s: Spread | null | undefined, d = 1, scale = 1) =>
  s ? (s.n > 1 ? `${f(s.median * scale, d)} (${f(s.min * scale, d)}–${f(s.max * scale, d)})` : f(s.median * scale, d)) : "–";
const pctOf = (x: number) => `${f(x * 100, 0)}%`;
const MiB = 1 / 2 ** 20;
const KiB = 1 / 2 ** 10;

export interface Target { issue: number; what: string; target: string; ours: string; met: boolean | null }

/** The targets in force: issue 10's (the mirror path's cost), and issue 5's where issue 10 set
 *  none (p50 with 0 replicas, failover). Reported against, never asserted. */
export function targets(r: Results): Target[] {
  const out: Target[] = [];
  const plural = (n: number) => `${n} replica${n === 1 ? "" : "s"}`;
  for (const l of r.latency ?? []) {
    const row = (k: string) => l.rows.find((x) => x.setup === k);
    for (const [k, limit, issue] of [["lockstep-0", 1.03, 5], ["lockstep-1", 1.10, 10], ["lockstep-3", 1.20, 10]] as const) {
      const x = row(k);
      const n = Number(k.slice("lockstep-".length));
      if (x) out.push({ issue, what: `p50 latency ${l.size} B, ${plural(n)}`, target: `≤ ×${limit.toFixed(2)}`, ours: `×${f(x.ratio.p50, 3)}`, met: x.ratio.p50 <= limit });
    }
    const lock = l.rows.filter((x) => /^lockstep-[123]$/.test(x.setup));
    if (lock.length) {
      const limit = l.size <= 64 ? 1.25 : 1.35;
      const worst = lock.reduce((a, b) => (b.ratio.p99 > a.ratio.p99 ? b : a));
      const gauges = l.rows.flatMap((x) => (x.noiseP99 ? [x.noiseP99.min, x.noiseP99.max] : []));
      const noise = gauges.length ? ` (noise gauge: direct p99 ${f(Math.min(...gauges))}–${f(Math.max(...gauges))} µs)` : "";
      out.push({ issue: 10, what: `p99 latency ${l.size} B, worst of 1–3 replicas (${worst.setup})`, target: `≤ ×${limit.toFixed(2)}`, ours: `×${f(worst.ratio.p99, 3)}${noise}`, met: worst.ratio.p99 <= limit });
    }
  }
  if (r.bulk) {
    const base = r.bulk.rows.find((y) => y.setup === "tcp_proxy");
    for (const [k, limit, relayLimit] of [["lockstep-1", 0.35, 0.5], ["lockstep-3", 0.20, 1.0]] as const) {
      const x = r.bulk.rows.find((y) => y.setup === k);
      if (!x) continue;
      const n = Number(k.slice("lockstep-".length));
      const clean = x.detaches === 0 && x.overflows === 0 && x.replicasComplete;
      out.push({ issue: 10, what: `bulk throughput, ${plural(n)}, no detach, every byte delivered`, target: `≥ ${pctOf(limit)} of tcp_proxy`,
        ours: `${pctOf(x.ratio)}, ${x.detaches} detaches, ${x.overflows} mirrors cut${x.replicasComplete ? "" : ", **a replica missed bytes**"}`, met: x.ratio >= limit && clean });
      if (x.relayCpuPerGB) out.push({ issue: 10, what: `relay CPU per GB mirrored, ${plural(n)}`, target: `≤ ${relayLimit.toFixed(1)} s`, ours: `${f(x.relayCpuPerGB.median, 2)} s`, met: x.relayCpuPerGB.median <= relayLimit });
    }
    const lock = r.bulk.rows.filter((y) => /^lockstep-[123]$/.test(y.setup) && y.envoyCpuPerGB);
    if (base?.envoyCpuPerGB && lock.length) {
      const worst = lock.reduce((a, b) => (b.envoyCpuPerGB!.median > a.envoyCpuPerGB!.median ? b : a));
      const x = worst.envoyCpuPerGB!.median / base.envoyCpuPerGB.median;
      out.push({ issue: 10, what: `Envoy CPU per GB with the filter, worst of 1–3 replicas (${worst.setup})`, target: "≤ ×2 tcp_proxy's", ours: `×${f(x, 2)} (${f(worst.envoyCpuPerGB!.median, 2)} vs ${f(base.envoyCpuPerGB.median, 2)} s)`, met: x <= 2 });
    }
  }
  if (r.conns) {
    const n = Math.max(...r.conns.counts);
    const x = r.conns.rows.find((y) => y.connections === n && y.setup === `lockstep-${r.conns!.replicas}`);
    if (x) out.push({ issue: 10, what: `memory at ${n} connections, ${plural(r.conns.replicas)} (Envoy + relay RSS)`, target: "≤ ×2 plain tcp_proxy", ours: `×${f(x.totalRatio, 2)}`, met: x.totalRatio <= 2 });
  }
  const cr = r.connRate;
  const rate = cr?.rows.find((y) => y.setup === "lockstep-2");
  const rateWhat = `connection rate (connect, one ${cr?.size ?? 64} B exchange, close; ${cr?.clients ?? 16} clients), 2 replicas, no mirror lost`;
  out.push(rate
    ? { issue: 10, what: rateWhat, target: "≥ 70% of tcp_proxy's connections/s", ours: `${pctOf(rate.ratio)} (${f(rate.connsPerSec.median, 0)} connections/s), ${lossSummary(rate)}`, met: rate.ratio >= 0.7 && !rate.mirrorsLost }
    : { issue: 10, what: rateWhat, target: "≥ 70% of tcp_proxy's connections/s", ours: "not run", met: null });
  const fo = r.failover;
  for (const [kind, limit] of [["kill", 10], ["stop", 300]] as const) {
    const x = fo?.rows.find((y) => y.kind === kind);
    const what = `failover p99, ${kind === "kill" ? "kill -9" : "SIGSTOP (silent)"} primary, 0 failed connects`;
    out.push(x
      ? { issue: 5, what, target: `≤ ${limit} ms`, ours: `${f(x.p99, 1)} ms, ${x.failedConnects} failed connects (${x.trials} trials)`, met: x.p99 <= limit && x.failedConnects === 0 }
      : { issue: 5, what, target: `≤ ${limit} ms`, ours: fo?.status ?? "not run", met: null });
  }
  return out;
}

/** "no mirror lost", or what was lost, for one connection-rate row. */
export function lossSummary(x: RateRow): string {
  if (!x.replicas) return "nothing to mirror";
  if (!x.mirrorsLost) return "no mirror lost";
  const parts: string[] = [];
  if (x.missed) parts.push(`${x.missed} replica connections missed (${f(x.missedShare * 100, 1)}%)`);
  if (x.envoyUnmirrored) parts.push(`${x.envoyUnmirrored} connections unmirrored`);
  if (x.overflows) parts.push(`${x.overflows} mirrors cut`);
  const d = Object.entries(x.detaches).map(([k, v]) => `${v} ${k}`).join(", ");
  if (d) parts.push(`detaches: ${d}`);
  if (x.problems.length) parts.push(x.problems.join("; "));
  return `**mirrors lost**: ${parts.join("; ") || "see the section"}`;
}

export function renderMarkdown(r: Results): string {
  const m = r.meta;
  const out: string[] = [
    `# Benchmark results (${m.mode} mode, ${m.date.slice(0, 16).replace("T", " ")} UTC)`,
    "",
    `Written by \`${m.mode === "quick" ? "npm run bench -- --quick" : "npm run bench"}\` (bench/run.ts); method and discussion: [docs/BENCHMARKS.md](../../docs/BENCHMARKS.md)${m.mode === "quick" ? " (quick mode is too small to mean much: it proves the harness)" : ""}.`,
    `Machine: ${m.cpus}; Envoy ${m.envoy}; Node ${m.node}; load average before ${m.loadBefore}, after ${m.loadAfter}; ${m.seconds} s in all.`,
    `Placement: ${m.placement}. Cells with a range are the median over rounds (min–max over rounds).`,
    "",
    "![plot](results.svg)",
    "",
    ...(r.errors?.length ? ["**Sections that failed in this run** (the rest is reported below):", "", ...r.errors.map((e) => `- ${e}`), ""] : []),
  ];
  for (const l of r.latency ?? []) {
    out.push(`## Latency, ${l.size} B request / ${l.size} B reply`, "",
      `One connection, closed loop, ${l.exchanges} timed exchanges per round after a warm-up, ${l.rounds} rounds. µs; ratios are medians over the tcp_proxy row's medians. CPU per exchange: the process's utime + stime (10 ms ticks) over the round, divided by its exchanges. **Noise gauge**: the direct set-up's p99, measured just before each round of the row (about 15 µs on a quiet machine): where it is high, that row's tail measured the machine's other work, not lockstep.`, "",
      "| set-up | p50 µs | p99 µs | noise gauge: direct p99 µs | p99.9 µs | p50 ×tcp_proxy | p99 ×tcp_proxy | p99.9 ×tcp_proxy | Envoy CPU µs/exchange | relay CPU µs/exchange | client CPU busy |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
      ...l.rows.map((x) => `| ${x.label} | ${sp(x.p50)} | ${sp(x.p99)} | ${x.noiseP99 ? sp(x.noiseP99) : "–"} | ${sp(x.p999)} | ${f(x.ratio.p50, 3)} | ${f(x.ratio.p99, 3)} | ${f(x.ratio.p999, 3)} | ${x.envoyCpuUs === null ? "–" : f(x.envoyCpuUs)} | ${x.relayCpuUs === null ? "–" : f(x.relayCpuUs)} | ${pctOf(x.clientBusy)} |`), "");
  }
  if (r.placement) {
    out.push("## Placement check (64 B, p50 µs, one round each)", "",
      "The same exchange with the processes placed other ways: a wake-up that crosses cores costs tens of µs on this machine, and work on the client's core delays it.", "",
      "| placement | direct | tcp_proxy | lockstep, 1 replica | lockstep ×tcp_proxy |", "| --- | ---: | ---: | ---: | ---: |",
      ...r.placement.map((p) => `| ${p.placement} | ${f(p.direct)} | ${f(p.tcpProxy)} | ${f(p.lockstep1)} | ${f(p.lockstep1 / p.tcpProxy, 3)} |`), "");
  }
  if (r.bulk) {
    const b = r.bulk;
    out.push(`## Bulk throughput, ${f(b.bytes * MiB, 0)} MiB per run`, "",
      `One connection streams to a sink backend, half-closes and waits for the close; ${b.rounds} round${b.rounds > 1 ? "s" : ""}. CPU s/GB from /proc/<pid>/stat (utime + stime) over the run, counted until every replica took the last byte. Pauses: times the filter paused the client because the relay was behind; detaches and mirrors cut over all rounds.`, "",
      "| set-up | MB/s | ×tcp_proxy | Envoy CPU s/GB | relay CPU s/GB | client CPU busy | pauses | detaches | mirrors cut | replicas got every byte | last replica caught up |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
      ...b.rows.map((x) => `| ${x.label} | ${sp(x.mbps, 0)} | ${f(x.ratio, 3)} | ${sp(x.envoyCpuPerGB, 2)} | ${sp(x.relayCpuPerGB, 2)} | ${pctOf(x.clientBusy)} | ${x.replicas ? x.pauses : "–"} | ${x.replicas ? x.detaches : "–"} | ${x.replicas ? x.overflows : "–"} | ${x.replicas ? (x.replicasComplete ? "yes" : "**no**") : "–"} | ${x.replicas ? `${x.catchUpMs} ms` : "–"} |`), "");
  }
  if (r.connRate) {
    const c = r.connRate;
    const ms = (x: Spread) => sp({ ...x, median: x.median / 1000, min: x.min / 1000, max: x.max / 1000 }, 2);
    out.push(`## Connection rate, ${c.clients} clients, ${c.size} B exchange`, "",
      `${c.clients} client threads each loop connect, write ${c.size} B, read the ${c.size} B echo, close, for ${c.seconds} s per round; ${c.rounds} round${c.rounds > 1 ? "s" : ""} after a warm-up. Failed connections are counted (by kind), not retried. CPU per connection: utime + stime over the round (the relay's until its replica connections drained) over the connections completed.`, "",
      "| set-up | connections/s | ×tcp_proxy | failed | connect..close p50 ms | p99 ms | Envoy CPU µs/conn | relay CPU µs/conn | client CPU busy |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
      ...c.rows.map((x) => `| ${x.label} | ${sp(x.connsPerSec, 0)} | ${f(x.ratio, 3)} | ${x.failed}${x.failed ? ` (${Object.entries(x.failures).map(([k, v]) => `${v} ${k}`).join(", ")})` : ""} | ${ms(x.p50Us)} | ${ms(x.p99Us)} | ${sp(x.envoyCpuUsPerConn, 0)} | ${sp(x.relayCpuUsPerConn, 0)} | ${pctOf(x.clientBusy)} |`), "");
    const lock = c.rows.filter((x) => x.replicas > 0);
    if (lock.length) {
      out.push(`**Mirrors under churn.** The relay's open replica connections (\`lockstep_relay_replica_connections_active\`, all replicas) sampled every 100 ms during the run: the most at once and the number when the clients stopped; drain: from the clients' stop until none was open (limit ${c.drainLimitS} s). Counter deltas over all rounds: replica connections the relay opened (expected: connections completed × replicas), the relay's \`lockstep_relay_replica_missed_connections_total\` (a replica connection that did not provably take every client byte: that replica is out of sync) and the filter's per-replica \`missed_connections\`, the filter's \`unmirrored_connections\` (bytes that reached no replica) and \`overflows\` (mirror cut: the relay stalled), streams lost, the relay's detaches by reason and divergences (DIVERGED: replies judged different). Pauses: times a connection's bytes waited in Envoy for the relay (the filter's bound on streams still finishing for closed connections, or its in-flight bound): push-back, paid in connection rate, not in lost mirrors.`, "",
        "| set-up | replica conns open, max | at stop | relay streams, max | drain s | pauses | replica conns opened / expected | missed (relay) | missed (filter) | unmirrored (filter / relay) | mirrors cut | streams lost | detaches | divergences | mirrors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        ...lock.map((x) => `| ${x.label} | ${x.replicaConnsMax ?? "–"} | ${x.replicaConnsAtStop ?? "–"} | ${x.streamsMax ?? "–"} | ${x.drainMs ? sp(x.drainMs, 2, 1 / 1000) : "–"}${x.undrained ? ` (**${x.undrained} round${x.undrained > 1 ? "s" : ""} not drained in ${c.drainLimitS} s**)` : ""} | ${x.pauses} | ${x.replicaConnsOpened} / ${x.completed * x.replicas} | ${x.missed}${x.missed ? ` (${f(x.missedShare * 100, 1)}%)` : ""} | ${x.envoyMissed} | ${x.envoyUnmirrored} / ${x.relayUnmirrored} | ${x.overflows} | ${x.streamsLost} | ${Object.entries(x.detaches).map(([k, v]) => `${v} ${k}`).join(", ") || "0"} | ${x.divergences} | ${x.mirrorsLost ? "**lost**" : "none lost"} |`), "");
    }
    const zero = c.rows.find((x) => x.setup === "lockstep-0");
    if (zero) out.push(`(\`${zero.setup}\` has no replica, so it loses nothing: a connection that ends before the relay's first answer (the empty replica set) counts in the filter's \`unmirrored_connections\` (${zero.envoyUnmirrored} here), the others in \`connections_without_replicas\`.)`, "");
    const problems = c.rows.flatMap((x) => x.problems.map((p) => `- ${x.setup}: ${p}`));
    if (problems.length) out.push("**Problems in this section:**", "", ...problems, "");
  }
  if (r.conns) {
    const c = r.conns;
    out.push(`## Many connections, ${c.replicas} replicas`, "",
      ...(c.counts.join() !== r.meta.requestedConnCounts.join() ? [`**Asked for ${r.meta.requestedConnCounts.join(" and ")} connections; measured ${c.counts.join(" and ")}**: this machine's open-file limit is ${r.meta.fileLimit} and could not be raised (Envoy needs two descriptors per connection and crashes on EMFILE). Per-connection figures carry over; the 10,000 target is judged on them (see docs/BENCHMARKS.md).`, ""] : []),
      `Connections opened and held, each after one 16-byte echo exchange (for lockstep: until the relay holds every stream and every replica connection). RSS from /proc/<pid>/status; per connection = (RSS holding them − RSS before) / connections. Fresh processes every round; ${c.rounds} round${c.rounds > 1 ? "s" : ""}.`, "",
      "| connections | set-up | Envoy RSS MiB | relay RSS MiB | Envoy KiB/conn | of which Envoy heap (tcmalloc) | relay KiB/conn | (Envoy + relay) ×tcp_proxy | open all, s |",
      "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
      ...c.rows.map((x) => `| ${x.connections} | ${x.label} | ${sp(x.envoyRss, 1, MiB)} | ${sp(x.relayRss, 1, MiB)} | ${sp(x.envoyPerConn, 2, KiB)} | ${sp(x.envoyHeapPerConn, 2, KiB)} | ${sp(x.relayPerConn, 2, KiB)} | ${f(x.totalRatio, 2)} | ${sp(x.openSeconds, 2)} |`), "");
  }
  if (r.failover) {
    out.push("## Failover", "", `Status: ${r.failover.status}.`, "");
    if (r.failover.rows.length) {
      out.push("| primary | trials | failure → first served p50 ms | p99 ms | max ms | failed connects | note |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ...r.failover.rows.map((x) => `| ${x.kind === "kill" ? "kill -9" : "SIGSTOP"} | ${x.trials} | ${f(x.p50, 1)} | ${f(x.p99, 1)} | ${f(x.max, 1)} | ${x.failedConnects} | ${x.note.replace(/\|/g, "/")} |`), "");
    }
  }
  out.push("## Targets (issue 10, and issue 5 where issue 10 sets none; reported, not asserted)", "", "Ratios against the tcp_proxy row of this run.", "",
    "| issue | what | target | this run | met |", "| ---: | --- | --- | --- | --- |",
    ...targets(r).map((t) => `| ${t.issue} | ${t.what} | ${t.target} | ${t.ours} | ${t.met === null ? "not measured" : t.met ? "yes" : "**no**"} |`), "");
  return out.join("\n");
}

// ---------------------------------------------------------------- SVG

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];

interface Series { name: string; values: (number | null)[]; lo?: (number | null)[]; hi?: (number | null)[]; color?: string }
interface Chart {
  x: number; y: number; w: number; h: number; title: string; yLabel: string;
  categories: string[]; series: Series[]; stacked?: boolean; refLines?: { y: number; label: string }[];
  valueLabel?: (v: number) => string;
}

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const k of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (k * p >= v) return k * p;
  return 10 * p;
}

function barChart(c: Chart): string {
  const pad = { l: 56, r: 44, t: 28, b: 64 };
  const pw = c.w - pad.l - pad.r, ph = c.h - pad.t - pad.b;
  const ox = c.x + pad.l, oy = c.y + pad.t + ph;
  const tops = c.categories.map((_, i) => c.stacked
    ? c.series.reduce((n, s) => n + (s.values[i] ?? 0), 0)
    : Math.max(...c.series.map((s) => Math.max(s.hi?.[i] ?? 0, s.values[i] ?? 0))));
  const ymax = niceMax(Math.max(...tops, ...(c.refLines ?? []).map((r) => r.y)) * 1.08);
  const Y = (v: number) => oy - (v / ymax) * ph;
  const o: string[] = [];
  o.push(`<text x="${c.x + c.w / 2}" y="${c.y + 16}" text-anchor="middle" font-size="13" font-weight="bold">${esc(c.title)}</text>`);
  const ticks = [5, 4, 6, 3].find((n) => Number.isInteger(+((ymax / n) * 100).toPrecision(6)) && +(ymax / n).toPrecision(2) === ymax / n) ?? 4;
  for (let k = 0; k <= ticks; k++) {
    const v = (ymax * k) / ticks;
    o.push(`<line x1="${ox}" x2="${ox + pw}" y1="${Y(v)}" y2="${Y(v)}" stroke="#ddd"/>`);
    o.push(`<text x="${ox - 4}" y="${Y(v) + 4}" text-anchor="end" font-size="10">${+v.toPrecision(3)}</text>`);
  }
  o.push(`<text transform="translate(${c.x + 12},${c.y + pad.t + ph / 2}) rotate(-90)" text-anchor="middle" font-size="11">${esc(c.yLabel)}</text>`);
  const gw = pw / c.categories.length;
  const nb = c.stacked ? 1 : c.series.length;
  const bw = Math.min(28, (gw * 0.8) / nb);
  c.categories.forEach((cat, i) => {
    const gx = ox + gw * i + (gw - bw * nb) / 2;
    let acc = 0;
    c.series.forEach((s, j) => {
      const v = s.values[i];
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      const bx = c.stacked ? gx : gx + j * bw;
      const y0 = Y(acc + v), y1 = Y(acc);
      o.push(`<rect x="${bx.toFixed(1)}" y="${y0.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${Math.max(0.5, y1 - y0).toFixed(1)}" fill="${s.color ?? COLORS[j % COLORS.length]}"><title>${esc(`${cat} ${s.name}: ${v}`)}</title></rect>`);
      const lo = s.lo?.[i], hi = s.hi?.[i];
      if (!c.stacked && lo != null && hi != null && hi > lo) {
        const cx = bx + (bw - 2) / 2;
        o.push(`<path d="M${cx} ${Y(lo)}V${Y(hi)}M${cx - 3} ${Y(lo)}h6M${cx - 3} ${Y(hi)}h6" stroke="#333" fill="none"/>`);
      }
      if (c.valueLabel && !c.stacked) o.push(`<text x="${bx + (bw - 2) / 2}" y="${Y(Math.max(v, hi ?? v)) - 3}" text-anchor="middle" font-size="9">${esc(c.valueLabel(v))}</text>`);
      if (c.stacked) acc += v;
    });
    if (c.stacked && c.valueLabel) o.push(`<text x="${gx + (bw - 2) / 2}" y="${Y(acc) - 3}" text-anchor="middle" font-size="9">${esc(c.valueLabel(acc))}</text>`);
    const lines = cat.split("\n");
    lines.forEach((line, k) => o.push(`<text x="${ox + gw * i + gw / 2}" y="${oy + 14 + k * 12}" text-anchor="middle" font-size="10">${esc(line)}</text>`));
  });
  for (const r of c.refLines ?? []) {
    o.push(`<line x1="${ox}" x2="${ox + pw}" y1="${Y(r.y)}" y2="${Y(r.y)}" stroke="#c00" stroke-dasharray="4 3"/>`);
    o.push(`<text x="${ox + pw + 2}" y="${Y(r.y) + 3}" text-anchor="start" font-size="9" fill="#c00">${esc(r.label)}</text>`);
  }
  o.push(`<line x1="${ox}" x2="${ox + pw}" y1="${oy}" y2="${oy}" stroke="#333"/><line x1="${ox}" x2="${ox}" y1="${oy}" y2="${oy - ph}" stroke="#333"/>`);
  // legend
  let lx = ox;
  c.series.forEach((s, j) => {
    o.push(`<rect x="${lx}" y="${c.y + c.h - 16}" width="10" height="10" fill="${s.color ?? COLORS[j % COLORS.length]}"/><text x="${lx + 14}" y="${c.y + c.h - 7}" font-size="10">${esc(s.name)}</text>`);
    lx += 22 + s.name.length * 6;
  });
  return o.join("\n");
}

function message(x: number, y: number, w: number, h: number, title: string, text: string): string {
  return `<text x="${x + w / 2}" y="${y + 16}" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>
<text x="${x + w / 2}" y="${y + h / 2}" text-anchor="middle" font-size="12" fill="#666">${esc(text)}</text>`;
}

const short = (k: string) => k === "tcp_proxy" ? "tcp_proxy" : k === "direct" ? "direct"
  : k.endsWith("-nocheck") ? k.replace("lockstep-", "lockstep\n").replace("-nocheck", " repl.\nno check") : k.replace("lockstep-", "lockstep\n") + " repl.";

export function renderSvg(r: Results): string {
  const W = 1200, H = 1060, cw = W / 3, ch = (H - 40) / 3;
  const parts: string[] = [];
  const cell = (i: number) => ({ x: (i % 3) * cw, y: 36 + Math.floor(i / 3) * ch, w: cw, h: ch });
  (r.latency ?? []).slice(0, 2).forEach((l, i) => {
    const gauges = l.rows.flatMap((x) => (x.noiseP99 ? [x.noiseP99.min, x.noiseP99.max] : []));
    const noise = gauges.length ? `; noise: direct p99 ${f(Math.min(...gauges), 0)}–${f(Math.max(...gauges), 0)} µs` : "";
    parts.push(barChart({ ...cell(i), title: `Latency ${l.size} B, ×plain tcp_proxy${noise}`, yLabel: "ratio of medians",
      categories: l.rows.map((x) => short(x.setup)),
      series: [
        { name: "p50", values: l.rows.map((x) => x.ratio.p50) },
        { name: "p99", values: l.rows.map((x) => x.ratio.p99) },
        { name: "p99.9", values: l.rows.map((x) => x.ratio.p999) },
      ],
      refLines: [{ y: 1, label: "×1" }, { y: l.size <= 64 ? 1.25 : 1.35, label: "p99 target" }], valueLabel: (v) => (v === 1 ? "" : v.toFixed(2)) }));
  });
  if (!r.latency) { parts.push(message(cell(0).x, cell(0).y, cw, ch, "Latency", "not run")); }
  if (r.bulk) {
    const b = r.bulk;
    parts.push(barChart({ ...cell(2), title: `Bulk throughput (${(b.bytes * MiB).toFixed(0)} MiB per run)`, yLabel: "MB/s",
      categories: b.rows.map((x) => short(x.setup)),
      series: [{ name: "MB/s, median with min–max", values: b.rows.map((x) => x.mbps.median), lo: b.rows.map((x) => x.mbps.min), hi: b.rows.map((x) => x.mbps.max) }],
      refLines: ((base) => base ? [{ y: base * 0.35, label: "35%" }, { y: base * 0.2, label: "20%" }] : [])(b.rows.find((x) => x.setup === "tcp_proxy")?.mbps.median),
      valueLabel: (v) => v.toFixed(0) }));
    const rows = b.rows.filter((x) => x.envoyCpuPerGB);
    parts.push(barChart({ ...cell(3), title: "CPU per GB streamed", yLabel: "CPU seconds / GB", stacked: true,
      categories: rows.map((x) => short(x.setup)),
      series: [
        { name: "Envoy", values: rows.map((x) => x.envoyCpuPerGB?.median ?? null) },
        { name: "relay", values: rows.map((x) => x.relayCpuPerGB?.median ?? null) },
      ], refLines: ((base) => base ? [{ y: 2 * base, label: "2× Envoy" }] : [])(b.rows.find((x) => x.setup === "tcp_proxy")?.envoyCpuPerGB?.median),
      valueLabel: (v) => v.toFixed(1) }));
  } else parts.push(message(cell(2).x, cell(2).y, cw, ch, "Bulk throughput", "not run"));
  const cr = r.connRate;
  if (cr) {
    const rows = cr.rows.filter((x) => x.setup !== "direct");
    const base = rows.find((x) => x.setup === "tcp_proxy")?.connsPerSec.median;
    parts.push(barChart({ ...cell(4), title: `Connection rate (${cr.clients} clients, ${cr.size} B, close)`, yLabel: "connections / s",
      categories: rows.map((x) => short(x.setup) + (x.mirrorsLost ? "\nMIRRORS LOST" : "")),
      series: [{ name: "connections/s, median with min–max", values: rows.map((x) => x.connsPerSec.median), lo: rows.map((x) => x.connsPerSec.min), hi: rows.map((x) => x.connsPerSec.max) }],
      refLines: base ? [{ y: base * 0.7, label: "70%" }] : [], valueLabel: (v) => v.toFixed(0) }));
    const lock = cr.rows.filter((x) => x.replicas > 0);
    parts.push(barChart({ ...cell(5), title: "Replica connections open at the relay (rate run)", yLabel: "connections",
      categories: lock.map((x) => `${short(x.setup)}\ndrain ${x.undrained ? `> ${cr.drainLimitS}` : x.drainMs ? f(x.drainMs.max / 1000, 1) : "0"} s`),
      series: [{ name: "most at once", values: lock.map((x) => x.replicaConnsMax) }, { name: "when the clients stopped", values: lock.map((x) => x.replicaConnsAtStop) }],
      valueLabel: (v) => v.toFixed(0) }));
    parts.push(barChart({ ...cell(8), title: "Mirrors lost under churn (rate run)", yLabel: "% of replica connections",
      categories: lock.map((x) => `${short(x.setup)}\n${x.missed} of ${x.completed * x.replicas}`),
      series: [
        { name: "missed (relay)", values: lock.map((x) => x.missedShare * 100), color: "#e15759" },
        { name: "unmirrored conns (filter)", values: lock.map((x) => (x.envoyUnmirrored / Math.max(1, x.completed)) * 100), color: "#b07aa1" },
      ], valueLabel: (v) => (v === 0 ? "0" : v.toFixed(1)) }));
  } else {
    parts.push(message(cell(4).x, cell(4).y, cw, ch, "Connection rate", "not run"));
  }
  if (r.conns) {
    const c = r.conns;
    const plainAtMax = c.rows.find((x) => x.setup === "tcp_proxy" && x.connections === Math.max(...c.counts))?.envoyRss.median;
    parts.push(barChart({ ...cell(6), title: "Memory holding N connections", yLabel: "RSS MiB", stacked: true,
      refLines: plainAtMax ? [{ y: (2 * plainAtMax) * MiB, label: "2×" }] : [],
      categories: c.rows.map((x) => `${x.connections}\n${x.setup === "tcp_proxy" ? "tcp_proxy" : `lockstep\n${x.setup.slice("lockstep-".length)} repl.`}`),
      series: [
        { name: "Envoy", values: c.rows.map((x) => x.envoyRss.median * MiB) },
        { name: "relay", values: c.rows.map((x) => (x.relayRss?.median ?? 0) * MiB) },
      ], valueLabel: (v) => v.toFixed(0) }));
  } else parts.push(message(cell(6).x, cell(6).y, cw, ch, "Many connections", "not run"));
  const fo = r.failover;
  if (fo && fo.rows.length) {
    parts.push(barChart({ ...cell(7), title: "Failover: failure → first served", yLabel: "ms",
      categories: fo.rows.map((x) => `${x.kind === "kill" ? "kill -9" : "SIGSTOP"}\n${x.trials} trials, ${x.failedConnects} failed`),
      series: [{ name: "p50", values: fo.rows.map((x) => x.p50) }, { name: "p99", values: fo.rows.map((x) => x.p99) }],
      refLines: [{ y: 10, label: "10 ms" }, { y: 300, label: "300" }], valueLabel: (v) => v.toFixed(1) }));
  } else parts.push(message(cell(7).x, cell(7).y, cw, ch, "Failover", fo?.status ?? "not run"));
  const title = `lockstep benchmarks, ${r.meta.mode} mode, ${r.meta.date.slice(0, 16).replace("T", " ")} UTC (Envoy${r.meta.envoyWorkers ? `, ${r.meta.envoyWorkers} workers,` : ""} on CPU 0, the rest on CPU 1; red dashes: targets)`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Arial, sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>
${parts.join("\n")}
</svg>
`;
}
