// Reading and writing the module's linear memory, and handing host-owned bytes to the module
// through its own allocator (proxy_on_memory_allocate, else malloc), as Envoy does.

export class OutOfBounds extends Error {}

export class GuestMemory {
  constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly allocate: ((size: number) => number) | undefined,
  ) {}

  /** Bytes of the whole memory; recreate after any call into the module (memory may grow). */
  get size(): number { return this.memory.buffer.byteLength; }

  private check(ptr: number, len: number): void {
    if (ptr < 0 || len < 0 || ptr + len > this.memory.buffer.byteLength) throw new OutOfBounds(`[${ptr}, +${len}) outside ${this.memory.buffer.byteLength} bytes`);
  }

  /** A copy of `len` bytes at `ptr`. */
  bytes(ptr: number, len: number): Buffer {
    this.check(ptr >>> 0, len >>> 0);
    return Buffer.from(new Uint8Array(this.memory.buffer, ptr >>> 0, len >>> 0));
  }
  string(ptr: number, len: number): string { return this.bytes(ptr, len).toString("utf8"); }

  u32(ptr: number): number { this.check(ptr, 4); return new DataView(this.memory.buffer).getUint32(ptr, true); }
  setU32(ptr: number, value: number): void { this.check(ptr, 4); new DataView(this.memory.buffer).setUint32(ptr, value >>> 0, true); }
  setU64(ptr: number, value: bigint): void { this.check(ptr, 8); new DataView(this.memory.buffer).setBigUint64(ptr, BigInt.asUintN(64, value), true); }
  write(ptr: number, bytes: Uint8Array): void { this.check(ptr, bytes.length); new Uint8Array(this.memory.buffer, ptr, bytes.length).set(bytes); }

  /** Copy `bytes` into memory the module allocates, and write pointer and size into the return
   *  slots. Empty values give pointer 0 and size 0 without allocating (as Envoy). */
  give(bytes: Uint8Array, retPtr: number, retSize: number): void {
    if (bytes.length === 0) { this.setU32(retPtr, 0); this.setU32(retSize, 0); return; }
    if (!this.allocate) throw new Error("emulator: the module exports neither proxy_on_memory_allocate nor malloc, so the host cannot return data to it");
    const ptr = Number(this.allocate(bytes.length)) >>> 0;
    if (ptr === 0) throw new Error(`emulator: the module's allocator returned 0 for ${bytes.length} bytes`);
    this.write(ptr, bytes);
    this.setU32(retPtr, ptr);
    this.setU32(retSize, bytes.length);
  }
}

/** Serialize header/metadata pairs as the ABI does: count, (key len, value len)*, then key\0value\0*. */
export function serializePairs(pairs: ReadonlyArray<readonly [string, string | Uint8Array]>): Buffer {
  if (pairs.length === 0) return Buffer.alloc(0);
  const enc = pairs.map(([k, v]) => [Buffer.from(k), Buffer.from(v)] as const);
  const head = Buffer.alloc(4 + 8 * enc.length);
  head.writeUInt32LE(enc.length, 0);
  enc.forEach(([k, v], i) => { head.writeUInt32LE(k.length, 4 + 8 * i); head.writeUInt32LE(v.length, 8 + 8 * i); });
  const nul = Buffer.alloc(1);
  return Buffer.concat([head, ...enc.flatMap(([k, v]) => [k, nul, v, nul])]);
}

/** Parse serialized pairs (empty input, or a single 0 byte, is an empty map). */
export function parsePairs(bytes: Uint8Array): [string, string][] {
  const b = Buffer.from(bytes);
  if (b.length === 0 || (b.length === 1 && b[0] === 0)) return [];
  if (b.length < 4) throw new Error("emulator: serialized map shorter than its count");
  const n = b.readUInt32LE(0);
  let at = 4 + 8 * n;
  if (at > b.length) throw new Error("emulator: serialized map truncated");
  const out: [string, string][] = [];
  for (let i = 0; i < n; i++) {
    const kl = b.readUInt32LE(4 + 8 * i), vl = b.readUInt32LE(8 + 8 * i);
    if (at + kl + vl + 2 > b.length) throw new Error("emulator: serialized map truncated");
    const k = b.subarray(at, at + kl).toString("utf8"); at += kl + 1;
    const v = b.subarray(at, at + vl).toString("utf8"); at += vl + 1;
    out.push([k, v]);
  }
  return out;
}
