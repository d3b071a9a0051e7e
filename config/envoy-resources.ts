// A lockstep service's Envoy resources as objects: its listener ([lockstep wasm filter] ->
// tcp_proxy) and its primary cluster (EDS from the controller). The controller serves them over
// LDS and CDS (controller/xds), so a service declared through its API reaches Envoy without a
// bootstrap change; config/envoy-bootstrap.ts writes the same settings into a static bootstrap
// (the tuned values below are shared, so both say the same thing).
import { splitHostPort } from "./address.ts";

export const LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener";
export const CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/** Envoy's default circuit breaker allows 1,024 connections per cluster: the 1,025th client
 *  would be closed at once. tcp_proxy holds one upstream connection per client. */
export const UNLIMITED_THRESHOLDS = { max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000 };
/** A refused connect (primary just died) is retried, on the next priority once the outlier
 *  detector ejected it: the client never sees it. */
export const CONNECT_RETRY = { max_connect_attempts: 5, backoff_options: { base_interval: "0.002s", max_interval: "0.02s" } };
/** Apply endpoint changes at once (default merge window: 1 s); never spread load over a dead
 *  priority (default panic threshold: 50%). */
export const LB_CONFIG = { update_merge_window: "0s", healthy_panic_threshold: { value: 0 } };
/** A refused connect ejects the host at once (the default ejects at most 10% of hosts: none of 1-2). */
export const OUTLIER_DETECTION = { consecutive_local_origin_failure: 1, split_external_local_origin_errors: true, max_ejection_percent: 100, interval: "0.1s", base_ejection_time: "1s" };
/** Successes in a row Envoy would need to take a failed host back: more than it can see in
 *  years of probing, so in practice only the controller (re-)admits a member. */
export const NEVER_HEALTHY_AGAIN = 1_000_000_000;
/** The static clusters every lockstep Envoy has: the controller's xDS and the mirror relay. */
export const CONTROLLER_CLUSTER = "lockstep_controller";
export const RELAY_CLUSTER = "lockstep_relay";
/** The relay cluster's: a process refusing connections is skipped (ejected) at its first failure. */
export const RELAY_OUTLIER_DETECTION = { consecutive_local_origin_failure: 1, split_external_local_origin_errors: true, max_ejection_percent: 100, interval: "0.1s", base_ejection_time: "1s" };
/** Session mode's tunnel: the CONNECT authority names the service to the relay. */
export const SESSION_TUNNEL = (service: string) => ({ hostname: `${service}:1` });

/** The long-poll REST subscription to the controller: the controller holds each request until
 *  something changes, so refresh_delay is only the pause between an answer and the next request. */
export function restConfigSource() {
  return {
    resource_api_version: "V3",
    api_config_source: { api_type: "REST", transport_api_version: "V3", cluster_names: [CONTROLLER_CLUSTER], refresh_delay: "0.001s", request_timeout: "5s" },
  };
}

/** What a health check needs (lockstep config `healthCheck`, the controller's settings). */
export interface HealthSpec { readonly send?: string; readonly expect?: string; readonly intervalMs: number; readonly timeoutMs: number }

const hex = (text: string) => Buffer.from(text, "latin1").toString("hex");
const seconds = (ms: number) => `${ms / 1000}s`;

/** Envoy's own health check of the primary cluster's hosts: on a kept connection (a crash is
 *  seen at once), failed on one bad check, never taken back by Envoy itself. */
export function healthCheck(h: HealthSpec) {
  const interval = seconds(Math.max(h.intervalMs / 2, 10));
  return {
    timeout: seconds(h.timeoutMs), interval, no_traffic_interval: interval,
    unhealthy_threshold: 1, healthy_threshold: NEVER_HEALTHY_AGAIN, reuse_connection: true,
    tcp_health_check: h.send ? { send: { text: hex(h.send) }, ...(h.expect ? { receive: [{ text: hex(h.expect) }] } : {}) } : {},
  };
}

