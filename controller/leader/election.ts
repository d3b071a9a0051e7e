// Which controller decides: the one whose key is `<prefix>leader` in etcd, created in a
// transaction only while no such key exists, and attached to that controller's lease. A leader
// keeps its lease alive (every third of its TTL); when it dies or is cut off, etcd deletes the
// key once the lease runs out, and the next controller to try creates it.
//
// A leader counts itself the leader only while it is sure its lease is alive: until the
// moment it sent the last keepalive etcd answered, plus the TTL, less a margin, measured on the
// monotonic clock (which runs on while a process is stopped). So a leader frozen by SIGSTOP,
// cut off from etcd, or starved of CPU stops deciding before anyone else can be elected, and
// on waking knows it is not the leader before it does anything else. The create revision of
// its key is its token: every state write compares it (store/etcd-store.ts).
import { performance } from "node:perf_hooks";
import type { EtcdStore } from "../store/etcd-store.ts";
import type { StoreStatus } from "../store/store-writer.ts";

/** What a controller tells the others about itself when it leads. */
export interface LeaderInfo {
  readonly id: string;
  /** Base URL of its HTTP API: where mutating calls go. */
  readonly api: string;
}

export interface ElectionOptions {
  readonly store: EtcdStore;
  readonly self: LeaderInfo;
  readonly log: (line: string) => void;
  /** How often a follower looks for a leader (and stands if there is none). */
  readonly campaignMs?: number;
}

const now = () => performance.now();

export class Election {
  private leading?: { token: number; validUntil: number; keepaliveSentAt: number; leaseId: string };
  /** The lease of a leadership given up while etcd did not answer: revoked once it does, so
   *  the others need not wait for it to run out after an etcd outage. */
  private abandonedLease?: string;
  private seen: LeaderInfo | null = null;
  private failure?: { error: string; since: string };
  private readonly listeners: ((leading: boolean) => void)[] = [];
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private readonly ttlMs: number;
  private readonly campaignMs: number;

  constructor(private readonly o: ElectionOptions) {
    this.ttlMs = o.store.spec.leaseTtlSeconds * 1000;
    this.campaignMs = o.campaignMs ?? 200;
  }

  /** Leadership gained (true) or lost (false). */
  onChange(listener: (leading: boolean) => void): void { this.listeners.push(listener); }

  start(): void { void this.tick(); }

  /** Whether this controller is the leader and its lease certainly alive now. */
  isLeader(): boolean { return this.leading !== undefined && now() < this.leading.validUntil; }

  /** The create revision of this leader's key (compared by every state write). */
  token(): number {
    if (!this.leading) throw new Error("not the leader");
    return this.leading.token;
  }

  /** The leader as last seen (this controller, another, or null: none, or etcd cannot be reached). */
  leader(): LeaderInfo | null { return this.isLeader() ? this.o.self : this.seen; }

  /** Whether etcd answers. */
  status(): StoreStatus { return { ok: !this.failure, error: this.failure?.error ?? null, since: this.failure?.since ?? null }; }

  /** Stop leading now (a write was refused, or another controller wrote the state). */
  stepDown(reason: string): void {
    const lead = this.leading;
    if (!lead) return;
    this.leading = undefined;
    this.seen = null;
    this.o.log(`leader: stepping down: ${reason}`);
    // Give the key up at once if etcd answers; otherwise as soon as it does (or with the lease).
    this.abandonedLease = lead.leaseId;
    this.revokeAbandoned().catch(() => { /* retried before the next campaign */ });
    this.emit(false);
  }

  async close(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    const lead = this.leading;
    this.leading = undefined;
    if (lead) await this.o.store.client.leaseClient.leaseRevoke({ ID: lead.leaseId }).catch(() => {});
  }

  private async revokeAbandoned(): Promise<void> {
    const id = this.abandonedLease;
    if (id === undefined) return;
    await this.o.store.client.leaseClient.leaseRevoke({ ID: id });
    if (this.abandonedLease === id) this.abandonedLease = undefined;
  }

