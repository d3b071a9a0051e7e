// One health probe of a member: open a TCP connection, optionally send a payload and wait for
// an expected answer, within a timeout. Reports success and the round-trip time (connect, or
// payload to answer): the RTT the controller uses to break ties between equally current replicas.
import { connect } from "node:net";
import { splitHostPort } from "../../config/address.ts";

export interface ProbeSpec {
  /** Bytes to send once connected (none: a connect check). */
  readonly send?: string;
  /** Text the answer must contain (checked only with `send`). */
  readonly expect?: string;
  readonly timeoutMs: number;
}

export interface ProbeResult {
  readonly ok: boolean;
  readonly rttMs?: number;
  readonly error?: string;
  /** The member certainly failed (its probe connection closed: a crash or restart): down at
   *  once, whatever the unhealthy threshold. */
  readonly fatal?: boolean;
}

export type Probe = (address: string, spec: ProbeSpec) => Promise<ProbeResult>;

export const tcpProbe: Probe = (address, spec) => new Promise((resolve) => {
  let target: { host: string; port: number };
  // Addresses are checked where they enter (config, API); a bad one must still never throw here.
  try { target = splitHostPort(address); } catch (err) { resolve({ ok: false, error: (err as Error).message }); return; }
  const socket = connect({ ...target, noDelay: true });
  let started = process.hrtime.bigint();
  let answer = "";
  let done = false;
  const finish = (result: ProbeResult) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    socket.destroy();
    resolve(result);
  };
  const elapsedMs = () => Number(process.hrtime.bigint() - started) / 1e6;
  const timer = setTimeout(() => finish({ ok: false, error: `no ${spec.send ? "answer" : "connection"} within ${spec.timeoutMs} ms` }), spec.timeoutMs);
  socket.on("connect", () => {
    if (!spec.send) return finish({ ok: true, rttMs: elapsedMs() });
    started = process.hrtime.bigint();
    socket.write(spec.send);
  });
  socket.on("data", (chunk: Buffer) => {
    answer += chunk.toString("latin1");
    if (answer.includes(spec.expect ?? "")) finish({ ok: true, rttMs: elapsedMs() });
    else if (answer.length > 4096) finish({ ok: false, error: "unexpected answer" });
  });
  socket.on("error", (err) => finish({ ok: false, error: err.message }));
  socket.on("close", () => finish({ ok: false, error: "closed before answering" }));
});
