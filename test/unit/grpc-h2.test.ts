// The relay's gRPC transport on Node's HTTP/2 (relay/grpc-h2-server.ts, relay/grpc-h2-call.ts),
// driven by a raw node:http2 client so that it can send what a gRPC library never would:
// compressed or oversized messages, a stream cut inside a message, other methods. Also shows
// that a paused call holds its peer through HTTP/2 flow control. (A real gRPC client, grpc-js,
// plays the filter against it in relay.test.ts and reply-check.test.ts; Envoy in the
// integration tests.)
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import { connect, createServer, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders, type Http2Server, type ServerHttp2Stream } from "node:http2";
import { connect as netConnect, type AddressInfo, type Socket } from "node:net";
import { listenGrpcH2, MIRROR_METHOD_PATH, type GrpcH2Server } from "../../relay/grpc-h2-server.ts";
import { encodeGrpcMessage, GrpcH2Call } from "../../relay/grpc-h2-call.ts";
import { frameMessage, messagePrefix, GrpcMessageDecoder, type GrpcFramingError } from "../../relay/grpc-framing.ts";
import { CallStatus, type MirrorCall } from "../../relay/mirror-call.ts";
import { waitFor } from "../support/ports.ts";

interface Reply { headers: IncomingHttpHeaders; messages: Buffer[]; trailers: IncomingHttpHeaders; done: Promise<void> }

/** Collect a response: headers, decoded messages, trailers (for a trailers-only response, the
 *  headers); `done` once the status is in (the server's side of the stream is over). */
function reply(stream: ClientHttp2Stream): Reply {
  const r = { headers: {}, messages: [] as Buffer[], trailers: {} } as Reply;
  const decoder = new GrpcMessageDecoder(1 << 20);
  r.done = new Promise((resolve) => {
    stream.on("response", (h) => { r.headers = h; r.trailers = h; if (h["grpc-status"] !== undefined || h[":status"] !== 200) resolve(); });
    stream.on("trailers", (t) => { r.trailers = t; resolve(); });
    stream.on("close", resolve);
  });
  stream.on("data", (chunk: Buffer) => decoder.push(chunk, (m) => r.messages.push(Buffer.concat(m))));
  stream.on("error", () => {});
  return r;
}


const ping = (client: ClientHttp2Session) => new Promise<void>((resolve, reject) => client.ping((err) => (err ? reject(err) : resolve())));

