// The reply digest: CRC-32 as zlib computes it (reflected polynomial 0xEDB88320, initial and
// final XOR 0xFFFFFFFF), so the relay uses Node's native zlib.crc32 and both sides agree
// (vectors: test/fixtures/wire-frames.json, "digests"). Slicing-by-8: eight 1 KiB tables,
// eight bytes per step. No host calls.
//
//   tables: [ T0: 256 x u32 | T1 | T2 | ... | T7 ]     Tk[i] = CRC of byte i followed by k zero bytes

/** The primary's reply stream is digested in windows of this many bytes, aligned by offset:
 *  window i is reply bytes [i * REPLY_WINDOW_BYTES, (i + 1) * REPLY_WINDOW_BYTES). */
export const REPLY_WINDOW_BYTES: u64 = 16 * 1024;

const CRC32_POLYNOMIAL: u32 = 0xedb88320;
const TABLE_ENTRIES: i32 = 256;
const TABLES: i32 = 16;

function buildTables(): StaticArray<u32> {
  const t = new StaticArray<u32>(TABLE_ENTRIES * TABLES);
  for (let i = 0; i < TABLE_ENTRIES; i++) {
    let c = <u32>i;
    for (let k = 0; k < 8; k++) c = (c & 1) != 0 ? CRC32_POLYNOMIAL ^ (c >>> 1) : c >>> 1;
    t[i] = c;
  }
  for (let s = 1; s < TABLES; s++) {
    for (let i = 0; i < TABLE_ENTRIES; i++) {
      const prev = t[(s - 1) * TABLE_ENTRIES + i];
      t[s * TABLE_ENTRIES + i] = (prev >>> 8) ^ t[prev & 0xff];
    }
  }
  return t;
}

const CRC_TABLES: StaticArray<u32> = buildTables();

// @ts-ignore: decorator
@inline function entry(tables: usize, table: u32, index: u32): u32 {
  return load<u32>(tables + ((<usize>((table << 8) | index)) << 2));
}

/** Continue the CRC-32 `crc` (0 to start) over `length` bytes at `ptr`: as zlib's crc32(crc, ...). */
export function crc32Update(crc: u32, ptr: usize, length: usize): u32 {
  const tables = changetype<usize>(CRC_TABLES);
  let c = ~crc;
  let p = ptr;
  let n = length;
  while (n >= 16) {
    // wasm loads are little-endian and may be unaligned.
    const one = load<u32>(p) ^ c;
    const two = load<u32>(p + 4);
    const three = load<u32>(p + 8);
    const four = load<u32>(p + 12);
    c = entry(tables, 15, one & 0xff) ^ entry(tables, 14, (one >>> 8) & 0xff) ^
      entry(tables, 13, (one >>> 16) & 0xff) ^ entry(tables, 12, one >>> 24) ^
      entry(tables, 11, two & 0xff) ^ entry(tables, 10, (two >>> 8) & 0xff) ^
      entry(tables, 9, (two >>> 16) & 0xff) ^ entry(tables, 8, two >>> 24) ^
      entry(tables, 7, three & 0xff) ^ entry(tables, 6, (three >>> 8) & 0xff) ^
      entry(tables, 5, (three >>> 16) & 0xff) ^ entry(tables, 4, three >>> 24) ^
      entry(tables, 3, four & 0xff) ^ entry(tables, 2, (four >>> 8) & 0xff) ^
      entry(tables, 1, (four >>> 16) & 0xff) ^ entry(tables, 0, four >>> 24);
    p += 16;
    n -= 16;
  }
  while (n > 0) {
    c = entry(tables, 0, (c ^ <u32>load<u8>(p)) & 0xff) ^ (c >>> 8);
    p++;
    n--;
  }
  return ~c;
}
