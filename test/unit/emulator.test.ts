// The proxy-wasm host emulator's own mechanics, proven with a tiny AssemblyScript probe module
// (test/emulator/fixture/probe.ts) rather than the filter. Probe commands, by the first byte of
// the client's data: R replace, P prepend, A append, B bad set_buffer_bytes range, X abort,
// U call an unimplemented import, C read the plugin config outside configure, S set the
// upstream buffer from the downstream callback, Q property lookups, M read a metric, T time,
// W fd_write; a last byte "!" returns Pause. Upstream: p returns Pause, r replaces. gRPC
// messages: resume, append, badctx, rootcont.
import { describe, it, expect, beforeAll } from "vitest";
import {
  createNetworkHost, compileAssemblyScript, functionImports, Action, Status, PeerType, MetricType,
  type HostOptions, type NetworkHost,
} from "../emulator/host.ts";

let probe: string;
const CONFIG = JSON.stringify({ probe: true });

beforeAll(() => {
  probe = compileAssemblyScript("test/emulator/fixture/probe.ts", { abort: "test/emulator/fixture/probe/abortHandler" });
});

function load(extra: Partial<HostOptions> = {}) {
  return createNetworkHost({ wasmPath: probe, pluginConfig: CONFIG, vmConfig: "vm-cfg", ...extra });
}
const connect = (host: NetworkHost) => host.newConnection({ connectionId: 42n, source: "127.0.0.1:50000", upstream: "127.0.0.1:7001" });
const infoLogs = (host: NetworkHost) => host.logs.filter((l) => l.level === "info").map((l) => l.message);

/** A wasm binary with one function import of the given params (all i32) and results. */
function moduleImporting(module: string, name: string, params: number, results = 1): Uint8Array {
  const str = (s: string) => [s.length, ...Buffer.from(s)];
  const section = (id: number, body: number[]) => [id, body.length, ...body];
  const type = [1, 0x60, params, ...Array(params).fill(0x7f), results, ...Array(results).fill(0x7f)];
  const imp = [1, ...str(module), ...str(name), 0x00, 0];
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0, ...section(1, type), ...section(2, imp)]);
}

describe("host emulator: loading", () => {
  it("instantiates, runs _initialize, vm_start and configure with both configurations", () => {
    const { host } = load();
    expect(host.configured).toBe(true);
    expect(host.vmStarted).toBe(true);
    expect(infoLogs(host)).toEqual(["probe vm config: vm-cfg", `probe configured: ${CONFIG}`]);
    expect(host.metric("probe.config_bytes")).toBe(CONFIG.length);
    expect(host.tickPeriodMs).toBe(100);
    expect(host.violations).toEqual([]);
  });

  it("reports a refused configuration, and reset() gives a fresh instance", () => {
    const handle = load({ pluginConfig: "bad config" });
    expect(handle.host.configured).toBe(false);
    connect(handle.host).downstreamData("abc");
    expect(handle.host.metric("probe.downstream_bytes")).toBe(3);
    const fresh = handle.reset();
    expect(handle.host).toBe(fresh);
    expect(fresh.metric("probe.downstream_bytes")).toBe(0);
  });

  it("refuses a module whose import has another arity than the ABI, naming it and both signatures", () => {
    const wasm = moduleImporting("env", "proxy_grpc_send", 3);
    expect(functionImports(wasm)).toEqual([{ module: "env", name: "proxy_grpc_send", params: ["i32", "i32", "i32"], results: ["i32"] }]);
    expect(() => createNetworkHost({ wasm, pluginConfig: "" })).toThrow(
      "emulator: import type mismatch for env.proxy_grpc_send: the module declares (i32, i32, i32) -> (i32), the ABI says (i32, i32, i32, i32) -> (i32)");
    expect(() => createNetworkHost({ wasm: moduleImporting("wasi_snapshot_preview1", "fd_write", 4, 0), pluginConfig: "" }))
      .toThrow(/import type mismatch for wasi_snapshot_preview1\.fd_write/);
  });

  it("refuses an import Envoy does not provide (env.abort): the abort redirection is missing", () => {
    expect(() => createNetworkHost({ wasm: moduleImporting("env", "abort", 4, 0), pluginConfig: "" }))
      .toThrow("emulator: the module imports env.abort, which Envoy does not provide (missing import)");
  });

  it("throws, naming it, when the module calls an import it does not implement, and then treats the VM as failed", () => {
    const { host } = load();
    const conn = connect(host);
    expect(() => conn.downstreamData("U")).toThrow("emulator: proxy_http_call not implemented");
    expect(host.failed).toContain("proxy_on_downstream_data");
    expect(() => conn.downstreamData("more")).toThrow(/after the VM failed/);
  });

  it("routes the module's abort message through proxy_log (critical) and surfaces the trap", () => {
    const { host } = load();
    expect(() => connect(host).downstreamData("X")).toThrow(/proxy_on_downstream_data\(2, 1, 0\) failed: .*unreachable/);
    const critical = host.logs.filter((l) => l.level === "critical").map((l) => l.message);
    expect(critical).toHaveLength(1);
    expect(critical[0]).toMatch(/^probe aborted: probe asked to abort at test\/emulator\/fixture\/probe\.ts:\d+$/);
  });
});