  private emit(leading: boolean): void {
    for (const l of this.listeners) {
      try { l(leading); } catch (err) { this.o.log(`leader: a listener failed: ${(err as Error).stack ?? err}`); }
    }
  }

  private async tick(): Promise<void> {
    // First of all on waking (SIGSTOP, a starved process): a lease that may have run out ends it.
    if (this.leading && !this.isLeader()) this.stepDown("its lease may have run out (no keepalive answered in time)");
    try {
      if (this.leading) await this.keepAlive(); else await this.campaign();
      if (this.failure) this.o.log(`store: etcd answers again (unreachable since ${this.failure.since})`);
      this.failure = undefined;
    } catch (err) {
      const error = (err as Error).message;
      if (!this.failure) this.o.log(`store: etcd unreachable: ${error}; no decisions until it answers`);
      this.failure = { error, since: this.failure?.since ?? new Date().toISOString() };
      this.seen = null;
    }
    if (this.leading && !this.isLeader()) this.stepDown("its lease may have run out (no keepalive answered in time)");
    if (!this.stopped) this.timer = setTimeout(() => void this.tick(), this.leading ? Math.min(this.campaignMs, this.ttlMs / 3) : this.campaignMs);
  }

  /** Margin kept off the lease's end (clock rates, etcd's own timer). */
  private validFor(): number { return this.ttlMs - Math.max(100, this.ttlMs / 10); }

  private async keepAlive(): Promise<void> {
    const lead = this.leading!;
    if (now() - lead.keepaliveSentAt < this.ttlMs / 3) return;
    const sentAt = now();
    const res = await this.o.store.client.leaseClient.leaseKeepAlive().then((stream) => new Promise<{ TTL: string }>((resolve, reject) => {
      stream.on("data", (r: { TTL: string }) => { stream.end(); resolve(r); });
      stream.on("error", reject);
      stream.write({ ID: lead.leaseId });
    }));
    if (this.leading !== lead) return;
    if (Number(res.TTL) <= 0) { this.stepDown("etcd says its lease expired"); return; }
    lead.keepaliveSentAt = sentAt;
    lead.validUntil = sentAt + this.validFor();
  }

  private async campaign(): Promise<void> {
    const { client, leaderKey } = this.o.store;
    // etcd says a lease it never heard of is not found: gone already, as wanted.
    await this.revokeAbandoned().catch((err: Error) => { if (!/not found/i.test(err.message)) throw err; this.abandonedLease = undefined; });
    const current = (await client.get(leaderKey).exec()).kvs[0];
    if (current) { this.seen = parseLeader(current.value); return; }
    const sentAt = now();
    const { ID: leaseId } = await client.leaseClient.leaseGrant({ TTL: this.ttlMs / 1000 });
    const res = await client.if(leaderKey, "Create", "==", 0)
      .then(client.put(leaderKey).value(JSON.stringify(this.o.self)).lease(leaseId))
      .else(client.get(leaderKey))
      .commit();
    if (!res.succeeded) {
      client.leaseClient.leaseRevoke({ ID: leaseId }).catch(() => {});
      const kv = res.responses[0]?.response_range?.kvs?.[0];
      this.seen = kv ? parseLeader(kv.value) : null;
      return;
    }
    if (this.stopped) { await client.leaseClient.leaseRevoke({ ID: leaseId }).catch(() => {}); return; }
    this.leading = { token: Number(res.header.revision), validUntil: sentAt + this.validFor(), keepaliveSentAt: sentAt, leaseId };
    this.o.log(`leader: elected (lease ${this.ttlMs / 1000} s, token ${this.leading.token})`);
    this.emit(true);
  }
}

function parseLeader(value: Buffer): LeaderInfo | null {
  try {
    const v = JSON.parse(value.toString("utf8")) as LeaderInfo;
    return typeof v.id === "string" && typeof v.api === "string" ? { id: v.id, api: v.api } : null;
  } catch { return null; }
}
