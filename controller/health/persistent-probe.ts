// Health probes over one long-lived connection per member, as Envoy's own health checks do
// (reuse_connection): a member whose probe connection closes has crashed or restarted, even if
// it answers again a few milliseconds later, and is failed at once (`fatal`), whatever the
// unhealthy threshold says. Each probe sends the payload on that connection and waits for the
// expected answer; a probe that times out closes the connection (the next one reconnects).
// Without a payload, the open connection is the health signal (it cannot see a hung member).
import { connect, type Socket } from "node:net";
import { splitHostPort } from "../../config/address.ts";
import type { Probe, ProbeResult, ProbeSpec } from "./probe.ts";

interface Connection {
  socket: Socket;
  /** Why the member closed it, if it did (the next probe reports it, fatally). */
  lost?: string;
  answer: string;
  onAnswer?: () => void;
}

export class PersistentProbe {
  private readonly connections = new Map<string, Connection>();
  private closed = false;

  /** `onLost` is told at once when a member closes its probe connection (probe it now). */
  constructor(private readonly onLost: (address: string) => void = () => {}) {}

  readonly probe: Probe = async (address, spec) => {
    if (this.closed) return { ok: false, error: "the controller is stopping" };
    const known = this.connections.get(address);
    if (known?.lost) {
      this.connections.delete(address);
      return { ok: false, fatal: true, error: `its probe connection closed (${known.lost}): it crashed or restarted, so it lost what it held` };
    }
    if (!known) return this.open(address, spec);
    if (!spec.send) return { ok: true };
    return this.exchange(address, known, spec, process.hrtime.bigint());
  };

  /** Close every probe connection (the controller stops). */
  close(): void {
    this.closed = true;
    for (const c of this.connections.values()) c.socket.destroy();
    this.connections.clear();
  }

  private open(address: string, spec: ProbeSpec): Promise<ProbeResult> {
    let target: { host: string; port: number };
    try { target = splitHostPort(address); } catch (err) { return Promise.resolve({ ok: false, error: (err as Error).message }); }
    const started = process.hrtime.bigint();
    const socket = connect({ ...target, noDelay: true });
    const c: Connection = { socket, answer: "" };
    return new Promise((resolve) => {
      let settled = false;
      const done = (result: ProbeResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!result.ok) { socket.destroy(); this.connections.delete(address); }
        resolve(result);
      };
      const timer = setTimeout(() => done({ ok: false, error: `no connection within ${spec.timeoutMs} ms` }), spec.timeoutMs);
      socket.on("data", (chunk: Buffer) => {
        c.answer = (c.answer + chunk.toString("latin1")).slice(-4096);
        c.onAnswer?.();
      });
      socket.on("error", (err) => { if (!settled) done({ ok: false, error: err.message }); else c.lost ??= err.message; });
      socket.on("close", () => {
        if (!settled) return done({ ok: false, error: "closed before answering" });
        if (this.connections.get(address) !== c || this.closed) return;
        c.lost ??= "closed by the member";
        this.onLost(address);
      });
      socket.on("connect", () => {
        this.connections.set(address, c);
        if (!spec.send) return done({ ok: true, rttMs: Number(process.hrtime.bigint() - started) / 1e6 });
        void this.exchange(address, c, spec, process.hrtime.bigint()).then(done);
      });
    });
  }

  /** Send the payload on the member's connection and wait for the expected answer. */
  private exchange(address: string, c: Connection, spec: ProbeSpec, started: bigint): Promise<ProbeResult> {
    return new Promise((resolve) => {
      const finish = (result: ProbeResult) => {
        clearTimeout(timer);
        c.onAnswer = undefined;
        if (!result.ok && !c.lost) { this.connections.delete(address); c.socket.destroy(); } // a fresh connection next time
        resolve(result);
      };
      const timer = setTimeout(() => finish({ ok: false, error: `no answer within ${spec.timeoutMs} ms` }), spec.timeoutMs);
      c.answer = "";
      c.onAnswer = () => {
        if (c.answer.includes(spec.expect ?? "")) finish({ ok: true, rttMs: Number(process.hrtime.bigint() - started) / 1e6 });
      };
      c.socket.write(spec.send!, (err) => { if (err) finish({ ok: false, error: err.message }); });
      if (!spec.expect) c.onAnswer();
    });
  }
}