describe("host emulator: connection data", () => {
  it("keeps the bytes under Pause and hands over the grown buffer next time; Continue drains it to the upstream", () => {
    const { host } = load();
    const conn = connect(host);
    expect(conn.downstreamData("ab!")).toEqual({ action: Action.PAUSE, forwarded: Buffer.alloc(0) });
    expect(conn.downstreamPaused).toBe(true);
    expect(conn.downstreamData("cd")).toEqual({ action: Action.CONTINUE, forwarded: Buffer.from("ab!cd") });
    expect(conn.pendingDownstream.length).toBe(0);
    const [stream] = host.grpcStreams.values();
    expect(stream.sent.map(String)).toEqual(["ab!", "ab!cd"]); // the callback saw 3, then 5 bytes
    expect(host.metric("probe.downstream_bytes")).toBe(8);
    expect(host.metrics.get("probe.sizes")).toMatchObject({ type: MetricType.HISTOGRAM, samples: [3n, 5n] });
  });

  it.each([
    ["Rxyz", "REPLACED"],
    ["Pabc", "pre:Pabc"],
    ["Aabc", "Aabc:post"],
  ])("proxy_set_buffer_bytes changes what is forwarded (%s -> %s)", (input, output) => {
    const { host } = load();
    expect(connect(host).downstreamData(input).forwarded.toString()).toBe(output);
    expect(host.violations).toEqual([]);
  });

  it("answers BadArgument for a set_buffer_bytes range Envoy cannot do (start inside the buffer)", () => {
    const { host } = load();
    expect(connect(host).downstreamData("Bxyz").forwarded.toString()).toBe("Bxyz");
    expect(infoLogs(host)).toContain(`bad set status ${Status.BAD_ARGUMENT}`);
  });

  it("records buffer access outside the owning callback as a violation", () => {
    const { host } = load();
    const conn = connect(host);
    conn.downstreamData("S");
    conn.downstreamData("C");
    expect(host.violations).toHaveLength(2);
    expect(host.violations[0]).toMatch(/^proxy_set_buffer_bytes\(3\) in proxy_on_downstream_data/);
    expect(host.violations[1]).toMatch(/^proxy_get_buffer_bytes\(7\) in proxy_on_downstream_data/);
  });

  it("forwards upstream data (after set_buffer_bytes); Pause there is a violation and holds the bytes", () => {
    const { host } = load();
    const conn = connect(host);
    expect(conn.upstreamData("hello").forwarded.toString()).toBe("hello");
    expect(conn.upstreamData("rxx").forwarded.toString()).toBe("upstream-replaced");
    expect(host.violations).toEqual([]);
    expect(conn.upstreamData("p1")).toEqual({ action: Action.PAUSE, forwarded: Buffer.alloc(0) });
    expect(host.violations).toHaveLength(1);
    expect(host.violations[0]).toContain("proxy_on_upstream_data(2) returned 1 (Pause)");
    expect(conn.upstreamData("q").action).toBe(Action.PAUSE); // the module saw "p1q": held bytes plus new
    expect(conn.pendingUpstream.toString()).toBe("p1q");
    expect(host.violations).toHaveLength(2);
    expect(conn.toClient.map(String)).toEqual(["hello", "upstream-replaced"]);
  });

  it("calls proxy_on_upstream_connection_close(Unknown) after upstream data with end_of_stream, as Envoy", () => {
    const { host } = load();
    const conn = connect(host);
    expect(conn.upstreamData("bye", true).forwarded.toString()).toBe("bye");
    expect(infoLogs(host).at(-1)).toBe(`upstream close 2 peer=${PeerType.UNKNOWN}`);
    expect(conn.upstreamClosed).toBe(true);
  });

  it("answers property lookups by NUL-separated path, with Envoy's encodings", () => {
    const { host } = load();
    const conn = host.newConnection({ connectionId: 42n, source: "127.0.0.1:50000" });
    expect(infoLogs(host)).toContain("new connection 2 id=42 source=127.0.0.1:50000 upstream=-");
    conn.setUpstreamAddress("127.0.0.1:7001");
    conn.downstreamData("Q");
    expect(infoLogs(host)).toContain("upstream nul=127.0.0.1:7001 dotted=NotFound port=7001");
  });

  it("runs close callbacks and done() as Envoy does, then refuses a deleted connection", () => {
    const { host } = load();
    const conn = connect(host);
    expect(host.metric("probe.active")).toBe(1);
    conn.closeDownstream();
    conn.done();
    expect(infoLogs(host).slice(-2)).toEqual([`downstream close 2 peer=${PeerType.REMOTE}`, "deleted 2"]);
    expect(host.metric("probe.active")).toBe(0);
    expect([...host.grpcStreams.values()][0].closedByModule).toBe("close");
    expect(() => conn.downstreamData("x")).toThrow(/already deleted/);
  });
});

