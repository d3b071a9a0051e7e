// The controller's membership rules as production uses them, and its store, without
// processes: a primary failure promotes the member the controller names (the designated
// successor, the one Envoy already falls back to), never one it would rank better at that
// moment; an API switchover with no member named promotes the best replica (least lag, then
// RTT); out-of-sync members are never promoted; a stale member returns only through rejoin.
import { describe, it, expect } from "vitest";
import { mkdtempSync, writeFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promote, markOutOfSync, rejoin, admit, promotable, mirrorTargets, ModelError, type Service, type Member } from "../../controller/model/service.ts";
import { FileStore, StoreError } from "../../controller/store/file-store.ts";
import { validateStoredState, servicesFromStore } from "../../controller/store/stored-state.ts";
import { ControllerState } from "../../controller/state.ts";
import { Controller } from "../../controller/controller.ts";
import { XdsRestServer } from "../../controller/xds/rest-server.ts";
import { RelayClient } from "../../controller/relay/client.ts";
import type { HealthChecker } from "../../controller/health/checker.ts";
import type { ProbeResult } from "../../controller/health/probe.ts";

const m = (name: string, role: Member["role"], extra: Partial<Member> = {}): Member => ({ name, address: `127.0.0.1:${7000 + name.charCodeAt(0)}`, role, alive: true, lagBytes: 0, ...extra });
const svc = (...members: Member[]): Service => ({ name: "kv", members });
const roles = (s: Service) => s.members.map((x) => `${x.name}:${x.role}`);

describe("a primary failure (the controller's failover)", () => {
  /** A controller over `members` with a fake probe (no process, no real time): the primary's
   *  probe fails when `down` names it. */
  function controllerOf(members: Member[]) {
    const state = new ControllerState(undefined);
    state.declare({ name: "kv", members });
    const down = new Set<string>();
    const probe = async (address: string): Promise<ProbeResult> => (down.has(address) ? { ok: false, error: "refused" } : { ok: true, rttMs: 1 });
    const xds = new XdsRestServer();
    const controller = new Controller({
      state, xds, relay: new RelayClient("http://127.0.0.1:1"), probe,
      healthOf: () => ({ intervalMs: 100, timeoutMs: 50, unhealthyThreshold: 2, healthyThreshold: 2 }), relayPollMs: 1_000_000, log: () => {}, now: () => 0,
    });
    (controller as any).publish();
    const checker = () => (controller as any).checkers.get("kv") as HealthChecker;
    /** Envoy's endpoints for the service: [EDS priority, port] in order. */
    const eds = () => ((xds as any).snapshot.endpoints.get("kv_primary").endpoints as any[]).map((e) => [e.priority, e.lb_endpoints[0].endpoint.address.socket_address.port_value]);
    const fail = async (member: string) => {
      // This controller process sees every member up first (only then is one promotable).
      for (let i = 0; i < 2; i++) await checker().round();
      down.add(state.get("kv")!.members.find((x) => x.name === member)!.address);
      for (let i = 0; i < 3; i++) await checker().round();
    };
    return { state, controller, eds, fail };
  }

  it("promotes the designated successor, the member Envoy already falls back to, even when another replica now ranks slightly better", async () => {
    const { state, controller, eds, fail } = controllerOf([m("p", "primary"), m("a", "replica"), m("b", "replica", { lagBytes: 1000 })]);
    expect(controller.successor("kv")).toBe("a");
    state.observe("kv", "a", { lagBytes: 1000 }); // b is ahead now, but not clearly: a stays the successor
    state.observe("kv", "b", { lagBytes: 0 });
    expect(controller.successor("kv")).toBe("a");
    expect(eds()).toEqual([[0, 7112], [1, 7097], [2, 7098]]); // p, then a, then b
    await fail("p");
    expect(roles(state.get("kv")!)).toEqual(["p:stale", "a:primary", "b:replica"]);
    expect(state.history("kv").map((e) => `${e.kind} ${e.member}`)).toEqual(["promotion a"]);
    expect(eds()[0]).toEqual([0, 7097]); // Envoy's priority 0 is the member the controller calls primary
  });

  it("never promotes a member that is out of sync; with none left it records that nobody could take over", async () => {
    const { state, fail } = controllerOf([m("p", "primary"), m("a", "detached"), m("b", "diverged"), m("c", "stale"), m("d", "joining")]);
    await fail("p");
    expect(roles(state.get("kv")!)).toEqual(["p:primary", "a:detached", "b:diverged", "c:stale", "d:joining"]);
    expect(state.history("kv").map((e) => e.kind)).toEqual(["no_candidate"]);
  });

  it("shows a member that missed bytes and then went down as stale (a killed replica's relay connections break before its probe fails)", async () => {
    const { state, fail } = controllerOf([m("p", "primary"), m("a", "replica"), m("b", "detached"), m("c", "diverged")]);
    await fail("b");
    await fail("c");
    expect(roles(state.get("kv")!)).toEqual(["p:primary", "a:replica", "b:stale", "c:diverged"]);
    expect(state.history("kv").map((e) => `${e.kind} ${e.member}`)).toEqual(["stale b"]);
  });

  it("follows Envoy when its checks failed the primary and every standby: promotes none of them, takes the standbys out, and keeps running", async () => {
    const state = new ControllerState(undefined);
    const members = [m("p", "primary"), m("a", "replica"), m("b", "replica")];
    state.declare({ name: "kv", members });
    const logs: string[] = [];
    const envoy = {
      source: "envoy 127.0.0.1:1",
      read: async () => ({ reading: { source: "envoy 127.0.0.1:1", instance: "1", counters: {} }, failedHosts: new Map([["kv_primary", new Set(members.map((x) => x.address))]]) }),
    };
    const controller = new Controller({
      state, xds: new XdsRestServer(), relay: new RelayClient("http://127.0.0.1:1", undefined, 50), envoys: [envoy as any],
      probe: async () => ({ ok: true, rttMs: 1 }), healthOf: () => ({ intervalMs: 20, timeoutMs: 50, unhealthyThreshold: 2, healthyThreshold: 1 }),
      relayPollMs: 20, log: (l) => logs.push(l), now: () => 0,
    });
    controller.start();
    try {
      await new Promise((r) => setTimeout(r, 300)); // several polls, each reading Envoy's verdicts
      expect(roles(state.get("kv")!)).toEqual(["p:primary", "a:stale", "b:stale"]);
      expect(state.history("kv").filter((e) => e.kind === "promotion")).toEqual([]);
      expect(state.history("kv").filter((e) => e.kind === "no_candidate")).toHaveLength(1);
      expect(logs.filter((l) => l.startsWith("poll: failed"))).toEqual([]);
    } finally { controller.stop(); }
  });

  it("promotes exactly the member it names (the successor), not the replica the model would rank first", () => {
    const s = svc(m("p", "primary"), m("a", "replica"), m("b", "replica", { lagBytes: 5 }));
    const { service, promoted, demoted } = promote(s, "failure", "b");
    expect([promoted.name, demoted?.name, demoted?.role]).toEqual(["b", "p", "stale"]);
    expect(mirrorTargets(service).map((x) => x.name)).toEqual(["a"]); // the failed primary gets no more bytes
    expect(promotable(service).map((x) => x.name)).toEqual(["a"]);
  });
});

