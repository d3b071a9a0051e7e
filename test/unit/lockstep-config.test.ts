// The service description users write: defaults, and a precise error for each kind of mistake.
import { describe, it, expect } from "vitest";
import { parseLockstepConfig, relayProcesses, DEFAULT_LIMITS, ConfigError } from "../../config/lockstep-config.ts";
import { downstreamConnectionLimit, renderBootstrap } from "../../config/envoy-bootstrap.ts";
import { listenerResource } from "../../config/envoy-resources.ts";

const minimal = { primary: "127.0.0.1:7001", replicas: [{ name: "a", address: "127.0.0.1:7002" }] };

describe("lockstep config", () => {
  it("fills documented defaults and freezes the result", () => {
    const c = parseLockstepConfig(minimal);
    expect(c.service).toBe("default");
    expect(c.listener).toEqual({ address: "127.0.0.1", port: 10000 });
    expect(c.relay).toEqual({ address: "127.0.0.1", port: 10100, metricsPort: 10101, processes: 1 });
    expect(c.limits).toEqual(DEFAULT_LIMITS);
    expect(Object.isFrozen(c) && Object.isFrozen(c.replicas[0])).toBe(true);
  });

  it.each([
    [{ ...minimal, primary: "nohost" }, '"primary" must be "ip:port"'],
    [{ ...minimal, mode: "sessions" }, '"mode" must be one of "mirror", "session"'],
    [{ ...minimal, mode: "session", compareReplies: false }, '"mode" "session" needs compareReplies'],
    // Addresses that are not addresses (Envoy's EDS would refuse every later snapshot).
    [{ ...minimal, primary: "999.999.999.999:80" }, '"999.999.999.999" is not an IPv4 address'],
    [{ ...minimal, primary: "256.0.0.1:80" }, '"256.0.0.1" is not an IPv4 address'],
    [{ ...minimal, primary: "-:80" }, '"-" is not an IPv4 address'],
    [{ ...minimal, primary: "a..b:80" }, '"a..b" is not an IPv4 address'],
    [{ ...minimal, primary: "[:::]:80" }, '":::" is not an IPv6 address'],
    [{ ...minimal, primary: "127.0.0.1:0" }, '"primary" has port 0'],
    [{ ...minimal, primary: "127.0.0.1:99999" }, '"primary" has port 99999'],
    [{ ...minimal, primary: `${"a".repeat(300)}:80` }, "at most 64 characters"],
    [{ ...minimal, replicas: [{ name: "a", address: "localhost:7002" }] }, '"replicas[0].address" names the host "localhost"'],
    [{ ...minimal, replicas: [{ name: "a", address: "127.0.0.1:07001" }] }, "cannot be its own replica"],
    [{ ...minimal, replicas: [{ name: "a", address: "127.0.0.1:1" }, { name: "b", address: "127.0.0.1:01" }] }, "repeats the address 127.0.0.1:1"],
    [{ ...minimal, listener: { address: "localhost" } }, '"listener.address" is a host name'],
    [{ ...minimal, primary: "h:70000" }, '"primary" has port 70000'],
    [{ ...minimal, replicas: "a" }, '"replicas" must be a list'],
    [{ ...minimal, replicas: [{ name: "bad name", address: "127.0.0.1:1" }] }, '"replicas[0].name"'],
    [{ ...minimal, replicas: [{ name: "a", address: "127.0.0.1:1" }, { name: "a", address: "127.0.0.1:2" }] }, 'repeats the name "a"'],
    [{ ...minimal, replicas: [{ name: "a", address: "127.0.0.1:7001" }] }, "cannot be its own replica"],
    [{ ...minimal, listener: { port: -1 } }, '"listener.port" must be a port'],
    [{ ...minimal, limits: { maxLagBytesPerConnection: 0 } }, '"limits.maxLagBytesPerConnection"'],
    [{ ...minimal, limits: { maxLagBytesPerConnection: 65536 } }, "at least 1048576 (1 MiB, one Envoy read)"],
    [{ ...minimal, limits: { maxInflightBytesPerConnection: 8 << 20, maxInflightBytesTotal: 4 << 20 } }, '"limits.maxInflightBytesTotal"'],
    [{ ...minimal, colour: "blue" }, '"colour" is not a known field'],
    [{ ...minimal, primaryName: "a" }, '"primaryName" is also a replica\'s name'],
    [{ ...minimal, healthCheck: { expect: "PONG" } }, '"healthCheck.expect" needs healthCheck.send'],
    [{ ...minimal, healthCheck: { intervalMs: 1 } }, '"healthCheck.intervalMs" must be a whole number from 10'],
    [{ ...minimal, healthCheck: { retries: 3 } }, '"healthCheck.retries" is not a known field'],
    [{ ...minimal, controller: { apiPort: "9100" } }, '"controller.apiPort" must be a port'],
    [{ ...minimal, controller: { tls: true } }, '"controller.tls" is not a known field'],
    [{ ...minimal, relay: { controlToken: "too-short" } }, '"relay.controlToken" must be a string of at least 16 characters'],
    [{ ...minimal, relay: { token: "x".repeat(20) } }, '"relay.token" is not a known field'],
    [{ ...minimal, relay: { processes: 0 } }, '"relay.processes" must be a whole number from 1 to 64'],
    [{ ...minimal, relay: { processes: 1.5 } }, '"relay.processes" must be a whole number from 1 to 64'],
    [{ ...minimal, relay: { processes: 2, port: 10100, metricsPort: 10102 } }, '"relay.processes" the ports of 2 processes collide'],
    [{ ...minimal, relay: { processes: 4, port: 65530, metricsPort: 65529 } }, '"relay.processes" 4 processes from ports 65530 and 65529'],
    [[], "must be a JSON object"],
  ])("rejects %j", (raw, message) => {
    expect(() => parseLockstepConfig(raw)).toThrow(ConfigError);
    expect(() => parseLockstepConfig(raw)).toThrow(message);
  });

  it("runs several relay processes on alternate ports, and gives Envoy's relay cluster every one of them", () => {
    const c = parseLockstepConfig({ ...minimal, relay: { processes: 3 } });
    expect(relayProcesses(c.relay)).toEqual([{ port: 10100, metricsPort: 10101 }, { port: 10102, metricsPort: 10103 }, { port: 10104, metricsPort: 10105 }]);
    const relayCluster = renderBootstrap(c).split("- name: lockstep_relay")[1].split(/\n\S/)[0]; // to the next top-level key
    expect([...relayCluster.matchAll(/port_value: (\d+)/g)].map((m) => Number(m[1]))).toEqual([10100, 10102, 10104]);
    expect(relayProcesses(parseLockstepConfig(minimal).relay)).toEqual([{ port: 10100, metricsPort: 10101 }]);
  });

  it("takes the relay's control token, for the controller to send", () => {
    expect(parseLockstepConfig({ ...minimal, relay: { controlToken: "a-relay-control-token" } }).relay.controlToken).toBe("a-relay-control-token");
  });

  it("takes an etcd store (several controllers, one elected) with its endpoints, prefix and lease, and every relay's address", () => {
    const c = parseLockstepConfig({ ...minimal, controller: {
      store: { etcd: { endpoints: ["http://10.0.0.1:2379", "http://10.0.0.2:2379"], prefix: "/ls/" } },
      relays: ["10.0.0.5:10101", "10.0.0.6:10101"], advertise: "http://10.0.0.7:9100",
    } });
    expect(c.controller?.etcd).toEqual({ endpoints: ["http://10.0.0.1:2379", "http://10.0.0.2:2379"], prefix: "/ls/", leaseTtlSeconds: 3 });
    expect(c.controller?.relays).toEqual(["10.0.0.5:10101", "10.0.0.6:10101"]);
    expect(c.controller?.advertise).toBe("http://10.0.0.7:9100");
    const bad = (controller: unknown) => () => parseLockstepConfig({ ...minimal, controller });
    expect(bad({ store: { etcd: { endpoints: [] } } })).toThrow(/controller.store.etcd.endpoints/);
    expect(bad({ store: { etcd: { endpoints: ["10.0.0.1:2379"] } } })).toThrow(/etcd client URLs/);
    expect(bad({ store: { etcd: { endpoints: ["http://10.0.0.1:2379"], leaseTtlSeconds: 1 } } })).toThrow(/leaseTtlSeconds/);
    expect(bad({ store: { consul: {} } })).toThrow(/controller.store/);
    expect(bad({ relays: ["relay.internal:10101"] })).toThrow(/controller.relays\[0\]/);
  });

  it("with a controller section, renders the primary cluster as EDS from it with fast failure detection", () => {
    const c = parseLockstepConfig({ ...minimal, service: "orders", healthCheck: { send: "PING\n", expect: "PONG", timeoutMs: 150 }, controller: { xdsPort: 9555 } });
    expect(c.controller).toEqual({ address: "127.0.0.1", apiPort: 9100, xdsPort: 9555, store: ".cache/controller/orders.json", envoyAdmins: ["127.0.0.1:9901"], relays: [] });
    const yaml = renderBootstrap(c);
    expect(yaml).toContain("type: EDS");
    expect(yaml).toContain("port_value: 9555");
    expect(yaml).toContain('tcp_health_check: { send: { text: "50494e470a" }, receive: [{ text: "504f4e47" }] }');
    expect(yaml).toContain("timeout: 0.15s");
    expect(yaml).toContain("healthy_panic_threshold: { value: 0 }");
    expect(yaml).toContain("unhealthy_threshold: 1");
    expect(yaml).toContain("healthy_threshold: 1000000000"); // Envoy never takes a failed host back by itself
    expect(yaml).toContain("ignore_health_on_host_removal: true"); // nor keeps one the controller took out
    expect(yaml).toContain("max_connect_attempts: 5");
  });

  it("renders a bootstrap whose plugin configuration carries the service and bounds", () => {
    const yaml = renderBootstrap(parseLockstepConfig({ ...minimal, service: "orders", limits: { maxInflightBytesPerConnection: 2 << 20 } }));
    const plugin = JSON.parse(/value: '(\{.*\})'/.exec(yaml)![1]);
    expect(plugin).toEqual({ relay_cluster: "lockstep_relay", service: "orders", max_inflight_bytes_per_connection: 2 << 20, max_inflight_bytes_total: DEFAULT_LIMITS.maxInflightBytesTotal });
    expect(yaml).toContain("cluster: orders_primary");
    expect(yaml).toContain("failure_policy: FAIL_OPEN");
  });

  it("gives each Envoy worker one shared mirror stream per relay process, in the bootstrap and over LDS", () => {
    const pluginOf = (yaml: string) => JSON.parse(/value: '(\{.*\})'/.exec(yaml)![1]);
    const three = parseLockstepConfig({ ...minimal, relay: { processes: 3, port: 10100, metricsPort: 10101 } });
    expect(pluginOf(renderBootstrap(three)).mirror_streams).toBe(3);
    expect(pluginOf(renderBootstrap(parseLockstepConfig(minimal)))).not.toHaveProperty("mirror_streams"); // 1, the filter's default
    expect(pluginOf(renderBootstrap(three, "", { mirrorStreams: 0 })).mirror_streams).toBe(0);
    const lds = listenerResource({ service: "orders", compareReplies: true, maxInflightBytesPerConnection: 1 << 20, maxInflightBytesTotal: 1 << 24, mirrorStreams: 3 }, "127.0.0.1:7000", "lockstep.wasm");
    expect(JSON.stringify(lds)).toContain('\\"mirror_streams\\":3');
  });

  it("limits Envoy's client connections to what its open-file limit can hold, or to the config's number", () => {
    expect([256, 1024, 65_536, 1_048_576].map(downstreamConnectionLimit)).toEqual([96, 384, 32_256, 523_776]);
    const derived = renderBootstrap(parseLockstepConfig(minimal), "", { openFileLimit: 1024 });
    expect(derived).toContain("max_active_downstream_connections: 384");
    expect(derived).toContain("ignore_global_conn_limit: true");
    const set = renderBootstrap(parseLockstepConfig({ ...minimal, envoy: { maxDownstreamConnections: 5000 } }), "", { openFileLimit: 1024 });
    expect(set).toContain("max_active_downstream_connections: 5000");
    expect(() => parseLockstepConfig({ ...minimal, envoy: { maxDownstreamConnections: 0 } })).toThrow(/envoy.maxDownstreamConnections/);
  });
});