describe("host emulator: gRPC", () => {
  it("records the stream the module opened: cluster from the GrpcService proto, metadata, context", () => {
    const { host } = load();
    connect(host);
    const streams = [...host.grpcStreams.values()];
    expect(streams).toHaveLength(1);
    expect(streams[0]).toMatchObject({
      kind: "stream", cluster: "probe_relay", service: "probe.Mirror", method: "Stream", initialMetadata: [["x-probe", "1"]],
      contextId: 2, closedByModule: null, endOfStreamSent: false,
    });
    expect(streams[0].token % 4).toBe(2);
  });

  it("delivers receive, metadata and close callbacks to the root context with the token", () => {
    const { host } = load();
    connect(host);
    const [{ token }] = host.grpcStreams.values();
    host.grpcReceive(token, Buffer.from("hi"));
    host.grpcReceiveInitialMetadata(token, [["x-meta", "v1"]]);
    host.grpcClose(token, 14, "unavailable");
    expect(infoLogs(host).slice(-3)).toEqual([
      `grpc_receive root=1 token=${token} conn=2 msg=hi`,
      `grpc_initial_metadata root=1 token=${token} count=1 x-meta=v1`,
      `grpc_close root=1 token=${token} status=14 get_status=14 message=unavailable`,
    ]);
    expect(() => host.grpcReceive(token, Buffer.from("late"))).toThrow(/far end already closed/);
  });

  it("drops sends after the far end closed, with Ok, like Envoy", () => {
    const { host } = load();
    const conn = connect(host);
    const [stream] = host.grpcStreams.values();
    conn.downstreamData("one");
    host.grpcClose(stream.token, 0);
    conn.downstreamData("two");
    expect(stream.sent.map(String)).toEqual(["one"]);
    expect(stream.droppedAfterClose).toBe(1);
  });

  it("resumes a paused connection from the root after set_effective_context + continue_stream", () => {
    const { host } = load();
    const conn = connect(host);
    const [{ token }] = host.grpcStreams.values();
    conn.downstreamData("x!");
    host.grpcReceive(token, Buffer.from("append")); // the held buffer stays writable while paused
    expect(infoLogs(host)).toContain(`append while paused status ${Status.OK}`);
    expect(conn.continued).toBe(0);
    host.grpcReceive(token, Buffer.from("resume"));
    expect(host.effectiveContextSets).toEqual([2, 2]);
    expect(conn.continued).toBe(1);
    expect(conn.toUpstream.map(String)).toEqual(["x!+late"]);
    expect(host.violations).toEqual([]);
  });

  it("records continue_stream on the root context and unknown contexts as violations", () => {
    const { host } = load();
    connect(host);
    const [{ token }] = host.grpcStreams.values();
    host.grpcReceive(token, Buffer.from("badctx"));
    host.grpcReceive(token, Buffer.from("rootcont"));
    expect(infoLogs(host)).toContain(`set_effective_context(9999) status ${Status.BAD_ARGUMENT}`);
    expect(host.violations).toHaveLength(2);
    expect(host.violations[0]).toMatch(/^proxy_set_effective_context\(9999\)/);
    expect(host.violations[1]).toMatch(/^proxy_continue_stream\(Downstream\) .* root as effective context/);
  });

  it("makes the next stream open fail on request", () => {
    const { host } = load();
    host.grpcFailNextStreamOpen(Status.INTERNAL_FAILURE);
    connect(host);
    expect(host.grpcStreams.size).toBe(0);
    expect(infoLogs(host)).toContain(`grpc_stream failed: ${Status.INTERNAL_FAILURE}`);
    connect(host);
    expect(host.grpcStreams.size).toBe(1);
  });
});

