// The annotated frames of docs/wire-format.md (test/fixtures/wire-frames.json), loaded once
// for the TypeScript codec's tests and the filter's (through the host emulator): bare frames
// ("fixtures"), digest vectors ("digests"), and whole messages of the Channels transport
// ("channels").
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

/** A message of the Channels transport: `hex` is the whole gRPC message (channel u32 LE, then one
 *  frame); `decoded.frame` is shaped as a WireFixture's `decoded` (FINISH and CANCEL:
 *  {type}; STATUS: {type, code, details}). Kept apart from WIRE_FIXTURES, whose every entry is a
 *  bare frame. */
export interface ChannelFixture {
  name: string;
  direction: "filter->relay" | "relay->filter";
  decoded: { channel: number; frame: Record<string, any> };
  segments: { hex: string; note: string }[];
  hex: string;
}

/** A CRC-32 test vector of the reply digest: `patternHex` repeated to `length` bytes. */
export interface DigestVector { name: string; note: string; patternHex: string; length: number; crc32: string }

const FILE = JSON.parse(readFileSync(join(PROJECT_ROOT, "test/fixtures/wire-frames.json"), "utf8"));
export const WIRE_FIXTURES: WireFixture[] = FILE.fixtures;
export const DIGEST_VECTORS: DigestVector[] = FILE.digests;
export const CHANNEL_FIXTURES: ChannelFixture[] = FILE.channels;

export function vectorBytes(v: DigestVector): Buffer {
  const pattern = Buffer.from(v.patternHex, "hex");
  const out = Buffer.alloc(v.length);
  for (let i = 0; i < v.length; i++) out[i] = pattern[i % pattern.length];
  return out;
}

export function fixture(name: string): WireFixture {
  const f = WIRE_FIXTURES.find((x) => x.name === name);
  if (!f) throw new Error(`no wire fixture named ${name}`);
  return f;
}

export const fixtureBytes = (name: string) => Buffer.from(fixture(name).hex, "hex");

export function channelFixture(name: string): ChannelFixture {
  const f = CHANNEL_FIXTURES.find((x) => x.name === name);
  if (!f) throw new Error(`no channel fixture named ${name}`);
  return f;
}

export const channelFixtureBytes = (name: string) => Buffer.from(channelFixture(name).hex, "hex");
