// The controller process's parts put together: the store and state (a file locked by one
// controller, or etcd shared by several, one elected to decide: controller/leader/), the HTTP
// API (127.0.0.1 unless configured otherwise), the xDS endpoint Envoy polls, health checks, and
// the links to the relays and Envoys. `startController` is what controller/main.ts, the demo
// and the tests run.
import express from "express";
import { randomUUID } from "node:crypto";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { ControllerState } from "./state.ts";
import { FileStore } from "./store/file-store.ts";
import { StoreLock } from "./store/store-lock.ts";
import { validateStoredState, type StoredState } from "./store/stored-state.ts";
import type { EtcdStoreSpec } from "./store/etcd-store.ts";
import { Fleet } from "./leader/fleet.ts";
import { newerVersion } from "./xds/ordered-version.ts";
import { ApiError } from "./api/errors.ts";
import { createApiRouter } from "./api/routes.ts";
import { answerClientErrors } from "./api/client-errors.ts";
import { XdsRestServer } from "./xds/rest-server.ts";
import { RelayClient } from "./relay/client.ts";
import { EnvoyAdminClient } from "./evidence/envoy-admin.ts";
import { Controller } from "./controller.ts";
import { HEALTH_DEFAULTS, type HealthSettings } from "./health/checker.ts";
import type { Probe } from "./health/probe.ts";
import { PersistentProbe } from "./health/persistent-probe.ts";
import type { Service } from "./model/service.ts";
import { listenerResource, primaryClusterName, primaryClusterResource } from "../config/envoy-resources.ts";
import { DEFAULT_LIMITS } from "../config/lockstep-config.ts";

/** What the listeners the controller serves are made of (the same for every service). */
export interface DynamicSettings {
  /** The filter's .wasm file, as a path Envoy can read. */
  readonly wasmPath: string;
  readonly maxInflightBytesPerConnection?: number;
  readonly maxInflightBytesTotal?: number;
  /** The reply check (default on). */
  readonly compareReplies?: boolean;
  /** The filter's shared mirror streams per Envoy worker (default 1): one per relay process. */
  readonly mirrorStreams?: number;
}

export interface ControllerSettings {
  /** Services declared at boot (kept as stored if the store already knows them). */
  readonly services: readonly { service: Service; health: HealthSettings }[];
  readonly api: { readonly host: string; readonly port: number };
  readonly xds: { readonly host: string; readonly port: number };
  /** Bearer token for mutating API calls. */
  readonly token: string;
  /** The file store (one controller), unless `etcd` is given. */
  readonly storePath: string;
  /** A store shared by several controllers: etcd. */
  readonly etcd?: EtcdStoreSpec;
  /** With etcd: the base URL of this controller's API, as the others tell clients (default
   *  http://<api host>:<api port>). */
  readonly advertise?: string;
  /** Base URL of the relay's HTTP port (metrics and control), and its control token if any. */
  readonly relay: { readonly url: string; readonly token?: string };
  /** Base URLs of every relay of the services (one per Envoy), when there are several; the
   *  control token is `relay.token`. */
  readonly relays?: readonly string[];
  /** Admin addresses ("ip:port") of the Envoys running the services: their filters' evidence
   *  and health-check verdicts. Without any, a relay restart puts every replica out of sync. */
  readonly envoyAdmins?: readonly string[];
  readonly relayPollMs?: number;
  /** Serve services' listeners and primary clusters to Envoy too (LDS, CDS): a service declared
   *  with a "listener" needs no bootstrap change (config/envoy-bootstrap.ts renderDynamicBootstrap). */
  readonly dynamic?: DynamicSettings;
  readonly probe?: Probe;
  readonly log?: (line: string) => void;
}

export interface RunningController {
  readonly apiPort: number;
  readonly xdsPort: number;
  readonly state: ControllerState;
  readonly controller: Controller;
  readonly xds: XdsRestServer;
  close(): Promise<void>;
}

async function listen(app: express.Express, host: string, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host, () => resolve(server));
    server.once("error", reject);
  });
}

export async function startController(settings: ControllerSettings): Promise<RunningController> {
  const log = settings.log ?? (() => {});
  if (settings.etcd) {
    const self = { id: randomUUID(), api: settings.advertise ?? `http://${settings.api.host.includes(":") ? `[${settings.api.host}]` : settings.api.host}:${settings.api.port}` };
    const fleet = await Fleet.join(settings.etcd, self, log);
    try {
      return await assemble(settings, log, fleet, async () => { await fleet.close(); });
    } catch (err) {
      await fleet.close();
      throw err;
    }
  }
  const lock = StoreLock.acquire(settings.storePath);
  try {
    return await assemble(settings, log, undefined, async () => lock.release());
  } catch (err) {
    lock.release();
    throw err;
  }
}

