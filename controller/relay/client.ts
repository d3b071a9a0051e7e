// The controller's link to the mirror relay: keeps each service's replica set on the relay
// equal to the controller's decision (re-sent whenever the relay reports something else, so
// a restarted relay is set right within one poll), and reads the relay's per-replica figures:
// lag, and connections detached or found diverged since the last poll.
export interface RelayTarget { readonly name: string; readonly address: string }

export interface ReplicaFigures {
  /** Bytes accepted for the replica and not yet written, over its open connections. */
  lagBytes: number;
  /** Connection-level detaches since the previous poll, by reason. */
  newDetaches: Record<string, number>;
  /** Connections on which its replies differed from the primary's, since the previous poll. */
  newDivergences: number;
}

interface Series { labels: Record<string, string>; value: number }

export class RelayClient {
  private readonly desired = new Map<string, readonly RelayTarget[]>();
  /** Last counter values seen, by "service/replica/reason"; undefined until the first poll. */
  private seen?: Map<string, number>;
  reachable = false;
  lastError = "";

  constructor(private readonly baseUrl: string, private readonly token?: string, private readonly timeoutMs = 1000) {}

  /** Record the replica set `service` must have (sent by the next poll). True if it changed. */
  want(service: string, targets: readonly RelayTarget[]): boolean {
    const before = this.desired.get(service);
    this.desired.set(service, targets);
    return JSON.stringify(before) !== JSON.stringify(targets);
  }

  private headers(): Record<string, string> {
    return { "content-type": "application/json", ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) };
  }

  private async call(path: string, init: RequestInit = {}): Promise<Response> {
    return fetch(`${this.baseUrl}${path}`, { ...init, headers: this.headers(), signal: AbortSignal.timeout(this.timeoutMs) });
  }

  /** Make the relay's sets match the desired ones. Returns the services it had to set. */
  async reconcile(): Promise<string[]> {
    const changed: string[] = [];
    for (const [service, targets] of this.desired) {
      const path = `/v1/services/${service}/replicas`;
      const current = await (await this.call(path)).json() as { replicas?: RelayTarget[] };
      const same = JSON.stringify((current.replicas ?? []).map((r) => [r.name, r.address])) === JSON.stringify(targets.map((r) => [r.name, r.address]));
      if (same) continue;
      const res = await this.call(path, { method: "PUT", body: JSON.stringify({ replicas: targets }) });
      if (res.status === 401 || res.status === 403) {
        throw new Error(`relay refused the replica set of "${service}" (${res.status} ${(await res.text()).trim()}): ` +
          "give the controller the relay's controlToken (relay.controlToken in the config, LOCKSTEP_RELAY_TOKEN or --relay-token-file)");
      }
      if (!res.ok) throw new Error(`relay refused the replica set of "${service}": ${res.status} ${await res.text()}`);
      changed.push(service);
    }
    return changed;
  }

  /** Reconcile, then read the figures of every replica the relay knows, by service and name. */
  async poll(): Promise<{ changed: string[]; figures: Map<string, Map<string, ReplicaFigures>> }> {
    try {
      const changed = await this.reconcile();
      const stats = await (await this.call("/stats")).json() as Record<string, Series[]>;
      this.reachable = true;
      this.lastError = "";
      return { changed, figures: this.figures(stats) };
    } catch (err) {
      this.reachable = false;
      this.lastError = (err as Error).message;
      return { changed: [], figures: new Map() };
    }
  }

  private figures(stats: Record<string, Series[]>): Map<string, Map<string, ReplicaFigures>> {
    const out = new Map<string, Map<string, ReplicaFigures>>();
    const entry = (labels: Record<string, string>) => {
      if (!labels.service || !labels.replica) return undefined;
      let byName = out.get(labels.service);
      if (!byName) out.set(labels.service, (byName = new Map()));
      let f = byName.get(labels.replica);
      if (!f) byName.set(labels.replica, (f = { lagBytes: 0, newDetaches: {}, newDivergences: 0 }));
      return f;
    };
    for (const s of stats.lockstep_relay_replica_lag_bytes ?? []) { const f = entry(s.labels); if (f) f.lagBytes += s.value; }
    const counters = new Map<string, number>();
    const first = this.seen === undefined;
    // A counter that went down means the relay restarted: count from zero again.
    const delta = (key: string, value: number) => {
      counters.set(key, value);
      const before = this.seen?.get(key) ?? 0;
      return first ? 0 : value >= before ? value - before : value;
    };
    for (const s of stats.lockstep_relay_replica_detaches_total ?? []) {
      const f = entry(s.labels);
      const d = delta(`d/${s.labels.service}/${s.labels.replica}/${s.labels.reason}`, s.value);
      if (f && d > 0) f.newDetaches[s.labels.reason] = (f.newDetaches[s.labels.reason] ?? 0) + d;
    }
    for (const s of stats.lockstep_relay_replica_divergences_total ?? []) {
      const f = entry(s.labels);
      const d = delta(`v/${s.labels.service}/${s.labels.replica}`, s.value);
      if (f) f.newDivergences += d;
    }
    this.seen = counters;
    return out;
  }
}
