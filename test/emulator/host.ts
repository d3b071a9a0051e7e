// Entry point of the proxy-wasm host emulator (see README.md beside this file):
//   const { host, reset } = createNetworkHost({ wasmPath, pluginConfig });
// plus a helper that compiles an AssemblyScript module the way the filter is built.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve, relative } from "node:path";
import { fileURLToPath } from "node:url";

export * from "./network-host.ts";
export * from "./abi-status.ts";
export { ENV_SPEC, WASI_SPEC } from "./abi-spec.ts";
export { functionImports, type FunctionImport } from "./wasm-imports.ts";
export { serializePairs, parsePairs } from "./memory.ts";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export interface CompileOptions {
  /** Output file; default a fresh temporary directory. */
  outFile?: string;
  /** `--use abort=<module>/<function>`: module path relative to the project root, without .ts. */
  abort?: string;
  runtime?: "incremental" | "minimal" | "stub";
  /** asc optimisation flag, default -O2. */
  optimize?: string;
  extraArgs?: string[];
}

/** Compile an AssemblyScript entry (path relative to the project root or absolute) to a
 *  proxy-wasm module: `--exportStart _initialize`, the given runtime, abort redirected. */
export function compileAssemblyScript(entry: string, options: CompileOptions = {}): string {
  const dir = mkdtempSync(join(tmpdir(), "lockstep-asc-"));
  const outFile = options.outFile ?? join(dir, "module.wasm");
  // asc merges ./asconfig.json from its working directory, and the project's names the
  // filter as an entry and its own abort: an empty --config keeps them out of this module.
  const config = join(dir, "asconfig.json");
  writeFileSync(config, '{ "options": {} }\n');
  const args = [join(ROOT, "node_modules/assemblyscript/bin/asc.js"), relative(ROOT, resolve(ROOT, entry)), "-o", outFile,
    "--config", config, options.optimize ?? "-O2", "--runtime", options.runtime ?? "incremental", "--exportStart", "_initialize"];
  if (options.abort) args.push("--use", `abort=${options.abort}`);
  args.push(...(options.extraArgs ?? []));
  try {
    execFileSync(process.execPath, args, { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  } catch (e: any) {
    throw new Error(`asc failed for ${entry}:\n${e.stderr?.toString() ?? ""}${e.stdout?.toString() ?? ""}`);
  }
  return outFile;
}
