// After a test run (scripts/test.sh): the processes the run started that are still running.
// test.sh marks its run with LOCKSTEP_TEST_RUN=<id>; every process the tests start inherits
// the marker, so these are exactly what the run left behind, never anyone else's. Waits up to
// 5 s for processes that are already dying, then prints the survivors (pid and command line)
// and exits 1 if there are any.
import { readdirSync, readFileSync } from "node:fs";

if (!process.env.LOCKSTEP_TEST_RUN) { console.error("leftover-processes: LOCKSTEP_TEST_RUN is not set"); process.exit(2); }
const marker = `LOCKSTEP_TEST_RUN=${process.env.LOCKSTEP_TEST_RUN}`;

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]); // after "(comm) state": the parent's pid
}

/** This check, what runs it (test.sh, npx, tsx) and what it runs (tsx's esbuild) carry the marker too. */
function isThisCheck(pid: number, self: Set<number>): boolean {
  for (let p = pid; p > 1; p = parentOf(p)) if (p === process.pid) return true;
  return self.has(pid);
}

function leftovers(): { pid: number; command: string }[] {
  const self = new Set<number>();
  for (let p = process.pid; p > 1; p = parentOf(p)) self.add(p);
  const found = [];
  for (const entry of readdirSync("/proc")) {
    const pid = Number(entry);
    if (!Number.isInteger(pid)) continue;
    try {
      if (!readFileSync(`/proc/${pid}/environ`, "latin1").split("\0").includes(marker) || isThisCheck(pid, self)) continue;
      found.push({ pid, command: readFileSync(`/proc/${pid}/cmdline`, "latin1").split("\0").join(" ").trim() });
    } catch { /* gone, or not ours to read */ }
  }
  return found;
}

const deadline = Date.now() + 5_000;
let left = leftovers();
while (left.length && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 200));
  left = leftovers();
}
if (left.length) {
  console.error(`processes this test run started are still running (${left.length}):`);
  for (const p of left) console.error(`  ${p.pid} ${p.command}`);
  process.exit(1);
}
