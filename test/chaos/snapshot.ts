// Reading the service as it is, for the checker: the controller's view and events, every
// member's digest and data, read until the view is the same before and after (a role that
// changed meanwhile would pair data with the wrong role).
import type { Stack } from "../support/stack.ts";
import type { FinalSnapshot } from "./checker.ts";
import type { Target } from "./target.ts";

/** `throughEnvoy`: also ask the digest through Envoy's listener (a client connection, which the
 *  relay mirrors and the reply check judges: only at the end, after the roles were read). */
export async function readSnapshot(stack: Stack, target: Target, throughEnvoy: boolean): Promise<FinalSnapshot> {
  for (let attempt = 1; ; attempt++) {
    const before = await stack.view();
    const members = [...stack.members.values()];
    const digests = new Map(await Promise.all(members.map(async (m) => [m.name, await target.digest(m.port)] as const)));
    const states = new Map(await Promise.all(members.map(async (m) => [m.name, await target.state(m.port)] as const)));
    const after = await stack.view();
    const roles = (v: typeof before) => JSON.stringify([v.primary, v.members.map((m) => [m.name, m.role, m.alive])]);
    if (roles(before) !== roles(after) && attempt < 3) continue;
    const servedDigest = throughEnvoy ? await target.digest(stack.envoy.listenerPort).catch((err) => `(none: ${(err as Error).message})`) : undefined;
    const events = (await stack.api("GET", `/v1/events?service=${stack.service}`)).json.events;
    return { primary: after.primary, members: after.members, events, states, digests, servedDigest };
  }
}
