// Runs a lockstep set-up on this machine: the mirror relay, the controller (with a
// "controller" section in the config) and Envoy (with the lockstep filter) for the service
// described by a config file, optionally with sample key-value servers as primary and
// replicas, and optionally a scripted session that shows the replicas ending in the
// primary's state.
//
//   npm run demo                      = --config config/demo.json --samples --scripted
//   npx tsx scripts/run.ts --config my-service.json      (your own backends)
//   flags: --once (exit after the scripted session), --samples, --scripted
//
// It supervises what it starts (each logged with its pid): a relay or controller that dies
// is restarted with backoff while Envoy keeps serving (unmirrored while the relay is down,
// on its last endpoints while the controller is); the controller resumes from its store.
// Envoy's death, Ctrl-C or SIGTERM stop everything. Nothing it started outlives it
// (scripts/child-processes.ts).
import { execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadLockstepConfig, relayProcesses, type LockstepConfig } from "../config/lockstep-config.ts";
import { renderBootstrap } from "../config/envoy-bootstrap.ts";
import { findEnvoy, PROJECT_ROOT } from "./envoy-binary.ts";
import { spawnTied } from "./child-processes.ts";
import { createKvServer } from "../samples/kv-server.ts";
import { kvExchange } from "../samples/kv-client.ts";
import { splitHostPort } from "../config/address.ts";
import { FileStore } from "../controller/store/file-store.ts";
import { validateStoredState } from "../controller/store/stored-state.ts";

const { values } = parseArgs({
  options: {
    config: { type: "string", default: "config/demo.json" },
    samples: { type: "boolean", default: false },
    scripted: { type: "boolean", default: false },
    once: { type: "boolean", default: false },
  },
});

/** A relay or controller that dies is restarted after this, doubling up to the maximum... */
const RESTART_FIRST_DELAY_MS = 100;
const RESTART_MAX_DELAY_MS = 5_000;
/** ...and back to the first delay once it had been up this long. */
const RESTART_RESET_AFTER_MS = 10_000;
/** On shutdown, how long a process gets to exit after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 5_000;

const log = (line: string) => console.log(`[lockstep] ${line}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const running = new Set<ChildProcess>();
const restartTimers = new Set<NodeJS.Timeout>();
const closers: (() => void)[] = [];
const samples = new Map<string, { kill: () => void }>();
const token = process.env.LOCKSTEP_TOKEN ?? randomBytes(12).toString("hex");
let stopping = false;

/** Stop everything this runner started (SIGTERM, then SIGKILL after a grace period), then exit. */
async function shutdown(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  for (const timer of restartTimers) clearTimeout(timer);
  const exits = [...running].map((child) => new Promise((r) => child.once("exit", r)));
  for (const child of running) child.kill("SIGTERM");
  await Promise.race([Promise.all(exits), sleep(STOP_GRACE_MS)]);
  for (const close of closers) close();
  process.exit(code); // the exit hook of child-processes.ts kills whatever did not stop in time
}
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => void shutdown(0));

async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try { if (await check()) return; } catch { /* not yet */ }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

const httpOk = (url: string) => async () => (await fetch(url, { signal: AbortSignal.timeout(1000) })).ok;

interface ProcessSpec {
  readonly name: string;
  readonly command: string;
  readonly args: string[];
  readonly env?: NodeJS.ProcessEnv;
  /** Answers true once the process serves. */
  readonly ready: () => Promise<boolean>;
  /** What goes on while it is down, said when it is restarted; absent: its death stops everything. */
  readonly whileDown?: string;
  /** Said before each start. */
  readonly beforeStart?: () => void;
}

function formatExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `signal ${signal}` : `code ${code}`;
}

/**
 * Start a process and keep it running: resolves once it is first ready. A death before that,
 * or of a process without `whileDown`, stops everything; later deaths restart it after
 * RESTART_FIRST_DELAY_MS, doubling to RESTART_MAX_DELAY_MS while it keeps dying.
 */
