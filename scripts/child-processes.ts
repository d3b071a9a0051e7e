// Child processes that cannot outlive the process that started them, whichever way it ends:
// the runner (scripts/run.ts), the tests' helpers (test/support/processes.ts) and the
// benchmark start theirs here.
//
// - kill -9 or a crash of the parent: on Linux each child runs under `setpriv --pdeathsig
//   SIGKILL`, so the kernel kills it when the thread that started it exits (Node starts
//   children from the thread that calls spawn: the main thread, or a vitest worker's).
// - process.exit, an uncaught exception, the end of the event loop: an exit hook kills every
//   child still running, synchronously (and is all there is where setpriv is missing).
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";

const HAVE_SETPRIV = process.platform === "linux" && spawnSync("setpriv", ["--version"], { stdio: "ignore" }).status === 0;

// The parent may die between fork and setpriv's prctl: then no signal would ever come. After
// the prctl, a shell checks that its parent is still the one that spawned it ($0 carries its
// pid), then execs the command, so the pid stays the command's own.
const PARENT_CHECK = '[ "$PPID" = "$0" ] || exit 1; exec "$@"';

const running = new Set<ChildProcess>();

process.on("exit", () => {
  for (const child of running) { try { child.kill("SIGKILL"); } catch { /* already gone */ } }
});

/** Like child_process.spawn, but the child dies with this process. */
export function spawnTied(command: string, args: readonly string[], options: SpawnOptions = {}): ChildProcess {
  const child = HAVE_SETPRIV
    ? spawn("setpriv", ["--pdeathsig", "SIGKILL", "--", "/bin/sh", "-c", PARENT_CHECK, String(process.pid), command, ...args], options)
    : spawn(command, args, options);
  running.add(child);
  child.once("exit", () => running.delete(child));
  return child;
}
