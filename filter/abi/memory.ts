// The allocator Envoy uses to hand us buffers (proxy_get_buffer_bytes, proxy_get_property).
// Memory from here is not managed by the GC: whoever receives it releases it with freeHostBuffer.

/** Allocate `size` bytes for the host. Exported as `malloc` (ABI "Memory management"). */
export function malloc(size: usize): usize {
  return heap.alloc(size);
}

/** Release a buffer the host allocated through `malloc`. */
export function freeHostBuffer(ptr: usize): void {
  if (ptr != 0) heap.free(ptr);
}
