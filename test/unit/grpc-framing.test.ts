// gRPC's 5-byte message framing as the relay decodes it (relay/grpc-framing.ts): messages split
// across chunks anywhere, several in one chunk, views of the chunks (never copies), and bad framing refused
// with the status its stream ends with.
import { describe, it, expect } from "vitest";
import { randomBytes } from "node:crypto";
import { frameMessage, messagePrefix, GrpcFramingError, GrpcMessageDecoder } from "../../relay/grpc-framing.ts";
import { CallStatus } from "../../relay/mirror-call.ts";

function decodeAll(chunks: Buffer[], max = 1 << 20): Buffer[] {
  const decoder = new GrpcMessageDecoder(max);
  const out: Buffer[] = [];
  for (const chunk of chunks) decoder.push(chunk, (m) => out.push(Buffer.concat(m)));
  expect(decoder.midMessage).toBe(false);
  return out;
}


function refusal(chunks: Buffer[], max = 1 << 20): { error: GrpcFramingError; before: Buffer[] } {
  const decoder = new GrpcMessageDecoder(max);
  const before: Buffer[] = [];
  try {
    for (const chunk of chunks) decoder.push(chunk, (m) => before.push(Buffer.concat(m)));
  } catch (error) {
    expect(error).toBeInstanceOf(GrpcFramingError);
    return { error: error as GrpcFramingError, before };
  }
  throw new Error("no framing error");
}

describe("gRPC message framing", () => {
  const messages = [randomBytes(1), randomBytes(300), Buffer.alloc(0), randomBytes(70_000), randomBytes(9)];
  const stream = Buffer.concat(messages.map(frameMessage));

  it("frames a message as flag 0, big-endian length, bytes", () => {
    expect(frameMessage(Buffer.from("abc"))).toEqual(Buffer.from([0, 0, 0, 0, 3, 0x61, 0x62, 0x63]));
  });

  it("decodes several messages from one chunk, in order", () => {
    expect(decodeAll([stream])).toEqual(messages);
  });

  it("decodes messages split across chunks at every byte of the prefix and of the body", () => {
    const small = Buffer.concat([frameMessage(Buffer.from("hello")), frameMessage(Buffer.from("world!"))]);
    for (let a = 1; a < small.length; a++) {
      for (let b = a; b < small.length; b++) {
        const got = decodeAll([small.subarray(0, a), small.subarray(a, b), small.subarray(b)]);
        expect(got.map(String), `split at ${a}, ${b}`).toEqual(["hello", "world!"]);
      }
    }
  });

  it("decodes a stream cut into chunks of any size", () => {
    for (const size of [1, 2, 5, 7, 4096, 16_384, 65_536]) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < stream.length; at += size) chunks.push(stream.subarray(at, at + size));
      expect(decodeAll(chunks), `chunks of ${size}`).toEqual(messages);
    }
  });

  it("hands out every message as views of the chunks it arrived in, never copied", () => {
    const three = frameMessage(Buffer.from("three"));
    const chunk = Buffer.concat([frameMessage(Buffer.from("one")), frameMessage(Buffer.from("two")), three.subarray(0, 7)]);
    const rest = Buffer.from(three.subarray(7));
    const decoder = new GrpcMessageDecoder(1024);
    const got: Buffer[][] = [];
    decoder.push(chunk, (m) => got.push(m));
    expect(got.map((m) => m.length)).toEqual([1, 1]);
    expect(got.map((m) => String(Buffer.concat(m)))).toEqual(["one", "two"]);
    expect(decoder.midMessage).toBe(true);
    decoder.push(rest, (m) => got.push(m));
    expect(decoder.midMessage).toBe(false);
    expect(got[2].map(String)).toEqual(["th", "ree"]); // the two pieces, as they came
    // Views see their chunk change.
    chunk.fill(0x2e);
    rest.fill(0x2e);
    expect(got.map((m) => String(Buffer.concat(m)))).toEqual(["...", "...", "....."]);
  });

  it("hands out an empty message at once, as no piece", () => {
    const decoder = new GrpcMessageDecoder(1024);
    const got: Buffer[][] = [];
    decoder.push(messagePrefix(0), (m) => got.push(m));
    expect(got).toEqual([[]]);
    expect(decoder.midMessage).toBe(false);
  });

  it("knows a stream cut inside a prefix or a body", () => {
    const decoder = new GrpcMessageDecoder(1024);
    decoder.push(messagePrefix(4, 0).subarray(0, 3), () => {});
    expect(decoder.midMessage).toBe(true);
    decoder.push(Buffer.concat([messagePrefix(4, 0).subarray(3), Buffer.from("ab")]), () => {});
    expect(decoder.midMessage).toBe(true);
  });

  it("refuses a compressed message with INVALID_ARGUMENT, after the messages before it", () => {
    const { error, before } = refusal([Buffer.concat([frameMessage(Buffer.from("ok")), messagePrefix(3, 1), Buffer.from("zip")])]);
    expect(error.code).toBe(CallStatus.INVALID_ARGUMENT);
    expect(error.message).toContain("compressed");
    expect(before.map(String)).toEqual(["ok"]);
  });

  it("refuses a compressed flag other than 0 or 1 with INVALID_ARGUMENT, even when the prefix spans chunks", () => {
    const { error } = refusal([Buffer.from([7, 0]), Buffer.from([0, 0, 1, 0x41])]);
    expect(error.code).toBe(CallStatus.INVALID_ARGUMENT);
    expect(error.message).toContain("flag is 7");
  });

  it("refuses a message longer than the maximum with RESOURCE_EXHAUSTED before reading (or allocating) it", () => {
    const { error } = refusal([messagePrefix(0xffff_ffff, 0)], 64 << 20);
    expect(error.code).toBe(CallStatus.RESOURCE_EXHAUSTED);
    expect(error.message).toContain("4294967295 bytes");
    expect(decodeAll([frameMessage(Buffer.alloc(1024))], 1024)).toHaveLength(1); // the maximum itself is fine
    expect(refusal([messagePrefix(1025, 0)], 1024).error.code).toBe(CallStatus.RESOURCE_EXHAUSTED);
  });
});
