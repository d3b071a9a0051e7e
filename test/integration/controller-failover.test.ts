// The controller with real processes and kill -9: a killed primary is replaced by the
// designated successor for every new connection, with the data written before; a killed
// replica leaves the mirror set and stays stale until rejoined; a restarted controller
// changes nothing. Figures (kill -> first served) are printed, not asserted.
import { describe, it, expect, beforeAll, afterAll } from "vitest";
import { startStack, kvExchange, type Stack } from "../support/stack.ts";
import { failoverTrial, percentile, type TrialResult } from "../support/failover.ts";
import { waitFor } from "../support/ports.ts";

const TRIALS = 20;
const KEYS = Array.from({ length: 40 }, (_, i) => [`key:${i}`, `value-${i}-${"x".repeat(i)}`]);

/** Write the data set through the listener (many connections) or to one member directly. */
async function writeKeys(port: number): Promise<void> {
  for (let i = 0; i < KEYS.length; i += 8) {
    const answers = await kvExchange(port, KEYS.slice(i, i + 8).map(([k, v]) => `SET ${k} ${v}`));
    expect(answers.every((a) => a === "OK")).toBe(true);
  }
}

async function readKeys(port: number): Promise<string[]> {
  return kvExchange(port, KEYS.map(([k]) => `GET ${k}`));
}