async function supervise(spec: ProcessSpec): Promise<void> {
  let delay = RESTART_FIRST_DELAY_MS;
  let everReady = false;
  const start = (): ChildProcess => {
    spec.beforeStart?.();
    // Its own process group: Ctrl-C reaches only the runner, which stops everything in order.
    const child = spawnTied(spec.command, spec.args, { cwd: PROJECT_ROOT, env: spec.env ?? process.env, stdio: ["ignore", "pipe", "pipe"], detached: true });
    running.add(child);
    log(`${spec.name} started (pid ${child.pid})`);
    for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream }).on("line", (line) => console.log(`[${spec.name}] ${line}`));
    const startedAt = Date.now();
    child.on("error", (err) => log(`${spec.name}: ${err.message}`));
    child.on("exit", (code, signal) => {
      running.delete(child);
      if (stopping) return;
      const how = formatExit(code, signal);
      if (!everReady || !spec.whileDown) {
        log(`${spec.name} exited (${how})${everReady ? "" : " before it was ready"}: stopping everything`);
        void shutdown(1);
        return;
      }
      const exitedAt = Date.now();
      if (exitedAt - startedAt >= RESTART_RESET_AFTER_MS) delay = RESTART_FIRST_DELAY_MS;
      log(`${spec.name} exited (${how}); restarting it in ${delay} ms. Meanwhile ${spec.whileDown}`);
      const timer = setTimeout(() => {
        restartTimers.delete(timer);
        const next = start();
        untilReady(next).then(
          (ok) => { if (ok) log(`${spec.name} is back (pid ${next.pid}), serving ${Date.now() - exitedAt} ms after it exited`); },
          (err) => log((err as Error).message));
      }, delay);
      restartTimers.add(timer);
      delay = Math.min(delay * 2, RESTART_MAX_DELAY_MS);
    });
    return child;
  };
  /** Poll until it serves: true, or false if it died first (its exit handler deals with that). */
  const untilReady = async (child: ChildProcess, timeoutMs = 20_000): Promise<boolean> => {
    const deadline = Date.now() + timeoutMs;
    while (child.exitCode === null && child.signalCode === null) {
      try { if (await spec.ready()) return true; } catch { /* not yet */ }
      if (Date.now() > deadline) throw new Error(`${spec.name} (pid ${child.pid}) is not ready after ${timeoutMs} ms`);
      await sleep(50);
    }
    return false;
  };
  if (!(await untilReady(start()))) return new Promise(() => {}); // it died: shutdown() is under way
  everReady = true;
}

