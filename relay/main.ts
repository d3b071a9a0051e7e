// The relay's command line: `tsx relay/main.ts --config relay.json [--port N] [--metrics-port N]`.
import { parseArgs } from "node:util";
import { loadRelayConfig, parseRelayConfig, RelayConfigError } from "./config.ts";
import { startRelay } from "./server.ts";

const { values } = parseArgs({ options: {
  config: { type: "string" }, port: { type: "string" }, "metrics-port": { type: "string" },
} });

const log = (line: string) => console.log(`${new Date().toISOString()} relay: ${line}`);

try {
  let config = values.config ? loadRelayConfig(values.config) : parseRelayConfig({});
  if (values.port || values["metrics-port"]) {
    config = parseRelayConfig({
      ...config,
      listen: { ...config.listen, port: values.port ? Number(values.port) : config.listen.port },
      metrics: { ...config.metrics, port: values["metrics-port"] ? Number(values["metrics-port"]) : config.metrics.port },
    });
  }
  const relay = await startRelay(config, log);
  log(`listening for mirror streams on ${config.listen.host}:${relay.grpcPort}, metrics on http://${config.metrics.host}:${relay.metricsPort}/metrics`);
  for (const [service, replicas] of Object.entries(config.services)) log(`replicas of "${service}": ${replicas.map((r) => `${r.name}=${r.address}`).join(", ") || "(none)"}`);
  if (Object.keys(config.services).length === 0) log("no replica set configured: each service's set comes from the controller (connections wait for it)");
  const stop = async () => { log("shutting down"); await relay.close(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} catch (err) {
  console.error(err instanceof RelayConfigError ? err.message : err);
  process.exit(2);
}
