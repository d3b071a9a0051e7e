// Several controllers serve one etcd store, and an Envoy may ask any of them: versions carry
// the stored revision they were built from (controller/xds/ordered-version.ts), and a
// controller that is behind the Envoy waits instead of taking it back to older endpoints.
import { describe, it, expect, afterEach } from "vitest";
import express from "express";
import type { Server } from "node:http";
import { buildSnapshot } from "../../controller/xds/snapshot.ts";
import { XdsRestServer } from "../../controller/xds/rest-server.ts";
import { orderedVersion, newerVersion } from "../../controller/xds/ordered-version.ts";

const endpoints = (primary: string) => [{ cluster: "kv_primary", primary, standbys: ["127.0.0.1:7002"] }];

describe("ordered snapshot versions", () => {
  let http: Server | undefined;
  afterEach(() => { http?.closeAllConnections(); http?.close(); });

  const serve = async (xds: XdsRestServer) => {
    const app = express();
    app.use(xds.router());
    http = await new Promise<Server>((resolve) => { const s = app.listen(0, "127.0.0.1", () => resolve(s)); });
    const port = (http.address() as { port: number }).port;
    return (version: string) => fetch(`http://127.0.0.1:${port}/v3/discovery:endpoints`, {
      method: "POST", body: JSON.stringify({ version_info: version, resource_names: ["kv_primary"] }),
    }).then(async (r) => ({ status: r.status, json: await r.json() as { version_info?: string } }));
  };

  it("orders versions by the stored revision, not by content", () => {
    const [a, b] = [orderedVersion(9, endpoints("127.0.0.1:7001")), orderedVersion(10, endpoints("127.0.0.1:7001"))];
    expect(a).toMatch(/^9\.[0-9a-f]{16}$/);
    expect(newerVersion(b, a)).toBe(true);
    expect(newerVersion(a, b)).toBe(false);
    expect(newerVersion(a, a)).toBe(false);
    expect(newerVersion("c4878f27ca76ae84", a)).toBe(false); // a file store's content version is not ordered
  });

  it("holds a request from an Envoy ahead of this controller until it has caught up, and never answers with an older version", async () => {
    const xds = new XdsRestServer({ newer: newerVersion, holdMs: 400 });
    const v5 = orderedVersion(5, endpoints("127.0.0.1:7001"));
    const v6 = orderedVersion(6, endpoints("127.0.0.1:7003"));
    const v7 = orderedVersion(7, endpoints("127.0.0.1:7004"));
    xds.publish(buildSnapshot(v5, endpoints("127.0.0.1:7001")));
    const ask = await serve(xds);
    // The Envoy holds v7 (from another controller): this one, at v5, waits ...
    const pending = ask(v7);
    await new Promise((r) => setTimeout(r, 50));
    xds.publish(buildSnapshot(v6, endpoints("127.0.0.1:7003"))); // ... still behind: still waits
    await new Promise((r) => setTimeout(r, 50));
    xds.publish(buildSnapshot(v7, endpoints("127.0.0.1:7004")));
    // Caught up to the version the Envoy has: held like any long-poll, then the same version.
    expect((await pending).json.version_info).toBe(v7);
    // An Envoy behind this controller gets the current snapshot at once.
    expect((await ask(v5)).json.version_info).toBe(v7);
    // Still behind when the hold ends: 503, never v7's predecessor.
    const v9 = orderedVersion(9, endpoints("127.0.0.1:7001"));
    expect((await ask(v9)).status).toBe(503);
    // A newer version on the connection that was sent an older one is not a rejection.
    expect(xds.counters.rejections).toBe(0);
  });
});
