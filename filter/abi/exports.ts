// Callbacks Envoy calls (proxy-wasm ABI v0.2.1 exports), dispatched to context objects.
// gRPC callbacks are delivered to the root context whatever context opened the stream,
// so they go to the root, which routes by token.
import { RootContext, NetworkContext, newRootContext } from "./context";
import { Action } from "./constants";

export { malloc } from "./memory";

const roots = new Map<u32, RootContext>();
const connections = new Map<u32, NetworkContext>();

/** ABI marker: this module speaks proxy-wasm 0.2.1. Never called. */
export function proxy_abi_version_0_2_1(): void {}

export function proxy_on_context_create(contextId: u32, parentContextId: u32): void {
  if (parentContextId == 0) {
    roots.set(contextId, newRootContext(contextId));
  } else if (roots.has(parentContextId)) {
    connections.set(contextId, roots.get(parentContextId).createNetworkContext(contextId));
  }
}

export function proxy_on_vm_start(rootId: u32, vmConfigurationSize: usize): bool {
  return roots.has(rootId) ? roots.get(rootId).onVmStart(vmConfigurationSize) : false;
}

export function proxy_on_configure(rootId: u32, pluginConfigurationSize: usize): bool {
  return roots.has(rootId) ? roots.get(rootId).onConfigure(pluginConfigurationSize) : false;
}

export function proxy_on_tick(rootId: u32): void {
  if (roots.has(rootId)) roots.get(rootId).onTick();
}

export function proxy_on_new_connection(contextId: u32): u32 {
  return connections.has(contextId) ? connections.get(contextId).onNewConnection() : Action.CONTINUE;
}

export function proxy_on_downstream_data(contextId: u32, size: usize, endOfStream: bool): u32 {
  return connections.has(contextId) ? connections.get(contextId).onDownstreamData(size, endOfStream) : Action.CONTINUE;
}

export function proxy_on_upstream_data(contextId: u32, size: usize, endOfStream: bool): u32 {
  return connections.has(contextId) ? connections.get(contextId).onUpstreamData(size, endOfStream) : Action.CONTINUE;
}

export function proxy_on_downstream_connection_close(contextId: u32, peerType: u32): void {
  if (connections.has(contextId)) connections.get(contextId).onDownstreamConnectionClose(peerType);
}

export function proxy_on_upstream_connection_close(contextId: u32, peerType: u32): void {
  if (connections.has(contextId)) connections.get(contextId).onUpstreamConnectionClose(peerType);
}

/** The root of a gRPC callback: the one named, or (defensively) the only root there is. */
function grpcRoot(contextId: u32): RootContext | null {
  if (roots.has(contextId)) return roots.get(contextId);
  if (connections.has(contextId)) return connections.get(contextId).root;
  return null;
}

export function proxy_on_grpc_receive_initial_metadata(contextId: u32, token: u32, elements: u32): void {
  const root = grpcRoot(contextId);
  if (root !== null) root.onGrpcReceiveInitialMetadata(token, elements);
}

export function proxy_on_grpc_receive(contextId: u32, token: u32, messageSize: usize): void {
  const root = grpcRoot(contextId);
  if (root !== null) root.onGrpcReceive(token, messageSize);
}

export function proxy_on_grpc_receive_trailing_metadata(contextId: u32, token: u32, elements: u32): void {
  const root = grpcRoot(contextId);
  if (root !== null) root.onGrpcReceiveTrailingMetadata(token, elements);
}

export function proxy_on_grpc_close(contextId: u32, token: u32, statusCode: u32): void {
  const root = grpcRoot(contextId);
  if (root !== null) root.onGrpcClose(token, statusCode);
}

export function proxy_on_done(contextId: u32): bool {
  if (connections.has(contextId)) return connections.get(contextId).onDone();
  if (roots.has(contextId)) return roots.get(contextId).onDone();
  return true;
}

export function proxy_on_log(contextId: u32): void {}

export function proxy_on_delete(contextId: u32): void {
  if (connections.has(contextId)) {
    connections.get(contextId).onDelete();
    connections.delete(contextId);
  } else if (roots.has(contextId)) {
    roots.get(contextId).onDelete();
    roots.delete(contextId);
  }
}
