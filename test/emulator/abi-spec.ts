// The host functions of proxy-wasm ABI v0.2.1 (proxy-wasm/spec, abi-versions/v0.2.1) and the
// WASI calls Envoy provides, with their exact signatures. The emulator refuses a module whose
// import of one of these names has another signature (Envoy fails such a module at load).
import type { ValType } from "./wasm-imports.ts";

export * from "./abi-status.ts";

const i32 = (n: number): ValType[] => Array(n).fill("i32");
export type Sig = { params: ValType[]; results: ValType[] };
const sig = (params: ValType[], results: ValType[] = ["i32"]): Sig => ({ params, results });

/** Every `env` function of the v0.2.1 spec. */
export const ENV_SPEC: Record<string, Sig> = {
  proxy_done: sig([]),
  proxy_set_effective_context: sig(i32(1)),
  proxy_log: sig(i32(3)),
  proxy_get_log_level: sig(i32(1)),
  proxy_get_current_time_nanoseconds: sig(i32(1)),
  proxy_set_tick_period_milliseconds: sig(i32(1)),
  proxy_set_buffer_bytes: sig(i32(5)),
  proxy_get_buffer_bytes: sig(i32(5)),
  proxy_get_buffer_status: sig(i32(3)),
  proxy_get_header_map_size: sig(i32(2)),
  proxy_get_header_map_pairs: sig(i32(3)),
  proxy_set_header_map_pairs: sig(i32(3)),
  proxy_get_header_map_value: sig(i32(5)),
  proxy_add_header_map_value: sig(i32(5)),
  proxy_replace_header_map_value: sig(i32(5)),
  proxy_remove_header_map_value: sig(i32(3)),
  proxy_continue_stream: sig(i32(1)),
  proxy_close_stream: sig(i32(1)),
  proxy_get_status: sig(i32(3)),
  proxy_send_local_response: sig(i32(8)),
  proxy_http_call: sig(i32(10)),
  proxy_grpc_call: sig(i32(12)),
  proxy_grpc_stream: sig(i32(9)),
  proxy_grpc_send: sig(i32(4)),
  proxy_grpc_cancel: sig(i32(1)),
  proxy_grpc_close: sig(i32(1)),
  proxy_set_shared_data: sig(i32(5)),
  proxy_get_shared_data: sig(i32(5)),
  proxy_register_shared_queue: sig(i32(3)),
  proxy_resolve_shared_queue: sig(i32(5)),
  proxy_enqueue_shared_queue: sig(i32(3)),
  proxy_dequeue_shared_queue: sig(i32(3)),
  proxy_define_metric: sig(i32(4)),
  proxy_record_metric: sig(["i32", "i64"]),
  proxy_increment_metric: sig(["i32", "i64"]),
  proxy_get_metric: sig(i32(2)),
  proxy_get_property: sig(i32(4)),
  proxy_set_property: sig(i32(4)),
  proxy_call_foreign_function: sig(i32(6)),
};

/** The WASI functions the emulator provides (the spec's, plus the minimal fd_* Envoy has). */
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

export const sigText = (s: Sig): string => `(${s.params.join(", ")}) -> (${s.results.join(", ")})`;
