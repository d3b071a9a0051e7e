// A primary that Envoy's health check failed while nobody could take over (a stall past the
// check's timeout, no in-sync replica) comes back into Envoy, but only if the controller proves
// it is the same process: its probe connection, open while Envoy used the primary, never closed
// or was replaced since. The probe keeps that connection through a stall (late answers count);
// a restart shows as a new connection, and such a primary stays out.
import { describe, it, expect, afterEach } from "vitest";
import { createServer, type Server, type Socket } from "node:net";
import { PersistentProbe } from "../../controller/health/persistent-probe.ts";
import { ControllerState } from "../../controller/state.ts";
import { Controller } from "../../controller/controller.ts";
import { XdsRestServer } from "../../controller/xds/rest-server.ts";
import { RelayClient } from "../../controller/relay/client.ts";
import type { Member } from "../../controller/model/service.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A PING/PONG server that can be frozen (answers held back, connections kept), restarted, or
 *  answer with an error instead (a server still loading its data). */
async function pingServer() {
  let frozen = false;
  let loading = false;
  const held: Socket[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("data", () => { if (frozen) held.push(socket); else socket.write(loading ? "-LOADING\n" : "PONG\n"); });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  return {
    address: `127.0.0.1:${port}`,
    freeze() { frozen = true; },
    loading(on: boolean) { loading = on; },
    thaw() { frozen = false; for (const s of held.splice(0)) s.write("PONG\n"); },
    /** What a crash and a supervisor's restart look like from outside: every connection closes. */
    restart() { for (const s of sockets) s.destroy(); },
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

describe("the persistent probe through a stall", () => {
  let close: (() => Promise<void>) | undefined;
  afterEach(async () => { await close?.(); close = undefined; });
  const spec = { send: "PING\n", expect: "PONG", timeoutMs: 50 };

  it("keeps its connection while a member answers late, so the same id proves the same process; a restart shows as a new one", async () => {
    const server = await pingServer();
    const probe = new PersistentProbe();
    close = async () => { probe.close(); await server.close(); };
    expect((await probe.probe(server.address, spec)).ok).toBe(true);
    const id = probe.connection(server.address);
    expect(id).toBeDefined();
    server.freeze();
    const stalled = [await probe.probe(server.address, spec), await probe.probe(server.address, spec), await probe.probe(server.address, spec)];
    expect(stalled.map((r) => r.ok)).toEqual([false, false, false]);
    expect(stalled[2].error).toMatch(/still waiting on the same connection/);
    expect(probe.connection(server.address)).toBe(id);
    server.thaw();
    expect((await probe.probe(server.address, spec)).ok).toBe(true); // the late answer
    expect((await probe.probe(server.address, spec)).ok).toBe(true); // and a fresh exchange
    expect(probe.connection(server.address)).toBe(id);
    server.restart();
    await sleep(20);
    expect(probe.connection(server.address)).toBeUndefined();
    const after = await probe.probe(server.address, spec);
    expect([after.ok, after.fatal]).toEqual([false, true]);
    expect((await probe.probe(server.address, spec)).ok).toBe(true);
    expect(probe.connection(server.address)).not.toBe(id);
  });

  it("starts afresh after a wrong answer (a server still loading): no waiting on that connection", async () => {
    const server = await pingServer();
    const probe = new PersistentProbe();
    close = async () => { probe.close(); await server.close(); };
    server.loading(true);
    const first = await probe.probe(server.address, spec);
    expect([first.ok, first.error]).toEqual([false, 'answered "-LOADING\\n", not the expected answer']);
    expect(probe.connection(server.address)).toBeUndefined();
    server.loading(false);
    expect((await probe.probe(server.address, spec)).ok).toBe(true);
  });

  it("replaces a connection that stays silent past its bound (the next one is a new connection)", async () => {
    const server = await pingServer();
    const probe = new PersistentProbe(() => {}, 120);
    close = async () => { probe.close(); await server.close(); };
    await probe.probe(server.address, spec);
    const id = probe.connection(server.address);
    server.freeze();
    const errors: string[] = [];
    for (let i = 0; i < 4; i++) errors.push((await probe.probe(server.address, spec)).error ?? "");
    expect(errors.filter((e) => /a new probe connection next time/.test(e))).toHaveLength(1);
    server.thaw();
    expect((await probe.probe(server.address, spec)).ok).toBe(true);
    expect(probe.connection(server.address)).not.toBe(id);
  });
});

describe("a primary Envoy failed with nobody to take over", () => {
  let stop: (() => void) | undefined;
  afterEach(() => { stop?.(); stop = undefined; });
  const member = (name: string, role: Member["role"], port: number): Member => ({ name, address: `127.0.0.1:${port}`, role, alive: true, lagBytes: 0 });

  /** A controller over a primary and a detached replica; Envoy fails the primary when told to,
   *  and the probe connection's id is whatever the test sets. */
  function setUp() {
    const state = new ControllerState(undefined);
    state.declare({ name: "kv", members: [member("p", "primary", 7001), member("a", "detached", 7002)] });
    const failed = new Set<string>();
    let connection: number | undefined = 1;
    const envoy = { source: "envoy", read: async () => ({ reading: { source: "envoy", instance: "1", counters: {} }, failedHosts: new Map([["kv_primary", failed]]) }) };
    const xds = new XdsRestServer();
    const controller = new Controller({
      state, xds, relay: new RelayClient("http://127.0.0.1:1", undefined, 20), envoys: [envoy as any],
      probe: async () => ({ ok: true, rttMs: 1 }), healthOf: () => ({ intervalMs: 20, timeoutMs: 20, unhealthyThreshold: 2, healthyThreshold: 1 }),
      relayPollMs: 20, log: () => {}, connectionOf: () => connection,
    });
    controller.start();
    stop = () => controller.stop();
    /** Envoy's priority 0 now: the primary's port, or "empty". */
    const priority0 = () => {
      const lb = ((xds as any).snapshot.endpoints.get("kv_primary").endpoints as any[]).find((e) => e.priority === 0).lb_endpoints;
      return lb.length ? lb[0].endpoint.address.socket_address.port_value : "empty";
    };
    const readmitted = () => state.history("kv").filter((e) => e.kind === "readmitted").length;
    return {
      state, priority0, readmitted,
      failInEnvoy: () => failed.add("127.0.0.1:7001"),
      restart: () => { connection = (connection ?? 0) + 1; },
    };
  }

  it("is left out of one snapshot (Envoy forgets the failed host) when its probe connection is the one Envoy's primary had", async () => {
    const t = setUp();
    await sleep(200); // Envoy uses the primary, on probe connection 1
    t.failInEnvoy();
    await sleep(300);
    expect(t.state.history("kv").map((e) => e.kind)).toEqual(["no_candidate", "readmitted"]);
    expect(t.priority0()).toBe("empty"); // no Envoy accepts the version here, so it stays out
    expect(t.state.get("kv")!.members.map((m) => `${m.name}:${m.role}`)).toEqual(["p:primary", "a:detached"]);
  });

  it.each([
    ["restarted before Envoy failed it (a new probe connection)", "before"],
    ["restarted after Envoy failed it", "after"],
  ])("stays out when it %s", async (_what, when) => {
    const t = setUp();
    await sleep(200);
    if (when === "before") t.restart();
    t.failInEnvoy();
    if (when === "after") t.restart();
    await sleep(300);
    expect(t.readmitted()).toBe(0);
    expect(t.priority0()).toBe(7001);
  });
});
