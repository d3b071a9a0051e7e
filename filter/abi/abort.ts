// Route AssemblyScript's abort (failed assertion, out-of-bounds access) to Envoy's log at
// CRITICAL level, then trap. Envoy provides no env.abort; asc links this through
// `--use abort=filter/abi/abort/abortToEnvoyLog`. The plugin's failure_policy decides
// what Envoy does with the connection after a trap (FAIL_OPEN: keep the primary path).
import { proxy_log } from "./imports";
import { LogLevel } from "./constants";

export function abortToEnvoyLog(message: string | null, fileName: string | null, line: u32, column: u32): void {
  const text = "lockstep filter aborted: " + (message !== null ? message : "(no message)") +
    " at " + (fileName !== null ? fileName : "?") + ":" + line.toString() + ":" + column.toString();
  const bytes = String.UTF8.encode(text);
  proxy_log(LogLevel.CRITICAL, changetype<usize>(bytes), bytes.byteLength);
  unreachable();
}
