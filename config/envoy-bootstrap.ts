// Renders the Envoy bootstrap for a lockstep service: a listener whose filter chain is
// [lockstep wasm filter] -> tcp_proxy -> primary, and an HTTP/2 cluster for the mirror relay.
// The files in envoy/ are this function's output for the demo (a test keeps them in step).
import { relayGrpcAddresses, type LockstepConfig } from "./lockstep-config.ts";
import { readFileSync } from "node:fs";
import { splitHostPort } from "./address.ts";
import { CONNECT_RETRY, CONTROLLER_CLUSTER, LB_CONFIG, OUTLIER_DETECTION, RELAY_CLUSTER, RELAY_OUTLIER_DETECTION, SESSION_TUNNEL, UNLIMITED_THRESHOLDS, healthCheck, pluginConfiguration, primaryClusterName, restConfigSource } from "./envoy-resources.ts";

/** A value in YAML flow style, as written by hand: `{ a: 1, b: [x] }` (strings that YAML could
 *  read as something else are quoted). */
export function flow(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(flow).join(", ")}]`;
  if (v !== null && typeof v === "object") {
    const entries = Object.entries(v);
    return entries.length ? `{ ${entries.map(([k, x]) => `${k}: ${flow(x)}`).join(", ")} }` : "{}";
  }
  if (typeof v === "string" && !/^([A-Za-z_][A-Za-z0-9_.-]*|[0-9.]+s)$/.test(v)) return JSON.stringify(v);
  return String(v);
}

/** The circuit breaker lifted (envoy-resources.ts UNLIMITED_THRESHOLDS says why). */
const UNLIMITED_CONNECTIONS = `    circuit_breakers:
      thresholds: ${flow([UNLIMITED_THRESHOLDS])}
`;

/** A session-mode listener (docs/SESSION.md): each client connection is tunnelled to the relay. */
function renderSessionListener(c: LockstepConfig, indent: string): string {
  const lines = `- name: lockstep_${c.service}
  address:
    socket_address: { address: ${c.listener.address}, port_value: ${c.listener.port} }
  filter_chains:
  - filters:
    # Session mode: each client connection becomes an HTTP/2 CONNECT stream to the relay, which
    # carries it to the primary and every replica, and on the primary's failure splices the
    # successor's replies in: open connections survive it. No wasm filter: the relay sees every byte.
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: ${c.service}
        cluster: ${RELAY_CLUSTER}
        tunneling_config: ${flow(SESSION_TUNNEL(c.service))}
        max_connect_attempts: ${CONNECT_RETRY.max_connect_attempts}
        backoff_options: ${flow(CONNECT_RETRY.backoff_options)}`;
  return lines.split("\n").map((l) => indent + l).join("\n");
}

/** The listener only: what a user pastes under `static_resources.listeners` of their config. */
export function renderListener(c: LockstepConfig, indent = "", mirror = true, mirrorStreams = c.relay.processes): string {
  if (c.mode === "session" && mirror) return renderSessionListener(c, indent);
  const pluginConfig = pluginConfiguration({ service: c.service, ...c.limits, compareReplies: c.compareReplies, mirrorStreams });
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
        cluster: ${primaryClusterName(c.service)}
        # A refused connect (primary just died) is retried, on the next priority once the
        # outlier detector ejected it: the client never sees it.
        max_connect_attempts: ${CONNECT_RETRY.max_connect_attempts}
        backoff_options: ${flow(CONNECT_RETRY.backoff_options)}`;
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

/** The primary cluster fed by the controller over REST long-poll EDS (controller/xds): the
 *  primary at priority 0, the designated successor at 1, other standbys below. Envoy itself
 *  detects a dead primary and moves new connections to the successor: every default that
 *  slows that down is overridden here (docs/notes/xds-transport.md measured the result). */
