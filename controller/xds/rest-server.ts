// Serves snapshots to Envoy over REST-JSON with long-poll: a request whose version_info is the
// current version is held until a newer snapshot is published (or until just before Envoy's
// request_timeout), so a decision reaches Envoy over an already open request. Measured in
// docs/notes/xds-transport.md: p50 3.6 ms, p99 8.2 ms from decision to traffic.
//
// Rejections. Envoy's REST subscription sends no error_detail when it rejects a response (it
// logs "REST config for ... rejected: <why>" and asks again, after refresh_delay, with the version
// it still has). So a rejection is a request, on the connection that was just answered with
// version V of some resources, that asks for them again with another version; error_detail,
// if an Envoy sends it, says so too. A rejected version is reported once per cluster
// (onRejected), shown by status(), and never served to that request again: the request is held
// like a long-poll until a newer snapshot is published (answered at once), or until the hold
// ends (then V is sent again, so Envoy retries at most once per hold, not in a hot loop).
import express, { type NextFunction, type Request, type Response, type Router } from "express";
import type { Socket } from "node:net";
import { TYPE_URL, REST_PATH, type DiscoveryRequest, type DiscoveryResponse, type TypeUrl } from "./resources.ts";
import type { Snapshot } from "./snapshot.ts";

export interface XdsRestOptions {
  /** Hold a request at most this long; keep below Envoy's request_timeout (bootstrap: 5 s). */
  holdMs?: number;
  /** Called once per cluster and rejected version. */
  onRejected?: (rejection: XdsRejection) => void;
  /** Whether version `a` is newer than `b`, when versions are ordered (several controllers
   *  serve one store: controller/xds/ordered-version.ts); by default they are not. */
  newer?: (a: string, b: string) => boolean;
}

export interface XdsRejection { readonly cluster: string; readonly version: string; readonly message: string }

/** What Envoy did with a cluster's snapshots, as last reported by a request for it. */
export interface XdsStatus {
  /** The version served now (null: the cluster is in no snapshot). */
  readonly version: string | null;
  /** The latest version an Envoy said it applied. */
  readonly acceptedVersion: string | null;
  /** The latest version an Envoy rejected, until one published after it is applied. */
  readonly rejected: { readonly version: string; readonly message: string; readonly at: string } | null;
}

interface ClusterReport { acceptedVersion: string | null; rejected: XdsStatus["rejected"] }

export class XdsRestServer {
  private snapshot?: Snapshot;
  private waiting = new Set<() => void>();
  /** Per connection from Envoy: the version last sent for each set of resource names. */
  private readonly sent = new WeakMap<Socket, Map<string, string>>();
  private readonly reports = new Map<string, ClusterReport>();
  private encodings: { snapshot?: Snapshot; bodies: Map<string, string> } = { bodies: new Map() };
  readonly holdMs: number;
  /** Requests answered, those answered because a new snapshot was published, and rejections seen. */
  readonly counters = { requests: 0, pushes: 0, rejections: 0 };

  constructor(private readonly options: XdsRestOptions = {}) { this.holdMs = options.holdMs ?? 4000; }

  get version(): string | undefined { return this.snapshot?.version; }
  /** The snapshot served now. */
  get current(): Snapshot | undefined { return this.snapshot; }

  /** Make `snapshot` current and answer every held request with it. */
  publish(snapshot: Snapshot): void {
    this.snapshot = snapshot;
    for (const push of [...this.waiting]) push();
  }

  status(cluster: string): XdsStatus {
    const report = this.reports.get(cluster);
    return {
      version: this.snapshot?.endpoints.has(cluster) ? this.snapshot.version : null,
      acceptedVersion: report?.acceptedVersion ?? null,
      rejected: report?.rejected ?? null,
    };
  }

  router(): Router {
    const router = express.Router();
    for (const type of Object.values(TYPE_URL)) {
      // A RegExp: in a path string, Express reads ":listeners" as a parameter.
      router.post(new RegExp(`^${REST_PATH[type].replace(/[.:]/g, "\\$&")}$`), express.json({ limit: "1mb", type: () => true }), (req: Request, res: Response) => this.serve(type, req, res));
    }
    router.use((err: { status?: number; message?: string }, _req: Request, res: Response, _next: NextFunction) => {
      const status = typeof err.status === "number" && err.status >= 400 && err.status < 500 ? err.status : 500;
      res.status(status).json({ message: `not a DiscoveryRequest: ${err.message ?? String(err)}` });
    });
    return router;
  }

