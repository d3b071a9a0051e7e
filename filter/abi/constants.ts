// Enumerations of the proxy-wasm ABI v0.2.1, with the spec's numeric values.

/** proxy_status_t */
export namespace Status {
  export const OK: u32 = 0;
  export const NOT_FOUND: u32 = 1;
  export const BAD_ARGUMENT: u32 = 2;
  export const SERIALIZATION_FAILURE: u32 = 3;
  export const PARSE_FAILURE: u32 = 4;
  export const INVALID_MEMORY_ACCESS: u32 = 6;
  export const EMPTY: u32 = 7;
  export const CAS_MISMATCH: u32 = 8;
  export const INTERNAL_FAILURE: u32 = 10;
  export const UNIMPLEMENTED: u32 = 12;
}

/** proxy_action_t, returned from data callbacks. */
export namespace Action {
  export const CONTINUE: u32 = 0;
  /** Never return PAUSE from upstream data: Envoy cannot resume the write path. */
  export const PAUSE: u32 = 1;
}

/** proxy_stream_type_t, argument of proxy_continue_stream / proxy_close_stream. */
export namespace StreamType {
  export const HTTP_REQUEST: u32 = 0;
  export const HTTP_RESPONSE: u32 = 1;
  export const DOWNSTREAM: u32 = 2;
  export const UPSTREAM: u32 = 3;
}

/** proxy_log_level_t */
export namespace LogLevel {
  export const TRACE: u32 = 0;
  export const DEBUG: u32 = 1;
  export const INFO: u32 = 2;
  export const WARN: u32 = 3;
  export const ERROR: u32 = 4;
  export const CRITICAL: u32 = 5;
}

/** proxy_buffer_type_t */
export namespace BufferType {
  export const DOWNSTREAM_DATA: u32 = 2;
  export const UPSTREAM_DATA: u32 = 3;
  export const GRPC_RECEIVE_BUFFER: u32 = 5;
  export const VM_CONFIGURATION: u32 = 6;
  export const PLUGIN_CONFIGURATION: u32 = 7;
}

/** proxy_metric_type_t */
export namespace MetricType {
  export const COUNTER: u32 = 0;
  export const GAUGE: u32 = 1;
  export const HISTOGRAM: u32 = 2;
}

/** proxy_peer_type_t, argument of the connection-close callbacks. */
export namespace PeerType {
  export const UNKNOWN: u32 = 0;
  export const LOCAL: u32 = 1;
  export const REMOTE: u32 = 2;
}

/** gRPC status codes seen in proxy_on_grpc_close. */
export namespace GrpcStatus {
  export const OK: u32 = 0;
  export const CANCELLED: u32 = 1;
  export const UNAVAILABLE: u32 = 14;
}
