// The demo's deterministic key-value server: a line protocol over TCP, identical answers
// for identical input, so a primary and its replicas fed the same bytes stay equal.
//
//   SET <key> <value>   -> OK          GET <key>  -> VALUE <value> | NIL
//   DEL <key>           -> 1 | 0       INCR <key> -> <new integer value>
//   APPEND <key> <token> [<counter>]
//                       -> the list's new length. A list is a value of tokens separated by
//                          single spaces (GET shows it). With <counter>, that key is also
//                          incremented in the same step, and the answer does not show it: so
//                          concurrent connections counting into one counter still get answers
//                          that do not depend on the order they were served in.
//   EXPORT              -> the whole store on one line: a JSON object, keys sorted
//   IMPORT <json>       -> OK: the store replaced by that object (an EXPORT line's JSON;
//                          string values only) | ERR ... (the store unchanged)
//   DIGEST              -> SHA-256 of the whole store (sorted), to compare instances
//   PING                -> PONG (health checks)
//   WHO                 -> I-AM <name>: differs between instances (tests use it to see who
//                          served a connection; a service doing this needs compareReplies off)
//   anything else       -> ERR unknown command
//
// EXPORT and IMPORT are how an operator reseeds a member from the primary (docs/CONTROLLER.md:
// copy the primary's data in a quiet moment, then rejoin); the fault-injection test does that.
//
// Usage: tsx samples/kv-server.ts --port 7001 [--host 127.0.0.1] [--name primary]
import { createHash } from "node:crypto";
import { createServer } from "node:net";
import { parseArgs } from "node:util";

/** The store as one JSON object, keys sorted (EXPORT's answer and IMPORT's argument). */
function exportStore(store: Map<string, string>): string {
  return JSON.stringify(Object.fromEntries([...store.keys()].sort().map((k) => [k, store.get(k)!])));
}

function importStore(store: Map<string, string>, json: string): string {
  let parsed: unknown;
  try { parsed = JSON.parse(json); } catch { return "ERR IMPORT needs a JSON object"; }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return "ERR IMPORT needs a JSON object";
  const entries = Object.entries(parsed);
  if (!entries.every(([, v]) => typeof v === "string")) return "ERR IMPORT takes string values only";
  store.clear();
  for (const [k, v] of entries) store.set(k, v as string);
  return "OK";
}

export function createKvServer(name = "kv") {
  const store = new Map<string, string>();
  const execute = (line: string): string => {
    const trimmed = line.trim();
    const [cmd, key, ...rest] = trimmed.split(" ");
    switch ((cmd ?? "").toUpperCase()) {
      case "SET": if (!key) return "ERR SET needs a key"; store.set(key, rest.join(" ")); return "OK";
      case "GET": return store.has(key) ? `VALUE ${store.get(key)}` : "NIL";
      case "DEL": return store.delete(key) ? "1" : "0";
      case "INCR": { const n = (Number.parseInt(store.get(key) ?? "0", 10) || 0) + 1; store.set(key, String(n)); return String(n); }
      case "APPEND": {
        const [token, counter] = rest;
        if (!key || !token) return "ERR APPEND needs a key and a token";
        const list = store.get(key);
        store.set(key, list ? `${list} ${token}` : token);
        if (counter) execute(`INCR ${counter}`);
        return String(list ? list.split(" ").length + 1 : 1);
      }
      case "EXPORT": return exportStore(store);
      case "IMPORT": return importStore(store, trimmed.slice(cmd.length).trim());
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
      // Look for line ends in the new chunk only: an IMPORT line can be megabytes long.
      let from = pending.length;
      pending += chunk;
      let nl: number;
      let out = "";
      while ((nl = pending.indexOf("\n", from)) >= 0) {
        const answer = execute(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
        from = 0;
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
