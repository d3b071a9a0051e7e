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
    const servedDigest = throughEnvoy ? await servedThroughEnvoy(stack, target) : undefined;
    const events = (await stack.api("GET", `/v1/events?service=${stack.service}`)).json.events;
    return { primary: after.primary, members: after.members, events, states, digests, servedDigest };
  }
}

/** The digest through Envoy's listener, asked again (1 s apart, 15 times at most) while the
 *  connection fails: the reads above stall each member (a whole-data-set read on Redis takes
 *  longer than Envoy's 250 ms health-check timeout), so Envoy may have failed the primary and
 *  closed connections to it until the controller re-admits it (docs/CONTROLLER.md). A failure
 *  that lasts is reported; a different digest is reported at once. */
async function servedThroughEnvoy(stack: Stack, target: Target): Promise<string> {
  let last = "";
  for (let attempt = 1; attempt <= 15; attempt++) {
    try { return await target.digest(stack.envoy.listenerPort); } catch (err) { last = (err as Error).message; }
    await new Promise((r) => setTimeout(r, 1000));
  }
  return `(none after 15 attempts 1 s apart: ${last})`;
}
