// Issue 8, defect 10: `npm test` left relays and redis-servers running after a test process
// ended. Whatever way a process that started them ends (kill -9, an uncaught exception),
// every process started through test/support ends with it.
import { describe, it, expect } from "vitest";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";
import { spawnTied } from "../../scripts/child-processes.ts";
import { waitFor } from "../support/ports.ts";

const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };

/** Start test/fixtures/process-tree.ts outside vitest (as bench/ runs test/support) and read its children's pids. */
async function startTree(mode: "hold" | "throw") {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("VITEST")));
  const tree = spawnTied(process.execPath, ["--import", "tsx", join(PROJECT_ROOT, "test/fixtures/process-tree.ts"), mode], { cwd: PROJECT_ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  tree.stdout!.on("data", (d) => { output += d; });
  tree.stderr!.on("data", (d) => { output += d; });
  const exited = new Promise<void>((resolve) => tree.once("exit", () => resolve()));
  const pids: number[] = await waitFor("the process tree's pids", () => {
    const line = /^\{"pids".*$/m.exec(output);
    return line ? JSON.parse(line[0]).pids : undefined;
  }, 30_000, 50).catch((err) => { throw new Error(`${err.message}\n${output}`); });
  return { tree, pids, exited };
}

/** The pids still alive once `within` ms have passed (or none are); kills them, so a failure leaves nothing behind either. */
async function survivors(pids: number[], within = 5_000): Promise<number[]> {
  await waitFor("the children to die", () => pids.every((pid) => !alive(pid)), within, 50).catch(() => {});
  const left = pids.filter(alive);
  for (const pid of left) process.kill(pid, "SIGKILL");
  return left;
}

describe("processes started by a test", () => {
  it("die when the test process is killed with SIGKILL", async () => {
    const { tree, pids, exited } = await startTree("hold");
    expect(pids.length).toBeGreaterThan(0);
    expect(pids.every(alive)).toBe(true);
    tree.kill("SIGKILL");
    await exited;
    expect(await survivors(pids), "children still running after their parent was killed").toEqual([]);
  });

  it("die when the test process dies of an uncaught exception", async () => {
    const { pids, exited } = await startTree("throw");
    await exited;
    expect(await survivors(pids), "children still running after their parent died").toEqual([]);
  });
});
