// Several controllers on one etcd, two Envoys each with its relay (issue 12): the leader is
// killed (-9) while a primary fails over, again and again; a frozen leader (SIGSTOP) wakes up
// after another took over; a follower refuses changes with the leader's address. What must hold:
// a new leader after the lease, exactly one promotion per failure, both Envoys on the same
// primary, nothing a client was told was written is lost, and a deposed leader publishes nothing.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { startFleet, type Fleet } from "../support/fleet.ts";
import { startWrites, lostWrites, type WriteLoad } from "../support/writers.ts";
import { waitFor } from "../support/ports.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function liveController(fleet: Fleet, except?: number): Promise<number> {
  return fleet.controllers.find((c) => c.process && c.index !== except)!.index;
}

async function serviceView(fleet: Fleet, index: number) {
  return (await fleet.api(index, "GET", `/v1/services/${fleet.service}`)).json;
}

async function promotions(fleet: Fleet, index: number): Promise<{ member: string; detail: string }[]> {
  const { json } = await fleet.api(index, "GET", `/v1/events?service=${fleet.service}`);
  return json.events.filter((e: { kind: string }) => e.kind === "promotion");
}

/** The primary's address each Envoy has at priority 0 of the service's EDS cluster. */
async function envoyPrimaries(fleet: Fleet): Promise<string[]> {
  return Promise.all(fleet.envoys.map(async (e) => {
    const json = await (await fetch(`http://127.0.0.1:${e.adminPort}/clusters?format=json`)).json() as any;
    const cluster = json.cluster_statuses.find((c: any) => c.name === `${fleet.service}_primary`);
    const p0 = cluster?.host_statuses?.find((h: any) => (h.priority ?? 0) === 0)?.address?.socket_address;
    return p0 ? `${p0.address}:${p0.port_value}` : "none";
  }));
}

/** The replica set each relay has for the service. */
async function relaySets(fleet: Fleet): Promise<string[]> {
  return Promise.all(fleet.relays.map(async (r) => {
    const json = await (await fetch(`http://127.0.0.1:${r.metricsPort}/v1/services/${fleet.service}/replicas`)).json() as { replicas?: { name: string }[] | null };
    return (json.replicas ?? []).map((m) => m.name).sort().join(",");
  }));
}

