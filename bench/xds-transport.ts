// Spike for the controller issue: how long from a controller decision (swap the EDS priority-0
// endpoint) until Envoy serves new connections from the new endpoint, over REST-JSON long-poll
// EDS. A client opens a new connection every millisecond; each backend tags its answer.
//
//   npx tsx bench/xds-transport.ts [--trials 20] [--refresh-delay-ms 1]
import { createServer as createHttp } from "node:http";
import { createServer, connect } from "node:net";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { findEnvoy } from "../scripts/envoy-binary.ts";
import { startProcess } from "../test/support/processes.ts";
import { freePorts, waitFor } from "../test/support/ports.ts";

const { values } = parseArgs({ options: { trials: { type: "string", default: "20" }, "refresh-delay-ms": { type: "string", default: "1" } } });
const TRIALS = Number(values.trials);

async function taggedBackend(tag: string): Promise<number> {
  const server = createServer((s) => { s.end(tag); s.on("error", () => {}); });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return (server.address() as { port: number }).port;
}

function ask(port: number): Promise<string> {
  return new Promise((resolve) => {
    let got = "";
    const s = connect(port, "127.0.0.1");
    s.on("data", (d) => (got += d));
    s.on("close", () => resolve(got));
    s.on("error", () => resolve("ERROR"));
  });
}

async function main(): Promise<void> {
  const [a, b] = [await taggedBackend("A"), await taggedBackend("B")];
  let primary = a;
  let version = 1;
  let waiters: (() => void)[] = [];
  const assignment = () => ({
    version_info: String(version),
    type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    resources: [{
      "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
      cluster_name: "svc",
      endpoints: [primary, primary === a ? b : a].map((port, priority) => ({
        priority, lb_endpoints: [{ endpoint: { address: { socket_address: { address: "127.0.0.1", port_value: port } } } }],
      })),
    }],
  });
  const xds = createHttp((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const known = JSON.parse(body || "{}").version_info;
      const answer = () => { res.writeHead(200, { "content-type": "application/json" }); res.end(JSON.stringify(assignment())); };
      if (known !== String(version)) return answer();
      // Long-poll: hold the request until the snapshot changes (or shortly before Envoy's timeout).
      const timer = setTimeout(answer, 4000);
      waiters.push(() => { clearTimeout(timer); answer(); });
    });
  });
  await new Promise<void>((r) => xds.listen(0, "127.0.0.1", () => r()));
  const xdsPort = (xds.address() as { port: number }).port;
  const [listener, admin] = await freePorts(2);
  const yaml = `node: { id: lockstep-spike, cluster: lockstep }
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: ${listener} } }
    filter_chains: [{ filters: [{ name: envoy.filters.network.tcp_proxy, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: l, cluster: svc } }] }]
  clusters:
  - name: svc
    type: EDS
    connect_timeout: 1s
    common_lb_config: { update_merge_window: 0s }
    eds_cluster_config:
      service_name: svc
      eds_config:
        resource_api_version: V3
        api_config_source:
          api_type: REST
          transport_api_version: V3
          cluster_names: [xds]
          refresh_delay: ${Number(values["refresh-delay-ms"]) / 1000}s
          request_timeout: 5s
  - name: xds
    type: STATIC
    connect_timeout: 1s
    load_assignment: { cluster_name: xds, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${xdsPort} } } } }] }] }
admin: { address: { socket_address: { address: 127.0.0.1, port_value: ${admin} } } }
`;
  const file = join(mkdtempSync(join(tmpdir(), "lockstep-xds-")), "envoy.yaml");
  writeFileSync(file, yaml);
  const envoy = startProcess("envoy", findEnvoy(), ["-c", file, "--concurrency", "1", "--base-id", "4242", "--log-level", "warn"]);
  await waitFor("Envoy", async () => (await ask(listener)) === "A", 20_000, 50).catch((e) => { console.error(envoy.output().slice(-3000)); throw e; });

  const times: number[] = [];
  for (let t = 0; t < TRIALS; t++) {
    await new Promise((r) => setTimeout(r, 50)); // let Envoy re-poll and be held
    const want = primary === a ? "B" : "A";
    primary = primary === a ? b : a;
    version++;
    const t0 = process.hrtime.bigint();
    const held = waiters; waiters = [];
    held.forEach((w) => w());
    let served = "";
    while (served !== want) { served = await ask(listener); if (served !== want) await new Promise((r) => setTimeout(r, 1)); }
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    process.stderr.write(`trial ${t + 1}/${TRIALS}: ${times.at(-1)!.toFixed(2)} ms\n`);
  }
  const sorted = [...times].sort((x, y) => x - y);
  const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))];
  console.log(`REST-JSON long-poll EDS, refresh_delay ${values["refresh-delay-ms"]} ms: decision -> first new connection served by the new priority-0 endpoint over ${TRIALS} trials: p50 ${pct(50).toFixed(2)} ms, p99 ${pct(99).toFixed(2)} ms, max ${sorted.at(-1)!.toFixed(2)} ms`);
  await envoy.kill();
  xds.close();
  process.exit(0);
}
main().catch((e) => { console.error(e); process.exit(1); });
