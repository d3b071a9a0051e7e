// Active health checks of every member the controller knows: one probe per member per
// interval, a member turns unhealthy after `unhealthyThreshold` failures in a row and healthy
// again after `healthyThreshold` successes. The clock and the probe are seams, so tests can
// drive them. Reports only changes (and RTT samples), never acts on them itself.
import type { Probe, ProbeSpec } from "./probe.ts";

export interface HealthSettings {
  /** Between the start of two probes of one member. */
  readonly intervalMs: number;
  /** A probe that takes longer failed. */
  readonly timeoutMs: number;
  readonly unhealthyThreshold: number;
  readonly healthyThreshold: number;
  readonly send?: string;
  readonly expect?: string;
}

export const HEALTH_DEFAULTS: HealthSettings = Object.freeze({ intervalMs: 100, timeoutMs: 250, unhealthyThreshold: 2, healthyThreshold: 2 });

export interface Target { readonly key: string; readonly address: string }

interface Tracked { address: string; healthy: boolean | undefined; failures: number; successes: number; running: boolean; lastError?: string }

export interface HealthEvents {
  /** A member crossed a threshold (first verdict included). */
  onVerdict(key: string, healthy: boolean, reason: string): void;
  /** A successful probe's round-trip time. */
  onRtt(key: string, rttMs: number): void;
}

export interface Timers { setInterval(fn: () => void, ms: number): unknown; clearInterval(handle: unknown): void }
const realTimers: Timers = { setInterval: (fn, ms) => setInterval(fn, ms), clearInterval: (h) => clearInterval(h as NodeJS.Timeout) };

export class HealthChecker {
  private readonly tracked = new Map<string, Tracked>();
  private handle: unknown;

  constructor(private readonly settings: HealthSettings, private readonly probe: Probe, private readonly events: HealthEvents, private readonly timers: Timers = realTimers) {}

  /** Check exactly these targets from now on (new ones start with no verdict). */
  setTargets(targets: readonly Target[]): void {
    const keep = new Set(targets.map((t) => t.key));
    for (const key of this.tracked.keys()) if (!keep.has(key)) this.tracked.delete(key);
    for (const t of targets) {
      const known = this.tracked.get(t.key);
      if (!known || known.address !== t.address) this.tracked.set(t.key, { address: t.address, healthy: undefined, failures: 0, successes: 0, running: false });
    }
  }

  healthy(key: string): boolean | undefined { return this.tracked.get(key)?.healthy; }

  start(): void {
    if (this.handle === undefined) this.handle = this.timers.setInterval(() => this.round(), this.settings.intervalMs);
  }

  stop(): void {
    if (this.handle !== undefined) this.timers.clearInterval(this.handle);
    this.handle = undefined;
  }

  /** Probe every target not still being probed (a slow probe is not stacked). */
  round(): Promise<void[]> {
    const spec: ProbeSpec = { send: this.settings.send, expect: this.settings.expect, timeoutMs: this.settings.timeoutMs };
    return Promise.all([...this.tracked].map(async ([key, t]) => {
      if (t.running) return;
      t.running = true;
      const result = await this.probe(t.address, spec).finally(() => { t.running = false; });
      if (this.tracked.get(key) !== t) return; // removed or re-addressed meanwhile
      if (result.ok) {
        t.failures = 0;
        t.successes++;
        if (result.rttMs !== undefined) this.events.onRtt(key, result.rttMs);
        if (t.healthy !== true && t.successes >= this.settings.healthyThreshold) { t.healthy = true; this.events.onVerdict(key, true, "probe succeeded"); }
      } else {
        t.successes = 0;
        t.failures = result.fatal ? Math.max(t.failures + 1, this.settings.unhealthyThreshold) : t.failures + 1;
        t.lastError = result.error;
        if (t.healthy !== false && t.failures >= this.settings.unhealthyThreshold) {
          t.healthy = false;
          this.events.onVerdict(key, false, `${t.failures} probes failed (last: ${result.error ?? "failed"})`);
        }
      }
    }));
  }
}