describe("gRPC over Node's HTTP/2: the server", () => {
  let server: GrpcH2Server;
  let client: ClientHttp2Session;
  let calls: { call: MirrorCall; frames: Buffer[]; events: string[] }[];
  let framingErrors: GrpcFramingError[];
  /** Whether a call ends with OK once its peer half-closed. */
  let endOnEnd: boolean;

  const request = (headers: Record<string, string> = {}) =>
    client.request({ ":method": "POST", ":path": MIRROR_METHOD_PATH, "content-type": "application/grpc", te: "trailers", ...headers });

  beforeEach(async () => {
    calls = [];
    framingErrors = [];
    endOnEnd = true;
    server = await listenGrpcH2({
      host: "127.0.0.1", port: 0, streamWindowBytes: 1 << 20, connectionWindowBytes: 8 << 20, maxMessageBytes: 1024,
      call: (call) => {
        const c = { call, frames: [] as Buffer[], events: [] as string[] };
        call.on("data", (f) => c.frames.push(Buffer.concat(f)));
        for (const e of ["end", "cancelled", "error", "close"] as const) call.on(e, () => c.events.push(e));
        // An echo: every frame back, then OK once the peer half-closed.
        call.on("data", (f) => call.write(Buffer.concat(f)));
        call.on("end", () => { if (endOnEnd) call.end(); });
        calls.push(c);
      },
      framingError: (e) => framingErrors.push(e),
    });
    client = connect(`http://127.0.0.1:${server.port}`);
  });

  afterEach(async () => {
    client.destroy();
    await server.close();
  });

  it("serves the method: messages in, messages out, status OK in trailers", async () => {
    const s = request();
    const r = reply(s);
    const two = Buffer.concat([frameMessage(Buffer.from("first")), frameMessage(Buffer.from("second"))]);
    s.write(two.subarray(0, 8));
    s.end(two.subarray(8));
    await r.done;
    expect(r.headers[":status"]).toBe(200);
    expect(r.headers["content-type"]).toBe("application/grpc");
    expect(r.messages.map(String)).toEqual(["first", "second"]);
    expect(r.trailers["grpc-status"]).toBe("0");
    expect(calls[0].frames.map(String)).toEqual(["first", "second"]);
    expect(calls[0].events).toEqual(["end", "close"]);
  });

  it.each([
    ["a compressed message", Buffer.concat([frameMessage(Buffer.from("fine")), messagePrefix(2, 1), Buffer.from("zz")]), CallStatus.INVALID_ARGUMENT, "compressed"],
    ["a message longer than the maximum", Buffer.concat([frameMessage(Buffer.from("fine")), messagePrefix(1025, 0)]), CallStatus.RESOURCE_EXHAUSTED, "1025 bytes"],
  ])("ends a stream with %s with its status, counts it, and keeps serving", async (_what, bytes, code, detail) => {
    const s = request();
    const r = reply(s);
    s.write(bytes);
    await r.done;
    expect(r.trailers["grpc-status"]).toBe(String(code));
    expect(decodeURIComponent(String(r.trailers["grpc-message"]))).toContain(detail);
    expect(r.messages.map(String)).toEqual(["fine"]);
    expect(framingErrors.map((e) => e.code)).toEqual([code]);
    expect(calls[0].events.slice(0, 1)).toEqual(["error"]);
    const ok = request();
    const okReply = reply(ok);
    ok.end(frameMessage(Buffer.from("still here")));
    await okReply.done;
    expect(okReply.trailers["grpc-status"]).toBe("0");
    expect(okReply.messages.map(String)).toEqual(["still here"]);
  });

  it("ends a stream that stops inside a message with INVALID_ARGUMENT, and delivers no 'end'", async () => {
    const s = request();
    const r = reply(s);
    s.end(frameMessage(Buffer.from("cut short")).subarray(0, 9));
    await r.done;
    expect(r.trailers["grpc-status"]).toBe(String(CallStatus.INVALID_ARGUMENT));
    expect(decodeURIComponent(String(r.trailers["grpc-message"]))).toContain("inside a gRPC message");
    expect(calls[0].events).not.toContain("end");
  });

  it("answers another method UNIMPLEMENTED and a request that is not gRPC 415, without a call", async () => {
    const other = reply(client.request({ ":method": "POST", ":path": "/lockstep.mirror.v1.Mirror/Other", "content-type": "application/grpc" }));
    const get = reply(client.request({ ":method": "GET", ":path": MIRROR_METHOD_PATH, "content-type": "application/grpc" }));
    const notGrpc = reply(client.request({ ":method": "POST", ":path": MIRROR_METHOD_PATH, "content-type": "application/json" }));
    await Promise.all([other.done, get.done, notGrpc.done]);
    expect(other.trailers["grpc-status"]).toBe("12");
    expect(get.trailers["grpc-status"]).toBe("12");
    expect(notGrpc.headers[":status"]).toBe(415);
    expect(calls).toHaveLength(0);
  });

  it("sends an error before any message as a trailers-only response, its message percent-encoded", async () => {
    const s = request();
    const r = reply(s);
    s.write(frameMessage(Buffer.from("x")));
    await waitFor("the call", () => calls[0]?.frames.length === 1 && calls[0]);
    // The echo answered already: a fresh call that fails first.
    const t = request();
    const tr = reply(t);
    t.write(Buffer.alloc(0));
    await waitFor("the second call", () => calls[1]);
    calls[1].call.end(CallStatus.UNAVAILABLE, 'service "x" has no replica set: 100% unmirrored');
    await tr.done;
    expect(tr.headers[":status"]).toBe(200);
    expect(tr.headers["grpc-status"]).toBe("14");
    expect(decodeURIComponent(String(tr.headers["grpc-message"]))).toBe('service "x" has no replica set: 100% unmirrored');
    expect(tr.messages).toEqual([]);
    s.close();
    await r.done;
  });

  it("percent-encodes grpc-message: bytes outside printable ASCII and '%'", () => {
    expect(encodeGrpcMessage('DATA at offset 5, expected 0 "x"')).toBe('DATA at offset 5, expected 0 "x"');
    expect(encodeGrpcMessage("100% é\n")).toBe("100%25 %C3%A9%0A");
    expect(decodeURIComponent(encodeGrpcMessage("100% é\n"))).toBe("100% é\n");
  });

  it("tells the call of a stream the peer reset: cancelled, then closed", async () => {
    endOnEnd = false;
    const s = request();
    s.on("error", () => {});
    s.write(frameMessage(Buffer.from("x")));
    await waitFor("the call", () => calls[0]?.frames.length === 1);
    s.close(8); // Node's client half-closes, then sends RST_STREAM CANCEL
    await waitFor("the call to close", () => calls[0].events.includes("close"));
    expect(calls[0].events).toEqual(["end", "cancelled", "close"]);
  });

  it("tells the call of a connection that broke: cancelled, then closed", async () => {
    let socket: Socket | undefined;
    const broken = connect(`http://127.0.0.1:${server.port}`, { createConnection: () => (socket = netConnect(server.port, "127.0.0.1")) });
    broken.on("error", () => {});
    const s = broken.request({ ":method": "POST", ":path": MIRROR_METHOD_PATH, "content-type": "application/grpc" });
    s.on("error", () => {});
    s.write(frameMessage(Buffer.from("x")));
    await waitFor("the call", () => calls[0]?.frames.length === 1);
    socket!.destroy(); // no END_STREAM, no RST_STREAM: the connection is just gone
    await waitFor("the call to close", () => calls[0].events.includes("close"));
    expect(calls[0].events).toEqual(["cancelled", "close"]);
  });
});

