// The benchmark suite's quick mode (issues 5 and 10) as a user runs it: `npm run bench -- --quick`
// writes a Markdown table and an SVG plot, every set-up gets real numbers, every ratio is
// taken against the plain tcp_proxy row of the same run, and the failover section measured
// every trial quick mode asks for (or, if quick mode asks for none, says it measured nothing).
// The figures themselves are not asserted (the targets are reported in docs/BENCHMARKS.md,
// never tested).
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { spawnTied } from "../../scripts/child-processes.ts";
import type { Results } from "../../bench/suite/report.ts";
import { modeSettings } from "../../bench/run.ts";

const SETUPS = ["direct", "tcp_proxy", "lockstep-0", "lockstep-1", "lockstep-2", "lockstep-3", "lockstep-2-nocheck"];
const positive = (x: unknown) => typeof x === "number" && Number.isFinite(x) && x > 0;

describe("npm run bench -- --quick", () => {
  it("writes the table and the plot, with numbers for every set-up and ratios to this run's tcp_proxy", async () => {
    const out = mkdtempSync(join(tmpdir(), "lockstep-bench-"));
    // A child process, as a user runs it: the suite pins its own process to a core with taskset.
    // Without vitest's variables, or test/support would try to hook into a test run.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VITEST") && k !== "TEST" && k !== "NODE_ENV"));
    const child = spawnTied(process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "bench", "run.ts"), "--quick", "--out", out], { cwd: PROJECT_ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (d) => { stderr += d; });
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(code, stderr.slice(-4000)).toBe(0);
    // Progress while it runs.
    expect(stderr).toMatch(/latency 64B: tcp_proxy round 1\/2/);
    expect(stderr).toMatch(/bulk 32 MiB: lockstep-3 round 1\/1/);
    expect(stderr).toMatch(/connections 300: lockstep-2 round 1\/1/);
    expect(stderr).toMatch(/connection rate: lockstep-3 round 1\/1/);

    for (const f of ["results.md", "results.svg", "results.json"]) expect(existsSync(join(out, f)), f).toBe(true);
    const svg = readFileSync(join(out, "results.svg"), "utf8");
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true);
    expect(svg.match(/<rect /g)!.length).toBeGreaterThan(30); // bars, not an empty frame
    const md = readFileSync(join(out, "results.md"), "utf8");
    const r: Results = JSON.parse(readFileSync(join(out, "results.json"), "utf8"));

    // Latency: both sizes, every set-up, finite positive percentiles, ratios to tcp_proxy.
    expect(r.latency!.map((l) => l.size)).toEqual([64, 4096]);
    for (const l of r.latency!) {
      expect(l.rows.map((x) => x.setup)).toEqual(SETUPS);
      const base = l.rows.find((x) => x.setup === "tcp_proxy")!;
      for (const x of l.rows) {
        for (const p of ["p50", "p99", "p999"] as const) {
          expect(positive(x[p].median), `${l.size} B ${x.setup} ${p}`).toBe(true);
          expect(x.ratio[p]).toBeCloseTo(x[p].median / base[p].median, 6);
        }
        expect(x.clientBusy).toBeGreaterThan(0);
      }
      expect(base.ratio.p50).toBe(1);
      expect(md).toContain(`## Latency, ${l.size} B request / ${l.size} B reply`);
    }

    // Bulk: MB/s and ratio for every set-up; CPU per GB for every Envoy and every relay.
    expect(r.bulk!.rows.map((x) => x.setup)).toEqual(SETUPS);
    const bulkBase = r.bulk!.rows.find((x) => x.setup === "tcp_proxy")!;
    for (const x of r.bulk!.rows) {
      expect(positive(x.mbps.median), `bulk ${x.setup}`).toBe(true);
      expect(x.ratio).toBeCloseTo(x.mbps.median / bulkBase.mbps.median, 6);
      if (x.setup !== "direct") expect(positive(x.envoyCpuPerGB!.median), `Envoy CPU ${x.setup}`).toBe(true);
      if (x.setup.startsWith("lockstep-")) expect(x.relayCpuPerGB!.median, `relay CPU ${x.setup}`).toBeGreaterThanOrEqual(0);
      for (const k of ["pauses", "detaches", "overflows"] as const) expect(Number.isInteger(x[k])).toBe(true);
    }

    // Latency's noise gauge: a direct p99 beside every other row's p99.
    for (const l of r.latency!) for (const x of l.rows) {
      if (x.setup === "direct") expect(x.noiseP99).toBeNull();
      else expect(positive(x.noiseP99?.median), `${l.size} B ${x.setup} noise gauge`).toBe(true);
    }
    expect(md).toContain("noise gauge: direct p99 µs");

    // Connection rate: connections/s for every set-up it lists, against tcp_proxy; the relay's
    // replica connections sampled and drained; every loss counter present (zero or not: it is
    // reported, never hidden).
    const rate = r.connRate!;
    expect(rate.rows.map((x) => x.setup)).toEqual(["direct", "tcp_proxy", "lockstep-0", "lockstep-1", "lockstep-2", "lockstep-3"]);
    expect([rate.clients, rate.size]).toEqual([16, 64]);
    const rateBase = rate.rows.find((x) => x.setup === "tcp_proxy")!;
    for (const x of rate.rows) {
      expect(positive(x.connsPerSec.median), `connection rate ${x.setup}`).toBe(true);
      expect(x.completed, `connections completed ${x.setup}`).toBeGreaterThan(0);
      expect(x.ratio).toBeCloseTo(x.connsPerSec.median / rateBase.connsPerSec.median, 6);
      expect(Number.isInteger(x.failed)).toBe(true);
      if (x.setup !== "direct") expect(positive(x.envoyCpuUsPerConn?.median), `Envoy CPU per connection ${x.setup}`).toBe(true);
      if (x.setup.startsWith("lockstep-")) {
        expect(x.replicaConnsMax, `replica connections sampled ${x.setup}`).not.toBeNull();
        for (const k of ["missed", "envoyMissed", "envoyUnmirrored", "relayUnmirrored", "overflows", "streamsLost", "divergences", "undrained", "pauses"] as const) expect(Number.isInteger(x[k]), `${x.setup} ${k}`).toBe(true);
        expect(typeof x.mirrorsLost).toBe("boolean");
      }
      // Every replica connection the relay should open, it opened or counted as missed.
      if (x.replicas > 0 && !x.mirrorsLost && x.failed === 0 && x.undrained === 0) {
        expect(x.replicaConnsMax!, `${x.setup}: replica connections seen open`).toBeGreaterThan(0);
        expect(x.replicaConnsOpened).toBe(x.completed * x.replicas);
      }
    }
    expect(md).toContain("## Connection rate, 16 clients, 64 B exchange");
    expect(md).toContain("**Mirrors under churn.**");

    // Many connections: RSS of Envoy (and of the relay) at each count, against tcp_proxy.
    expect(r.conns!.rows.map((x) => `${x.connections} ${x.setup}`)).toEqual(["100 tcp_proxy", "100 lockstep-0", "100 lockstep-2", "300 tcp_proxy", "300 lockstep-0", "300 lockstep-2"]);
    for (const x of r.conns!.rows) {
      expect(positive(x.envoyRss.median)).toBe(true);
      if (x.setup === "tcp_proxy") expect(x.totalRatio).toBe(1);
      else {
        expect(positive(x.relayRss!.median)).toBe(true);
        const plain = r.conns!.rows.find((y) => y.connections === x.connections && y.setup === "tcp_proxy")!;
        expect(x.totalRatio).toBeCloseTo((x.envoyRss.median + x.relayRss!.median) / plain.envoyRss.median, 6);
      }
    }

    // Failover: every trial quick mode asks for was measured (bench/failover.ts: kill -9 and
    // SIGSTOP of the primary), with numbers; a section that measured nothing must say so.
    expect(r.errors ?? []).toEqual([]);
    const asked = modeSettings(true).failover;
    const kinds = (["kill", "stop"] as const).filter((k) => asked[k] > 0);
    if (kinds.length === 0) {
      // Quick mode skips failover: the report must say it was not measured, not show an empty table.
      expect(r.failover!.status).toMatch(/^not measured \(/);
      expect(r.failover!.rows).toEqual([]);
    } else {
      expect(r.failover!.status).toBe("measured");
      expect(r.failover!.rows.map((x) => [x.kind, x.trials])).toEqual(kinds.map((k) => [k, asked[k]]));
      for (const x of r.failover!.rows) {
        expect([x.p50, x.p99, x.max].every(positive), `failover ${x.kind}: ${JSON.stringify(x)}`).toBe(true);
        expect(x.p50 <= x.p99 && x.p99 <= x.max, `failover ${x.kind} percentiles in order`).toBe(true);
        expect(Number.isInteger(x.failedConnects) && x.failedConnects >= 0).toBe(true);
        expect(x.note).not.toMatch(/stopped after/);
        const n = asked[x.kind as keyof typeof asked];
        expect(stderr).toMatch(new RegExp(`failover ${x.kind}: trial ${n}/${n}: \\S+ served after`));
      }
      expect(md).toContain("## Failover");
      for (const label of kinds.map((k) => (k === "kill" ? "| kill -9 |" : "| SIGSTOP |"))) expect(md).toContain(label);
    }
    expect(md).toContain(`Status: ${r.failover!.status}`);

    // The Markdown names every set-up and reports against the targets.
    for (const label of ["direct to backend", "Envoy tcp_proxy (baseline)", "Envoy + lockstep, 3 replicas"]) expect(md).toContain(label);
    expect(md).toMatch(/## Targets \(issue 10, .*reported, not asserted\)/);
    expect(md).toMatch(/\| 10 \| connection rate .*2 replicas.* \| ≥ 70% of tcp_proxy's connections\/s \| \d+%/);
    expect(svg).toContain("Connection rate (16 clients");
    expect(md).toContain("![plot](results.svg)");
  }, 180_000); // 82-88 s measured with other work on the 2 cores (load average 7-11)
});
