// Writes the example Envoy configs in envoy/ from the lockstep configs in config/.
// `npx tsx scripts/render-envoy.ts` (test/integration/envoy-configs.test.ts checks they are current).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadLockstepConfig, relayGrpcAddresses } from "../config/lockstep-config.ts";
import { renderBootstrap, renderDynamicBootstrap } from "../config/envoy-bootstrap.ts";
import { PROJECT_ROOT } from "./envoy-binary.ts";

/** The open-file limit the examples are sized for (`ulimit -n 65536`). */
export const EXAMPLE_OPEN_FILE_LIMIT = 65_536;

export const ENVOY_EXAMPLES = [
  {
    file: "envoy/demo.yaml",
    from: "config/demo.json",
    header: "# lockstep demo (npm run demo): listener 127.0.0.1:10000 -> the primary the controller names over EDS\n" +
      "# (xDS on 127.0.0.1:9102; first kv :7001, standbys :7002, :7003), mirrored through the relay\n" +
      "# (127.0.0.1:10100) to the other members. Admin on :9901.\n" +
      "# Generated from config/demo.json by scripts/render-envoy.ts. Run from the project root.\n",
  },
  {
    file: "envoy/service-example.yaml",
    from: "config/example-service.json",
    header: "# A lockstep service in your own Envoy: copy the listener `lockstep_orders` and the clusters\n" +
      "# `orders_primary`, `lockstep_controller` and `lockstep_relay` into your config, and run the\n" +
      "# relay and the controller next to Envoy (README: \"Your own backends\").\n" +
      "# Generated from config/example-service.json.\n",
  },
  {
    file: "envoy/session-example.yaml",
    from: "config/example-session-service.json",
    header: "# A lockstep service in session mode (docs/SESSION.md): the listener `lockstep_cache` tunnels each\n" +
      "# client connection to the relay (HTTP/2 CONNECT), which carries it to the primary and the replicas;\n" +
      "# open connections survive the primary's death. `cache_primary` is still there: Envoy's health check\n" +
      "# of the primary is how the controller hears of its failure. Generated from config/example-session-service.json.\n",
  },
  {
    file: "envoy/dynamic-example.yaml",
    from: "config/example-service.json",
    dynamic: true,
    header: "# An Envoy that takes every lockstep service from the controller: its listeners and primary\n" +
      "# clusters arrive over LDS and CDS (run the controller with --dynamic), so a service declared\n" +
      "# with POST /v1/services and a \"listener\" needs no change here. Only the controller and this\n" +
      "# Envoy's mirror relay are named. Generated from config/example-service.json.\n",
  },
];

export function renderExample(example: (typeof ENVOY_EXAMPLES)[number]): string {
  // A fixed open-file limit keeps the files the same on every machine; scripts/run.ts renders
  // its bootstrap from the limit Envoy actually gets.
  const c = loadLockstepConfig(join(PROJECT_ROOT, example.from));
  if ("dynamic" in example) {
    return renderDynamicBootstrap({ controller: `127.0.0.1:${c.controller!.xdsPort}`, relay: relayGrpcAddresses(c.relay), adminPort: c.envoy.adminPort, nodeId: "lockstep", openFileLimit: EXAMPLE_OPEN_FILE_LIMIT }, example.header);
  }
  return renderBootstrap(c, example.header, { openFileLimit: EXAMPLE_OPEN_FILE_LIMIT });
}

if (process.argv[1]?.endsWith("render-envoy.ts")) {
  for (const ex of ENVOY_EXAMPLES) {
    writeFileSync(join(PROJECT_ROOT, ex.file), renderExample(ex));
    console.log(`wrote ${ex.file}`);
  }
}