/** The plugin configuration the filter reads (filter/mirror/config.ts). */
export interface FilterSettings {
  readonly service: string;
  readonly maxInflightBytesPerConnection: number;
  readonly maxInflightBytesTotal: number;
  readonly compareReplies: boolean;
  /** Shared mirror streams per Envoy worker (the filter's mirror_streams; default 1): one per
   *  relay process, so the relay cluster's round robin gives every process its share. */
  readonly mirrorStreams?: number;
}

export function pluginConfiguration(f: FilterSettings): string {
  return JSON.stringify({
    relay_cluster: RELAY_CLUSTER,
    service: f.service,
    max_inflight_bytes_per_connection: f.maxInflightBytesPerConnection,
    max_inflight_bytes_total: f.maxInflightBytesTotal,
    ...(f.compareReplies ? {} : { compare_replies: false }),
    ...(f.mirrorStreams !== undefined && f.mirrorStreams !== 1 ? { mirror_streams: f.mirrorStreams } : {}),
  });
}

/** The Envoy cluster tcp_proxy routes a service's connections to (EDS service name). */
export const primaryClusterName = (service: string) => `${service}_primary`;

/** The listener of a service: [lockstep wasm filter] -> tcp_proxy -> `<service>_primary`. */
export function listenerResource(f: FilterSettings, listener: string, wasmPath: string, mode: "mirror" | "session" = "mirror") {
  const { host, port } = splitHostPort(listener);
  if (mode === "session") return sessionListenerResource(f.service, host, port);
  return {
    "@type": LISTENER_TYPE,
    name: `lockstep_${f.service}`,
    address: { socket_address: { address: host, port_value: port } },
    filter_chains: [{
      filters: [
        {
          name: "envoy.filters.network.wasm",
          typed_config: {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            config: {
              name: "lockstep", root_id: "lockstep", failure_policy: "FAIL_OPEN",
              configuration: { "@type": "type.googleapis.com/google.protobuf.StringValue", value: pluginConfiguration(f) },
              vm_config: { vm_id: "lockstep", runtime: "envoy.wasm.runtime.v8", code: { local: { filename: wasmPath } } },
            },
          },
        },
        {
          name: "envoy.filters.network.tcp_proxy",
          typed_config: {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            stat_prefix: f.service, cluster: primaryClusterName(f.service), ...CONNECT_RETRY,
          },
        },
      ],
    }],
  };
}

/** A session-mode listener (docs/SESSION.md): tcp_proxy tunnels each connection to the relay. */
function sessionListenerResource(service: string, host: string, port: number) {
  return {
    "@type": LISTENER_TYPE,
    name: `lockstep_${service}`,
    address: { socket_address: { address: host, port_value: port } },
    filter_chains: [{
      filters: [{
        name: "envoy.filters.network.tcp_proxy",
        typed_config: {
          "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
          stat_prefix: service, cluster: RELAY_CLUSTER, tunneling_config: SESSION_TUNNEL(service), ...CONNECT_RETRY,
        },
      }],
    }],
  };
}

/** A service's primary cluster, fed by the controller's EDS: the primary at priority 0, the
 *  designated successor at 1 (docs/CONTROLLER.md says why each setting is there). */
export function primaryClusterResource(service: string, h: HealthSpec) {
  const name = primaryClusterName(service);
  return {
    "@type": CLUSTER_TYPE,
    name, type: "EDS", connect_timeout: "1s",
    circuit_breakers: { thresholds: [UNLIMITED_THRESHOLDS] },
    close_connections_on_host_health_failure: true,
    ignore_health_on_host_removal: true,
    common_lb_config: LB_CONFIG,
    health_checks: [healthCheck(h)],
    outlier_detection: OUTLIER_DETECTION,
    eds_cluster_config: { service_name: name, eds_config: restConfigSource() },
  };
}
