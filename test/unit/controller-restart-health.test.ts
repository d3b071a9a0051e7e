// A member is promotable only once a probe of this controller process found it up: not on the
// word of the store after a restart, not when it was just added through the API. Probes here
// are fake and held open at will, like a replica that does not answer (SIGSTOP, a dead host).
import { describe, it, expect, afterEach } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startController, type RunningController } from "../../controller/server.ts";
import type { ProbeResult } from "../../controller/health/probe.ts";
import { waitFor } from "../support/ports.ts";
import { kvService } from "../support/kv-service.ts";

const TOKEN = "restart-health-token";
const UP: ProbeResult = { ok: true, rttMs: 1 };
const DOWN: ProbeResult = { ok: false, error: "refused" };

/** Probe answers by port; a port with no answer set does not answer (its probe stays pending) until set. */
class Backends {
  private readonly answers = new Map<string, ProbeResult>();
  private readonly pending = new Map<string, ((r: ProbeResult) => void)[]>();
  set(port: number, result: ProbeResult): void {
    this.answers.set(`127.0.0.1:${port}`, result);
    for (const resolve of this.pending.get(`127.0.0.1:${port}`) ?? []) resolve(result);
    this.pending.delete(`127.0.0.1:${port}`);
  }
  probe = (address: string): Promise<ProbeResult> => {
    const known = this.answers.get(address);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => this.pending.set(address, [...(this.pending.get(address) ?? []), resolve]));
  };
}

describe("promotion after a restart or an addition", () => {
  const storePath = () => join(mkdtempSync(join(tmpdir(), "lockstep-restart-health-")), "controller.json");
  let running: RunningController | undefined;
  afterEach(async () => { await running?.close(); running = undefined; });

  async function start(path: string, backends: Backends): Promise<{ get: (p: string) => Promise<any>; call: (m: string, p: string, b?: unknown) => Promise<{ status: number; json: any }> }> {
    running = await startController({
      services: [kvService()],
      api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, token: TOKEN, storePath: path,
      relay: { url: "http://127.0.0.1:1" }, probe: backends.probe,
    });
    const base = `http://127.0.0.1:${running.apiPort}`;
    return {
      get: async (p) => (await fetch(base + p)).json(),
      call: async (method, p, body) => {
        const res = await fetch(base + p, { method, headers: { authorization: `Bearer ${TOKEN}` }, body: body === undefined ? undefined : JSON.stringify(body) });
        return { status: res.status, json: await res.json() };
      },
    };
  }

  const alive = async (api: { get: (p: string) => Promise<any> }, name: string) => (await api.get("/v1/services/kv")).members.find((m: any) => m.name === name).alive;

  it("does not trust the store: a replica that does not answer after a restart cannot be promoted until it does", async () => {
    const path = storePath();
    const before = new Backends();
    for (const port of [7001, 7002, 7003]) before.set(port, UP);
    let api = await start(path, before);
    await waitFor("every member up", async () => (await api.get("/v1/services/kv")).members.every((m: any) => m.alive === true));
    await running!.close();

    const after = new Backends(); // a does not answer
    after.set(7001, UP);
    after.set(7003, UP);
    api = await start(path, after);
    await waitFor("b up", async () => (await alive(api, "b")) === true);
    expect(await alive(api, "a")).toBeNull();
    const refused = await api.call("POST", "/v1/services/kv/promote", { member: "a" });
    expect(refused.status).toBe(409);
    expect(refused.json.error).toMatchObject({ code: "NOT_PROMOTABLE" });
    expect(refused.json.error.message).toContain("not yet seen up");
    expect((await api.get("/v1/services/kv")).primary).toBe("p");

    after.set(7002, UP);
    await waitFor("a up", async () => (await alive(api, "a")) === true);
    expect((await api.call("POST", "/v1/services/kv/promote", { member: "a" })).status).toBe(200);
  });

  it("does not take an added member's word: it is promotable once a probe found it up", async () => {
    const backends = new Backends();
    for (const port of [7001, 7002, 7003]) backends.set(port, UP);
    const api = await start(storePath(), backends);
    await waitFor("every member up", async () => (await api.get("/v1/services/kv")).members.every((m: any) => m.alive === true));
    const added = await api.call("POST", "/v1/services/kv/members", { name: "c", address: "127.0.0.1:7004" });
    expect(added.status).toBe(201);
    expect(added.json.members.find((m: any) => m.name === "c").alive).toBeNull();
    expect((await api.call("POST", "/v1/services/kv/promote", { member: "c" })).status).toBe(409);
    backends.set(7004, UP);
    await waitFor("c up", async () => (await alive(api, "c")) === true);
    expect((await api.call("POST", "/v1/services/kv/promote", { member: "c" })).status).toBe(200);
  });

  it("fails a primary found down over to the first replica found up, even when the primary's verdict came first", async () => {
    const backends = new Backends(); // a and b do not answer yet
    backends.set(7001, DOWN);
    const api = await start(storePath(), backends);
    await waitFor("the primary down with nobody to take over", async () => (await api.get("/v1/events")).events.some((e: any) => e.kind === "no_candidate"));
    expect((await api.get("/v1/services/kv")).primary).toBe("p");
    backends.set(7003, UP);
    await waitFor("b promoted", async () => (await api.get("/v1/services/kv")).primary === "b");
    expect((await api.get("/v1/events")).events.map((e: any) => e.kind)).toEqual(["no_candidate", "promotion"]);
  });
});
