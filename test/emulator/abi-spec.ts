// The host functions of proxy-wasm ABI v0.2.1 (proxy-wasm/spec, abi-versions/v0.2.1) and the
// WASI calls Envoy provides, with their exact signatures, plus the ABI's enumerations.
import type { ValType } from "./wasm-imports.ts";

const i32 = (n: number): ValType[] => Array(n).fill("i32");
type Sig = { params: ValType[]; results: ValType[] };
const sig = (params: ValType[], results: ValType[] = ["i32"]): Sig => ({ params, results });

export const ENV_SPEC: Record<string, Sig> = {
  proxy_log: sig(i32(3)),
  proxy_get_log_level: sig(i32(1)),
  proxy_get_current_time_nanoseconds: sig(i32(1)),
  proxy_set_tick_period_milliseconds: sig(i32(1)),
  proxy_get_buffer_bytes: sig(i32(5)),
  proxy_set_buffer_bytes: sig(i32(5)),
  proxy_get_buffer_status: sig(i32(3)),
  proxy_get_property: sig(i32(4)),
  proxy_set_property: sig(i32(4)),
  proxy_set_effective_context: sig(i32(1)),
  proxy_done: sig([]),
  proxy_continue_stream: sig(i32(1)),
  proxy_close_stream: sig(i32(1)),
  proxy_grpc_stream: sig(i32(9)),
  proxy_grpc_send: sig(i32(4)),
  proxy_grpc_close: sig(i32(1)),
  proxy_grpc_cancel: sig(i32(1)),
  proxy_grpc_call: sig(i32(12)),
  proxy_http_call: sig(i32(10)),
  proxy_define_metric: sig(i32(4)),
  proxy_increment_metric: sig(["i32", "i64"]),
  proxy_record_metric: sig(["i32", "i64"]),
  proxy_get_metric: sig(i32(2)),
  proxy_get_shared_data: sig(i32(5)),
  proxy_set_shared_data: sig(i32(5)),
  proxy_register_shared_queue: sig(i32(3)),
  proxy_resolve_shared_queue: sig(i32(5)),
  proxy_enqueue_shared_queue: sig(i32(3)),
  proxy_dequeue_shared_queue: sig(i32(3)),
  proxy_call_foreign_function: sig(i32(6)),
};

export const WASI_SPEC: Record<string, Sig> = {
  fd_write: sig(i32(4)),
  fd_close: sig(i32(1)),
  fd_seek: sig(["i32", "i64", "i32", "i32"]),
  fd_fdstat_get: sig(i32(2)),
  clock_time_get: sig(["i32", "i64", "i32"]),
  random_get: sig(i32(2)),
  environ_sizes_get: sig(i32(2)),
  environ_get: sig(i32(2)),
  args_sizes_get: sig(i32(2)),
  args_get: sig(i32(2)),
  proc_exit: sig(i32(1), []),
};

export const Status = { OK: 0, NOT_FOUND: 1, BAD_ARGUMENT: 2, EMPTY: 7, INTERNAL_FAILURE: 10, UNIMPLEMENTED: 12 } as const;
export const Action = { CONTINUE: 0, PAUSE: 1 } as const;
export const BufferType = { DOWNSTREAM_DATA: 2, UPSTREAM_DATA: 3, GRPC_RECEIVE_BUFFER: 5, VM_CONFIGURATION: 6, PLUGIN_CONFIGURATION: 7 } as const;
export const StreamType = { DOWNSTREAM: 2, UPSTREAM: 3 } as const;
export const MetricType = { COUNTER: 0, GAUGE: 1, HISTOGRAM: 2 } as const;
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "critical"] as const;
