// The demo's deterministic key-value server: a line protocol over TCP, identical answers
// for identical input, so a primary and its replicas fed the same bytes stay equal.
//
//   SET <key> <value>   -> OK          GET <key>  -> VALUE <value> | NIL
//   DEL <key>           -> 1 | 0       INCR <key> -> <new integer value>
//   DIGEST              -> SHA-256 of the whole store (sorted), to compare instances
//   PING                -> PONG (health checks)
//   WHO                 -> I-AM <name>: differs between instances (tests use it to see who
//                          served a connection; a service doing this needs compareReplies off)
//   anything else       -> ERR unknown command
//
// Usage: tsx samples/kv-server.ts --port 7001 [--host 127.0.0.1] [--name primary]
import { createHash } from "node:crypto";
import { createServer } from "node:net";
import { parseArgs } from "node:util";

export function createKvServer(name = "kv") {
  const store = new Map<string, string>();
  const execute = (line: string): string => {
    const [cmd, key, ...rest] = line.trim().split(" ");
    switch ((cmd ?? "").toUpperCase()) {
      case "SET": if (!key) return "ERR SET needs a key"; store.set(key, rest.join(" ")); return "OK";
      case "GET": return store.has(key) ? `VALUE ${store.get(key)}` : "NIL";
      case "DEL": return store.delete(key) ? "1" : "0";
      case "INCR": { const n = (Number.parseInt(store.get(key) ?? "0", 10) || 0) + 1; store.set(key, String(n)); return String(n); }
      case "DIGEST": {
        const h = createHash("sha256");
        for (const k of [...store.keys()].sort()) h.update(`${k}=${store.get(k)}\n`);
        return h.digest("hex");
      }
      case "PING": return "PONG";
      case "WHO": return `I-AM ${name}`;
      case "": return "";
      default: return "ERR unknown command";
    }
  };
  const sockets = new Set<import("node:net").Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    let pending = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      pending += chunk;
      let nl: number;
      let out = "";
      while ((nl = pending.indexOf("\n")) >= 0) {
        const answer = execute(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
        if (answer) out += answer + "\n";
      }
      if (out) socket.write(out);
    });
    socket.on("error", () => {});
  });
  /** Like kill -9 of a server process: every connection reset, the port closed. */
  const kill = () => { for (const s of sockets) s.resetAndDestroy(); server.close(); };
  return { server, store, execute, name, kill };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { port: { type: "string", default: "7001" }, host: { type: "string", default: "127.0.0.1" }, name: { type: "string", default: "kv" } } });
  const { server } = createKvServer(values.name);
  server.listen(Number(values.port), values.host, () => console.log(`kv-server ${values.name} listening on ${values.host}:${values.port}`));
  process.on("SIGTERM", () => process.exit(0));
}
