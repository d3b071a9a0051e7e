// Child processes of a test (Envoy, the relay, redis-server): output kept for the failure
// message (and, when asked, appended to files), killed when the test file ends (or, outside
// vitest, by killAllProcesses), and never outliving the test process however it ends
// (scripts/child-processes.ts).
import type { ChildProcess } from "node:child_process";
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { join } from "node:path";
import { spawnTied } from "../../scripts/child-processes.ts";

export interface Managed {
  readonly name: string;
  readonly child: ChildProcess;
  output(): string;
  exited(): boolean;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const live = new Set<Managed>();
let logDir: string | undefined;

// Under vitest: output shown for failed tests, processes killed after each file; elsewhere
// (bench/, the chaos command) the caller kills what it starts. The hooks are registered while
// the test file is collected: registered later (from a beforeAll, where most processes start),
// vitest would never run them.
const vitest = process.env.VITEST ? await import("vitest") : null;
if (vitest) {
  vitest.afterEach((ctx) => {
    if (ctx.task.result?.state !== "fail") return;
    for (const p of live) console.error(`\n----- last output of ${p.name} -----\n${p.output().slice(-6000)}\n----- end of ${p.name} -----`);
  });
  vitest.afterAll(async () => { await Promise.all([...live].map((p) => p.kill("SIGKILL"))); });
}

/** From now on, append every started process's whole output to `<dir>/<name>.log` (a
 *  restarted process to the same file), or stop doing so (undefined). For long runs whose
 *  failures need the components' own logs. */
export function keepProcessLogs(dir: string | undefined): void {
  if (dir) mkdirSync(dir, { recursive: true });
  logDir = dir;
}

export function startProcess(name: string, command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Managed {
  const child = spawnTied(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
  let text = "";
  const file: WriteStream | undefined = logDir ? createWriteStream(join(logDir, `${name.replace(/[^\w.-]+/g, "-")}.log`), { flags: "a" }) : undefined;
  const keep = (chunk: Buffer) => {
    file?.write(chunk);
    text += chunk.toString();
    if (text.length > 200_000) text = text.slice(-100_000);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  let done = false;
  const exit = new Promise<void>((resolve) => child.on("exit", () => { done = true; resolve(); }));
  child.on("close", () => file?.end());
  child.on("error", (err) => { text += `\n[spawn error] ${err.message}`; });
  const managed: Managed = {
    name, child,
    output: () => text,
    exited: () => done,
    async kill(signal = "SIGTERM") {
      if (!done) { child.kill(signal); await exit; }
      live.delete(managed);
    },
  };
  live.add(managed);
  return managed;
}

/** Kill (SIGKILL) every process started here that is still running: what a command-line
 *  harness calls when it ends, however it ends. */
export async function killAllProcesses(): Promise<void> {
  await Promise.all([...live].map((p) => p.kill("SIGKILL")));
}
