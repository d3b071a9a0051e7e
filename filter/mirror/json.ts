// A small JSON reader for the plugin configuration: one flat object whose values are
// strings, numbers or booleans. Anything else is an error with the position it was found at.
// No host calls: tested with plain inputs.

export const JSON_STRING: u8 = 1;
export const JSON_NUMBER: u8 = 2;
export const JSON_BOOL: u8 = 3;

export class JsonValue {
  constructor(public kind: u8, public text: string, public number: f64, public flag: bool) {}
}

export class FlatObject {
  keys: string[] = [];
  values: JsonValue[] = [];
  error: string = "";
  get(key: string): JsonValue | null {
    for (let i = 0; i < this.keys.length; i++) if (this.keys[i] == key) return this.values[i];
    return null;
  }
}

class Reader {
  pos: i32 = 0;
  error: string = "";
  constructor(public src: string) {}
  fail(what: string): void { if (this.error.length == 0) this.error = what + " at offset " + this.pos.toString(); }
  skipSpace(): void {
    while (this.pos < this.src.length) {
      const c = this.src.charCodeAt(this.pos);
      if (c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d) this.pos++; else break;
    }
  }
  peek(): i32 { return this.pos < this.src.length ? this.src.charCodeAt(this.pos) : -1; }
  expect(c: i32, what: string): bool {
    this.skipSpace();
    if (this.peek() != c) { this.fail("expected " + what); return false; }
    this.pos++;
    return true;
  }
  readString(): string {
    if (!this.expect(0x22, "'\"'")) return "";
    let out = "";
    while (this.pos < this.src.length) {
      const c = this.src.charCodeAt(this.pos++);
      if (c == 0x22) return out;
      if (c == 0x5c) {
        const e = this.peek(); this.pos++;
        if (e == 0x22 || e == 0x5c || e == 0x2f) out += String.fromCharCode(e);
        else if (e == 0x6e) out += "\n";
        else if (e == 0x74) out += "\t";
        else { this.fail("unsupported escape"); return ""; }
      } else out += String.fromCharCode(c);
    }
    this.fail("unterminated string");
    return "";
  }
  readNumber(): f64 {
    const start = this.pos;
    while (this.pos < this.src.length) {
      const c = this.src.charCodeAt(this.pos);
      if ((c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x2b || c == 0x2e || c == 0x65 || c == 0x45) this.pos++; else break;
    }
    if (this.pos == start) { this.fail("expected a value"); return 0; }
    const value = parseFloat(this.src.substring(start, this.pos));
    if (isNaN(value)) this.fail("bad number");
    return value;
  }
  readWord(word: string): bool {
    if (this.src.substr(this.pos, word.length) == word) { this.pos += word.length; return true; }
    return false;
  }
}

/** Parse `{ "key": value, ... }` with scalar values. On error, `.error` says what and where. */
export function parseFlatObject(src: string): FlatObject {
  const out = new FlatObject();
  const r = new Reader(src);
  if (r.expect(0x7b, "'{' (the configuration must be a JSON object)")) {
    r.skipSpace();
    if (r.peek() == 0x7d) r.pos++;
    else {
      while (r.error.length == 0) {
        r.skipSpace();
        const key = r.readString();
        if (!r.expect(0x3a, "':'")) break;
        r.skipSpace();
        const c = r.peek();
        let value: JsonValue = new JsonValue(0, "", 0, false);
        if (c == 0x22) value = new JsonValue(JSON_STRING, r.readString(), 0, false);
        else if (r.readWord("true")) value = new JsonValue(JSON_BOOL, "", 0, true);
        else if (r.readWord("false")) value = new JsonValue(JSON_BOOL, "", 0, false);
        else if (c == 0x7b || c == 0x5b) { r.fail("nested objects and arrays are not supported for \"" + key + "\""); break; }
        else value = new JsonValue(JSON_NUMBER, "", r.readNumber(), false);
        if (r.error.length > 0) break;
        if (out.get(key) !== null) { r.fail("duplicate key \"" + key + "\""); break; }
        out.keys.push(key); out.values.push(value);
        r.skipSpace();
        if (r.peek() == 0x2c) { r.pos++; continue; }
        if (r.expect(0x7d, "',' or '}'")) break;
      }
    }
    r.skipSpace();
    if (r.error.length == 0 && r.pos != src.length) r.fail("unexpected text after the object");
  }
  out.error = r.error;
  return out;
}
