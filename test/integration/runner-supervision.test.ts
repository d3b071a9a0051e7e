// Issue 9, items 7 and 8 and must-show 3, as an operator sees `scripts/run.ts` with their own
// backends: kill -9 of the controller, then of the relay, under client traffic fails no client
// connection; Envoy keeps its endpoints; the runner says it restarts the process, the
// controller resumes from the store the config names (same primary) and the relay gets its
// replica set again and mirrors new connections. A second run resumes from that store and says
// so; Envoy's death, SIGTERM and kill -9 of the runner each leave none of its processes behind.
import { describe, it, expect, beforeAll, afterAll, afterEach } from "vitest";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChildProcess } from "node:child_process";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { spawnTied } from "../../scripts/child-processes.ts";
import { startBackends, type RecordingBackend } from "../support/backends.ts";
import { freePorts, waitFor } from "../support/ports.ts";

const SERVICE = "supervised";
const TOKEN = "runner-supervision-token";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };

/** Those of `pids` still running once they had 5 s to die. */
async function survivors(pids: number[]): Promise<number[]> {
  await waitFor("the processes to die", () => pids.every((pid) => !alive(pid)), 5_000, 50).catch(() => {});
  return pids.filter(alive);
}

interface Ports { listener: number; relay: number; metrics: number; admin: number; api: number; xds: number }

/** scripts/run.ts as a user starts it; its log kept and searchable. */
class Runner {
  readonly child: ChildProcess;
  output = "";
  readonly exited: Promise<number | null>;
  constructor(configPath: string) {
    this.child = spawnTied(process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "scripts/run.ts"), "--config", configPath],
      { cwd: PROJECT_ROOT, env: { ...process.env, LOCKSTEP_TOKEN: TOKEN }, stdio: ["ignore", "pipe", "pipe"] });
    this.child.stdout!.on("data", (d) => { this.output += d; });
    this.child.stderr!.on("data", (d) => { this.output += d; });
    this.exited = new Promise((resolve) => this.child.once("exit", (code) => resolve(code)));
  }
  /** The first log line from offset `from` that matches. */
  async line(pattern: RegExp, from = 0, timeoutMs = 30_000): Promise<RegExpExecArray> {
    const match = await waitFor(`the runner to log ${pattern}`, () => pattern.exec(this.output.slice(from)), timeoutMs, 20)
      .catch((err) => { throw new Error(`${err.message}\n--- runner output ---\n${this.output.slice(-6000)}`); });
    return match!;
  }
  /** The pid the runner last logged for `name` ("<name> started (pid N)"). */
  pid(name: string): number {
    const all = [...this.output.matchAll(new RegExp(`\\[lockstep\\] ${name} started \\(pid (\\d+)\\)`, "g"))];
    if (!all.length) throw new Error(`the runner logged no pid for ${name}`);
    return Number(all.at(-1)![1]);
  }
}

/** One short exchange: a new connection, an id and a line, half-close, read to the end. */
function shortExchange(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    let received = "";
    let error: string | undefined;
    const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true }, () => socket.end(Buffer.concat([randomBytes(16), Buffer.from("hello\n")])));
    socket.setTimeout(5_000, () => { error = "timeout"; socket.destroy(); });
    socket.on("data", (d) => { received += d.toString("latin1"); });
    socket.on("error", (err) => { error = err.message; });
    socket.on("close", () => resolve(error ?? (received.endsWith(":bye\n") ? undefined : `incomplete answer ${JSON.stringify(received)}`)));
  });
}

/** A long-lived connection writing a line every 50 ms until `finish()`, which half-closes it and
 *  resolves to what went wrong (undefined: every line answered, closed cleanly by the server). */
function longLived(port: number): { finish(): Promise<string | undefined> } {
  let error: string | undefined;
  let answers = 0;
  let lines = 0;
  const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  const closed = new Promise<void>((r) => socket.on("close", () => r()));
  socket.on("data", (d) => { answers += d.toString("latin1").split("\n").length - 1; });
  socket.on("error", (err) => { error = err.message; });
  socket.on("connect", () => socket.write(randomBytes(16)));
  const writer = setInterval(() => { if (!socket.destroyed) { socket.write(`line ${lines++}\n`); } }, 50);
  return {
    async finish() {
      clearInterval(writer);
      if (socket.destroyed) return error ?? "closed before the client finished";
      socket.end();
      await closed;
      // Each write is answered at least once (writes may arrive merged); plus the farewell.
      return error ?? (answers >= 2 ? undefined : `only ${answers} answers to ${lines} lines`);
    },
  };
}

