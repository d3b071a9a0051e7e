// A real etcd (Debian's etcd-server) for a test: one member on free loopback ports, its data in
// a temporary directory, so it can be stopped (SIGSTOP, kill) and started again with its data.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startProcess, type Managed } from "./processes.ts";
import { freePorts, waitFor } from "./ports.ts";

export interface EtcdHandle {
  /** Client URL, "http://127.0.0.1:<port>". */
  readonly url: string;
  process: Managed;
  /** Kill it (its data stays). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Start it again on the same ports and data. */
  start(): Promise<void>;
}

export async function startEtcd(): Promise<EtcdHandle> {
  const [clientPort, peerPort] = await freePorts(2);
  const dir = mkdtempSync(join(tmpdir(), "lockstep-etcd-"));
  const url = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const launch = async () => {
    const proc = startProcess("etcd", "etcd", [
      "--name", "t", "--data-dir", join(dir, "data"),
      "--listen-client-urls", url, "--advertise-client-urls", url,
      "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", `t=${peer}`,
      "--log-level", "warn",
    ]);
    await waitFor("etcd to answer", async () => {
      if (proc.exited()) throw new Error(`etcd exited:\n${proc.output().slice(-3000)}`);
      return (await fetch(`${url}/health`)).ok;
    }, 20_000, 50);
    return proc;
  };
  const handle: EtcdHandle = {
    url,
    process: await launch(),
    async stop(signal = "SIGKILL") { await handle.process.kill(signal); },
    async start() { handle.process = await launch(); },
  };
  return handle;
}
