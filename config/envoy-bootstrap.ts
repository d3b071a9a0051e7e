// Renders the Envoy bootstrap for a lockstep service: a listener whose filter chain is
// [lockstep wasm filter] -> tcp_proxy -> primary, and an HTTP/2 cluster for the mirror relay.
// The files in envoy/ are this function's output for the demo (a test keeps them in step).
import type { LockstepConfig } from "./lockstep-config.ts";
import { readFileSync } from "node:fs";
import { splitHostPort } from "./address.ts";

/** Envoy's default circuit breaker allows 1,024 connections per cluster: the 1,025th client
 *  would be closed at once. tcp_proxy holds one upstream connection per client. */
const UNLIMITED_CONNECTIONS = `    circuit_breakers:
      thresholds: [{ max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000 }]
`;

/** The listener only: what a user pastes under `static_resources.listeners` of their config. */
export function renderListener(c: LockstepConfig, indent = "", mirror = true): string {
  const pluginConfig = JSON.stringify({
    relay_cluster: "lockstep_relay",
    service: c.service,
    max_inflight_bytes_per_connection: c.limits.maxInflightBytesPerConnection,
    max_inflight_bytes_total: c.limits.maxInflightBytesTotal,
    ...(c.compareReplies ? {} : { compare_replies: false }),
  });
  const filter = `
    # 1. lockstep: copies every client byte to the mirror relay; never changes or delays them.
    - name: envoy.filters.network.wasm
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
        config:
          name: lockstep
          root_id: lockstep
          # A trap in the filter must never take down the primary path.
          failure_policy: FAIL_OPEN
          configuration:
            "@type": type.googleapis.com/google.protobuf.StringValue
            value: '${pluginConfig}'
          vm_config:
            vm_id: lockstep
            runtime: envoy.wasm.runtime.v8
            code: { local: { filename: ${c.envoy.wasmPath} } }`;
  const lines = `- name: lockstep_${c.service}
  address:
    socket_address: { address: ${c.listener.address}, port_value: ${c.listener.port} }
  filter_chains:
  - filters:${mirror ? filter : ""}
    # 2. The primary path is plain tcp_proxy.
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: ${c.service}
        cluster: ${c.service}_primary
        # A refused connect (primary just died) is retried, on the next priority once the
        # outlier detector ejected it: the client never sees it.
        max_connect_attempts: 5
        backoff_options: { base_interval: 0.002s, max_interval: 0.02s }`;
  return lines.split("\n").map((l) => indent + l).join("\n");
}

function staticCluster(name: string, addresses: string | readonly string[], extra: string): string {
  const endpoints = [addresses].flat().map((a) => {
    const { host, port } = splitHostPort(a);
    return `\n        - endpoint: { address: { socket_address: { address: ${host}, port_value: ${port} } } }`;
  });
  return `  - name: ${name}
    type: STATIC
${extra}    load_assignment:
      cluster_name: ${name}
      endpoints:
      - lb_endpoints:${endpoints.join("")}`;
}

const hex = (text: string) => Buffer.from(text, "latin1").toString("hex");

/** Successes in a row Envoy would need to take a failed host back: more than it can see in
 *  years of probing, so in practice only the controller (re-)admits a member. */
const NEVER_HEALTHY_AGAIN = 1_000_000_000;

/** The primary cluster fed by the controller over REST long-poll EDS (controller/xds): the
 *  primary at priority 0, the designated successor at 1, other standbys below. Envoy itself
 *  detects a dead primary and moves new connections to the successor: every default that
 *  slows that down is overridden here (docs/notes/xds-transport.md measured the result). */
function edsCluster(c: LockstepConfig, name: string, controller: string | readonly string[]): string {
  const h = c.healthCheck;
  const payload = h.send ? `{ send: { text: "${hex(h.send)}" }${h.expect ? `, receive: [{ text: "${hex(h.expect)}" }]` : ""} }` : "{}";
  return `  - name: ${name}
    type: EDS
    connect_timeout: 1s
${UNLIMITED_CONNECTIONS}    # Reset the clients of a host that fails its health check, so they reconnect at once.
    close_connections_on_host_health_failure: true
    # A member the controller takes out (out of sync, stale) leaves at once; by default Envoy
    # keeps a removed host that still passes its health check, and would fail over to it.
    ignore_health_on_host_removal: true
    # Apply endpoint changes at once (default merge window: 1 s); never spread load over a
    # dead priority (default panic threshold: 50%).
    common_lb_config: { update_merge_window: 0s, healthy_panic_threshold: { value: 0 } }
    # Probes keep their connection open, so a crash (FIN/RST) is seen at once; one failure is enough.
    # A host that failed is never taken back by Envoy itself (the threshold is never reached):
    # a primary restarted empty 50 ms after a crash must not get connections again. The
    # controller follows Envoy's verdict and re-admits a member by publishing it anew after a
    # rejoin (a new host passes its first check at once).
    health_checks:
    - timeout: ${h.timeoutMs / 1000}s
      interval: ${Math.max(h.intervalMs / 2, 10) / 1000}s
      no_traffic_interval: ${Math.max(h.intervalMs / 2, 10) / 1000}s
      unhealthy_threshold: 1
      healthy_threshold: ${NEVER_HEALTHY_AGAIN}
      reuse_connection: true
      tcp_health_check: ${payload}
    # A refused connect ejects the host at once (the default ejects at most 10% of hosts: none of 1-2).
    outlier_detection: { consecutive_local_origin_failure: 1, split_external_local_origin_errors: true, max_ejection_percent: 100, interval: 0.1s, base_ejection_time: 1s }
    eds_cluster_config:
      service_name: ${name}
      eds_config:
        resource_api_version: V3
        api_config_source:
          api_type: REST
          transport_api_version: V3
          cluster_names: [lockstep_controller]
          # Long-poll: the controller holds each request until something changes, so this
          # is only the pause between an answer and the next request.
          refresh_delay: 0.001s
          request_timeout: 5s
${staticCluster("lockstep_controller", controller, "    connect_timeout: 0.25s\n")}`;
}

