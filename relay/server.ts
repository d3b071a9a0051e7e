// The relay process's parts put together: the gRPC server that accepts one stream per
// client connection, the shared byte budget, the metrics endpoint, and the replica set.
import { Server, ServerCredentials, type ServiceDefinition, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { parseReplicas, type RelayConfig, type ReplicaTarget } from "./config.ts";
import { RelayMetrics } from "./metrics.ts";
import { ByteBudget } from "./budget.ts";
import { MirrorSession, type MirrorCall } from "./mirror-session.ts";
import { resolveTargets } from "./endpoints.ts";

const identity = (b: Buffer) => b;
/** lockstep.mirror.v1.Mirror/Stream, carrying raw frames (docs/wire-format.md), no protobuf. */
export const MIRROR_SERVICE: ServiceDefinition = {
  Stream: {
    path: "/lockstep.mirror.v1.Mirror/Stream",
    requestStream: true,
    responseStream: true,
    requestSerialize: identity, requestDeserialize: identity,
    responseSerialize: identity, responseDeserialize: identity,
  },
};

/** Largest frame accepted: a DATA frame carries at most one Envoy read (Envoy reads up to 1 MiB at a time). */
const MAX_FRAME_BYTES = 64 << 20;

export interface RelayServer {
  readonly grpcPort: number;
  readonly metricsPort: number;
  readonly metrics: RelayMetrics;
  /** Replace the replica set for connections that open from now on. */
  setReplicas(replicas: unknown): Promise<void>;
  replicas(): readonly ReplicaTarget[];
  close(): Promise<void>;
}

export async function startRelay(config: RelayConfig, log: (line: string) => void = () => {}): Promise<RelayServer> {
  const metrics = new RelayMetrics();
  const budget = new ByteBudget(config.limits.maxQueuedBytesTotal, metrics);
  let replicas = config.replicas;
  await resolveTargets(replicas);
  const ctx = { config, budget, metrics, log, replicas: () => replicas };

  const grpc = new Server({
    "grpc.max_receive_message_length": MAX_FRAME_BYTES,
    "grpc.max_send_message_length": MAX_FRAME_BYTES,
  });
  const impl: UntypedServiceImplementation = { Stream: (call: MirrorCall) => { new MirrorSession(call, ctx); } };
  grpc.addService(MIRROR_SERVICE, impl);
  const grpcPort = await new Promise<number>((resolve, reject) =>
    grpc.bindAsync(`${config.listen.host}:${config.listen.port}`, ServerCredentials.createInsecure(), (err, port) => err ? reject(err) : resolve(port)));

  const http: HttpServer = createHttpServer((req, res) => {
    const url = req.url ?? "/";
    if (url.startsWith("/metrics")) { res.writeHead(200, { "content-type": "text/plain; version=0.0.4" }); res.end(metrics.prometheus()); }
    else if (url.startsWith("/stats")) { res.writeHead(200, { "content-type": "application/json" }); res.end(JSON.stringify(metrics.json())); }
    else if (url.startsWith("/healthz")) { res.writeHead(200, { "content-type": "text/plain" }); res.end("ok\n"); }
    else { res.writeHead(404, { "content-type": "text/plain" }); res.end("not found: try /metrics, /stats or /healthz\n"); }
  });
  await new Promise<void>((resolve, reject) => { http.once("error", reject); http.listen(config.metrics.port, config.metrics.host, () => resolve()); });
  const metricsPort = (http.address() as AddressInfo).port;

  return {
    grpcPort, metricsPort, metrics,
    replicas: () => replicas,
    async setReplicas(raw) {
      const next = parseReplicas(raw);
      await resolveTargets(next);
      replicas = next;
      log(`replica set now: ${next.map((r) => `${r.name}=${r.address}`).join(", ") || "(none)"}`);
    },
    async close() {
      await new Promise<void>((resolve) => grpc.tryShutdown(() => resolve()));
      await new Promise<void>((resolve) => http.close(() => resolve()));
    },
  };
}
