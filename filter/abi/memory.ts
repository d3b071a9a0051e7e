// The allocator Envoy uses to hand us buffers (proxy_get_buffer_bytes, proxy_get_property).
// Memory from here is not managed by the GC: whoever receives it releases it with freeHostBuffer.
//
// Every host buffer has HOST_BUFFER_HEADROOM spare bytes in front of it, so a caller can
// write a small header there and send header + data without copying the data:
//
//   heap block: [ HOST_BUFFER_HEADROOM bytes | bytes the host wrote ... ]
//                                            ^ pointer returned to the host

/** Spare bytes in front of every host-written buffer (a multiple of 16 keeps alignment). */
export const HOST_BUFFER_HEADROOM: usize = 16;

/** Allocate `size` bytes for the host. Exported as `malloc` (ABI "Memory management"). */
export function malloc(size: usize): usize {
  return heap.alloc(size + HOST_BUFFER_HEADROOM) + HOST_BUFFER_HEADROOM;
}

/** Release a buffer the host allocated through `malloc`. */
export function freeHostBuffer(ptr: usize): void {
  if (ptr != 0) heap.free(ptr - HOST_BUFFER_HEADROOM);
}
