// Health checks and the controller's decisions with a fake probe and no real time: thresholds,
// no stacked probes, and who is promoted when the primary's verdict turns.
import { describe, it, expect } from "vitest";
import { HealthChecker, type HealthSettings } from "../../controller/health/checker.ts";
import type { ProbeResult } from "../../controller/health/probe.ts";
import { ControllerState } from "../../controller/state.ts";
import { Controller } from "../../controller/controller.ts";
import { XdsRestServer } from "../../controller/xds/rest-server.ts";
import { RelayClient } from "../../controller/relay/client.ts";
import type { Member } from "../../controller/model/service.ts";

const SETTINGS: HealthSettings = { intervalMs: 100, timeoutMs: 50, unhealthyThreshold: 2, healthyThreshold: 2 };
const noTimers = { setInterval: () => 0, clearInterval: () => {} };

describe("health checker", () => {
  it("turns a member down after unhealthyThreshold failures in a row and up after healthyThreshold successes", async () => {
    const answers: Record<string, ProbeResult> = { a: { ok: true, rttMs: 0.5 } };
    const verdicts: string[] = [];
    const rtts: number[] = [];
    const checker = new HealthChecker(SETTINGS, async (address) => answers[address], {
      onVerdict: (key, healthy) => verdicts.push(`${key}:${healthy ? "up" : "down"}`),
      onRtt: (_key, ms) => rtts.push(ms),
    }, noTimers);
    checker.setTargets([{ key: "m", address: "a" }]);
    await checker.round();
    expect(checker.healthy("m")).toBeUndefined(); // one success is not yet a verdict
    await checker.round();
    expect(verdicts).toEqual(["m:up"]);
    answers.a = { ok: false, error: "refused" };
    await checker.round();
    expect(checker.healthy("m")).toBe(true); // one failure is not enough
    answers.a = { ok: true, rttMs: 0.7 };
    await checker.round();
    answers.a = { ok: false, error: "refused" };
    await checker.round();
    await checker.round();
    expect(verdicts).toEqual(["m:up", "m:down"]);
    expect(rtts).toEqual([0.5, 0.5, 0.7]);
  });

  it("never stacks probes of a member whose probe is still running", async () => {
    let started = 0;
    let finish!: () => void;
    const checker = new HealthChecker(SETTINGS, () => { started++; return new Promise((r) => { finish = () => r({ ok: true }); }); },
      { onVerdict: () => {}, onRtt: () => {} }, noTimers);
    checker.setTargets([{ key: "m", address: "a" }]);
    const first = checker.round();
    await checker.round();
    await checker.round();
    expect(started).toBe(1);
    finish();
    await first;
  });
});

