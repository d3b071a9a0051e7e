// One suite: fast unit tests (host emulator, codecs, relay) and integration tests against the
// real Envoy binary. Integration tests start processes on free loopback ports, so files run
// one at a time to keep the 2-core machine honest.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    reporters: ["default"],
  },
});