describe("a planned switchover through the API", () => {
  const s = svc(m("p", "primary"), m("a", "replica"), m("b", "replica", { lagBytes: 5 }));

  it("with a member named: it leads, and the old primary stays a replica for new connections", () => {
    const { service, demoted } = promote(s, "switchover", "b");
    expect(demoted?.role).toBe("replica");
    expect(mirrorTargets(service).map((x) => x.name).sort()).toEqual(["a", "p"]);
  });

  it("with none named: the least-lagging live replica in sync leads, then the lowest RTT, never a dead, stale, detached, diverged or joining one", () => {
    const pick = (...members: Member[]) => promote(svc(m("p", "primary"), ...members), "switchover").promoted.name;
    expect(pick(m("a", "replica", { lagBytes: 10, rttMs: 0.1 }), m("b", "replica", { lagBytes: 0, rttMs: 0.9 }), m("c", "replica", { lagBytes: 0, rttMs: 0.2 }),
      m("d", "replica", { alive: false }), m("e", "diverged"), m("f", "stale"), m("g", "detached"), m("h", "joining"))).toBe("c");
    expect(pick(m("b", "replica"), m("a", "replica", { rttMs: 5 }))).toBe("a"); // an unmeasured RTT ranks last
    expect(pick(m("b", "replica"), m("a", "replica"))).toBe("a"); // full ties: by name
  });
});

describe("refusals and rejoining", () => {
  const s = svc(m("p", "primary"), m("a", "replica"), m("b", "replica", { lagBytes: 5 }));

  it.each([
    ["an unknown member", (x: Service) => promote(x, "switchover", "zz"), "NO_SUCH_MEMBER"],
    ["the primary itself", (x: Service) => promote(x, "switchover", "p"), "IS_PRIMARY"],
    ["a diverged member", (x: Service) => promote(markOutOfSync(x, "a", "diverged"), "switchover", "a"), "NOT_PROMOTABLE"],
    ["a stale member", (x: Service) => promote(markOutOfSync(x, "a", "stale"), "switchover", "a"), "NOT_PROMOTABLE"],
    ["nobody left", (x: Service) => promote(markOutOfSync(markOutOfSync(x, "a", "detached"), "b", "stale"), "switchover"), "NO_CANDIDATE"],
  ])("refuses to promote %s, leaving the service as it was", (_what, act, code) => {
    const before = JSON.stringify(s);
    expect(() => act(s)).toThrow(ModelError);
    try { act(s); } catch (err) { expect((err as ModelError).code).toBe(code); }
    expect(JSON.stringify(s)).toBe(before);
  });

  it("takes a stale member back only through an explicit rejoin, as joining (mirrored to, not promotable) until admitted", () => {
    const failed = promote(s, "failure", "a").service;
    expect(failed.members.find((x) => x.name === "p")?.role).toBe("stale");
    const joining = rejoin(failed, "p");
    expect(joining.members.find((x) => x.name === "p")?.role).toBe("joining");
    expect(mirrorTargets(joining).map((m) => m.name)).toContain("p");
    expect(promotable(joining).map((m) => m.name)).not.toContain("p");
    expect(() => rejoin(joining, "p")).toThrow('"p" is already joining');
    const back = admit(joining, "p");
    expect(back.members.find((x) => x.name === "p")?.role).toBe("replica");
    expect(() => rejoin(back, "p")).toThrow('"p" is already replica');
    expect(() => markOutOfSync(back, "a", "diverged")).toThrow("is the primary");
  });
});

