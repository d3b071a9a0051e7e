// Experiment (not part of the suite): is lockstep's p99 latency penalty the relay's periodic
// ACKs? The relay ACKs small writes on a timer (ackIntervalMs, default 10 ms), so about one
// 64-byte exchange in 90 has an ACK arrive at Envoy (and the relay's work for it on CPU 1) while
// it is in flight. Runs tcp_proxy and lockstep with one replica, relays with ackIntervalMs 10
// (shipped) and 1000, placed as in the suite, and prints p50/p99 per round.
//
//   npx tsx bench/experiments/ack-interval.ts [--rounds 5] [--exchanges 20000]
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startEnvoy } from "../../test/support/envoy.ts";
import { freePorts, waitFor } from "../../test/support/ports.ts";
import { startProcess } from "../../test/support/processes.ts";
import * as native from "../suite/native.ts";
import { spread } from "../suite/stats.ts";
import { ENVOY_CPU, ENVOY_WORKERS, LOAD_CPU, replicaSpecs, SERVICE, startPlain, stopSetup } from "../suite/setups.ts";

const { values } = parseArgs({ options: { rounds: { type: "string", default: "5" }, exchanges: { type: "string", default: "20000" } } });

async function lockstepWithAckInterval(primaryPort: number, replicas: native.Backends, ackIntervalMs: number) {
  const [port, metricsPort] = await freePorts(2);
  const dir = mkdtempSync(join(tmpdir(), "lockstep-ack-"));
  mkdirSync(dir, { recursive: true });
  const config = join(dir, "relay.json");
  const specs = replicaSpecs(replicas, 1);
  writeFileSync(config, JSON.stringify({ listen: { host: "127.0.0.1", port }, metrics: { host: "127.0.0.1", port: metricsPort }, replicas: specs, ackIntervalMs }));
  const relay = startProcess("relay", process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "relay", "main.ts"), "--config", config], { cwd: PROJECT_ROOT });
  await waitFor("the relay", async () => (await fetch(`http://127.0.0.1:${metricsPort}/healthz`)).ok, 20_000, 50);
  native.pin(relay.child.pid!, LOAD_CPU);
  const envoy = await startEnvoy({ primary: `127.0.0.1:${primaryPort}`, replicas: specs, relayPort: port, service: SERVICE, concurrency: ENVOY_WORKERS });
  native.pin(envoy.process.child.pid!, ENVOY_CPU);
  return { port: envoy.listenerPort, stop: async () => { await envoy.kill(); await relay.kill(); } };
}

async function main(): Promise<void> {
  native.pin(process.pid, LOAD_CPU);
  native.buildLoadgen();
  const primary = await native.startServers(1, LOAD_CPU);
  const replicas = await native.startServers(1, LOAD_CPU);
  const plain = await startPlain(primary.ports[0]);
  const a10 = await lockstepWithAckInterval(primary.ports[0], replicas, 10);
  const a1000 = await lockstepWithAckInterval(primary.ports[0], replicas, 1000);
  const setups = [["tcp_proxy", plain.port], ["lockstep-1, ackIntervalMs 10", a10.port], ["lockstep-1, ackIntervalMs 1000", a1000.port]] as const;
  const res = new Map<string, { p50: number[]; p99: number[] }>(setups.map(([k]) => [k, { p50: [], p99: [] }]));
  for (let r = 1; r <= Number(values.rounds); r++) {
    for (const [k, port] of setups) {
      process.stderr.write(`ack-interval: ${k} round ${r}/${values.rounds}\n`);
      const x = await native.latency(port, 64, Number(values.exchanges), 2000, LOAD_CPU);
      res.get(k)!.p50.push(x.p50); res.get(k)!.p99.push(x.p99);
    }
  }
  const base = res.get("tcp_proxy")!;
  console.log("| set-up | p50 µs | p99 µs | p99 ×tcp_proxy |\n| --- | ---: | ---: | ---: |");
  for (const [k, v] of res) {
    const p50 = spread(v.p50), p99 = spread(v.p99);
    console.log(`| ${k} | ${p50.median.toFixed(1)} (${p50.min.toFixed(1)}–${p50.max.toFixed(1)}) | ${p99.median.toFixed(1)} (${p99.min.toFixed(1)}–${p99.max.toFixed(1)}) | ${(p99.median / spread(base.p99).median).toFixed(3)} |`);
  }
  await stopSetup(plain); await a10.stop(); await a1000.stop();
  primary.kill(); replicas.kill();
  process.exit(0);
}
main().catch((e) => { console.error(e); process.exit(1); });
