// Snapshot versions when several controllers serve one replicated store: "<revision>.<content>",
// the etcd revision of the stored state the snapshot was built from, then its content hash.
// An Envoy may ask any controller; one that has not yet seen the revision the Envoy holds
// waits for it instead of answering with an older snapshot (xds/rest-server.ts), so no Envoy
// is ever taken back to endpoints a later decision replaced. One controller on a file store
// uses the content hash alone (snapshot.ts).
import { contentVersion, type ServiceEndpoints } from "./snapshot.ts";

export function orderedVersion(revision: number, endpoints: readonly ServiceEndpoints[]): string {
  return `${revision}.${contentVersion(endpoints)}`;
}

function revisionOf(version: string): number | undefined {
  const m = /^(\d+)\./.exec(version);
  return m ? Number(m[1]) : undefined;
}

/** Whether `a` was built from a later stored state than `b` (false if either is not ordered). */
export function newerVersion(a: string, b: string): boolean {
  const [ra, rb] = [revisionOf(a), revisionOf(b)];
  return ra !== undefined && rb !== undefined && ra > rb;
}