describe("gRPC over Node's HTTP/2: a paused call", () => {
  const WINDOW = 65_535;
  let server: Http2Server;
  let client: ClientHttp2Session;
  let stream: ServerHttp2Stream | undefined;
  let call: GrpcH2Call | undefined;
  let got: Buffer[];
  let ended: boolean;
  /** The call pauses once it has delivered this many messages. */
  let pauseAfter: number;

  beforeEach(async () => {
    stream = call = undefined;
    got = [];
    ended = false;
    server = createServer({ settings: { initialWindowSize: WINDOW } });
    server.on("stream", (s) => {
      const c = new GrpcH2Call(s, 1 << 20, () => {});
      c.on("data", (m) => { got.push(Buffer.concat(m)); if (got.length === pauseAfter) c.pause(); });
      c.on("end", () => { ended = true; });
      stream = s;
      call = c;
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    client = connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  });

  afterEach(async () => {
    client.destroy();
    await new Promise((resolve) => server.close(resolve));
  });

  const request = () => {
    const s = client.request({ ":method": "POST", ":path": MIRROR_METHOD_PATH, "content-type": "application/grpc" });
    s.on("error", () => {});
    return s;
  };

  it("holds the peer once it used up the stream's window, then delivers everything in order and the end", async () => {
    pauseAfter = 1;
    const messages = Array.from({ length: 64 }, (_, i) => Buffer.alloc(16 << 10, i));
    const s = request();
    for (const m of messages) s.write(frameMessage(m));
    s.end();
    // Paused after the first message: the peer may send one window's worth, and no more.
    await waitFor("the peer to use up the stream window", () => stream?.state.localWindowSize === 0);
    for (let i = 0; i < 3; i++) await ping(client);
    expect(stream!.state.localWindowSize).toBe(0);
    expect(got).toHaveLength(1);
    expect(ended).toBe(false);
    call!.resume();
    await waitFor("every message and the end", () => ended);
    expect(got.map((m) => m[0])).toEqual(messages.map((_, i) => i));
    expect(got.every((m, i) => m.equals(messages[i]))).toBe(true);
  });

  it("tells of a reset at once, even while it is not reading the stream", async () => {
    pauseAfter = 1;
    const s = request();
    for (let i = 0; i < 16; i++) s.write(frameMessage(Buffer.alloc(16 << 10, i)));
    await waitFor("the peer to use up the stream window", () => stream?.state.localWindowSize === 0);
    const events: string[] = [];
    for (const e of ["cancelled", "close"] as const) call!.on(e, () => events.push(e));
    s.close(0); // RST_STREAM NO_ERROR: Node would close a stream it is not reading only once read
    await waitFor("the call to close", () => events.includes("close"));
    expect(events).toEqual(["cancelled", "close"]);
    expect(got).toHaveLength(1);
    expect(call!.destroyed).toBe(true);
  });

  it("keeps the messages of one chunk that come after a pause until resumed", async () => {
    pauseAfter = 3;
    request().end(Buffer.concat(Array.from({ length: 10 }, (_, i) => frameMessage(Buffer.from(`m${i}`)))));
    await waitFor("three messages", () => got.length === 3);
    await ping(client);
    expect(got.map(String)).toEqual(["m0", "m1", "m2"]);
    expect(ended).toBe(false);
    call!.resume();
    await waitFor("the end", () => ended);
    expect(got.map(String)).toEqual(Array.from({ length: 10 }, (_, i) => `m${i}`));
  });
});
