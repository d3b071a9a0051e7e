// Must show 1-3 of the online consistency check (issue 4), on the real Envoy binary (two
// workers, so two filter VMs), the real relay and Debian's redis-server as primary and two replicas, each started empty and
// standalone (no redis replication):
//   1. a deterministic workload over many connections (SET/INCR/LPUSH/HSET/MSET, pipelined in
//      odd-sized writes, some values of 150-250 KB) leaves every replica's whole data set equal
//      to the primary's (DEBUG DIGEST, DBSIZE: the server's own tools), and no divergence;
//   2. a write made directly to one replica makes later replies differ: reported as a divergence
//      of that replica only, by the connection that revealed it (while it is still open, when
//      the reply spans a window), and the other replica stays clean;
//   3. with compareReplies off, the same workload and the same tampering report nothing, and
//      the filter reads no reply byte (its reply_bytes_digested stat stays 0).
import { describe, it, expect, beforeAll } from "vitest";
import { startEnvoy, type EnvoyHandle } from "../support/envoy.ts";
import { startRelay, type RelayHandle } from "../support/relay.ts";
import { startRedis, resp, runScript, openSession, type RedisHandle, type SessionResult } from "../support/redis.ts";
import { pool } from "../support/clients.ts";
import { waitFor } from "../support/ports.ts";

const SERVICE = "itest";
const stat = (name: string) => `wasmcustom.lockstep.${SERVICE}.${name}`;

const bigValue = (i: number) => Buffer.alloc(150_000 + (i % 7) * 15_000, `big-${i}-`);

/** Connection i's script: keys of its own (so the replies do not depend on how connections
 *  interleave), commutative additions to shared keys, and QUIT. */
function script(i: number): { bytes: Buffer; commands: number } {
  const k = (s: string) => `c${i}:${s}`;
  const cmds: Buffer[] = [
    resp("SET", k("str"), `value-${i}`),
    ...Array.from({ length: 5 }, () => resp("INCR", k("n"))),
    resp("INCRBY", k("n"), String(i)),
    resp("LPUSH", k("list"), "a", "b", `c-${i}`),
    resp("RPUSH", k("list"), "z"),
    resp("HSET", k("h"), "f1", "v1", "f2", String(i)),
    resp("HINCRBY", k("h"), "f3", "7"),
    resp("MSET", k("m1"), "x", k("m2"), "y".repeat((i % 50) + 1)),
    // Shared keys, commutative and with order-independent replies (always 1 here).
    resp("SADD", "shared:set", `member-${i}`),
    resp("HSET", "shared:hash", `field-${i}`, String(i)),
  ];
  if (i % 10 === 0) {
    cmds.push(resp("SET", k("big"), bigValue(i)), resp("GET", k("big")), resp("STRLEN", k("big")));
  }
  cmds.push(resp("GET", k("str")), resp("LRANGE", k("list"), "0", "-1"), resp("HGETALL", k("h")), resp("MGET", k("m1"), k("m2")), resp("GET", k("n")));
  cmds.push(resp("QUIT"));
  return { bytes: Buffer.concat(cmds), commands: cmds.length };
}

/** Odd write sizes per connection (Envoy, the relay and the replicas each see other chunks). */
const pieces = (i: number) => [1 + ((i * 37) % 4000), 3, 1 + ((i * 7919) % 20000), 1, 16384 + (i % 3)];

interface Stack { primary: RedisHandle; replicas: RedisHandle[]; relay: RelayHandle; envoy: EnvoyHandle }

async function startStack(compareReplies: boolean): Promise<Stack> {
  const [primary, ...replicas] = await Promise.all(["primary", "replica-a", "replica-b"].map((n) => startRedis(n)));
  const specs = replicas.map((r) => ({ name: r.name, address: r.address }));
  const relay = await startRelay({ replicas: specs, service: SERVICE });
  const envoy = await startEnvoy({ primary: primary.address, replicas: specs, relayPort: relay.port, service: SERVICE, compareReplies, concurrency: 2 });
  return { primary, replicas, relay, envoy };
}

