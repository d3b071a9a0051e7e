// The relay's HTTP/2 receive windows (relay.json `http2`): their defaults, their bounds, and
// that the relay really advertises them to its peer (what Envoy sees on connecting).
import { describe, it, expect } from "vitest";
import { connect } from "node:http2";
import { parseRelayConfig, RELAY_DEFAULTS, RelayConfigError } from "../../relay/config.ts";
import { startRelay } from "../../relay/server.ts";
import { waitFor } from "../support/ports.ts";

describe("the relay's HTTP/2 windows", () => {
  it("default to 4 MiB per stream and 64 MiB per connection", () => {
    expect(parseRelayConfig({}).http2).toEqual({ streamWindowBytes: 4 << 20, connectionWindowBytes: 64 << 20 });
    expect(RELAY_DEFAULTS.http2).toEqual(parseRelayConfig({}).http2);
  });

  it.each([
    [{ http2: { streamWindowBytes: 1000 } }, '"http2.streamWindowBytes" must be a whole number from 65535 to 2147483647'],
    [{ http2: { connectionWindowBytes: 2 ** 31 } }, '"http2.connectionWindowBytes" must be a whole number from 65535 to 2147483647'],
    [{ http2: { maxFrameSize: 1 } }, '"http2.maxFrameSize" is not a known setting'],
  ])("refuses %j", (raw, message) => {
    expect(() => parseRelayConfig(raw)).toThrow(RelayConfigError);
    expect(() => parseRelayConfig(raw)).toThrow(message);
  });

  it("advertises them to the peer: the stream window in its SETTINGS, the connection window in a WINDOW_UPDATE", async () => {
    const relay = await startRelay(parseRelayConfig({ listen: { port: 0 }, metrics: { port: 0 }, http2: { streamWindowBytes: 1 << 20, connectionWindowBytes: 8 << 20 } }));
    const client = connect(`http://127.0.0.1:${relay.grpcPort}`);
    await new Promise((resolve) => client.once("remoteSettings", resolve));
    expect(client.remoteSettings.initialWindowSize).toBe(1 << 20);
    await waitFor("the connection window", () => client.state.remoteWindowSize === 8 << 20);
    client.destroy();
    await relay.close();
  });
});
