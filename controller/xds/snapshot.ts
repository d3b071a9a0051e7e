// Immutable, versioned sets of xDS resources, checked for consistency before they are
// published: the transport only ever serves a whole snapshot, never a half-updated one.
import { createHash } from "node:crypto";
import { TYPE_URL, PRIMARY_PRIORITY, STANDBY_PRIORITY, socketAddress, type ClusterLoadAssignment } from "./resources.ts";
import { parseEndpoint } from "../../config/address.ts";

/** What the controller decided for one service's primary cluster. */
export interface ServiceEndpoints {
  /** The Envoy cluster tcp_proxy routes to (EDS service name). */
  readonly cluster: string;
  /** null: none for one version (a primary Envoy failed, re-admitted: Envoy forgets the failed
   *  host, and takes it as a new one in the next version). Priority 0 is then empty. */
  readonly primary: string | null;
  /** Members that may take over, best first; never stale or diverged ones. Each gets its own
   *  priority (1, 2, ...), so when the primary fails Envoy sends every new connection to the
   *  first, the designated successor, and never spreads them over several standbys. */
  readonly standbys: readonly string[];
  /** The service's listener and primary cluster, when the controller serves them (LDS, CDS:
   *  config/envoy-resources.ts); without, they are in Envoy's bootstrap. */
  readonly resources?: { readonly listener: XdsResource; readonly cluster: XdsResource };
}

/** A listener or cluster as Envoy's REST-JSON xDS takes it (with its "@type"). */
export type XdsResource = { readonly "@type": string; readonly name: string } & Record<string, unknown>;

export class SnapshotError extends Error {}

export interface Snapshot {
  readonly version: string;
  readonly endpoints: ReadonlyMap<string, ClusterLoadAssignment>;
  /** By name; empty unless services' listeners and clusters are served (LDS, CDS). */
  readonly listeners: ReadonlyMap<string, XdsResource>;
  readonly clusters: ReadonlyMap<string, XdsResource>;
}

/** Envoy's EDS takes priorities up to 128 and rejects a whole assignment with a higher one, so
 *  standbys after the 128th are left out of it (they still get every byte from the relay; Envoy
 *  would only reach them after 128 others had failed). */
export const MAX_STANDBYS = 128;

function assignment(s: ServiceEndpoints): ClusterLoadAssignment {
  return {
    "@type": TYPE_URL.ENDPOINTS,
    cluster_name: s.cluster,
    endpoints: [
      { priority: PRIMARY_PRIORITY, lb_endpoints: s.primary === null ? [] : [{ endpoint: { address: socketAddress(s.primary) } }] },
      ...s.standbys.slice(0, MAX_STANDBYS).map((a, i) => ({ priority: STANDBY_PRIORITY + i, lb_endpoints: [{ endpoint: { address: socketAddress(a) } }] })),
    ],
  };
}

/** Build and check a snapshot. Errors name the service and what is wrong with it. */
export function buildSnapshot(version: string, services: readonly ServiceEndpoints[]): Snapshot {
  if (!version) throw new SnapshotError("a snapshot needs a non-empty version");
  const endpoints = new Map<string, ClusterLoadAssignment>();
  const listeners = new Map<string, XdsResource>();
  const clusters = new Map<string, XdsResource>();
  const addresses = new Map<string, string>();
  for (const s of services) {
    if (endpoints.has(s.cluster)) throw new SnapshotError(`cluster "${s.cluster}" appears twice`);
    if (s.resources) {
      const { listener, cluster } = s.resources;
      if (cluster.name !== s.cluster) throw new SnapshotError(`cluster "${s.cluster}": its resource is named "${cluster.name}"`);
      if (listeners.has(listener.name)) throw new SnapshotError(`listener "${listener.name}" appears twice`);
      const at = JSON.stringify((listener as { address?: unknown }).address);
      if (addresses.has(at)) throw new SnapshotError(`listeners "${addresses.get(at)}" and "${listener.name}" have one address`);
      addresses.set(at, listener.name);
      listeners.set(listener.name, Object.freeze(listener));
      clusters.set(cluster.name, Object.freeze(cluster));
    }
    for (const a of [...(s.primary === null ? [] : [s.primary]), ...s.standbys]) {
      try { parseEndpoint(a); } catch (err) { throw new SnapshotError(`cluster "${s.cluster}": ${(err as Error).message}`); }
    }
    if (s.primary !== null && s.standbys.includes(s.primary)) throw new SnapshotError(`cluster "${s.cluster}": the primary ${s.primary} is also listed as a standby`);
    if (new Set(s.standbys).size !== s.standbys.length) throw new SnapshotError(`cluster "${s.cluster}": a standby is listed twice`);
    endpoints.set(s.cluster, Object.freeze(assignment(s)));
  }
  return Object.freeze({ version, endpoints, listeners, clusters });
}

/** A version derived from the content: the same decision always has the same version, so a
 *  restarted controller serves Envoy exactly what it has (no update, no flap). */
export function contentVersion(services: readonly ServiceEndpoints[]): string {
  const canonical = [...services].sort((a, b) => a.cluster.localeCompare(b.cluster)).map((s) => [s.cluster, s.primary, s.standbys, ...(s.resources ? [s.resources] : [])]);
  return createHash("sha256").update(JSON.stringify(canonical)).digest("hex").slice(0, 16);
}
