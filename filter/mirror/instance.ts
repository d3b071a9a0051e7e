// The identity of this Envoy process as the controller sees it: a number that every worker's
// VM agrees on (kept in shared data, which lives as long as the process) and that is new at
// every Envoy start, published as the gauge `lockstep.envoy_instance`. A controller that sees
// it change knows this process's counters started again from zero and that every connection
// of the process before it ended.
import * as host from "../abi/host";
import { MetricType } from "../abi/constants";

const KEY = "lockstep.envoy_instance";

function stored(): u64 {
  const raw = host.getSharedData(KEY);
  return raw !== null && raw.byteLength == 8 ? load<u64>(changetype<usize>(raw)) : 0;
}

export class EnvoyInstance {
  private readonly gauge: u32 = host.defineMetric(MetricType.GAUGE, KEY);

  /** Publish the process's id, choosing it if no VM has yet (microseconds of the first VM's
   *  start; below 2^53, so exact in every stats format). Workers starting together may each
   *  choose: the last write wins, and every VM publishes it again at its next tick. */
  publish(): void {
    let id = stored();
    if (id == 0) {
      const value = new ArrayBuffer(8);
      store<u64>(changetype<usize>(value), host.nowNanoseconds() / 1000);
      host.setSharedData(KEY, value);
      id = stored();
    }
    host.recordMetric(this.gauge, id);
  }
}
