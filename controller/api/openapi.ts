// OpenAPI 3.1 description of the controller's HTTP API (routes.ts). Served at GET /v1/openapi.json.
import { API_ERRORS } from "./errors.ts";

const error = { $ref: "#/components/schemas/Error" };
const service = { $ref: "#/components/schemas/Service" };
const errors = (...codes: (keyof typeof API_ERRORS)[]) => Object.fromEntries(
  [...new Set(codes.map((c) => API_ERRORS[c].status))].map((status) => [String(status), {
    description: codes.filter((c) => API_ERRORS[c].status === status).map((c) => `${c}: ${API_ERRORS[c].summary}`).join("; "),
    content: { "application/json": { schema: error } },
  }]));
const ok = (description: string, schema: object, status = "200") => ({ [status]: { description, content: { "application/json": { schema } } } });
const serviceParam = { name: "service", in: "path", required: true, schema: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" } };
const memberParam = { name: "member", in: "path", required: true, schema: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" } };
const secured = [{ bearer: [] }];
/** Errors any request may get: from the HTTP layer, or a fault of the controller. */
const anyRequest = ["BAD_REQUEST", "HEADERS_TOO_LARGE", "REQUEST_TIMEOUT", "INTERNAL"] as const;
/** ... a request with a path parameter, or with a body. */
const withParams = [...anyRequest, "BAD_PATH", "UNKNOWN_SERVICE"] as const;
const withBody = ["PAYLOAD_TOO_LARGE", "UNSUPPORTED_ENCODING", "BAD_ENCODING"] as const;
/** ... a call that changes something. */
const mutating = [...withParams, "UNAUTHORIZED", "STORE_UNAVAILABLE", "NOT_LEADER"] as const;
const address = { type: "string", maxLength: 64, description: "an IP literal and a port: \"10.0.0.5:7001\" or \"[2001:db8::5]:7001\"; host names are refused (Envoy's EDS takes addresses only). Kept in canonical spelling, so two spellings of one address are one member" };

export const OPENAPI = {
  openapi: "3.1.0",
  info: { title: "lockstep controller", version: "1", description: "Replicated TCP services behind Envoy: members, promotion, events. Mutating calls need a bearer token." },
  paths: {
    "/v1/openapi.json": { get: { summary: "This document", responses: { ...ok("the OpenAPI document", { type: "object" }), ...errors(...anyRequest) } } },
    "/v1/services": {
      get: { summary: "All services with their members, and whether the store can be written", responses: { ...ok("services", { type: "object", properties: {
        store: { type: "object", description: "false while saves fail: the controller serves on from memory, retries, and refuses API changes (503 STORE_UNAVAILABLE)", properties: { ok: { type: "boolean" }, error: { type: ["string", "null"] }, since: { type: ["string", "null"], format: "date-time" } } },
        leader: { type: ["object", "null"], description: "with an etcd store only: the controller that decides ({id, api, self}), null while none does (etcd unreachable, an election under way): the control plane is degraded, Envoys keep their endpoints, nothing is promoted", properties: { id: { type: "string" }, api: { type: "string" }, self: { type: "boolean" } } },
        services: { type: "array", items: service },
      } }), ...errors(...anyRequest) } },
      post: {
        summary: "Declare a service: its primary and replicas, and with a controller started with --dynamic its listener (served to Envoy over LDS, with its <name>_primary cluster over CDS); otherwise Envoy needs them in its bootstrap (scripts/render-envoy.ts)",
        security: secured,
        requestBody: { required: true, content: { "application/json": { schema: { type: "object", additionalProperties: false, required: ["name", "primary", "replicas"], properties: {
          name: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
          primary: { $ref: "#/components/schemas/NewMember" },
          replicas: { type: "array", items: { $ref: "#/components/schemas/NewMember" } },
          healthCheck: { type: "object", additionalProperties: false, properties: { send: { type: "string" }, expect: { type: "string" } } },
          listener: { type: "string", description: "\"ip:port\" Envoy listens on for the service (LDS); refused by a controller without --dynamic, and when another service has it" },
          mode: { type: "string", enum: ["mirror", "session"], description: "how the listener carries connections: \"mirror\" (default; the wasm filter copies client bytes to the relay) or \"session\" (tunnelled through the relay, open connections survive the primary's failure: docs/SESSION.md); \"session\" needs a listener" },
        } } } } },
        responses: { ...ok("the new service", service, "201"), ...errors(...anyRequest, ...withBody, "UNAUTHORIZED", "STORE_UNAVAILABLE", "NOT_LEADER", "DUPLICATE") },
      },
    },
    "/v1/services/{service}": {
      get: { summary: "One service", parameters: [serviceParam], responses: { ...ok("the service", service), ...errors(...withParams) } },
      delete: {
        summary: "Remove a service declared through POST /v1/services: Envoy gets no endpoints for it any more, the relay mirrors nothing for it",
        security: secured, parameters: [serviceParam],
        responses: { ...ok("the name of the removed service", { type: "object", properties: { removed: { type: "string" } } }), ...errors(...mutating, "DECLARED_IN_CONFIG") },
      },
    },
    "/v1/events": { get: { summary: "Event history (promotions, switchovers, detaches, rejoins, membership changes, Envoy's rejections)", parameters: [{ name: "service", in: "query", required: false, schema: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" } }], responses: { ...ok("events, oldest first", { type: "object", properties: { events: { type: "array", items: { $ref: "#/components/schemas/Event" } } } }), ...errors(...anyRequest) } } },
    "/v1/services/{service}/promote": { post: {
      summary: "Planned switchover: promote a replica (the best one if none is named); the old primary becomes a replica, and is taken out of sync (detached) once its client connections that carried bytes are closed (Envoy does not flush them to it)",
      security: secured, parameters: [serviceParam],
      requestBody: { required: false, content: { "application/json": { schema: { type: "object", additionalProperties: false, properties: { member: { type: "string" } } } } } },
      responses: { ...ok("the service after the switchover", service), ...errors(...mutating, ...withBody, "NO_SUCH_MEMBER", "NOT_PROMOTABLE", "IS_PRIMARY", "NO_CANDIDATE") },
    } },
    "/v1/services/{service}/members": { post: {
      summary: "Add a replica (started from the primary's state)", security: secured, parameters: [serviceParam],
      requestBody: { required: true, content: { "application/json": { schema: { type: "object", additionalProperties: false, required: ["name", "address"], properties: { name: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" }, address } } } } },
      responses: { ...ok("the service with the new replica (not promotable before a health check of this controller found it up)", service, "201"), ...errors(...mutating, ...withBody, "DUPLICATE") },
    } },
    "/v1/services/{service}/members/{member}": { delete: {
      summary: "Remove a member (not the primary)", security: secured, parameters: [serviceParam, memberParam],
      responses: { ...ok("the service without the member", service), ...errors(...mutating, "NO_SUCH_MEMBER", "IS_PRIMARY") },
    } },
    "/v1/services/{service}/members/{member}/rejoin": { post: {
      summary: "Take back a stale, detached or diverged member as a replica, after reseeding it from the primary's state",
      description: "The member joins: it answers once every relay the controller reaches feeds it, so a connection opened after the answer reaches it; it is a replica (promotable) once no connection opened before is still open.",
      security: secured, parameters: [serviceParam, memberParam],
      responses: { ...ok("the service with the member as a replica", service), ...errors(...mutating, "NO_SUCH_MEMBER", "DUPLICATE") },
    } },
  },
  components: {
    securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
    schemas: {
      Error: { type: "object", required: ["error"], properties: { error: { type: "object", required: ["code", "message"], properties: { code: { type: "string", enum: Object.keys(API_ERRORS) }, message: { type: "string" }, leader: { type: ["string", "null"], description: "NOT_LEADER only: the leader's API base URL" } } } } },
      NewMember: { type: "object", additionalProperties: false, required: ["name", "address"], properties: { name: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" }, address } },
      Member: { type: "object", properties: { name: { type: "string" }, address: { type: "string" }, role: { type: "string", enum: ["primary", "replica", "joining", "stale", "detached", "diverged"] }, alive: { type: ["boolean", "null"], description: "up or down by this controller's own health checks; null until they decide (after a start or when added): not promotable before" }, lagBytes: { type: "integer" }, rttMs: { type: ["number", "null"] } } },
      Service: { type: "object", properties: {
        name: { type: "string" }, primary: { type: ["string", "null"] },
        successor: { type: ["string", "null"], description: "the member Envoy sends new connections to if the primary fails (EDS priority 1), and the controller then promotes" },
        listener: { type: ["string", "null"], description: "the address of the listener the controller serves for it (LDS), if any" },
        mode: { type: "string", enum: ["mirror", "session"], description: "how its connections are carried (docs/SESSION.md)" },
        members: { type: "array", items: { $ref: "#/components/schemas/Member" } }, lastFailover: { type: ["object", "null"] },
        xds: { type: ["object", "null"], description: "what Envoy did with the service's endpoints: the version served, the version last applied, and the latest rejection (until a later version is applied)", properties: {
          version: { type: ["string", "null"] }, acceptedVersion: { type: ["string", "null"] },
          rejected: { type: ["object", "null"], properties: { version: { type: "string" }, message: { type: "string" }, at: { type: "string", format: "date-time" } } },
        } },
      } },
      Event: { type: "object", properties: { at: { type: "string", format: "date-time" }, service: { type: "string" }, kind: { type: "string" }, member: { type: "string" }, detail: { type: "string" }, takeover: { type: "object", description: "kind \"takeover\" (session mode): the relay moved the open connections of `from` to `to`", properties: { from: { type: "string" }, to: { type: "string" }, carried: { type: "integer" }, reset: { type: "integer" }, relayAt: { type: "string", format: "date-time" }, relay: { type: "string" } } } } },
    },
  },
} as const;