  /** One DiscoveryRequest of `type`: answered at once if the Envoy lacks the current version,
   *  else held (long-poll). */
  private serve(type: TypeUrl, req: Request, res: Response): void {
    const body = (req.body ?? {}) as DiscoveryRequest;
    if (typeof body !== "object" || Array.isArray(body) || (body.version_info !== undefined && typeof body.version_info !== "string")
      || (body.resource_names !== undefined && (!Array.isArray(body.resource_names) || body.resource_names.some((n) => typeof n !== "string")))) {
      res.status(400).json({ message: "not a DiscoveryRequest: version_info must be a string, resource_names a list of strings" });
      return;
    }
    const key = `${type} ${body.resource_names?.length ? [...body.resource_names].sort().join(",") : "*"}`;
    const sentHere = this.sent.get(req.socket) ?? new Map<string, string>();
    this.sent.set(req.socket, sentHere);
    const lastSent = sentHere.get(key);
    // A version newer than the one sent here came from another controller: not a rejection.
    const fromElsewhere = !!body.version_info && lastSent !== undefined && !!this.options.newer?.(body.version_info, lastSent);
    const rejected = body.error_detail ? lastSent ?? this.snapshot?.version
      : lastSent !== undefined && body.version_info !== lastSent && !fromElsewhere ? lastSent : undefined;
    if (rejected !== undefined) this.rejected(type, body, rejected);
    else if (body.version_info) this.accepted(type, body, body.version_info);

    const answer = () => {
      if (res.writableEnded) return;
      this.counters.requests++;
      const snap = this.snapshot;
      if (!snap) { res.status(503).json({ message: "no snapshot published yet" }); return; }
      sentHere.set(key, snap.version);
      res.type("application/json").send(this.encoded(snap, type, key, body.resource_names));
    };
    // Held while there is nothing newer than what this Envoy has or just rejected, and while
    // this controller is behind the Envoy (it has a version from another controller that this
    // one has not seen yet: answering would take the Envoy back).
    const behind = () => !!body.version_info && !!this.snapshot && !!this.options.newer?.(body.version_info, this.snapshot.version);
    const hold = () => !!this.snapshot && (this.snapshot.version === (rejected ?? body.version_info) || behind());
    if (!hold()) return answer();
    let timer: NodeJS.Timeout | undefined;
    const push = () => {
      if (hold()) return;
      clearTimeout(timer);
      this.waiting.delete(push);
      this.counters.pushes++;
      answer();
    };
    timer = setTimeout(() => {
      this.waiting.delete(push);
      if (behind()) { res.status(503).json({ message: "this controller has not seen the version the request holds yet; ask again" }); return; }
      answer();
    }, this.holdMs);
    this.waiting.add(push);
    // The response's close (not the request's, which fires once the body is read): Envoy went away.
    res.on("close", () => { clearTimeout(timer); this.waiting.delete(push); });
  }

  /** The response for `names` ("*": all) from `snap`, encoded once per snapshot and set of
   *  names: many subscribers of one snapshot cost one serialization, not one each. */
  private encoded(snap: Snapshot, type: TypeUrl, key: string, requested: string[] | undefined): string {
    if (this.encodings.snapshot !== snap) this.encodings = { snapshot: snap, bodies: new Map() };
    let text = this.encodings.bodies.get(key);
    if (text === undefined) {
      const all: ReadonlyMap<string, object> = type === TYPE_URL.ENDPOINTS ? snap.endpoints : type === TYPE_URL.LISTENERS ? snap.listeners : snap.clusters;
      const names = requested?.length ? requested : [...all.keys()];
      const response: DiscoveryResponse = {
        version_info: snap.version,
        type_url: type,
        resources: names.flatMap((n) => (all.has(n) ? [all.get(n)!] : [])),
      };
      text = JSON.stringify(response);
      this.encodings.bodies.set(key, text);
    }
    return text;
  }

  /** What a request's verdict is reported under: each EDS cluster it names (all: every one), or
   *  "listeners" / "clusters" for LDS and CDS (whose requests name no resource). */
  private reportedAs(type: TypeUrl, body: DiscoveryRequest): string[] {
    if (type === TYPE_URL.LISTENERS) return ["listeners"];
    if (type === TYPE_URL.CLUSTERS) return ["clusters"];
    return body.resource_names?.length ? body.resource_names : [...(this.snapshot?.endpoints.keys() ?? [])];
  }

  private report(cluster: string): ClusterReport {
    let r = this.reports.get(cluster);
    if (!r) this.reports.set(cluster, (r = { acceptedVersion: null, rejected: null }));
    return r;
  }

  private accepted(type: TypeUrl, body: DiscoveryRequest, version: string): void {
    for (const cluster of this.reportedAs(type, body)) {
      const r = this.report(cluster);
      r.acceptedVersion = version;
      if (r.rejected && r.rejected.version !== version) r.rejected = null;
    }
  }

  private rejected(type: TypeUrl, body: DiscoveryRequest, version: string): void {
    this.counters.rejections++;
    const node = body.node?.id ? `Envoy "${body.node.id}"` : "Envoy";
    const message = body.error_detail?.message
      ? `${node} rejected version ${version}: ${body.error_detail.message}`
      : `${node} did not apply version ${version} and asked again with ${body.version_info ? `version ${body.version_info}` : "no version"}: ` +
        `it rejected it (Envoy's log says why: "REST config for ${REST_PATH[type]} rejected: ...")`;
    for (const cluster of this.reportedAs(type, body)) {
      const r = this.report(cluster);
      if (r.rejected?.version === version) continue;
      r.rejected = { version, message, at: new Date().toISOString() };
      this.options.onRejected?.({ cluster, version, message });
    }
  }
}
