// The annotated frames of docs/wire-format.md (test/fixtures/wire-frames.json), loaded once
// for the TypeScript codec's tests and the filter's (through the host emulator).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PROJECT_ROOT } from "../../scripts/envoy-binary.ts";

export interface WireFixture {
  name: string;
  direction: "filter->relay" | "relay->filter";
  decoded: Record<string, any>;
  segments: { hex: string; note: string }[];
  hex: string;
}

export const WIRE_FIXTURES: WireFixture[] = JSON.parse(readFileSync(join(PROJECT_ROOT, "test/fixtures/wire-frames.json"), "utf8")).fixtures;

export function fixture(name: string): WireFixture {
  const f = WIRE_FIXTURES.find((x) => x.name === name);
  if (!f) throw new Error(`no wire fixture named ${name}`);
  return f;
}

export const fixtureBytes = (name: string) => Buffer.from(fixture(name).hex, "hex");
