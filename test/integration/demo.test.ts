// README's main command, end to end: the runner behind `npm run demo` starts the sample
// key-value servers, the relay and Envoy, drives a session through the listener, and every
// replica ends with the primary's data. Run here on free ports with --once.
import { describe, it, expect } from "vitest";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { spawnTied } from "../../scripts/child-processes.ts";
import { freePorts } from "../support/ports.ts";

describe("npm run demo", () => {
  it("shows every replica holding the primary's state after a scripted session, then a failover that loses nothing", async () => {
    const demo = JSON.parse(readFileSync(join(PROJECT_ROOT, "config/demo.json"), "utf8"));
    const [listener, primary, a, b, relay, metrics, admin, api, xds] = await freePorts(9);
    const dir = mkdtempSync(join(tmpdir(), "lockstep-demo-"));
    const config = {
      ...demo,
      listener: { address: "127.0.0.1", port: listener },
      primary: `127.0.0.1:${primary}`,
      replicas: [{ name: "replica-a", address: `127.0.0.1:${a}` }, { name: "replica-b", address: `127.0.0.1:${b}` }],
      relay: { address: "127.0.0.1", port: relay, metricsPort: metrics },
      envoy: { ...demo.envoy, adminPort: admin },
      controller: { apiPort: api, xdsPort: xds, store: join(dir, "controller.json") },
    };
    const file = join(dir, "demo.json");
    writeFileSync(file, JSON.stringify(config));
    // A stale store: the sample servers start empty, so the runner must not resume from it.
    writeFileSync(config.controller.store, "left over from an earlier run");
    const run = spawnTied(process.execPath, ["--import", "tsx", "scripts/run.ts", "--config", file, "--samples", "--scripted", "--once"],
      { cwd: PROJECT_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    run.stdout!.on("data", (d) => { output += d; });
    run.stderr!.on("data", (d) => { output += d; });
    const status = await new Promise((resolve) => run.once("exit", resolve));
    expect(status, output).toBe(0);
    expect(output).toContain(`the controller starts from a fresh store: ${config.controller.store} (the previous run's state removed)`);
    expect(output).toContain("every replica holds the primary's state");
    const digests = [...output.matchAll(/DIGEST of .*: ([0-9a-f]{64})/g)].map((m) => m[1]);
    expect(digests).toHaveLength(3);
    expect(new Set(digests).size).toBe(1);
    expect(output).toMatch(/lockstep\.demo\.replica\.replica-b\.bytes_acked: [1-9]/);
    expect(output).toMatch(/the controller promoted "replica-[ab]"; members now: primary=stale/);
    expect(output).toContain("the promoted replica holds every value written before the failover");
    // A workload deterministic per connection: every replica's replies match the primary's.
    expect(output).not.toMatch(/relay: divergence/);
    expect(output).toMatch(/replica\.replica-a\.divergences: 0/);
  });
});
