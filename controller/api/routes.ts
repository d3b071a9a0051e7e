// The controller's HTTP API under /v1 (express). Reads are open; mutating calls need
// `Authorization: Bearer <token>`. Bad input gets a 4xx with a coded error and changes nothing;
// anything else is a fault of the controller: logged with its stack, answered 500 INTERNAL.
// The OpenAPI document (openapi.ts) describes exactly these routes; a test keeps them in step.
import express, { type Request, type Response, type NextFunction, type Router } from "express";
import { timingSafeEqual } from "node:crypto";
import { ApiError, toApiError } from "./errors.ts";
import type { XdsStatus } from "../xds/rest-server.ts";
import { OPENAPI } from "./openapi.ts";
import type { ControllerState } from "../state.ts";
import type { Service, Member } from "../model/service.ts";
import { HEALTH_DEFAULTS, type HealthSettings } from "../health/checker.ts";
import { NAME, NAME_RULE, parseEndpoint, AddressError } from "../../config/address.ts";

export const MAX_BODY_BYTES = 16 * 1024;

function view(s: Service, state: ControllerState, options: ApiOptions) {
  const last = state.history(s.name).filter((e) => e.kind === "promotion" || e.kind === "switchover").at(-1);
  return {
    name: s.name,
    primary: s.members.find((m) => m.role === "primary")?.name ?? null,
    successor: options.successor?.(s.name) ?? null,
    listener: s.listener ?? null,
    mode: s.mode ?? "mirror",
    members: s.members.map((m) => ({ name: m.name, address: m.address, role: m.role, alive: m.alive ?? null, lagBytes: m.lagBytes, rttMs: m.rttMs ?? null })),
    lastFailover: last ? { at: last.at, kind: last.kind, member: last.member, detail: last.detail } : null,
    xds: options.xds?.(s.name) ?? null,
  };
}

function param(req: Request, key: string): string {
  const v = req.params[key];
  if (typeof v !== "string" || !NAME.test(v)) throw new ApiError("BAD_REQUEST", `"${key}" must be ${NAME_RULE}`);
  return v;
}

function body(req: Request): Record<string, unknown> {
  const b = req.body;
  if (b === undefined || b === null) return {};
  if (typeof b !== "object" || Array.isArray(b)) throw new ApiError("BAD_REQUEST", "the body must be a JSON object");
  return b as Record<string, unknown>;
}

function onlyKeys(b: Record<string, unknown>, allowed: string[]): void {
  for (const k of Object.keys(b)) if (!allowed.includes(k)) throw new ApiError("BAD_REQUEST", `unknown field "${k}" (allowed: ${allowed.join(", ") || "none"})`);
}

function member(raw: unknown, field: string, role: Member["role"]): Member {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ApiError("BAD_REQUEST", `"${field}" must be {"name", "address"}`);
  const m = raw as Record<string, unknown>;
  onlyKeys(m, ["name", "address"]);
  if (typeof m.name !== "string" || !NAME.test(m.name)) throw new ApiError("BAD_REQUEST", `"${field}.name" must be ${NAME_RULE}`);
  return { name: m.name, address: address(m.address, `${field}.address`), role, lagBytes: 0 };
}

/** An endpoint in its canonical spelling, or 400 saying what is wrong with it. */
function address(raw: unknown, field: string): string {
  try { return parseEndpoint(raw, field).text; } catch (err) { throw new ApiError("BAD_REQUEST", (err as AddressError).message); }
}

function healthCheck(raw: unknown): HealthSettings {
  if (raw === undefined) return HEALTH_DEFAULTS;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new ApiError("BAD_REQUEST", '"healthCheck" must be {"send", "expect"}');
  const h = raw as Record<string, unknown>;
  onlyKeys(h, ["send", "expect"]);
  for (const k of ["send", "expect"]) if (h[k] !== undefined && (typeof h[k] !== "string" || (h[k] as string).length > 256)) throw new ApiError("BAD_REQUEST", `"healthCheck.${k}" must be a string of at most 256 characters`);
  if (h.expect && !h.send) throw new ApiError("BAD_REQUEST", '"healthCheck.expect" needs "healthCheck.send"');
  return Object.freeze({ ...HEALTH_DEFAULTS, send: (h.send as string) || undefined, expect: (h.expect as string) || undefined });
}

