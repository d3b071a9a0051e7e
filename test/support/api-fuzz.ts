// Hostile requests to the controller's API, generated from its OpenAPI document with a seeded
// PRNG (the same seed gives the same requests): every documented route and method, wrong methods,
// missing, wrong and malformed tokens, hostile path segments and query strings, bodies of the
// wrong shape and type, deep nesting, huge and compressed bodies, bad encodings and charsets,
// bad addresses and ports, and requests Node's HTTP parser refuses. `check` says what is wrong
// with an answer: a 5xx, or an error that is not a JSON body with a code the document lists.
import { request } from "node:http";
import { connect } from "node:net";
import { gzipSync } from "node:zlib";
import { OPENAPI } from "../../controller/api/openapi.ts";
import { API_ERRORS } from "../../controller/api/errors.ts";

export interface FuzzRequest {
  readonly method: string;
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body?: Buffer;
  /** Bytes written as they are on a fresh connection (for what an HTTP client would not send). */
  readonly raw?: string;
  /** What it is, for failure messages. */
  readonly what: string;
}

export interface FuzzAnswer { readonly status: number; readonly headers: Record<string, string | string[] | undefined>; readonly text: string }

/** mulberry32: small, fast, good enough to pick test cases. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Op = { template: string; method: string; pattern: RegExp; codes: Set<string> };

/** The documented operations, each with the error codes its responses list. */
export const OPERATIONS: Op[] = Object.entries(OPENAPI.paths).flatMap(([template, ops]) => Object.entries(ops).map(([method, op]) => ({
  template,
  method: method.toUpperCase(),
  pattern: new RegExp(`^${template.replace(/\./g, "\\.").replace(/\{\w+\}/g, "[^/?]+")}/?(\\?.*)?$`, "i"),
  codes: new Set(Object.values((op as { responses: Record<string, { description: string }> }).responses).flatMap((r) => [...r.description.matchAll(/\b([A-Z][A-Z_]{3,}):/g)].map((m) => m[1]))),
})));

const HOSTILE_SEGMENTS = ["%ZZ", "%", "%C0%AF", "%E0%A4%A", "..", "%2e%2e", "a%2Fb", "%00", "x".repeat(300), "%E2%98%83", "*", "kv;x", "%20", "%2F", "-", "_", "A".repeat(64), "A".repeat(65), "%FF%FE", "nope"];
export const HOSTILE_ADDRESSES: unknown[] = [
  "127.0.0.1:99999", "999.999.999.999:80", "256.0.0.1:80", "-:80", "a..b:80", "[:::]:80", "127.0.0.1:0", `${"a".repeat(296)}:80`, "localhost:7002",
  "", " 127.0.0.1:80", "127.0.0.1:80 ", "127.0.0.1", ":80", "127.0.0.1:-1", "127.0.0.1:1e3", "127.0.0.1:0x50", "[::1]", "::1:80", "[::1%eth0]:80",
  "0x7f.0.0.1:80", "1.2.3:80", "127.1:80", "١٢٧.0.0.1:80", "127.0.0.1:80\u0000", "[::1]:65536", "127.0.0.01:80", 80, null, {}, [], true, 1e309,
];
const HOSTILE_NAMES: unknown[] = ["", "a b", "x".repeat(65), "../x", "é", null, 5, "a\u0000b", [], {}, "p", "kv", "<script>", "a/b"];
const HOSTILE_VALUES: unknown[] = [null, 0, -1, 1.5, "", "x".repeat(5000), [], {}, [[[]]], true, { $ne: 1 }, JSON.parse('{"__proto__": {"admin": true}}'), "\u0000", "😀"];
const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PURGE"];

export class ApiFuzzer {
  private readonly rand: () => number;
  private readonly bomb = gzipSync(Buffer.alloc(16 << 20, 0x20));

  /** `names`: services and members that exist (and some that do not); `addresses`: valid ones to
   *  use (default 127.0.0.1:8100-8149; give live ones where probes are real, so that a member the
   *  fuzz adds does not go stale on its own in the middle of the run). */
  constructor(seed: number, private readonly token: string, private readonly names: { services: string[]; members: string[]; addresses?: string[] }) { this.rand = prng(seed); }

  private pick<T>(xs: readonly T[]): T { return xs[Math.floor(this.rand() * xs.length)]; }
  private chance(p: number): boolean { return this.rand() < p; }

  private segment(kind: "service" | "member"): string {
    if (this.chance(0.6)) return this.pick(kind === "service" ? this.names.services : this.names.members);
    return this.pick(HOSTILE_SEGMENTS);
  }