/** The controller's stored state for the service, as one line: its primary and the members out of the running. */
function describeStore(path: string, service: string): string {
  let stored;
  try { stored = new FileStore(path, validateStoredState).load(); } catch (err) { return `cannot read it (${(err as Error).message})`; }
  const s = stored?.services.find((x) => x.name === service);
  if (!s) return `no state for "${service}" in it`;
  const primary = s.members.find((m) => m.role === "primary")?.name ?? "(none)";
  const byRole = (role: string) => s.members.filter((m) => m.role === role).map((m) => m.name).join(", ") || "none";
  const outOfSync = ["detached", "diverged"].filter((role) => s.members.some((m) => m.role === role)).map((role) => `, ${role}: ${byRole(role)}`).join("");
  return `primary is "${primary}", stale: ${byRole("stale")}${outOfSync}`;
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

/** The relay's control token: the config's relay.controlToken (config/lockstep-config.ts reads
 *  it once the relay requires one), else a new one for this run. */
function relayControlToken(c: LockstepConfig): string {
  return (c.relay as { readonly controlToken?: string }).controlToken ?? randomBytes(24).toString("base64url");
}

/** Where the controller's store is, and what it starts from (said in the log). */
function prepareStore(c: LockstepConfig): string {
  const store = resolve(PROJECT_ROOT, c.controller!.store);
  if (values.samples) {
    // The sample servers start empty: the controller's state must too.
    const had = existsSync(store);
    rmSync(store, { force: true });
    log(`the sample servers start empty, so the controller starts from a fresh store: ${store}${had ? " (the previous run's state removed)" : ""}`);
  } else if (existsSync(store)) {
    log(`resuming from ${store}: ${describeStore(store, c.service)}`);
  } else {
    log(`no store at ${store} yet: the controller starts from the config (primary "${c.primaryName}")`);
  }
  return store;
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
  const relayToken = relayControlToken(c);
  // One relay process per core it may use (relay.processes): process i on port + 2i, metrics + 2i.
  for (const [i, p] of relayProcesses(c.relay).entries()) {
    const name = i === 0 ? "relay" : `relay-${i + 1}`;
    const relayConfig = join(dir, `${name}.json`);
    rmSync(relayConfig, { force: true }); // written anew, readable by its owner only: it holds the token
    writeFileSync(relayConfig, JSON.stringify({
      listen: { host: c.relay.address, port: p.port },
      metrics: { host: c.relay.address, port: p.metricsPort },
      // With a controller, it sets each service's replica set (and keeps it right); the relay
      // waits for it rather than start from a set that may be out of date.
      services: c.controller ? {} : { [c.service]: c.replicas },
      limits: { maxLagBytesPerConnection: c.limits.maxLagBytesPerConnection, maxQueuedBytesTotal: c.limits.maxQueuedBytesTotal },
      controlToken: relayToken,
    }, null, 2), { mode: 0o600 });
    await supervise({
      name, command: process.execPath, args: ["--import", "tsx", join(PROJECT_ROOT, "relay", "main.ts"), "--config", relayConfig],
      ready: httpOk(`http://127.0.0.1:${p.metricsPort}/healthz`),
      whileDown: c.relay.processes === 1
        ? "Envoy keeps serving: connections go to the primary unmirrored (counted in bytes_unmirrored) and the replicas miss those bytes"
        : "Envoy keeps serving: connections it sends to this relay go to the primary unmirrored (counted in bytes_unmirrored) and the replicas miss those bytes",
    });
    log(`${name} on ${c.relay.address}:${p.port}, metrics http://127.0.0.1:${p.metricsPort}/metrics`);
  }

  if (c.controller) {
    const store = prepareStore(c);
    let restarts = 0;
    await supervise({
      name: "controller", command: process.execPath,
      args: ["--import", "tsx", join(PROJECT_ROOT, "controller", "main.ts"), "--config", configPath, "--store", store],
      env: { ...process.env, LOCKSTEP_TOKEN: token, LOCKSTEP_RELAY_TOKEN: relayToken },
      ready: httpOk(`http://127.0.0.1:${c.controller.apiPort}/v1/services`),
      whileDown: "Envoy keeps serving on the endpoints it has; nobody is promoted until it is back",
      beforeStart: () => { if (restarts++ > 0) log(`controller resumes from ${store}: ${describeStore(store, c.service)}`); },
    });
    log(`controller API http://127.0.0.1:${c.controller.apiPort}/v1/services (mutating calls: Authorization: Bearer ${token}), xDS on 127.0.0.1:${c.controller.xdsPort}`);
  }

  const bootstrap = join(dir, "envoy.yaml");
  writeFileSync(bootstrap, renderBootstrap(c));
  await supervise({
    name: "envoy", command: envoyBin,
    args: ["-c", bootstrap, "--log-level", "warn", "--component-log-level", "wasm:info", "--base-id", String(100 + (c.listener.port % 1000))],
    ready: async () => (await fetch(`http://127.0.0.1:${c.envoy.adminPort}/ready`, { signal: AbortSignal.timeout(1000) })).status === 200,
  });
  log(`Envoy ${execFileSync(envoyBin, ["--version"]).toString().trim().split(" ").pop()} listening on ${c.listener.address}:${c.listener.port} -> primary ${c.controller ? "named by the controller (first " + c.primary + ")" : c.primary}; admin http://127.0.0.1:${c.envoy.adminPort}`);
  log(`replicas: ${c.replicas.map((r) => `${r.name}=${r.address}`).join(", ") || "(none)"}`);

  let ok = true;
  if (values.scripted) ok = await scriptedSession(c);
  if (values.once) return shutdown(ok ? 0 : 1);
  log(`running; try: printf 'SET a 1\\nGET a\\n' | nc -q1 127.0.0.1 ${c.listener.port}   (Ctrl-C to stop; a relay or controller that dies is restarted, Envoy's death stops everything)`);
}

main().catch((err) => { console.error(`[lockstep] ${err instanceof Error ? err.message : err}`); void shutdown(1); });
