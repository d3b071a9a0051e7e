// Envoy rejects a snapshot (here endpoints at a host name, which its EDS refuses: "malformed IP
// address"; the controller's own checks never build one, so the test hands it to the xDS
// server directly). Envoy's REST client then asks again with the version it kept, every
// refresh_delay (1 ms): the controller must notice the rejection, say so once (log, event, the
// service's view), not answer it again in a hot loop, and get the next good snapshot to Envoy.
import { describe, it, expect, afterAll } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startController, type RunningController } from "../../controller/server.ts";
import { HEALTH_DEFAULTS } from "../../controller/health/checker.ts";
import { TYPE_URL } from "../../controller/xds/resources.ts";
import type { Snapshot } from "../../controller/xds/snapshot.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { freePort, waitFor } from "../support/ports.ts";
import { taggedServer, whoServes } from "../support/backends.ts";

const TOKEN = "xds-rejection-token";



/** Endpoints Envoy refuses: a host name where EDS takes an IP address. */
function rejectedByEnvoy(version: string, port: number): Snapshot {
  return { version, endpoints: new Map([["kv_primary", {
    "@type": TYPE_URL.ENDPOINTS, cluster_name: "kv_primary",
    endpoints: [{ priority: 0, lb_endpoints: [{ endpoint: { address: { socket_address: { address: "localhost", port_value: port } } } }] }],
  }]]), listeners: new Map(), clusters: new Map() };
}

describe("Envoy rejecting a snapshot", () => {
  let controller: RunningController | undefined;
  let envoy: EnvoyHandle | undefined;
  const servers: { close: () => void }[] = [];
  afterAll(async () => {
    await envoy?.kill();
    await controller?.close();
    for (const s of servers) s.close();
  });

  it("is logged once, shown in the service and the events, not answered in a hot loop, and the next good snapshot is applied", async () => {
    const [p, a] = [await taggedServer("P"), await taggedServer("A")];
    servers.push(p, a);
    const logs: string[] = [];
    controller = await startController({
      services: [{ service: { name: "kv", members: [
        { name: "p", address: p.address, role: "primary", lagBytes: 0 },
        { name: "a", address: a.address, role: "replica", lagBytes: 0 },
      ] }, health: HEALTH_DEFAULTS }],
      api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, token: TOKEN,
      storePath: join(mkdtempSync(join(tmpdir(), "lockstep-xds-rejection-")), "controller.json"),
      relay: { url: "http://127.0.0.1:1" }, probe: async () => ({ ok: true, rttMs: 1 }), log: (l) => logs.push(l),
    });
    envoy = await startEnvoy({ primary: p.address, relayPort: await freePort(), mirror: false, service: "kv", controller: `127.0.0.1:${controller.xdsPort}` });
    const api = `http://127.0.0.1:${controller.apiPort}`;
    const view = async () => (await fetch(`${api}/v1/services/kv`)).json();
    const rejections = async () => (await (await fetch(`${api}/v1/events?service=kv`)).json()).events.filter((e: any) => e.kind === "xds_rejected");
    await waitFor("Envoy to serve the primary", async () => (await whoServes(envoy!.listenerPort)) === "P");
    // Both members probed (the successor's endpoint is in the snapshot): no snapshot of the
    // controller's own replaces the bad one before Envoy fetched it.
    await waitFor("both members probed, a the successor", async () => { const v = await view(); return v.successor === "a" && v.members.every((m: any) => m.alive === true); });
    await waitFor("Envoy to report the version it applied", async () => { const x = (await view()).xds; return x.acceptedVersion === x.version; });
    const good = (await view()).xds.version;

    controller.xds.publish(rejectedByEnvoy("bad-1", Number(p.address.split(":")[1])));
    await waitFor("the controller to see the rejection", async () => (await view()).xds.rejected !== null, 10_000);
    expect(await envoy.stat("cluster.kv_primary.update_rejected")).toBeGreaterThan(0);
    const shown = (await view()).xds;
    expect(shown).toMatchObject({ version: "bad-1", acceptedVersion: good, rejected: { version: "bad-1" } });
    expect(shown.rejected.message).toContain("did not apply version bad-1");

    // Envoy keeps asking (refresh_delay 1 ms): count what it got over two seconds.
    const requestsBefore = controller.xds.counters.requests;
    const rejectedBefore = await envoy.stat("cluster.kv_primary.update_rejected");
    await new Promise((r) => setTimeout(r, 2000));
    expect(controller.xds.counters.requests - requestsBefore).toBeLessThanOrEqual(2);
    expect(await envoy.stat("cluster.kv_primary.update_rejected") - rejectedBefore).toBeLessThanOrEqual(2);
    expect(logs.filter((l) => l.startsWith("xds: kv_primary:"))).toHaveLength(1);
    expect(await rejections()).toHaveLength(1);
    for (let i = 0; i < 5; i++) expect(await whoServes(envoy.listenerPort)).toBe("P"); // Envoy kept the last good endpoints

    // The next snapshot the controller decides reaches Envoy at once, over the request held since the rejection.
    const pushesBefore = controller.xds.counters.pushes;
    const res = await fetch(`${api}/v1/services/kv/promote`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ member: "a" }) });
    expect(res.status).toBe(200);
    await waitFor("Envoy to serve the promoted member", async () => (await whoServes(envoy!.listenerPort)) === "A", 10_000);
    expect(controller.xds.counters.pushes).toBeGreaterThan(pushesBefore);
    await waitFor("the view to show the good snapshot applied", async () => { const x = (await view()).xds; return x.acceptedVersion === x.version && x.rejected === null; });
    expect(await rejections()).toHaveLength(1);
  });
});
