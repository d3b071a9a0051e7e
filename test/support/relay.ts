// Runs the mirror relay as its own process (so tests can kill -9 it and restart it on the
// same port) and reads its Prometheus metrics.
import { mkdtempSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { startProcess, type Managed } from "./processes.ts";
import { freePorts, waitFor } from "./ports.ts";

export interface RelayOptions {
  /** The replica set of `service` known at start; none: the relay waits for a controller to set it. */
  replicas?: { name: string; address: string }[];
  /** The service those replicas belong to (Envoy's side: startEnvoy's `service`, "itest" by default). */
  service?: string;
  port?: number;
  metricsPort?: number;
  limits?: { maxLagBytesPerConnection?: number; maxQueuedBytesTotal?: number; connectTimeoutMs?: number; stallTimeoutMs?: number; replyWaitMs?: number; setWaitMs?: number; finishTimeoutMs?: number };
  /** The relay's controlToken (default: a new random one; null: none, control calls refused). */
  controlToken?: string | null;
}

export interface RelayHandle {
  readonly port: number;
  readonly metricsPort: number;
  /** What a controller must send to set its replica sets. */
  readonly controlToken: string | undefined;
  readonly process: Managed;
  /** Value of a metric; `labels` must all match (e.g. { replica: "r1" }). Sums matching series. */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  metricsText(): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export function parsePrometheus(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const pair of (m[2] ?? "").slice(1, -1).matchAll(/(\w+)="([^"]*)"/g)) got[pair[1]] = pair[2];
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) total += Number(m[3]);
  }
  return total;
}

export async function startRelay(options: RelayOptions): Promise<RelayHandle> {
  const [port, metricsPort] = options.port && options.metricsPort ? [options.port, options.metricsPort] : await freePorts(2);
  const dir = mkdtempSync(join(tmpdir(), "lockstep-relay-"));
  const configPath = join(dir, "relay.json");
  const controlToken = options.controlToken === null ? undefined : options.controlToken ?? randomBytes(24).toString("base64url");
  writeFileSync(configPath, JSON.stringify({
    controlToken,
    listen: { host: "127.0.0.1", port },
    metrics: { host: "127.0.0.1", port: metricsPort },
    services: options.replicas ? { [options.service ?? "itest"]: options.replicas } : {},
    limits: options.limits ?? {},
  }));
  const proc = startProcess("relay", process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "relay", "main.ts"), "--config", configPath], { cwd: PROJECT_ROOT });
  const base = `http://127.0.0.1:${metricsPort}`;
  await waitFor("the relay to become ready", async () => {
    if (proc.exited()) throw new Error(`relay exited:\n${proc.output().slice(-3000)}`);
    return (await fetch(`${base}/healthz`)).ok;
  }, 20_000, 50);
  const metricsText = async () => (await fetch(`${base}/metrics`)).text();
  return {
    port, metricsPort, controlToken, process: proc, metricsText,
    async metric(name, labels) { return parsePrometheus(await metricsText(), name, labels); },
    kill: (signal = "SIGTERM") => proc.kill(signal),
  };
}
