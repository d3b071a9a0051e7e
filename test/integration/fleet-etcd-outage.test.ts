// etcd stopped for 10 s under client traffic (issue 12): Envoys keep serving the endpoints they
// have, no controller decides (the leader's lease runs out and it steps down; nobody is elected
// while etcd cannot be reached), the API says so (store.ok false, leader null), and once etcd is
// back a new election is held and decisions resume. Then one Envoy's relay dies: the bytes it
// missed take every replica out of sync for the whole service, on both Envoys.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { startFleet, type Fleet } from "../support/fleet.ts";
import { startWrites, lostWrites } from "../support/writers.ts";
import { waitFor } from "../support/ports.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("etcd unreachable", () => {
  let fleet: Fleet;
  beforeAll(async () => { fleet = await startFleet({ controllers: 3, envoys: 2, replicas: 2, leaseTtlSeconds: 2 }); });
  afterAll(async () => { await fleet?.close(); });

  const everyController = async () => Promise.all(fleet.controllers.map(async (c) => (await fleet.api(c.index, "GET", "/v1/services")).json));
  const promotions = async (index: number) => ((await fleet.api(index, "GET", `/v1/events?service=${fleet.service}`)).json.events as { kind: string }[])
    .filter((e) => e.kind === "promotion" || e.kind === "switchover").length;

  it("10 s without etcd under traffic: no failed connection, no promotion, the API says degraded; afterwards a new leader decides again", async () => {
    const leader = await fleet.waitLeader();
    const primaryBefore = (await fleet.api(leader, "GET", `/v1/services/${fleet.service}`)).json.primary;
    const promotedBefore = await promotions(leader);
    const writes = startWrites(fleet.envoys.map((e) => e.listenerPort), "o", 5);
    await sleep(500);
    const t0 = Date.now();
    await fleet.etcd.stop("SIGKILL");
    const degraded = await waitFor("every controller to say the control plane is degraded", async () => {
      const views = await everyController();
      return views.every((v) => v.leader === null && v.store.ok === false) ? views : undefined;
    }, 9000, 50);
    const degradedMs = Date.now() - t0;
    expect(degraded!.every((v) => v.store.error)).toBe(true);
    // A change is refused while nobody leads.
    const refused = await fleet.api(leader, "POST", `/v1/services/${fleet.service}/promote`, {});
    expect(refused.status).toBe(421);
    expect(refused.json.error.leader).toBeNull();
    while (Date.now() - t0 < 10_000) {
      for (const v of await everyController()) expect(v.services[0].primary).toBe(primaryBefore);
      await sleep(250);
    }
    await fleet.etcd.start();
    const tBack = Date.now();
    const next = await fleet.waitLeader();
    const electedMs = Date.now() - tBack;
    await waitFor("every controller to reach etcd again", async () => (await everyController()).every((v) => v.store.ok), 20_000, 50);
    await sleep(500);
    await writes.stop();
    console.log(`etcd outage: every controller degraded ${degradedMs} ms after etcd was killed (lease ${fleet.leaseTtlSeconds} s); ` +
      `a leader ${electedMs} ms after etcd was back; ${writes.attempts()} connections, ${writes.failures()} failed`);
    expect(writes.failures()).toBe(0);
    expect(await promotions(next)).toBe(promotedBefore);
    for (const v of await everyController()) expect(v.services[0].primary).toBe(primaryBefore);
    expect(await lostWrites(fleet.envoys[0].listenerPort, writes.acked)).toEqual([]);

    // Decisions resume: a switchover through the new leader reaches both Envoys.
    const target = (await fleet.api(next, "GET", `/v1/services/${fleet.service}`)).json.successor;
    const switched = await fleet.api(next, "POST", `/v1/services/${fleet.service}/promote`, { member: target });
    expect(switched.status).toBe(200);
    await waitFor("both Envoys on the new primary", async () => {
      for (let e = 0; e < fleet.envoys.length; e++) if (await fleet.whoServes(e) !== target) return false;
      return true;
    }, 20_000, 50);
  });

  it("a loss on one Envoy's relay takes every replica of the service out of sync, on every Envoy", async () => {
    const leader = await fleet.waitLeader();
    const before = (await fleet.api(leader, "GET", `/v1/services/${fleet.service}`)).json;
    const replicas = before.members.filter((m: { role: string }) => m.role === "replica").map((m: { name: string }) => m.name);
    expect(replicas.length).toBeGreaterThan(0);
    // Envoy 1's relay dies: its connections reach no replica (its filter counts them); Envoy 0's
    // relay saw nothing wrong.
    await fleet.relays[1].kill("SIGKILL");
    const writes = startWrites([fleet.envoys[1].listenerPort], "r", 20);
    const detached = await waitFor("every replica out of sync on every controller", async () => {
      const views = await Promise.all(fleet.controllers.map(async (c) => (await fleet.api(c.index, "GET", `/v1/services/${fleet.service}`)).json));
      return views.every((v) => replicas.every((r: string) => v.members.find((m: { name: string }) => m.name === r).role === "detached")) ? views : undefined;
    }, 20_000, 50);
    await writes.stop();
    expect(detached![0].primary).toBe(before.primary);
    const events = (await fleet.api(leader, "GET", `/v1/events?service=${fleet.service}`)).json.events as { kind: string; detail: string }[];
    expect(events.filter((e) => e.kind === "detach").map((e) => e.detail).join("\n")).toMatch(/reached no replica \(envoy 127\.0\.0\.1:\d+\)/);
    // Neither Envoy keeps them as standbys.
    await waitFor("both Envoys without standbys", async () => {
      for (const e of fleet.envoys) {
        const json = await (await fetch(`http://127.0.0.1:${e.adminPort}/clusters?format=json`)).json() as any;
        const hosts = json.cluster_statuses.find((c: any) => c.name === `${fleet.service}_primary`)?.host_statuses ?? [];
        if (hosts.length !== 1) return false;
      }
      return true;
    }, 20_000, 50);
  });
});
