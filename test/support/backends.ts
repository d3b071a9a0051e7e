// Real TCP servers standing in for the primary and the replicas: each records, per accepted
// connection, the bytes it received and sent (SHA-256 and count), answers with bytes of its
// own, and can be killed, or told to stop reading, mid-test.
import { createHash, type Hash } from "node:crypto";
import { connect, createServer, type Server, type Socket } from "node:net";

export interface ConnectionRecord {
  /** First bytes received: tests put a connection id there. */
  head: Buffer;
  received: number;
  /** Reads that returned bytes (the chunks the server saw). */
  reads: number;
  sent: number;
  receivedHash: Hash;
  sentHash: Hash;
  ended: boolean;
  closed: boolean;
}

export interface BackendOptions {
  /** Answer to each chunk received (default: a tag naming this backend and the chunk size). */
  reply?: (chunk: Buffer, conn: ConnectionRecord) => Buffer | null;
  /** Never read from accepted sockets (a replica that stops reading). */
  stopReading?: boolean;
  /** Read each connection at this steady pace (a healthy replica slower than the client). */
  readBytesPerSecond?: number;
  /** Refuse connections past this many at once (Node closes them unread), like a server's limit. */
  maxConnections?: number;
  /** Stop reading a connection once this says so (asked after each chunk); see resumeReading. */
  stopReadingIf?: (conn: ConnectionRecord) => boolean;
  /** Bytes of head to keep for identification. */
  headBytes?: number;
  /** What to answer when the client half-closes (default: a tag naming this backend; null: nothing). */
  farewell?: Buffer | null;
}

export class RecordingBackend {
  readonly connections: ConnectionRecord[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly stopped = new Set<Socket>();
  private resumed = false;
  private server!: Server;
  port = 0;
  constructor(readonly name: string, private readonly options: BackendOptions = {}) {}

  get address(): string { return `127.0.0.1:${this.port}`; }

  async start(port = 0): Promise<this> {
    const headBytes = this.options.headBytes ?? 16;
    this.server = createServer({ allowHalfOpen: true }, (socket) => {
      const conn: ConnectionRecord = {
        head: Buffer.alloc(0), received: 0, reads: 0, sent: 0,
        receivedHash: createHash("sha256"), sentHash: createHash("sha256"), ended: false, closed: false,
      };
      this.connections.push(conn);
      this.sockets.add(socket);
      const send = (bytes: Buffer) => {
        if (socket.destroyed || socket.writableEnded) return;
        conn.sent += bytes.length; conn.sentHash.update(bytes); socket.write(bytes);
      };
      if (this.options.stopReading) socket.pause();
      if (this.options.readBytesPerSecond) pace(socket, this.options.readBytesPerSecond);
      socket.on("data", (chunk: Buffer) => {
        if (conn.head.length < headBytes) conn.head = Buffer.concat([conn.head, chunk.subarray(0, headBytes - conn.head.length)]);
        conn.received += chunk.length;
        conn.reads++;
        conn.receivedHash.update(chunk);
        const answer = this.options.reply ? this.options.reply(chunk, conn) : Buffer.from(`${this.name}:${chunk.length}\n`);
        if (answer) send(answer);
        if (!this.resumed && this.options.stopReadingIf?.(conn)) { socket.pause(); this.stopped.add(socket); }
      });
      socket.on("end", () => {
        conn.ended = true;
        const farewell = this.options.farewell === undefined ? Buffer.from(`${this.name}:bye\n`) : this.options.farewell;
        if (farewell) send(farewell);
        socket.end();
      });
      socket.on("error", () => {});
      socket.on("close", () => { conn.closed = true; this.sockets.delete(socket); });
    });
    if (this.options.maxConnections) this.server.maxConnections = this.options.maxConnections;
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, "127.0.0.1", () => resolve());
    });
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  /** Like kill -9 of the server process: every connection reset, the port closed. */
  async kill(): Promise<void> {
    for (const s of this.sockets) s.resetAndDestroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Read again every connection stopped by stopReadingIf, and stop none from now on. */
  resumeReading(): void {
    this.resumed = true;
    for (const s of this.stopped) s.resume();
    this.stopped.clear();
  }

  /** Connection records by their head (the id the client put first). */
  byHead(): Map<string, ConnectionRecord> {
    return new Map(this.connections.map((c) => [c.head.toString("hex"), c]));
  }
}

/** Read `socket` at a steady pace: every 10 ms it may take its share of bytes, then pauses. */
function pace(socket: Socket, bytesPerSecond: number): void {
  const share = Math.max(1, Math.round(bytesPerSecond / 100));
  let budget = share;
  socket.on("data", (chunk: Buffer) => { budget -= chunk.length; if (budget <= 0) socket.pause(); });
  const timer = setInterval(() => { budget = Math.min(budget, 0) + share; if (budget > 0) socket.resume(); }, 10);
  socket.on("close", () => clearInterval(timer));
}

/** Start several backends; close them all with `killAll`. */
export async function startBackends(names: string[], options: BackendOptions = {}): Promise<RecordingBackend[]> {
  return Promise.all(names.map((n) => new RecordingBackend(n, options).start()));
}

/** A server that answers every connection with `tag` and closes it: who served a connection. */
export async function taggedServer(tag: string): Promise<{ address: string; close: () => void }> {
  const server = createServer((s) => { s.on("error", () => {}); s.end(tag); });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, close: () => server.close() };
}

/** Connect to `port` and read until closed: a taggedServer's tag, "(closed)" or "(error)". */
export function whoServes(port: number): Promise<string> {
  return new Promise((resolve) => {
    let got = "";
    const s = connect(port, "127.0.0.1");
    s.on("data", (d) => (got += d));
    s.on("close", () => resolve(got || "(closed)"));
    s.on("error", () => resolve("(error)"));
  });
}
