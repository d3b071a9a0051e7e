// Planned switchover through the API (the DVS "service migration"): new connections go to the
// promoted replica, connections still open on the old primary are closed (their clients
// reconnect to the new one: no write ever lands on two primaries at once), the old primary
// becomes a replica, every member in sync receives every connection's bytes exactly once,
// checked byte by byte (SHA-256 per connection), and no backend gets a connection twice. Envoy closes the old
// primary's connections without flushing what it had not written to it yet: the old primary is
// then counted as having missed them, and is out of sync until reseeded.
import { describe, it, expect, afterEach } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, type Socket } from "node:net";
import { startBackends, RecordingBackend } from "../support/backends.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { waitFor } from "../support/ports.ts";
import { startController, type RunningController } from "../../controller/server.ts";
import { HEALTH_DEFAULTS } from "../../controller/health/checker.ts";

const TOKEN = "switchover-token";
/** One "+" line per line received: the same reply stream from every member, however the bytes were chunked. */
const perLine = (chunk: Buffer) => { const n = chunk.toString("latin1").split("\n").length - 1; return n ? Buffer.from("+\n".repeat(n)) : null; };
const HEALTH = { send: "PING\n", expect: "+", intervalMs: 100, timeoutMs: 250 };

interface Client { id: string; socket: Socket; sent: Buffer[]; closed: Promise<void>; connected?: boolean }

function open(port: number, id: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => resolve(client));
    socket.on("data", () => {});
    socket.on("error", (err) => { if (!client.connected) reject(err); });
    socket.on("connect", () => { client.connected = true; });
    const closed = new Promise<void>((r) => socket.on("close", () => r()));
    const client: Client = { id, socket, sent: [], closed, connected: false };
  });
}

function send(c: Client, bytes: Buffer): void { c.sent.push(bytes); c.socket.write(bytes); }

function lines(n: number): Buffer {
  return Buffer.concat(Array.from({ length: n }, () => Buffer.from(randomBytes(1 + Math.floor(Math.random() * 600)).toString("hex") + "\n")));
}