async function runWorkload(s: Stack, connections: number): Promise<{ results: SessionResult[]; commands: number; ms: number }> {
  const started = Date.now();
  let commands = 0;
  const results = await pool(connections, 12, async (i) => {
    const sc = script(i);
    commands += sc.commands;
    return runScript(s.envoy.listenerPort, sc.bytes, pieces(i));
  });
  await settle(s);
  return { results, commands, ms: Date.now() - started };
}

/** Every mirror stream finished on both sides. */
async function settle(s: Stack): Promise<void> {
  await waitFor("the relay to finish every stream", async () => (await s.relay.metric("lockstep_relay_streams_active")) === 0, 30_000);
  await waitFor("Envoy's mirror streams to finish", async () => (await s.envoy.stat(stat("streams_active"))) === 0, 30_000);
}

const digest = (r: RedisHandle) => r.cli("DEBUG", "DIGEST");
const relayDivergences = (s: Stack, replica: string) => s.relay.metric("lockstep_relay_replica_divergences_total", { service: SERVICE, replica });

describe("consistency check on redis through real Envoy (compareReplies on)", () => {
  const CONNECTIONS = 600;
  let s: Stack;
  let run: Awaited<ReturnType<typeof runWorkload>>;

  beforeAll(async () => {
    s = await startStack(true);
    run = await runWorkload(s, CONNECTIONS);
    console.log(`  redis workload: ${CONNECTIONS} connections, ${run.commands} commands, ${run.results.reduce((n, r) => n + r.reply.length, 0)} reply bytes in ${run.ms} ms`);
  });

  it("1. leaves every replica's whole data set equal to the primary's, with no divergence reported", async () => {
    expect(run.results.filter((r) => r.error || !r.reply.subarray(-5).equals(Buffer.from("+OK\r\n")))).toEqual([]);
    const primaryDigest = digest(s.primary);
    expect(primaryDigest).toMatch(/^[0-9a-f]{40}$/);
    expect(primaryDigest).not.toBe("0".repeat(40)); // not an empty data set
    for (const r of s.replicas) {
      expect(digest(r), `${r.name}: DEBUG DIGEST`).toBe(primaryDigest);
      expect(r.cli("DBSIZE")).toBe(s.primary.cli("DBSIZE"));
    }
    expect(Number(s.primary.cli("SCARD", "shared:set"))).toBe(CONNECTIONS);

    const stats = await s.envoy.stats();
    const replyBytes = run.results.reduce((n, r) => n + r.reply.length, 0);
    expect(stats.get(stat("reply_bytes_digested"))).toBe(replyBytes);
    for (const r of s.replicas) {
      expect(await relayDivergences(s, r.name)).toBe(0);
      // Every connection's replies were compared to their end and matched.
      expect(await s.relay.metric("lockstep_relay_replica_replies_matched_total", { replica: r.name })).toBe(CONNECTIONS);
      expect(await s.relay.metric("lockstep_relay_replica_reply_windows_compared_total", { replica: r.name })).toBeGreaterThanOrEqual(CONNECTIONS / 10 * 9);
      expect(stats.get(stat(`replica.${r.name}.divergences`))).toBe(0);
      expect(stats.get(stat(`replica.${r.name}.detaches`))).toBe(0);
      expect(stats.get(stat(`replica.${r.name}.completed`))).toBe(CONNECTIONS);
    }
  });

  it("2. reports a write made directly to one replica as that replica's divergence, in the connection that revealed it", async () => {
    const [a, b] = s.replicas;
    b.cli("SET", "c5:str", "tampered");
    expect(await relayDivergences(s, b.name)).toBe(0);
    const one = await runScript(s.envoy.listenerPort, Buffer.concat([resp("GET", "c5:str"), resp("QUIT")]));
    expect(one.reply.toString()).toBe("$7\r\nvalue-5\r\n+OK\r\n"); // the client sees the primary only
    await settle(s);
    expect(await relayDivergences(s, b.name)).toBe(1);
    expect(await relayDivergences(s, a.name)).toBe(0);
    expect(await s.relay.metric("lockstep_relay_replica_detaches_total", { replica: b.name, reason: "DIVERGED" })).toBe(1);
    expect(await s.envoy.stat(stat(`replica.${b.name}.divergences`))).toBe(1);
    expect(await s.envoy.stat(stat(`replica.${a.name}.divergences`))).toBe(0);
    // The relay and the filter name the same connection (Envoy's connection_id).
    const relayLine = /divergence: service "itest" replica "replica-b" connection (\d+) at reply offset (0|18): /.exec(s.relay.process.output());
    expect(relayLine, s.relay.process.output().slice(-2000)).not.toBeNull();
    expect(s.envoy.process.output()).toContain(`lockstep: replica "replica-b" diverged on connection ${relayLine![1]}`);

    // A reply longer than a window is judged while its connection is still open.
    b.cli("SETRANGE", "c10:big", "100", "X");
    const session = await openSession(s.envoy.listenerPort);
    const started = performance.now();
    session.send(resp("GET", "c10:big"));
    await waitFor("the divergence of replica-b on the open connection", async () => (await relayDivergences(s, b.name)) === 2, 10_000, 2);
    const latencyMs = performance.now() - started;
    expect(session.closed).toBe(false);
    const expected = Buffer.concat([Buffer.from(`$${bigValue(10).length}\r\n`), bigValue(10), Buffer.from("\r\n")]);
    await session.until(expected.length);
    expect(session.received).toEqual(expected);
    session.send(resp("PING"));
    await session.until(expected.length + 7);
    expect(session.received.subarray(expected.length).toString()).toBe("+PONG\r\n");
    session.send(resp("QUIT"));
    await waitFor("the connection to close", () => session.closed);
    await settle(s);
    console.log(`  divergence detected ${latencyMs.toFixed(1)} ms after the client sent the request (connection still open)`);
    expect(await relayDivergences(s, a.name)).toBe(0);
    expect(await s.relay.metric("lockstep_relay_replica_replies_matched_total", { replica: a.name })).toBe(CONNECTIONS + 2);
    expect(await s.envoy.stat(stat(`replica.${a.name}.detaches`))).toBe(0);
    expect(digest(a)).toBe(digest(s.primary));
  });
});

