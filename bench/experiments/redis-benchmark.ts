// Experiment (not part of the suite): the channels transport measured from outside, with
// another server and another load tool. redis-server (Debian's) as primary and two replicas,
// Envoy with 2 workers (the runner's default), unpinned; `redis-benchmark` (redis-tools) through
// plain tcp_proxy, lockstep on channels (mirror_streams 1) and lockstep with a gRPC stream per
// connection (mirror_streams 0), rounds alternating. Two loads: `-k 0` (a new connection per
// request: connection rate) and `-k 1` (16 kept connections). After each lockstep round every
// replica's `DEBUG DIGEST` must equal the primary's (SETs of one value: any order of connections
// gives the same data), or the round is reported as diverged.
//
//   npx tsx bench/experiments/redis-benchmark.ts [--rounds 2] [--requests 20000]
import { execFileSync } from "node:child_process";
import { parseArgs } from "node:util";
import { startEnvoy, type EnvoyHandle } from "../../test/support/envoy.ts";
import { startRelay } from "../../test/support/relay.ts";
import { startRedis } from "../../test/support/redis.ts";
import { waitFor } from "../../test/support/ports.ts";

const { values } = parseArgs({ options: { rounds: { type: "string", default: "2" }, requests: { type: "string", default: "20000" } } });
const ROUNDS = Number(values.rounds);
const REQUESTS = Number(values.requests);

/** requests/s of `redis-benchmark -t set` through `port` (`keepAlive` 0: a connection per request). */
function benchmark(port: number, keepAlive: 0 | 1): number {
  const csv = execFileSync("redis-benchmark", ["-p", String(port), "-c", "16", "-n", String(REQUESTS), "-k", String(keepAlive), "-t", "set", "-d", "16", "--csv"], { encoding: "utf8" });
  const row = csv.trim().split("\n").find((l) => l.startsWith('"SET"'));
  if (!row) throw new Error(`no SET row in redis-benchmark's output:\n${csv}`);
  return Number(JSON.parse(`[${row}]`)[1]);
}

async function main(): Promise<void> {
  const [primary, ...replicas] = await Promise.all(["primary", "replica-a", "replica-b"].map((n) => startRedis(`rb-${n}`)));
  const specs = replicas.map((r) => ({ name: r.name, address: r.address }));
  const relay = await startRelay({ replicas: specs });
  const setups: { name: string; mirrorStreams?: number; mirror: boolean }[] = [
    { name: "tcp_proxy", mirror: false },
    { name: "lockstep, channels", mirror: true, mirrorStreams: 1 },
    { name: "lockstep, a stream per connection", mirror: true, mirrorStreams: 0 },
  ];
  const results = new Map<string, { k0: number[]; k1: number[]; digests: string[] }>(setups.map((s) => [s.name, { k0: [], k1: [], digests: [] }]));
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const setup of setups) {
        const envoy: EnvoyHandle = await startEnvoy({ primary: primary.address, replicas: specs, relayPort: relay.port, concurrency: 2, mirror: setup.mirror, mirrorStreams: setup.mirrorStreams });
        try {
          const r = results.get(setup.name)!;
          r.k0.push(benchmark(envoy.listenerPort, 0));
          r.k1.push(benchmark(envoy.listenerPort, 1));
          if (setup.mirror) {
            await waitFor("the replicas to finish every connection", async () => (await envoy.stat("wasmcustom.lockstep.itest.streams_active")) === 0, 60_000, 100);
            const want = primary.cli("DEBUG", "DIGEST");
            const got = replicas.map((rep) => rep.cli("DEBUG", "DIGEST"));
            r.digests.push(got.every((d) => d === want) ? "equal" : `DIVERGED (${want} vs ${got.join(", ")})`);
            const lost = await envoy.stat("wasmcustom.lockstep.itest.streams_lost");
            const unmirrored = await envoy.stat("wasmcustom.lockstep.itest.unmirrored_connections");
            if (lost || unmirrored) r.digests.push(`${lost} streams lost, ${unmirrored} unmirrored`);
          }
        } finally {
          await envoy.kill();
        }
        console.error(`round ${round}: ${setup.name} done`);
      }
    }
  } finally {
    await relay.kill();
    for (const r of [primary, ...replicas]) await r.kill();
  }
  const base = results.get("tcp_proxy")!;
  const ratio = (xs: number[], ys: number[]) => xs.map((x, i) => (x / ys[i]).toFixed(2)).join(", ");
  console.log(`| set-up | -k 0 (connection per request) requests/s | ×tcp_proxy | -k 1 (16 kept connections) requests/s | ×tcp_proxy | replicas' DEBUG DIGEST |`);
  console.log(`| --- | ---: | ---: | ---: | ---: | --- |`);
  for (const [name, r] of results) {
    console.log(`| ${name} | ${r.k0.map(Math.round).join(", ")} | ${ratio(r.k0, base.k0)} | ${r.k1.map(Math.round).join(", ")} | ${ratio(r.k1, base.k1)} | ${r.digests.join("; ") || "–"} |`);
  }
}

await main();
