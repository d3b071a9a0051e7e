#!/usr/bin/env bash
# The test command (README: `npm test`): build the filter, type-check, run every test
# (unit tests in the host emulator, integration tests against the real Envoy binary),
# then check that the run left no process behind (and remove its temporary files), and print the closing line
# `N passed, N failed` (a leftover process counts as one failure).
set -uo pipefail
cd "$(dirname "$0")/.."
# Every process the tests start inherits this marker: the leftover check finds them by it.
export LOCKSTEP_TEST_RUN="$$-$(date +%s%N)"
# Every temporary file the tests and the processes they start make (Envoy bootstraps, relay
# configs, redis and etcd data) goes under one directory, removed after the run.
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/lockstep-test-run-XXXXXX")"
export TMPDIR="$RUN_TMP"
trap 'rm -rf "$RUN_TMP"' EXIT
npm run --silent build || { echo "0 passed, 1 failed"; exit 1; }
npx tsx scripts/envoy-binary.ts >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
npx tsc -p . || { echo "type check failed"; echo "0 passed, 1 failed"; exit 1; }
mkdir -p .cache
npx vitest run --reporter=default --reporter=json --outputFile.json=.cache/vitest-results.json "$@"
status=$?
leftovers=0
npx tsx scripts/leftover-processes.ts || { leftovers=1; status=1; }
LEFTOVERS=$leftovers node -e '
const r = JSON.parse(require("fs").readFileSync(".cache/vitest-results.json", "utf8"));
// A file that failed to load has no failed test of its own: count it as one failure.
const brokenFiles = r.testResults.filter((f) => f.status === "failed" && !f.assertionResults.some((a) => a.status === "failed")).length;
const skipped = r.numPendingTests + r.numTodoTests;
console.log(`${r.numPassedTests} passed, ${r.numFailedTests + brokenFiles + Number(process.env.LEFTOVERS)} failed` + (skipped ? `, ${skipped} skipped` : ""));
' || echo "0 passed, 1 failed"
exit $status