function edsCluster(c: LockstepConfig, name: string, controller: string | readonly string[]): string {
  const hc = healthCheck(c.healthCheck);
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
    common_lb_config: ${flow(LB_CONFIG)}
    # Probes keep their connection open, so a crash (FIN/RST) is seen at once; one failure is enough.
    # A host that failed is never taken back by Envoy itself (the threshold is never reached):
    # a primary restarted empty 50 ms after a crash must not get connections again. The
    # controller follows Envoy's verdict and re-admits a member by publishing it anew after a
    # rejoin (a new host passes its first check at once).
    health_checks:
    - timeout: ${hc.timeout}
      interval: ${hc.interval}
      no_traffic_interval: ${hc.no_traffic_interval}
      unhealthy_threshold: ${hc.unhealthy_threshold}
      healthy_threshold: ${hc.healthy_threshold}
      reuse_connection: ${hc.reuse_connection}
      tcp_health_check: ${flow(hc.tcp_health_check)}
    # A refused connect ejects the host at once (the default ejects at most 10% of hosts: none of 1-2).
    outlier_detection: ${flow(OUTLIER_DETECTION)}
    eds_cluster_config:
      service_name: ${name}
      eds_config:
${controllerSource("        ")}
${staticCluster(CONTROLLER_CLUSTER, controller, "    connect_timeout: 0.25s\n")}`;
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
  /** The filter's mirror_streams (default relay.processes: one shared stream per relay process
   *  per worker; 0, a stream per connection). */
  mirrorStreams?: number;
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

function overloadManager(maxDownstreamConnections: number | undefined, options: BootstrapOptions): string {
  const files = options.openFileLimit ?? openFileLimit();
  const limit = maxDownstreamConnections ?? (files === undefined ? 1_000_000 : downstreamConnectionLimit(files));
  const why = maxDownstreamConnections !== undefined ? "envoy.maxDownstreamConnections in the lockstep config"
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
  const relay = relayGrpcAddresses(c.relay);
  options = { ...options, controller: options.controller ?? (c.controller && `127.0.0.1:${c.controller.xdsPort}`) };
  const node = options.controller ? `node: { id: lockstep-${c.service}, cluster: lockstep }\n` : "";
  const primaryCluster = options.controller
    ? edsCluster(c, primaryClusterName(c.service), options.controller)
    : staticCluster(primaryClusterName(c.service), c.primary, "    connect_timeout: 1s\n" + UNLIMITED_CONNECTIONS);
  return `${header}${node}static_resources:
  listeners:
${renderListener(c, "  ", options.mirror ?? true, options.mirrorStreams ?? c.relay.processes)}
  clusters:
${primaryCluster}
${relayCluster(relay)}
${overloadManager(c.envoy.maxDownstreamConnections, options)}${admin(c.envoy.adminPort)}`;
}

/** A config source on the controller (REST long-poll), at `indent`. */
function controllerSource(indent: string): string {
  const { resource_api_version, api_config_source: a } = restConfigSource();
  return [`resource_api_version: ${resource_api_version}`, "api_config_source:",
    `  api_type: ${a.api_type}`, `  transport_api_version: ${a.transport_api_version}`, `  cluster_names: ${flow(a.cluster_names)}`,
    "  # Long-poll: the controller holds each request until something changes, so this",
    "  # is only the pause between an answer and the next request.",
    `  refresh_delay: ${a.refresh_delay}`, `  request_timeout: ${a.request_timeout}`].map((l) => indent + l).join("\n");
}

/** The mirror relay's cluster (gRPC, HTTP/2 without TLS): every relay process beside this Envoy,
 *  each client connection's stream (or session tunnel) to one of them, round robin. */
function relayCluster(relay: string | readonly string[]): string {
  return staticCluster(RELAY_CLUSTER, relay, `    # Generous: a relay that is down refuses at once; a worker busy with a burst of thousands of
    # new connections may see its own connect complete late (at 0.25 s, 4 of 10 connections to
    # the relay timed out in a 9,000-connection burst, failing the 3,900-5,300 streams waiting on them).
    connect_timeout: 2s
    # The relay speaks gRPC: HTTP/2 without TLS.
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    # One gRPC stream per client connection: lift the default limit of 1024 requests.
${UNLIMITED_CONNECTIONS}    # A relay process that refuses connections (dead, restarting) is skipped for 1 s, longer
    # while it stays down, so with several (relay.processes) new connections go to the others;
    # a lone relay still gets them (Envoy's panic mode) and they go unmirrored, counted.
    outlier_detection: ${flow(RELAY_OUTLIER_DETECTION)}
`);
}

function admin(port: number): string {
  return `admin:
  # The admin port stays reachable past the connection limit.
  ignore_global_conn_limit: true
  address:
    socket_address: { address: 127.0.0.1, port_value: ${port} }
`;
}

export interface DynamicBootstrapOptions extends BootstrapOptions {
  /** "host:port" of the controller's xDS, or of each controller sharing one etcd store. */
  readonly controller: string | readonly string[];
  /** "host:port" of this Envoy's mirror relay (each of its processes). */
  readonly relay: string | readonly string[];
  readonly adminPort: number;
  /** Names this Envoy to the controller (its node id). */
  readonly nodeId?: string;
  readonly maxDownstreamConnections?: number;
}

/** A bootstrap that names only the controller and the relay: every service's listener and
 *  primary cluster come from the controller (LDS and CDS, REST long-poll), so a service declared
 *  or removed through its API reaches this Envoy without a change here. */
export function renderDynamicBootstrap(o: DynamicBootstrapOptions, header = ""): string {
  return `${header}node: { id: ${o.nodeId ?? "lockstep"}, cluster: lockstep }
# Listeners and clusters of the services: from the controller.
dynamic_resources:
  lds_config:
${controllerSource("    ")}
  cds_config:
${controllerSource("    ")}
static_resources:
  clusters:
${staticCluster(CONTROLLER_CLUSTER, o.controller, "    connect_timeout: 0.25s\n")}
${relayCluster(o.relay)}
${overloadManager(o.maxDownstreamConnections, o)}${admin(o.adminPort)}`;
}
