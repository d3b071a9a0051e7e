// The controller acts on the relay's reply comparison: a replica whose replies differ from the
// primary's (here: written to directly, behind lockstep's back) is marked diverged, leaves the
// mirror set and the standbys, and cannot be promoted until an operator reseeds and rejoins it;
// the other replica is untouched and takes over if the primary fails.
import { describe, it, expect, afterAll } from "vitest";
import { startStack, kvExchange, type Stack } from "../support/stack.ts";
import { waitFor } from "../support/ports.ts";

describe("controller and reply divergence", () => {
  let stack: Stack;
  afterAll(async () => { await stack?.close(); });

  it("marks only the replica that answered differently as diverged and refuses to promote it", async () => {
    stack = await startStack({ replicas: 2 }); // reply comparison on (the default)
    const [, clean, tampered] = [...stack.members.values()];
    expect(await kvExchange(stack.envoy.listenerPort, ["SET balance 100", "INCR hits"])).toEqual(["OK", "1"]);
    await waitFor("both replicas to hold the write", async () =>
      (await Promise.all([clean, tampered].map((m) => kvExchange(m.port, ["GET balance"])))).every((a) => a[0] === "VALUE 100"));
    expect(await kvExchange(tampered.port, ["SET balance 999"])).toEqual(["OK"]); // behind lockstep's back
    // The client sees the primary's answer; the tampered replica's differs.
    expect(await kvExchange(stack.envoy.listenerPort, ["GET balance", "INCR hits"])).toEqual(["VALUE 100", "2"]);

    await waitFor(`${tampered.name} to be marked diverged`, async () => (await stack.view()).members.find((m) => m.name === tampered.name)?.role === "diverged", 10_000);
    const view = await stack.view();
    expect(view.members.find((m) => m.name === clean.name)?.role).toBe("replica");
    expect(view.successor).toBe(clean.name);
    const { json } = await stack.api("GET", `/v1/events?service=${stack.service}`);
    expect(json.events.filter((e: any) => e.kind === "diverged").map((e: any) => e.member)).toEqual([tampered.name]);
    const refused = await stack.api("POST", `/v1/services/${stack.service}/promote`, { member: tampered.name });
    expect(refused.status).toBe(409);
    expect(refused.json.error.code).toBe("NOT_PROMOTABLE");
    await waitFor("the relay to stop feeding it", async () =>
      !(await (await fetch(`http://127.0.0.1:${stack.relay.metricsPort}/v1/services/${stack.service}/replicas`)).json()).replicas.some((r: any) => r.name === tampered.name));
    expect(await stack.relay.metric("lockstep_relay_replica_divergences_total", { replica: clean.name })).toBe(0);
  });
});