describe("planned switchover through the API", () => {
  let backends: RecordingBackend[] = [];
  let relay: RelayHandle | undefined;
  let envoy: EnvoyHandle | undefined;
  let controller: RunningController | undefined;
  afterEach(async () => {
    await envoy?.kill();
    await controller?.close();
    await relay?.kill();
    for (const b of backends) await b.kill();
    envoy = controller = relay = undefined;
    backends = [];
  });

  /** m0 (primary), m1, m2 behind the controller, the relay and Envoy; `slow` reads m0 slowly. */
  async function start(slow?: { readBytesPerSecond: number }) {
    backends = slow
      ? [await new RecordingBackend("m0", { reply: perLine, farewell: null, ...slow }).start(), ...await startBackends(["m1", "m2"], { reply: perLine, farewell: null })]
      : await startBackends(["m0", "m1", "m2"], { reply: perLine, farewell: null });
    relay = await startRelay({}); // the controller sets the replica set
    const member = (b: RecordingBackend, role: "primary" | "replica") => ({ name: b.name, address: b.address, role, lagBytes: 0 });
    controller = await startController({
      services: [{ service: { name: "kv", members: [member(backends[0], "primary"), member(backends[1], "replica"), member(backends[2], "replica")] }, health: { ...HEALTH_DEFAULTS, ...HEALTH } }],
      api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, token: TOKEN,
      storePath: join(mkdtempSync(join(tmpdir(), "lockstep-switchover-")), "state.json"),
      relay: { url: `http://127.0.0.1:${relay.metricsPort}`, token: relay.controlToken },
    });
    envoy = await startEnvoy({ primary: backends[0].address, relayPort: relay.port, service: "kv", controller: `127.0.0.1:${controller.xdsPort}`, compareReplies: true, extra: { healthCheck: HEALTH } });
    const api = (method: string, path: string, body?: unknown) => fetch(`http://127.0.0.1:${controller!.apiPort}${path}`, {
      method, headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const priority0 = async () => {
      const dump = await (await fetch(`http://127.0.0.1:${envoy!.adminPort}/config_dump?include_eds`)).json();
      const eds = dump.configs.find((c: any) => c["@type"].endsWith("EndpointsConfigDump"));
      const cla = [...(eds.static_endpoint_configs ?? []), ...(eds.dynamic_endpoint_configs ?? [])].map((e: any) => e.endpoint_config).find((e: any) => e.cluster_name === "kv_primary");
      const p0 = cla?.endpoints.find((g: any) => (g.priority ?? 0) === 0);
      return p0 ? `127.0.0.1:${p0.lb_endpoints[0].endpoint.address.socket_address.port_value}` : "";
    };
    const hostConnections = async () => {
      const text = await (await fetch(`http://127.0.0.1:${envoy!.adminPort}/clusters`)).text();
      // A host Envoy no longer has (taken out of the endpoints) is left out.
      return Object.fromEntries(backends.flatMap((b) => {
        const m = new RegExp(`^kv_primary::${b.address.replace(/\./g, "\\.")}::cx_total::(\\d+)$`, "m").exec(text);
        return m ? [[b.name, Number(m[1])]] : [];
      }));
    };
    const role = async (name: string) => (await (await api("GET", "/v1/services/kv")).json()).members.find((m: any) => m.name === name).role as string;
    await waitFor("Envoy to take m0 as primary", async () => (await priority0()) === backends[0].address, 10_000);
    await waitFor("the controller to see every member", async () => (await (await api("GET", "/v1/services/kv")).json()).members.every((m: any) => m.rttMs !== null), 10_000);
    return { relay, envoy, api, priority0, hostConnections, role };
  }

  it("moves new connections to the promoted replica, closes the ones still open on the old primary, and gives every backend every byte exactly once", async () => {
    const { relay, envoy, api, priority0, hostConnections, role } = await start();

    // Long-lived connections on the old primary, half their bytes sent before the switchover.
    const old: Client[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await open(envoy.listenerPort, `conn-old-${String(i).padStart(7, "0")}`);
      send(c, Buffer.concat([Buffer.from(c.id), lines(20)]));
      old.push(c);
    }
    await waitFor("m0 to have the old connections", () => backends[0].connections.filter((c) => c.head.toString().startsWith("conn-old")).length === 10);
    expect(await hostConnections()).toEqual({ m0: 10, m1: 0, m2: 0 });

    const decided = process.hrtime.bigint();
    const promoted = await api("POST", "/v1/services/kv/promote", { member: "m1" });
    expect(promoted.status).toBe(200);
    const view = await promoted.json();
    expect(view).toMatchObject({ primary: "m1", lastFailover: { kind: "switchover", member: "m1" } });
    expect(view.members.find((m: any) => m.name === "m0").role).toBe("replica");
    await waitFor("Envoy to take m1 as primary", async () => (await priority0()) === backends[1].address, 5_000, 1);
    console.log(`switchover: API call -> Envoy's config_dump shows the new priority 0 after ${(Number(process.hrtime.bigint() - decided) / 1e6).toFixed(1)} ms (including the call and the admin polling)`);

    const fresh: Client[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await open(envoy.listenerPort, `conn-new-${String(i).padStart(7, "0")}`);
      send(c, Buffer.concat([Buffer.from(c.id), lines(20)]));
      fresh.push(c);
    }
    // The old primary's connections are closed for their clients (Envoy, asked by the relay).
    await Promise.race([Promise.all(old.map((c) => c.closed)), new Promise((_, reject) => setTimeout(() => reject(new Error("the old primary's connections were not closed")), 5_000))]);
    for (const c of fresh) c.socket.end();
    await Promise.all(fresh.map((c) => c.closed));
    expect(await relay.metric("lockstep_relay_connections_closed_demoted_total", { service: "kv" })).toBe(10);
    expect(await envoy.stat("wasmcustom.lockstep.kv.closed_demoted")).toBe(10);

    // Old connections were served by m0, new ones by m1 (Envoy's own per-host counts; m0 may be
    // gone from Envoy's endpoints by now: detached, below).
    const after = await hostConnections();
    expect([after.m1, after.m2]).toEqual([10, 0]);
    expect([10, undefined]).toContain(after.m0);
    // The members in sync (m1, m2) have every connection exactly once, with exactly the client's
    // bytes. m0, out of sync once its old connections closed (below), has each of its old
    // connections once and no connection twice; connections opened after the controller took
    // it out do not reach it.
    const clients = [...old, ...fresh];
    const inSync = backends.filter((b) => b.name !== "m0");
    await waitFor("every member in sync to receive every connection in full", () => inSync.every((b) =>
      clients.every((c) => b.connections.find((r) => r.head.toString() === c.id)?.received === Buffer.concat(c.sent).length)), 10_000);
    for (const b of backends) {
      for (const c of clients) {
        const records = b.connections.filter((r) => r.head.toString() === c.id);
        if (b.name === "m0") {
          expect(records.length, `${b.name} / ${c.id}: never twice`).toBeLessThanOrEqual(1);
          if (old.includes(c)) expect(records, `${b.name} / ${c.id}: its own connection`).toHaveLength(1);
          continue;
        }
        expect(records, `${b.name} / ${c.id}`).toHaveLength(1);
        expect(records[0].receivedHash.copy().digest("hex"), `${b.name} / ${c.id}`).toBe(createHash("sha256").update(Buffer.concat(c.sent)).digest("hex"));
      }
    }
    expect((await relay.metricsText()).split("\n").filter((l) => l.startsWith("lockstep_relay_replica_detaches_total"))).toEqual([]);
    // Envoy closed them without flushing: m0 cannot be shown to hold every byte m1 took.
    expect(await relay.metric("lockstep_relay_replica_missed_connections_total", { service: "kv", replica: "m0" })).toBe(10);
    await waitFor("the controller to take m0 out of sync", async () => (await role("m0")) === "detached", 5_000);
    expect([await role("m1"), await role("m2")]).toEqual(["primary", "replica"]);
  });

  it("takes the old primary out of sync when Envoy closed a connection it was behind on (a bulk upload to a slow primary)", async () => {
    const { relay, api, envoy, role } = await start({ readBytesPerSecond: 4 << 20 });
    const upload = await open(envoy.listenerPort, `bulk-${"0".repeat(11)}`);
    const chunk = randomBytes(64 << 10);
    let pumping = true;
    const pump = () => { while (pumping && !upload.socket.destroyed && upload.socket.write(chunk)) { /* until the socket pushes back */ } };
    upload.socket.on("drain", pump);
    upload.socket.write(upload.id);
    pump();
    await new Promise((r) => setTimeout(r, 1500));
    expect((await api("POST", "/v1/services/kv/promote", { member: "m1" })).status).toBe(200);
    await upload.closed;
    pumping = false;
    await waitFor("the relay to end the stream", async () => (await relay.metric("lockstep_relay_streams_active")) === 0, 10_000);
    await new Promise((r) => setTimeout(r, 1000)); // m0 reads on at its pace
    const got = (b: RecordingBackend) => b.connections.find((c) => c.head.toString().startsWith("bulk-"))?.received ?? 0;
    console.log(`bulk upload at the switchover: old primary m0 took ${got(backends[0])} bytes, m1 ${got(backends[1])}, m2 ${got(backends[2])}`);
    expect(got(backends[1])).toBeGreaterThan(0);
    expect(await relay.metric("lockstep_relay_replica_missed_connections_total", { service: "kv", replica: "m0" })).toBe(1);
    await waitFor("the controller to take m0 out of sync", async () => (await role("m0")) === "detached", 5_000);
  });
});