export interface ApiOptions {
  token: string;
  /** Told the health-check settings of a service declared through the API. */
  health?: (service: string, settings: HealthSettings) => void;
  /** The member that takes over if the primary fails (EDS priority 1). */
  successor?: (service: string) => string | undefined;
  /** Act on every loss counted so far, before a member rejoins. */
  settle?: () => Promise<void>;
  /** What Envoy did with the service's latest snapshot. */
  xds?: (service: string) => XdsStatus | undefined;
  /** Whether services may name a listener (the controller serves listeners and clusters: LDS, CDS). */
  servesListeners?: boolean;
  /** Whether the service comes from the controller's config file (it cannot be deleted here). */
  configured?: (service: string) => boolean;
  /** Where faults of the controller are logged. */
  log?: (line: string) => void;
  /** With a replicated store: resolves once every change made so far is stored (a change is
   *  answered only then; rejects with StoreUnavailableError if it could not be). */
  durable?: () => Promise<void>;
  /** With a replicated store: who leads (shown by GET /v1/services). */
  leader?: () => unknown;
  /** With a replicated store: why this controller takes no change now (a follower), if so. */
  refuseChange?: () => ApiError | undefined;
}

/** Each documented path as a pattern, with the methods it takes (for 405 and its Allow header). */
const ROUTES = Object.entries(OPENAPI.paths).map(([path, ops]) => ({
  pattern: new RegExp(`^${path.replace(/\./g, "\\.").replace(/\{\w+\}/g, "[^/]+")}/?$`, "i"),
  allow: Object.keys(ops).flatMap((m) => (m === "get" ? ["GET", "HEAD"] : [m.toUpperCase()])).join(", "),
}));

