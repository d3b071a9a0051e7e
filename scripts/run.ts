// Runs a lockstep set-up on this machine: the mirror relay and Envoy (with the lockstep
// filter) for the service described by a config file, optionally with sample key-value
// servers as primary and replicas, and optionally a scripted session that shows the
// replicas ending in the primary's state.
//
//   npm run demo                      = --config config/demo.json --samples --scripted
//   npx tsx scripts/run.ts --config my-service.json      (your own backends)
//   flags: --once (exit after the scripted session), --samples, --scripted
//
// With a "controller" section in the config (the demo has one), the controller runs too:
// Envoy takes the primary from its EDS, and the scripted session ends with a failover.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadLockstepConfig, type LockstepConfig } from "../config/lockstep-config.ts";
import { renderBootstrap } from "../config/envoy-bootstrap.ts";
import { findEnvoy, PROJECT_ROOT } from "./envoy-binary.ts";
import { createKvServer } from "../samples/kv-server.ts";
import { kvExchange } from "../samples/kv-client.ts";
import { splitHostPort } from "../config/address.ts";

const { values } = parseArgs({
  options: {
    config: { type: "string", default: "config/demo.json" },
    samples: { type: "boolean", default: false },
    scripted: { type: "boolean", default: false },
    once: { type: "boolean", default: false },
  },
});

const log = (line: string) => console.log(`[lockstep] ${line}`);
const children: ChildProcess[] = [];
const closers: (() => void)[] = [];
const samples = new Map<string, { kill: () => void }>();
const token = process.env.LOCKSTEP_TOKEN ?? randomBytes(12).toString("hex");

function shutdown(code: number): never {
  for (const c of children) c.kill("SIGTERM");
  for (const close of closers) close();
  process.exit(code);
}
process.on("SIGINT", () => shutdown(0));
process.on("SIGTERM", () => shutdown(0));

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try { if (await check()) return; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function spawnLogged(name: string, command: string, args: string[]): ChildProcess {
  const child = spawn(command, args, { cwd: PROJECT_ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, LOCKSTEP_TOKEN: token } });
  const prefix = (chunk: Buffer) => chunk.toString().split("\n").filter(Boolean).forEach((l) => console.log(`[${name}] ${l}`));
  child.stdout!.on("data", prefix);
  child.stderr!.on("data", prefix);
  child.on("exit", (code, signal) => { if (code !== 0 && signal !== "SIGTERM") { log(`${name} exited (${code ?? signal})`); shutdown(1); } });
  children.push(child);
  return child;
}

async function startSamples(c: LockstepConfig): Promise<void> {
  const members = [{ name: "primary", address: c.primary }, ...c.replicas];
  for (const m of members) {
    const { server, kill } = createKvServer(m.name);
    samples.set(m.address, { kill });
    const { port } = splitHostPort(m.address);
    await new Promise<void>((ok, fail) => { server.once("error", fail); server.listen(port, "127.0.0.1", () => ok()); });
    closers.push(() => server.close());
    log(`sample kv-server "${m.name}" on ${m.address}`);
  }
}

async function scriptedSession(c: LockstepConfig): Promise<boolean> {
  log(`scripted session: 20 client connections through the listener 127.0.0.1:${c.listener.port}`);
  for (let i = 0; i < 20; i++) {
    // Each connection's answers depend only on its own keys: connections may be applied in a
    // different order on a replica, and the reply check would rightly flag a shared counter.
    const answers = await kvExchange(c.listener.port, [`SET user:${i} name-${i}`, `INCR logins:${i}`, `GET user:${i}`]);
    if (i < 3 || i === 19) log(`  connection ${i + 1}: ${answers.join(" | ")}`);
    if (i === 3) log("  ...");
  }
  // Replica connections close once the relay has flushed them; give the last ones a moment.
  const members = [{ name: "primary", address: c.primary }, ...c.replicas];
  let digests: string[] = [];
  await waitUntil("replicas to catch up", async () => {
    digests = await Promise.all(members.map(async (m) => (await kvExchange(Number(m.address.split(":").pop()), ["DIGEST"]))[0]));
    return digests.every((d) => d === digests[0]);
  }, 5_000).catch(() => {});
  members.forEach((m, i) => log(`  DIGEST of ${m.name.padEnd(10)} (${m.address}, asked directly): ${digests[i]}`));
  const same = digests.every((d) => d === digests[0]);
  log(same ? "every replica holds the primary's state" : "REPLICAS DIFFER from the primary");
  const stats = await (await fetch(`http://127.0.0.1:${c.envoy.adminPort}/stats?filter=wasmcustom`)).text();
  log("Envoy stats (filter: wasmcustom):");
  for (const line of stats.trim().split("\n")) console.log(`    ${line}`);
  return same && (!c.controller || !samples.size || await failoverSession(c));
}

interface ApiMember { name: string; address: string; role: string; alive: boolean }