describe("controller decisions", () => {
  const member = (name: string, role: Member["role"], extra: Partial<Member> = {}): Member => ({ name, address: `127.0.0.1:${7000 + Number(name.slice(1))}`, role, alive: true, lagBytes: 0, ...extra });

  let clock = 0;
  function setUp(members: Member[]) {
    const state = new ControllerState(undefined);
    state.declare({ name: "kv", members });
    // Live measurements are never declared: they come from this process's probes and the relay.
    for (const { name, alive, lagBytes, rttMs } of members) state.observe("kv", name, { alive, lagBytes, rttMs });
    const results = new Map<string, ProbeResult>(members.map((m) => [m.address, { ok: true, rttMs: 1 }]));
    const xds = new XdsRestServer();
    const controller = new Controller({
      state, xds, relay: new RelayClient("http://127.0.0.1:1"), probe: async (address) => results.get(address)!,
      healthOf: () => SETTINGS, relayPollMs: 1_000_000, log: () => {}, now: () => clock,
    });
    (controller as any).publish();
    const checker = () => (controller as any).checkers.get("kv") as HealthChecker;
    return { state, xds, controller, results, checker };
  }

  it("orders standbys by lag, then RTT, and promotes the one Envoy falls back to when the primary fails", async () => {
    const { state, xds, controller, results, checker } = setUp([member("m0", "primary"), member("m1", "replica", { lagBytes: 1 << 20 }), member("m2", "replica"), member("m3", "stale")]);
    expect(controller.successor("kv")).toBe("m2");
    const cla = xds["snapshot" as keyof XdsRestServer] as any;
    expect(cla.endpoints.get("kv_primary").endpoints.map((e: any) => [e.priority, e.lb_endpoints[0].endpoint.address.socket_address.port_value])).toEqual([[0, 7000], [1, 7002], [2, 7001]]);
    results.set("127.0.0.1:7000", { ok: false, error: "refused" });
    for (let i = 0; i < 3; i++) await checker().round();
    const s = state.get("kv")!;
    expect(s.members.map((m) => `${m.name}:${m.role}`)).toEqual(["m0:stale", "m1:replica", "m2:primary", "m3:stale"]);
    expect(state.history("kv").map((e) => e.kind)).toEqual(["promotion"]);
  });

  it("keeps the designated successor through RTT noise, and replaces it only once another is clearly better for 2 s", () => {
    clock = 0;
    const { state, controller } = setUp([member("m0", "primary"), member("m1", "replica", { rttMs: 1 }), member("m2", "replica", { rttMs: 1.2 })]);
    expect(controller.successor("kv")).toBe("m1");
    state.observe("kv", "m2", { rttMs: 0.6 }); // better, but not clearly
    clock = 5000;
    state.observe("kv", "m1", { rttMs: 1.1 });
    expect(controller.successor("kv")).toBe("m1");
    state.observe("kv", "m1", { rttMs: 4 }); // now clearly worse...
    clock = 6000;
    state.observe("kv", "m2", { rttMs: 0.5 });
    expect(controller.successor("kv")).toBe("m1"); // ...but only for 1 s
    clock = 7100;
    state.observe("kv", "m2", { rttMs: 0.55 });
    expect(controller.successor("kv")).toBe("m2");
    expect(state.get("kv")!.successor).toBe("m2"); // stored: a restart publishes the same
  });

  it("records that no member could take over instead of promoting a stale or diverged one", async () => {
    const { state, results, checker } = setUp([member("m0", "primary"), member("m1", "diverged"), member("m2", "stale")]);
    results.set("127.0.0.1:7000", { ok: false, error: "refused" });
    for (let i = 0; i < 3; i++) await checker().round();
    expect(state.get("kv")!.members.map((m) => m.role)).toEqual(["primary", "diverged", "stale"]);
    expect(state.history("kv").map((e) => e.kind)).toEqual(["no_candidate"]);
  });

  it("marks a replica that fails its checks stale, and keeps it stale when it answers again", async () => {
    const { state, results, checker } = setUp([member("m0", "primary"), member("m1", "replica")]);
    results.set("127.0.0.1:7001", { ok: false, error: "refused" });
    for (let i = 0; i < 2; i++) await checker().round();
    results.set("127.0.0.1:7001", { ok: true, rttMs: 1 });
    for (let i = 0; i < 3; i++) await checker().round();
    expect(state.get("kv")!.members.find((m) => m.name === "m1")).toMatchObject({ role: "stale", alive: true });
  });
});

describe("services declared through the API", () => {
  it("are health-checked with the settings given in the call, until they are removed", async () => {
    const { startController } = await import("../../controller/server.ts");
    const { mkdtempSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const probes: { address: string; send?: string }[] = [];
    const running = await startController({
      services: [], api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, token: "t0k3n-for-test",
      storePath: join(mkdtempSync(join(tmpdir(), "lockstep-api-health-")), "s.json"), relay: { url: "http://127.0.0.1:1" },
      probe: async (address, spec) => { probes.push({ address, send: spec.send }); return { ok: true, rttMs: 1 }; },
    });
    try {
      const res = await fetch(`http://127.0.0.1:${running.apiPort}/v1/services`, {
        method: "POST", headers: { authorization: "Bearer t0k3n-for-test", "content-type": "application/json" },
        body: JSON.stringify({ name: "orders", primary: { name: "a", address: "127.0.0.1:8101" }, replicas: [], healthCheck: { send: "PING\n", expect: "PONG" } }),
      });
      expect(res.status).toBe(201);
      await new Promise((r) => setTimeout(r, 250));
      expect(probes.length).toBeGreaterThan(0);
      expect(probes.every((p) => p.address === "127.0.0.1:8101" && p.send === "PING\n")).toBe(true);
      expect(running.xds.status("orders_primary").version).not.toBeNull();

      // Removed: out of Envoy's endpoints, and no longer probed.
      const removed = await fetch(`http://127.0.0.1:${running.apiPort}/v1/services/orders`, { method: "DELETE", headers: { authorization: "Bearer t0k3n-for-test" } });
      expect(removed.status).toBe(200);
      expect(running.xds.status("orders_primary").version).toBeNull();
      const seen = probes.length;
      await new Promise((r) => setTimeout(r, 250));
      expect(probes.length - seen).toBeLessThanOrEqual(1); // at most one already under way
    } finally { await running.close(); }
  });
});
