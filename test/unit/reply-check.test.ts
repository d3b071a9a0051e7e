// The relay's consistency check: the pure compare logic (window boundaries, short and long
// replica streams, late replies, CUT ends, bounds, frame order), then the relay itself with
// real TCP replicas, one of which answers differently.
import { describe, it, expect, afterEach } from "vitest";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { makeGenericClientConstructor, credentials, status, type ClientDuplexStream, type Client } from "@grpc/grpc-js";
import { ReplyCheck, WindowedDigest, MAX_PENDING_WINDOWS, type Divergence } from "../../relay/reply-check.ts";
import { FrameError, REPLY_WINDOW_BYTES as W, encodeOpen, encodeData, encodeEnd, encodeReplyDigest, encodeReplyEnd, decodeAck, type AckFrame, type ReplyEndKind } from "../../relay/frames.ts";
import { startRelay, MIRROR_SERVICE, type RelayServer } from "../../relay/server.ts";
import { parseRelayConfig } from "../../relay/config.ts";
import { RecordingBackend } from "../support/backends.ts";
import { waitFor } from "../support/ports.ts";

/** A check with replicas "a" and "b", recording what it reports. */
function setup(names = ["a", "b"]) {
  const seen = { diverged: new Map<string, Divergence>(), matched: new Map<string, number>(), abandoned: new Map<string, string>(), compared: new Map<string, number>() };
  const check = new ReplyCheck<string>({
    diverged: (r, d) => seen.diverged.set(r, d),
    matched: (r, n) => seen.matched.set(r, n),
    abandoned: (r, why) => seen.abandoned.set(r, why),
    compared: (r, n) => seen.compared.set(r, (seen.compared.get(r) ?? 0) + n),
  });
  for (const n of names) check.addReplica(n);
  /** Feed the primary's reply as the filter would: digests per chunk, then REPLY_END. */
  const primary = (reply: Buffer, end: ReplyEndKind | null = "PRIMARY_CLOSED", chunk = 7777) => {
    const d = new WindowedDigest();
    for (let at = 0; at < reply.length; at += chunk) {
      const first = d.windows;
      const crcs = d.push(reply.subarray(at, at + chunk));
      if (crcs.length) check.primaryDigests(first, crcs);
    }
    if (end) check.primaryEnded(d.total, d.tail, end);
  };
  const replica = (name: string, reply: Buffer, chunk = 1000, end = true) => {
    for (let at = 0; at < reply.length; at += chunk) check.replicaBytes(name, reply.subarray(at, at + chunk));
    if (end) check.replicaEnded(name);
  };
  return { check, seen, primary, replica };
}

const flip = (b: Buffer, at: number) => { const c = Buffer.from(b); c[at] ^= 0x20; return c; };

