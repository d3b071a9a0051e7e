// Immutable, versioned sets of xDS resources, checked for consistency before they are
// published: the transport only ever serves a whole snapshot, never a half-updated one.
import { TYPE_URL, PRIMARY_PRIORITY, STANDBY_PRIORITY, socketAddress, type ClusterLoadAssignment } from "./resources.ts";

/** What the controller decided for one service's primary cluster. */
export interface ServiceEndpoints {
  /** The Envoy cluster tcp_proxy routes to (EDS service name). */
  readonly cluster: string;
  readonly primary: string;
  /** Members that may take over, best first; never stale or diverged ones. */
  readonly standbys: readonly string[];
}

export class SnapshotError extends Error {}

export interface Snapshot {
  readonly version: string;
  readonly endpoints: ReadonlyMap<string, ClusterLoadAssignment>;
}

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

function assignment(s: ServiceEndpoints): ClusterLoadAssignment {
  return {
    "@type": TYPE_URL.ENDPOINTS,
    cluster_name: s.cluster,
    endpoints: [
      { priority: PRIMARY_PRIORITY, lb_endpoints: [{ endpoint: { address: socketAddress(s.primary) } }] },
      ...(s.standbys.length ? [{ priority: STANDBY_PRIORITY, lb_endpoints: s.standbys.map((a) => ({ endpoint: { address: socketAddress(a) } })) }] : []),
    ],
  };
}

/** Build and check a snapshot. Errors name the service and what is wrong with it. */
export function buildSnapshot(version: string, services: readonly ServiceEndpoints[]): Snapshot {
  if (!version) throw new SnapshotError("a snapshot needs a non-empty version");
  const endpoints = new Map<string, ClusterLoadAssignment>();
  for (const s of services) {
    if (endpoints.has(s.cluster)) throw new SnapshotError(`cluster "${s.cluster}" appears twice`);
    for (const a of [s.primary, ...s.standbys]) {
      if (!HOST_PORT.test(a)) throw new SnapshotError(`cluster "${s.cluster}": "${a}" is not host:port`);
    }
    if (s.standbys.includes(s.primary)) throw new SnapshotError(`cluster "${s.cluster}": the primary ${s.primary} is also listed as a standby`);
    if (new Set(s.standbys).size !== s.standbys.length) throw new SnapshotError(`cluster "${s.cluster}": a standby is listed twice`);
    endpoints.set(s.cluster, Object.freeze(assignment(s)));
  }
  return Object.freeze({ version, endpoints });
}
