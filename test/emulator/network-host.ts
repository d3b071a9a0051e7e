// A proxy-wasm host for network (TCP) filters, in Node: loads a compiled module, supplies the
// `env` and WASI imports, and offers methods named after the callbacks they trigger. It copies
// Envoy's rules where the filter depends on them (see README.md beside this file) and throws on
// any host call it does not implement. Complements the real-Envoy tests; never replaces them.
import { readFileSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { functionImports } from "./wasm-imports.ts";
import { ENV_SPEC, WASI_SPEC, sigText } from "./abi-spec.ts";
import {
  Status, Action, BufferType, MAX_BUFFER_TYPE, MapType, PeerType, StreamType, MetricType, LogLevel, LOG_LEVELS, WasiErrno,
  type LogLevelName,
} from "./abi-status.ts";
import { GuestMemory, OutOfBounds, parsePairs, serializePairs } from "./memory.ts";

export interface GrpcStreamRecord {
  /** Envoy-style callout id: streams are 2 mod 4 (6, 10, ...), unary calls 1 mod 4 (5, 9, ...). */
  token: number;
  kind: "stream" | "call";
  /** Cluster named by the serialized GrpcService (envoy_grpc.cluster_name), or the plain name. */
  cluster: string;
  service: string;
  method: string;
  initialMetadata: [string, string][];
  /** Each proxy_grpc_send message, in order (for a call: its one request message). */
  sent: Buffer[];
  /** The module sent end_of_stream (proxy_grpc_send with end_stream, or a unary call). */
  endOfStreamSent: boolean;
  /** How the module ended its side: proxy_grpc_close or proxy_grpc_cancel. */
  closedByModule: "close" | "cancel" | null;
  /** The far end closed (grpcClose): later sends return Ok and are dropped, as in Envoy. */
  remoteClosed: boolean;
  remoteStatus: number | null;
  droppedAfterClose: number;
  /** The effective context when the module opened it. */
  contextId: number;
  /** proxy_grpc_call's timeout (ms); null for streams. */
  timeoutMs: number | null;
  /** Envoy forgot the token (cancelled, or closed on both sides): calls on it give NotFound. */
  erased: boolean;
}

export interface ConnectionOptions {
  /** Envoy's connection id, returned by the "connection_id" property as 8 bytes little-endian. */
  connectionId?: bigint;
  /** Client address "ip:port" ("source\0address"; "source\0port" is derived). */
  source?: string;
  /** Primary address "ip:port" ("upstream\0address"), or undefined until connected. */
  upstream?: string;
  /** Listener address "ip:port" ("destination\0address"). */
  destination?: string;
  /** More per-connection properties, keyed by NUL-separated path. */
  properties?: Record<string, string | Uint8Array>;
}

export interface HostOptions {
  /** The compiled module (path), or its bytes in `wasm`. */
  wasmPath?: string;
  wasm?: Uint8Array;
  pluginConfig: string | Uint8Array;
  vmConfig?: string | Uint8Array;
  /** Host-level properties (readable from any context), keyed by NUL-separated path, e.g. "plugin_name". */
  properties?: Record<string, string | Uint8Array>;
  /** Clock for proxy_get_current_time_nanoseconds / clock_time_get; default a fake clock moved by advance(). */
  now?: () => bigint;
  /** proxy_get_log_level's answer; Envoy's default level is info (2). */
  logLevel?: number;
  /** If set, a plain cluster name not in this list makes proxy_grpc_stream/call return ParseFailure, as Envoy does. */
  clusters?: string[];
  /** Functions for proxy_call_foreign_function; any other name gives NotFound. */
  foreignFunctions?: Record<string, (args: Buffer) => Uint8Array | void>;
  /** Echo the module's log lines to the console. */
  echoLogs?: boolean;
}

export interface MetricRecord { name: string; type: number; value: number; big: bigint; samples: bigint[] }
export interface LogRecord { level: LogLevelName; message: string }
export interface DataResult { action: number; forwarded: Buffer }

type Kind = "init" | "root" | "vm_start" | "configure" | "new_connection" | "downstream" | "upstream" | "close" | "done" | "grpc_receive" | "grpc_metadata" | "grpc_close" | "tick";
interface Frame { fn: string; kind: Kind; contextId: number; conn?: EmulatedConnection; savedEffective: number }

const ROOT_ID = 1;
const VM_CONTEXT_ID = 0;
const toBytes = (v: string | Uint8Array): Buffer => Buffer.from(v as any);
const u64le = (v: bigint): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt.asUintN(64, v)); return b; };
const portOf = (address: string): bigint | null => { const m = /:(\d+)$/.exec(address); return m ? BigInt(m[1]) : null; };

export class EmulatedConnection {
  /** Client bytes Envoy holds for this filter (grows while it returns Pause). */
  pendingDownstream: Buffer = Buffer.alloc(0);
  /** Primary bytes held (only after a Pause from proxy_on_upstream_data, itself a violation). */
  pendingUpstream: Buffer = Buffer.alloc(0);
  /** The last proxy_on_downstream_data returned Pause: the bytes wait for proxy_continue_stream. */
  downstreamPaused = false;
  upstreamPaused = false;
  /** Client bytes passed on towards the primary, in order. */
  readonly toUpstream: Buffer[] = [];
  /** Primary bytes passed on to the client, in order. */
  readonly toClient: Buffer[] = [];
  readonly properties = new Map<string, Buffer>();
  /** Values the module set with proxy_set_property on this connection. */
  readonly setProperties = new Map<string, Buffer>();
  /** proxy_on_new_connection's answer. */
  newConnectionAction = Action.CONTINUE as number;
  /** Times proxy_continue_stream(Downstream) took effect. */
  continued = 0;
  /** proxy_close_stream calls: "downstream" / "upstream". */
  readonly closeRequests: ("downstream" | "upstream")[] = [];
  downstreamClosed = false;
  upstreamClosed = false;
  deleted = false;