  private authorization(): Record<string, string> {
    const r = this.rand();
    if (r < 0.35) return { authorization: `Bearer ${this.token}` };
    if (r < 0.5) return {};
    return { authorization: this.pick([`Bearer ${this.token}x`, `Bearer ${this.token.slice(1)}`, `bearer ${this.token}`, `Basic ${Buffer.from(`u:${this.token}`).toString("base64")}`,
      "Bearer", "Bearer ", `Bearer ${"x".repeat(8000)}`, `Bearer  ${this.token}`, `Bearer ${this.token} `, "Bearer \u00e9\u00e9"]) };
  }

  /** A body close to what the operation takes, then mutated. */
  private document(op: Op | undefined): unknown {
    const valid = () => (this.names.addresses ? this.pick(this.names.addresses) : `127.0.0.1:${8100 + Math.floor(this.rand() * 50)}`);
    const address = () => (this.chance(0.5) ? valid() : this.pick(HOSTILE_ADDRESSES));
    const name = () => (this.chance(0.6) ? `f${Math.floor(this.rand() * 10)}` : this.pick(HOSTILE_NAMES));
    const member = () => ({ name: name(), address: address() });
    let doc: Record<string, unknown>;
    switch (`${op?.method} ${op?.template}`) {
      case "POST /v1/services": doc = { name: name(), primary: member(), replicas: Array.from({ length: Math.floor(this.rand() * 3) }, member), ...(this.chance(0.3) ? { healthCheck: { send: "PING\n", expect: "PONG" } } : {}) }; break;
      case "POST /v1/services/{service}/promote": doc = this.chance(0.5) ? {} : { member: name() }; break;
      case "POST /v1/services/{service}/members": doc = member(); break;
      default: doc = { member: name() };
    }
    const r = this.rand();
    if (r < 0.3) return doc;
    const keys = Object.keys(doc);
    if (r < 0.45 && keys.length) { delete doc[this.pick(keys)]; return doc; }
    if (r < 0.65 && keys.length) { doc[this.pick(keys)] = this.pick(HOSTILE_VALUES); return doc; }
    if (r < 0.72) { Object.defineProperty(doc, this.pick(["force", "role", "alive", "__proto__", "constructor", "admin"]), { value: true, enumerable: true }); return doc; }
    if (r < 0.85) return this.pick(HOSTILE_VALUES);
    return { ...doc, pad: "y".repeat(Math.floor(this.rand() * 20_000)) };
  }

  private body(op: Op | undefined): { body?: Buffer; headers: Record<string, string> } {
    const r = this.rand();
    if (r < 0.08) return { headers: {} };
    if (r < 0.11) return { body: Buffer.from(this.nested()), headers: { "content-type": "application/json" } };
    if (r < 0.14) return { body: Buffer.from(this.pick(["{", "{nope}", "[1,]", "'x'", "{\"a\":1}{", "\u0000", "null garbage", "NaN", "{\"a\": 1e999999}"])), headers: { "content-type": "application/json" } };
    if (r < 0.18) return { body: Buffer.alloc(this.pick([17_000, 1 << 20, 6 << 20]), 0x61), headers: { "content-type": "application/json" } };
    if (r < 0.21) return { body: this.bomb, headers: { "content-type": "application/json", "content-encoding": "gzip" } };
    if (r < 0.25) return { body: Buffer.from("not compressed at all"), headers: { "content-encoding": this.pick(["gzip", "deflate", "br", "zstd", "gzip, gzip", "identity, x", "GZIP"]) } };
    if (r < 0.29) return { body: Buffer.from(JSON.stringify(this.document(op))), headers: { "content-type": `application/json; charset=${this.pick(["klingon", "latin1", "utf-16", "utf-32le", "", "\"utf-8\"", "utf-8; charset=latin1"])}` } };
    if (r < 0.33) return { body: gzipSync(JSON.stringify(this.document(op))), headers: { "content-type": "application/json", "content-encoding": "gzip" } };
    const contentType = this.pick(["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=utf-8"]);
    return { body: Buffer.from(JSON.stringify(this.document(op)) ?? "null"), headers: { "content-type": contentType } };
  }

  /** Deeply nested JSON (arrays or objects), up to the size the API reads. */
  private nested(): string {
    const depth = 1 + Math.floor(this.rand() * 8000);
    return this.chance(0.5) ? "[".repeat(depth) + "]".repeat(depth) : '{"a":'.repeat(Math.floor(depth / 3)) + "1" + "}".repeat(Math.floor(depth / 3));
  }

