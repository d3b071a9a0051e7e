// Every error the HTTP API returns: a stable code, its HTTP status, and a message. Responses
// are `{ "error": { "code", "message" } }`. docs and tests read this table.
import { ModelError } from "../model/service.ts";
import { StoreUnavailableError, NotLeaderError } from "../store/store-writer.ts";

export const API_ERRORS = {
  UNAUTHORIZED: { status: 401, summary: "missing or wrong bearer token on a mutating call" },
  BAD_REQUEST: { status: 400, summary: "the body, a parameter or the request itself has the wrong shape or type (an address must be an IP literal and a port: see docs/CONTROLLER.md)" },
  BAD_PATH: { status: 400, summary: "a path segment is not valid percent-encoded UTF-8" },
  BAD_ENCODING: { status: 400, summary: "the body cannot be decoded with its Content-Encoding (corrupt gzip, deflate or br data)" },
  PAYLOAD_TOO_LARGE: { status: 413, summary: "the body is larger than 16 KiB (after decompression)" },
  UNSUPPORTED_ENCODING: { status: 415, summary: "the body's Content-Encoding (identity, gzip, deflate, br) or charset (UTF-8) is not one the API reads" },
  HEADERS_TOO_LARGE: { status: 431, summary: "the request's headers are larger than the server accepts" },
  REQUEST_TIMEOUT: { status: 408, summary: "the request was not received in full in time" },
  UNKNOWN_SERVICE: { status: 404, summary: "no service by that name" },
  NO_SUCH_MEMBER: { status: 404, summary: "the service has no member by that name" },
  NOT_FOUND: { status: 404, summary: "no such route" },
  METHOD_NOT_ALLOWED: { status: 405, summary: "the route exists, not with this method (the Allow header lists those it takes)" },
  NOT_PROMOTABLE: { status: 409, summary: "only a live, in-sync replica that a health check of this controller found up can be promoted" },
  IS_PRIMARY: { status: 409, summary: "the operation does not apply to the primary" },
  NO_CANDIDATE: { status: 409, summary: "no live, in-sync replica to promote" },
  DUPLICATE: { status: 409, summary: "a service or member by that name (or a member at that address, in any spelling) exists, or the member is already in that role" },
  DECLARED_IN_CONFIG: { status: 409, summary: "the service comes from the controller's config file: remove it there (it would be declared again at the next start)" },
  STORE_UNAVAILABLE: { status: 503, summary: "the store cannot be written; the call changed nothing (GET /v1/services shows the store's state)" },
  NOT_LEADER: { status: 421, summary: "with an etcd store, only the elected controller takes changes: the call changed nothing; `error.leader` is the leader's API base URL (null while none leads): send it there" },
  INTERNAL: { status: 500, summary: "a fault of the controller; it is logged with its stack" },
} as const;

export type ApiErrorCode = keyof typeof API_ERRORS;

export class ApiError extends Error {
  /** `detail`: more fields of the error object (NOT_LEADER: `leader`). */
  constructor(readonly code: ApiErrorCode, message: string, readonly detail: Record<string, unknown> = {}) { super(message); }
  get status(): number { return API_ERRORS[this.code].status; }
  body() { return { error: { code: this.code, message: this.message, ...this.detail } }; }
}

/** The coded error for what went wrong with a request, or undefined for a fault of the controller.
 *  Model and store errors carry their codes; express and its body parser signal bad input with
 *  a 4xx `status` (and a `type`), or a URIError for a path segment that does not decode. */
export function toApiError(err: unknown, maxBodyBytes: number): ApiError | undefined {
  if (err instanceof ApiError) return err;
  if (err instanceof ModelError) return new ApiError(err.code, err.message);
  if (err instanceof StoreUnavailableError) return new ApiError("STORE_UNAVAILABLE", err.message);
  if (err instanceof NotLeaderError) return new ApiError("NOT_LEADER", err.message, { leader: null });
  const e = err as { type?: string; status?: number; code?: string; message?: string };
  if (typeof e?.status !== "number" || e.status < 400 || e.status >= 500) return undefined;
  if (err instanceof URIError) return new ApiError("BAD_PATH", `${e.message}: a path segment must be percent-encoded UTF-8`);
  switch (e.type) {
    case "entity.too.large": return new ApiError("PAYLOAD_TOO_LARGE", `the body is larger than ${maxBodyBytes} bytes`);
    case "entity.parse.failed": return new ApiError("BAD_REQUEST", `the body is not valid JSON: ${e.message}`);
    case "encoding.unsupported": case "charset.unsupported": return new ApiError("UNSUPPORTED_ENCODING", `${e.message}: the API reads JSON in UTF-8, plain or with Content-Encoding gzip, deflate or br`);
  }
  if (e.code?.startsWith("Z_")) return new ApiError("BAD_ENCODING", `the body does not decode with its Content-Encoding: ${e.message}`);
  return new ApiError("BAD_REQUEST", `the request was not read in full: ${e.message}`);
}
