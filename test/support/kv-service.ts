// The service the in-process controller tests declare: "kv" with a primary p (127.0.0.1:7001)
// and replicas a and b (:7002, :7003), probed every 20 ms (their probes are fakes).
import { HEALTH_DEFAULTS } from "../../controller/health/checker.ts";
import type { ControllerSettings } from "../../controller/server.ts";

export function kvService(): ControllerSettings["services"][number] {
  return {
    service: { name: "kv", members: [
      { name: "p", address: "127.0.0.1:7001", role: "primary", lagBytes: 0 },
      { name: "a", address: "127.0.0.1:7002", role: "replica", lagBytes: 0 },
      { name: "b", address: "127.0.0.1:7003", role: "replica", lagBytes: 0 },
    ] },
    health: { ...HEALTH_DEFAULTS, intervalMs: 20 },
  };
}
