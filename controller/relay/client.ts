// The controller's link to the mirror relay: keeps each service's replica set on the relay
// equal to the controller's decision (re-sent whenever the relay reports something else, so
// a restarted relay is set right within one poll), and reads what the relay knows: its
// instance and evidence counters (replicas that missed bytes, connections mirrored nowhere,
// divergences: controller/evidence/ledger.ts), each replica's lag, the connections each
// member is not part of (a member that joined the set is in sync once none is left), and
// connections it left early (a hint to probe that member now).
import { counterKey, type SourceReading } from "../evidence/ledger.ts";

export interface RelayTarget { readonly name: string; readonly address: string }

export interface RelayView {
  /** Evidence counters of this relay process. */
  readonly reading: SourceReading;
  /** Per service, per replica: bytes accepted and not yet written, over its open connections. */
  readonly lagBytes: ReadonlyMap<string, ReadonlyMap<string, number>>;
  /** Per service (of those the controller sets), per member of the relay's set: open
   *  connections it is not part of. */
  readonly without: ReadonlyMap<string, Readonly<Record<string, number>>>;
  /** Per service, replicas that left a connection because they closed it or could not be
   *  reached, since the previous poll (probe them now). */
  readonly maybeDead: ReadonlyMap<string, ReadonlySet<string>>;
  /** Services whose set had to be sent in this poll. */
  readonly changed: readonly string[];
  /** Per service, the session-mode takeovers the relay made (its last 100, oldest first). */
  readonly takeovers: ReadonlyMap<string, readonly RelayTakeover[]>;
}

/** A takeover of session connections by the relay (relay/session-leaders.ts). */
export interface RelayTakeover { readonly at: string; readonly from: string; readonly to: string; readonly why: string; readonly carried: number; readonly reset: number }

interface Series { labels: Record<string, string>; value: number }
interface ServiceJson { replicas?: RelayTarget[] | null; primary?: string | null; successor?: string | null; connections?: { without?: Record<string, number> }; session?: { takeovers?: RelayTakeover[] } }

/** A service's set on the relay: its members, which of them is the primary, and which takes
 *  over session-mode connections when it fails. */
interface Desired { readonly targets: readonly RelayTarget[]; readonly primary?: string; readonly successor?: string }

const MAYBE_DEAD = new Set(["REPLICA_CLOSED", "CONNECT_FAILED"]);

export class RelayClient {
  private readonly desired = new Map<string, Desired>();
  /** Detach counters last seen (hints only, so not stored): "<service>|<replica>|<reason>". */
  private detachesSeen?: Map<string, number>;
  reachable = false;
  lastError = "";

  /** `source` names this relay in the evidence (one relay: "relay"; several: "relay <address>"). */
  constructor(private readonly baseUrl: string, private readonly token?: string, private readonly timeoutMs = 1000, readonly source = "relay") {}

  /** Record the replica set `service` must have, and its primary (the relay closes connections
   *  still open on a former primary), sent by the next poll. True if it changed. */
  want(service: string, targets: readonly RelayTarget[], primary?: string, successor?: string): boolean {
    const before = this.desired.get(service);
    const next: Desired = { targets, ...(primary === undefined ? {} : { primary }), ...(primary === undefined || successor === undefined ? {} : { successor }) };
    this.desired.set(service, next);
    return JSON.stringify(before) !== JSON.stringify(next);
  }

