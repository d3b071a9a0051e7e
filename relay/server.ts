// The relay process's parts put together: the gRPC server (Node's HTTP/2: grpc-h2-server.ts)
// that accepts one stream per client connection, or shared streams of many as channels, the
// shared byte budget, the metrics endpoint, each service's replica set, and the session-mode
// tunnels (CONNECT streams on the same port) with each service's leader. Every start has a new instance id (in /stats and the service view): a relay that
// restarted lost its connections' sessions, and the controller must be able to tell.
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { randomBytes } from "node:crypto";
import { parseReplicas, RelayConfigError, type RelayConfig, type ReplicaTarget } from "./config.ts";
import { ReplicaSets, type ServiceView } from "./replica-sets.ts";
import { RelayMetrics } from "./metrics.ts";
import { ByteBudget } from "./budget.ts";
import { MirrorSession } from "./mirror-session.ts";
import { checkControlAuth } from "./control-auth.ts";
import { listenGrpcH2, MIRROR_METHOD_PATH, CHANNELS_METHOD_PATH } from "./grpc-h2-server.ts";
import { SessionLeaders, type TakeoverEvent } from "./session-leaders.ts";
import { SessionConnection } from "./session-connection.ts";
import { NAME } from "../config/address.ts";

const identity = (b: Buffer) => b;
/** lockstep.mirror.v1.Mirror/Stream and /Channels, carrying raw frames (docs/wire-format.md), no protobuf, as
 *  a gRPC library's service definition: what a gRPC client (the tests' @grpc/grpc-js) needs to
 *  call the relay, or to serve the method in its place. */
const bidiRawMethod = (path: string) => ({
  path,
  requestStream: true,
  responseStream: true,
  requestSerialize: identity, requestDeserialize: identity,
  responseSerialize: identity, responseDeserialize: identity,
});
export const MIRROR_SERVICE = {
  Stream: bidiRawMethod(MIRROR_METHOD_PATH),
  Channels: bidiRawMethod(CHANNELS_METHOD_PATH),
};

/** Largest frame accepted: a DATA frame carries at most one Envoy read (Envoy reads up to 1 MiB at a time). */
const MAX_FRAME_BYTES = 64 << 20;

export interface RelayServer {
  readonly grpcPort: number;
  readonly metricsPort: number;
  readonly metrics: RelayMetrics;
  /** Random, new at every start. */
  readonly instance: string;
  /** Replace `service`'s replica set for connections that open from now on. */
  setReplicas(replicas: unknown, service: string, primary?: unknown, successor?: unknown): void;
  /** The service's set (null if none is known), its open connections, and in session mode its
   *  leader and takeovers. */
  view(service: string): RelayServiceView;
  close(): Promise<void>;
}

export interface RelayServiceView extends ServiceView {
  readonly instance: string;
  /** Session mode: the member session connections are led by now, its open connections and
   *  the takeovers (newest last, at most 100). */
  readonly session: { readonly leader: string | null; readonly open: number; readonly takeovers: readonly TakeoverEvent[] };
}

/** A CONNECT authority, "<service>" or "<service>:<port>", names the service. */
function serviceOfAuthority(authority: string): string | undefined {
  const name = authority.replace(/:\d+$/, "");
  return NAME.test(name) ? name : undefined;
}

const SERVICE_REPLICAS_PATH = /^\/v1\/services\/([A-Za-z0-9_-]{1,64})\/replicas$/;
const MAX_CONTROL_BODY_BYTES = 64 * 1024;

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_CONTROL_BODY_BYTES) { reject(new RelayConfigError(`body larger than ${MAX_CONTROL_BODY_BYTES} bytes`)); req.destroy(); return; }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