export function createApiRouter(state: ControllerState, options: ApiOptions): Router {
  const expected = Buffer.from(`Bearer ${options.token}`);
  const requireToken = (req: Request, _res: Response, next: NextFunction) => {
    const got = Buffer.from(req.get("authorization") ?? "");
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) return next(new ApiError("UNAUTHORIZED", "this call needs the header Authorization: Bearer <token>"));
    next(options.refuseChange?.());
  };
  const stored = async () => { await options.durable?.(); };
  const json = express.json({ limit: MAX_BODY_BYTES, strict: true, type: () => true });

  const r = express.Router();
  r.get("/v1/openapi.json", (_req, res) => { res.json(OPENAPI); });
  r.get("/v1/services", (_req, res) => {
    res.json({ store: state.storeStatus(), ...(options.leader ? { leader: options.leader() } : {}), services: state.list().map((s) => view(s, state, options)) });
  });
  r.get("/v1/services/:service", (req, res) => {
    const s = state.get(param(req, "service"));
    if (!s) throw new ApiError("UNKNOWN_SERVICE", `no service "${req.params.service}"`);
    res.json(view(s, state, options));
  });
  r.get("/v1/events", (req, res) => {
    const service = req.query.service;
    if (service !== undefined && (typeof service !== "string" || !NAME.test(service))) throw new ApiError("BAD_REQUEST", `"service" must be ${NAME_RULE}`);
    res.json({ events: state.history(service) });
  });
  r.post("/v1/services", requireToken, json, async (req, res) => {
    const b = body(req);
    onlyKeys(b, ["name", "primary", "replicas", "healthCheck", "listener", "mode"]);
    if (typeof b.name !== "string" || !NAME.test(b.name)) throw new ApiError("BAD_REQUEST", `"name" must be ${NAME_RULE}`);
    if (!Array.isArray(b.replicas)) throw new ApiError("BAD_REQUEST", '"replicas" must be a list of {"name", "address"}');
    const members = [member(b.primary, "primary", "primary"), ...b.replicas.map((r, i) => member(r, `replicas[${i}]`, "replica"))];
    for (const key of ["name", "address"] as const) {
      const dup = members.find((m, i) => members.findIndex((x) => x[key] === m[key]) !== i);
      if (dup) throw new ApiError("BAD_REQUEST", `two members have the ${key} "${dup[key]}"`);
    }
    const health = healthCheck(b.healthCheck);
    const listener = b.listener === undefined ? undefined : address(b.listener, "listener");
    if (listener !== undefined && !options.servesListeners) {
      throw new ApiError("BAD_REQUEST", '"listener": this controller does not serve listeners to Envoy (it was not started with --dynamic); declare the listener in Envoy\'s bootstrap');
    }
    if (b.mode !== undefined && b.mode !== "mirror" && b.mode !== "session") throw new ApiError("BAD_REQUEST", '"mode" must be "mirror" (the default) or "session"');
    if (b.mode === "session" && listener === undefined) {
      throw new ApiError("BAD_REQUEST", '"mode": "session" needs a "listener": the mode is how the listener the controller serves carries connections (docs/SESSION.md)');
    }
    if (state.get(b.name)) throw new ApiError("DUPLICATE", `a service named "${b.name}" exists`);
    const taken = listener === undefined ? undefined : state.list().find((s) => s.listener === listener);
    if (taken) throw new ApiError("DUPLICATE", `the service "${taken.name}" listens on ${listener}`);
    // Its health settings first: adding the service starts its health checks.
    options.health?.(b.name, health);
    const given = b.healthCheck === undefined ? {} : { healthCheck: Object.freeze({ ...(health.send ? { send: health.send } : {}), ...(health.expect ? { expect: health.expect } : {}) }) };
    const service = state.addService(Object.freeze({ name: b.name, members: Object.freeze(members.map((m) => Object.freeze(m))), ...(listener ? { listener } : {}), ...(b.mode === "session" ? { mode: "session" as const } : {}), ...given }));
    await stored();
    res.status(201).json(view(service, state, options));
  });
  r.delete("/v1/services/:service", requireToken, async (req, res) => {
    const name = param(req, "service");
    if (!state.get(name)) throw new ApiError("UNKNOWN_SERVICE", `no service "${name}"`);
    if (options.configured?.(name)) throw new ApiError("DECLARED_IN_CONFIG", `"${name}" comes from the controller's config file; remove it there and restart the controller`);
    state.removeService(name);
    await stored();
    res.json({ removed: name });
  });
  r.post("/v1/services/:service/promote", requireToken, json, async (req, res) => {
    const b = body(req);
    onlyKeys(b, ["member"]);
    if (b.member !== undefined && (typeof b.member !== "string" || !NAME.test(b.member))) throw new ApiError("BAD_REQUEST", '"member" must be a member name');
    const service = state.promote(param(req, "service"), "switchover", b.member as string | undefined);
    await stored();
    res.json(view(service, state, options));
  });
  r.post("/v1/services/:service/members", requireToken, json, async (req, res) => {
    const b = body(req);
    onlyKeys(b, ["name", "address"]);
    if (typeof b.name !== "string" || !NAME.test(b.name)) throw new ApiError("BAD_REQUEST", `"name" must be ${NAME_RULE}`);
    const service = state.addReplica(param(req, "service"), { name: b.name, address: address(b.address, "address") });
    await stored();
    res.status(201).json(view(service, state, options));
  });
  r.delete("/v1/services/:service/members/:member", requireToken, async (req, res) => {
    const service = state.removeMember(param(req, "service"), param(req, "member"));
    await stored();
    res.json(view(service, state, options));
  });
  r.post("/v1/services/:service/members/:member/rejoin", requireToken, async (req, res) => {
    const [service, member] = [param(req, "service"), param(req, "member")];
    await options.settle?.();
    const rejoined = state.rejoin(service, member);
    await stored();
    // Answered once the relays feed it: a connection opened after this answer reaches it (one
    // opened before the relay took the new set, after the operator's copy, would not, and its
    // writes would be in neither).
    await options.settle?.();
    res.json(view(rejoined, state, options));
  });
  r.use((req, res, next) => {
    const route = ROUTES.find((x) => x.pattern.test(req.path));
    if (!route) return next(new ApiError("NOT_FOUND", "no such route; see GET /v1/openapi.json"));
    res.set("allow", route.allow);
    next(new ApiError("METHOD_NOT_ALLOWED", `${req.method} is not allowed here (allowed: ${route.allow}); see GET /v1/openapi.json`));
  });
  r.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    const apiError = toApiError(err, MAX_BODY_BYTES);
    if (apiError) { res.status(apiError.status).json(apiError.body()); return; }
    options.log?.(`api: ${req.method} ${req.originalUrl} failed: ${(err as Error)?.stack ?? String(err)}`);
    if (res.headersSent) { req.socket.destroy(); return; }
    res.status(500).json({ error: { code: "INTERNAL", message: "internal error; it is logged in the controller's log" } });
  });
  return r;
}
