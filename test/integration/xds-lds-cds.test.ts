// Issue 12: a service declared through the controller's API (POST /v1/services with a
// "listener") is served by every Envoy whose bootstrap names only the controller and its relay
// (envoy/dynamic-example.yaml): its listener and primary cluster arrive over LDS and CDS, its
// endpoints over EDS, and its bytes are mirrored to its replica. Removed through the API, it is
// gone from every Envoy. Real Envoys, relays and backends; no bootstrap is changed.
import { describe, it, expect, afterEach } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:net";
import { randomBytes } from "node:crypto";
import { startBackends, type RecordingBackend } from "../support/backends.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { startDynamicEnvoy, type RunningEnvoy } from "../support/envoy.ts";
import { freePorts, waitFor } from "../support/ports.ts";
import { startController, type RunningController } from "../../controller/server.ts";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startKv } from "../support/stack.ts";
import type { Managed } from "../support/processes.ts";

const TOKEN = "lds-cds-token";

/** Send `id` and a line, read the answer, close: the bytes the client got, or the error. */
function exchange(port: number, id: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1", () => s.end(`${id} hello\n`));
    let got = "";
    s.on("data", (d) => { got += d.toString(); });
    s.on("error", (e) => resolve(`error: ${e.message}`));
    s.on("close", () => resolve(got));
  });
}