  /** Requests no HTTP client would send: malformed request lines and headers, oversized headers. */
  private raw(): FuzzRequest {
    const raw = this.pick([
      "GET /v1/services HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
      "GET /v1/services HTTP/9.9\r\nHost: x\r\n\r\n",
      "GET\r\n\r\n",
      "G\u0000T /v1/services HTTP/1.1\r\n\r\n",
      `GET /v1/services HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(20_000)}\r\n\r\n`,
      "POST /v1/services/kv/members HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
      "POST /v1/services/kv/members HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n",
      "GET /v1/services/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /v1/services HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
      "GET http://evil/v1/services HTTP/1.1\r\nHost: x\r\n\r\n",
    ]);
    return { method: "RAW", path: "", headers: {}, raw, what: `raw ${JSON.stringify(raw.slice(0, 80))}` };
  }

  next(): FuzzRequest {
    if (this.chance(0.03)) return this.raw();
    const op = this.chance(0.8) ? this.pick(OPERATIONS) : undefined;
    const template = op?.template ?? this.pick([...Object.keys(OPENAPI.paths), "/v1", "/", "/v2/services", "/v1/services/{service}/members/{member}/x", "/V1/SERVICES", "/v1/services//promote"]);
    const method = op && this.chance(0.85) ? op.method : this.pick(METHODS);
    let path = template.replace("{service}", () => this.segment("service")).replace("{member}", () => this.segment("member"));
    if (this.chance(0.1)) path += this.pick(["/", "?service=kv", "?service=%ZZ", "?service=a&service=b", "?service[x]=1", `?service=${"s".repeat(3000)}`, "?x=%", "#frag"]);
    const { body, headers } = method === "GET" || method === "HEAD" ? (this.chance(0.1) ? this.body(op) : { headers: {} }) : this.body(op);
    return { method, path, headers: { ...this.authorization(), ...headers }, body, what: `${method} ${path.slice(0, 120)} ${JSON.stringify(headers)} body ${body ? `${body.length} bytes: ${body.subarray(0, 60).toString("latin1")}` : "none"}` };
  }
}

/** Send one request; rejects if no answer comes within `timeoutMs` (a hang). */
export function send(port: number, r: FuzzRequest, timeoutMs = 10_000): Promise<FuzzAnswer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms (a hang): ${r.what}`)), timeoutMs);
    const done = (a: FuzzAnswer) => { clearTimeout(timer); resolve(a); };
    const raw = r.raw;
    if (raw !== undefined) {
      const socket = connect(port, "127.0.0.1", () => socket.end(raw));
      let text = "";
      socket.on("data", (d) => (text += d.toString("latin1")));
      socket.on("error", () => {});
      // The first answer (bytes the server could not read as a request may get an answer of their own).
      socket.on("close", () => {
        const m = /^HTTP\/1\.1 (\d{3})[^\r]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(text);
        if (!m) { clearTimeout(timer); reject(new Error(`no HTTP answer to ${r.what}: ${JSON.stringify(text.slice(0, 200))}`)); return; }
        const headers = Object.fromEntries(m[2].split("\r\n").map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
        const length = Number(headers["content-length"] ?? Buffer.byteLength(m[3], "latin1"));
        done({ status: Number(m[1]), headers, text: Buffer.from(m[3], "latin1").subarray(0, length).toString("utf8") });
      });
      return;
    }
    let answered = false;
    const req = request({ host: "127.0.0.1", port, method: r.method, path: r.path, headers: { ...r.headers, ...(r.body ? { "content-length": String(r.body.length) } : {}) } }, (res) => {
      answered = true;
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => done({ status: res.statusCode!, headers: res.headers, text: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", () => done({ status: res.statusCode!, headers: res.headers, text: Buffer.concat(chunks).toString("utf8") }));
    });
    // The server may answer (413, 401) and close before a large body is sent: that is an answer.
    req.on("error", (err) => { if (!answered) { clearTimeout(timer); reject(new Error(`${err.message}: ${r.what}`)); } });
    req.end(r.body);
  });
}

/** What is wrong with an answer, or undefined. */
export function check(r: FuzzRequest, a: FuzzAnswer): string | undefined {
  if (a.status >= 500) return `${a.status}: ${a.text.slice(0, 300)}`;
  if (a.status < 400 || r.method === "HEAD") return undefined;
  let code: string;
  try { code = JSON.parse(a.text).error.code; } catch { return `${a.status} without a JSON error body: ${JSON.stringify(a.text.slice(0, 200))}`; }
  const known = API_ERRORS[code as keyof typeof API_ERRORS];
  if (!known) return `${a.status} with an undocumented code ${JSON.stringify(code)}`;
  if (known.status !== a.status) return `${code} answered with ${a.status}, documented as ${known.status}`;
  const op = OPERATIONS.find((o) => o.method === (r.method === "HEAD" ? "GET" : r.method) && o.pattern.test(r.path));
  if (op && !op.codes.has(code)) return `${code} is not among the codes documented for ${op.method} ${op.template}: ${[...op.codes].join(", ")}`;
  return undefined;
}
