// Every error the HTTP API returns: a stable code, its HTTP status, and a message. Responses
// are `{ "error": { "code", "message" } }`. docs and tests read this table.
import { ModelError } from "../model/service.ts";
import { StoreUnavailableError } from "../store/store-writer.ts";

export const API_ERRORS = {
  UNAUTHORIZED: { status: 401, summary: "missing or wrong bearer token on a mutating call" },
  BAD_REQUEST: { status: 400, summary: "the body or a parameter has the wrong shape or type" },
  PAYLOAD_TOO_LARGE: { status: 413, summary: "the body is larger than 16 KiB" },
  UNKNOWN_SERVICE: { status: 404, summary: "no service by that name" },
  NO_SUCH_MEMBER: { status: 404, summary: "the service has no member by that name" },
  NOT_PROMOTABLE: { status: 409, summary: "only a live, in-sync replica that a health check of this controller found up can be promoted" },
  IS_PRIMARY: { status: 409, summary: "the operation does not apply to the primary" },
  NO_CANDIDATE: { status: 409, summary: "no live, in-sync replica to promote" },
  DUPLICATE: { status: 409, summary: "a service or member by that name (or a member at that address) exists, or the member is already in that role" },
  NOT_FOUND: { status: 404, summary: "no such route" },
  STORE_UNAVAILABLE: { status: 503, summary: "the store cannot be written; the call changed nothing (GET /v1/services shows the store's state)" },
} as const;

export type ApiErrorCode = keyof typeof API_ERRORS;

export class ApiError extends Error {
  constructor(readonly code: ApiErrorCode, message: string) { super(message); }
  get status(): number { return API_ERRORS[this.code].status; }
  body() { return { error: { code: this.code, message: this.message } }; }
}

/** Model and store errors carry their codes. */
export function toApiError(err: unknown): ApiError | undefined {
  if (err instanceof ApiError) return err;
  if (err instanceof ModelError) return new ApiError(err.code, err.message);
  if (err instanceof StoreUnavailableError) return new ApiError("STORE_UNAVAILABLE", err.message);
  return undefined;
}
