// xDS type URLs and the JSON shapes lockstep serves (Envoy v3 API, REST-JSON encoding).
import { splitHostPort } from "../../config/address.ts";
import { LISTENER_TYPE, CLUSTER_TYPE } from "../../config/envoy-resources.ts";

export const TYPE_URL = Object.freeze({
  ENDPOINTS: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
  LISTENERS: LISTENER_TYPE,
  CLUSTERS: CLUSTER_TYPE,
});
export type TypeUrl = (typeof TYPE_URL)[keyof typeof TYPE_URL];

/** REST path of each type (Envoy POSTs a DiscoveryRequest there). */
export const REST_PATH: Readonly<Record<TypeUrl, string>> = Object.freeze({
  [TYPE_URL.ENDPOINTS]: "/v3/discovery:endpoints",
  [TYPE_URL.LISTENERS]: "/v3/discovery:listeners",
  [TYPE_URL.CLUSTERS]: "/v3/discovery:clusters",
});

/** EDS priority of the primary; standbys (replicas) sit one level below. */
export const PRIMARY_PRIORITY = 0;
export const STANDBY_PRIORITY = 1;

export interface SocketAddress { socket_address: { address: string; port_value: number } }

export interface ClusterLoadAssignment {
  "@type": typeof TYPE_URL.ENDPOINTS;
  cluster_name: string;
  endpoints: { priority: number; lb_endpoints: { endpoint: { address: SocketAddress } }[] }[];
}

export interface DiscoveryRequest {
  version_info?: string;
  resource_names?: string[];
  type_url?: string;
  node?: { id?: string; cluster?: string };
  /** Set by an xDS client that rejected the last response (Envoy's REST client does not send it). */
  error_detail?: { code?: number; message?: string };
}
export interface DiscoveryResponse { version_info: string; type_url: string; resources: object[] }

export function socketAddress(hostPort: string): SocketAddress {
  const { host, port } = splitHostPort(hostPort);
  return { socket_address: { address: host, port_value: port } };
}