describe("host emulator: metrics, logs, time, memory", () => {
  it("keeps counters, gauges and histograms by name, readable by the module too", () => {
    const { host } = load();
    const conn = connect(host);
    conn.downstreamData("abcd");
    conn.downstreamData("M");
    expect(infoLogs(host)).toContain("downstream_bytes=5");
    host.tick(); host.tick();
    expect(host.metric("probe.ticks")).toBe(2);
    expect(host.metrics.get("probe.active")).toMatchObject({ type: MetricType.GAUGE, value: 1 });
    expect(host.metrics.get("probe.downstream_bytes")).toMatchObject({ type: MetricType.COUNTER, value: 5 });
  });

  it("logs WASI fd_write (stderr at error level) and serves the clock from `now`", () => {
    const { host } = load({ now: () => 123_456_789n });
    const conn = connect(host);
    conn.downstreamData("W");
    conn.downstreamData("T");
    expect(host.logs).toContainEqual({ level: "error", message: "hello from fd_write" });
    expect(infoLogs(host)).toContain("now=123456789");
  });

  it("does not grow the module's memory over many connections", () => {
    const { host } = load();
    const growth = host.memoryGrowth((i) => {
      const conn = host.newConnection({ source: "127.0.0.1:1", upstream: "127.0.0.1:2" });
      conn.downstreamData(Buffer.alloc(256, 0x30 + (i % 10))); // digits: no probe command
      conn.upstreamData("ok");
      conn.closeDownstream();
      conn.done();
    }, { warmup: 200, iterations: 2000 });
    expect(growth.grewBy).toBe(0);
    expect(host.metric("probe.active")).toBe(0);
    expect(host.violations).toEqual([]);
  });
});
