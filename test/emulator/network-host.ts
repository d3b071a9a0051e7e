// A proxy-wasm host for network (TCP) filters, in Node: loads a compiled module, supplies the
// `env` and WASI imports, and offers methods named after the callbacks they trigger. It copies
// Envoy's rules where the filter depends on them (see README.md beside this file) and throws on
// any host call it does not implement. Complements the real-Envoy tests; never replaces them.
import { readFileSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { functionImports } from "./wasm-imports.ts";
import { ENV_SPEC, WASI_SPEC, Status, Action, BufferType, StreamType, MetricType, LOG_LEVELS } from "./abi-spec.ts";

export interface GrpcStreamRecord {
  token: number;
  /** Cluster named by the serialized GrpcService (or the plain name). */
  cluster: string;
  service: string;
  method: string;
  /** Each proxy_grpc_send message, in order. */
  sent: Buffer[];
  /** How the module ended its side: proxy_grpc_close or proxy_grpc_cancel. */
  closedByModule: "close" | "cancel" | null;
  /** The far end closed (grpcClose): later sends are dropped silently, as in Envoy. */
  remoteClosed: boolean;
  droppedAfterClose: number;
}

export interface ConnectionOptions { connectionId?: bigint; source?: string; upstream?: string }

interface Metric { name: string; type: number; value: bigint }

type Callback = { kind: "configure" | "vm_start" | "downstream" | "upstream" | "grpc_receive" | "other"; contextId: number; buffer?: Buffer; conn?: EmulatedConnection };

export class EmulatedConnection {
  /** Client bytes held in Envoy while the filter paused them. */
  pendingDownstream: Buffer = Buffer.alloc(0);
  /** Client bytes passed on towards the primary, in order. */
  readonly toUpstream: Buffer[] = [];
  /** Primary bytes passed on to the client. */
  readonly toClient: Buffer[] = [];
  readonly properties = new Map<string, Buffer>();
  continued = 0;
  deleted = false;
  constructor(readonly host: NetworkHost, readonly contextId: number, options: ConnectionOptions) {
    const id = Buffer.alloc(8); id.writeBigUInt64LE(options.connectionId ?? BigInt(contextId));
    this.properties.set("connection_id", id);
    if (options.source) this.properties.set("source.address", Buffer.from(options.source));
    if (options.upstream) this.setUpstreamAddress(options.upstream);
  }
  setUpstreamAddress(address: string): void { this.properties.set("upstream.address", Buffer.from(address)); }

  /** Client bytes arrive (proxy_on_downstream_data). Under PAUSE, Envoy keeps them and hands
   *  the whole grown buffer over on the next call; under CONTINUE they go to the upstream. */
  downstreamData(bytes: Uint8Array | string, endOfStream = false): { action: number; forwarded: Buffer } {
    this.pendingDownstream = Buffer.concat([this.pendingDownstream, Buffer.from(bytes)]);
    const action = this.host.call({ kind: "downstream", contextId: this.contextId, buffer: this.pendingDownstream, conn: this },
      "proxy_on_downstream_data", this.contextId, this.pendingDownstream.length, endOfStream ? 1 : 0);
    if (action === Action.CONTINUE) return { action, forwarded: this.flushDownstream() };
    return { action, forwarded: Buffer.alloc(0) };
  }

  flushDownstream(): Buffer {
    const out = this.pendingDownstream;
    this.pendingDownstream = Buffer.alloc(0);
    if (out.length) this.toUpstream.push(out);
    return out;
  }

  /** Primary bytes arrive (proxy_on_upstream_data). PAUSE here is a violation: Envoy cannot resume it. */
  upstreamData(bytes: Uint8Array | string, endOfStream = false): { action: number } {
    const buffer = Buffer.from(bytes);
    const action = this.host.call({ kind: "upstream", contextId: this.contextId, buffer, conn: this },
      "proxy_on_upstream_data", this.contextId, buffer.length, endOfStream ? 1 : 0);
    if (action !== Action.CONTINUE) this.host.violations.push(`proxy_on_upstream_data returned ${action}: Envoy cannot resume the write path`);
    this.toClient.push(buffer);
    return { action };
  }

  closeDownstream(peerType = 2): void { this.host.call({ kind: "other", contextId: this.contextId }, "proxy_on_downstream_connection_close", this.contextId, peerType); }
  closeUpstream(peerType = 2): void { this.host.call({ kind: "other", contextId: this.contextId }, "proxy_on_upstream_connection_close", this.contextId, peerType); }

  /** End of the connection as Envoy does it: done, then delete. */
  done(): void {
    this.host.call({ kind: "other", contextId: this.contextId }, "proxy_on_done", this.contextId);
    this.host.call({ kind: "other", contextId: this.contextId }, "proxy_on_delete", this.contextId);
    this.deleted = true;
    this.host.connections.delete(this.contextId);
  }
}

export class NetworkHost {
  readonly rootId = 1;
  private nextContextId = 2;
  private nextToken = 1;
  readonly connections = new Map<number, EmulatedConnection>();
  readonly logs: { level: string; message: string }[] = [];
  readonly grpcStreams = new Map<number, GrpcStreamRecord>();
  readonly violations: string[] = [];
  readonly effectiveContextSets: number[] = [];
  private readonly metricsById = new Map<number, Metric>();
  tickPeriodMs = 0;
  configured = false;
  /** Fake clock (ns); advance with advance(ms). */
  nowNs = 1_700_000_000_000_000_000n;
  private failNextStream: number | null = null;
  private current: Callback | null = null;
  private effective = 0;
  exports!: Record<string, any>;
  private memory!: WebAssembly.Memory;

  constructor(private readonly options: { pluginConfig: string; vmConfig?: string }) {}

  // ---- driving the module ------------------------------------------------------------

  call(cb: Callback, fn: string, ...args: number[]): number {
    const f = this.exports[fn];
    if (typeof f !== "function") return Action.CONTINUE;
    const saved = [this.current, this.effective] as const;
    this.current = cb;
    this.effective = cb.contextId;
    try { return Number(f(...args) ?? 0); }
    finally { [this.current, this.effective] = saved; }
  }

  start(): void {
    this.call({ kind: "other", contextId: this.rootId }, "proxy_on_context_create", this.rootId, 0);
    const vm = Buffer.from(this.options.vmConfig ?? "");
    this.call({ kind: "vm_start", contextId: this.rootId, buffer: vm }, "proxy_on_vm_start", this.rootId, vm.length);
    const plugin = Buffer.from(this.options.pluginConfig);
    this.configured = this.call({ kind: "configure", contextId: this.rootId, buffer: plugin }, "proxy_on_configure", this.rootId, plugin.length) !== 0;
  }

  newConnection(options: ConnectionOptions = {}): EmulatedConnection {
    const id = this.nextContextId++;
    const conn = new EmulatedConnection(this, id, options);
    this.connections.set(id, conn);
    this.call({ kind: "other", contextId: id }, "proxy_on_context_create", id, this.rootId);
    this.call({ kind: "other", contextId: id, conn }, "proxy_on_new_connection", id);
    return conn;
  }

  /** A message from the far end of stream `token` (delivered to the root, as Envoy does). */
  grpcReceive(token: number, message: Uint8Array): void {
    const buffer = Buffer.from(message);
    this.call({ kind: "grpc_receive", contextId: this.rootId, buffer }, "proxy_on_grpc_receive", this.rootId, token, buffer.length);
  }

  /** The far end ended stream `token` with a gRPC status. */
  grpcClose(token: number, status: number): void {
    const s = this.grpcStreams.get(token);
    if (s) s.remoteClosed = true;
    this.call({ kind: "other", contextId: this.rootId }, "proxy_on_grpc_close", this.rootId, token, status);
  }

  grpcFailNextStreamOpen(status: number): void { this.failNextStream = status; }

  tick(): void { this.call({ kind: "other", contextId: this.rootId }, "proxy_on_tick", this.rootId); }
  advance(ms: number): void { this.nowNs += BigInt(Math.round(ms * 1e6)); }

  metric(name: string): number | undefined {
    for (const m of this.metricsById.values()) if (m.name === name) return Number(m.value);
    return undefined;
  }
  metricNames(): string[] { return [...this.metricsById.values()].map((m) => m.name); }
  memoryBytes(): number { return this.memory.buffer.byteLength; }
  streamFor(conn: EmulatedConnection): GrpcStreamRecord | undefined {
    return [...this.grpcStreams.values()].find((s) => (s as any).contextId === conn.contextId);
  }

  // ---- memory helpers ----------------------------------------------------------------

  private view(): DataView { return new DataView(this.memory.buffer); }
  private bytesAt(ptr: number, len: number): Buffer { return Buffer.from(new Uint8Array(this.memory.buffer, ptr, len)); }
  private stringAt(ptr: number, len: number): string { return this.bytesAt(ptr, len).toString("utf8"); }
  /** Copy `bytes` into module memory through its allocator, as Envoy does, and return them. */
  private giveToModule(bytes: Buffer, retPtr: number, retSize: number): number {
    const alloc = this.exports.proxy_on_memory_allocate ?? this.exports.malloc;
    const ptr = Number(alloc(bytes.length));
    if (ptr === 0 && bytes.length > 0) return Status.INTERNAL_FAILURE;
    new Uint8Array(this.memory.buffer, ptr, bytes.length).set(bytes);
    this.view().setUint32(retPtr, ptr, true);
    this.view().setUint32(retSize, bytes.length, true);
    return Status.OK;
  }

  private bufferFor(type: number): Buffer | null {
    const cb = this.current;
    if (!cb) return null;
    if (type === BufferType.DOWNSTREAM_DATA && cb.kind === "downstream") return cb.buffer!;
    if (type === BufferType.UPSTREAM_DATA && cb.kind === "upstream") return cb.buffer!;
    if (type === BufferType.GRPC_RECEIVE_BUFFER && cb.kind === "grpc_receive") return cb.buffer!;
    if (type === BufferType.PLUGIN_CONFIGURATION && cb.kind === "configure") return cb.buffer!;
    if (type === BufferType.VM_CONFIGURATION && cb.kind === "vm_start") return cb.buffer!;
    return null;
  }

  private effectiveConnection(): EmulatedConnection | undefined { return this.connections.get(this.effective); }

  // ---- the imports -------------------------------------------------------------------

  private envImports(): Record<string, (...a: any[]) => any> {
    return {
      proxy_log: (level: number, ptr: number, len: number) => {
        if (level < 0 || level >= LOG_LEVELS.length) return Status.BAD_ARGUMENT;
        this.logs.push({ level: LOG_LEVELS[level], message: this.stringAt(ptr, len) });
        return Status.OK;
      },
      proxy_get_log_level: (ret: number) => { this.view().setUint32(ret, 0, true); return Status.OK; },
      proxy_get_current_time_nanoseconds: (ret: number) => { this.view().setBigUint64(ret, this.nowNs, true); return Status.OK; },
      proxy_set_tick_period_milliseconds: (ms: number) => { this.tickPeriodMs = ms; return Status.OK; },
      proxy_get_buffer_bytes: (type: number, start: number, max: number, retPtr: number, retSize: number) => {
        const buf = this.bufferFor(type);
        if (!buf) { this.violations.push(`proxy_get_buffer_bytes(${type}) outside the callback that owns that buffer`); return Status.NOT_FOUND; }
        if (start > buf.length) return Status.BAD_ARGUMENT;
        return this.giveToModule(buf.subarray(start, Math.min(buf.length, start + max)), retPtr, retSize);
      },
      proxy_set_buffer_bytes: (type: number, start: number, size: number, ptr: number, len: number) => {
        const cb = this.current;
        if (!cb || !cb.conn || !((type === BufferType.DOWNSTREAM_DATA && cb.kind === "downstream") || (type === BufferType.UPSTREAM_DATA && cb.kind === "upstream"))) {
          this.violations.push(`proxy_set_buffer_bytes(${type}) outside its data callback`);
          return Status.NOT_FOUND;
        }
        const buf = cb.buffer!;
        const value = this.bytesAt(ptr, len);
        let next: Buffer;
        if (start === 0 && size === 0) next = Buffer.concat([value, buf]);
        else if (start === 0 && size >= buf.length) next = value;
        else if (start >= buf.length) next = Buffer.concat([buf, value]);
        else return Status.BAD_ARGUMENT;
        cb.buffer = next;
        if (type === BufferType.DOWNSTREAM_DATA) cb.conn.pendingDownstream = next;
        return Status.OK;
      },
      proxy_get_property: (pathPtr: number, pathLen: number, retPtr: number, retSize: number) => {
        const path = this.bytesAt(pathPtr, pathLen).toString("utf8").split("\0").join(".");
        const conn = this.effectiveConnection();
        const value = conn?.properties.get(path);
        if (!value) return Status.NOT_FOUND;
        return this.giveToModule(value, retPtr, retSize);
      },
      proxy_set_effective_context: (id: number) => {
        this.effectiveContextSets.push(id);
        if (id !== this.rootId && !this.connections.has(id)) return Status.BAD_ARGUMENT;
        this.effective = id;
        return Status.OK;
      },
      proxy_done: () => Status.NOT_FOUND,
      proxy_continue_stream: (type: number) => {
        if (type === StreamType.UPSTREAM) return Status.UNIMPLEMENTED; // as in Envoy
        if (type !== StreamType.DOWNSTREAM) return Status.BAD_ARGUMENT;
        const conn = this.effectiveConnection();
        if (!conn) { this.violations.push("proxy_continue_stream without a connection as effective context"); return Status.NOT_FOUND; }
        conn.continued++;
        // Envoy continues with the next filter: the held bytes go on, not back to this filter.
        conn.flushDownstream();
        return Status.OK;
      },
      proxy_grpc_stream: (svcPtr: number, svcLen: number, namePtr: number, nameLen: number, methodPtr: number, methodLen: number,
        _mdPtr: number, _mdLen: number, retToken: number) => {
        if (this.failNextStream !== null) { const s = this.failNextStream; this.failNextStream = null; return s; }
        const token = this.nextToken++;
        const record: GrpcStreamRecord & { contextId: number } = {
          token, cluster: decodeGrpcServiceCluster(this.bytesAt(svcPtr, svcLen)), service: this.stringAt(namePtr, nameLen),
          method: this.stringAt(methodPtr, methodLen), sent: [], closedByModule: null, remoteClosed: false, droppedAfterClose: 0, contextId: this.effective,
        };
        this.grpcStreams.set(token, record);
        this.view().setUint32(retToken, token, true);
        return Status.OK;
      },
      proxy_grpc_send: (token: number, ptr: number, len: number, _eos: number) => {
        const s = this.grpcStreams.get(token);
        if (!s || s.closedByModule === "cancel") return Status.NOT_FOUND;
        if (s.remoteClosed) { s.droppedAfterClose++; return Status.OK; } // silent loss, as in Envoy
        s.sent.push(this.bytesAt(ptr, len));
        return Status.OK;
      },
      proxy_grpc_close: (token: number) => {
        const s = this.grpcStreams.get(token);
        if (!s) return Status.NOT_FOUND;
        s.closedByModule = "close";
        return Status.OK;
      },
      proxy_grpc_cancel: (token: number) => {
        const s = this.grpcStreams.get(token);
        if (!s) return Status.NOT_FOUND;
        s.closedByModule = "cancel";
        return Status.OK;
      },
      proxy_define_metric: (type: number, ptr: number, len: number, ret: number) => {
        if (type > MetricType.HISTOGRAM) return Status.BAD_ARGUMENT;
        const name = this.stringAt(ptr, len);
        let id = [...this.metricsById.entries()].find(([, m]) => m.name === name)?.[0];
        if (id === undefined) { id = this.metricsById.size + 1; this.metricsById.set(id, { name, type, value: 0n }); }
        this.view().setUint32(ret, id, true);
        return Status.OK;
      },
      proxy_increment_metric: (id: number, delta: bigint) => {
        const m = this.metricsById.get(id);
        if (!m) return Status.NOT_FOUND;
        if (m.type === MetricType.COUNTER && delta < 0n) { this.violations.push(`counter ${m.name} decremented`); return Status.BAD_ARGUMENT; }
        m.value += delta;
        if (m.type === MetricType.GAUGE && m.value < 0n) this.violations.push(`gauge ${m.name} went negative (${m.value})`);
        return Status.OK;
      },
      proxy_record_metric: (id: number, value: bigint) => {
        const m = this.metricsById.get(id);
        if (!m) return Status.NOT_FOUND;
        m.value = BigInt.asUintN(64, value);
        return Status.OK;
      },
      proxy_get_metric: (id: number, ret: number) => {
        const m = this.metricsById.get(id);
        if (!m) return Status.NOT_FOUND;
        this.view().setBigUint64(ret, m.value, true);
        return Status.OK;
      },
    };
  }

  private wasiImports(): Record<string, (...a: any[]) => any> {
    return {
      fd_write: (fd: number, iovs: number, count: number, retWritten: number) => {
        if (fd !== 1 && fd !== 2) return 8; // BADF
        let text = "";
        for (let i = 0; i < count; i++) text += this.stringAt(this.view().getUint32(iovs + i * 8, true), this.view().getUint32(iovs + i * 8 + 4, true));
        this.logs.push({ level: fd === 1 ? "info" : "error", message: text });
        this.view().setUint32(retWritten, Buffer.byteLength(text), true);
        return 0;
      },
      clock_time_get: (_id: number, _precision: bigint, ret: number) => { this.view().setBigUint64(ret, this.nowNs, true); return 0; },
      random_get: (ptr: number, len: number) => { randomFillSync(new Uint8Array(this.memory.buffer, ptr, len)); return 0; },
      environ_sizes_get: (a: number, b: number) => { this.view().setUint32(a, 0, true); this.view().setUint32(b, 0, true); return 0; },
      environ_get: () => 0,
      args_sizes_get: (a: number, b: number) => { this.view().setUint32(a, 0, true); this.view().setUint32(b, 0, true); return 0; },
      args_get: () => 0,
      proc_exit: (code: number) => { throw new Error(`emulator: the module called proc_exit(${code})`); },
    };
  }

  /** Build the import object for `binary`: exact signatures, refusing unknown imports like Envoy. */
  imports(binary: Uint8Array): WebAssembly.Imports {
    const env = this.envImports();
    const wasi = this.wasiImports();
    const out: Record<string, Record<string, any>> = { env: {}, wasi_snapshot_preview1: {} };
    for (const imp of functionImports(binary)) {
      const spec = imp.module === "env" ? ENV_SPEC[imp.name] : imp.module === "wasi_snapshot_preview1" ? WASI_SPEC[imp.name] : undefined;
      if (!spec) throw new Error(`emulator: the module imports ${imp.module}.${imp.name}, which Envoy does not provide (missing import)`);
      const want = `(${spec.params.join(", ")}) -> (${spec.results.join(", ")})`;
      const got = `(${imp.params.join(", ")}) -> (${imp.results.join(", ")})`;
      if (want !== got) throw new Error(`emulator: import type mismatch for ${imp.module}.${imp.name}: the module declares ${got}, the ABI says ${want}`);
      const impl = (imp.module === "env" ? env : wasi)[imp.name];
      out[imp.module][imp.name] = impl ?? (() => { throw new Error(`emulator: ${imp.module}.${imp.name} not implemented`); });
    }
    return out;
  }

  attach(instance: WebAssembly.Instance): void {
    this.exports = instance.exports as Record<string, any>;
    this.memory = this.exports.memory as WebAssembly.Memory;
    if (!this.exports.proxy_abi_version_0_2_1) throw new Error("emulator: the module does not export proxy_abi_version_0_2_1");
    this.exports._initialize?.();
  }
}

/** The cluster of a serialized envoy.config.core.v3.GrpcService{envoy_grpc{cluster_name}}, else the bytes as a name. */
export function decodeGrpcServiceCluster(bytes: Buffer): string {
  if (bytes.length >= 4 && bytes[0] === 0x0a && bytes[1] === bytes.length - 2 && bytes[2] === 0x0a && bytes[3] === bytes.length - 4) {
    return bytes.subarray(4).toString("utf8");
  }
  return bytes.toString("utf8");
}

export interface HostHandle { host: NetworkHost; reset: () => NetworkHost }

/** Load `wasmPath` with `pluginConfig` and run its start-up callbacks. */
export function createNetworkHost(options: { wasmPath: string; pluginConfig: string; vmConfig?: string }): HostHandle {
  const binary = readFileSync(options.wasmPath);
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
