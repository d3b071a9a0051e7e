// A store that cannot be written (full disk, broken mount; here the store file replaced by a
// directory, which every rename onto it fails on, root or not): the controller keeps deciding
// (a failover still happens), says so in the API and its log, refuses operator changes with
// 503 STORE_UNAVAILABLE changing nothing, and saves its decisions once the store is back.
import { describe, it, expect, afterEach } from "vitest";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startController, type RunningController } from "../../controller/server.ts";
import type { ProbeResult } from "../../controller/health/probe.ts";
import { waitFor } from "../support/ports.ts";
import { kvService } from "../support/kv-service.ts";

const TOKEN = "store-failure-token";

describe("a store that cannot be written", () => {
  let controller: RunningController | undefined;
  afterEach(async () => { await controller?.close(); });

  it("does not stop the controller: it fails over, reports the store, refuses API changes, and saves once it can", async () => {
    const storePath = join(mkdtempSync(join(tmpdir(), "lockstep-store-failure-")), "controller.json");
    const results = new Map<string, ProbeResult>(["7001", "7002", "7003", "7004"].map((p) => [`127.0.0.1:${p}`, { ok: true, rttMs: 1 }]));
    const logs: string[] = [];
    controller = await startController({
      services: [kvService()],
      api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, token: TOKEN, storePath,
      relay: { url: "http://127.0.0.1:1" }, probe: async (address) => results.get(address)!, log: (l) => logs.push(l),
    });
    const base = `http://127.0.0.1:${controller.apiPort}`;
    const get = async (path: string) => (await fetch(base + path)).json();
    const call = (method: string, path: string, body?: unknown) => fetch(base + path, { method, headers: { authorization: `Bearer ${TOKEN}` }, body: body === undefined ? undefined : JSON.stringify(body) });
    await waitFor("every member up", async () => (await get("/v1/services/kv")).members.every((m: any) => m.alive === true));

    rmSync(storePath);
    mkdirSync(storePath);
    writeFileSync(join(storePath, "in-the-way"), "");
    results.set("127.0.0.1:7001", { ok: false, error: "refused" });
    await waitFor("the failover", async () => (await get("/v1/services/kv")).primary !== "p");
    const after = await get("/v1/services/kv");
    expect(after.members.find((m: any) => m.name === "p").role).toBe("stale");
    const { store } = await get("/v1/services");
    expect(store.ok).toBe(false);
    expect(store.error).toMatch(/EISDIR/);

    const before = JSON.stringify(await get("/v1/services/kv"));
    for (const [method, path, body] of [["POST", "/v1/services/kv/members", { name: "c", address: "127.0.0.1:7004" }], ["POST", "/v1/services/kv/promote", undefined], ["DELETE", "/v1/services/kv/members/p", undefined]] as const) {
      const res = await call(method, path, body);
      expect(res.status).toBe(503);
      expect((await res.json()).error.code).toBe("STORE_UNAVAILABLE");
    }
    expect(JSON.stringify(await get("/v1/services/kv"))).toBe(before);
    expect(logs.filter((l) => l.startsWith("store: cannot save"))).toHaveLength(1);

    rmSync(storePath, { recursive: true });
    await waitFor("the store to be saved again", async () => (await get("/v1/services")).store.ok, 5_000);
    const saved = JSON.parse(readFileSync(storePath, "utf8"));
    expect(saved.services[0].members.map((m: any) => `${m.name}:${m.role}`)).toEqual(["p:stale", `a:${after.primary === "a" ? "primary" : "replica"}`, `b:${after.primary === "b" ? "primary" : "replica"}`]);
    expect(saved.events.map((e: any) => e.kind)).toEqual(["promotion"]);
    expect(logs.filter((l) => l.includes("saved again"))).toHaveLength(1);
    expect((await call("POST", "/v1/services/kv/members", { name: "c", address: "127.0.0.1:7004" })).status).toBe(201);
  });
});