  constructor(readonly host: NetworkHost, readonly contextId: number, options: ConnectionOptions) {
    this.properties.set("connection_id", u64le(options.connectionId ?? BigInt(contextId)));
    if (options.source) this.setAddress("source", options.source);
    if (options.destination) this.setAddress("destination", options.destination);
    if (options.upstream) this.setUpstreamAddress(options.upstream);
    for (const [k, v] of Object.entries(options.properties ?? {})) this.properties.set(k, toBytes(v));
  }

  private setAddress(prefix: string, address: string): void {
    this.properties.set(`${prefix}\0address`, Buffer.from(address));
    const port = portOf(address);
    if (port !== null) this.properties.set(`${prefix}\0port`, u64le(port));
  }
  setUpstreamAddress(address: string): void { this.setAddress("upstream", address); }
  setProperty(path: string, value: string | Uint8Array): void { this.properties.set(path, toBytes(value)); }

  private live(what: string): void {
    if (this.deleted) throw new Error(`emulator: ${what} on connection context ${this.contextId}, which was already deleted (done())`);
  }

  /** Client bytes arrive (proxy_on_downstream_data). Under Pause, Envoy keeps them and hands
   *  the whole grown buffer over on the next call; under Continue the buffer (as the module left
   *  it, after any proxy_set_buffer_bytes) goes to the upstream. */
  downstreamData(bytes: Uint8Array | string, endOfStream = false): DataResult {
    this.live("downstreamData");
    const before = this.toUpstream.length;
    this.pendingDownstream = Buffer.concat([this.pendingDownstream, Buffer.from(bytes as any)]);
    const action = this.host.invoke({ fn: "proxy_on_downstream_data", kind: "downstream", contextId: this.contextId, conn: this },
      Action.CONTINUE, this.contextId, this.pendingDownstream.length, endOfStream ? 1 : 0);
    this.host.checkAction("proxy_on_downstream_data", action);
    if (action === Action.CONTINUE) { this.downstreamPaused = false; this.flushDownstream(); }
    else this.downstreamPaused = true;
    return { action, forwarded: Buffer.concat(this.toUpstream.slice(before)) };
  }

  /** Pass the held client bytes on (Continue, or proxy_continue_stream). */
  flushDownstream(): Buffer {
    const out = this.pendingDownstream;
    this.pendingDownstream = Buffer.alloc(0);
    if (out.length) this.toUpstream.push(out);
    return out;
  }

  /** Primary bytes arrive (proxy_on_upstream_data). Pause here is recorded as a violation:
   *  Envoy cannot resume the write path. With endOfStream, Envoy then calls
   *  proxy_on_upstream_connection_close(Unknown), and so does the emulator. */
  upstreamData(bytes: Uint8Array | string, endOfStream = false): DataResult {
    this.live("upstreamData");
    const before = this.toClient.length;
    this.pendingUpstream = Buffer.concat([this.pendingUpstream, Buffer.from(bytes as any)]);
    const action = this.host.invoke({ fn: "proxy_on_upstream_data", kind: "upstream", contextId: this.contextId, conn: this },
      Action.CONTINUE, this.contextId, this.pendingUpstream.length, endOfStream ? 1 : 0);
    this.host.checkAction("proxy_on_upstream_data", action);
    if (action === Action.CONTINUE) {
      this.upstreamPaused = false;
      const out = this.pendingUpstream;
      this.pendingUpstream = Buffer.alloc(0);
      if (out.length) this.toClient.push(out);
    } else {
      this.upstreamPaused = true;
      this.host.violation(`proxy_on_upstream_data(${this.contextId}) returned ${action} (Pause): Envoy cannot resume the write path, the primary's bytes would stall`);
    }
    if (endOfStream && !this.upstreamClosed) this.closeUpstream(PeerType.UNKNOWN);
    return { action, forwarded: Buffer.concat(this.toClient.slice(before)) };
  }

  /** proxy_on_downstream_connection_close(id, peerType): 1 local, 2 remote (the client went away). */
  closeDownstream(peerType: number = PeerType.REMOTE): void {
    this.live("closeDownstream");
    this.downstreamClosed = true;
    this.host.invoke({ fn: "proxy_on_downstream_connection_close", kind: "close", contextId: this.contextId, conn: this }, 0, this.contextId, peerType);
  }

  /** proxy_on_upstream_connection_close(id, peerType). */
  closeUpstream(peerType: number = PeerType.REMOTE): void {
    this.live("closeUpstream");
    this.upstreamClosed = true;
    this.host.invoke({ fn: "proxy_on_upstream_connection_close", kind: "close", contextId: this.contextId, conn: this }, 0, this.contextId, peerType);
  }

  /** End of the connection as Envoy does it (Context::onDestroy): proxy_on_done (its answer
   *  is ignored for network filters), then proxy_on_delete. */
  done(): void {
    this.live("done");
    this.host.invoke({ fn: "proxy_on_done", kind: "done", contextId: this.contextId, conn: this }, 1, this.contextId);
    this.host.invoke({ fn: "proxy_on_delete", kind: "done", contextId: this.contextId, conn: this }, 0, this.contextId);
    this.deleted = true;
    this.host.connections.delete(this.contextId);
  }
}

