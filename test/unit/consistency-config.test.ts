// compareReplies from the lockstep config to the filter's plugin configuration: on by default
// (nothing rendered: the filter's default), off rendered as compare_replies: false, anything
// else refused naming the field.
import { describe, it, expect } from "vitest";
import { parseLockstepConfig, ConfigError } from "../../config/lockstep-config.ts";
import { renderListener } from "../../config/envoy-bootstrap.ts";

const base = { service: "orders", primary: "127.0.0.1:7001", replicas: [{ name: "b", address: "127.0.0.1:7002" }] };
const pluginConfig = (raw: object) => JSON.parse(/value: '(.*)'/.exec(renderListener(parseLockstepConfig(raw)))![1]);

describe("compareReplies", () => {
  it("is on by default and leaves the filter's default alone", () => {
    expect(parseLockstepConfig(base).compareReplies).toBe(true);
    expect(pluginConfig(base)).not.toHaveProperty("compare_replies");
  });

  it("off renders compare_replies: false into the filter's configuration", () => {
    expect(pluginConfig({ ...base, compareReplies: false })).toMatchObject({ service: "orders", compare_replies: false });
  });

  it("refuses anything but a boolean, naming the field", () => {
    expect(() => parseLockstepConfig({ ...base, compareReplies: "no" })).toThrow(ConfigError);
    expect(() => parseLockstepConfig({ ...base, compareReplies: "no" })).toThrow('"compareReplies" must be true or false');
  });
});
