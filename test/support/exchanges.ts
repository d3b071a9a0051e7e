// The two checks every mirror test makes, by connection id (the first 16 bytes a client sent):
// the client's exchange with the primary is exact, and a replica got the client's bytes exactly.
import { expect } from "vitest";
import type { Hash } from "node:crypto";
import type { RecordingBackend } from "./backends.ts";
import type { ClientResult } from "./clients.ts";

export const hex = (hash: Hash) => hash.copy().digest("hex");

/** The primary received every byte each client sent, and each client received exactly what the primary sent. */
export function expectExactWithPrimary(primary: RecordingBackend, results: ClientResult[]): void {
  const byHead = primary.byHead();
  const wrong = results.filter((r) => {
    const rec = byHead.get(r.idHex);
    return r.error !== undefined || !rec || rec.received !== r.sentBytes || hex(rec.receivedHash) !== r.sentHash ||
      rec.sent !== r.receivedBytes || hex(rec.sentHash) !== r.receivedHash;
  });
  expect(wrong.map((w) => `${w.idHex}${w.error ? ` (${w.error})` : ""}`), "client exchanges that differ from the primary's").toEqual([]);
}

/** `replica` received, on one connection each, exactly the bytes each client sent. */
export function expectMirrored(replica: RecordingBackend, results: ClientResult[]): void {
  const byHead = replica.byHead();
  const wrong = results.filter((r) => {
    const rec = byHead.get(r.idHex);
    return !rec || rec.received !== r.sentBytes || hex(rec.receivedHash) !== r.sentHash;
  });
  expect(wrong.map((w) => w.idHex), `${replica.name}: connections whose bytes differ`).toEqual([]);
}
