// A seeded pseudo-random generator (mulberry32). Every random choice of a chaos run (which
// fault, when, to whom; each client's sessions) comes from one of these, derived from the run's
// seed, so a seed replays the same schedule.
export class Prng {
  private state: number;

  /** `stream` names an independent sequence from the same seed (the nemesis, client 3, ...). */
  constructor(seed: number, stream = "") {
    let h = seed >>> 0;
    for (const c of stream) h = Math.imul(h ^ c.charCodeAt(0), 0x9e3779b1) >>> 0;
    this.state = h;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [min, max]. */
  int(min: number, max: number): number { return min + Math.floor(this.next() * (max - min + 1)); }

  chance(p: number): boolean { return this.next() < p; }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[Math.floor(this.next() * items.length)];
  }

  /** Exponentially distributed with the given mean (gaps of an open-loop arrival process). */
  exponential(mean: number): number { return -mean * Math.log(1 - this.next()); }

  shuffle<T>(items: readonly T[]): T[] {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }
}