export class NetworkHost {
  readonly rootId = ROOT_ID;
  private nextContextId = ROOT_ID + 1;
  private nextStreamToken = 2;
  private nextCallToken = 1;
  private nextMetricId = [0, 1, 2];
  readonly connections = new Map<number, EmulatedConnection>();
  readonly logs: LogRecord[] = [];
  /** Every stream and unary call the module opened, by token (kept after they end). */
  readonly grpcStreams = new Map<number, GrpcStreamRecord>();
  /** Module behaviour Envoy would not catch or would punish silently. Tests expect it empty. */
  readonly violations: string[] = [];
  /** proxy_get_buffer_bytes calls that returned bytes, per buffer type: calls and bytes copied
   *  (e.g. bufferReads.get(BufferType.UPSTREAM_DATA) shows whether the module read the primary's replies). */
  readonly bufferReads = new Map<number, { calls: number; bytes: number }>();
  /** Arguments of every proxy_set_effective_context call. */
  readonly effectiveContextSets: number[] = [];
  readonly sharedData = new Map<string, { value: Buffer; cas: number }>();
  readonly foreignFunctions = new Map<string, (args: Buffer) => Uint8Array | void>();
  tickPeriodMs = 0;
  vmStarted = false;
  configured = false;
  /** Set when a callback trapped or threw: Envoy stops calling a failed VM, the emulator throws. */
  failed: string | null = null;
  /** Fake clock (ns) used when no `now` option is given; move it with advance(ms). */
  nowNs = 1_700_000_000_000_000_000n;
  logLevel: number;
  private readonly metricsById = new Map<number, MetricRecord>();
  private readonly metricsByName = new Map<string, MetricRecord>();
  private readonly hostProperties = new Map<string, Buffer>();
  private failNextStream: number | null = null;
  private stack: Frame[] = [];
  private afterCall: (() => void)[] = [];
  private effective = VM_CONTEXT_ID;
  private grpcReceiveBuffer: Buffer | null = null;
  private grpcMetadata: { type: number; pairs: [string, string][] } | null = null;
  private status: { code: number; message: string } = { code: 0, message: "" };
  private readonly vmConfig: Buffer;
  private readonly pluginConfig: Buffer;
  exports!: Record<string, any>;
  private mem!: GuestMemory;

  constructor(private readonly options: HostOptions) {
    this.vmConfig = toBytes(options.vmConfig ?? "");
    this.pluginConfig = toBytes(options.pluginConfig);
    this.logLevel = options.logLevel ?? LogLevel.INFO;
    for (const [k, v] of Object.entries(options.properties ?? {})) this.hostProperties.set(k, toBytes(v));
    for (const [k, f] of Object.entries(options.foreignFunctions ?? {})) this.foreignFunctions.set(k, f);
  }

  // ---- driving the module ------------------------------------------------------------

  /** Call export `frame.fn` with `args` (the default when the module does not export it). */
  invoke(frame: Omit<Frame, "savedEffective">, missing: number, ...args: number[]): number {
    if (this.failed) throw new Error(`emulator: ${frame.fn} after the VM failed (${this.failed}); Envoy does not call a failed VM`);
    const f = this.exports[frame.fn];
    if (typeof f !== "function") return missing;
    const outermost = this.stack.length === 0;
    this.stack.push({ ...frame, savedEffective: this.effective });
    this.effective = frame.contextId;
    let result: unknown;
    try {
      result = f(...args);
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      this.failed = `${frame.fn}(${args.join(", ")}): ${message}`;
      throw new Error(`emulator: ${frame.fn}(${args.join(", ")}) failed: ${message}`, { cause: e });
    } finally {
      this.effective = this.stack.pop()!.savedEffective;
    }
    if (outermost) this.runAfterCallActions();
    return Number(result ?? 0) >>> 0;
  }

  private runAfterCallActions(): void {
    while (this.afterCall.length) this.afterCall.shift()!();
  }

  checkAction(fn: string, action: number): void {
    if (action > Action.PAUSE) this.violation(`${fn} returned ${action}, which is neither Continue (0) nor Pause (1); Envoy treats it as Pause`);
  }

  violation(message: string): void { this.violations.push(message); }

  private get current(): Frame | undefined { return this.stack[this.stack.length - 1]; }

  /** _initialize has run; now what Envoy does when it starts the plugin. */
  start(): void {
    this.invoke({ fn: "proxy_on_context_create", kind: "root", contextId: ROOT_ID }, 0, ROOT_ID, 0);
    this.vmStarted = this.invoke({ fn: "proxy_on_vm_start", kind: "vm_start", contextId: ROOT_ID }, 1, ROOT_ID, this.vmConfig.length) !== 0;
    if (!this.vmStarted) { this.configured = false; return; } // Envoy fails the plugin
    this.configured = this.invoke({ fn: "proxy_on_configure", kind: "configure", contextId: ROOT_ID }, 1, ROOT_ID, this.pluginConfig.length) !== 0;
  }

  /** A client connects: proxy_on_context_create(id, root), then proxy_on_new_connection(id). */
  newConnection(options: ConnectionOptions = {}): EmulatedConnection {
    const id = this.nextContextId++;
    const conn = new EmulatedConnection(this, id, options);
    this.connections.set(id, conn);
    this.invoke({ fn: "proxy_on_context_create", kind: "root", contextId: id, conn }, 0, id, ROOT_ID);
    conn.newConnectionAction = this.invoke({ fn: "proxy_on_new_connection", kind: "new_connection", contextId: id, conn }, Action.CONTINUE, id);
    this.checkAction("proxy_on_new_connection", conn.newConnectionAction);
    return conn;
  }

  private liveStream(token: number, what: string): GrpcStreamRecord | undefined {
    const s = this.grpcStreams.get(token);
    if (s && (s.closedByModule === "cancel" || s.erased)) throw new Error(`emulator: ${what}(${token}): the module cancelled or Envoy forgot this stream, so Envoy would deliver nothing`);
    if (s && s.remoteClosed) throw new Error(`emulator: ${what}(${token}): the far end already closed this stream`);
    return s;
  }

  /** A message from the far end of `token`: proxy_on_grpc_receive(root, token, size), the
   *  message readable as GrpcReceiveBuffer. A token the module never opened is delivered too. */
  grpcReceive(token: number, message: Uint8Array): void {
    this.liveStream(token, "grpcReceive");
    const buffer = Buffer.from(message);
    this.grpcReceiveBuffer = buffer;
    try { this.invoke({ fn: "proxy_on_grpc_receive", kind: "grpc_receive", contextId: ROOT_ID }, 0, ROOT_ID, token, buffer.length); }
    finally { this.grpcReceiveBuffer = null; }
  }

