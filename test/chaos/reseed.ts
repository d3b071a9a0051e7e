// The operator's procedure for taking out-of-sync members back (docs/CONTROLLER.md, "Rejoining
// a member: reseed first"), as the nemesis runs it:
//   1. quiesce: pause the workload; wait until no client connection is open through Envoy and
//      the relay has finished feeding every member, so the primary's data no longer change
//      (the run checks the data at this moment: quiet-points.ts);
//   2. for each stale, detached or diverged member: stop it, start it again (empty), copy the
//      primary's data into it, wait until the controller sees it alive, rejoin it (API);
//   3. resume the workload: new connections reach the rejoined members from then on, as the
//      documentation says (no wait for the relay's replica set beyond the rejoin call).
import type { Stack } from "../support/stack.ts";
import { waitFor } from "../support/ports.ts";
import type { Target } from "./target.ts";
import type { Workload } from "./workload.ts";

export const OUT_OF_SYNC_ROLES = ["stale", "detached", "diverged"];

/** How long a quiesce may take before the reseed is given up (and recorded as such). */
const QUIESCE_TIMEOUT_MS = 15_000;

/** Client connections open through Envoy's listener now. */
async function openClientConnections(stack: Stack): Promise<number> {
  return stack.envoy.stat(`listener.127.0.0.1_${stack.envoy.listenerPort}.downstream_cx_active`);
}

/** Wait until no client connection is open and the relay holds nothing for any member. */
export async function quiesce(stack: Stack, timeoutMs = QUIESCE_TIMEOUT_MS): Promise<void> {
  await waitFor("no client connection open through Envoy", async () => (await openClientConnections(stack)) === 0, timeoutMs, 20);
  await waitFor("the relay to finish feeding the members (no stream open)", async () =>
    (await stack.relay.metric("lockstep_relay_streams_active")) === 0 && (await stack.relay.metric("lockstep_relay_session_connections_active")) === 0 &&
    (await stack.relay.metric("lockstep_relay_queued_bytes")) === 0, timeoutMs, 20);
}

/** POST .../rejoin. A call lost on the network is made again unless the member is a replica
 *  already (the first call went through). */
async function rejoin(stack: Stack, name: string): Promise<void> {
  const call = () => stack.api("POST", `/v1/services/${stack.service}/members/${name}/rejoin`);
  const res = await call().catch(async (err) =>
    (await stack.view()).members.find((x) => x.name === name)?.role === "replica" ? { status: 200, json: {} } : call().catch(() => { throw err; }));
  if (res.status !== 200) throw new Error(`rejoin of ${name} refused: ${res.status} ${JSON.stringify(res.json)}`);
}

/** A reseed not done: the service did not quiesce (the members were not touched). */
export class ReseedSkipped extends Error {}

/** Reseed and rejoin every out-of-sync member, calling `atQuiet` once the service is quiet.
 *  Returns what was done, for the history. */
export async function reseedOutOfSync(stack: Stack, target: Target, workload: Workload, atQuiet: () => Promise<void>): Promise<string> {
  await workload.pause();
  try {
    try { await quiesce(stack); } catch (err) { throw new ReseedSkipped((err as Error).message); }
    await atQuiet();
    const view = await stack.view();
    const primary = stack.members.get(view.primary)!;
    const behind = view.members.filter((m) => OUT_OF_SYNC_ROLES.includes(m.role));
    for (const m of behind) {
      const member = stack.members.get(m.name)!;
      await member.process.kill("SIGKILL");
      await member.restart();
      await target.copy(primary.port, member.port);
      await waitFor(`the controller to see ${m.name} alive`, async () => (await stack.view()).members.find((x) => x.name === m.name)?.alive === true, 10_000, 20);
      await rejoin(stack, m.name);
    }
    return `${behind.map((m) => `${m.name} (${m.role})`).join(", ")} copied from ${primary.name} and rejoined`;
  } finally {
    workload.resume();
  }
}
