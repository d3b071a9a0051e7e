// The workload on Debian's redis-server: one EVAL appends (RPUSH) and counts (INCR) atomically
// and answers the list's length only; uploads are SETs; DEBUG DIGEST compares data sets; a
// read-only script exports every key for the checker; reseeding uses redis's own replication
// (REPLICAOF the primary until the full sync is done, then REPLICAOF NO ONE).
import { redisCall, resp, RespError, type RespValue } from "../support/redis.ts";
import { waitFor } from "../support/ports.ts";
import { takeLines, toState, type Reply, type Target } from "./target.ts";

const APPEND_SCRIPT = "redis.call('INCR', KEYS[2]) return redis.call('RPUSH', KEYS[1], ARGV[1])";
const EXPORT_SCRIPT = `local out = {}
for _, key in ipairs(redis.call('KEYS', '*')) do
  local kind = redis.call('TYPE', key).ok
  if kind == 'list' then out[key] = redis.call('LRANGE', key, 0, -1)
  elseif kind == 'string' then out[key] = redis.call('GET', key)
  else out[key] = '(' .. kind .. ')' end
end
return cjson.encode(out)`;

async function call(port: number, ...args: string[]): Promise<string> {
  const value: RespValue = await redisCall(port, args, 20_000);
  if (value instanceof RespError) throw new Error(`redis ${args[0]} on port ${port}: ${value.message}`);
  return String(value);
}

export const redisTarget: Target = {
  name: "redis",
  append: (key, token, counter) => resp("EVAL", APPEND_SCRIPT, "2", key, counter, token),
  upload: (key, value) => resp("SET", key, value),
  takeReplies(buffer) {
    // The workload's replies are one line each: ":<length>" or "-<error>".
    const { lines, rest } = takeLines(buffer);
    const replies: Reply[] = lines.map((l) => (/^:\d+$/.test(l) ? { length: Number(l.slice(1)) } : { error: l }));
    return { replies, rest };
  },
  digest: (port) => call(port, "DEBUG", "DIGEST"),
  async identity(port) {
    const id = /^run_id:(\w+)/m.exec(await call(port, "INFO", "server"))?.[1];
    if (!id) throw new Error(`redis INFO on port ${port}: no run_id`);
    return id;
  },
  async state(port) {
    return toState(Object.entries(JSON.parse(await call(port, "EVAL", EXPORT_SCRIPT, "0")) as Record<string, string | string[]>));
  },
  async copy(fromPort, toPort) {
    await call(toPort, "REPLICAOF", "127.0.0.1", String(fromPort));
    await waitFor(`the full sync of port ${toPort} from ${fromPort}`, async () => {
      const info = await call(toPort, "INFO", "replication");
      return info.includes("master_link_status:up") && info.includes("master_sync_in_progress:0");
    }, 20_000, 10);
    await call(toPort, "REPLICAOF", "NO", "ONE");
    const [from, to] = await Promise.all([call(fromPort, "DEBUG", "DIGEST"), call(toPort, "DEBUG", "DIGEST")]);
    if (from !== to) throw new Error(`after REPLICAOF, port ${toPort} has digest ${to}, its source ${from}`);
  },
};