describe("reply check (pure)", () => {
  it("matches equal replies whatever the chunk sizes on either side, window by window", () => {
    const reply = randomBytes(5 * W + 123);
    const { check, seen, primary, replica } = setup();
    primary(reply, "PRIMARY_CLOSED", 3 * W + 1);
    replica("a", reply, 1);
    replica("b", reply, W);
    expect(seen.diverged.size).toBe(0);
    expect(seen.matched).toEqual(new Map([["a", reply.length], ["b", reply.length]]));
    expect(seen.compared).toEqual(new Map([["a", 5], ["b", 5]]));
    expect(check.verdict("a")).toBe("matched");
  });

  it.each([0, W - 1, W, 2 * W + 5, 3 * W - 1])("finds a difference at byte %i in the right window, for that replica only", (at) => {
    const reply = randomBytes(3 * W + 100);
    const { seen, primary, replica } = setup();
    primary(reply);
    replica("a", flip(reply, at), 4097);
    replica("b", reply, 4097);
    const window = Math.floor(at / W);
    expect(seen.diverged.get("a")).toMatchObject({ offset: window * W });
    expect(seen.diverged.get("a")!.detail).toMatch(new RegExp(`window ${window} \\(bytes ${window * W}-${window * W + W - 1}\\) differs`));
    expect(seen.diverged.has("b")).toBe(false);
    expect(seen.matched.get("b")).toBe(reply.length);
  });

  it("finds a difference in the last partial window as soon as both sides have it", () => {
    const reply = randomBytes(W + 50);
    const { seen, primary, replica } = setup(["a", "b"]);
    replica("a", flip(reply, W + 49), 333, false);
    replica("b", reply.subarray(0, W + 49), 333, false);
    expect(seen.diverged.size).toBe(0); // nothing to compare the tail with yet
    primary(reply);
    expect(seen.diverged.get("a")).toMatchObject({ offset: W }); // whatever "a" says later
    expect(seen.diverged.has("b")).toBe(false); // "b" may still be answering
    replica("b", flip(reply, W + 49).subarray(W + 49), 1, true);
    expect(seen.diverged.get("b")).toMatchObject({ offset: W });
    expect(seen.diverged.get("a")!.detail).toContain("last window 1 (bytes 16384-16433) differs");
  });

  it("judges a replica that answered fewer bytes only when its stream is over", () => {
    const reply = randomBytes(2 * W + 10);
    const { seen, check, primary, replica } = setup(["a"]);
    primary(reply);
    replica("a", reply.subarray(0, W + 3), 500, false);
    expect(check.verdict("a")).toBe("open");
    check.replicaEnded("a");
    expect(seen.diverged.get("a")).toEqual({ offset: W + 3, detail: `the replica answered ${W + 3} bytes, the primary ${2 * W + 10}` });
  });

  it("does not judge what a replica answered past the primary's closed stream (a primary killed with -9 closes with a FIN too, mid-reply)", () => {
    const reply = randomBytes(100);
    const { seen, primary, replica } = setup(["a"]);
    primary(reply);
    replica("a", Buffer.concat([reply, Buffer.from("extra")]), 1000, false);
    expect(seen.diverged.size).toBe(0);
    expect(seen.matched.get("a")).toBe(100);
  });

  it("waits for late replica replies: equal bytes that arrive after the primary's end match", () => {
    const reply = randomBytes(4 * W);
    const { seen, check, primary, replica } = setup(["a"]);
    primary(reply);
    replica("a", reply.subarray(0, 2 * W), 999, false);
    expect(check.verdict("a")).toBe("open");
    replica("a", reply.subarray(2 * W), 999, false);
    expect(seen.matched.get("a")).toBe(4 * W); // every byte the primary said, matched
    expect(seen.compared.get("a")).toBe(4);
  });

  it("holds a replica's digests while it is ahead of the primary's, then compares them", () => {
    const reply = randomBytes(3 * W);
    const { seen, primary, replica } = setup(["a"]);
    replica("a", reply, 5000, true);
    expect(seen.compared.size).toBe(0);
    primary(reply);
    expect(seen.matched.get("a")).toBe(3 * W);
  });

  it("with a CUT primary stream, judges the bytes up to its end and not the replica's extra bytes", () => {
    const reply = randomBytes(W + 700);
    const more = Buffer.concat([reply, randomBytes(3 * W)]);
    const { seen, primary, replica } = setup(["a", "b"]);
    primary(reply, "CUT");
    replica("a", more, 1234, false); // passes the cut point after REPLY_END: its CRC there is kept
    expect(seen.matched.get("a")).toBe(reply.length);
    replica("b", flip(more, W + 699), 1234, false); // differs just before the cut point
    expect(seen.diverged.get("b")).toMatchObject({ offset: W });
  });

  it("with a CUT primary stream, a replica that passed the cut point windows earlier has its whole windows judged, and is given up, not matched, on the last partial one", () => {
    const reply = randomBytes(2 * W + 700);
    const more = Buffer.concat([reply, randomBytes(100)]);
    const { seen, primary, replica } = setup(["a", "b"]);
    replica("a", more, 4096, false);
    replica("b", flip(more, W + 1), 4096, false);
    primary(reply, "CUT");
    expect(seen.matched.has("a")).toBe(false);
    expect(seen.abandoned.get("a")).toContain("last partial window cannot be compared");
    expect(seen.diverged.get("b")).toMatchObject({ offset: W });
  });

  it("judges the last partial window of a replica that answered past the primary's end before that end was known (a short reply differing in its first bytes is diverged, never matched)", () => {
    for (const end of ["PRIMARY_CLOSED", "CUT"] as const) {
      const t = setup(["same", "differs", "bigger"]);
      t.replica("same", Buffer.from("NIL\nOK\nlater\n"), 3, false);
      t.replica("differs", Buffer.from("VALUE yes\nOK\n"), 3, false);
      t.replica("bigger", Buffer.concat([Buffer.alloc(W + 5, 1), Buffer.from("NIL\nOK\nmore")]), 1000, false);
      t.primary(Buffer.from("NIL\nOK\n"), end);
      expect(t.seen.matched.get("same"), end).toBe(7);
      expect(t.seen.diverged.get("differs"), end).toMatchObject({ offset: 0 });
      expect(t.seen.diverged.get("bigger"), end).toMatchObject({ offset: 0 });
    }
    // Past a window boundary too: the replica's bytes of the primary's last window are kept.
    const reply = randomBytes(W + 300);
    const t = setup(["same", "differs"]);
    t.replica("same", Buffer.concat([reply, randomBytes(50)]), 999, false);
    t.replica("differs", Buffer.concat([flip(reply, W + 299), randomBytes(50)]), 999, false);
    t.primary(reply, "CUT", W);
    expect(t.seen.matched.get("same")).toBe(reply.length);
    expect(t.seen.diverged.get("differs")).toMatchObject({ offset: W });
  });

  it("treats an empty primary reply, cut or closed, as matched by a talkative replica (nothing of the primary's to compare)", () => {
    for (const end of ["CUT", "PRIMARY_CLOSED"] as const) {
      const t = setup(["a"]);
      t.replica("a", Buffer.from("banner"), 10, false);
      t.primary(Buffer.alloc(0), end);
      expect(t.seen.matched.get("a"), end).toBe(0);
      expect(t.seen.diverged.size).toBe(0);
    }
  });

  it("refuses digests out of order, a second end, and an end that disagrees with the windows", () => {
    const { check } = setup();
    check.primaryDigests(0, [1, 2]);
    expect(() => check.primaryDigests(3, [4])).toThrow(new FrameError("REPLY_DIGEST for window 3, expected 2"));
    expect(() => check.primaryEnded(3 * W, 0, "CUT")).toThrow("REPLY_END at 49152 bytes, but 2 whole windows were digested (expected 3)");
    check.primaryEnded(2 * W + 1, 0, "CUT");
    expect(() => check.primaryEnded(2 * W + 1, 0, "CUT")).toThrow("second REPLY_END");
    expect(() => check.primaryDigests(2, [5])).toThrow("REPLY_DIGEST after REPLY_END");
  });

  it("bounds the digests held per replica: a replica too far ahead or behind is given up, not judged", () => {
    const { check, seen } = setup(["ahead", "behind"]);
    const d = new WindowedDigest();
    const window = randomBytes(W);
    for (let i = 0; i <= MAX_PENDING_WINDOWS; i++) d.push(window);
    // "ahead" answers MAX + 1 windows before the primary's first digest arrives.
    for (let i = 0; i <= MAX_PENDING_WINDOWS; i++) check.replicaBytes("ahead", window);
    expect(seen.abandoned.get("ahead")).toContain("ahead of the primary's digests");
    // "behind" answers nothing while the primary's digests pile up.
    const crcs = new WindowedDigest().push(Buffer.concat(Array.from({ length: MAX_PENDING_WINDOWS + 1 }, () => window)));
    check.primaryDigests(0, crcs);
    expect(seen.abandoned.get("behind")).toContain("behind the primary's");
    expect(check.verdict("ahead")).toBe("abandoned");
    expect(seen.diverged.size).toBe(0);
  });
});