export async function startRelay(config: RelayConfig, log: (line: string) => void = () => {}): Promise<RelayServer> {
  const metrics = new RelayMetrics();
  const instance = randomBytes(8).toString("hex");
  const budget = new ByteBudget(config.limits.maxQueuedBytesTotal, metrics);
  const sets = new ReplicaSets(config.services);
  const leaders = new SessionLeaders(sets, metrics, log);
  const setReplicas = (raw: unknown, service: string, primary?: unknown, successor?: unknown) => {
    const next: readonly ReplicaTarget[] = parseReplicas(raw);
    if (primary !== undefined && (typeof primary !== "string" || !next.some((r) => r.name === primary))) {
      throw new RelayConfigError('"primary" must name a member of "replicas" (the service\'s primary, which the relay leaves out of its own connections)');
    }
    if (successor !== undefined && (typeof successor !== "string" || !next.some((r) => r.name === successor) || successor === primary || primary === undefined)) {
      throw new RelayConfigError('"successor" must name a member of "replicas" other than "primary" (who takes over session connections when the primary fails), and needs "primary"');
    }
    sets.set(service, next, primary as string | undefined, successor as string | undefined);
    leaders.primaryNamed(service, primary as string | undefined);
    log(`replica set of "${service}" now: ${next.map((r) => `${r.name}=${r.address}`).join(", ") || "(none)"}${primary ? `; primary ${primary}` : ""}${successor ? `; successor ${successor}` : ""}`);
  };
  const view = (service: string): RelayServiceView => ({
    ...sets.view(service), instance,
    session: { leader: leaders.leader(service) ?? null, open: leaders.openCount(service), takeovers: leaders.eventsOf(service) },
  });
  const ctx = { config, budget, metrics, log, sets };

  const grpc = await listenGrpcH2({
    host: config.listen.host,
    port: config.listen.port,
    streamWindowBytes: config.http2.streamWindowBytes,
    connectionWindowBytes: config.http2.connectionWindowBytes,
    maxMessageBytes: MAX_FRAME_BYTES,
    // A Stream call, or a channel of a Channels stream: one client connection's session either way.
    call: (call) => { new MirrorSession(call, ctx); },
    channelFrameDropped: () => metrics.channelFramesDropped.add(1),
    connect: (stream, authority) => {
      const service = serviceOfAuthority(authority);
      if (service === undefined) {
        log(`session connection refused: the CONNECT authority "${authority}" names no service (expected "<service>" or "<service>:<port>")`);
        stream.respond({ ":status": 400 }, { endStream: true });
        return;
      }
      new SessionConnection(stream, service, { ...ctx, leaders });
    },
    framingError: (err) => {
      metrics.protocolErrors.add(1);
      log(`protocol error: ${err.message}; stream closed`);
    },
  });

  const json = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body) + "\n");
  };
  // The control call the controller makes: PUT /v1/services/<service>/replicas {"replicas":[{name,address}]}.
  const control = async (req: IncomingMessage, res: ServerResponse, service: string) => {
    const auth = checkControlAuth(config.controlToken, req.headers.authorization);
    if (!auth.ok) return json(res, auth.status, { error: auth.message });
    try {
      let raw: unknown;
      try { raw = JSON.parse(await readBody(req)); }
      catch (err) { throw new RelayConfigError(err instanceof RelayConfigError ? err.message : `body is not valid JSON: ${(err as Error).message}`); }
      if (typeof raw !== "object" || raw === null || !("replicas" in raw)) throw new RelayConfigError('body must be {"replicas": [{"name", "address"}, ...], "primary"?: "<name>", "successor"?: "<name>"}');
      const body = raw as { replicas: unknown; primary?: unknown; successor?: unknown };
      setReplicas(body.replicas, service, body.primary, body.successor);
      json(res, 200, view(service));
    } catch (err) {
      if (!(err instanceof RelayConfigError)) throw err;
      json(res, 400, { error: err.message });
    }
  };
  const http: HttpServer = createHttpServer((req, res) => {
    const url = req.url ?? "/";
    const serviceReplicas = SERVICE_REPLICAS_PATH.exec(url.split("?")[0]);
    if (serviceReplicas && req.method === "PUT") { control(req, res, serviceReplicas[1]).catch(() => json(res, 500, { error: "internal error" })); return; }
    if (serviceReplicas && req.method === "GET") { json(res, 200, view(serviceReplicas[1])); return; }
    if (url.startsWith("/metrics")) { res.writeHead(200, { "content-type": "text/plain; version=0.0.4" }); res.end(metrics.prometheus()); }
    else if (url.startsWith("/stats")) { res.writeHead(200, { "content-type": "application/json" }); res.end(JSON.stringify({ instance, ...metrics.json() })); }
    else if (url.startsWith("/healthz")) { res.writeHead(200, { "content-type": "text/plain" }); res.end(`ok ${instance}\n`); }
    else { res.writeHead(404, { "content-type": "text/plain" }); res.end("not found: try /metrics, /stats, /healthz or /v1/services/<service>/replicas\n"); }
  });
  await new Promise<void>((resolve, reject) => { http.once("error", reject); http.listen(config.metrics.port, config.metrics.host, () => resolve()); });
  const metricsPort = (http.address() as AddressInfo).port;

  return {
    grpcPort: grpc.port, metricsPort, metrics, instance,
    view,
    setReplicas,
    async close() {
      await grpc.close();
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}
