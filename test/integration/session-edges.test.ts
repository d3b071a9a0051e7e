// Session mode's edges (issue 11, docs/SESSION.md), on real Envoy with the relay set by hand
// (no controller): a member that diverged on a connection is never spliced into it (the
// connection is reset, and counted) while the service's other connections are carried over;
// a server's normal close still closes the client, in both directions of half-close, and is
// no takeover.
import { describe, it, expect, afterEach } from "vitest";
import { connect, createServer, type Server, type Socket } from "node:net";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startKv } from "../support/stack.ts";
import { freePorts, waitFor } from "../support/ports.ts";
import type { Managed } from "../support/processes.ts";
import { kvExchange } from "../../samples/kv-client.ts";

const SERVICE = "edge";

interface Harness { relay: RelayHandle; envoy: EnvoyHandle; members: { name: string; address: string; port: number }[] }
let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => { for (const c of cleanup.reverse()) await c(); cleanup = []; });

/** Envoy in session mode, the relay with `members` (the first the primary, the second its
 *  successor), as the controller would set them. */
async function harness(members: { name: string; port: number }[]): Promise<Harness> {
  const ms = members.map((m) => ({ ...m, address: `127.0.0.1:${m.port}` }));
  const relay = await startRelay({});
  cleanup.push(() => relay.kill("SIGKILL"));
  const res = await fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/${SERVICE}/replicas`, {
    method: "PUT", headers: { authorization: `Bearer ${relay.controlToken}`, "content-type": "application/json" },
    body: JSON.stringify({ replicas: ms.map(({ name, address }) => ({ name, address })), primary: ms[0].name, successor: ms[1].name }),
  });
  expect(res.status).toBe(200);
  const envoy = await startEnvoy({ primary: ms[0].address, relayPort: relay.port, service: SERVICE, compareReplies: true, extra: { mode: "session" } });
  cleanup.push(() => envoy.kill());
  return { relay, envoy, members: ms };
}

const relayView = async (h: Harness) => (await fetch(`http://127.0.0.1:${h.relay.metricsPort}/v1/services/${SERVICE}/replicas`)).json() as Promise<any>;

/** A client connection that records what it gets and how it ends. */
function client(port: number) {
  const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  const got: Buffer[] = [];
  let ended = false;
  let error: string | undefined;
  socket.on("data", (c: Buffer) => got.push(c));
  socket.on("end", () => { ended = true; });
  socket.on("error", (e) => { error = e.message; });
  const closed = new Promise<void>((r) => socket.on("close", () => r()));
  return { socket, text: () => Buffer.concat(got).toString(), get ended() { return ended; }, get error() { return error; }, closed,
    connected: new Promise<void>((r) => socket.once("connect", () => r())) };
}

describe("session mode edges on real Envoy", () => {
  it("resets a connection on which the successor diverged, carries the others over, and counts both", async () => {
    const ports = await freePorts(3);
    const names = ["m0", "m1", "m2"];
    const procs: Managed[] = await Promise.all(names.map((n, i) => startKv(n, ports[i])));
    cleanup.push(async () => { for (const p of procs) await p.kill("SIGKILL"); });
    const h = await harness(names.map((name, i) => ({ name, port: ports[i] })));
    const port = h.envoy.listenerPort;
    await waitFor("Envoy to serve through the listener", async () => (await kvExchange(port, ["PING"]).catch(() => []))[0] === "PONG", 20_000, 50);

    // WHO's answer differs between members: on connection A, m1 and m2 diverge from m0.
    const a = client(port), b = client(port);
    await Promise.all([a.connected, b.connected]);
    a.socket.write("SET a 1\nWHO\n");
    b.socket.write("SET b 1\n");
    await waitFor("both answered", async () => a.text() === "OK\nI-AM m0\n" && b.text() === "OK\n", 5_000, 10);
    await waitFor("the divergences counted", async () => (await h.relay.metric("lockstep_relay_replica_divergences_total", { service: SERVICE })) === 2, 5_000, 20);

    await procs[0].kill("SIGKILL");
    b.socket.write("GET b\n");
    await waitFor("B answered by the successor", async () => b.text() === "OK\nVALUE 1\n", 5_000, 10);
    // A is closed (the relay resets its stream; Envoy closes the client's connection), having
    // got nothing from another member: never spliced.
    await waitFor("A's end", async () => a.ended || a.error !== undefined, 5_000, 10);
    expect(a.text()).toBe("OK\nI-AM m0\n");
    a.socket.destroy();
    const view = await relayView(h);
    expect(view.session.takeovers).toEqual([expect.objectContaining({ from: "m0", to: "m1", reset: 1 })]);
    expect(view.session.takeovers[0].carried).toBeGreaterThanOrEqual(1); // B (and Envoy's readiness check, if still closing)
    expect(await h.relay.metric("lockstep_relay_session_connections_reset_total", { service: SERVICE, reason: "not_eligible" })).toBe(1);
    b.socket.end();
    await b.closed;
    expect(b.error).toBeUndefined();
  }, 60_000);

  it("a server that closes after its last answer closes the client (no takeover); so does a client's half-close, with every byte on every member", async () => {
    // Each member: answers "BYE <what it read so far>" and half-closes when it reads "QUIT\n",
    // then keeps reading (a server's half-close), and records what it read once the client ends.
    const ports = await freePorts(3);
    const reads = new Map<string, string>();
    const servers: Server[] = [];
    for (const [i, name] of ["m0", "m1", "m2"].entries()) {
      const server = createServer({ allowHalfOpen: true }, (s: Socket) => {
        let read = "";
        s.on("data", (c: Buffer) => {
          read += c.toString();
          if (read.endsWith("QUIT\n") && s.writable) s.end(`BYE ${read.length}\n`);
          else if (!read.includes("QUIT")) s.write(`ECHO ${c.toString()}`);
        });
        s.on("end", () => { reads.set(`${name}:${read.split("\n")[0]}`, read); if (s.writable) s.end(); });
        s.on("error", () => {});
      });
      await new Promise<void>((r) => server.listen(ports[i], "127.0.0.1", () => r()));
      servers.push(server);
    }
    cleanup.push(async () => { for (const s of servers) s.close(); });
    const h = await harness(["m0", "m1", "m2"].map((name, i) => ({ name, port: ports[i] })));
    const port = h.envoy.listenerPort;

    // 1. The server half-closes first: the client sees its last answer and the end, and may go
    //    on sending; those bytes reach every member.
    const c1 = client(port);
    await c1.connected;
    c1.socket.write("one\n");
    await waitFor("the echo", async () => c1.text() === "ECHO one\n", 5_000, 10);
    c1.socket.write("QUIT\n");
    await waitFor("the server's end", async () => c1.ended, 5_000, 10);
    expect(c1.text()).toBe("ECHO one\nBYE 9\n");
    c1.socket.end("after the server's close\n");
    await c1.closed;
    expect(c1.error).toBeUndefined();
    await waitFor("every member read every byte", async () => ["m0", "m1", "m2"].every((m) => reads.get(`${m}:one`) === "one\nQUIT\nafter the server's close\n"), 5_000, 10);

    // 2. The client half-closes first: the server's answers still reach it, then the end.
    const c2 = client(port);
    await c2.connected;
    c2.socket.end("two\n");
    await waitFor("the server's end", async () => c2.ended, 5_000, 10);
    await c2.closed;
    expect(c2.text()).toBe("ECHO two\n");
    expect(c2.error).toBeUndefined();
    await waitFor("every member read every byte", async () => ["m0", "m1", "m2"].every((m) => reads.get(`${m}:two`) === "two\n"), 5_000, 10);

    // Neither was a takeover, and every member took every byte of both connections.
    const view = await relayView(h);
    expect(view.session).toMatchObject({ leader: "m0", takeovers: [] });
    expect(await h.relay.metric("lockstep_relay_replica_missed_connections_total", { service: SERVICE })).toBe(0);
    expect(await h.relay.metric("lockstep_relay_replica_divergences_total", { service: SERVICE })).toBe(0);
  }, 60_000);
});
