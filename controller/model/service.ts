// One replicated service as the controller knows it: members and their roles, and the rules
// for changing them. Pure functions over immutable values; the controller persists the result.
//
//   replica ──promote──► primary ──fails / switchover──► stale (failed) | replica (planned)
//      │                                                   │
//      ├──missed bytes / diverged (evidence)──► detached / diverged: not promotable until rejoined
//      └──fails──► stale
//   stale | detached | diverged ──rejoin (API, after reseeding)──► joining ──every connection
//      open before it joined has ended──► replica (a joining member is mirrored to, never promoted)

export type Role = "primary" | "replica" | "joining" | "stale" | "detached" | "diverged";

export interface Member {
  readonly name: string;
  readonly address: string;
  readonly role: Role;
  /** Seen up (true) or down (false) by this controller process's own health checks; undefined
   *  until they decide. Never taken from the store: a restarted controller probes again. */
  readonly alive?: boolean;
  /** Bytes sent to it and not yet acknowledged, summed over open connections. */
  readonly lagBytes: number;
  /** Last measured round-trip time, ms (undefined: not measured yet). */
  readonly rttMs?: number;
}

export interface Service {
  readonly name: string;
  readonly members: readonly Member[];
  /** The member Envoy falls back to first (EDS priority 1), as last decided: stored, so a
   *  restarted controller publishes exactly the endpoints Envoy already has. */
  readonly successor?: string;
  /** "ip:port" of the service's listener, when the controller serves it to Envoy (LDS/CDS). */
  readonly listener?: string;
  /** "session": the service's listener tunnels connections to the relay, which carries them
   *  and keeps them open across a failover (docs/SESSION.md): no lockstep filter in Envoy for
   *  it; absent: mirror mode. */
  readonly mode?: "session";
  /** The health-check payload given through the API (stored: Envoy's cluster is built from it). */
  readonly healthCheck?: { readonly send?: string; readonly expect?: string };
}

export class ModelError extends Error {
  constructor(readonly code: "UNKNOWN_SERVICE" | "NO_SUCH_MEMBER" | "NOT_PROMOTABLE" | "NO_CANDIDATE" | "IS_PRIMARY" | "DUPLICATE", message: string) { super(message); }
}

export function primaryOf(s: Service): Member | undefined { return s.members.find((m) => m.role === "primary"); }

/** Members that may become primary: in-sync replicas that a probe of this controller process
 *  found up. Never stale, detached or diverged ones, nor one not probed yet. */
export function promotable(s: Service): Member[] { return s.members.filter((m) => m.role === "replica" && m.alive === true); }

/** In-sync replicas not seen down: the relay feeds them and Envoy keeps them as standbys. One not
 *  probed yet (just after a restart) keeps its place, so a restarted controller changes nothing. */
export function standbyCandidates(s: Service): Member[] { return s.members.filter((m) => m.role === "replica" && m.alive !== false); }

/**
 * The best replica to promote: alive and in sync, least lag, ties broken by lowest measured
 * RTT (unmeasured last), then by name so the choice is deterministic.
 */
export function bestReplica(s: Service): Member | undefined {
  return [...promotable(s)].sort((a, b) =>
    a.lagBytes - b.lagBytes || (a.rttMs ?? Infinity) - (b.rttMs ?? Infinity) || a.name.localeCompare(b.name))[0];
}

function withRoles(s: Service, roles: Record<string, Role>): Service {
  return Object.freeze({ ...s, members: Object.freeze(s.members.map((m) => (roles[m.name] ? Object.freeze({ ...m, role: roles[m.name] }) : m))) });
}

/**
 * Promote `name` (or the best replica). The old primary becomes `stale` after a failure (it
 * missed what the new primary serves from now on) or a `replica` after a planned switchover
 * (it keeps receiving every new connection's bytes).
 */
export function promote(s: Service, reason: "failure" | "switchover", name?: string): { service: Service; promoted: Member; demoted?: Member } {
  const target = name === undefined ? bestReplica(s) : s.members.find((m) => m.name === name);
  if (!target) throw name === undefined
    ? new ModelError("NO_CANDIDATE", `service "${s.name}" has no live, in-sync replica to promote`)
    : new ModelError("NO_SUCH_MEMBER", `service "${s.name}" has no member "${name}"`);
  if (target.role === "primary") throw new ModelError("IS_PRIMARY", `"${target.name}" is already the primary of "${s.name}"`);
  if (target.role !== "replica" || target.alive !== true) {
    const state = target.role !== "replica" ? target.role : target.alive === false ? "down" : "not yet seen up by this controller's health checks";
    throw new ModelError("NOT_PROMOTABLE", `"${target.name}" is ${state}; only a live, in-sync replica can be promoted`);
  }
  const old = primaryOf(s);
  const roles: Record<string, Role> = { [target.name]: "primary" };
  if (old) roles[old.name] = reason === "failure" ? "stale" : "replica";
  const service = withRoles(s, roles);
  return { service, promoted: service.members.find((m) => m.name === target.name)!, demoted: old && service.members.find((m) => m.name === old.name) };
}

/** A replica fell out of sync (missed bytes, replies differed) or died: it stops being promotable. */
export function markOutOfSync(s: Service, name: string, role: "stale" | "detached" | "diverged"): Service {
  const m = s.members.find((x) => x.name === name);
  if (!m) throw new ModelError("NO_SUCH_MEMBER", `service "${s.name}" has no member "${name}"`);
  if (m.role === "primary") throw new ModelError("IS_PRIMARY", `"${name}" is the primary; a primary fails over, it is not marked ${role}`);
  return withRoles(s, { [name]: role });
}

/** An operator reseeded a stale/detached/diverged member from the primary's state: it joins,
 *  getting every new connection's bytes, and becomes a replica once no connection it is not
 *  part of is open (admit). */
export function rejoin(s: Service, name: string): Service {
  const m = s.members.find((x) => x.name === name);
  if (!m) throw new ModelError("NO_SUCH_MEMBER", `service "${s.name}" has no member "${name}"`);
  if (m.role === "primary" || m.role === "replica" || m.role === "joining") throw new ModelError("DUPLICATE", `"${name}" is already ${m.role}`);
  return withRoles(s, { [name]: "joining" });
}

/** A joining member takes part in every open connection: it is a replica (promotable). */
export function admit(s: Service, name: string): Service {
  const m = s.members.find((x) => x.name === name);
  if (!m || m.role !== "joining") throw new ModelError("NO_SUCH_MEMBER", `service "${s.name}" has no joining member "${name}"`);
  return withRoles(s, { [name]: "replica" });
}

/** Which members get new connections' bytes (besides the primary): replicas and joining members. */
export function mirrorTargets(s: Service): Member[] { return s.members.filter((m) => m.role === "replica" || m.role === "joining"); }
