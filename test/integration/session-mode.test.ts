// Session mode (issue 11, docs/SESSION.md) on real Envoy, real processes: Envoy tunnels each
// client connection to the relay, which carries it to the primary and the replicas. When the
// primary is killed (-9) or frozen (SIGSTOP) in the middle of 200 connections' pipelined
// workloads, every connection goes on with the successor: each client's whole reply stream is
// the one a failure-free run produced, no client sees an error, and every write is on the new
// primary (and the other replica) exactly once. On the sample key-value server and on
// Debian's redis-server.
import { describe, it, expect, afterEach } from "vitest";
import { startStack, type Stack, type Backend } from "../support/stack.ts";
import { DIALECTS, runWorkload, type WorkloadOptions } from "../support/session-workload.ts";
import { HAVE_REDIS } from "../support/redis.ts";
import { waitFor } from "../support/ports.ts";
import { connect } from "node:net";
import { kvExchange } from "../../samples/kv-client.ts";

const CONNECTIONS = 200;
const ROUNDS = 60;

type Fault = "kill" | "stop";

async function relayView(stack: Stack): Promise<any> {
  return (await fetch(`http://127.0.0.1:${stack.relay.metricsPort}/v1/services/${stack.service}/replicas`)).json();
}

let stack: Stack | undefined;
afterEach(async () => { await stack?.close(); stack = undefined; });

describe.each([["kv"], ...(HAVE_REDIS || process.env.CI ? [["redis"]] : [])] as [Backend][])("session mode on %s", (backend) => {
  it.each([["kill"], ["stop"]] as [Fault][])(`${CONNECTIONS} connections mid-workload survive the primary's %s: same replies as a failure-free run, every write once on the new primary`, async (fault) => {
    stack = await startStack({ backend, replicas: 2, extra: { mode: "session" } });
    const port = stack.envoy.listenerPort;
    const d = DIALECTS[backend];
    const o: Omit<WorkloadOptions, "prefix"> = { connections: CONNECTIONS, rounds: ROUNDS, pauseMs: 10 };
    const reference = await runWorkload(port, d, { ...o, prefix: "ref" });
    expect(reference.filter((r) => r.error).map((r) => r.error)).toEqual([]);

    const progress = new Array<number>(CONNECTIONS).fill(0);
    const running = runWorkload(port, d, { ...o, prefix: "run", progress });
    await waitFor("every connection to be under way", async () => progress.every((p) => p >= 3), 20_000, 5);
    const m0 = stack.members.get("m0")!;
    const midway = progress.filter((p) => p > 0 && p < ROUNDS).length;
    const faultAt = performance.now();
    if (fault === "kill") await m0.process.kill("SIGKILL");
    else process.kill(m0.process.child.pid!, "SIGSTOP");
    const results = await running;
    console.log(`${backend}, ${fault}: ${midway} of ${CONNECTIONS} connections were mid-workload at the fault; all done ${(performance.now() - faultAt).toFixed(0)} ms after it`);
    expect(midway).toBeGreaterThanOrEqual(CONNECTIONS / 2);

    // Every client completed without an error, and got exactly the failure-free run's bytes.
    expect(results.filter((r) => r.error).map((r) => r.error)).toEqual([]);
    const differing = results.map((r, i) => (r.reply.equals(reference[i].reply) ? -1 : i)).filter((i) => i >= 0);
    expect(differing).toEqual([]);

    // The relay moved every open connection to the successor the controller named, and the
    // controller promoted that member.
    const view = await relayView(stack);
    const takeover = view.session.takeovers[0];
    console.log(`${backend}, ${fault}: relay takeover ${takeover.from} -> ${takeover.to} (${takeover.why}): ${takeover.carried} carried, ${takeover.reset} reset`);
    expect(takeover).toMatchObject({ from: "m0", to: "m1", reset: 0 });
    expect(takeover.carried).toBeGreaterThanOrEqual(midway);
    await waitFor("the controller to promote m1", async () => (await stack!.view()).primary === "m1", 10_000, 20);
    const events = (await stack.api("GET", `/v1/events?service=${stack.service}`)).json.events;
    expect(events.filter((e: any) => e.kind === "takeover")).toEqual([expect.objectContaining({ member: "m1", takeover: expect.objectContaining({ from: "m0", to: "m1", carried: takeover.carried, reset: 0 }) })]);

    // Every write of every connection is on the new primary and on the other replica, once.
    for (const member of ["m1", "m2"]) {
      const m = stack.members.get(member)!;
      for (let i = 0; i < CONNECTIONS; i += 1) {
        expect(await d.readBack(m.port, "run", i), `${member}, connection ${i}`).toEqual(d.expected(i, ROUNDS));
      }
    }
    if (fault === "stop") process.kill(m0.process.child.pid!, "SIGCONT");
  }, 120_000);
});

describe("session mode when the relay dies", () => {
  it("ends the relay's open connections, serves new ones once it is back, and takes the replicas out of sync", async () => {
    stack = await startStack({ backend: "kv", replicas: 2, extra: { mode: "session" } });
    const port = stack.envoy.listenerPort;
    const open = connect(port, "127.0.0.1");
    let got = "";
    let closed = false;
    open.on("data", (d) => { got += d; });
    open.on("error", () => {});
    open.on("close", () => { closed = true; });
    await new Promise((r) => open.once("connect", r));
    open.write("SET before 1\n");
    await waitFor("the first answer", async () => got === "OK\n", 5_000, 10);

    const killedAt = performance.now();
    await stack.restartRelay("SIGKILL", 500);
    await waitFor("the open connection to end", async () => closed, 5_000, 10);
    // A new connection once the relay is back (it waits for the controller's set): served, and
    // its write is on every member.
    let attempts = 0;
    await waitFor("a new connection to be served", async () => {
      attempts++;
      return kvExchange(port, ["SET after 1"]).then((a) => a[0] === "OK", () => false);
    }, 10_000, 20);
    console.log(`relay killed, restarted 500 ms later: new connections served again ${(performance.now() - killedAt).toFixed(0)} ms after the kill (${attempts} attempts)`);
    expect(await kvExchange(stack.members.get("m0")!.port, ["GET after"])).toEqual(["VALUE 1"]);
    // Nothing but the relay saw what it had in flight for the replicas: they are out of sync
    // (reseed before they may take over), the primary stays.
    await waitFor("the replicas to be taken out of sync", async () => {
      const v = await stack!.view();
      return v.primary === "m0" && v.members.filter((m) => m.name !== "m0").every((m) => m.role === "detached");
    }, 5_000, 20);
  }, 60_000);
});
