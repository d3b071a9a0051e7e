// Who may change the relay's replica sets (PUT /v1/services/<service>/replicas): only a caller
// holding the relay's controlToken. A relay without one refuses every control call, so an
// unconfigured relay cannot be pointed at another process's replicas by anyone on the host.
// Tokens are compared as SHA-256 digests in constant time (equal lengths, no early exit).
import { createHash, timingSafeEqual } from "node:crypto";

export type ControlVerdict = { readonly ok: true } | { readonly ok: false; readonly status: 401 | 403; readonly message: string };

const digest = (text: string) => createHash("sha256").update(text).digest();

export function checkControlAuth(controlToken: string | undefined, authorization: string | undefined): ControlVerdict {
  if (controlToken === undefined) {
    return { ok: false, status: 403, message: "control calls are disabled: this relay has no controlToken in its config" };
  }
  const given = /^Bearer (.+)$/.exec(authorization ?? "")?.[1];
  if (given === undefined || !timingSafeEqual(digest(given), digest(controlToken))) {
    return { ok: false, status: 401, message: "this call needs the header Authorization: Bearer <controlToken> with the relay's controlToken" };
  }
  return { ok: true };
}
