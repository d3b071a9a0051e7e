// The controller's stored document: which services exist, their members' names, addresses and
// roles, the designated successor, and the event history. Live measurements (health, lag, RTT)
// are not stored: a restarted controller measures them again, and promotes nobody before its own
// probes found them up. A document is checked when it is read: a malformed one stops the
// controller (it never starts from a guessed state); a replica whose address is not an endpoint
// (written by an older version, which took any text) is dropped and reported, because no probe,
// relay or Envoy could ever reach it; a primary whose address is not an endpoint stops the
// controller with the fix to make, because dropping it would leave the service without one.
import { StoreError } from "./file-store.ts";
import { NAME, parseEndpoint } from "../../config/address.ts";
import type { Member, Role, Service } from "../model/service.ts";
import type { ControllerEvent } from "../state.ts";
import type { Baselines } from "../evidence/ledger.ts";

export interface StoredMember { name: string; address: string; role: Role }
export interface StoredService { name: string; members: StoredMember[]; successor?: string; listener?: string; mode?: "session"; healthCheck?: { send?: string; expect?: string } }
export interface StoredState {
  schema: 1;
  services: StoredService[];
  events: ControllerEvent[];
  /** The evidence counters last acted on, per source process (controller/evidence/ledger.ts). */
  evidence?: Baselines;
}

const ROLES: readonly Role[] = ["primary", "replica", "joining", "stale", "detached", "diverged"];
const EVENT_FIELDS = ["at", "service", "kind", "member", "detail"] as const;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Check the document's shape; throws StoreError saying where it is malformed. */
export function validateStoredState(raw: unknown): StoredState {
  if (!isObject(raw) || raw.schema !== 1 || !Array.isArray(raw.services) || !Array.isArray(raw.events)) {
    throw new StoreError("not a lockstep controller store (expected { schema: 1, services: [], events: [] })");
  }
  raw.services.forEach((s: unknown, i) => {
    const where = `services[${i}]`;
    if (!isObject(s) || typeof s.name !== "string" || !NAME.test(s.name) || !Array.isArray(s.members)) throw new StoreError(`${where} must be { name, members: [] } with a valid name`);
    if (s.successor !== undefined && typeof s.successor !== "string") throw new StoreError(`${where}.successor must be a member name`);
    if (s.listener !== undefined && typeof s.listener !== "string") throw new StoreError(`${where}.listener must be "ip:port"`);
    if (s.mode !== undefined && s.mode !== "session") throw new StoreError(`${where}.mode must be "session" or absent`);
    if (s.healthCheck !== undefined && (!isObject(s.healthCheck) || Object.values(s.healthCheck).some((v) => typeof v !== "string"))) throw new StoreError(`${where}.healthCheck must be { send, expect } of strings`);
    s.members.forEach((m: unknown, j) => {
      if (!isObject(m) || typeof m.name !== "string" || !NAME.test(m.name) || typeof m.address !== "string" || !ROLES.includes(m.role as Role)) {
        throw new StoreError(`${where}.members[${j}] must be { name, address, role } with a valid name and a role of ${ROLES.join(", ")}`);
      }
    });
  });
  if (raw.evidence !== undefined) {
    if (!isObject(raw.evidence)) throw new StoreError("evidence must be an object of { instance, counters }");
    for (const [source, b] of Object.entries(raw.evidence)) {
      if (!isObject(b) || typeof b.instance !== "string" || !isObject(b.counters) || Object.values(b.counters).some((n) => typeof n !== "number")) {
        throw new StoreError(`evidence[${JSON.stringify(source)}] must be { instance: string, counters: { <key>: number } }`);
      }
    }
  }
  raw.events.forEach((e: unknown, i) => {
    if (!isObject(e) || EVENT_FIELDS.some((k) => typeof e[k] !== "string")) throw new StoreError(`events[${i}] must be { ${EVENT_FIELDS.join(", ")} } of strings`);
  });
  return raw as unknown as StoredState;
}

export interface DroppedMember { readonly service: string; readonly member: string; readonly reason: string }

/** The services a stored document describes, addresses in their canonical spelling, health not
 *  known yet; replicas that cannot be reached, or that repeat another member's address in
 *  another spelling, are dropped and listed. */
export function servicesFromStore(doc: StoredState, path: string): { services: Service[]; dropped: DroppedMember[] } {
  const dropped: DroppedMember[] = [];
  const names = new Set<string>();
  const services = doc.services.map((s): Service => {
    if (names.has(s.name)) throw new StoreError(`store ${path}: the service "${s.name}" appears twice`);
    names.add(s.name);
    if (new Set(s.members.map((m) => m.name)).size !== s.members.length) throw new StoreError(`store ${path}: service "${s.name}" has two members of one name`);
    const canonical = new Map<StoredMember, string | Error>();
    for (const m of s.members) {
      try { canonical.set(m, parseEndpoint(m.address, "address").text); } catch (err) { canonical.set(m, err as Error); }
    }
    // The primary first: a replica that repeats its address is the one dropped.
    const ordered = [...s.members].sort((a, b) => Number(b.role === "primary") - Number(a.role === "primary"));
    const taken = new Map<string, string>();
    const kept = new Set<StoredMember>();
    for (const m of ordered) {
      const address = canonical.get(m)!;
      const reason = address instanceof Error ? `its address ${JSON.stringify(m.address)} is not an endpoint: ${address.message}`
        : taken.has(address) ? `its address ${m.address} is ${address}, the address of "${taken.get(address)}"` : undefined;
      if (reason === undefined) { taken.set(address as string, m.name); kept.add(m); continue; }
      if (m.role === "primary") {
        throw new StoreError(`store ${path}: the primary "${m.name}" of service "${s.name}": ${reason}. ` +
          "No probe, relay or Envoy can reach it; write its IP address (\"ip:port\") in the store file, or remove the service from it, then start the controller again");
      }
      dropped.push({ service: s.name, member: m.name, reason });
    }
    const members = s.members.filter((m) => kept.has(m)).map((m): Member => Object.freeze({ name: m.name, address: canonical.get(m) as string, role: m.role, lagBytes: 0 }));
    const successor = s.successor !== undefined && members.some((m) => m.name === s.successor) ? { successor: s.successor } : {};
    const listener = s.listener === undefined ? {} : { listener: s.listener };
    const mode = s.mode === "session" ? { mode: s.mode } : {};
    const healthCheck = s.healthCheck === undefined ? {} : { healthCheck: Object.freeze({ ...s.healthCheck }) };
    return Object.freeze({ name: s.name, members: Object.freeze(members), ...successor, ...listener, ...mode, ...healthCheck });
  });
  return { services, dropped };
}

/** What is stored of the state: no live measurements. */
export function toStoredState(services: Iterable<Service>, events: ControllerEvent[], evidence: Baselines = {}): StoredState {
  return {
    schema: 1,
    services: [...services].map((s) => ({
      name: s.name,
      members: s.members.map((m) => ({ name: m.name, address: m.address, role: m.role })),
      ...(s.successor === undefined ? {} : { successor: s.successor }),
      ...(s.listener === undefined ? {} : { listener: s.listener }),
      ...(s.mode === undefined ? {} : { mode: s.mode }),
      ...(s.healthCheck === undefined ? {} : { healthCheck: { ...s.healthCheck } }),
    })),
    events,
    evidence,
  };
}