  /** Initial metadata from the far end: proxy_on_grpc_receive_initial_metadata(root, token, count). */
  grpcReceiveInitialMetadata(token: number, pairs: [string, string][]): void { this.grpcMetadataCallback(token, pairs, MapType.GRPC_RECEIVE_INITIAL_METADATA, "proxy_on_grpc_receive_initial_metadata"); }
  /** Trailing metadata from the far end: proxy_on_grpc_receive_trailing_metadata(root, token, count). */
  grpcReceiveTrailingMetadata(token: number, pairs: [string, string][]): void { this.grpcMetadataCallback(token, pairs, MapType.GRPC_RECEIVE_TRAILING_METADATA, "proxy_on_grpc_receive_trailing_metadata"); }

  private grpcMetadataCallback(token: number, pairs: [string, string][], type: number, fn: string): void {
    this.liveStream(token, fn);
    this.grpcMetadata = { type, pairs };
    try { this.invoke({ fn, kind: "grpc_metadata", contextId: ROOT_ID }, 0, ROOT_ID, token, pairs.length); }
    finally { this.grpcMetadata = null; }
  }

  /** The far end ended `token` with a gRPC status: proxy_on_grpc_close(root, token, status);
   *  proxy_get_status gives (status, message) during the callback. */
  grpcClose(token: number, status: number, message = ""): void {
    const s = this.liveStream(token, "grpcClose");
    if (s) {
      s.remoteClosed = true;
      s.remoteStatus = status;
      if (s.kind === "call" || s.closedByModule === "close") s.erased = true;
    }
    this.status = { code: status, message };
    try { this.invoke({ fn: "proxy_on_grpc_close", kind: "grpc_close", contextId: ROOT_ID }, 0, ROOT_ID, token, status); }
    finally { this.status = { code: status, message: "" }; }
  }

  /** Make the next proxy_grpc_stream return `status` (e.g. Status.INTERNAL_FAILURE). */
  grpcFailNextStreamOpen(status: number): void { this.failNextStream = status; }

  /** The timer fires: proxy_on_tick(root). Throws when the module set no tick period. */
  tick(): void {
    if (this.tickPeriodMs === 0) throw new Error("emulator: tick() but the module has no tick period set (Envoy would not call proxy_on_tick)");
    this.invoke({ fn: "proxy_on_tick", kind: "tick", contextId: ROOT_ID }, 0, ROOT_ID);
  }
  /** Move the fake clock. */
  advance(ms: number): void { this.nowNs += BigInt(Math.round(ms * 1e6)); }
  now(): bigint { return this.options.now ? this.options.now() : this.nowNs; }

  /** Metrics by name (value as a number; `big` exact; histogram samples in `samples`, value = last). */
  get metrics(): Map<string, MetricRecord> { return new Map(this.metricsByName); }
  metric(name: string): number | undefined { return this.metricsByName.get(name)?.value; }
  metricNames(): string[] { return [...this.metricsByName.keys()]; }
  setHostProperty(path: string, value: string | Uint8Array): void { this.hostProperties.set(path, toBytes(value)); }
  registerForeignFunction(name: string, f: (args: Buffer) => Uint8Array | void): void { this.foreignFunctions.set(name, f); }

  /** Current size of the module's linear memory in bytes. */
  memoryBytes(): number { return this.mem.size; }
  /** Run `once` `warmup` times, note the memory, run it `iterations` more times, and report. */
  memoryGrowth(once: (i: number) => void, { warmup = 300, iterations = 3000 } = {}): { afterWarmup: number; after: number; grewBy: number } {
    for (let i = 0; i < warmup; i++) once(i);
    const afterWarmup = this.memoryBytes();
    for (let i = 0; i < iterations; i++) once(warmup + i);
    const after = this.memoryBytes();
    return { afterWarmup, after, grewBy: after - afterWarmup };
  }
  /** The stream the module opened while `conn` was the effective context. */
  streamFor(conn: EmulatedConnection): GrpcStreamRecord | undefined {
    return [...this.grpcStreams.values()].find((s) => s.contextId === conn.contextId);
  }

  // ---- buffers -----------------------------------------------------------------------

  /** The buffer `type` as Envoy would see it from the effective context now, with a setter
   *  when it is mutable; null when Envoy has none (NotFound). */
  private bufferFor(type: number): { bytes: Buffer; set?: (b: Buffer) => void } | null {
    const cb = this.current;
    const conn = this.connections.get(this.effective);
    switch (type) {
      case BufferType.DOWNSTREAM_DATA:
        if (conn && ((cb?.kind === "downstream" && cb.conn === conn) || conn.downstreamPaused)) return { bytes: conn.pendingDownstream, set: (b) => { conn.pendingDownstream = b; } };
        return null;
      case BufferType.UPSTREAM_DATA:
        if (conn && ((cb?.kind === "upstream" && cb.conn === conn) || conn.upstreamPaused)) return { bytes: conn.pendingUpstream, set: (b) => { conn.pendingUpstream = b; } };
        return null;
      case BufferType.GRPC_RECEIVE_BUFFER:
        return this.grpcReceiveBuffer ? { bytes: this.grpcReceiveBuffer } : null;
      case BufferType.VM_CONFIGURATION:
        return { bytes: this.vmConfig };
      case BufferType.PLUGIN_CONFIGURATION:
        return cb?.kind === "configure" ? { bytes: this.pluginConfig } : null;
      default:
        return null;
    }
  }

  // ---- the imports -------------------------------------------------------------------

  /** Wrap an import so an out-of-bounds pointer gives InvalidMemoryAccess (WASI: FAULT). */
  private guarded<T extends (...a: any[]) => any>(f: T, fault: number): T {
    return ((...a: any[]) => {
      try { return f(...a); } catch (e) { if (e instanceof OutOfBounds) return fault; throw e; }
    }) as T;
  }

