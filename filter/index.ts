// Entry point of the lockstep filter module: the proxy-wasm exports, with the mirror root
// registered as the root context.
import { setRootContextFactory, RootContext } from "./abi/context";
import { MirrorRoot } from "./mirror/root";

export * from "./abi/exports";
// Linked as the module's abort by asconfig.json (`use: abort=...`); exported so asc keeps it.
export { abortToEnvoyLog as lockstep_abort } from "./abi/abort";

function newRoot(contextId: u32): RootContext { return new MirrorRoot(contextId); }
setRootContextFactory(newRoot);