  private headers(): Record<string, string> {
    return { "content-type": "application/json", ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) };
  }

  private async call(path: string, init: RequestInit = {}): Promise<Response> {
    return fetch(`${this.baseUrl}${path}`, { ...init, headers: this.headers(), signal: AbortSignal.timeout(this.timeoutMs) });
  }

  /** Make the relay's sets match the desired ones; returns what the relay says of each. */
  private async reconcile(changed: string[], mayChange: () => boolean, takeovers: Map<string, readonly RelayTakeover[]>): Promise<Map<string, Readonly<Record<string, number>>>> {
    const without = new Map<string, Readonly<Record<string, number>>>();
    for (const [service, desired] of this.desired) {
      const { targets, primary, successor } = desired;
      const path = `/v1/services/${service}/replicas`;
      let view = await (await this.call(path)).json() as ServiceJson;
      const same = view.replicas != null && JSON.stringify(view.replicas.map((r) => [r.name, r.address])) === JSON.stringify(targets.map((r) => [r.name, r.address])) &&
        (view.primary ?? undefined) === primary && (view.successor ?? undefined) === successor;
      if (!same && mayChange()) {
        const res = await this.call(path, { method: "PUT", body: JSON.stringify({ replicas: targets, primary, successor }) });
        if (res.status === 401 || res.status === 403) {
          throw new Error(`relay refused the replica set of "${service}" (${res.status} ${(await res.text()).trim()}): ` +
            "give the controller the relay's controlToken (relay.controlToken in the config, LOCKSTEP_RELAY_TOKEN or --relay-token-file)");
        }
        if (!res.ok) throw new Error(`relay refused the replica set of "${service}": ${res.status} ${await res.text()}`);
        view = await res.json() as ServiceJson;
        changed.push(service);
      }
      without.set(service, view.connections?.without ?? {});
      if (view.session?.takeovers?.length) takeovers.set(service, view.session.takeovers);
    }
    return without;
  }

  /** Reconcile (while `mayChange` says this controller decides), then read the relay.
   *  Undefined (and `reachable` false) if it cannot be reached. */
  async poll(mayChange: () => boolean = () => true): Promise<RelayView | undefined> {
    try {
      const changed: string[] = [];
      const takeovers = new Map<string, readonly RelayTakeover[]>();
      const without = await this.reconcile(changed, mayChange, takeovers);
      const stats = await (await this.call("/stats")).json() as { instance?: string } & Record<string, Series[]>;
      if (typeof stats.instance !== "string" || !stats.instance) throw new Error("the relay's /stats has no instance id (an older relay?)");
      this.reachable = true;
      this.lastError = "";
      return { reading: this.reading(stats.instance, stats), lagBytes: this.lag(stats), without, maybeDead: this.maybeDead(stats), changed, takeovers };
    } catch (err) {
      this.reachable = false;
      this.lastError = (err as Error).message;
      return undefined;
    }
  }

  private reading(instance: string, stats: Record<string, Series[]>): SourceReading {
    const counters: Record<string, number> = {};
    const add = (key: string, n: number) => { counters[key] = (counters[key] ?? 0) + n; };
    for (const s of stats.lockstep_relay_replica_missed_connections_total ?? []) {
      if (s.labels.service && s.labels.replica) add(counterKey(s.labels.service, s.labels.replica, "missed"), s.value);
    }
    for (const s of stats.lockstep_relay_replica_divergences_total ?? []) {
      if (s.labels.service && s.labels.replica) add(counterKey(s.labels.service, s.labels.replica, "diverged"), s.value);
    }
    for (const s of stats.lockstep_relay_connections_unmirrored_total ?? []) {
      if (s.labels.service) add(counterKey(s.labels.service, null, "unmirrored"), s.value);
    }
    return { source: this.source, instance, counters };
  }

  private lag(stats: Record<string, Series[]>): Map<string, Map<string, number>> {
    const out = new Map<string, Map<string, number>>();
    for (const s of stats.lockstep_relay_replica_lag_bytes ?? []) {
      const { service, replica } = s.labels;
      if (!service || !replica) continue;
      if (!out.has(service)) out.set(service, new Map());
      out.get(service)!.set(replica, (out.get(service)!.get(replica) ?? 0) + s.value);
    }
    return out;
  }

  private maybeDead(stats: Record<string, Series[]>): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    const seen = new Map<string, number>();
    for (const s of stats.lockstep_relay_replica_detaches_total ?? []) {
      const { service, replica, reason } = s.labels;
      if (!service || !replica || !MAYBE_DEAD.has(reason)) continue;
      const key = `${service}|${replica}|${reason}`;
      seen.set(key, s.value);
      const before = this.detachesSeen?.get(key) ?? 0;
      if (this.detachesSeen && s.value !== before) {
        if (!out.has(service)) out.set(service, new Set());
        out.get(service)!.add(replica);
      }
    }
    this.detachesSeen = seen;
    return out;
  }
}