const MirrorClient = makeGenericClientConstructor(MIRROR_SERVICE, "Mirror");

describe("reply check in the relay, with real replicas", () => {
  let relay: RelayServer | undefined;
  let client: Client | undefined;
  const backends: RecordingBackend[] = [];
  afterEach(async () => {
    client?.close();
    await relay?.close();
    for (const b of backends.splice(0)) await b.kill();
  });

  async function start() {
    // Echo servers; "liar" changes one byte of what it echoes at reply offset 20000.
    const echo = await new RecordingBackend("echo", { reply: (c) => c }).start();
    let offset = 0;
    const liar = await new RecordingBackend("liar", {
      reply: (c) => { const out = Buffer.from(c); if (offset <= 20000 && 20000 < offset + c.length) out[20000 - offset] ^= 1; offset += c.length; return out; },
    }).start();
    backends.push(echo, liar);
    const log: string[] = [];
    relay = await startRelay(parseRelayConfig({ listen: { port: 0 }, metrics: { port: 0 }, services: { svc: [{ name: "echo", address: echo.address }, { name: "liar", address: liar.address }] } }), (l) => log.push(l));
    client = new MirrorClient(`127.0.0.1:${relay.grpcPort}`, credentials.createInsecure());
    return { relay, log };
  }

  function stream(flags: number) {
    const call = (client as any).Stream() as ClientDuplexStream<Buffer, Buffer>;
    const acks: AckFrame[] = [];
    call.on("data", (b: Buffer) => acks.push(decodeAck(b)));
    const st = new Promise<{ code: number; details: string }>((resolve) => { call.on("status", (s) => resolve(s)); call.on("error", () => {}); });
    call.write(encodeOpen({ version: 1, connectionId: 77n, flags, service: "svc", primary: "127.0.0.1:1", client: "127.0.0.1:5" }));
    return { call, acks, status: st };
  }

  it("detaches only the replica whose replies differ (DIVERGED), counts and logs it, and matches the other", async () => {
    const { relay, log } = await start();
    const s = stream(1);
    const input = randomBytes(50_000);
    s.call.write(encodeData(0, input));
    // The primary (an echo server too) answered the same bytes: digest them as the filter does.
    const d = new WindowedDigest();
    const crcs = d.push(input);
    s.call.write(encodeReplyDigest(0, crcs));
    await waitFor("the divergence to be found in window 1", () => relay.metrics.replicaDivergences.get({ service: "svc", replica: "liar" }) === 1);
    // The filter hears of it in the next ACK.
    await waitFor("an ACK saying so", () => s.acks.at(-1)?.replicas.find((r) => r.name === "liar")?.state === "DETACHED");
    expect(s.acks.at(-1)!.replicas.find((r) => r.name === "liar")).toMatchObject({ state: "DETACHED", reason: "DIVERGED" });
    s.call.write(encodeEnd(input.length));
    s.call.write(encodeReplyEnd(d.total, d.tail, "CUT")); // the echo servers say "bye" after END: not the primary's
    s.call.end();
    expect((await s.status).code).toBe(status.OK);
    const last = s.acks.at(-1)!;
    expect(last.replicas.map((r) => [r.name, r.state, r.reason])).toEqual([["echo", "CLOSED", "NONE"], ["liar", "DETACHED", "DIVERGED"]]);
    expect(relay.metrics.replicaDivergences.get({ replica: "echo" })).toBe(0);
    expect(relay.metrics.replicaRepliesMatched.get({ service: "svc", replica: "echo" })).toBe(1);
    expect(relay.metrics.replicaWindowsCompared.get({ replica: "echo" })).toBe(3);
    expect(relay.metrics.replicaDetaches.get({ replica: "liar", reason: "DIVERGED" })).toBe(1);
    expect(relay.metrics.json()["lockstep_relay_replica_divergences_total"]).toEqual([{ labels: { service: "svc", replica: "liar" }, value: 1 }]);
    const lines = log.filter((l) => l.startsWith("divergence:"));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp('^divergence: service "svc" replica "liar" connection 77 at reply offset 16384: window 1 \\(bytes 16384-32767\\) differs: ' +
      `replica CRC-32 [0-9a-f]{8}, primary ${crcs[1].toString(16).padStart(8, "0")}; replica detached from this connection \\(DIVERGED\\)$`));
  });

  it.each([
    ["closes its side", true, "DETACHED", "DIVERGED"],
    ["never closes its side", false, "CLOSED", "NONE"],
  ])("judges a replica that answered fewer bytes and %s: diverged if its replies are over, else given up after replyWaitMs", async (_how, closes, state, reason) => {
    // Echoes only the first half of what it gets; closes its side when the relay does, or never.
    let got = 0;
    const server = createServer({ allowHalfOpen: true }, (sock) => {
      sock.on("data", (c: Buffer) => { const keep = Math.max(0, Math.min(c.length, 15_000 - got)); got += c.length; if (keep) sock.write(c.subarray(0, keep)); });
      sock.on("end", () => { if (closes) sock.end(); });
      sock.on("error", () => {});
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const log: string[] = [];
    relay = await startRelay(parseRelayConfig({
      listen: { port: 0 }, metrics: { port: 0 }, limits: { replyWaitMs: 300 },
      services: { svc: [{ name: "short", address: `127.0.0.1:${(server.address() as { port: number }).port}` }] },
    }), (l) => log.push(l));
    client = new MirrorClient(`127.0.0.1:${relay.grpcPort}`, credentials.createInsecure());
    const s = stream(1);
    const input = randomBytes(30_000);
    s.call.write(encodeData(0, input));
    const d = new WindowedDigest();
    s.call.write(encodeReplyDigest(0, d.push(input)));
    s.call.write(encodeReplyEnd(d.total, d.tail, "PRIMARY_CLOSED"));
    await waitFor("the replica to receive every byte", () => got === input.length);
    s.call.end();
    expect((await s.status).code).toBe(status.OK);
    expect(s.acks.at(-1)!.replicas).toEqual([{ name: "short", queued: 30_000, acked: 30_000, state, reason }]);
    // Exactly one verdict either way.
    const verdicts = [relay.metrics.replicaDivergences.get(), relay.metrics.replicaRepliesMatched.get(), relay.metrics.replicaChecksAbandoned.get()];
    if (closes) {
      expect(verdicts).toEqual([1, 0, 0]);
      expect(log.find((l) => l.startsWith("divergence:"))).toContain("at reply offset 15000: the replica answered 15000 bytes, the primary 30000");
    } else {
      expect(verdicts).toEqual([0, 0, 1]);
      expect(log.find((l) => l.startsWith("reply check given up:"))).toContain("did not reach the primary's within 300 ms of the client's close");
    }
    server.close();
  });

  it("digests nothing on a stream opened without the flag", async () => {
    const { relay } = await start();
    const s = stream(0);
    s.call.write(encodeData(0, randomBytes(40_000)));
    s.call.end();
    expect((await s.status).code).toBe(status.OK);
    expect(s.acks.at(-1)!.replicas.map((r) => r.state)).toEqual(["CLOSED", "CLOSED"]);
    expect(relay.metrics.replicaWindowsCompared.get()).toBe(0);
    expect(relay.metrics.replicaRepliesMatched.get()).toBe(0);
  });

  it.each([
    ["REPLY_DIGEST without the flag", 0, [encodeReplyDigest(0, [1])], "REPLY_DIGEST on a stream opened without the REPLY_DIGESTS flag"],
    ["a gap in the windows", 1, [encodeReplyDigest(1, [1])], "REPLY_DIGEST for window 1, expected 0"],
    ["a REPLY_END that disagrees with the windows", 1, [encodeReplyEnd(W, 0, "CUT")], "REPLY_END at 16384 bytes, but 0 whole windows were digested"],
    ["unknown OPEN flags", 3, [], "OPEN frame: unknown flags 0x03"],
  ])("ends a stream with %s as INVALID_ARGUMENT", async (_what, flags, frames, message) => {
    const { relay } = await start();
    const s = stream(flags);
    for (const f of frames) s.call.write(f);
    const got = await s.status;
    expect(got.code).toBe(status.INVALID_ARGUMENT);
    expect(got.details).toContain(message);
    expect(relay.metrics.protocolErrors.get()).toBe(1);
  });
});