async function assemble(settings: ControllerSettings, log: (line: string) => void, fleet: Fleet | undefined, release: () => Promise<void>): Promise<RunningController> {
  const state = new ControllerState(fleet ? fleet.stateStore() : new FileStore<StoredState>(settings.storePath, validateStoredState), { log });
  const health = new Map(settings.services.map((s) => [s.service.name, s.health]));
  // A service declared through the API keeps its health-check payload in the store.
  const healthOf = (service: string): HealthSettings => health.get(service) ?? { ...HEALTH_DEFAULTS, ...state.get(service)?.healthCheck };
  const configured = new Set(settings.services.map((s) => s.service.name));
  // With etcd, only the leader declares them (when elected): a follower changes nothing.
  const declareConfigured = () => { for (const { service } of settings.services) state.declare(service); };
  declareConfigured();
  const serviceOfCluster = (cluster: string) => state.list().find((s) => primaryClusterName(s.name) === cluster)?.name;
  const xds = new XdsRestServer({
    ...(fleet ? { newer: newerVersion } : {}),
    onRejected: ({ cluster, version, message }) => {
      log(`xds: ${cluster}: ${message}`);
      const service = serviceOfCluster(cluster);
      if (service) state.recordXdsRejection(service, `snapshot ${version} of ${cluster}: ${message}`);
    },
  });
  // Probes keep a connection to each member, like Envoy's: one closing means it restarted.
  const persistent = settings.probe ? undefined : new PersistentProbe(() => controller.probeNow());
  const relays = settings.relays?.length
    ? settings.relays.map((url) => new RelayClient(url, settings.relay.token, undefined, `relay ${new URL(url).host}`))
    : new RelayClient(settings.relay.url, settings.relay.token);
  const controller: Controller = new Controller({
    state, xds, leadership: fleet,
    relay: relays,
    envoys: (settings.envoyAdmins ?? []).map((a) => new EnvoyAdminClient(a)),
    probe: settings.probe ?? persistent!.probe,
    healthOf,
    resourcesOf: settings.dynamic && ((s) => resourcesOf(s, settings.dynamic!, healthOf(s.name))),
    relayPollMs: settings.relayPollMs ?? 200,
    log,
    connectionOf: persistent ? (address) => persistent.connection(address) : undefined,
  });

  const api = express();
  api.disable("x-powered-by");
  api.use(createApiRouter(state, {
    token: settings.token, log,
    health: (name, h) => health.set(name, h),
    servesListeners: !!settings.dynamic,
    successor: (name) => controller.successor(name),
    xds: (name) => xds.status(primaryClusterName(name)),
    configured: (name) => configured.has(name),
    settle: () => controller.settle(),
    ...(fleet ? {
      durable: () => fleet.writer.durable(),
      leader: () => fleet.leader(),
      refuseChange: () => fleet.isLeader() ? undefined : new ApiError("NOT_LEADER", notLeader(fleet), { leader: fleet.leader()?.api ?? null }),
    } : {}),
  }));
  const xdsApp = express();
  xdsApp.disable("x-powered-by");
  xdsApp.use(xds.router());
  const apiServer = await listen(api, settings.api.host, settings.api.port);
  answerClientErrors(apiServer);
  const xdsServer = await listen(xdsApp, settings.xds.host, settings.xds.port).catch(async (err) => { await close(apiServer); throw err; });
  controller.start();
  await fleet?.start({ state, publish: () => controller.refresh(), takeOver: () => { declareConfigured(); controller.takeOver(); } });
  return {
    apiPort: (apiServer.address() as AddressInfo).port,
    xdsPort: (xdsServer.address() as AddressInfo).port,
    state, controller, xds,
    async close() {
      controller.stop();
      persistent?.close();
      for (const s of [apiServer, xdsServer]) await close(s);
      state.close();
      await release();
    },
  };
}

function notLeader(fleet: Fleet): string {
  const leader = fleet.leader();
  return leader ? `this controller is not the leader: send the call to the leader, ${leader.api}` : "no controller leads now (etcd cannot be reached, or an election is under way): nothing can be changed; try again shortly";
}

async function close(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
}

/** The listener and primary cluster Envoy gets for a service that names a listener. */
function resourcesOf(s: Service, d: DynamicSettings, health: HealthSettings) {
  if (!s.listener) return undefined;
  const filter = {
    service: s.name, compareReplies: d.compareReplies ?? true,
    maxInflightBytesPerConnection: d.maxInflightBytesPerConnection ?? DEFAULT_LIMITS.maxInflightBytesPerConnection,
    maxInflightBytesTotal: d.maxInflightBytesTotal ?? DEFAULT_LIMITS.maxInflightBytesTotal,
    mirrorStreams: d.mirrorStreams,
  };
  return { listener: listenerResource(filter, s.listener, d.wasmPath, s.mode ?? "mirror"), cluster: primaryClusterResource(s.name, health) };
}
