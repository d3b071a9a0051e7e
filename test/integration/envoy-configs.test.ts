// The shipped Envoy configs and the pinned Envoy binary: every file in envoy/ validates and
// matches its generator; the binary runs our wasm filter (V8 present); a bad plugin
// configuration is refused at startup; a filter that traps leaves the primary path working.
import { describe, it, expect } from "vitest";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findEnvoy, PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { ENVOY_EXAMPLES, renderExample } from "../../scripts/render-envoy.ts";
import { parseLockstepConfig } from "../../config/lockstep-config.ts";
import { downstreamConnectionLimit, renderBootstrap } from "../../config/envoy-bootstrap.ts";
import { connect, type Socket } from "node:net";
import { startRelay } from "../support/relay.ts";
import { startBackends } from "../support/backends.ts";
import { startEnvoy } from "../support/envoy.ts";
import { freePort, freePorts } from "../support/ports.ts";
import { runClient, randomPlan } from "../support/clients.ts";
import { expectExactWithPrimary } from "../support/exchanges.ts";
import { startProcess } from "../support/processes.ts";
import { waitFor } from "../support/ports.ts";

const envoyDir = join(PROJECT_ROOT, "envoy");

describe("Envoy configs and binary", () => {
  it("validates every config in envoy/ with `envoy --mode validate`", () => {
    const files = readdirSync(envoyDir).filter((f) => f.endsWith(".yaml"));
    expect(files.sort()).toEqual(ENVOY_EXAMPLES.map((e) => e.file.replace("envoy/", "")).sort());
    for (const file of files) {
      const out = spawnSync(findEnvoy(), ["--mode", "validate", "-c", join(envoyDir, file), "--log-level", "error"], { cwd: PROJECT_ROOT, encoding: "utf8" });
      expect(out.stdout + out.stderr, file).toContain(`configuration '${join(envoyDir, file)}' OK`);
    }
  });

  it("keeps envoy/ in step with config/ (scripts/render-envoy.ts)", () => {
    for (const ex of ENVOY_EXAMPLES) expect(readFileSync(join(PROJECT_ROOT, ex.file), "utf8"), ex.file).toBe(renderExample(ex));
  });

  it("runs the lockstep filter in the pinned binary's V8 runtime", async () => {
    const [primary] = await startBackends(["primary"]);
    const envoy = await startEnvoy({ primary: primary.address, relayPort: await freePort() });
    const result = await runClient(envoy.listenerPort, randomPlan(1024, 2, 1));
    expect(result.error).toBeUndefined();
    const stats = await envoy.stats();
    expect(stats.get("wasm.envoy.wasm.runtime.v8.active")).toBeGreaterThanOrEqual(1);
    expect(stats.get("wasmcustom.lockstep.itest.connections")).toBe(1);
    // No relay listens: the stream fails, and every client byte is counted as not mirrored.
    await waitFor("the loss to be counted", async () => (await envoy.stat("wasmcustom.lockstep.itest.bytes_unmirrored")) === result.sentBytes);
    expect(await envoy.stat("wasmcustom.lockstep.itest.streams_lost")).toBe(1);
    await envoy.kill();
    await primary.kill();
  });

  it.each([
    ["an unknown field", { relay_cluster: "lockstep_relay", service: "x", colour: "blue" }, 'unknown field \\"colour\\"'],
    ["a bad service name", { relay_cluster: "lockstep_relay", service: "no spaces" }, '\\"service\\" must be'],
    ["a missing relay cluster", { service: "x" }, '\\"relay_cluster\\" must be'],
    ["a zero bound", { relay_cluster: "lockstep_relay", service: "x", max_inflight_bytes_per_connection: 0 }, "max_inflight_bytes_per_connection"],
  ])("refuses to start with %s in the plugin configuration", async (_what, pluginConfig, message) => {
    const [listener, admin, relay] = await freePorts(3);
    const config = parseLockstepConfig({ service: "x", listener: { port: listener }, primary: "127.0.0.1:1", replicas: [],
      relay: { port: relay }, envoy: { adminPort: admin, wasmPath: join(PROJECT_ROOT, "build", "lockstep.wasm") } });
    const yaml = renderBootstrap(config).replace(/value: '\{.*\}'/, `value: '${JSON.stringify(pluginConfig)}'`);
    const file = join(mkdtempSync(join(tmpdir(), "lockstep-bad-")), "envoy.yaml");
    writeFileSync(file, yaml);
    const out = spawnSync(findEnvoy(), ["-c", file, "--base-id", String(7000 + relay % 1000), "--log-level", "error", "--component-log-level", "wasm:error"], { encoding: "utf8", timeout: 20_000 });
    expect(out.status).not.toBe(0);
    expect(out.stderr).toContain("lockstep: invalid plugin configuration");
    expect(out.stderr).toMatch(new RegExp(message.replace(/[.*+?^${}()|[\]]/g, "\\$&").replace(/\\\\\\"/g, '\\\\"')));
  });

  it("keeps the primary path working when the filter traps (failure_policy FAIL_OPEN)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lockstep-trap-"));
    const wasm = join(dir, "trap.wasm");
    execFileSync(process.execPath, [join(PROJECT_ROOT, "node_modules/assemblyscript/bin/asc.js"), "test/fixtures/wasm/trap-filter.ts",
      "-o", wasm, "--runtime", "stub", "--exportStart", "_initialize", "--use", "abort=test/fixtures/wasm/trap-filter/trapAbort"], { cwd: PROJECT_ROOT });
    const [primary] = await startBackends(["primary"]);
    const [listener, admin, relay] = await freePorts(3);
    const config = parseLockstepConfig({ service: "trap", listener: { port: listener }, primary: primary.address, replicas: [],
      relay: { port: relay }, envoy: { adminPort: admin, wasmPath: wasm } });
    const file = join(dir, "envoy.yaml");
    writeFileSync(file, renderBootstrap(config));
    const envoy = startProcess("envoy(trap)", findEnvoy(), ["-c", file, "--concurrency", "1", "--base-id", String(8000 + relay % 1000), "--log-level", "warn"]);
    await waitFor("Envoy to become ready", async () => (await fetch(`http://127.0.0.1:${admin}/ready`)).status === 200, 20_000, 50);
    // The connection whose callback trapped is closed by Envoy (it cannot be saved); the
    // listener stays up and every later connection passes through to the primary intact.
    const first = await runClient(listener, randomPlan(4096, 1, 1));
    expect(first.error).toBeUndefined();
    const later = [];
    for (let i = 0; i < 3; i++) later.push(await runClient(listener, randomPlan(4096, 3, 1)));
    expectExactWithPrimary(primary, later);
    expect(envoy.output()).toContain("Function: proxy_on_downstream_data failed");
    await envoy.kill();
    await primary.kill();
  });

  it("refuses client connections past its share of the open-file limit instead of aborting", async () => {
    // Envoy with 256 descriptors: 96 client connections (two descriptors each) are let in, the
    // rest refused and counted. Without the overload manager's limit Envoy ran out of
    // descriptors at ~110 connections and aborted ("envoy bug failure ... Too many open files").
    const [primary, replica] = await startBackends(["primary", "replica"]);
    const replicas = [{ name: replica.name, address: replica.address }];
    const relay = await startRelay({ replicas });
    const envoy = await startEnvoy({ primary: primary.address, replicas, relayPort: relay.port, openFileLimit: 256 });
    const limit = downstreamConnectionLimit(256);
    expect(limit).toBe(96);
    const sockets: Socket[] = [];
    const answered = await Promise.all(Array.from({ length: 200 }, () => new Promise<boolean>((resolve) => {
      const s = connect(envoy.listenerPort, "127.0.0.1", () => s.write("hello"));
      sockets.push(s);
      s.once("data", () => resolve(true));
      s.once("close", () => resolve(false));
      s.once("error", () => resolve(false));
      setTimeout(() => resolve(false), 10_000);
    })));
    expect(envoy.process.exited()).toBe(false);
    expect(answered.filter(Boolean).length).toBe(limit);
    expect(await envoy.stat(`listener.127.0.0.1_${envoy.listenerPort}.downstream_global_cx_overflow`)).toBe(200 - limit);
    for (const s of sockets) s.destroy();
    // Once the clients leave, new ones are served again.
    await waitFor("the connections to close", async () => (await envoy.stat(`listener.127.0.0.1_${envoy.listenerPort}.downstream_cx_active`)) === 0, 10_000);
    const after = await runClient(envoy.listenerPort, randomPlan(1024, 2, 1));
    expect(after.error).toBeUndefined();
    expect(envoy.process.exited()).toBe(false);
    await envoy.kill();
    await relay.kill();
    await primary.kill();
    await replica.kill();
  });
});
