// Spike for the controller issue: how fast does Envoy by itself move new connections off a
// primary killed with SIGKILL, with the primary at EDS priority 0 (from controller/xds) and a
// standby at priority 1, active TCP health checks that keep their connection, and tcp_proxy
// connect retries? A client opens a new connection every 2 ms throughout.
//
//   npx tsx bench/failover-spike.ts [--trials 20]
import { spawn, type ChildProcess } from "node:child_process";
import { connect } from "node:net";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import express from "express";
import { findEnvoy } from "../scripts/envoy-binary.ts";
import { startProcess } from "../test/support/processes.ts";
import { freePorts, waitFor } from "../test/support/ports.ts";
import { XdsRestServer } from "../controller/xds/rest-server.ts";
import { buildSnapshot } from "../controller/xds/snapshot.ts";

const { values } = parseArgs({ options: { trials: { type: "string", default: "20" } } });
const TRIALS = Number(values.trials);

/** A backend in its own process (so SIGKILL is real): answers PING with PONG, else its tag. */
function backend(tag: string, port: number): ChildProcess {
  const code = `require("net").createServer(s=>{s.on("error",()=>{});s.on("data",d=>s.write(d.toString().startsWith("PING")?"PONG":"${tag}"))}).listen(${port},"127.0.0.1")`;
  return spawn(process.execPath, ["-e", code], { stdio: "ignore" });
}

function ask(port: number): Promise<string> {
  return new Promise((resolve) => {
    let got = "";
    const s = connect(port, "127.0.0.1", () => s.write("who"));
    s.setTimeout(2000, () => s.destroy());
    s.on("data", (d) => { got += d; s.end(); });
    s.on("close", () => resolve(got || "FAILED"));
    s.on("error", () => {});
  });
}

async function main(): Promise<void> {
  const [portA, portB, listener, admin] = await freePorts(4);
  let procA = backend("A", portA);
  backend("B", portB);
  const xds = new XdsRestServer();
  xds.publish(buildSnapshot("1", [{ cluster: "svc", primary: `127.0.0.1:${portA}`, standbys: [`127.0.0.1:${portB}`] }]));
  const app = express(); app.use(xds.router());
  const http = await new Promise<import("node:http").Server>((r) => { const s = app.listen(0, "127.0.0.1", () => r(s)); });
  const yaml = `node: { id: spike, cluster: lockstep }
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: ${listener} } }
    filter_chains: [{ filters: [{ name: envoy.filters.network.tcp_proxy, typed_config: {
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: l, cluster: svc,
      max_connect_attempts: 5, backoff_options: { base_interval: 0.002s, max_interval: 0.02s } } }] }]
  clusters:
  - name: svc
    type: EDS
    connect_timeout: 0.25s
    close_connections_on_host_health_failure: true
    common_lb_config: { update_merge_window: 0s, healthy_panic_threshold: { value: 0 } }
    health_checks:
    - timeout: 0.2s
      interval: 0.05s
      no_traffic_interval: 0.05s
      unhealthy_threshold: 1
      healthy_threshold: 1
      reuse_connection: true
      tcp_health_check: { send: { text: "50494e47" }, receive: [{ text: "504f4e47" }] }
    outlier_detection: { consecutive_local_origin_failure: 1, split_external_local_origin_errors: true, max_ejection_percent: 100, interval: 0.1s, base_ejection_time: 1s }
    eds_cluster_config:
      service_name: svc
      eds_config: { resource_api_version: V3, api_config_source: { api_type: REST, transport_api_version: V3, cluster_names: [xds], refresh_delay: 0.001s, request_timeout: 5s } }
  - name: xds
    type: STATIC
    connect_timeout: 0.25s
    load_assignment: { cluster_name: xds, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${(http.address() as { port: number }).port} } } } }] }] }
admin: { address: { socket_address: { address: 127.0.0.1, port_value: ${admin} } } }
`;
  const file = join(mkdtempSync(join(tmpdir(), "lockstep-failover-")), "envoy.yaml");
  writeFileSync(file, yaml);
  const envoy = startProcess("envoy", findEnvoy(), ["-c", file, "--concurrency", "1", "--base-id", "4343", "--log-level", "warn"]);
  const results: { ms: number; failed: number }[] = [];
  for (let t = 0; t < TRIALS; t++) {
    await waitFor("A to serve", async () => (await ask(listener)) === "A", 20_000, 20).catch((e) => { console.error(envoy.output().slice(-2000)); throw e; });
    let failed = 0;
    let firstB = 0n;
    let stop = false;
    const t0 = { v: 0n };
    const dead = { v: 0n }; // when A's exit was observed: the kill has taken effect by then
    const loop = (async () => {
      while (!stop) {
        const started = process.hrtime.bigint();
        const got = await ask(listener);
        if (t0.v && started > t0.v && got === "B" && !firstB) firstB = process.hrtime.bigint();
        if (dead.v && started > dead.v && got === "FAILED") failed++;
        if (firstB && dead.v) stop = true;
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await new Promise((r) => setTimeout(r, 30));
    procA.once("exit", () => { dead.v = process.hrtime.bigint(); });
    t0.v = process.hrtime.bigint();
    procA.kill("SIGKILL");
    await loop;
    results.push({ ms: Number(firstB - t0.v) / 1e6, failed });
    process.stderr.write(`trial ${t + 1}/${TRIALS}: kill -> first served by the standby ${results.at(-1)!.ms.toFixed(1)} ms, failed connects ${failed}\n`);
    procA = backend("A", portA); // comes back: Envoy alone would take it back (the controller must not)
  }
  const sorted = results.map((r) => r.ms).sort((x, y) => x - y);
  const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))];
  console.log(`kill -9 of the priority-0 primary, Envoy alone (TCP health check every 50 ms with a kept connection, connect retries): over ${TRIALS} trials kill -> first served by the standby p50 ${pct(50).toFixed(1)} ms, p99 ${pct(99).toFixed(1)} ms; failed connects opened after the primary was gone ${results.reduce((n, r) => n + r.failed, 0)} in total`);
  procA.kill("SIGKILL");
  await envoy.kill();
  http.close();
  process.exit(0);
}
main().catch((e) => { console.error(e); process.exit(1); });