/** Client traffic through the listener until stopped: two loops of short exchanges and four
 *  long-lived connections; failures are kept with the phase they happened in. */
function traffic(port: number) {
  let phase = "start";
  let stopped = false;
  const failures: { phase: string; error: string }[] = [];
  const exchanges = new Map<string, number>();
  const loops = [0, 1].map(async () => {
    while (!stopped) {
      const at = phase;
      const error = await shortExchange(port);
      exchanges.set(at, (exchanges.get(at) ?? 0) + 1);
      if (error) failures.push({ phase: at, error });
      await sleep(5);
    }
  });
  const long = Array.from({ length: 4 }, () => longLived(port));
  return {
    failures, exchanges,
    set phase(name: string) { phase = name; },
    async stop() {
      stopped = true;
      await Promise.all(loops);
      for (const error of await Promise.all(long.map((c) => c.finish()))) if (error) failures.push({ phase: "long-lived", error });
    },
  };
}

describe("scripts/run.ts supervises the relay and the controller", () => {
  let backends: RecordingBackend[];
  let ports: Ports;
  let dir: string;
  let configPath: string;
  let storePath: string;
  const runners: Runner[] = [];
  const start = () => { const r = new Runner(configPath); runners.push(r); return r; };

  beforeAll(async () => {
    backends = await startBackends(["m0", "m1", "m2"]);
    const [listener, relay, metrics, admin, api, xds] = await freePorts(6);
    ports = { listener, relay, metrics, admin, api, xds };
    dir = mkdtempSync(join(tmpdir(), "lockstep-runner-"));
    storePath = join(dir, "state", "controller.json");
    configPath = join(dir, "service.json");
    writeFileSync(configPath, JSON.stringify({
      service: SERVICE,
      listener: { address: "127.0.0.1", port: listener },
      primary: backends[0].address,
      primaryName: "m0",
      replicas: backends.slice(1).map((b) => ({ name: b.name, address: b.address })),
      relay: { address: "127.0.0.1", port: relay, metricsPort: metrics },
      envoy: { adminPort: admin, wasmPath: "build/lockstep.wasm" },
      // The backends tag their answers with their own names: the replies legitimately differ.
      compareReplies: false,
      controller: { apiPort: api, xdsPort: xds, store: storePath },
    }));
  });
  // A test that fails leaves no runner behind for the next one (its processes die with it).
  afterEach(async () => {
    for (const r of runners.splice(0)) { r.child.kill("SIGKILL"); await r.exited; }
  });
  afterAll(async () => { for (const b of backends ?? []) await b.kill(); });

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`http://127.0.0.1:${ports.api}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: res.status, json: await res.json() as any };
  };
  const primary = async () => (await api("GET", `/v1/services/${SERVICE}`)).json.primary as string;
  /** Who answers a new connection through the listener (each backend tags its answers). */
  const whoServes = () => new Promise<string>((resolve) => {
    const socket = connect({ port: ports.listener, host: "127.0.0.1" }, () => socket.write("who\n"));
    socket.once("data", (d) => { resolve(d.toString().split(":")[0]); socket.destroy(); });
    socket.on("error", () => resolve("FAILED"));
  });
  /** Envoy's EDS state for the service: the version it accepted last (its version_info) and the endpoints by priority. */
  const eds = async () => {
    const stats = await (await fetch(`http://127.0.0.1:${ports.admin}/stats?filter=^cluster\\.${SERVICE}_primary\\.version_text$`)).text();
    const dump = await (await fetch(`http://127.0.0.1:${ports.admin}/config_dump?include_eds`)).json() as any;
    const assignment = dump.configs.flatMap((c: any) => c.static_endpoint_configs ?? []).map((e: any) => e.endpoint_config)
      .find((e: any) => e.cluster_name === `${SERVICE}_primary`);
    const endpoints = (assignment.endpoints as any[]).map((e) => `${e.priority ?? 0}:${e.lb_endpoints.map((l: any) => l.endpoint.address.socket_address.port_value).join(",")}`);
    return { version: /version_text: "(.*)"/.exec(stats)![1], endpoints: endpoints.join(" ") };
  };
  /** Envoy's EDS state, sampled until the runner logs that `name` is back: every sample must equal `before`. */
  const edsWhileDown = async (runner: Runner, name: string, from: number) => {
    const samples: { version: string; endpoints: string }[] = [];
    while (!new RegExp(`${name} is back \\(pid`).test(runner.output.slice(from))) { samples.push(await eds()); await sleep(20); }
    return samples;
  };
  const relayReplicas = async () => ((await (await fetch(`http://127.0.0.1:${ports.metrics}/v1/services/${SERVICE}/replicas`)).json() as any).replicas as { name: string }[]).map((r) => r.name).sort();

  it("keeps every client connection working through kill -9 of the controller and of the relay, and brings each back", async () => {
    const runner = start();
    await runner.line(/no store at .* yet: the controller starts from the config \(primary "m0"\)/);
    await runner.line(/\[lockstep\] running; try/);
    expect(runner.output).toContain(storePath);
    // The relay's control token: generated for the run, given to the relay and the controller.
    const relayConfig = JSON.parse(readFileSync(join(PROJECT_ROOT, ".cache/run", SERVICE, "relay.json"), "utf8"));
    expect(relayConfig.controlToken).toMatch(/^.{16,}$/);

    // A planned switchover first, so that "the same primary" after a restart comes from the store, not the config.
    expect((await api("POST", `/v1/services/${SERVICE}/promote`, { member: "m1" })).status).toBe(200);
    await waitFor("new connections to reach m1", async () => (await whoServes()) === "m1");
    await waitFor("the relay to have the controller's replica set", async () => (await relayReplicas()).join() === "m0,m1,m2");
    const edsBefore = await eds();

    const load = traffic(ports.listener);
    await sleep(500);

    console.log("killing the controller (kill -9) under traffic");
    load.phase = "controller down";
    let from = runner.output.length;
    const controllerPid = runner.pid("controller");
    process.kill(controllerPid, "SIGKILL");
    await runner.line(/controller exited \(signal SIGKILL\); restarting it in 100 ms/, from);
    const edsSamples = await edsWhileDown(runner, "controller", from);
    const back = await runner.line(/controller is back \(pid (\d+)\), serving (\d+) ms after it exited/, from);
    console.log(`controller back ${back[2]} ms after kill -9; Envoy's EDS sampled ${edsSamples.length} times meanwhile`);
    expect(Number(back[1])).not.toBe(controllerPid);
    expect(alive(Number(back[1]))).toBe(true);
    expect(edsSamples.length).toBeGreaterThan(0);
    expect(edsSamples.filter((s) => s.version !== edsBefore.version || s.endpoints !== edsBefore.endpoints)).toEqual([]);
    expect(runner.output.slice(from)).toMatch(new RegExp(`controller resumes from ${storePath.replace(/[.\\/]/g, "\\$&")}: primary is "m1", stale: none`));
    expect(await primary()).toBe("m1");
    expect((await eds()).endpoints).toBe(edsBefore.endpoints);
    load.phase = "controller back";
    await sleep(500);

    console.log("killing the relay (kill -9) under traffic");
    load.phase = "relay down";
    from = runner.output.length;
    const relayPid = runner.pid("relay");
    process.kill(relayPid, "SIGKILL");
    await runner.line(/relay exited \(signal SIGKILL\); restarting it in 100 ms/, from);
    const relayBack = await runner.line(/relay is back \(pid (\d+)\), serving (\d+) ms after it exited/, from);
    console.log(`relay back ${relayBack[2]} ms after kill -9`);
    expect(Number(relayBack[1])).not.toBe(relayPid);
    load.phase = "relay back";
    // The relay died with connections that carried bytes: the replicas missed some (Envoy's filter
    // counted it), so they are out of sync, and the restarted relay gets the primary alone.
    await waitFor("the controller to give the restarted relay its replica set", async () => (await relayReplicas()).join() === "m1");
    const roles = (await api("GET", `/v1/services/${SERVICE}`)).json.members.map((m: any) => `${m.name}=${m.role}`).join();
    expect(roles).toBe("m0=detached,m1=primary,m2=detached");
    // Only the controller, which holds the token, can set it.
    expect((await fetch(`http://127.0.0.1:${ports.metrics}/v1/services/${SERVICE}/replicas`, { method: "PUT", body: JSON.stringify({ replicas: [] }) })).status).toBe(401);
    await sleep(500);

    await load.stop();
    console.log(`client exchanges by phase: ${JSON.stringify(Object.fromEntries(load.exchanges))}; failures: ${load.failures.length}`);
    expect(load.failures).toEqual([]);
    for (const p of ["controller down", "relay down"]) expect(load.exchanges.get(p), `exchanges while the ${p.split(" ")[0]} was down`).toBeGreaterThan(0);
    const stats = await (await fetch(`http://127.0.0.1:${ports.admin}/stats?filter=wasmcustom`)).text();
    console.log(stats.split("\n").filter((l) => /bytes_unmirrored|streams_lost|stream_open_failures|unmirrored_connections/.test(l)).join("\n"));

    // With no client connection open, the operator reseeds them (these backends hold no state) and
    // rejoins them: they are mirrored to again.
    for (const m of ["m0", "m2"]) expect((await api("POST", `/v1/services/${SERVICE}/members/${m}/rejoin`)).status).toBe(200);
    await waitFor("the controller to give the relay the rejoined members", async () => (await relayReplicas()).join() === "m0,m1,m2");
    // New connections are mirrored again: one through the listener reaches m1's replicas m0 and m2.
    await waitFor("a new connection's bytes to reach both replicas of m1", async () => {
      const id = randomBytes(16);
      const line = Buffer.from("mirrored?\n");
      await new Promise<void>((resolve) => { const s = connect({ port: ports.listener, host: "127.0.0.1" }, () => s.end(Buffer.concat([id, line]))); s.on("close", () => resolve()); s.on("error", () => {}); s.on("data", () => {}); });
      await sleep(200);
      return [backends[0], backends[2]].every((b) => b.byHead().get(id.toString("hex"))?.received === id.length + line.length);
    }, 15_000, 0);
    await waitFor("the rejoined members to be replicas again", async () =>
      (await api("GET", `/v1/services/${SERVICE}`)).json.members.map((m: any) => m.role).join() === "replica,primary,replica");

    // kill -9 of the runner itself: nothing it started may survive it.
    const pids = ["relay", "controller", "envoy"].map((n) => runner.pid(n));
    expect(pids.every(alive)).toBe(true);
    runner.child.kill("SIGKILL");
    await runner.exited;
    expect(await survivors(pids), "processes still running after the runner was killed").toEqual([]);
  });

  it("resumes from the store the config names, says so, and stops everything when Envoy dies", async () => {
    expect(existsSync(storePath)).toBe(true);
    const runner = start();
    await runner.line(new RegExp(`resuming from ${storePath.replace(/[.\\/]/g, "\\$&")}: primary is "m1", stale: none`));
    await runner.line(/\[lockstep\] running; try/);
    expect(await primary()).toBe("m1");
    await waitFor("new connections to reach m1", async () => (await whoServes()) === "m1");

    const pids = ["relay", "controller"].map((n) => runner.pid(n));
    process.kill(runner.pid("envoy"), "SIGKILL");
    await runner.line(/envoy exited \(signal SIGKILL\): stopping everything/);
    expect(await runner.exited).toBe(1);
    expect(await survivors(pids), "processes still running after the runner stopped").toEqual([]);
  });

  it("stops everything it started on SIGTERM", async () => {
    const runner = start();
    await runner.line(/\[lockstep\] running; try/);
    const pids = ["relay", "controller", "envoy"].map((n) => runner.pid(n));
    runner.child.kill("SIGTERM");
    expect(await runner.exited).toBe(0);
    expect(await survivors(pids), "processes still running after the runner stopped").toEqual([]);
    expect(runner.output).not.toMatch(/restarting it/);
  });
});
