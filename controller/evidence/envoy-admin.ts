// What the controller reads from each Envoy's admin port: the lockstep filter's evidence
// counters and the Envoy process's instance (gauge lockstep.envoy_instance), and how Envoy's
// own active health checks see each host of a service's primary cluster. Envoy fails a dead
// primary over by itself within milliseconds and, with lockstep's bootstrap, never takes a
// failed host back on its own: the controller follows what Envoy decided.
import { canonicalEndpoint } from "../../config/address.ts";
import { counterKey, type SourceReading } from "./ledger.ts";

export interface EnvoyView {
  readonly reading: SourceReading;
  /** Per cluster name, the canonical addresses Envoy's active health check has failed. */
  readonly failedHosts: ReadonlyMap<string, ReadonlySet<string>>;
}

interface StatsJson { stats?: { name?: string; value?: number }[] }
interface ClustersJson {
  cluster_statuses?: {
    name?: string;
    host_statuses?: { address?: { socket_address?: { address?: string; port_value?: number } }; health_status?: { failed_active_health_check?: boolean; pending_active_hc?: boolean } }[];
  }[];
}

/** The instance of an Envoy read without the lockstep filter (session-mode services only): no
 *  counters, and it witnesses nothing of a relay's restart. */
export const NO_FILTER_INSTANCE = "no-filter";

const FILTER_STAT = /^wasmcustom\.lockstep\.([A-Za-z0-9_-]{1,64})\.(?:replica\.([A-Za-z0-9_-]{1,64})\.(missed_connections|divergences)|(unmirrored_connections))$/;

export class EnvoyAdminClient {
  readonly source: string;
  constructor(readonly admin: string, private readonly timeoutMs = 1000) { this.source = `envoy ${admin}`; }

  private async get<T>(path: string): Promise<T> {
    const res = await fetch(`http://${this.admin}${path}`, { signal: AbortSignal.timeout(this.timeoutMs) });
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return await res.json() as T;
  }

  /** Read Envoy now; throws if it cannot be reached or, when `filterExpected` (a service in
   *  mirror mode), has no lockstep filter running yet: without the filter's counters the
   *  controller cannot see connections that went unmirrored. An Envoy of session-mode services
   *  only has no filter: its health checks are read all the same. */
  async read(filterExpected = true): Promise<EnvoyView> {
    const [stats, clusters] = await Promise.all([
      this.get<StatsJson>(`/stats?format=json&filter=${encodeURIComponent("^wasmcustom\\.lockstep\\.")}`),
      this.get<ClustersJson>("/clusters?format=json"),
    ]);
    let instance = "";
    const counters: Record<string, number> = {};
    for (const { name, value } of stats.stats ?? []) {
      if (typeof name !== "string" || typeof value !== "number") continue;
      if (name === "wasmcustom.lockstep.envoy_instance") { instance = value > 0 ? String(value) : ""; continue; }
      const m = FILTER_STAT.exec(name);
      if (!m) continue;
      const key = m[4] ? counterKey(m[1], null, "unmirrored") : counterKey(m[1], m[2], m[3] === "divergences" ? "diverged" : "missed");
      counters[key] = value;
    }
    if (!instance && filterExpected) throw new Error("no lockstep filter has reported this Envoy's instance yet");
    if (!instance) instance = NO_FILTER_INSTANCE;
    const failedHosts = new Map<string, Set<string>>();
    for (const c of clusters.cluster_statuses ?? []) {
      const failed = new Set<string>();
      for (const h of c.host_statuses ?? []) {
        const a = h.address?.socket_address;
        // A host just added is failed until its first check ("pending"): not a verdict.
        if (!h.health_status?.failed_active_health_check || h.health_status.pending_active_hc || !a?.address || !a.port_value) continue;
        try { failed.add(canonicalEndpoint(a.address.includes(":") ? `[${a.address}]:${a.port_value}` : `${a.address}:${a.port_value}`)); } catch { /* not an IP host */ }
      }
      if (c.name) failedHosts.set(c.name, failed);
    }
    return { reading: { source: this.source, instance, counters }, failedHosts };
  }
}