describe("consistency check on redis through real Envoy (compareReplies off)", () => {
  const CONNECTIONS = 300;
  let s: Stack;
  let run: Awaited<ReturnType<typeof runWorkload>>;

  beforeAll(async () => {
    s = await startStack(false);
    run = await runWorkload(s, CONNECTIONS);
  });

  it("3. reports nothing, even for a tampered replica, and never reads the primary's replies", async () => {
    expect(run.results.filter((r) => r.error)).toEqual([]);
    for (const r of s.replicas) expect(digest(r)).toBe(digest(s.primary));
    const [, b] = s.replicas;
    b.cli("SET", "c5:str", "tampered");
    const one = await runScript(s.envoy.listenerPort, Buffer.concat([resp("GET", "c5:str"), resp("QUIT")]));
    expect(one.reply.toString()).toBe("$7\r\nvalue-5\r\n+OK\r\n");
    await settle(s);
    const stats = await s.envoy.stats();
    expect(stats.get(stat("reply_bytes_digested"))).toBe(0);
    for (const r of s.replicas) {
      expect(await relayDivergences(s, r.name)).toBe(0);
      expect(await s.relay.metric("lockstep_relay_replica_reply_windows_compared_total", { replica: r.name })).toBe(0);
      expect(await s.relay.metric("lockstep_relay_replica_replies_matched_total", { replica: r.name })).toBe(0);
      expect(stats.get(stat(`replica.${r.name}.divergences`))).toBe(0);
      expect(stats.get(stat(`replica.${r.name}.completed`))).toBe(CONNECTIONS + 1);
    }
  });
});
