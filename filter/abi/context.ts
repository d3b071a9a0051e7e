// Base classes for the two kinds of context Envoy creates: one root context per plugin
// (configuration, timers, and every gRPC callback) and one network context per client
// connection. Subclasses override what they need; defaults do nothing and Continue.
import { Action } from "./constants";

export class RootContext {
  constructor(public readonly contextId: u32) {}
  /** proxy_on_vm_start: the VM configuration is readable now. Return false to refuse. */
  onVmStart(vmConfigurationSize: usize): bool { return true; }
  /** proxy_on_configure: the plugin configuration is readable now. Return false to refuse it. */
  onConfigure(pluginConfigurationSize: usize): bool { return true; }
  onTick(): void {}
  /** A new client connection: return its context. */
  createNetworkContext(contextId: u32): NetworkContext { return new NetworkContext(contextId, this); }
  onGrpcReceiveInitialMetadata(token: u32, elements: u32): void {}
  /** A message on stream `token`; read it with BufferType.GRPC_RECEIVE_BUFFER. */
  onGrpcReceive(token: u32, messageSize: usize): void {}
  onGrpcReceiveTrailingMetadata(token: u32, elements: u32): void {}
  /** Stream `token` ended (not called after our own cancel). */
  onGrpcClose(token: u32, statusCode: u32): void {}
  onDone(): bool { return true; }
  onDelete(): void {}
}

export class NetworkContext {
  constructor(public readonly contextId: u32, public readonly root: RootContext) {}
  onNewConnection(): u32 { return Action.CONTINUE; }
  /** Client → primary bytes (BufferType.DOWNSTREAM_DATA). */
  onDownstreamData(size: usize, endOfStream: bool): u32 { return Action.CONTINUE; }
  /** Primary → client bytes (BufferType.UPSTREAM_DATA). Must not return PAUSE. */
  onUpstreamData(size: usize, endOfStream: bool): u32 { return Action.CONTINUE; }
  onDownstreamConnectionClose(peerType: u32): void {}
  onUpstreamConnectionClose(peerType: u32): void {}
  onDone(): bool { return true; }
  /** Last call for this context: release everything it holds. */
  onDelete(): void {}
}

type RootFactory = (contextId: u32) => RootContext;
let rootFactory: RootFactory | null = null;

/** Register how root contexts are made. Call once at module start. */
export function setRootContextFactory(factory: RootFactory): void { rootFactory = factory; }

/** A root context from the registered factory (the plain base class if none). */
export function newRootContext(contextId: u32): RootContext {
  const factory = rootFactory;
  if (factory === null) return new RootContext(contextId);
  return changetype<RootFactory>(factory)(contextId);
}
