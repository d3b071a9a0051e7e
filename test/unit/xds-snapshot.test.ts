// Snapshots and the long-poll transport, without Envoy: what a controller decision turns into,
// the consistency checks, and when a held request is answered.
import { describe, it, expect, afterEach } from "vitest";
import express from "express";
import { Agent, request, type Server } from "node:http";
import { buildSnapshot, SnapshotError } from "../../controller/xds/snapshot.ts";
import { XdsRestServer } from "../../controller/xds/rest-server.ts";
import { TYPE_URL } from "../../controller/xds/resources.ts";
import { listenerResource, primaryClusterResource } from "../../config/envoy-resources.ts";
import { waitFor } from "../support/ports.ts";

const svc = { cluster: "kv_primary", primary: "127.0.0.1:7001", standbys: ["127.0.0.1:7002", "127.0.0.1:7003"] };
const filter = (service: string) => ({ service, compareReplies: true, maxInflightBytesPerConnection: 1 << 20, maxInflightBytesTotal: 1 << 24 });
/** A service whose listener and primary cluster are served too (LDS, CDS). */
const served = (service: string, listener: string) => ({
  cluster: `${service}_primary`, primary: "127.0.0.1:7001", standbys: [],
  resources: { listener: listenerResource(filter(service), listener, "lockstep.wasm"), cluster: primaryClusterResource(service, { intervalMs: 100, timeoutMs: 250 }) },
});

describe("xDS snapshots", () => {
  it("puts the primary at priority 0 and each standby, best first, at priorities 1, 2, ...", () => {
    const snap = buildSnapshot("1", [svc]);
    const cla = snap.endpoints.get("kv_primary")!;
    expect(cla["@type"]).toBe(TYPE_URL.ENDPOINTS);
    expect(cla.endpoints.map((e) => [e.priority, e.lb_endpoints.map((l) => l.endpoint.address.socket_address.port_value)])).toEqual([[0, [7001]], [1, [7002]], [2, [7003]]]);
    expect(Object.isFrozen(snap) && Object.isFrozen(cla)).toBe(true);
  });

  it("keeps priority 0 empty for a version without the primary (a re-admission), standbys where they were", () => {
    const cla = buildSnapshot("1", [{ ...svc, primary: null }]).endpoints.get("kv_primary")!;
    expect(cla.endpoints.map((e) => [e.priority, e.lb_endpoints.length])).toEqual([[0, 0], [1, 1], [2, 1]]);
  });

  it("carries services' listeners and clusters, and refuses two listeners on one address", () => {
    const snap = buildSnapshot("1", [served("kv", "127.0.0.1:9000"), { ...svc, cluster: "other_primary" }]);
    expect([...snap.listeners.keys()]).toEqual(["lockstep_kv"]);
    expect([...snap.clusters.keys()]).toEqual(["kv_primary"]);
    expect(() => buildSnapshot("2", [served("kv", "127.0.0.1:9000"), served("billing", "127.0.0.1:9000")])).toThrow('listeners "lockstep_kv" and "lockstep_billing" have one address');
  });

  it("leaves standbys after the 128th out, as Envoy rejects priorities above 128", () => {
    const standbys = Array.from({ length: 130 }, (_, i) => `127.0.0.1:${8000 + i}`);
    const priorities = buildSnapshot("1", [{ ...svc, standbys }]).endpoints.get("kv_primary")!.endpoints.map((e) => e.priority);
    expect(priorities).toHaveLength(129);
    expect(Math.max(...priorities)).toBe(128);
  });

  it.each([
    [[svc, svc], 'cluster "kv_primary" appears twice'],
    [[{ ...svc, standbys: ["127.0.0.1:7001"] }], "the primary 127.0.0.1:7001 is also listed as a standby"],
    [[{ ...svc, standbys: ["127.0.0.1:7002", "127.0.0.1:7002"] }], "a standby is listed twice"],
    [[{ ...svc, primary: "nowhere" }], 'must be "ip:port"'],
  ])("refuses an inconsistent snapshot (%#)", (services, message) => {
    expect(() => buildSnapshot("2", services)).toThrow(SnapshotError);
    expect(() => buildSnapshot("2", services)).toThrow(message);
  });
});