describe("controller failover on real Envoy, real processes", () => {
  let stack: Stack;
  // WHO answers with each member's own name (how the test sees who served a connection): a
  // service whose replies differ between instances, so reply comparison is off for it.
  beforeAll(async () => { stack = await startStack({ replicas: 2, extra: { compareReplies: false } }); });
  afterAll(async () => { await stack?.close(); });

  it(`promotes the designated successor when the primary is killed (${TRIALS} trials), serving every new connection from it with the data written before`, async () => {
    await writeKeys(stack.envoy.listenerPort);
    const expected = KEYS.map(([, v]) => `VALUE ${v}`);
    const results: TrialResult[] = [];
    for (let t = 0; t < TRIALS; t++) {
      // An open-loop client: a new connection every 2 ms whether or not the last was answered,
      // going on 300 ms after the promoted member first answered (issue 8, must-show 3).
      const r = await failoverTrial(stack, "kill", writeKeys, { openLoop: true, intervalMs: 2, afterMs: 300 });
      results.push(r);
      console.log(`trial ${t + 1}/${TRIALS}: killed ${r.failed}, ${r.successor} first served after ${r.ms.toFixed(1)} ms (promotion recorded after ${r.recordedMs.toFixed(0)} ms), ` +
        `failed connects ${r.failedConnects} after it was gone (${r.failedWhileDying} while it was dying), served by others ${r.servedByOthers}, connections ${r.connections}`);
      // The promoted member holds what was written before the kill, read through the listener.
      expect(await readKeys(stack.envoy.listenerPort)).toEqual(expected);
    }
    const ms = results.map((r) => r.ms);
    const attempts = results.reduce((n, r) => n + r.connections, 0);
    console.log(`kill -9 of the primary, ${TRIALS} trials, open-loop client (${attempts} connections): kill -> first served by the promoted replica ` +
      `p50 ${percentile(ms, 50).toFixed(1)} ms, p99 ${percentile(ms, 99).toFixed(1)} ms, max ${Math.max(...ms).toFixed(1)} ms; failed connects after the primary was gone: ` +
      `${results.reduce((n, r) => n + r.failedConnects, 0)}; while it was dying (reached it before its death): ${results.reduce((n, r) => n + r.failedWhileDying, 0)}`);
    expect(results.reduce((n, r) => n + r.servedByOthers, 0)).toBe(0);
    expect(results.filter((r) => r.successor !== r.plannedSuccessor)).toEqual([]); // the API named the member that took over
    expect(results.reduce((n, r) => n + r.failedConnects, 0)).toBe(0);
    const { json } = await stack.api("GET", `/v1/events?service=${stack.service}`);
    expect(json.events.filter((e: any) => e.kind === "promotion")).toHaveLength(TRIALS);
    expect(json.events.filter((e: any) => e.kind === "rejoin")).toHaveLength(TRIALS);
  });

  it("keeps clients whole when a replica is killed: it leaves the mirror set and the standbys, and stays stale after a restart until rejoined", async () => {
    const view = await stack.view();
    const victim = stack.members.get(view.members.find((m) => m.role === "replica" && m.name !== view.successor)!.name)!;
    let stop = false;
    let exchanges = 0;
    const errors: string[] = [];
    const traffic = (async () => {
      for (let i = 0; !stop; i++) {
        try {
          const a = await kvExchange(stack.envoy.listenerPort, [`SET r:${i} ${i}`, `GET r:${i}`]);
          if (a.join() !== `OK,VALUE ${i}`) errors.push(a.join());
          exchanges++;
        } catch (err) { errors.push(String(err)); }
      }
    })();
    await waitFor("some traffic", () => exchanges > 20);
    await victim.process.kill("SIGKILL");
    await waitFor(`${victim.name} to be stale`, async () => (await stack.view()).members.find((m) => m.name === victim.name)?.role === "stale", 10_000);
    const relaySet = async () => (await (await fetch(`http://127.0.0.1:${stack.relay.metricsPort}/v1/services/${stack.service}/replicas`)).json()).replicas.map((r: any) => r.name);
    await waitFor("the relay to stop feeding it (next poll)", async () => !(await relaySet()).includes(victim.name), 5_000);
    const seenBy = exchanges;
    await waitFor("more traffic after the kill", () => exchanges > seenBy + 20);
    stop = true;
    await traffic;
    expect(errors).toEqual([]);
    // Envoy's endpoints no longer list it.
    const dump = await (await fetch(`http://127.0.0.1:${stack.envoy.adminPort}/config_dump?include_eds`)).text();
    expect(dump).not.toContain(`"port_value": ${victim.port}`);
    // Back up: alive, but stale until an operator rejoins it.
    await victim.restart();
    await waitFor(`${victim.name} to be seen alive`, async () => (await stack.view()).members.find((m) => m.name === victim.name)?.alive === true, 10_000);
    await new Promise((r) => setTimeout(r, 500));
    expect((await stack.view()).members.find((m) => m.name === victim.name)?.role).toBe("stale");
    expect((await stack.api("POST", `/v1/services/${stack.service}/promote`, { member: victim.name })).status).toBe(409);
    expect((await stack.api("POST", `/v1/services/${stack.service}/members/${victim.name}/rejoin`)).status).toBe(200);
    await waitFor("the relay to feed it again", async () => (await relaySet()).includes(victim.name), 5_000);
  });

  it("keeps the primary and Envoy's configuration when the controller is killed and restarted mid-traffic", async () => {
    // A member rejoined by the test before is a replica once no connection it missed is open.
    await waitFor("every rejoined member to be a replica", async () => !(await stack.view()).members.some((m) => m.role === "joining"));
    const before = await stack.view();
    // Envoy's hash of the last endpoints it took from the controller.
    const version = () => stack.envoy.stat(`cluster.${stack.service}_primary.version`);
    const versionBefore = await version();
    expect(versionBefore).toBeGreaterThan(0);
    const promotions = async () => (await stack.api("GET", "/v1/events")).json.events.filter((e: any) => e.kind === "promotion").length;
    const promotionsBefore = await promotions();
    let stop = false;
    const served: string[] = [];
    const traffic = (async () => { while (!stop) { served.push(await stack.whoServes()); await new Promise((r) => setTimeout(r, 5)); } })();
    await waitFor("some traffic", () => served.length > 20);
    await stack.controller.kill("SIGKILL");
    const during = served.length;
    await waitFor("traffic without the controller", () => served.length > during + 50);
    await stack.restartController("SIGKILL");
    await new Promise((r) => setTimeout(r, 1000));
    stop = true;
    await traffic;
    expect(new Set(served)).toEqual(new Set([before.primary]));
    const after = await stack.view();
    expect(after.primary).toBe(before.primary);
    expect(after.members.map((m) => m.role)).toEqual(before.members.map((m) => m.role));
    expect(await promotions()).toBe(promotionsBefore);
    expect(await version()).toBe(versionBefore);
  });
});
