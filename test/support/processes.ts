// Child processes of a test (Envoy, the relay, redis-server): output kept for the failure
// message, killed when the test file ends, and never outliving the test process however it
// ends (scripts/child-processes.ts).
import type { ChildProcess } from "node:child_process";
import { spawnTied } from "../../scripts/child-processes.ts";

export interface Managed {
  readonly name: string;
  readonly child: ChildProcess;
  output(): string;
  exited(): boolean;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const live = new Set<Managed>();

// Under vitest: output shown for failed tests, processes killed after each file; elsewhere
// (bench/) the caller kills what it starts. The hooks are registered while the test file is
// collected: registered later (from a beforeAll, where most processes start), vitest would
// never run them.
const vitest = process.env.VITEST ? await import("vitest") : null;
if (vitest) {
  vitest.afterEach((ctx) => {
    if (ctx.task.result?.state !== "fail") return;
    for (const p of live) console.error(`\n----- last output of ${p.name} -----\n${p.output().slice(-6000)}\n----- end of ${p.name} -----`);
  });
  vitest.afterAll(async () => { await Promise.all([...live].map((p) => p.kill("SIGKILL"))); });
}

export function startProcess(name: string, command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Managed {
  const child = spawnTied(command, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
  let text = "";
  const keep = (chunk: Buffer) => { text += chunk.toString(); if (text.length > 200_000) text = text.slice(-100_000); };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  let done = false;
  const exit = new Promise<void>((resolve) => child.on("exit", () => { done = true; resolve(); }));
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
