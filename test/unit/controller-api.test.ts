// The controller's HTTP API over real HTTP: malformed, unauthorized and conflicting calls each
// get a precise 4xx and change nothing; the OpenAPI document matches the routes; state
// survives a restart through the store.
import { describe, it, expect, beforeEach, afterEach } from "vitest";
import express from "express";
import type { Server } from "node:http";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createApiRouter } from "../../controller/api/routes.ts";
import { OPENAPI } from "../../controller/api/openapi.ts";
import { API_ERRORS } from "../../controller/api/errors.ts";
import { ControllerState } from "../../controller/state.ts";
import { validateStoredState } from "../../controller/store/stored-state.ts";
import { FileStore } from "../../controller/store/file-store.ts";
import type { Member } from "../../controller/model/service.ts";

const TOKEN = "s3cret-token";
const member = (name: string, role: Member["role"], port: number): Member => ({ name, address: `127.0.0.1:${port}`, role, alive: true, lagBytes: 0 });

describe("controller HTTP API", () => {
  let server: Server;
  let base: string;
  let state: ControllerState;
  let storePath: string;

  async function start(): Promise<void> {
    state = new ControllerState(new FileStore(storePath, validateStoredState), { now: () => new Date("2026-11-24T12:00:00Z") });
    state.declare({ name: "kv", members: [member("p", "primary", 7001), member("a", "replica", 7002), member("b", "replica", 7003), member("s", "stale", 7004)] });
    for (const m of state.get("kv")!.members) state.observe("kv", m.name, { alive: true }); // as this process's health checks would
    const app = express();
    app.use(createApiRouter(state, { token: TOKEN, configured: (name) => name === "kv" }));
    server = await new Promise<Server>((resolve) => { const s = app.listen(0, "127.0.0.1", () => resolve(s)); });
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  }

  beforeEach(async () => {
    storePath = join(mkdtempSync(join(tmpdir(), "lockstep-api-")), "controller.json");
    await start();
  });
  afterEach(() => { server.closeAllConnections(); server.close(); });

  const call = (method: string, path: string, body?: unknown, auth: string | null = `Bearer ${TOKEN}`, raw?: string) =>
    fetch(base + path, {
      method,
      headers: { ...(auth ? { authorization: auth } : {}), "content-type": "application/json" },
      body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
    });

  it("lists services with members, roles and the last failover", async () => {
    const res = await call("GET", "/v1/services", undefined, null);
    expect(res.status).toBe(200);
    const { services } = await res.json();
    expect(services[0]).toMatchObject({ name: "kv", primary: "p", lastFailover: null });
    expect(services[0].members.map((m: any) => `${m.name}:${m.role}`)).toEqual(["p:primary", "a:replica", "b:replica", "s:stale"]);
  });

  it("switches over to a named replica, records the event, and keeps it after a restart", async () => {
    const res = await call("POST", "/v1/services/kv/promote", { member: "b" });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ primary: "b", lastFailover: { kind: "switchover", member: "b" } });
    server.close();
    await start(); // a new controller on the same store
    const after = await (await call("GET", "/v1/services/kv", undefined, null)).json();
    expect(after.primary).toBe("b");
    expect(after.members.find((m: any) => m.name === "p").role).toBe("replica");
    const { events } = await (await call("GET", "/v1/events?service=kv", undefined, null)).json();
    expect(events.map((e: any) => e.kind)).toEqual(["switchover"]);
  });

  it("adds a replica, takes a stale member back only through rejoin, and removes members", async () => {
    expect((await call("POST", "/v1/services/kv/members", { name: "c", address: "127.0.0.1:7005" })).status).toBe(201);
    expect((await (await call("POST", "/v1/services/kv/members/s/rejoin")).json()).members.find((m: any) => m.name === "s").role).toBe("joining");
    expect((await (await call("DELETE", "/v1/services/kv/members/c")).json()).members.map((m: any) => m.name)).toEqual(["p", "a", "b", "s"]);
  });

  it("declares a service through the API, with its members and an event", async () => {
    const res = await call("POST", "/v1/services", { name: "orders", primary: { name: "db-a", address: "127.0.0.1:8001" }, replicas: [{ name: "db-b", address: "127.0.0.1:8002" }], healthCheck: { send: "PING\n", expect: "PONG" } });
    expect(res.status).toBe(201);
    expect(await res.json()).toMatchObject({ name: "orders", primary: "db-a", members: [{ name: "db-a", role: "primary" }, { name: "db-b", role: "replica" }] });
    expect(state.history("orders").map((e) => e.kind)).toEqual(["service_added"]);
  });

  it("removes a service declared through the API, with an event", async () => {
    const declared = { name: "orders", primary: { name: "db-a", address: "127.0.0.1:8001" }, replicas: [] };
    expect((await call("POST", "/v1/services", declared)).status).toBe(201);
    const res = await call("DELETE", "/v1/services/orders");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ removed: "orders" });
    expect((await call("GET", "/v1/services/orders", undefined, null)).status).toBe(404);
    expect(state.history("orders").map((e) => e.kind)).toEqual(["service_added", "service_removed"]);
    expect((await call("POST", "/v1/services", declared)).status).toBe(201); // the name is free again
  });

  it.each([
    ["removing a service from the config file", "DELETE", "/v1/services/kv", undefined, undefined, undefined, 409, "DECLARED_IN_CONFIG"],
    ["removing an unknown service", "DELETE", "/v1/services/nope", undefined, undefined, undefined, 404, "UNKNOWN_SERVICE"],
    ["removing a service without a token", "DELETE", "/v1/services/kv", undefined, null, undefined, 401, "UNAUTHORIZED"],
    ["no token", "POST", "/v1/services/kv/promote", {}, null, undefined, 401, "UNAUTHORIZED"],
    ["a wrong token", "POST", "/v1/services/kv/promote", {}, "Bearer nope", undefined, 401, "UNAUTHORIZED"],
    ["an unknown service", "POST", "/v1/services/nope/promote", {}, undefined, undefined, 404, "UNKNOWN_SERVICE"],
    ["an unknown member", "POST", "/v1/services/kv/promote", { member: "zz" }, undefined, undefined, 404, "NO_SUCH_MEMBER"],
    ["promoting a stale member", "POST", "/v1/services/kv/promote", { member: "s" }, undefined, undefined, 409, "NOT_PROMOTABLE"],
    ["promoting the primary", "POST", "/v1/services/kv/promote", { member: "p" }, undefined, undefined, 409, "IS_PRIMARY"],
    ["removing the primary", "DELETE", "/v1/services/kv/members/p", undefined, undefined, undefined, 409, "IS_PRIMARY"],
    ["a member of the wrong type", "POST", "/v1/services/kv/promote", { member: 7 }, undefined, undefined, 400, "BAD_REQUEST"],
    ["an unknown field", "POST", "/v1/services/kv/promote", { member: "a", force: true }, undefined, undefined, 400, "BAD_REQUEST"],
    ["a body that is not an object", "POST", "/v1/services/kv/promote", [1], undefined, undefined, 400, "BAD_REQUEST"],
    ["invalid JSON", "POST", "/v1/services/kv/members", undefined, undefined, "{nope", 400, "BAD_REQUEST"],
    ["a bad address", "POST", "/v1/services/kv/members", { name: "c", address: "nowhere" }, undefined, undefined, 400, "BAD_REQUEST"],
    ["a duplicate member", "POST", "/v1/services/kv/members", { name: "a", address: "127.0.0.1:7999" }, undefined, undefined, 409, "DUPLICATE"],
    ["rejoining a replica", "POST", "/v1/services/kv/members/a/rejoin", undefined, undefined, undefined, 409, "DUPLICATE"],
    ["a bad name in the path", "DELETE", "/v1/services/kv/members/bad%20name", undefined, undefined, undefined, 400, "BAD_REQUEST"],
    ["an oversized body", "POST", "/v1/services/kv/members", undefined, undefined, JSON.stringify({ name: "c", address: "127.0.0.1:1", pad: "x".repeat(20000) }), 413, "PAYLOAD_TOO_LARGE"],
    ["an unknown route", "GET", "/v1/nothing", undefined, null, undefined, 404, "NOT_FOUND"],
    ["declaring a service that exists", "POST", "/v1/services", { name: "kv", primary: { name: "x", address: "127.0.0.1:8001" }, replicas: [] }, undefined, undefined, 409, "DUPLICATE"],
    ["a service without a primary", "POST", "/v1/services", { name: "new", replicas: [] }, undefined, undefined, 400, "BAD_REQUEST"],
    ["a service whose members share an address", "POST", "/v1/services", { name: "new", primary: { name: "x", address: "127.0.0.1:8001" }, replicas: [{ name: "y", address: "127.0.0.1:8001" }] }, undefined, undefined, 400, "BAD_REQUEST"],
    ["a health check that expects without sending", "POST", "/v1/services", { name: "new", primary: { name: "x", address: "127.0.0.1:8001" }, replicas: [], healthCheck: { expect: "PONG" } }, undefined, undefined, 400, "BAD_REQUEST"],
    ["declaring a service without a token", "POST", "/v1/services", { name: "new", primary: { name: "x", address: "127.0.0.1:8001" }, replicas: [] }, null, undefined, 401, "UNAUTHORIZED"],
  ])("answers %s with a clear %i and changes nothing", async (_what, method, path, body, auth, raw, status, code) => {
    const before = JSON.stringify([state.list(), state.history()]);
    const res = await call(method as string, path as string, body, auth === undefined ? `Bearer ${TOKEN}` : (auth as string | null), raw as string | undefined);
    expect(res.status).toBe(status);
    const json = await res.json();
    expect(json.error.code).toBe(code);
    expect(json.error.message.length).toBeGreaterThan(10);
    expect(JSON.stringify([state.list(), state.history()])).toBe(before);
  });

  it("documents exactly the routes it serves, and every error code", () => {
    const router = createApiRouter(state, { token: TOKEN }) as any;
    const served = router.stack.filter((l: any) => l.route).flatMap((l: any) =>
      Object.keys(l.route.methods).map((m) => `${m.toUpperCase()} ${l.route.path.replace(/:(\w+)/g, "{$1}")}`)).sort();
    const documented = Object.entries(OPENAPI.paths).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)).sort();
    expect(served).toEqual(documented);
    expect(OPENAPI.components.schemas.Error.properties.error.properties.code.enum).toEqual(Object.keys(API_ERRORS));
  });
});
