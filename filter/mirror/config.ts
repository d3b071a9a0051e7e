// The filter's plugin configuration (the `configuration` of the wasm filter in Envoy),
// parsed and validated once in proxy_on_configure. A bad configuration is refused with a
// message naming the field: Envoy then rejects the listener instead of running half-set-up.
import { parseFlatObject, JSON_STRING, JSON_NUMBER, JSON_BOOL } from "./json";
import { isName } from "./names";

export const DEFAULT_MAX_INFLIGHT_BYTES_PER_CONNECTION: u64 = 4 << 20; // 4 MiB: a few of Envoy's reads (up to 1 MiB each)
export const DEFAULT_MAX_INFLIGHT_BYTES_TOTAL: u64 = 64 << 20; // 64 MiB per worker
export const DEFAULT_CLOSE_TIMEOUT_MS: u64 = 30_000;
/** Longer than the relay's own replica stall timeout (500 ms), so a stuck replica is
 *  detached by the relay before the filter gives up on the relay. */
export const DEFAULT_RELAY_STALL_TIMEOUT_MS: u64 = 2_000;
/** Connections per worker whose client is gone while the relay still finishes their mirror
 *  (replica connections that outlive their client): past it, new connections wait. */
export const DEFAULT_MAX_FINISHING_STREAMS: u64 = 128;
/** Shared streams per worker that carry every connection's mirror as a channel. */
export const DEFAULT_MIRROR_STREAMS: u32 = 1;
export const MAX_MIRROR_STREAMS: u32 = 64;
/** A shared stream is replaced after this long, so that connections spread again over relay
 *  processes (one restarted, or added) without waiting for a stream to break. */
export const DEFAULT_MIRROR_STREAM_LIFETIME_MS: u64 = 10_000;

export class MirrorConfig {
  /** Envoy cluster (HTTP/2) that reaches the mirror relay. Required. */
  relayCluster: string = "";
  /** Service name: sent to the relay and used in metric names. Required. */
  service: string = "";
  /** Bytes sent to the relay but not yet acknowledged as received, per connection: above it
   *  the client's bytes wait in Envoy (PAUSE) until the relay catches up to half of it. */
  maxInflightBytesPerConnection: u64 = DEFAULT_MAX_INFLIGHT_BYTES_PER_CONNECTION;
  /** The same, summed over this worker's connections. */
  maxInflightBytesTotal: u64 = DEFAULT_MAX_INFLIGHT_BYTES_TOTAL;
  /** How long a connection may wait for the relay before its mirror is cut and it goes on. */
  relayStallTimeoutMs: u64 = DEFAULT_RELAY_STALL_TIMEOUT_MS;
  /** How long a finished connection's stream may wait for the relay's final answer. */
  closeTimeoutMs: u64 = DEFAULT_CLOSE_TIMEOUT_MS;
  /** Connections of this worker whose client is gone and whose mirror the relay is still
   *  finishing; while there are this many, a new connection's first bytes wait (for at most the
   *  stall timeout), so replica connections never pile up behind a relay slower than the clients. */
  maxFinishingStreams: u64 = DEFAULT_MAX_FINISHING_STREAMS;
  /** Digest the primary's replies so the relay can compare each replica's with them
   *  (docs/CONSISTENCY.md). Off: the primary's replies are never read. */
  compareReplies: bool = true;
  /** How connections reach the relay (docs/wire-format.md, "Transport"): N >= 1, each worker
   *  keeps N long-lived streams and gives each connection a channel on the next in turn; 0,
   *  each connection opens a stream of its own (costlier: Envoy's stream set-up and heap). */
  mirrorStreams: u32 = DEFAULT_MIRROR_STREAMS;
  /** How long a shared stream takes new connections before a new one replaces it (the old one
   *  is half-closed once its last channel is over). */
  mirrorStreamLifetimeMs: u64 = DEFAULT_MIRROR_STREAM_LIFETIME_MS;
}

export class ConfigResult {
  constructor(public config: MirrorConfig | null, public error: string) {}
}

const KNOWN_KEYS = ["relay_cluster", "service", "max_inflight_bytes_per_connection", "max_inflight_bytes_total", "close_timeout_ms", "relay_stall_timeout_ms", "max_finishing_streams", "compare_replies", "mirror_streams", "mirror_stream_lifetime_ms"];

function bad(message: string): ConfigResult { return new ConfigResult(null, message); }

/** Parse the plugin configuration JSON. */
export function parseMirrorConfig(json: string): ConfigResult {
  const obj = parseFlatObject(json);
  if (obj.error.length > 0) return bad("configuration is not valid JSON: " + obj.error);
  for (let i = 0; i < obj.keys.length; i++) {
    if (!KNOWN_KEYS.includes(obj.keys[i])) return bad("unknown field \"" + obj.keys[i] + "\" (known: " + KNOWN_KEYS.join(", ") + ")");
  }
  const config = new MirrorConfig();

  const cluster = obj.get("relay_cluster");
  if (cluster === null || cluster.kind != JSON_STRING || cluster.text.length == 0 || cluster.text.length > 100)
    return bad("\"relay_cluster\" must be the name of the Envoy cluster of the mirror relay (a string of 1 to 100 characters)");
  config.relayCluster = cluster.text;

  const service = obj.get("service");
  if (service === null || service.kind != JSON_STRING || !isName(service.text))
    return bad("\"service\" must be 1 to 64 characters of [A-Za-z0-9_-]");
  config.service = service.text;

  const names = ["max_inflight_bytes_per_connection", "max_inflight_bytes_total", "close_timeout_ms", "relay_stall_timeout_ms", "max_finishing_streams", "mirror_stream_lifetime_ms"];
  for (let i = 0; i < names.length; i++) {
    const v = obj.get(names[i]);
    if (v === null) continue;
    if (v.kind != JSON_NUMBER || v.number < 1 || v.number > 17179869184.0 || Math.floor(v.number) != v.number)
      return bad("\"" + names[i] + "\" must be a whole number from 1 to 17179869184");
    const n = <u64>v.number;
    if (i == 0) config.maxInflightBytesPerConnection = n;
    else if (i == 1) config.maxInflightBytesTotal = n;
    else if (i == 2) config.closeTimeoutMs = n;
    else if (i == 3) config.relayStallTimeoutMs = n;
    else if (i == 4) config.maxFinishingStreams = n;
    else config.mirrorStreamLifetimeMs = n;
  }
  const compare = obj.get("compare_replies");
  if (compare !== null) {
    if (compare.kind != JSON_BOOL) return bad("\"compare_replies\" must be true or false");
    config.compareReplies = compare.flag;
  }
  const streams = obj.get("mirror_streams");
  if (streams !== null) {
    if (streams.kind != JSON_NUMBER || streams.number < 0 || streams.number > <f64>MAX_MIRROR_STREAMS || Math.floor(streams.number) != streams.number)
      return bad("\"mirror_streams\" must be a whole number from 0 (a stream per connection) to " + MAX_MIRROR_STREAMS.toString() + " (shared streams per worker)");
    config.mirrorStreams = <u32>streams.number;
  }
  if (config.maxInflightBytesTotal < config.maxInflightBytesPerConnection)
    return bad("\"max_inflight_bytes_total\" must be at least \"max_inflight_bytes_per_connection\"");
  return new ConfigResult(config, "");
}
