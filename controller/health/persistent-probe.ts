// Health probes over one long-lived connection per member, as Envoy's own health checks do
// (reuse_connection): a member whose probe connection closes has crashed or restarted, even if
// it answers again a few milliseconds later, and is failed at once (`fatal`), whatever the
// unhealthy threshold says. Each probe sends the payload on that connection and waits for the
// expected answer. A probe that times out keeps its connection and the next probes wait for
// that late answer (a member that stalled and answers late is provably the same process, the
// continuity a failed primary's re-admission needs: `connection`); only after `maxWaitMs`
// without an answer is the connection replaced. Without a payload, the open connection is the
// health signal (it cannot see a hung member).
import { connect, type Socket } from "node:net";
import { splitHostPort } from "../../config/address.ts";
import type { Probe, ProbeResult, ProbeSpec } from "./probe.ts";

interface Connection {
  socket: Socket;
  /** Which connection this is (new ones count up): a changed id means a new process may answer. */
  id: number;
  /** When a probe whose answer has not come yet was sent. */
  unanswered?: number;
  /** Why the member closed it, if it did (the next probe reports it, fatally). */
  lost?: string;
  answer: string;
  onAnswer?: () => void;
}

/** How long a probe connection waits for a late answer before it is replaced. */
export const LATE_ANSWER_WAIT_MS = 30_000;

export class PersistentProbe {
  private readonly connections = new Map<string, Connection>();
  private closed = false;
  private opened = 0;

  /** `onLost` is told at once when a member closes its probe connection (probe it now). */
  constructor(private readonly onLost: (address: string) => void = () => {}, private readonly maxWaitMs = LATE_ANSWER_WAIT_MS) {}

  /** The id of the member's open probe connection, or undefined (none, or the member closed it).
   *  The same id at two moments: the same process answered in between, without a restart. */
  connection(address: string): number | undefined {
    const c = this.connections.get(address);
    return c && !c.lost ? c.id : undefined;
  }

  readonly probe: Probe = async (address, spec) => {
    if (this.closed) return { ok: false, error: "the controller is stopping" };
    const known = this.connections.get(address);
    if (known?.lost) {
      this.connections.delete(address);
      return { ok: false, fatal: true, error: `its probe connection closed (${known.lost}): it crashed or restarted, so it lost what it held` };
    }
    if (!known) return this.open(address, spec);
    if (!spec.send) return { ok: true };
    if (known.unanswered !== undefined) return this.lateAnswer(address, known, spec);
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
    const c: Connection = { socket, id: ++this.opened, answer: "" };
    return new Promise((resolve) => {
      let settled = false;
      const done = (result: ProbeResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (!result.ok && c.unanswered === undefined) this.drop(address, c);
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
        clearTimeout(timer); // the exchange has a timeout of its own
        this.connections.set(address, c);
        if (!spec.send) return done({ ok: true, rttMs: Number(process.hrtime.bigint() - started) / 1e6 });
        void this.exchange(address, c, spec, process.hrtime.bigint()).then(done);
      });
    });
  }

  /** Send the payload on the member's connection and wait for the expected answer. Past the
   *  timeout the connection is kept, still waiting for it (`lateAnswer`). */
  private exchange(address: string, c: Connection, spec: ProbeSpec, started: bigint): Promise<ProbeResult> {
    return new Promise((resolve) => {
      const finish = (result: ProbeResult) => {
        clearTimeout(timer);
        resolve(result);
      };
      const timer = setTimeout(() => {
        // Silent: a stall (wait for its answer on this connection). Answered, but not with the
        // expected text (an error, "-LOADING"): nothing more will come for this probe, so the
        // next one starts on a new connection.
        if (c.answer === "") c.unanswered = Date.now() - spec.timeoutMs;
        else { c.onAnswer = undefined; this.drop(address, c); }
        finish({ ok: false, error: c.answer === "" ? `no answer within ${spec.timeoutMs} ms` : `answered ${JSON.stringify(c.answer.slice(0, 60))}, not the expected answer` });
      }, spec.timeoutMs);
      c.answer = "";
      c.onAnswer = () => {
        if (!c.answer.includes(spec.expect ?? "")) return;
        c.onAnswer = undefined;
        if (c.unanswered !== undefined) c.unanswered = undefined; // answered late: the next probe sends again
        else finish({ ok: true, rttMs: Number(process.hrtime.bigint() - started) / 1e6 });
      };
      c.socket.write(spec.send!, (err) => { if (err) { c.onAnswer = undefined; this.drop(address, c); finish({ ok: false, error: err.message }); } });
      if (!spec.expect) c.onAnswer();
    });
  }

  /** A probe on a connection whose last payload is still unanswered: wait up to the timeout for
   *  that answer (it counts as a success: the member answers again), replacing the connection
   *  after `maxWaitMs` of silence. */
  private lateAnswer(address: string, c: Connection, spec: ProbeSpec): Promise<ProbeResult> {
    const waited = Date.now() - c.unanswered!;
    if (waited >= this.maxWaitMs) {
      this.drop(address, c);
      return Promise.resolve({ ok: false, error: `no answer for ${waited} ms: a new probe connection next time` });
    }
    return new Promise((resolve) => {
      const answered = c.onAnswer!;
      const timer = setTimeout(() => {
        c.onAnswer = answered;
        const error = `no answer for ${Date.now() - c.unanswered!} ms`;
        // Something came, but not the expected answer: that was the answer; start afresh.
        if (c.answer !== "") { c.onAnswer = undefined; this.drop(address, c); resolve({ ok: false, error: `${error}, then ${JSON.stringify(c.answer.slice(0, 60))}: a new probe connection next time` }); return; }
        resolve({ ok: false, error: `${error} (still waiting on the same connection)` });
      }, spec.timeoutMs);
      c.onAnswer = () => {
        answered();
        if (c.unanswered !== undefined) return;
        clearTimeout(timer);
        resolve({ ok: true });
      };
    });
  }

  /** Give up a connection (the next probe opens a new one, with a new id). */
  private drop(address: string, c: Connection): void {
    if (this.connections.get(address) === c) this.connections.delete(address);
    c.socket.destroy();
  }
}
