// The relay's control call (PUT /v1/services/<service>/replicas) is closed unless the relay has
// a controlToken, and then open only to a caller that sends it: a refused call changes nothing.
// A controller given the token keeps the relay's set equal to its decision; one without it
// cannot change the set and says why.
import { describe, it, expect, afterEach } from "vitest";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startRelay, type RelayServer } from "../../relay/server.ts";
import { parseRelayConfig, RelayConfigError } from "../../relay/config.ts";
import { startController, type RunningController } from "../../controller/server.ts";
import { HEALTH_DEFAULTS } from "../../controller/health/checker.ts";
import { waitFor } from "../support/ports.ts";

const TOKEN = "the-relay-control-token-0123";
const ORIGINAL = [{ name: "r1", address: "127.0.0.1:7101" }];
const ATTACKER = { replicas: [{ name: "evil", address: "127.0.0.1:6666" }] };

describe("the relay's control call", () => {
  let relay: RelayServer | undefined;
  let controller: RunningController | undefined;
  afterEach(async () => { await controller?.close(); await relay?.close(); controller = relay = undefined; });

  const start = async (controlToken?: string) => {
    relay = await startRelay(parseRelayConfig({ listen: { port: 0 }, metrics: { port: 0 }, services: { kv: ORIGINAL }, ...(controlToken ? { controlToken } : {}) }));
    return `http://127.0.0.1:${relay.metricsPort}/v1/services/kv/replicas`;
  };
  const put = (url: string, authorization?: string) =>
    fetch(url, { method: "PUT", body: JSON.stringify(ATTACKER), headers: authorization === undefined ? {} : { authorization } });
  const setOf = async (url: string) => (await (await fetch(url)).json()).replicas;

  it("is refused (403) by a relay without a controlToken, whatever the caller sends", async () => {
    const url = await start();
    for (const auth of [undefined, "Bearer ", `Bearer ${TOKEN}`]) {
      const res = await put(url, auth);
      expect(res.status).toBe(403);
      expect((await res.json()).error).toContain("no controlToken");
    }
    expect(await setOf(url)).toEqual(ORIGINAL);
  });

  it.each([
    ["no Authorization header", undefined],
    ["an empty token", "Bearer "],
    ["a wrong token of the same length", `Bearer ${TOKEN.replace(/.$/, "X")}`],
    ["a prefix of the token", `Bearer ${TOKEN.slice(0, 16)}`],
    ["the token with more after it", `Bearer ${TOKEN}x`],
    ["the token without the Bearer scheme", TOKEN],
  ])("is refused (401) with %s, and changes nothing", async (_what, auth) => {
    const url = await start(TOKEN);
    const res = await put(url, auth);
    expect(res.status).toBe(401);
    expect(await setOf(url)).toEqual(ORIGINAL);
  });

  it("changes the set with the right token", async () => {
    const url = await start(TOKEN);
    expect((await put(url, `Bearer ${TOKEN}`)).status).toBe(200);
    expect(await setOf(url)).toEqual(ATTACKER.replicas);
  });

  it("takes no controlToken shorter than 16 characters", () => {
    expect(() => parseRelayConfig({ controlToken: "short-token" })).toThrow(RelayConfigError);
    expect(() => parseRelayConfig({ controlToken: "short-token" })).toThrow('"controlToken" must be a string of at least 16 characters');
  });

  const controllerFor = async (token: string | undefined, logs: string[]) => startController({
    services: [{ service: { name: "kv", members: [
      { name: "p", address: "127.0.0.1:7001", role: "primary", lagBytes: 0 },
      { name: "a", address: "127.0.0.1:7002", role: "replica", lagBytes: 0 },
    ] }, health: HEALTH_DEFAULTS }],
    api: { host: "127.0.0.1", port: 0 }, xds: { host: "127.0.0.1", port: 0 }, token: "api-token",
    storePath: join(mkdtempSync(join(tmpdir(), "lockstep-relay-auth-")), "controller.json"),
    relay: { url: `http://127.0.0.1:${relay!.metricsPort}`, token }, relayPollMs: 50,
    probe: async () => ({ ok: true, rttMs: 1 }), log: (l) => logs.push(l),
  });

  it("is made by a controller holding the token, which keeps the relay's set equal to its decision", async () => {
    const url = await start(TOKEN);
    controller = await controllerFor(TOKEN, []);
    const decided = [{ name: "p", address: "127.0.0.1:7001" }, { name: "a", address: "127.0.0.1:7002" }];
    await waitFor("the relay to take the controller's set", async () => JSON.stringify(await setOf(url)) === JSON.stringify(decided), 5_000);
    // Someone holding the token changes it behind the controller's back: the next poll sets it right.
    expect((await put(url, `Bearer ${TOKEN}`)).status).toBe(200);
    await waitFor("the controller to set it right again", async () => JSON.stringify(await setOf(url)) === JSON.stringify(decided), 5_000);
  });

  it("cannot be made by a controller with a wrong token, which says so", async () => {
    const url = await start(TOKEN);
    const logs: string[] = [];
    controller = await controllerFor("a-wrong-token-of-some-length", logs);
    await waitFor("the controller to report the refusal", () => logs.some((l) => /relay refused the replica set of "kv" \(401.*controlToken/.test(l)), 5_000);
    expect(await setOf(url)).toEqual(ORIGINAL);
  });
});
