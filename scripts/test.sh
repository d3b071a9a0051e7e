#!/usr/bin/env bash
# The test command (README: `npm test`): build the filter, type-check, run every test
# (unit tests in the host emulator, integration tests against the real Envoy binary),
# then print the closing line `N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
npm run --silent build || { echo "0 passed, 1 failed"; exit 1; }
npx tsx scripts/envoy-binary.ts >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
npx tsc -p . || { echo "type check failed"; echo "0 passed, 1 failed"; exit 1; }
mkdir -p .cache
npx vitest run --reporter=default --reporter=json --outputFile.json=.cache/vitest-results.json "$@"
status=$?
node -e '
const r = JSON.parse(require("fs").readFileSync(".cache/vitest-results.json", "utf8"));
// A file that failed to load has no failed test of its own: count it as one failure.
const brokenFiles = r.testResults.filter((f) => f.status === "failed" && !f.assertionResults.some((a) => a.status === "failed")).length;
const skipped = r.numPendingTests + r.numTodoTests;
console.log(`${r.numPassedTests} passed, ${r.numFailedTests + brokenFiles} failed` + (skipped ? `, ${skipped} skipped` : ""));
' || echo "0 passed, 1 failed"
exit $status