  private envImports(): Record<string, (...a: any[]) => any> {
    const m = () => this.mem;
    const imports: Record<string, (...a: any[]) => any> = {
      proxy_log: (level: number, ptr: number, len: number) => {
        if (level >= LOG_LEVELS.length) return Status.BAD_ARGUMENT;
        const message = m().string(ptr, len);
        this.logs.push({ level: LOG_LEVELS[level], message });
        if (this.options.echoLogs) console.log(`[wasm ${LOG_LEVELS[level]}] ${message}`);
        return Status.OK;
      },
      proxy_get_log_level: (ret: number) => { m().setU32(ret, this.logLevel); return Status.OK; },
      proxy_get_current_time_nanoseconds: (ret: number) => { m().setU64(ret, this.now()); return Status.OK; },
      proxy_set_tick_period_milliseconds: (ms: number) => { this.tickPeriodMs = ms >>> 0; return Status.OK; },

      proxy_get_buffer_bytes: (type: number, start: number, max: number, retPtr: number, retSize: number) => {
        if (type > MAX_BUFFER_TYPE) return Status.BAD_ARGUMENT;
        const buf = this.bufferFor(type);
        if (!buf) { this.violation(`proxy_get_buffer_bytes(${type}) in ${this.where()}: Envoy has no such buffer there (NotFound)`); return Status.NOT_FOUND; }
        start >>>= 0; max >>>= 0;
        const end = start > buf.bytes.length ? start : Math.min(buf.bytes.length, start + max);
        m().give(buf.bytes.subarray(start, end), retPtr, retSize);
        const reads = this.bufferReads.get(type) ?? { calls: 0, bytes: 0 };
        reads.calls++; reads.bytes += end - start;
        this.bufferReads.set(type, reads);
        return Status.OK;
      },
      proxy_get_buffer_status: (type: number, retSize: number, retFlags: number) => {
        if (type > MAX_BUFFER_TYPE) return Status.BAD_ARGUMENT;
        const buf = this.bufferFor(type);
        if (!buf) return Status.NOT_FOUND;
        m().setU32(retSize, buf.bytes.length); m().setU32(retFlags, 0);
        return Status.OK;
      },
      proxy_set_buffer_bytes: (type: number, start: number, size: number, ptr: number, len: number) => {
        if (type > MAX_BUFFER_TYPE) return Status.BAD_ARGUMENT;
        const buf = this.bufferFor(type);
        if (!buf || !buf.set) {
          this.violation(`proxy_set_buffer_bytes(${type}) in ${this.where()}: only legal inside the matching data callback (or while it holds the data paused)`);
          return buf ? Status.BAD_ARGUMENT : Status.NOT_FOUND;
        }
        const value = m().bytes(ptr, len);
        start >>>= 0; size >>>= 0;
        // Envoy's network Buffer::copyFrom: start 0 drains `size` bytes then prepends; start at
        // or past the end appends; anything else is BadArgument.
        if (start === 0) buf.set(Buffer.concat([value, buf.bytes.subarray(Math.min(size, buf.bytes.length))]));
        else if (start >= buf.bytes.length) buf.set(Buffer.concat([buf.bytes, value]));
        else return Status.BAD_ARGUMENT;
        return Status.OK;
      },

      proxy_get_header_map_size: (type: number, ret: number) => {
        const map = this.mapFor(type);
        if (!map) return Status.BAD_ARGUMENT;
        m().setU32(ret, map.reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v), 0));
        return Status.OK;
      },
      proxy_get_header_map_pairs: (type: number, retPtr: number, retSize: number) => {
        const map = this.mapFor(type);
        if (!map) return Status.NOT_FOUND;
        m().give(serializePairs(map), retPtr, retSize);
        return Status.OK;
      },
      proxy_get_header_map_value: (type: number, keyPtr: number, keyLen: number, retPtr: number, retSize: number) => {
        const map = this.mapFor(type);
        if (!map) return Status.NOT_FOUND;
        const key = m().string(keyPtr, keyLen).toLowerCase();
        const hit = map.find(([k]) => k.toLowerCase() === key);
        if (!hit) return Status.NOT_FOUND;
        m().give(Buffer.from(hit[1]), retPtr, retSize);
        return Status.OK;
      },

      proxy_get_property: (pathPtr: number, pathLen: number, retPtr: number, retSize: number) => {
        const path = m().string(pathPtr, pathLen);
        const value = this.property(path);
        if (!value) return Status.NOT_FOUND;
        m().give(value, retPtr, retSize);
        return Status.OK;
      },
      proxy_set_property: (pathPtr: number, pathLen: number, valuePtr: number, valueLen: number) => {
        const conn = this.connections.get(this.effective);
        if (!conn) return Status.NOT_FOUND; // Envoy: no stream info on the root context
        conn.setProperties.set(m().string(pathPtr, pathLen), m().bytes(valuePtr, valueLen));
        return Status.OK;
      },

      proxy_set_effective_context: (id: number) => {
        this.effectiveContextSets.push(id);
        if (id !== ROOT_ID && !this.connections.has(id)) {
          this.violation(`proxy_set_effective_context(${id}) in ${this.where()}: no such context (deleted or never created); Envoy returns BadArgument`);
          return Status.BAD_ARGUMENT;
        }
        this.effective = id;
        return Status.OK;
      },
      // Pending finalization exists only for root contexts at VM shutdown, which the emulator
      // does not model; Envoy answers NotFound otherwise.
      proxy_done: () => Status.NOT_FOUND,