export interface BootstrapOptions {
  /** false: the same listener without the lockstep filter (plain tcp_proxy, the benchmarks' baseline). */
  mirror?: boolean;
  /** "host:port" of the controller's xDS (or of every controller sharing one etcd store: Envoy
   *  asks any of them): the primary cluster comes from its EDS instead of the config. Default:
   *  the config's `controller` section, if any. */
  controller?: string | readonly string[];
  /** The open-file limit Envoy will run with (default: this process's, which Envoy inherits when
   *  started from here): the downstream connection limit is derived from it, unless the config
   *  sets `envoy.maxDownstreamConnections`. */
  openFileLimit?: number;
}

/** This process's soft open-file limit (Node raises it to the hard limit at start-up; children
 *  inherit it), or undefined where /proc is missing. */
export function openFileLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? (m[1] === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(m[1])) : undefined;
  } catch {
    return undefined;
  }
}

/** Envoy aborts when socket(2) or accept(2) fails with EMFILE ("envoy bug failure"). Its overload
 *  manager refuses client connections past a count instead (counted in the listener's
 *  downstream_global_cx_overflow). Each client connection holds two descriptors, the client's and
 *  the primary's (the relay's streams share a few HTTP/2 connections); a quarter of the limit, at
 *  most 1,024, is kept for Envoy's own: admin, xDS, relay and health-check connections, files. */
export function downstreamConnectionLimit(openFiles: number): number {
  const reserve = Math.min(1024, Math.floor(openFiles / 4));
  return Math.max(1, Math.floor((openFiles - reserve) / 2));
}

function overloadManager(c: LockstepConfig, options: BootstrapOptions): string {
  const files = options.openFileLimit ?? openFileLimit();
  const limit = c.envoy.maxDownstreamConnections ?? (files === undefined ? 1_000_000 : downstreamConnectionLimit(files));
  const why = c.envoy.maxDownstreamConnections !== undefined ? "envoy.maxDownstreamConnections in the lockstep config"
    : files === undefined ? "no open-file limit known: raise or set envoy.maxDownstreamConnections"
    : `derived from an open-file limit of ${files}: raise both together`;
  return `# Past this many client connections Envoy refuses new ones (counted in the listener's
# downstream_global_cx_overflow) instead of aborting when it runs out of file descriptors
# (${why}).
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: ${limit}
`;
}

/** A complete bootstrap: listener, primary cluster, relay cluster, admin. */
export function renderBootstrap(c: LockstepConfig, header = "", options: BootstrapOptions = {}): string {
  const relay = `${c.relay.address}:${c.relay.port}`;
  options = { ...options, controller: options.controller ?? (c.controller && `127.0.0.1:${c.controller.xdsPort}`) };
  const node = options.controller ? `node: { id: lockstep-${c.service}, cluster: lockstep }\n` : "";
  const primaryCluster = options.controller
    ? edsCluster(c, `${c.service}_primary`, options.controller)
    : staticCluster(`${c.service}_primary`, c.primary, "    connect_timeout: 1s\n" + UNLIMITED_CONNECTIONS);
  return `${header}${node}static_resources:
  listeners:
${renderListener(c, "  ", options.mirror ?? true)}
  clusters:
${primaryCluster}
${staticCluster("lockstep_relay", relay, `    connect_timeout: 0.25s
    # The relay speaks gRPC: HTTP/2 without TLS.
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    # One gRPC stream per client connection: lift the default limit of 1024 requests.
${UNLIMITED_CONNECTIONS}`)}
${overloadManager(c, options)}admin:
  # The admin port stays reachable past the connection limit.
  ignore_global_conn_limit: true
  address:
    socket_address: { address: 127.0.0.1, port_value: ${c.envoy.adminPort} }
`;
}
