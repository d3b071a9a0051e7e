// The controller as an operator runs it (controller/main.ts, its own process) on what an older
// version or a careless hand left behind: a store holding a member whose address is not an
// endpoint, a second controller pointed at the same store, and the relay's control token given
// by flag, environment or config.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { createServer, type Server } from "node:net";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startProcess, type Managed } from "../support/processes.ts";
import { freePorts, waitFor } from "../support/ports.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";

const TOKEN = "process-test-token";

/** A backend that accepts connections and keeps them (the controller's connect check, which keeps its probe connection open, finds it up). */
async function backend(): Promise<{ address: string; server: Server }> {
  const server = createServer((s) => { s.on("error", () => {}); });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, server };
}

interface Setup { dir: string; config: string; store: string; apiPort: number; xdsPort: number }

describe("the controller process", () => {
  let backends: { address: string; server: Server }[];
  let relay: RelayHandle;
  beforeAll(async () => {
    backends = [await backend(), await backend(), await backend()];
    relay = await startRelay({ replicas: [] });
  });
  afterAll(async () => {
    await relay?.kill("SIGKILL");
    for (const b of backends ?? []) b.server.close();
  });

  async function setUp(relayToken?: string): Promise<Setup> {
    const dir = mkdtempSync(join(tmpdir(), "lockstep-controller-process-"));
    const [apiPort, xdsPort] = await freePorts(2);
    const store = join(dir, "controller.json");
    const config = join(dir, "service.json");
    writeFileSync(config, JSON.stringify({
      service: "kv", primary: backends[0].address, primaryName: "p",
      replicas: [{ name: "a", address: backends[1].address }],
      relay: { address: "127.0.0.1", port: relay.port, metricsPort: relay.metricsPort, ...(relayToken ? { controlToken: relayToken } : {}) },
      healthCheck: { intervalMs: 50, timeoutMs: 200 },
      controller: { apiPort, xdsPort, store },
    }));
    return { dir, config, store, apiPort, xdsPort };
  }

  function run(s: Setup, extra: { args?: string[]; env?: Record<string, string>; apiPort?: number } = {}): Managed {
    const args = ["--import", "tsx", join(PROJECT_ROOT, "controller", "main.ts"), "--config", s.config, ...(extra.args ?? [])];
    const env: NodeJS.ProcessEnv = { ...process.env, LOCKSTEP_TOKEN: TOKEN, ...extra.env };
    if (!extra.env?.LOCKSTEP_RELAY_TOKEN) delete env.LOCKSTEP_RELAY_TOKEN;
    return startProcess("controller", process.execPath, args, { cwd: PROJECT_ROOT, env });
  }

  async function serving(s: Setup, proc: Managed, port = s.apiPort): Promise<void> {
    await waitFor("the controller's API", async () => {
      if (proc.exited()) throw new Error(`controller exited:\n${proc.output()}`);
      return (await fetch(`http://127.0.0.1:${port}/v1/services`)).ok;
    }, 20_000, 20);
  }

  async function exitOf(proc: Managed): Promise<number | null> {
    await waitFor("the controller to exit", () => proc.exited(), 20_000, 20);
    return proc.child.exitCode;
  }

  const view = async (s: Setup) => (await fetch(`http://127.0.0.1:${s.apiPort}/v1/services/kv`)).json();
  const events = async (s: Setup) => (await (await fetch(`http://127.0.0.1:${s.apiPort}/v1/events`)).json()).events;

  /** A store as an older controller wrote it, with one more replica at `address`. */
  function oldStore(s: Setup, address: string, role: "replica" | "primary"): void {
    const member = (name: string, addr: string, r: string) => ({ name, address: addr, role: r, alive: true, lagBytes: 0 });
    const members = role === "primary"
      ? [member("p", address, "primary"), member("a", backends[1].address, "replica")]
      : [member("p", backends[0].address, "primary"), member("a", backends[1].address, "replica"), member("bad", address, "replica")];
    writeFileSync(s.store, JSON.stringify({ schema: 1, services: [{ name: "kv", members }], events: [] }));
  }

  it("starts on a store holding a replica at 127.0.0.1:99999: drops it with an event, serves, and starts again", async () => {
    const s = await setUp();
    oldStore(s, "127.0.0.1:99999", "replica");
    for (let start = 0; start < 2; start++) {
      const proc = run(s);
      await serving(s, proc);
      expect((await view(s)).members.map((m: any) => m.name)).toEqual(["p", "a"]);
      await waitFor("both members up", async () => (await view(s)).members.every((m: any) => m.alive === true), 10_000);
      expect(proc.exited()).toBe(false);
      await proc.kill("SIGKILL");
    }
    const dropped = (JSON.parse(readFileSync(s.store, "utf8")).events as any[]).filter((e) => e.kind === "member_removed");
    expect(dropped).toHaveLength(1);
    expect(dropped[0]).toMatchObject({ service: "kv", member: "bad" });
    expect(dropped[0].detail).toContain('"127.0.0.1:99999" is not an endpoint: "address" has port 99999: a port is 1 to 65535');
  });

  it("refuses to start on a store whose primary is at a host name, saying what to fix", async () => {
    const s = await setUp();
    oldStore(s, "localhost:7001", "primary");
    const proc = run(s);
    expect(await exitOf(proc)).toBe(2);
    expect(proc.output()).toContain(`store ${s.store}: the primary "p" of service "kv": its address "localhost:7001" is not an endpoint`);
    expect(proc.output()).toContain("write its IP address");
    expect(proc.output()).not.toMatch(/\n\s+at /); // a message, not a stack
  });

  it("refuses a second controller on the same store, and takes over the lock of one killed with -9", async () => {
    const s = await setUp();
    const first = run(s);
    await serving(s, first);
    const [otherApi, otherXds] = await freePorts(2);
    const second = run(s, { args: ["--api-port", String(otherApi), "--xds-port", String(otherXds)] });
    expect(await exitOf(second)).toBe(2);
    expect(second.output()).toContain(`store ${s.store} is in use by another controller (pid ${first.child.pid}`);
    expect((await fetch(`http://127.0.0.1:${s.apiPort}/v1/services/kv`)).ok).toBe(true); // the first one is untouched

    await first.kill("SIGKILL");
    expect(existsSync(`${s.store}.lock`)).toBe(true); // left behind by kill -9 ...
    const third = run(s);
    await serving(s, third); // ... and recognised as stale
    await third.kill("SIGTERM");
    expect(existsSync(`${s.store}.lock`)).toBe(false); // released on a clean exit
  });

  it.each([
    ["the config", {}, "config"],
    ["LOCKSTEP_RELAY_TOKEN over the config", { env: { LOCKSTEP_RELAY_TOKEN: "right" } }, "wrong"],
    ["--relay-token-file over LOCKSTEP_RELAY_TOKEN", { file: "right", env: { LOCKSTEP_RELAY_TOKEN: "wrong" } }, "wrong"],
  ] as const)("sends the relay's control token from %s", async (_what, how, inConfig) => {
    const right = relay.controlToken!;
    const wrong = "not-the-relay-control-token";
    const s = await setUp(inConfig === "config" ? right : wrong);
    const pick = (v: string) => (v === "right" ? right : wrong);
    const args: string[] = [];
    if ("file" in how) {
      writeFileSync(join(s.dir, "relay.token"), `${pick(how.file)}\n`, { mode: 0o600 });
      args.push("--relay-token-file", join(s.dir, "relay.token"));
    }
    const env: Record<string, string> = "env" in how ? { LOCKSTEP_RELAY_TOKEN: pick(how.env.LOCKSTEP_RELAY_TOKEN) } : {};
    const proc = run(s, { args, env });
    await serving(s, proc);
    const setOf = async () => (await (await fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/kv/replicas`)).json()).replicas.map((r: any) => r.name);
    await waitFor("the relay to take the controller's set", async () => (await setOf()).join() === "p,a", 10_000);
    expect(proc.output()).not.toContain("relay refused");
    await proc.kill("SIGKILL");
    // Reset the relay's set for the next case.
    await fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/kv/replicas`, { method: "PUT", headers: { authorization: `Bearer ${right}` }, body: JSON.stringify({ replicas: [] }) });
  });
});