      proxy_continue_stream: (type: number) => {
        if (type === StreamType.UPSTREAM) return Status.UNIMPLEMENTED; // as in Envoy
        if (type !== StreamType.DOWNSTREAM) return Status.BAD_ARGUMENT; // HTTP streams: none here
        const conn = this.connections.get(this.effective);
        if (!conn) {
          this.violation(`proxy_continue_stream(Downstream) in ${this.where()} with the root as effective context: Envoy returns Ok and resumes nothing`);
          return Status.OK;
        }
        // Deferred until the VM call returns, then Envoy continues with the next filter: the
        // held bytes go on to the upstream, not back to this filter.
        this.afterCall.push(() => {
          if (conn.deleted) return;
          conn.continued++;
          conn.downstreamPaused = false;
          conn.flushDownstream();
        });
        return Status.OK;
      },
      proxy_close_stream: (type: number) => {
        if (type !== StreamType.DOWNSTREAM && type !== StreamType.UPSTREAM) return Status.BAD_ARGUMENT;
        const conn = this.connections.get(this.effective);
        if (!conn) { this.violation(`proxy_close_stream(${type}) in ${this.where()} with the root as effective context: Envoy closes nothing`); return Status.OK; }
        conn.closeRequests.push(type === StreamType.DOWNSTREAM ? "downstream" : "upstream");
        return Status.OK;
      },
      proxy_get_status: (codePtr: number, msgPtr: number, msgSize: number) => {
        m().setU32(codePtr, this.status.code);
        m().give(Buffer.from(this.status.message), msgPtr, msgSize);
        return Status.OK;
      },

      proxy_grpc_stream: (svcPtr: number, svcLen: number, namePtr: number, nameLen: number, methodPtr: number, methodLen: number,
        mdPtr: number, mdLen: number, retToken: number) => {
        const opened = this.openGrpc("stream", svcPtr, svcLen, namePtr, nameLen, methodPtr, methodLen, mdPtr, mdLen);
        if (typeof opened === "number") return opened;
        m().setU32(retToken, opened.token);
        return Status.OK;
      },
      proxy_grpc_call: (svcPtr: number, svcLen: number, namePtr: number, nameLen: number, methodPtr: number, methodLen: number,
        mdPtr: number, mdLen: number, msgPtr: number, msgLen: number, timeout: number, retToken: number) => {
        const opened = this.openGrpc("call", svcPtr, svcLen, namePtr, nameLen, methodPtr, methodLen, mdPtr, mdLen);
        if (typeof opened === "number") return opened;
        opened.sent.push(m().bytes(msgPtr, msgLen));
        opened.endOfStreamSent = true;
        opened.timeoutMs = timeout >>> 0;
        m().setU32(retToken, opened.token);
        return Status.OK;
      },
      proxy_grpc_send: (token: number, ptr: number, len: number, eos: number) => {
        const message = m().bytes(ptr, len);
        if (token % 4 !== 2) return Status.BAD_ARGUMENT; // not a stream token
        const s = this.grpcStreams.get(token);
        if (!s || s.erased) return Status.NOT_FOUND;
        if (s.remoteClosed) { s.droppedAfterClose++; return Status.OK; } // silent loss, as in Envoy
        if (s.endOfStreamSent || s.closedByModule === "close") {
          this.violation(`proxy_grpc_send(${token}) after the module ended its side of the stream (end_stream or proxy_grpc_close)`);
          return Status.OK;
        }
        s.sent.push(message);
        if (eos) s.endOfStreamSent = true;
        return Status.OK;
      },
      proxy_grpc_close: (token: number) => {
        const s = this.grpcStreams.get(token);
        if (token % 4 !== 1 && token % 4 !== 2) return Status.BAD_ARGUMENT;
        if (!s || s.erased) return Status.NOT_FOUND;
        s.closedByModule = "close";
        if (s.kind === "call" || s.remoteClosed) s.erased = true;
        return Status.OK;
      },
      proxy_grpc_cancel: (token: number) => {
        const s = this.grpcStreams.get(token);
        if (token % 4 !== 1 && token % 4 !== 2) return Status.BAD_ARGUMENT;
        if (!s || s.erased) return Status.NOT_FOUND;
        s.closedByModule = "cancel";
        s.erased = true;
        return Status.OK;
      },

      proxy_define_metric: (type: number, ptr: number, len: number, ret: number) => {
        if (type > MetricType.HISTOGRAM) return Status.BAD_ARGUMENT;
        const name = m().string(ptr, len);
        let metric = this.metricsByName.get(name);
        if (metric && metric.type !== type) this.violation(`metric ${name} defined as type ${type} and before as type ${metric.type}`);
        if (!metric) { metric = { name, type, value: 0, big: 0n, samples: [] }; this.metricsByName.set(name, metric); }
        // Envoy gives every definition a new id (type in the low two bits) naming the same stat.
        const id = (this.nextMetricId[type] += 4);
        this.metricsById.set(id, metric);
        m().setU32(ret, id);
        return Status.OK;
      },
      proxy_increment_metric: (id: number, delta: bigint) => {
        const metric = this.metricsById.get(id);
        if ((id & 3) === MetricType.HISTOGRAM) return Status.BAD_ARGUMENT;
        if (!metric) return Status.NOT_FOUND;
        if (metric.type === MetricType.COUNTER && delta <= 0n) {
          this.violation(`counter ${metric.name} incremented by ${delta}: Envoy refuses (BadArgument) anything but a positive delta`);
          return Status.BAD_ARGUMENT;
        }
        this.setMetric(metric, metric.big + delta);
        if (metric.type === MetricType.GAUGE && metric.big < 0n) this.violation(`gauge ${metric.name} went negative (${metric.big}); Envoy's gauges are unsigned`);
        return Status.OK;
      },
      proxy_record_metric: (id: number, raw: bigint) => {
        const metric = this.metricsById.get(id);
        if (!metric) return Status.NOT_FOUND;
        const value = BigInt.asUintN(64, raw);
        if (metric.type === MetricType.COUNTER) this.setMetric(metric, metric.big + value); // Envoy adds
        else if (metric.type === MetricType.GAUGE) this.setMetric(metric, value);
        else { metric.samples.push(value); this.setMetric(metric, value); }
        return Status.OK;
      },
      proxy_get_metric: (id: number, ret: number) => {
        if ((id & 3) === MetricType.HISTOGRAM) return Status.BAD_ARGUMENT;
        const metric = this.metricsById.get(id);
        if (!metric) return Status.NOT_FOUND;
        m().setU64(ret, metric.big);
        return Status.OK;
      },

