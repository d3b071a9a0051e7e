// Reads a wasm module's imported functions with their signatures (type and import sections),
// so the emulator can refuse a module whose import arities differ from the ABI spec, as
// Envoy does ("import type mismatch"). WebAssembly.Module.imports() gives no signatures.

export type ValType = "i32" | "i64" | "f32" | "f64" | "v128" | "funcref" | "externref";
export interface FunctionImport { module: string; name: string; params: ValType[]; results: ValType[] }

const VALTYPES: Record<number, ValType> = { 0x7f: "i32", 0x7e: "i64", 0x7d: "f32", 0x7c: "f64", 0x7b: "v128", 0x70: "funcref", 0x6f: "externref" };

class Cursor {
  at = 0;
  constructor(readonly bytes: Uint8Array) {}
  u8(): number { return this.bytes[this.at++]; }
  leb(): number {
    let result = 0, shift = 0, b: number;
    do { b = this.u8(); result |= (b & 0x7f) << shift; shift += 7; } while (b & 0x80);
    return result >>> 0;
  }
  name(): string { const n = this.leb(); const s = Buffer.from(this.bytes.subarray(this.at, this.at + n)).toString("utf8"); this.at += n; return s; }
  valtype(): ValType { const t = this.u8(); const v = VALTYPES[t]; if (!v) throw new Error(`unsupported value type 0x${t.toString(16)}`); return v; }
  limits(): void { const flag = this.u8(); this.leb(); if (flag & 1) this.leb(); }
}

export function functionImports(binary: Uint8Array): FunctionImport[] {
  const c = new Cursor(binary);
  if (binary.length < 8 || binary[0] !== 0 || binary[1] !== 0x61 || binary[2] !== 0x73 || binary[3] !== 0x6d) throw new Error("emulator: not a wasm binary (bad magic)");
  c.at = 8; // magic + version
  const types: { params: ValType[]; results: ValType[] }[] = [];
  const imports: FunctionImport[] = [];
  while (c.at < binary.length) {
    const id = c.u8();
    const size = c.leb();
    const end = c.at + size;
    if (id === 1) {
      for (let n = c.leb(); n > 0; n--) {
        if (c.u8() !== 0x60) throw new Error("malformed function type");
        const params = Array.from({ length: c.leb() }, () => c.valtype());
        const results = Array.from({ length: c.leb() }, () => c.valtype());
        types.push({ params, results });
      }
    } else if (id === 2) {
      for (let n = c.leb(); n > 0; n--) {
        const module = c.name();
        const name = c.name();
        const kind = c.u8();
        if (kind === 0) {
          const t = types[c.leb()];
          if (!t) throw new Error(`emulator: ${module}.${name} refers to a missing function type`);
          imports.push({ module, name, params: t.params, results: t.results });
        }
        else if (kind === 1) { c.u8(); c.limits(); }
        else if (kind === 2) c.limits();
        else if (kind === 3) { c.valtype(); c.u8(); }
        else if (kind === 4) { c.u8(); c.leb(); }
        else throw new Error(`emulator: unknown import kind ${kind} for ${module}.${name}`);
      }
    }
    c.at = end;
  }
  return imports;
}
