// Typed wrappers over the raw imports: strings and ArrayBuffers in, values or null out.
// Nothing here knows about mirroring. Each wrapper notes when Envoy allows the call.
import * as env from "./imports";
import { Status, LogLevel, BufferType, StreamType } from "./constants";
import { freeHostBuffer } from "./memory";

// Two return slots for host-allocated results (pointer, size); single-threaded VM.
const RETURN_PTR = memory.data(8);
const RETURN_SIZE = memory.data(8);
const RETURN_CAS = memory.data(8);

/** Take ownership of a host-allocated result: copy it into a managed buffer, free the original. */
function takeHostResult(): ArrayBuffer {
  const ptr = load<usize>(RETURN_PTR);
  const size = load<usize>(RETURN_SIZE);
  const out = new ArrayBuffer(<i32>size);
  if (size > 0) memory.copy(changetype<usize>(out), ptr, size);
  freeHostBuffer(ptr);
  return out;
}

export function log(level: u32, message: string): void {
  const bytes = String.UTF8.encode(message);
  env.proxy_log(level, changetype<usize>(bytes), bytes.byteLength);
}
export function logInfo(message: string): void { log(LogLevel.INFO, message); }
export function logWarn(message: string): void { log(LogLevel.WARN, message); }
export function logError(message: string): void { log(LogLevel.ERROR, message); }
export function logCritical(message: string): void { log(LogLevel.CRITICAL, message); }
export function logDebug(message: string): void { log(LogLevel.DEBUG, message); }

/** Bytes [start, start+maxSize) of a buffer; null if the buffer is not available now.
 *  DOWNSTREAM_DATA only in proxy_on_downstream_data, UPSTREAM_DATA only in
 *  proxy_on_upstream_data, GRPC_RECEIVE_BUFFER only in
 *  proxy_on_grpc_receive, PLUGIN_CONFIGURATION only in proxy_on_configure. */
export function getBufferBytes(bufferType: u32, start: usize, maxSize: usize): ArrayBuffer | null {
  const status = env.proxy_get_buffer_bytes(bufferType, start, maxSize, RETURN_PTR, RETURN_SIZE);
  if (status != Status.OK) return null;
  return takeHostResult();
}

/** Raw form of getBufferBytes for the data path: the host-allocated pointer and its size,
 *  which the caller must release with freeHostBuffer. Returns 0 if unavailable. */
export function getBufferBytesRaw(bufferType: u32, start: usize, maxSize: usize): usize {
  const status = env.proxy_get_buffer_bytes(bufferType, start, maxSize, RETURN_PTR, RETURN_SIZE);
  if (status != Status.OK) return 0;
  return load<usize>(RETURN_PTR);
}
export function lastReturnedSize(): usize { return load<usize>(RETURN_SIZE); }

/** A property as raw bytes, or null if Envoy has no value. `path` uses "." between segments
 *  and is sent NUL-separated, as the ABI requires. Stream callbacks. */
export function getProperty(path: string): ArrayBuffer | null {
  const encoded = Uint8Array.wrap(String.UTF8.encode(path));
  for (let i = 0; i < encoded.length; i++) if (encoded[i] == 0x2e) encoded[i] = 0;
  const status = env.proxy_get_property(encoded.dataStart, encoded.length, RETURN_PTR, RETURN_SIZE);
  if (status != Status.OK) return null;
  return takeHostResult();
}

/** A property as a UTF-8 string, or "" if absent. */
export function getPropertyString(path: string): string {
  const raw = getProperty(path);
  return raw === null ? "" : String.UTF8.decode(raw);
}

/** A u64 property (Envoy serializes integers as 8 little-endian bytes), or `fallback`. */
export function getPropertyU64(path: string, fallback: u64): u64 {
  const raw = getProperty(path);
  if (raw === null || raw.byteLength != 8) return fallback;
  return load<u64>(changetype<usize>(raw));
}

export function setEffectiveContext(contextId: u32): bool {
  return env.proxy_set_effective_context(contextId) == Status.OK;
}

