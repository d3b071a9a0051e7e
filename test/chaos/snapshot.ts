// Reading the service as it is, for the checker: the controller's view and events, every
// member's digest and data, read until the view is the same before and after (a role that
// changed meanwhile would pair data with the wrong role).
import type { Stack } from "../support/stack.ts";
import type { FinalSnapshot } from "./checker.ts";
import type { Target } from "./target.ts";

/** `throughEnvoy`: also ask who answers through Envoy's listener (a client connection, which
 *  the relay mirrors and the reply check judges: only at the end, after the roles were read). */
export async function readSnapshot(stack: Stack, target: Target, throughEnvoy: boolean): Promise<FinalSnapshot> {
  for (let attempt = 1; ; attempt++) {
    const before = await stack.view();
    const members = [...stack.members.values()];
    const digests = new Map(await Promise.all(members.map(async (m) => [m.name, await target.digest(m.port)] as const)));
    const states = new Map(await Promise.all(members.map(async (m) => [m.name, await target.state(m.port)] as const)));
    const after = await stack.view();
    const roles = (v: typeof before) => JSON.stringify([v.primary, v.members.map((m) => [m.name, m.role, m.alive])]);
    if (roles(before) !== roles(after) && attempt < 3) continue;
    const servedBy = throughEnvoy ? await servedThroughEnvoy(stack, target, members) : undefined;
    const events = (await stack.api("GET", `/v1/events?service=${stack.service}`)).json.events;
    return { primary: after.primary, members: after.members, events, states, digests, servedBy };
  }
}

/** The member whose process answers through Envoy's listener, asked again (1 s apart, 15
 *  times at most) while the connection fails: the whole-data-set reads above stall each member
 *  (on Redis longer than Envoy's 250 ms health-check timeout), so Envoy may have failed the
 *  primary and closed connections to it until the controller re-admits it (docs/CONTROLLER.md).
 *  A failure that lasts is reported; another process is reported at once. */
async function servedThroughEnvoy(stack: Stack, target: Target, members: readonly { name: string; port: number }[]): Promise<string> {
  let last = "";
  for (let attempt = 1; attempt <= 15; attempt++) {
    try {
      const [through, ...own] = await Promise.all([target.identity(stack.envoy.listenerPort), ...members.map((m) => target.identity(m.port))]);
      return members.find((_, i) => own[i] === through)?.name ?? `(a process no member runs: ${through})`;
    } catch (err) { last = (err as Error).message; }
    await new Promise((r) => setTimeout(r, 1000));
  }
  return `(nothing after 15 attempts 1 s apart: ${last})`;
}
