// The workload on the sample key-value server (samples/kv-server.ts): APPEND with a counter,
// SET for uploads, DIGEST, EXPORT for the checker and EXPORT/IMPORT for reseeding.
import { connect } from "node:net";
import { takeLines, toState, type Reply, type State, type Target } from "./target.ts";

/** One command line on a new connection to 127.0.0.1:`port`; resolves with the answer line
 *  (an EXPORT answer is megabytes: bytes are gathered, not re-split on every chunk). */
function kvCall(port: number, line: string, timeoutMs = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`kv ${line.slice(0, 20)} on port ${port}: no answer within ${timeoutMs} ms`)); }, timeoutMs);
    socket.on("connect", () => socket.write(line + "\n"));
    socket.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      if (chunk.indexOf(10) < 0) return;
      clearTimeout(timer);
      socket.destroy();
      const { lines } = takeLines(Buffer.concat(chunks));
      resolve(lines[0]);
    });
    socket.on("error", (err) => { clearTimeout(timer); reject(err); });
    socket.on("close", () => { clearTimeout(timer); reject(new Error(`kv ${line.slice(0, 20)} on port ${port}: closed before answering`)); });
  });
}

export const kvTarget: Target = {
  name: "kv",
  append: (key, token, counter) => Buffer.from(`APPEND ${key} ${token} ${counter}\n`),
  upload: (key, value) => Buffer.from(`SET ${key} ${value}\n`),
  takeReplies(buffer) {
    const { lines, rest } = takeLines(buffer);
    const replies: Reply[] = lines.map((l) => (/^\d+$/.test(l) ? { length: Number(l) } : { error: l }));
    return { replies, rest };
  },
  digest: (port) => kvCall(port, "DIGEST"),
  identity: (port) => kvCall(port, "WHO"),
  async state(port): Promise<State> {
    return toState(Object.entries(JSON.parse(await kvCall(port, "EXPORT")) as Record<string, string>));
  },
  async copy(fromPort, toPort) {
    const answer = await kvCall(toPort, `IMPORT ${await kvCall(fromPort, "EXPORT")}`);
    if (answer !== "OK") throw new Error(`IMPORT on port ${toPort} answered ${answer}`);
    const [from, to] = await Promise.all([kvCall(fromPort, "DIGEST"), kvCall(toPort, "DIGEST")]);
    if (from !== to) throw new Error(`after IMPORT, port ${toPort} has digest ${to}, its source ${from}`);
  },
};
