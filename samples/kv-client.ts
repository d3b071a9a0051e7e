// A client of the sample key-value server (samples/kv-server.ts): one connection, send lines,
// collect as many answer lines. Used by the demo runner and the tests.
import { connect } from "node:net";

/** Send `lines` on a new connection to 127.0.0.1:`port` and resolve with as many answers
 *  (rejects on error, on a close before all answers, or after `timeoutMs`). */
export function kvExchange(port: number, lines: string[], timeoutMs = 2000): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let buffer = "";
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () => { socket.destroy(); reject(new Error("timed out")); });
    socket.on("connect", () => socket.write(lines.map((l) => l + "\n").join("")));
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      const answers = buffer.split("\n").filter(Boolean);
      if (answers.length >= lines.length) { socket.end(); resolve(answers); }
    });
    socket.on("error", reject);
    socket.on("close", () => reject(new Error(`closed after ${buffer.split("\n").filter(Boolean).length} answers`)));
  });
}
