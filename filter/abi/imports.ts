// Host functions the filter imports from Envoy (proxy-wasm ABI v0.2.1, module "env").
// Raw declarations only, with the spec's exact arities: a wrong arity makes Envoy refuse the
// module ("import type mismatch"). Call them through host.ts, which turns statuses into values.
// Spec: proxy-wasm/spec abi-versions/v0.2.1/README.md (section named in each comment).

/** Logging: write `size` bytes at `data` to Envoy's log at `level`. Any callback. */
@external("env", "proxy_log")
export declare function proxy_log(level: u32, data: usize, size: usize): u32;

/** Clocks: wall-clock nanoseconds into `*returnTime`. Any callback. */
@external("env", "proxy_get_current_time_nanoseconds")
export declare function proxy_get_current_time_nanoseconds(returnTime: usize): u32;

/** Timers: period of proxy_on_tick for the root context it is called from. Root callbacks. */
@external("env", "proxy_set_tick_period_milliseconds")
export declare function proxy_set_tick_period_milliseconds(periodMs: u32): u32;

/** Buffers: copy of up to `maxSize` bytes from `start` of buffer `bufferType`; the host
 *  allocates the copy with our `malloc` export. Only in the callback owning that buffer. */
@external("env", "proxy_get_buffer_bytes")
export declare function proxy_get_buffer_bytes(bufferType: u32, start: usize, maxSize: usize, returnData: usize, returnSize: usize): u32;

/** Buffers: replace `size` bytes at `start`. Only inside the matching data callback. */
@external("env", "proxy_set_buffer_bytes")
export declare function proxy_set_buffer_bytes(bufferType: u32, start: usize, size: usize, data: usize, dataSize: usize): u32;

/** Properties: value of a NUL-separated path (e.g. "upstream\0address"). Stream callbacks. */
@external("env", "proxy_get_property")
export declare function proxy_get_property(pathData: usize, pathSize: usize, returnData: usize, returnSize: usize): u32;

/** Stream control: resume a direction paused by returning PAUSE (Downstream = 2 resumes the
 *  client's bytes towards the upstream). Envoy cannot resume Upstream. Effective context must
 *  be the connection: from a root callback, call proxy_set_effective_context first. */
@external("env", "proxy_continue_stream")
export declare function proxy_continue_stream(streamType: u32): u32;

/** Stream control: close the effective connection (Downstream = 2 closes the client's
 *  connection, flushing what was written to it). */
@external("env", "proxy_close_stream")
export declare function proxy_close_stream(streamType: u32): u32;

/** Context lifecycle: act for `contextId` from a root callback (gRPC, tick). */
@external("env", "proxy_set_effective_context")
export declare function proxy_set_effective_context(contextId: u32): u32;

/** gRPC: open a bidirectional stream. `service` is a serialized envoy.config.core.v3.GrpcService
 *  (or a cluster name); the stream belongs to the root context. Any callback. */
@external("env", "proxy_grpc_stream")
export declare function proxy_grpc_stream(
  serviceData: usize, serviceSize: usize,
  serviceNameData: usize, serviceNameSize: usize,
  methodNameData: usize, methodNameSize: usize,
  initialMetadataData: usize, initialMetadataSize: usize,
  returnToken: usize,
): u32;

/** gRPC: send one message. Returns Ok even after the peer closed (loss is silent). */
@external("env", "proxy_grpc_send")
export declare function proxy_grpc_send(token: u32, data: usize, size: usize, endOfStream: u32): u32;

/** gRPC: half-close our side gracefully; proxy_on_grpc_close follows when the peer ends. */
@external("env", "proxy_grpc_close")
export declare function proxy_grpc_close(token: u32): u32;

/** gRPC: reset the stream at once; no proxy_on_grpc_close follows. */
@external("env", "proxy_grpc_cancel")
export declare function proxy_grpc_cancel(token: u32): u32;

/** Shared data: the value of `key` (host-allocated copy) and its CAS token; NotFound if unset.
 *  Process-wide for the VM id: every worker's VM sees the same data. Any callback. */
@external("env", "proxy_get_shared_data")
export declare function proxy_get_shared_data(keyData: usize, keySize: usize, returnValueData: usize, returnValueSize: usize, returnCas: usize): u32;

/** Shared data: set `key` if `cas` is 0 or still the value's CAS token (CasMismatch otherwise). */
@external("env", "proxy_set_shared_data")
export declare function proxy_set_shared_data(keyData: usize, keySize: usize, valueData: usize, valueSize: usize, cas: u32): u32;

/** Metrics: define (or look up) a counter (0), gauge (1) or histogram (2). Any callback. */
@external("env", "proxy_define_metric")
export declare function proxy_define_metric(metricType: u32, nameData: usize, nameSize: usize, returnId: usize): u32;

/** Metrics: add `delta` (may be negative for gauges). Any callback. */
@external("env", "proxy_increment_metric")
export declare function proxy_increment_metric(metricId: u32, delta: i64): u32;

/** Metrics: set a gauge / record a histogram value. Any callback. */
@external("env", "proxy_record_metric")
export declare function proxy_record_metric(metricId: u32, value: u64): u32;
