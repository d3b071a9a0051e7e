// What the controller's API does with careless and hostile input, over real HTTP against a
// running controller (fake probes): addresses that are not addresses, ports out of range, two
// spellings of one address, malformed percent-encoding, bodies in encodings or charsets it does
// not read, wrong methods. Each gets a 4xx with a documented code, nothing changes, nothing is
// logged as a fault, and the controller keeps serving; a real fault is logged with its stack.
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import { request } from "node:http";
import { gzipSync } from "node:zlib";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import express from "express";
import { startController, type RunningController } from "../../controller/server.ts";
import { createApiRouter } from "../../controller/api/routes.ts";
import { API_ERRORS } from "../../controller/api/errors.ts";
import { ControllerState } from "../../controller/state.ts";
import { HEALTH_DEFAULTS } from "../../controller/health/checker.ts";

const TOKEN = "input-test-token";
const AUTH = { authorization: `Bearer ${TOKEN}` };

interface Answer { status: number; headers: Record<string, string | string[] | undefined>; body: any }

/** One request with exactly this path and these headers (fetch would normalise some of them). */
function send(port: number, method: string, path: string, headers: Record<string, string> = {}, body?: string | Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, method, path, headers: { ...headers, ...(body === undefined ? {} : { "content-length": String(Buffer.byteLength(body)) }) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        let json: unknown;
        try { json = JSON.parse(text); } catch { json = text; }
        resolve({ status: res.statusCode!, headers: res.headers, body: json });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

const json = (value: unknown) => JSON.stringify(value);

describe("controller API input", () => {
  let controller: RunningController;
  let logs: string[];
  let port: number;

  beforeEach(async () => {
    logs = [];
    controller = await startController({
      services: [{ service: { name: "kv", members: [
        { name: "p", address: "127.0.0.1:7001", role: "primary", lagBytes: 0 },
        { name: "a", address: "127.0.0.1:7002", role: "replica", lagBytes: 0 },
      ] }, health: HEALTH_DEFAULTS }],
      api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, token: TOKEN,
      storePath: join(mkdtempSync(join(tmpdir(), "lockstep-input-")), "controller.json"),
      relay: { url: "http://127.0.0.1:1" },
      probe: async () => ({ ok: true, rttMs: 1 }),
      log: (line) => logs.push(line),
    });
    port = controller.apiPort;
  });
  afterEach(async () => { await controller.close(); });

  const stateNow = () => JSON.stringify([controller.state.list().map((s) => [s.name, s.members.map((m) => [m.name, m.address, m.role])]), controller.state.history()]);

  async function refused(method: string, path: string, status: number, code: keyof typeof API_ERRORS, headers: Record<string, string> = AUTH, body?: string | Buffer): Promise<Answer> {
    const before = stateNow();
    const answer = await send(port, method, path, { "content-type": "application/json", ...headers }, body);
    expect(answer.status, JSON.stringify(answer.body)).toBe(status);
    expect(answer.body.error.code).toBe(code);
    expect(answer.body.error.message.length).toBeGreaterThan(10);
    expect(stateNow()).toBe(before);
    return answer;
  }

  const longName = `${"a".repeat(296)}:80`;
  it.each([
    ["a port above 65535", "127.0.0.1:99999", /port 99999: a port is 1 to 65535/],
    ["port 0", "127.0.0.1:0", /port 0/],
    ["octets above 255", "999.999.999.999:80", /not an IPv4 address/],
    ["256 in the first octet", "256.0.0.1:80", /not an IPv4 address/],
    ["a dash for a host", "-:80", /not an IPv4 address/],
    ["an empty label", "a..b:80", /not an IPv4 address/],
    ["three colons in brackets", "[:::]:80", /not an IPv6 address/],
    ["a 300-character name", longName, /at most 64 characters/],
    ["a host name", "localhost:7002", /names the host "localhost".*write the address \(e\.g\. "127\.0\.0\.1:7002"/],
  ])("refuses a member whose address has %s, in both calls that take one, and keeps serving", async (_what, address, message) => {
    const added = await refused("POST", "/v1/services/kv/members", 400, "BAD_REQUEST", AUTH, json({ name: "c", address }));
    expect(added.body.error.message).toMatch(message);
    const declared = await refused("POST", "/v1/services", 400, "BAD_REQUEST", AUTH, json({ name: "orders", primary: { name: "x", address: "127.0.0.1:8001" }, replicas: [{ name: "y", address }] }));
    expect(declared.body.error.message).toMatch(/"replicas\[0\]\.address"/);
    await refused("POST", "/v1/services", 400, "BAD_REQUEST", AUTH, json({ name: "orders", primary: { name: "x", address }, replicas: [] }));
    expect((await send(port, "GET", "/v1/services/kv")).status).toBe(200);
  });

  it.each([
    ["with a leading zero in the port", "127.0.0.1:07002"],
    ["as an IPv4-mapped IPv6 address", "[::ffff:127.0.0.1]:7002"],
    ["as IPv4-mapped IPv6 in hex", "[::ffff:7f00:1]:7002"],
  ])("takes an existing member's address written %s for the same member (409 DUPLICATE)", async (_what, address) => {
    const answer = await refused("POST", "/v1/services/kv/members", 409, "DUPLICATE", AUTH, json({ name: "c", address }));
    expect(answer.body.error.message).toContain('"a" at 127.0.0.1:7002');
    const declared = await refused("POST", "/v1/services", 400, "BAD_REQUEST", AUTH, json({ name: "orders", primary: { name: "x", address: "127.0.0.1:8001" }, replicas: [{ name: "y", address: "127.0.0.1:8002" }, { name: "z", address: address.replace("7002", "8002") }] }));
    expect(declared.body.error.message).toContain('two members have the address "127.0.0.1:8002"');
  });

  it("stores an address in its canonical spelling", async () => {
    const res = await send(port, "POST", "/v1/services/kv/members", { ...AUTH, "content-type": "application/json" }, json({ name: "c", address: "[2001:DB8:0:0::05]:07003" }));
    expect(res.status).toBe(201);
    expect(res.body.members.find((m: any) => m.name === "c").address).toBe("[2001:db8::5]:7003");
  });

  it.each(["%ZZ", "%", "%C0%AF", "%E0%A4%A"])("answers a path segment %s that does not decode with 400 BAD_PATH, token or not", async (segment) => {
    await refused("GET", `/v1/services/${segment}`, 400, "BAD_PATH", {});
    await refused("POST", `/v1/services/${segment}/promote`, 400, "BAD_PATH", {}, "{}");
    await refused("DELETE", `/v1/services/kv/members/${segment}`, 400, "BAD_PATH");
    await refused("POST", `/v1/services/kv/members/${segment}/rejoin`, 400, "BAD_PATH");
  });

  it.each([
    ["corrupt gzip", { "content-encoding": "gzip" }, "not gzip at all", 400, "BAD_ENCODING"],
    ["corrupt deflate", { "content-encoding": "deflate" }, "\u0000\u0001garbage", 400, "BAD_ENCODING"],
    ["corrupt br", { "content-encoding": "br" }, "xx", 400, "BAD_ENCODING"],
    ["an unknown Content-Encoding", { "content-encoding": "zstd-nope" }, "{}", 415, "UNSUPPORTED_ENCODING"],
    ["an unknown charset", { "content-type": "application/json; charset=klingon" }, "{}", 415, "UNSUPPORTED_ENCODING"],
    ["a charset the API does not read", { "content-type": "application/json; charset=latin1" }, "{}", 415, "UNSUPPORTED_ENCODING"],
    ["a gzip bomb", { "content-encoding": "gzip" }, gzipSync(Buffer.alloc(10 << 20, 32)), 413, "PAYLOAD_TOO_LARGE"],
  ] as const)("answers a body with %s with a coded 4xx", async (_what, headers, body, status, code) => {
    await refused("POST", "/v1/services/kv/members", status, code, { ...AUTH, ...headers }, body);
  });

  it("reads a gzip body it can decode", async () => {
    const res = await send(port, "POST", "/v1/services/kv/members", { ...AUTH, "content-type": "application/json", "content-encoding": "gzip" }, gzipSync(json({ name: "c", address: "127.0.0.1:7003" })));
    expect(res.status).toBe(201);
  });

  it("answers a method a route does not take with 405 and the methods it does take", async () => {
    const res = await refused("PUT", "/v1/services/kv", 405, "METHOD_NOT_ALLOWED", AUTH, "{}");
    expect(res.headers.allow).toBe("GET, HEAD, DELETE");
    await refused("PATCH", "/v1/services", 405, "METHOD_NOT_ALLOWED");
  });

  it("answers a request Node's HTTP parser refuses with a coded JSON error", async () => {
    const res = await send(port, "GET", "/v1/services", { "x-big": "y".repeat(20_000) });
    expect(res.status).toBe(431);
    expect(res.body.error.code).toBe("HEADERS_TOO_LARGE");
  });

  it("logs nothing as a fault for any of this", async () => {
    await send(port, "GET", "/v1/services/%ZZ");
    await send(port, "POST", "/v1/services/kv/members", { ...AUTH, "content-encoding": "gzip" }, "junk");
    expect(logs.filter((l) => l.startsWith("api:"))).toEqual([]);
  });
});

describe("a fault of the controller", () => {
  it("is answered 500 INTERNAL and logged with its stack, never silently", async () => {
    const logs: string[] = [];
    const state = new ControllerState(undefined);
    state.get = () => { throw new Error("the state exploded"); };
    const app = express().use(createApiRouter(state, { token: TOKEN, log: (l) => logs.push(l) }));
    const server = app.listen(0, "127.0.0.1");
    await new Promise((r) => server.once("listening", r));
    try {
      const res = await send((server.address() as { port: number }).port, "GET", "/v1/services/kv");
      expect(res.status).toBe(500);
      expect(res.body.error.code).toBe("INTERNAL");
      expect(logs).toHaveLength(1);
      expect(logs[0]).toMatch(/^api: GET \/v1\/services\/kv failed: Error: the state exploded\n\s+at /);
    } finally { server.close(); }
  });
});