      proxy_get_shared_data: (keyPtr: number, keyLen: number, retPtr: number, retSize: number, retCas: number) => {
        const entry = this.sharedData.get(m().string(keyPtr, keyLen));
        if (!entry) return Status.NOT_FOUND;
        m().give(entry.value, retPtr, retSize);
        m().setU32(retCas, entry.cas);
        return Status.OK;
      },
      proxy_set_shared_data: (keyPtr: number, keyLen: number, valuePtr: number, valueLen: number, cas: number) => {
        const key = m().string(keyPtr, keyLen);
        const value = m().bytes(valuePtr, valueLen);
        const entry = this.sharedData.get(key);
        if (entry && cas !== 0 && cas !== entry.cas) return Status.CAS_MISMATCH;
        this.sharedData.set(key, { value, cas: (entry?.cas ?? 0) + 1 });
        return Status.OK;
      },
      proxy_call_foreign_function: (namePtr: number, nameLen: number, argsPtr: number, argsLen: number, retPtr: number, retSize: number) => {
        const f = this.foreignFunctions.get(m().string(namePtr, nameLen));
        const args = m().bytes(argsPtr, argsLen);
        if (!f) return Status.NOT_FOUND;
        const out = f(args);
        if (out && out.length) m().give(out, retPtr, retSize);
        return Status.OK;
      },
    };
    for (const k of Object.keys(imports)) imports[k] = this.guarded(imports[k], Status.INVALID_MEMORY_ACCESS);
    return imports;
  }

  private setMetric(metric: MetricRecord, value: bigint): void { metric.big = value; metric.value = Number(value); }

  private mapFor(type: number): [string, string][] | null {
    return this.grpcMetadata && this.grpcMetadata.type === type ? this.grpcMetadata.pairs : null;
  }

  private property(path: string): Buffer | undefined {
    const conn = this.connections.get(this.effective);
    return conn?.setProperties.get(path) ?? conn?.properties.get(path) ?? this.hostProperties.get(path);
  }

  private openGrpc(kind: "stream" | "call", svcPtr: number, svcLen: number, namePtr: number, nameLen: number,
    methodPtr: number, methodLen: number, mdPtr: number, mdLen: number): GrpcStreamRecord | number {
    const m = this.mem;
    const serviceBytes = m.bytes(svcPtr, svcLen);
    const service = m.string(namePtr, nameLen), method = m.string(methodPtr, methodLen);
    const metadata = parsePairs(m.bytes(mdPtr, mdLen));
    if (kind === "stream" && this.failNextStream !== null) { const s = this.failNextStream; this.failNextStream = null; return s; }
    const decoded = decodeGrpcService(serviceBytes);
    if (!decoded.proto && this.options.clusters && !this.options.clusters.includes(decoded.cluster)) return Status.PARSE_FAILURE;
    const token = kind === "stream" ? (this.nextStreamToken += 4) : (this.nextCallToken += 4);
    const record: GrpcStreamRecord = {
      token, kind, cluster: decoded.cluster, service, method, initialMetadata: metadata, sent: [], endOfStreamSent: false,
      closedByModule: null, remoteClosed: false, remoteStatus: null, droppedAfterClose: 0, contextId: this.effective, timeoutMs: null, erased: false,
    };
    this.grpcStreams.set(token, record);
    return record;
  }

  private where(): string {
    const cb = this.current;
    return cb ? `${cb.fn} (effective context ${this.effective})` : "no callback";
  }

  private wasiImports(): Record<string, (...a: any[]) => any> {
    const m = () => this.mem;
    const imports: Record<string, (...a: any[]) => any> = {
      fd_write: (fd: number, iovs: number, count: number, retWritten: number) => {
        if (fd !== 1 && fd !== 2) return WasiErrno.BADF;
        let bytes = Buffer.alloc(0);
        for (let i = 0; i < count; i++) bytes = Buffer.concat([bytes, m().bytes(m().u32(iovs + i * 8), m().u32(iovs + i * 8 + 4))]);
        // Envoy logs each write as one line (stdout at info, stderr at error); one trailing newline is dropped here.
        this.logs.push({ level: fd === 1 ? "info" : "error", message: bytes.toString("utf8").replace(/\n$/, "") });
        m().setU32(retWritten, bytes.length);
        return WasiErrno.SUCCESS;
      },
      fd_close: () => WasiErrno.SUCCESS, // Envoy logs an error and answers success
      fd_seek: () => WasiErrno.SUCCESS, // likewise
      fd_fdstat_get: (fd: number, ret: number) => {
        if (fd !== 1 && fd !== 2) return WasiErrno.BADF;
        m().write(ret, Buffer.alloc(24));
        m().setU64(ret + 8, 64n); // fs_rights_base = FD_WRITE
        return WasiErrno.SUCCESS;
      },
      clock_time_get: (id: number, _precision: bigint, ret: number) => {
        if (id !== 0 && id !== 1) return WasiErrno.NOTSUP;
        m().setU64(ret, this.now());
        return WasiErrno.SUCCESS;
      },
      random_get: (ptr: number, len: number) => {
        if (len > 64 * 1024) return WasiErrno.INVAL;
        const bytes = Buffer.alloc(len); randomFillSync(bytes); m().write(ptr, bytes);
        return WasiErrno.SUCCESS;
      },
      environ_sizes_get: (a: number, b: number) => { m().setU32(a, 0); m().setU32(b, 0); return WasiErrno.SUCCESS; },
      environ_get: () => WasiErrno.SUCCESS,
      args_sizes_get: (a: number, b: number) => { m().setU32(a, 0); m().setU32(b, 0); return WasiErrno.SUCCESS; },
      args_get: () => WasiErrno.SUCCESS,
      proc_exit: (code: number) => { throw new Error(`emulator: the module called proc_exit(${code})`); },
    };
    for (const k of Object.keys(imports)) if (k !== "proc_exit") imports[k] = this.guarded(imports[k], WasiErrno.FAULT);
    return imports;
  }

  /** The import object for `binary`. Names of the ABI (and the WASI calls above) must have the
   *  spec's exact signature, else loading fails ("import type mismatch", naming both). ABI
   *  names the emulator does not implement, other `env.proxy_*` names and other WASI calls load
   *  as stubs that throw "emulator: <name> not implemented" when called. Anything else (e.g.
   *  env.abort, env.seed) is refused: Envoy would fail the module at load (missing import). */
  imports(binary: Uint8Array): WebAssembly.Imports {
    const impls: Record<string, Record<string, (...a: any[]) => any>> = { env: this.envImports(), wasi_snapshot_preview1: this.wasiImports() };
    const out: Record<string, Record<string, any>> = { env: {}, wasi_snapshot_preview1: {} };
    for (const imp of functionImports(binary)) {
      const isEnv = imp.module === "env", isWasi = imp.module === "wasi_snapshot_preview1";
      const spec = isEnv ? ENV_SPEC[imp.name] : isWasi ? WASI_SPEC[imp.name] : undefined;
      if (!spec && !(isEnv && imp.name.startsWith("proxy_")) && !isWasi) {
        throw new Error(`emulator: the module imports ${imp.module}.${imp.name}, which Envoy does not provide (missing import)`);
      }
      if (spec) {
        const got = sigText(imp);
        if (got !== sigText(spec)) throw new Error(`emulator: import type mismatch for ${imp.module}.${imp.name}: the module declares ${got}, the ABI says ${sigText(spec)}`);
      }
      const label = isEnv ? imp.name : `${imp.module}.${imp.name}`;
      out[imp.module][imp.name] = (spec && impls[imp.module][imp.name]) ?? (() => {
        throw new Error(`emulator: ${label} not implemented${spec ? "" : " (not in ABI v0.2.1)"}`);
      });
    }
    // Imports of other kinds (memory, table, global) are not provided: instantiation reports them.
    return out;
  }

  attach(instance: WebAssembly.Instance): void {
    this.exports = instance.exports as Record<string, any>;
    const memory = this.exports.memory;
    if (!(memory instanceof WebAssembly.Memory)) throw new Error("emulator: the module exports no memory");
    if (typeof this.exports.proxy_abi_version_0_2_1 !== "function") throw new Error("emulator: the module does not export proxy_abi_version_0_2_1");
    const alloc = this.exports.proxy_on_memory_allocate ?? this.exports.malloc;
    this.mem = new GuestMemory(memory, typeof alloc === "function" ? (n: number) => alloc(n) : undefined);
    if (typeof this.exports._initialize === "function") {
      this.invoke({ fn: "_initialize", kind: "init", contextId: VM_CONTEXT_ID }, 0);
      if (typeof this.exports.main === "function") this.invoke({ fn: "main", kind: "init", contextId: VM_CONTEXT_ID }, 0, 0, 0);
    } else if (typeof this.exports._start === "function") {
      this.invoke({ fn: "_start", kind: "init", contextId: VM_CONTEXT_ID }, 0);
    }
  }
}