async function members(c: LockstepConfig): Promise<{ primary: string; members: ApiMember[] }> {
  return (await fetch(`http://127.0.0.1:${c.controller!.apiPort}/v1/services/${c.service}`)).json();
}

/** Kill the primary sample (like kill -9) and show the controller promote a replica that
 *  holds every value written before. */
async function failoverSession(c: LockstepConfig): Promise<boolean> {
  const before = await members(c);
  const primary = before.members.find((m) => m.role === "primary")!;
  log(`failover: killing the primary "${primary.name}" (${primary.address}), like kill -9`);
  samples.get(primary.address)!.kill();
  let after = before;
  await waitUntil("the controller to promote a replica", async () => (after = await members(c)).primary !== primary.name, 10_000);
  log(`failover: the controller promoted "${after.primary}"; members now: ${after.members.map((m) => `${m.name}=${m.role}`).join(", ")}`);
  const answers = await kvExchange(c.listener.port, ["GET user:0", "GET user:19", "GET logins:19"]);
  log(`failover: through the listener, served by "${after.primary}": ${answers.join(" | ")}`);
  const ok = answers[0] === "VALUE name-0" && answers[1] === "VALUE name-19" && answers[2] === "VALUE 1";
  log(ok ? "the promoted replica holds every value written before the failover" : "THE PROMOTED REPLICA LOST DATA");
  return ok;
}

async function main(): Promise<void> {
  const configPath = resolve(PROJECT_ROOT, values.config!);
  const c = loadLockstepConfig(configPath);
  if (!existsSync(join(PROJECT_ROOT, c.envoy.wasmPath))) {
    log("building the filter (npm run build)");
    execFileSync("npm", ["run", "--silent", "build"], { cwd: PROJECT_ROOT, stdio: "inherit" });
  }
  const envoyBin = findEnvoy();
  if (values.samples) await startSamples(c);

  const dir = join(PROJECT_ROOT, ".cache", "run", c.service);
  mkdirSync(dir, { recursive: true });
  const relayConfig = join(dir, "relay.json");
  writeFileSync(relayConfig, JSON.stringify({
    listen: { host: c.relay.address, port: c.relay.port },
    metrics: { host: c.relay.address, port: c.relay.metricsPort },
    // With a controller, it sets each service's replica set (and keeps it right); the relay
    // waits for it rather than start from a set that may be out of date.
    services: c.controller ? {} : { [c.service]: c.replicas },
    limits: { maxLagBytesPerConnection: c.limits.maxLagBytesPerConnection, maxQueuedBytesTotal: c.limits.maxQueuedBytesTotal },
  }, null, 2));
  spawnLogged("relay", process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "relay", "main.ts"), "--config", relayConfig]);
  await waitUntil("the relay", async () => (await fetch(`http://127.0.0.1:${c.relay.metricsPort}/healthz`)).ok);
  log(`relay on ${c.relay.address}:${c.relay.port}, metrics http://127.0.0.1:${c.relay.metricsPort}/metrics`);

  if (c.controller) {
    const store = join(dir, "controller.json");
    if (values.samples) rmSync(store, { force: true }); // the samples start empty: so does the controller's state
    const child = spawnLogged("controller", process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "controller", "main.ts"), "--config", configPath, "--store", store]);
    await waitUntil("the controller", async () => (await fetch(`http://127.0.0.1:${c.controller!.apiPort}/v1/services`)).ok);
    log(`controller API http://127.0.0.1:${c.controller.apiPort}/v1/services (mutating calls: Authorization: Bearer ${token}), xDS on 127.0.0.1:${c.controller.xdsPort}`);
  }

  const bootstrap = join(dir, "envoy.yaml");
  writeFileSync(bootstrap, renderBootstrap(c));
  spawnLogged("envoy", envoyBin, ["-c", bootstrap, "--log-level", "warn", "--component-log-level", "wasm:info", "--base-id", String(100 + (c.listener.port % 1000))]);
  await waitUntil("Envoy", async () => (await fetch(`http://127.0.0.1:${c.envoy.adminPort}/ready`)).status === 200);
  log(`Envoy ${execFileSync(envoyBin, ["--version"]).toString().trim().split(" ").pop()} listening on ${c.listener.address}:${c.listener.port} -> primary ${c.controller ? "named by the controller (first " + c.primary + ")" : c.primary}; admin http://127.0.0.1:${c.envoy.adminPort}`);
  log(`replicas: ${c.replicas.map((r) => `${r.name}=${r.address}`).join(", ") || "(none)"}`);

  let ok = true;
  if (values.scripted) ok = await scriptedSession(c);
  if (values.once) shutdown(ok ? 0 : 1);
  log(`running; try: printf 'SET a 1\\nGET a\\n' | nc -q1 127.0.0.1 ${c.listener.port}   (Ctrl-C to stop)`);
}

main().catch((err) => { console.error(`[lockstep] ${err instanceof Error ? err.message : err}`); shutdown(1); });
