// The controller's EDS on real Envoy: a published snapshot decides which backend tcp_proxy
// uses (priority 0), a new one switches new connections over, and with the controller gone
// Envoy keeps serving with the last configuration it had.
import { describe, it, expect } from "vitest";
import express from "express";
import type { Server } from "node:http";
import { buildSnapshot } from "../../controller/xds/snapshot.ts";
import { XdsRestServer } from "../../controller/xds/rest-server.ts";
import { startEnvoy } from "../support/envoy.ts";
import { freePort, waitFor } from "../support/ports.ts";
import { taggedServer, whoServes } from "../support/backends.ts";



describe("controller EDS on real Envoy", () => {
  it("switches new connections to the new priority-0 endpoint, and keeps the last config without the controller", async () => {
    const [a, b] = [await taggedServer("A"), await taggedServer("B")];
    const xds = new XdsRestServer();
    xds.publish(buildSnapshot("1", [{ cluster: "itest_primary", primary: a.address, standbys: [b.address] }]));
    const app = express();
    app.use(xds.router());
    const http = await new Promise<Server>((resolve) => { const s = app.listen(0, "127.0.0.1", () => resolve(s)); });
    const controller = `127.0.0.1:${(http.address() as { port: number }).port}`;
    const envoy = await startEnvoy({ primary: a.address, relayPort: await freePort(), mirror: false, controller });

    await waitFor("Envoy to take snapshot 1", async () => (await whoServes(envoy.listenerPort)) === "A");
    xds.publish(buildSnapshot("2", [{ cluster: "itest_primary", primary: b.address, standbys: [a.address] }]));
    await waitFor("Envoy to take snapshot 2", async () => (await whoServes(envoy.listenerPort)) === "B", 5_000, 1);
    // Envoy's own view: priority 0 of the cluster is now B, priority 1 is A.
    const dump = await (await fetch(`http://127.0.0.1:${envoy.adminPort}/config_dump?include_eds`)).json();
    const eds = dump.configs.find((c: any) => c["@type"].endsWith("EndpointsConfigDump"));
    const cla = [...(eds.static_endpoint_configs ?? []), ...(eds.dynamic_endpoint_configs ?? [])]
      .map((e: any) => e.endpoint_config).find((e: any) => e.cluster_name === "itest_primary");
    const byPriority = cla.endpoints.map((g: any) => [g.priority ?? 0, `127.0.0.1:${g.lb_endpoints[0].endpoint.address.socket_address.port_value}`]);
    expect(byPriority).toEqual([[0, b.address], [1, a.address]]);

    http.closeAllConnections();
    await new Promise<void>((r) => http.close(() => r()));
    for (let i = 0; i < 20; i++) expect(await whoServes(envoy.listenerPort)).toBe("B");
    expect(await envoy.stat("cluster.itest_primary.update_rejected")).toBe(0);
    await envoy.kill();
    a.close(); b.close();
  });
});