/** Decode a serialized envoy.config.core.v3.GrpcService: field 1 envoy_grpc { field 1
 *  cluster_name }. Bytes that are not such a message are a plain cluster name (as Envoy). */
export function decodeGrpcService(bytes: Uint8Array): { cluster: string; proto: boolean } {
  const b = Buffer.from(bytes);
  const readVarint = (at: number): [number, number] | null => {
    let v = 0, shift = 0;
    for (let i = at; i < b.length && shift < 35; i++) { v |= (b[i] & 0x7f) << shift; shift += 7; if (!(b[i] & 0x80)) return [v >>> 0, i + 1]; }
    return null;
  };
  const field = (from: number, to: number, wanted: number): Buffer | null => {
    let at = from;
    while (at < to) {
      const key = readVarint(at); if (!key) return null;
      const [tag, next] = key; at = next;
      const wire = tag & 7, num = tag >>> 3;
      if (wire === 2) {
        const len = readVarint(at); if (!len) return null;
        const start = len[1], end = start + len[0];
        if (end > to) return null;
        if (num === wanted) return b.subarray(start, end);
        at = end;
      } else if (wire === 0) { const v = readVarint(at); if (!v) return null; at = v[1]; }
      else return null;
    }
    return null;
  };
  const envoyGrpc = field(0, b.length, 1);
  if (envoyGrpc) {
    const offset = envoyGrpc.byteOffset - b.byteOffset;
    const cluster = field(offset, offset + envoyGrpc.length, 1);
    if (cluster) return { cluster: cluster.toString("utf8"), proto: true };
  }
  return { cluster: b.toString("utf8"), proto: false };
}

/** Kept for older callers: the cluster of a serialized GrpcService, else the bytes as a name. */
export function decodeGrpcServiceCluster(bytes: Uint8Array): string { return decodeGrpcService(bytes).cluster; }

export interface HostHandle { host: NetworkHost; reset: () => NetworkHost }

/** Load the module with `options`, run _initialize and the start-up callbacks
 *  (proxy_on_context_create(1, 0), proxy_on_vm_start, proxy_on_configure). Synchronous;
 *  `await createNetworkHost(...)` works as well. `reset()` gives a fresh instance. */
export function createNetworkHost(options: HostOptions): HostHandle {
  const binary = options.wasm ? new Uint8Array(options.wasm) : options.wasmPath ? new Uint8Array(readFileSync(options.wasmPath)) : undefined;
  if (!binary) throw new Error("emulator: createNetworkHost needs wasmPath or wasm");
  const module = new WebAssembly.Module(binary);
  const make = () => {
    const host = new NetworkHost(options);
    host.attach(new WebAssembly.Instance(module, host.imports(binary)));
    host.start();
    return host;
  };
  const handle: HostHandle = { host: make(), reset: () => (handle.host = make()) };
  return handle;
}