describe("three controllers on one etcd, two Envoys with their relays", () => {
  let fleet: Fleet;
  let writes: WriteLoad;
  beforeAll(async () => {
    fleet = await startFleet({ controllers: 3, envoys: 2, replicas: 4, leaseTtlSeconds: 2 });
    writes = startWrites(fleet.envoys.map((e) => e.listenerPort), "w");
  });
  afterAll(async () => { await writes?.stop(); await fleet?.close(); });

  it("a follower refuses a change with 421 NOT_LEADER and the leader's address; the leader takes changes", async () => {
    const leader = await fleet.waitLeader();
    const follower = (leader + 1) % fleet.controllers.length;
    const refused = await fleet.api(follower, "POST", `/v1/services/${fleet.service}/promote`, { member: "m4" });
    expect(refused.status).toBe(421);
    expect(refused.json.error).toMatchObject({ code: "NOT_LEADER", leader: fleet.controllers[leader].api });
    // The leader takes calls (this one refused for what it asks, not for where it was sent).
    expect((await fleet.api(leader, "POST", `/v1/services/${fleet.service}/members/nobody/rejoin`)).json.error.code).toBe("NO_SUCH_MEMBER");
    const { json } = await fleet.api(follower, "GET", "/v1/services");
    expect(json.leader).toMatchObject({ api: fleet.controllers[leader].api, self: false });
    expect(json.store.ok).toBe(true);
  });

  it("kill -9 of the leader during each of three primary failovers: a new leader, one promotion per failure, both Envoys on the promoted member, no acknowledged write lost", async () => {
    const figures: string[] = [];
    // The leader dies this long after the primary: before it saw the failure, while deciding, after.
    for (const delayMs of [0, 60, 200]) {
      const leader = await fleet.waitLeader();
      const before = await serviceView(fleet, leader);
      const promotedBefore = (await promotions(fleet, leader)).length;
      const failed = fleet.members.get(before.primary)!;
      const successor: string = before.successor;
      expect(successor).toBeTruthy();
      const t0 = Date.now();
      await failed.process.kill("SIGKILL");
      await sleep(delayMs);
      const tLeader = Date.now();
      await fleet.killController(leader, "SIGKILL");
      const next = await fleet.waitLeader();
      const electedMs = Date.now() - tLeader;
      const after = await waitFor("the promotion stored", async () => {
        const v = await serviceView(fleet, next);
        return v.primary === successor && v.members.find((m: { name: string }) => m.name === failed.name)?.role === "stale" ? v : undefined;
      }, 30_000, 20);
      const recordedMs = Date.now() - t0;
      expect(after.primary).toBe(successor);
      const promoted = await promotions(fleet, next);
      expect(promoted.length - promotedBefore).toBe(1);
      expect(promoted.at(-1)!.member).toBe(successor);
      const successorAddress = fleet.members.get(successor)!.address;
      await waitFor("both Envoys on the promoted member", async () => (await envoyPrimaries(fleet)).every((a) => a === successorAddress), 20_000, 50);
      for (let e = 0; e < fleet.envoys.length; e++) expect(await fleet.whoServes(e)).toBe(successor);
      figures.push(`leader killed ${delayMs} ms after the primary: new leader after ${electedMs} ms (lease ${fleet.leaseTtlSeconds} s), promotion stored ${recordedMs} ms after the primary's kill`);
      // Back to three controllers for the next round; the restarted one follows the stored state.
      await fleet.startController(leader);
      await waitFor("the restarted controller to hold the stored state", async () => (await serviceView(fleet, leader)).primary === successor, 20_000, 50);
    }
    console.log(`fleet failover:\n  ${figures.join("\n  ")}`);
    await writes.stop();
    const lost = await lostWrites(fleet.envoys[0].listenerPort, writes.acked);
    console.log(`fleet failover: ${writes.acked.size} writes acknowledged of ${writes.attempts()} (${writes.failures()} connections failed, on the killed primaries), ${lost.length} lost`);
    expect(writes.acked.size).toBeGreaterThan(100);
    expect(lost).toEqual([]);
  });

  it("a frozen leader (SIGSTOP) that wakes up after another took over publishes nothing", async () => {
    const leader = await fleet.waitLeader();
    const before = await serviceView(fleet, leader);
    const failed = fleet.members.get(before.primary)!;
    const successor: string = before.successor;
    const promotedBefore = (await promotions(fleet, leader)).length;
    const frozen = fleet.controllers[leader].process!;
    // The leader freezes, then the primary dies: the frozen leader wakes with the failure
    // still to act on (its probe connection closed, its timers due), from a view the new
    // leader has replaced.
    frozen.child.kill("SIGSTOP");
    const outputAtFreeze = frozen.output().length;
    await sleep(20);
    await failed.process.kill("SIGKILL");
    try {
      const next = (await waitFor("another leader", async () => {
        const l = await fleet.leader();
        return l !== undefined && l !== leader ? { l } : undefined;
      }, 30_000, 20))!.l;
      await waitFor("the new leader's promotion", async () => (await serviceView(fleet, next)).primary === successor, 30_000, 20);
      const successorAddress = fleet.members.get(successor)!.address;
      // Every Envoy names every controller: one whose fetch went to the frozen one times out and
      // asks another, so all hold the new leader's endpoints while it is still frozen.
      await waitFor("both Envoys on the promoted member while the old leader is frozen", async () => (await envoyPrimaries(fleet)).every((a) => a === successorAddress), 20_000, 50);
      const setNow = (await relaySets(fleet))[0];
      frozen.child.kill("SIGCONT");
      // For three seconds after it wakes: Envoys, relays and the store stay as the new leader set them.
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline) {
        expect(await envoyPrimaries(fleet)).toEqual(fleet.envoys.map(() => successorAddress));
        expect(await relaySets(fleet)).toEqual(fleet.relays.map(() => setNow));
        await sleep(100);
      }
      const afterWake = frozen.output().slice(outputAtFreeze);
      console.log(`frozen leader, after it woke:\n${afterWake.split("\n").filter((l) => /leader:|failover:|health:|store:/.test(l)).join("\n")}`);
      expect(afterWake).toMatch(/leader: stepping down/);
      expect(afterWake).not.toMatch(/failover: .* promoted/);
      const promoted = await promotions(fleet, next);
      expect(promoted.length - promotedBefore).toBe(1);
      const view = await serviceView(fleet, leader);
      expect(view.primary).toBe(successor);
      expect((await fleet.api(leader, "GET", "/v1/services")).json.leader.self).toBe(false);
    } finally {
      frozen.child.kill("SIGCONT");
    }
  });
});