/** Close the effective connection's client side (what was written to it is flushed first). */
export function closeDownstream(): bool {
  return env.proxy_close_stream(StreamType.DOWNSTREAM) == Status.OK;
}

/** Resume the client→upstream direction of the effective connection after a PAUSE. */
export function continueDownstream(): bool {
  return env.proxy_continue_stream(StreamType.DOWNSTREAM) == Status.OK;
}

export function setTickPeriodMilliseconds(periodMs: u32): void {
  env.proxy_set_tick_period_milliseconds(periodMs);
}

export function nowNanoseconds(): u64 {
  env.proxy_get_current_time_nanoseconds(RETURN_PTR);
  return load<u64>(RETURN_PTR);
}

/** Open a gRPC stream to `cluster` (sent as a serialized GrpcService, see grpcServiceForCluster).
 *  Returns the token, or 0 if Envoy refused (unknown cluster, bad arguments). */
export function grpcStream(grpcService: ArrayBuffer, serviceName: string, methodName: string): u32 {
  const service = String.UTF8.encode(serviceName);
  const method = String.UTF8.encode(methodName);
  const status = env.proxy_grpc_stream(
    changetype<usize>(grpcService), grpcService.byteLength,
    changetype<usize>(service), service.byteLength,
    changetype<usize>(method), method.byteLength,
    0, 0,
    RETURN_PTR,
  );
  if (status != Status.OK) return 0;
  return load<u32>(RETURN_PTR);
}

/** Send `size` bytes at `data` on a stream. Ok says nothing about delivery. */
export function grpcSend(token: u32, data: usize, size: usize, endOfStream: bool): bool {
  return env.proxy_grpc_send(token, data, size, endOfStream ? 1 : 0) == Status.OK;
}

export function grpcClose(token: u32): bool { return env.proxy_grpc_close(token) == Status.OK; }
export function grpcCancel(token: u32): bool { return env.proxy_grpc_cancel(token) == Status.OK; }

/** Serialized envoy.config.core.v3.GrpcService{ envoy_grpc{ cluster_name } }:
 *    0x0a len( 0x0a len(cluster_name) )
 *  Envoy parses the `service` argument of proxy_grpc_stream as this proto first; a bare
 *  cluster name is only a fallback and some short names parse as valid protobuf. */
export function grpcServiceForCluster(cluster: string): ArrayBuffer {
  const name = Uint8Array.wrap(String.UTF8.encode(cluster));
  assert(name.length < 126, "cluster name too long for a one-byte protobuf length");
  const out = new Uint8Array(name.length + 4);
  out[0] = 0x0a; out[1] = <u8>(name.length + 2);
  out[2] = 0x0a; out[3] = <u8>name.length;
  out.set(name, 4);
  return out.buffer;
}

/** A shared-data value (process-wide for this VM id), or null if unset. */
export function getSharedData(key: string): ArrayBuffer | null {
  const k = String.UTF8.encode(key);
  const status = env.proxy_get_shared_data(changetype<usize>(k), k.byteLength, RETURN_PTR, RETURN_SIZE, RETURN_CAS);
  if (status != Status.OK) return null;
  return takeHostResult();
}

/** Set a shared-data value unconditionally. */
export function setSharedData(key: string, value: ArrayBuffer): bool {
  const k = String.UTF8.encode(key);
  return env.proxy_set_shared_data(changetype<usize>(k), k.byteLength, changetype<usize>(value), value.byteLength, 0) == Status.OK;
}

/** Define a metric; returns its id, or 0 if Envoy refused the name. */
export function defineMetric(metricType: u32, name: string): u32 {
  const bytes = String.UTF8.encode(name);
  const status = env.proxy_define_metric(metricType, changetype<usize>(bytes), bytes.byteLength, RETURN_PTR);
  if (status != Status.OK) return 0;
  return load<u32>(RETURN_PTR);
}

export function incrementMetric(metricId: u32, delta: i64): void {
  if (metricId != 0 && delta != 0) env.proxy_increment_metric(metricId, delta);
}

export function recordMetric(metricId: u32, value: u64): void {
  if (metricId != 0) env.proxy_record_metric(metricId, value);
}

export { BufferType };
