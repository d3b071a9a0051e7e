// Starts the real Envoy binary for a test: a bootstrap rendered from a lockstep config (or one
// that takes every service from the controller: startDynamicEnvoy), a unique --base-id, one
// worker, wasm logs at debug, readiness polled on the admin port.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findEnvoy, PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { parseLockstepConfig, type LockstepConfig } from "../../config/lockstep-config.ts";
import { renderBootstrap, renderDynamicBootstrap } from "../../config/envoy-bootstrap.ts";
import { startProcess, type Managed } from "./processes.ts";
import { freePorts, waitFor } from "./ports.ts";

export interface EnvoyHandle extends RunningEnvoy {
  readonly config: LockstepConfig;
  readonly listenerPort: number;
}

/** An Envoy process and its admin port. */
export interface RunningEnvoy {
  readonly adminPort: number;
  readonly process: Managed;
  /** /stats as name → number (counters and gauges). */
  stats(): Promise<Map<string, number>>;
  stat(name: string): Promise<number>;
  prometheus(): Promise<string>;
  kill(): Promise<void>;
}

let baseId = 1000 + (process.pid % 5000) * 10;

export interface StartEnvoyOptions {
  primary: string;
  replicas?: { name: string; address: string }[];
  relayPort: number;
  /** Relay processes (lockstep config relay.processes): on relayPort, relayPort + 2, ... */
  relayProcesses?: number;
  /** The filter's mirror_streams (default: relayProcesses); 0 for a gRPC stream per connection. */
  mirrorStreams?: number;
  service?: string;
  limits?: Record<string, number>;
  /** false: the same listener without the lockstep filter (plain tcp_proxy). */
  mirror?: boolean;
  /** Envoy worker threads (each has its own wasm VM and root context); default 1. */
  concurrency?: number;
  /** "host:port" of an xDS controller serving the primary cluster's endpoints (or of each of
   *  several sharing one etcd store). */
  controller?: string | readonly string[];
  /** The consistency check (lockstep config `compareReplies`). Off unless asked for here:
   *  RecordingBackend's answers name the backend, so replicas legitimately answer differently. */
  compareReplies?: boolean;
  /** More lockstep config fields (healthCheck, ...). */
  extra?: Record<string, unknown>;
  /** The admin port (a free one if not given): a controller told of it beforehand reads it. */
  adminPort?: number;
  /** Run Envoy with this open-file limit (prlimit), its bootstrap rendered for it. */
  openFileLimit?: number;
}

export async function startEnvoy(options: StartEnvoyOptions): Promise<EnvoyHandle> {
  const [listenerPort, freeAdminPort] = await freePorts(2);
  const adminPort = options.adminPort ?? freeAdminPort;
  const config = parseLockstepConfig({
    service: options.service ?? "itest",
    listener: { port: listenerPort },
    primary: options.primary,
    replicas: options.replicas ?? [],
    relay: { port: options.relayPort, metricsPort: options.relayProcesses ? options.relayPort + 1 : 0, processes: options.relayProcesses ?? 1 },
    envoy: { adminPort, wasmPath: join(PROJECT_ROOT, "build", "lockstep.wasm") },
    limits: options.limits,
    compareReplies: options.compareReplies ?? false,
    ...options.extra,
  });
  const bootstrap = renderBootstrap(config, "", { mirror: options.mirror ?? true, controller: options.controller, openFileLimit: options.openFileLimit, mirrorStreams: options.mirrorStreams });
  return { config, listenerPort, ...await launch(bootstrap, adminPort, options) };
}

/** An Envoy whose bootstrap names only the controller (`controller`: its xDS "host:port") and
 *  the relay: its listeners and clusters come over LDS and CDS. */
export async function startDynamicEnvoy(options: { controller: string | readonly string[]; relayPort: number; adminPort?: number; concurrency?: number }): Promise<RunningEnvoy> {
  const adminPort = options.adminPort ?? (await freePorts(1))[0];
  const bootstrap = renderDynamicBootstrap({ controller: options.controller, relay: `127.0.0.1:${options.relayPort}`, adminPort, nodeId: `itest-${adminPort}` });
  return launch(bootstrap, adminPort, options);
}

async function launch(bootstrapText: string, adminPort: number, options: { concurrency?: number; openFileLimit?: number }): Promise<RunningEnvoy> {
  const dir = mkdtempSync(join(tmpdir(), "lockstep-envoy-"));
  const bootstrap = join(dir, "envoy.yaml");
  writeFileSync(bootstrap, bootstrapText);
  const limit = options.openFileLimit === undefined ? [] : ["prlimit", `--nofile=${options.openFileLimit}:${options.openFileLimit}`, "--"];
  const [command, ...prefix] = [...limit, findEnvoy()];
  const proc = startProcess("envoy", command, [...prefix,
    "-c", bootstrap, "--concurrency", String(options.concurrency ?? 1), "--base-id", String(baseId++),
    "--log-level", "warn", "--component-log-level", "wasm:debug",
  ]);
  const admin = `http://127.0.0.1:${adminPort}`;
  await waitFor("Envoy to become ready", async () => {
    if (proc.exited()) throw new Error(`Envoy exited:\n${proc.output().slice(-3000)}`);
    const res = await fetch(`${admin}/ready`);
    return res.status === 200;
  }, 20_000, 50);
  const stats = async () => {
    const text = await (await fetch(`${admin}/stats`)).text();
    const out = new Map<string, number>();
    for (const line of text.split("\n")) {
      const m = /^([^:]+): (\d+)$/.exec(line);
      if (m) out.set(m[1], Number(m[2]));
    }
    return out;
  };
  return {
    adminPort, process: proc, stats,
    async stat(name) { return (await stats()).get(name) ?? 0; },
    async prometheus() { return (await fetch(`${admin}/stats/prometheus`)).text(); },
    kill: () => proc.kill("SIGTERM"),
  };
}
