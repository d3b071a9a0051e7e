// Issue 8, defect 5, on real Envoy, the relay and the sample key-value servers (processes):
// with the reply check on, 1,000 connections whose clients half-close right after their
// requests each end with exactly one verdict per replica (matched, diverged or given up, all
// counted), never none; replicas that answer the same are all matched and completed, and a
// replica whose data differs is diverged, never counted completed.
import { describe, it, expect, afterAll, beforeAll } from "vitest";
import { connect } from "node:net";
import { startStack, kvExchange, type Stack } from "../support/stack.ts";
import { waitFor } from "../support/ports.ts";

const CONNECTIONS = 1000;

/** One connection: its requests, then a half-close; resolves with every answer once the server closed. */
function halfClosed(port: number, lines: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: "127.0.0.1", allowHalfOpen: true }, () => s.end(lines.map((l) => l + "\n").join("")));
    let answer = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => { answer += d; });
    s.on("end", () => s.end());
    s.on("close", () => resolve(answer));
    s.on("error", reject);
  });
}

describe("one reply verdict per replica and connection (issue 8, defect 5)", () => {
  let stack: Stack;
  beforeAll(async () => { stack = await startStack({ replicas: 2 }); }); // reply check on
  afterAll(async () => { await stack?.close(); });

  const verdicts = async (replica: string) => {
    const m = (name: string) => stack.relay.metric(name, { replica });
    return {
      matched: await m("lockstep_relay_replica_replies_matched_total"),
      diverged: await m("lockstep_relay_replica_divergences_total"),
      givenUp: await m("lockstep_relay_replica_reply_checks_abandoned_total"),
      completed: await stack.envoy.stat(`wasmcustom.lockstep.${stack.service}.replica.${replica}.completed`),
    };
  };
  const settled = () => waitFor("every mirror stream to finish", async () =>
    (await stack.relay.metric("lockstep_relay_streams_active")) === 0 && (await stack.envoy.stat(`wasmcustom.lockstep.${stack.service}.streams_active`)) === 0, 30_000);

  it(`gives each of ${CONNECTIONS} half-closed connections exactly one verdict per replica: all matched and completed`, async () => {
    await settled();
    const before = { m1: await verdicts("m1"), m2: await verdicts("m2") }; // the stack's own start-up connections
    let next = 0;
    await Promise.all(Array.from({ length: 12 }, async () => {
      while (next < CONNECTIONS) {
        const i = next++;
        const answer = await halfClosed(stack.envoy.listenerPort, [`SET user:${i} ${"v".repeat(i % 300)}`, `INCR logins:${i}`, `GET user:${i}`]);
        expect(answer.split("\n").filter(Boolean)).toHaveLength(3);
      }
    }));
    await settled();
    for (const r of ["m1", "m2"] as const) {
      const now = await verdicts(r);
      const v = { matched: now.matched - before[r].matched, diverged: now.diverged - before[r].diverged, givenUp: now.givenUp - before[r].givenUp, completed: now.completed - before[r].completed };
      console.log(`${r}: ${JSON.stringify(v)}`);
      expect(v.matched + v.diverged + v.givenUp, `${r}: verdicts`).toBe(CONNECTIONS);
      expect(v).toEqual({ matched: CONNECTIONS, diverged: 0, givenUp: 0, completed: CONNECTIONS });
    }
  });

  it("never counts a replica whose replies differed as completed", async () => {
    const mirroredTo = (replica: string) => stack.relay.metric("lockstep_relay_replica_connections_total", { replica });
    const before = { m1: await verdicts("m1"), m2: await verdicts("m2"), m2Connections: await mirroredTo("m2") };
    await kvExchange(stack.members.get("m2")!.port, ["SET tampered yes"]); // m2's data differs now
    for (let i = 0; i < 50; i++) await halfClosed(stack.envoy.listenerPort, ["GET tampered", `SET t:${i} ${i}`]);
    await settled();
    // The controller takes m2 out of the set after its first divergence: connections opened
    // later do not reach it. Each one that did is diverged, none completed.
    const m2 = await verdicts("m2");
    const reached = (await mirroredTo("m2")) - before.m2Connections;
    console.log(`m2 reached by ${reached} of 50 connections before the controller took it out; verdicts ${JSON.stringify(m2)}`);
    expect(reached).toBeGreaterThan(0);
    expect(m2.diverged - before.m2.diverged).toBe(reached);
    expect(m2.matched + m2.givenUp + m2.completed).toBe(before.m2.matched + before.m2.givenUp + before.m2.completed);
    // The controller reads the relay's verdicts every 200 ms: m2 is out within a few polls.
    await waitFor("the controller to mark m2 diverged", async () => (await stack.view()).members.find((m) => m.name === "m2")?.role === "diverged", 2_000);
    const m1 = await verdicts("m1");
    expect(m1.matched - before.m1.matched).toBe(50);
    expect(m1.completed - before.m1.completed).toBe(50);
  });
});