describe("REST long-poll transport", () => {
  let server: Server | undefined;
  afterEach(() => server?.close());

  async function start(xds: XdsRestServer): Promise<string> {
    const app = express();
    app.use(xds.router());
    server = await new Promise<Server>((resolve) => { const s = app.listen(0, "127.0.0.1", () => resolve(s)); });
    return `http://127.0.0.1:${(server.address() as { port: number }).port}/v3/discovery:endpoints`;
  }
  const post = (url: string, body: object) => fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

  it("answers a stale version at once, and holds a current one until the next publish", async () => {
    const xds = new XdsRestServer({ holdMs: 10_000 });
    xds.publish(buildSnapshot("1", [svc]));
    const url = await start(xds);
    const first = await (await post(url, { version_info: "", resource_names: ["kv_primary"] })).json();
    expect(first.version_info).toBe("1");
    let answered = false;
    const held = post(url, { version_info: "1", resource_names: ["kv_primary"] }).then(async (r) => { answered = true; return r.json(); });
    await new Promise((r) => setTimeout(r, 100));
    expect(answered).toBe(false);
    xds.publish(buildSnapshot("2", [{ ...svc, primary: "127.0.0.1:7002", standbys: ["127.0.0.1:7003"] }]));
    const second = await held;
    expect(second.version_info).toBe("2");
    expect(second.resources[0].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value).toBe(7002);
    expect(xds.counters.pushes).toBe(1);
  });

  it("answers each xDS path with its own type: endpoints, listeners, clusters", async () => {
    const xds = new XdsRestServer({ holdMs: 50 });
    xds.publish(buildSnapshot("1", [served("kv", "127.0.0.1:9000")]));
    const base = (await start(xds)).replace(/endpoints$/, "");
    const got = await Promise.all(["endpoints", "listeners", "clusters"].map(async (p) => (await post(base + p, {})).json()));
    expect(got.map((g) => g.type_url)).toEqual([TYPE_URL.ENDPOINTS, TYPE_URL.LISTENERS, TYPE_URL.CLUSTERS]);
    expect(got.map((g) => g.resources.map((r: any) => r.name ?? r.cluster_name))).toEqual([["kv_primary"], ["lockstep_kv"], ["kv_primary"]]);
    expect((await post(base.replace(/discovery:$/, "discovery:secrets"), {})).status).toBe(404);
  });

  it("answers a held request with the same version before Envoy's timeout", async () => {
    const xds = new XdsRestServer({ holdMs: 50 });
    xds.publish(buildSnapshot("7", [svc]));
    const got = await (await post(await start(xds), { version_info: "7" })).json();
    expect(got.version_info).toBe("7");
    expect(got.resources).toHaveLength(1);
  });

  it("holds a request that asks again with the old version after being given a new one (a rejection) until a newer snapshot exists", async () => {
    const rejections: string[] = [];
    const xds = new XdsRestServer({ holdMs: 10_000, onRejected: (r) => rejections.push(`${r.cluster}@${r.version}`) });
    xds.publish(buildSnapshot("1", [svc]));
    const url = new URL(await start(xds));
    // One connection, as Envoy's REST client uses: the server remembers what it sent on it.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const ask = (body: object) => new Promise<any>((resolve, reject) => {
      const req = request({ host: url.hostname, port: url.port, path: url.pathname, method: "POST", agent, headers: { "content-type": "application/json" } }, (res) => {
        let text = "";
        res.on("data", (c) => (text += c));
        res.on("end", () => resolve(JSON.parse(text)));
      });
      req.on("error", reject);
      req.end(JSON.stringify(body));
    });
    expect((await ask({ resource_names: ["kv_primary"] })).version_info).toBe("1");
    xds.publish(buildSnapshot("2", [{ ...svc, standbys: [] }])); // say Envoy rejects this one
    expect((await ask({ version_info: "1", resource_names: ["kv_primary"] })).version_info).toBe("2");
    let answered = false;
    const again = ask({ version_info: "1", resource_names: ["kv_primary"] }).then((r) => { answered = true; return r; });
    await new Promise((r) => setTimeout(r, 100));
    expect(answered).toBe(false);
    expect(rejections).toEqual(["kv_primary@2"]);
    expect(xds.status("kv_primary")).toMatchObject({ version: "2", acceptedVersion: "1", rejected: { version: "2" } });
    xds.publish(buildSnapshot("3", [svc]));
    expect((await again).version_info).toBe("3");
    void ask({ version_info: "3", resource_names: ["kv_primary"] }).catch(() => {}); // applied; held until the next change
    await waitFor("Envoy's report that it applied 3", () => xds.status("kv_primary").acceptedVersion === "3");
    expect(xds.status("kv_primary").rejected).toBeNull();
    agent.destroy();
  });

  it("says 503 with a reason before anything is published", async () => {
    const res = await post(await start(new XdsRestServer()), { version_info: "" });
    expect(res.status).toBe(503);
    expect((await res.json()).message).toBe("no snapshot published yet");
  });
});
