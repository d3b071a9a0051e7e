// The relay on its own: a grpc-js client plays the filter, real TCP servers play replicas.
// Covers what Envoy-level tests cannot provoke: malformed and out-of-order frames, the
// primary's exclusion, an unknown primary, and the exact ACK contents.
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import { createHash, randomBytes } from "node:crypto";
import { makeGenericClientConstructor, credentials, status, type ClientDuplexStream, type Client } from "@grpc/grpc-js";
import { startRelay, MIRROR_SERVICE, type RelayServer } from "../../relay/server.ts";
import { parseRelayConfig, RelayConfigError } from "../../relay/config.ts";
import { encodeOpen, encodeData, encodeEnd, decodeRelayFrame, type AckFrame, type CloseFrame } from "../../relay/frames.ts";
import { RecordingBackend, startBackends } from "../support/backends.ts";
import { waitFor } from "../support/ports.ts";

const MirrorClient = makeGenericClientConstructor(MIRROR_SERVICE, "Mirror");
const CONTROL_TOKEN = "relay-unit-control-token";

interface Stream { call: ClientDuplexStream<Buffer, Buffer>; acks: AckFrame[]; closes: CloseFrame[]; status: Promise<{ code: number; details: string }> }

describe("mirror relay", () => {
  let relay: RelayServer;
  let replicas: RecordingBackend[];
  let client: Client;
  /** Every call a test opened: cancelled after it, so that a failed assertion that left one open
   *  fails the test instead of holding the relay's close (it waits for open streams). */
  let calls: ClientDuplexStream<Buffer, Buffer>[] = [];

  function open(primary = "127.0.0.1:1", connectionId = 1n, service = "t"): Stream {
    const call = (client as any).Stream() as ClientDuplexStream<Buffer, Buffer>;
    calls.push(call);
    const acks: AckFrame[] = [];
    const closes: CloseFrame[] = [];
    call.on("data", (b: Buffer) => { const f = decodeRelayFrame(b); if (f.type === "ACK") acks.push(f); else closes.push(f); });
    const statusP = new Promise<{ code: number; details: string }>((resolve) => {
      call.on("status", (s) => resolve({ code: s.code, details: s.details }));
      call.on("error", () => {});
    });
    call.write(encodeOpen({ version: 1, connectionId, flags: 0, service, primary, client: "127.0.0.1:5" }));
    return { call, acks, closes, status: statusP };
  }

  beforeEach(async () => {
    replicas = await startBackends(["ra", "rb"]);
    relay = await startRelay(parseRelayConfig({
      listen: { port: 0 }, metrics: { port: 0 }, limits: { setWaitMs: 300 }, controlToken: CONTROL_TOKEN,
      services: { t: replicas.map((r) => ({ name: r.name, address: r.address })) },
    }));
    client = new MirrorClient(`127.0.0.1:${relay.grpcPort}`, credentials.createInsecure());
  });

  afterEach(async () => {
    for (const call of calls) call.cancel();
    calls = [];
    client.close();
    await relay.close();
    for (const r of replicas) await r.kill();
  });

  it("writes each stream's bytes in order to one new connection per replica, then half-closes", async () => {
    const s = open();
    const chunks = Array.from({ length: 20 }, () => randomBytes(1 + Math.floor(Math.random() * 9000)));
    let offset = 0;
    for (const c of chunks) { s.call.write(encodeData(offset, c)); offset += c.length; }
    s.call.write(encodeEnd(offset));
    s.call.end();
    expect((await s.status).code).toBe(status.OK);
    const want = createHash("sha256").update(Buffer.concat(chunks)).digest("hex");
    for (const r of replicas) {
      expect(r.connections).toHaveLength(1);
      expect(r.connections[0].ended).toBe(true);
      expect(r.connections[0].receivedHash.copy().digest("hex")).toBe(want);
    }
    const last = s.acks.at(-1)!;
    expect(last.received).toBe(offset);
    expect(last.replicas.map((x) => [x.name, x.queued, x.acked, x.state])).toEqual([["ra", offset, offset, "CLOSED"], ["rb", offset, offset, "CLOSED"]]);
    expect(relay.metrics.replicaReplyDropped.get({ replica: "ra" })).toBe(replicas[0].connections[0].sent);
  });

  it.each([
    ["as configured", (port: number) => `127.0.0.1:${port}`],
    ["with a leading zero in the port", (port: number) => `127.0.0.1:0${port}`],
    ["as an IPv4-mapped IPv6 address", (port: number) => `[::ffff:127.0.0.1]:${port}`],
  ])("never mirrors a connection to the replica that is its primary, spelled %s", async (_how, spell) => {
    const s = open(spell(replicas[0].port));
    s.call.write(encodeData(0, Buffer.from("hello")));
    s.call.end();
    await s.status;
    expect(replicas[0].connections).toHaveLength(0);
    expect(replicas[1].connections).toHaveLength(1);
    expect(s.acks.at(-1)!.replicas.map((r) => r.name)).toEqual(["rb"]);
  });

  it("mirrors nowhere when Envoy could not name the primary", async () => {
    const s = open("");
    s.call.write(encodeData(0, Buffer.from("hello")));
    s.call.end();
    expect((await s.status).code).toBe(status.OK);
    expect(replicas.every((r) => r.connections.length === 0)).toBe(true);
    expect(relay.metrics.unmirrored.get()).toBe(1);
  });

  it.each([
    ["DATA before OPEN", (c: ClientDuplexStream<Buffer, Buffer>) => c.write(encodeData(0, Buffer.from("x"))), "first frame must be OPEN"],
    ["a gap in the offsets", (c: ClientDuplexStream<Buffer, Buffer>) => { c.write(encodeOpen({ version: 1, connectionId: 1n, flags: 0, service: "t", primary: "127.0.0.1:1", client: "" })); c.write(encodeData(5, Buffer.from("x"))); }, "DATA at offset 5, expected 0"],
    ["an END that disagrees", (c: ClientDuplexStream<Buffer, Buffer>) => { c.write(encodeOpen({ version: 1, connectionId: 1n, flags: 0, service: "t", primary: "127.0.0.1:1", client: "" })); c.write(encodeEnd(3)); }, "END at 3, but 0 bytes"],
    ["garbage", (c: ClientDuplexStream<Buffer, Buffer>) => c.write(Buffer.from([0x42, 1, 2])), "unknown frame type 0x42"],
  ])("ends a stream with %s as INVALID_ARGUMENT and keeps serving others", async (_what, send, message) => {
    const call = (client as any).Stream() as ClientDuplexStream<Buffer, Buffer>;
    calls.push(call);
    call.on("data", () => {});
    call.on("error", () => {});
    const st = new Promise<{ code: number; details: string }>((resolve) => call.on("status", (s) => resolve(s)));
    send(call);
    const got = await st;
    expect(got.code).toBe(status.INVALID_ARGUMENT);
    expect(got.details).toContain(message);
    expect(relay.metrics.protocolErrors.get()).toBe(1);
    const ok = open();
    ok.call.write(encodeData(0, Buffer.from("still here")));
    ok.call.end();
    expect((await ok.status).code).toBe(status.OK);
    await waitFor("replica connections to close", () => replicas.every((r) => r.connections.length >= 1 && r.connections.every((c) => c.closed)));
  });

  it("leaves nothing open after 200 streams, finished or cancelled", async () => {
    const streams = Array.from({ length: 200 }, (_, i) => {
      const s = open("127.0.0.1:1", BigInt(i));
      s.call.write(encodeData(0, randomBytes(100)));
      if (i % 4 === 0) s.call.cancel(); else s.call.end();
      return s;
    });
    await Promise.all(streams.map((s) => s.status));
    await waitFor("streams and replica connections to drain", () =>
      relay.metrics.streamsActive.get() === 0 && relay.metrics.replicaActive.get({ replica: "ra" }) === 0 && relay.metrics.replicaActive.get({ replica: "rb" }) === 0);
    // A stream cancelled at once may never reach the relay; every finished one did.
    expect(relay.metrics.streamsTotal.get()).toBeGreaterThanOrEqual(150);
    expect(relay.metrics.queuedBytes.get()).toBe(0);
    await waitFor("replica sockets to close", () => replicas.every((r) => r.connections.every((c) => c.closed)));
  });

  it("takes a new replica set for new connections only", async () => {
    const first = open();
    await waitFor("first ACK listing both replicas", () => first.acks.some((a) => a.replicas.length === 2 && a.replicas.every((r) => r.state === "LIVE")));
    relay.setReplicas([{ name: "rb", address: replicas[1].address }], "t");
    const second = open();
    first.call.write(encodeData(0, Buffer.from("one")));
    second.call.write(encodeData(0, Buffer.from("two")));
    first.call.end(); second.call.end();
    await Promise.all([first.status, second.status]);
    expect(first.acks.at(-1)!.replicas.map((r) => r.name)).toEqual(["ra", "rb"]);
    expect(second.acks.at(-1)!.replicas.map((r) => r.name)).toEqual(["rb"]);
    expect(() => relay.setReplicas([{ name: "bad name", address: "x" }], "t")).toThrow('"replicas[0].name"');
  });

  it("keeps a replica set per service, set through its control call, and refuses bad ones without change", async () => {
    const base = `http://127.0.0.1:${relay.metricsPort}/v1/services/t/replicas`;
    const put = (body: string) => fetch(base, { method: "PUT", body, headers: { authorization: `Bearer ${CONTROL_TOKEN}` } });
    expect((await put(JSON.stringify({ replicas: [{ name: "rb", address: replicas[1].address }] }))).status).toBe(200);
    for (const bad of ["not json", JSON.stringify({ replicas: [{ name: "x y", address: "a:1" }] }), JSON.stringify({ other: 1 })]) {
      const res = await put(bad);
      expect(res.status).toBe(400);
      expect((await res.json()).error).toMatch(/JSON|replicas/);
    }
    expect((await (await fetch(base)).json()).replicas).toEqual([{ name: "rb", address: replicas[1].address }]);
    // Service "t" now feeds rb only.
    const s = open();
    s.call.write(encodeData(0, Buffer.from("to t")));
    s.call.end();
    await s.status;
    expect(s.acks.at(-1)!.replicas.map((r) => r.name)).toEqual(["rb"]);
    expect(relay.metrics.replicaConnections.get({ service: "t", replica: "rb" })).toBe(1);
    expect(relay.metrics.replicaConnections.get({ replica: "ra" })).toBe(0);
    expect(relay.metrics.replicaLag.get()).toBe(0);
  });

  it("asks the filter to close connections still open on a former primary when the controller names another (a switchover)", async () => {
    const [a, b] = replicas;
    const put = (primary: string) => fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/t/replicas`, {
      method: "PUT", headers: { authorization: `Bearer ${CONTROL_TOKEN}` },
      body: JSON.stringify({ replicas: [{ name: "ra", address: a.address }, { name: "rb", address: b.address }], primary }),
    });
    expect((await put("ra")).status).toBe(200);
    const onA = open(a.address, 21n);
    const onB = open(b.address, 22n);
    await waitFor("both streams to start", () => onA.acks.length > 0 && onB.acks.length > 0);
    expect((await put("rb")).status).toBe(200); // rb is the primary now
    await waitFor("a CLOSE on the connection whose primary was ra", () => onA.closes.length === 1);
    expect(onA.closes).toEqual([{ type: "CLOSE", reason: "PRIMARY_DEMOTED" }]);
    const late = open(a.address, 23n); // Envoy had not taken the switch yet
    await waitFor("a CLOSE on a new connection to the former primary", () => late.closes.length === 1);
    expect(onB.closes).toEqual([]);
    expect(relay.metrics.closedDemoted.get({ service: "t" })).toBe(2);
    expect((await put("nobody")).status).toBe(400);
    // The successor (session mode) must be another member, and comes with a primary.
    const putWith = (body: unknown) => fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/t/replicas`, { method: "PUT", headers: { authorization: `Bearer ${CONTROL_TOKEN}` }, body: JSON.stringify(body) });
    const members = [{ name: "ra", address: a.address }, { name: "rb", address: b.address }];
    for (const bad of [{ replicas: members, primary: "rb", successor: "rb" }, { replicas: members, primary: "rb", successor: "nobody" }, { replicas: members, successor: "ra" }]) {
      const res = await putWith(bad);
      expect(res.status).toBe(400);
      expect((await res.json()).error).toMatch(/"successor" must name a member of "replicas" other than "primary"/);
    }
    const named = await putWith({ replicas: members, primary: "rb", successor: "ra" });
    expect(await named.json()).toMatchObject({ primary: "rb", successor: "ra", session: { leader: "rb", open: 0, takeovers: [] } });
    for (const s of [onA, onB, late]) s.call.end();
    await Promise.all([onA, onB, late].map((s) => s.status));
  });

  it("keeps a former primary that left the set (frozen, killed) demoted until it is rejoined: then, as a successor Envoy falls back to, its connections are not closed", async () => {
    const [a, b] = replicas;
    const put = (members: [string, string][], primary: string) => fetch(`http://127.0.0.1:${relay.metricsPort}/v1/services/t/replicas`, {
      method: "PUT", headers: { authorization: `Bearer ${CONTROL_TOKEN}` },
      body: JSON.stringify({ replicas: members.map(([name, address]) => ({ name, address })), primary }),
    });
    expect((await put([["ra", a.address], ["rb", b.address]], "ra")).status).toBe(200);
    expect((await put([["rb", b.address]], "rb")).status).toBe(200); // ra froze: rb promoted, ra out of the set
    // ra wakes up with a connection Envoy sent it before it applied the new endpoints: closed.
    const woken = open(a.address, 30n);
    await waitFor("a CLOSE on a connection to the former primary that left the set", () => woken.closes.length === 1);
    woken.call.end();
    await woken.status;
    expect((await put([["rb", b.address], ["ra", a.address]], "rb")).status).toBe(200); // ra reseeded and rejoined
    // rb dies; Envoy falls back to ra (its successor) before the controller names it primary.
    const onA = open(a.address, 31n);
    await waitFor("the stream to start", () => onA.acks.length > 0);
    await new Promise((r) => setTimeout(r, 100));
    expect(onA.closes).toEqual([]);
    expect(relay.metrics.closedDemoted.get({ service: "t" })).toBe(1); // the woken one only
    onA.call.end();
    await onA.status;
  });

  it("never lends a service's replicas to another: a service without a set waits for one, then goes unmirrored, counted", async () => {
    const s = open("127.0.0.1:1", 9n, "other");
    s.call.write(encodeData(0, Buffer.from("to other")));
    const got = await s.status;
    expect(got.code).toBe(status.UNAVAILABLE);
    expect(got.details).toContain('service "other" has no replica set');
    expect(s.acks).toHaveLength(0); // nothing acknowledged: the filter counts every byte unmirrored
    expect(relay.view("other").replicas).toBeNull();
    expect(relay.metrics.unmirrored.get({ service: "other", reason: "no_replica_set" })).toBe(1);
    expect(replicas.every((r) => r.connections.length === 0)).toBe(true);
  });

  it("holds a new connection's bytes while its service's set is not known, and mirrors all of them once it is", async () => {
    const s = open("127.0.0.1:1", 10n, "late");
    const chunks = [randomBytes(1000), randomBytes(70_000)];
    s.call.write(encodeData(0, chunks[0]));
    s.call.write(encodeData(1000, chunks[1]));
    s.call.write(encodeEnd(71_000));
    await new Promise((r) => setTimeout(r, 100));
    expect(s.acks).toHaveLength(0);
    relay.setReplicas([{ name: "ra", address: replicas[0].address }], "late");
    s.call.end();
    expect((await s.status).code).toBe(status.OK);
    expect(replicas[0].connections).toHaveLength(1);
    expect(replicas[0].connections[0].receivedHash.copy().digest("hex")).toBe(createHash("sha256").update(Buffer.concat(chunks)).digest("hex"));
    expect(s.acks.at(-1)!.replicas.map((r) => [r.name, r.acked, r.state])).toEqual([["ra", 71_000, "CLOSED"]]);
    expect(relay.metrics.queuedBytes.get()).toBe(0);
  });

  it("counts a replica that did not take every byte of a connection as having missed it, and only then", async () => {
    const done = open("127.0.0.1:1", 11n);
    done.call.write(encodeData(0, randomBytes(5000)));
    done.call.end();
    expect((await done.status).code).toBe(status.OK);
    expect(relay.metrics.replicaMissed.get()).toBe(0);
    // A reset stream: how much the primary took is unknown, so every replica missed it.
    const reset = open("127.0.0.1:1", 12n);
    reset.call.write(encodeData(0, randomBytes(5000)));
    await waitFor("an ACK", () => reset.acks.some((a) => a.received === 5000));
    reset.call.cancel();
    await waitFor("the reset to be counted", () => relay.metrics.replicaMissed.get() === 2);
    expect(relay.metrics.replicaMissed.get({ service: "t", replica: "ra" })).toBe(1);
  });

  it("gathers a connection's small frames into few writes per replica (replicaWriteDelayMs), every byte in order, and flushes at the end", async () => {
    const gathering = await startRelay(parseRelayConfig({
      listen: { port: 0 }, metrics: { port: 0 }, replicaWriteDelayMs: 100,
      services: { t: replicas.map((r) => ({ name: r.name, address: r.address })) },
    }));
    const gClient = new MirrorClient(`127.0.0.1:${gathering.grpcPort}`, credentials.createInsecure());
    try {
      const call = (gClient as any).Stream() as ClientDuplexStream<Buffer, Buffer>;
      const acks: AckFrame[] = [];
      call.on("data", (b: Buffer) => { const f = decodeRelayFrame(b); if (f.type === "ACK") acks.push(f); });
      const done = new Promise<number>((resolve) => { call.on("status", (st) => resolve(st.code)); call.on("error", () => {}); });
      call.write(encodeOpen({ version: 1, connectionId: 1n, flags: 0, service: "t", primary: "127.0.0.1:1", client: "127.0.0.1:5" }));
      const chunks = Array.from({ length: 40 }, (_, i) => Buffer.from(`command ${i}\r\n`));
      let offset = 0;
      for (const c of chunks.slice(0, 20)) { call.write(encodeData(offset, c)); offset += c.length; }
      await waitFor("the first 20 frames on both replicas", () => replicas.every((r) => r.connections[0]?.received === offset));
      // 20 frames sent back to back reached each replica in a few writes, not one write each.
      for (const r of replicas) expect(r.connections[0].reads).toBeLessThanOrEqual(3);
      for (const c of chunks.slice(20)) { call.write(encodeData(offset, c)); offset += c.length; }
      call.write(encodeEnd(offset));
      call.end();
      expect(await done).toBe(status.OK);
      const want = createHash("sha256").update(Buffer.concat(chunks)).digest("hex");
      for (const r of replicas) {
        expect(r.connections[0].receivedHash.copy().digest("hex")).toBe(want);
        expect(r.connections[0].ended).toBe(true);
      }
      expect(acks.at(-1)!.replicas.map((x) => [x.queued, x.acked, x.state])).toEqual([[offset, offset, "CLOSED"], [offset, offset, "CLOSED"]]);
    } finally {
      gClient.close();
      await gathering.close();
    }
  });

  it.each([
    [{ listen: { port: 70000 } }, '"listen.port"'],
    [{ limits: { maxLagBytesPerConnection: 1000 } }, '"limits.maxLagBytesPerConnection" must be a whole number from 1048576'],
    [{ limits: { speed: 1 } }, '"limits.speed" is not a known limit'],
    [{ services: { t: [{ name: "a", address: "nope" }] } }, '"services.t[0].address" must be "ip:port"'],
    [{ replicas: [{ name: "a", address: "127.0.0.1:1" }] }, '"replicas" is gone: give each service its own set'],
    [{ extra: true }, '"extra" is not a known field'],
    [{ replicaWriteDelayMs: 101 }, '"replicaWriteDelayMs" must be a whole number from 0 to 100'],
  ])("refuses the configuration %j", (raw, message) => {
    expect(() => parseRelayConfig(raw)).toThrow(RelayConfigError);
    expect(() => parseRelayConfig(raw)).toThrow(message);
  });
});