describe("services declared through the API reach every Envoy without a bootstrap change (LDS, CDS)", () => {
  let backends: RecordingBackend[] = [];
  let relays: RelayHandle[] = [];
  let envoys: RunningEnvoy[] = [];
  let controller: RunningController | undefined;
  afterEach(async () => {
    for (const e of envoys) await e.kill();
    await controller?.close();
    for (const r of relays) await r.kill();
    for (const b of backends) await b.kill();
    backends = []; relays = []; envoys = []; controller = undefined;
  });

  it("serves a declared service on two Envoys, mirrored to its replica, and removes it from both", async () => {
    backends = await startBackends(["p", "r"], { reply: (c) => Buffer.from(`got ${c.length}\n`), farewell: null });
    const first = await startRelay({});
    relays = [first, await startRelay({ controlToken: first.controlToken })];
    controller = await startController({
      services: [], token: TOKEN,
      api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 },
      storePath: join(mkdtempSync(join(tmpdir(), "lockstep-lds-")), "state.json"),
      relay: { url: `http://127.0.0.1:${first.metricsPort}`, token: first.controlToken },
      relays: relays.map((r) => `http://127.0.0.1:${r.metricsPort}`),
      dynamic: { wasmPath: join(PROJECT_ROOT, "build", "lockstep.wasm"), compareReplies: false },
    });
    for (const r of relays) envoys.push(await startDynamicEnvoy({ controller: `127.0.0.1:${controller.xdsPort}`, relayPort: r.port }));
    const api = (method: string, path: string, body?: unknown) => fetch(`http://127.0.0.1:${controller!.apiPort}${path}`, {
      method, headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const listeners = async (e: RunningEnvoy) => (await (await fetch(`http://127.0.0.1:${e.adminPort}/listeners?format=json`)).json()).listener_statuses?.map((l: any) => l.name) ?? [];
    const gauge = (e: RunningEnvoy) => e.stat("listener_manager.total_listeners_active");
    expect(await Promise.all(envoys.map(listeners))).toEqual([[], []]);

    const [port] = await freePorts(1);
    const declared = await api("POST", "/v1/services", {
      name: "orders", listener: `127.0.0.1:${port}`,
      primary: { name: "p", address: backends[0].address }, replicas: [{ name: "r", address: backends[1].address }],
    });
    expect(declared.status).toBe(201);
    expect((await declared.json()).listener).toBe(`127.0.0.1:${port}`);
    await waitFor("both Envoys to serve the declared listener", async () => (await Promise.all(envoys.map(gauge))).every((n) => n === 1), 15_000, 50)
      .catch((err) => { throw new Error(`${err.message}\n--- Envoy ---\n${envoys[0].process.output().slice(-3000)}`); });
    expect(await Promise.all(envoys.map(listeners))).toEqual([["lockstep_orders"], ["lockstep_orders"]]);
    // Clients reach the primary (the answer is its own), and every byte reaches the replica.
    const ids = Array.from({ length: 20 }, () => randomBytes(8).toString("hex"));
    for (const id of ids) expect(await exchange(port, id)).toBe(`got ${id.length + 7}\n`);
    await waitFor("the replica to receive every connection", () => ids.every((id) => backends[1].connections.some((c) => c.head.toString().startsWith(id))), 10_000);
    for (const b of backends) expect(b.connections.filter((c) => ids.some((id) => c.head.toString().startsWith(id))).map((c) => c.received)).toEqual(ids.map((id) => id.length + 7));
    // Both Envoys took part (the kernel spreads connections over the two listening sockets) or at
    // least one did; each has the cluster with the primary at priority 0.
    for (const e of envoys) {
      const clusters = await (await fetch(`http://127.0.0.1:${e.adminPort}/clusters?format=json`)).json();
      const hosts = clusters.cluster_statuses.find((c: any) => c.name === "orders_primary").host_statuses;
      expect(hosts.map((h: any) => h.address.socket_address.port_value)).toContain(Number(backends[0].address.split(":")[1]));
    }

    expect((await api("DELETE", "/v1/services/orders")).status).toBe(200);
    await waitFor("both Envoys to drop the listener", async () => (await Promise.all(envoys.map(gauge))).every((n) => n === 0), 15_000, 50);
    expect(await exchange(port, "after")).toMatch(/^error: .*ECONNREFUSED/);
    const clusterNames = async (e: RunningEnvoy) => (await (await fetch(`http://127.0.0.1:${e.adminPort}/clusters?format=json`)).json()).cluster_statuses.map((c: any) => c.name);
    await waitFor("both Envoys to drop the cluster", async () => (await Promise.all(envoys.map(clusterNames))).every((names) => !names.includes("orders_primary")), 10_000, 50);
  });

  it("refuses a listener when the controller does not serve listeners, and a listener another service has", async () => {
    backends = await startBackends(["p", "r"], { farewell: null });
    const relay = await startRelay({});
    relays = [relay];
    const storePath = join(mkdtempSync(join(tmpdir(), "lockstep-lds-")), "state.json");
    const start = (dynamic: boolean) => startController({
      services: [], token: TOKEN, api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 },
      storePath: dynamic ? storePath : `${storePath}.static`,
      relay: { url: `http://127.0.0.1:${relay.metricsPort}`, token: relay.controlToken },
      ...(dynamic ? { dynamic: { wasmPath: "build/lockstep.wasm" } } : {}),
    });
    const declare = (c: RunningController, name: string, listener: string) => fetch(`http://127.0.0.1:${c.apiPort}/v1/services`, {
      method: "POST", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({ name, listener, healthCheck: { send: "PING\n", expect: "PONG" }, primary: { name: "p", address: backends[0].address }, replicas: [{ name: "r", address: backends[1].address }] }),
    });
    controller = await start(false);
    const refused = await declare(controller, "orders", "127.0.0.1:15999");
    expect(refused.status).toBe(400);
    expect((await refused.json()).error.message).toMatch(/does not serve listeners/);
    await controller.close();
    controller = await start(true);
    expect((await declare(controller, "orders", "127.0.0.1:15999")).status).toBe(201);
    const twice = await declare(controller, "billing", "127.0.0.1:015999"); // another spelling of the same address
    expect(twice.status, await twice.clone().text()).toBe(409);
    expect((await twice.json()).error.message).toMatch(/"orders" listens on 127.0.0.1:15999/);
    // The listener and the health check are stored: a restarted controller serves the same
    // listener and cluster (a changed cluster would make Envoy check its hosts afresh).
    const served = (c: RunningController) => JSON.stringify([c.xds.current!.listeners.get("lockstep_orders"), c.xds.current!.clusters.get("orders_primary")]);
    const before = served(controller);
    expect(before).toContain(Buffer.from("PONG").toString("hex"));
    await controller.close();
    controller = await startController({
      services: [], token: TOKEN, api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, storePath,
      relay: { url: `http://127.0.0.1:${relay.metricsPort}`, token: relay.controlToken }, dynamic: { wasmPath: "build/lockstep.wasm" },
    });
    expect(served(controller)).toBe(before);
  });
  it("serves a service declared in session mode: its open connection goes on with the successor when the primary is killed", async () => {
    const ports = await freePorts(4);
    const members: Managed[] = await Promise.all(["m0", "m1", "m2"].map((n, i) => startKv(n, ports[i])));
    try {
      const relay = await startRelay({});
      relays = [relay];
      controller = await startController({
        services: [], token: TOKEN, api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 },
        storePath: join(mkdtempSync(join(tmpdir(), "lockstep-lds-")), "state.json"),
        relay: { url: `http://127.0.0.1:${relay.metricsPort}`, token: relay.controlToken },
        dynamic: { wasmPath: join(PROJECT_ROOT, "build", "lockstep.wasm") },
      });
      envoys = [await startDynamicEnvoy({ controller: `127.0.0.1:${controller.xdsPort}`, relayPort: relay.port })];
      const api = (body: unknown) => fetch(`http://127.0.0.1:${controller!.apiPort}/v1/services`, {
        method: "POST", headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: JSON.stringify(body),
      });
      const service = {
        name: "cache", listener: `127.0.0.1:${ports[3]}`, healthCheck: { send: "PING\n", expect: "PONG" },
        primary: { name: "m0", address: `127.0.0.1:${ports[0]}` }, replicas: ["m1", "m2"].map((name, i) => ({ name, address: `127.0.0.1:${ports[i + 1]}` })),
      };
      const noListener = await api({ ...service, name: "other", listener: undefined, mode: "session" });
      expect(noListener.status).toBe(400);
      expect((await noListener.json()).error.message).toMatch(/"session" needs a "listener"/);
      const declared = await api({ ...service, mode: "session" });
      expect(declared.status).toBe(201);
      expect((await declared.json()).mode).toBe("session");
      // The listener Envoy got tunnels to the relay (no wasm filter).
      const listener = JSON.stringify(controller.xds.current!.listeners.get("lockstep_cache"));
      expect(listener).toContain("tunneling_config");
      expect(listener).not.toContain("envoy.filters.network.wasm");
      await waitFor("Envoy to serve the session listener and the relay to know the successor", async () => {
        const answers = await new Promise<string>((resolve) => {
          const s = connect(ports[3], "127.0.0.1", () => s.end("PING\n"));
          let got = "";
          s.on("data", (d) => { got += d; });
          s.on("error", () => resolve(""));
          s.on("close", () => resolve(got));
        });
        const view = await (await fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/cache/replicas`)).json() as any;
        return answers === "PONG\n" && view.successor === "m1";
      }, 15_000, 50);

      const s = connect(ports[3], "127.0.0.1");
      let got = "";
      s.on("data", (d) => { got += d; });
      await new Promise((r) => s.once("connect", r));
      s.write("SET k v\n");
      await waitFor("the first answer", async () => got === "OK\n", 5_000, 10);
      await members[0].kill("SIGKILL");
      s.write("GET k\n");
      await waitFor("the successor's answer on the same connection", async () => got === "OK\nVALUE v\n", 5_000, 10);
      s.destroy();
      // The controller records the relay's takeover, and the two agree on the primary: the member
      // the relay moved to, or (when the controller's own failover named another first, as a
      // loaded machine showed) that one, to which the relay then moved the connection too.
      let last = "";
      await waitFor("the controller to record the takeover and agree with the relay on the primary", async () => {
        const e = (await (await fetch(`http://127.0.0.1:${controller!.apiPort}/v1/events?service=cache`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()).events;
        const v = await (await fetch(`http://127.0.0.1:${controller!.apiPort}/v1/services/cache`, { headers: { authorization: `Bearer ${TOKEN}` } })).json();
        const r = await (await fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/cache/replicas`)).json() as any;
        last = JSON.stringify({ primary: v.primary, relayLeader: r.session.leader, events: e.map((x: any) => `${x.kind} ${x.member}: ${x.detail}`) });
        return e.some((x: any) => x.kind === "takeover" && x.takeover.from === "m0" && x.takeover.to === "m1") && v.primary !== "m0" && r.session.leader === v.primary;
      }, 10_000, 50).catch((err) => { throw new Error(`${err.message}; last seen: ${last}`); });
    } finally {
      for (const m of members) await m.kill("SIGKILL");
    }
  });
});
