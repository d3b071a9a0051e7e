// The record of one chaos run, on one clock (ms since the run started): every write a client
// attempted and how it ended, every fault the nemesis injected (and what it skipped). The
// checker judges the final states against it and quotes it (the faults around a write).

/** acked: the client got the reply (the write happened); indeterminate: sent, no reply (the
 *  connection was reset or timed out: it may or may not have happened); rejected: an error
 *  reply (it did not happen). */
export type Outcome = "pending" | "acked" | "indeterminate" | "rejected";

export interface WriteOp {
  readonly client: number;
  /** The client's connection number: each connection appends to a list of its own. */
  readonly conn: number;
  readonly seq: number;
  /** Unique over the run: `c<client>-<seq>`. */
  readonly token: string;
  /** The list it appends to: `log:c<client>:<conn>`. */
  readonly key: string;
  readonly sentAt: number;
  endAt?: number;
  outcome: Outcome;
  /** The list's length the server answered (acked writes): where the token must be. */
  position?: number;
  /** Why it ended the way it did (the error, "timeout", "reset"...). */
  detail?: string;
}

export interface FaultOp {
  readonly kind: string;
  /** The member, "relay", "controller" or the client it was done to. */
  readonly target: string;
  readonly at: number;
  endAt?: number;
  detail: string;
}

export const listKey = (client: number, conn: number) => `log:c${client}:${conn}`;
export const counterKey = (client: number) => `n:c${client}`;

export class History {
  private readonly startedAt = Date.now();
  readonly writes: WriteOp[] = [];
  readonly byToken = new Map<string, WriteOp>();
  readonly faults: FaultOp[] = [];

  /** ms since the run started. */
  now(): number { return Date.now() - this.startedAt; }

  /** A wall-clock date (the controller's events carry them) on the run's clock. */
  toRunTime(date: string): number { return Date.parse(date) - this.startedAt; }

  write(client: number, conn: number, seq: number): WriteOp {
    const op: WriteOp = { client, conn, seq, token: `c${client}-${seq}`, key: listKey(client, conn), sentAt: this.now(), outcome: "pending" };
    this.writes.push(op);
    this.byToken.set(op.token, op);
    return op;
  }

  settle(op: WriteOp, outcome: Exclude<Outcome, "pending">, detail?: string, position?: number): void {
    if (op.outcome !== "pending") return;
    op.outcome = outcome;
    op.endAt = this.now();
    op.detail = detail;
    op.position = position;
  }

  fault(kind: string, target: string, detail = ""): FaultOp {
    const op: FaultOp = { kind, target, at: this.now(), detail };
    this.faults.push(op);
    return op;
  }

  /** Faults (done or skipped) that overlap [t - beforeMs, t + afterMs]. */
  faultsAround(t: number, beforeMs = 5000, afterMs = 1000): FaultOp[] {
    return this.faults.filter((f) => (f.endAt ?? f.at) >= t - beforeMs && f.at <= t + afterMs);
  }

  counts(): Record<Exclude<Outcome, "pending">, number> {
    const c = { acked: 0, indeterminate: 0, rejected: 0 };
    for (const w of this.writes) if (w.outcome !== "pending") c[w.outcome]++;
    return c;
  }
}

export const seconds = (ms: number) => `${(ms / 1000).toFixed(3)} s`;

export function describeFault(f: FaultOp): string {
  return `${seconds(f.at)} ${f.kind} ${f.target}${f.detail ? ` (${f.detail})` : ""}`;
}