describe("file store", () => {
  const validate = (raw: unknown) => {
    if (typeof raw !== "object" || raw === null || (raw as any).schema !== 1) throw new StoreError("not a lockstep store (schema 1)");
    return raw as { schema: 1; services: Service[] };
  };

  it("round-trips a document and leaves no temporary file behind", () => {
    const dir = mkdtempSync(join(tmpdir(), "lockstep-store-"));
    const store = new FileStore(join(dir, "state", "controller.json"), validate);
    expect(store.load()).toBeUndefined();
    const doc = { schema: 1 as const, services: [svc(m("p", "primary"), m("a", "replica"))] };
    store.save(doc);
    store.save({ ...doc, services: [promote(doc.services[0], "failure", "a").service] });
    expect(store.load()?.services[0].members.map((x) => x.role)).toEqual(["stale", "primary"]);
    expect(readdirSync(join(dir, "state"))).toEqual(["controller.json"]);
  });

  it("refuses a corrupt or foreign file instead of starting empty", () => {
    const dir = mkdtempSync(join(tmpdir(), "lockstep-store-"));
    writeFileSync(join(dir, "bad.json"), "{ half");
    expect(() => new FileStore(join(dir, "bad.json"), validate).load()).toThrow("not valid JSON");
    writeFileSync(join(dir, "other.json"), '{"schema": 9}');
    expect(() => new FileStore(join(dir, "other.json"), validate).load()).toThrow("not a lockstep store");
  });
});

describe("a store written by an older version", () => {
  const stored = (...members: { name: string; address: string; role: string }[]) =>
    validateStoredState({ schema: 1, services: [{ name: "kv", members: members.map((x) => ({ ...x, alive: true, lagBytes: 0 })) }], events: [] });

  it("loses replicas no probe, relay or Envoy could reach, and keeps the rest in canonical spelling, health unknown", () => {
    const { services, dropped } = servicesFromStore(stored(
      { name: "p", address: "127.0.0.1:07001", role: "primary" }, { name: "a", address: "127.0.0.1:99999", role: "replica" },
      { name: "b", address: "localhost:7003", role: "stale" }, { name: "c", address: "[::ffff:127.0.0.1]:7001", role: "replica" },
      { name: "d", address: "127.0.0.1:7004", role: "replica" }), "s.json");
    expect(services[0].members).toEqual([{ name: "p", address: "127.0.0.1:7001", role: "primary", lagBytes: 0 }, { name: "d", address: "127.0.0.1:7004", role: "replica", lagBytes: 0 }]);
    expect(dropped.map((d) => `${d.member}: ${d.reason}`)).toEqual([
      'a: its address "127.0.0.1:99999" is not an endpoint: "address" has port 99999: a port is 1 to 65535',
      'b: its address "localhost:7003" is not an endpoint: "address" names the host "localhost"; lockstep takes IP addresses only, as Envoy\'s EDS does: write the address (e.g. "127.0.0.1:7003" for localhost)',
      'c: its address [::ffff:127.0.0.1]:7001 is 127.0.0.1:7001, the address of "p"',
    ]);
  });

  it("refuses to start from a primary no one could reach, saying what to do", () => {
    expect(() => servicesFromStore(stored({ name: "p", address: "999.1.1.1:80", role: "primary" }), "s.json"))
      .toThrow(/store s\.json: the primary "p" of service "kv": .* write its IP address/);
  });

  it.each([
    [{ schema: 1, services: [{ name: "kv", members: [{ name: "p", address: 1, role: "primary" }] }], events: [] }, "services[0].members[0]"],
    [{ schema: 1, services: [{ name: "kv", members: [{ name: "p", address: "127.0.0.1:1", role: "boss" }] }], events: [] }, "services[0].members[0]"],
    [{ schema: 1, services: [{ name: "k v", members: [] }], events: [] }, "services[0]"],
    [{ schema: 1, services: [], events: [{ at: 1 }] }, "events[0]"],
  ])("refuses a malformed document instead of guessing (%#)", (raw, where) => {
    expect(() => validateStoredState(raw)).toThrow(StoreError);
    expect(() => validateStoredState(raw)).toThrow(where);
  });
});
