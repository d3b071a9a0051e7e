// The relay's codec against the shared fixtures of docs/wire-format.md, and its errors on
// malformed frames (the filter's side of the same fixtures: filter-mirror.test.ts).
import { describe, it, expect } from "vitest";
import { decodeFilterFrame, decodeAck, encodeAck, encodeOpen, encodeData, encodeEnd, FrameError } from "../../relay/frames.ts";
import { WIRE_FIXTURES, fixtureBytes } from "../support/wire-fixtures.ts";

describe("wire format fixtures", () => {
  it("annotates every byte of every fixture", () => {
    expect(WIRE_FIXTURES.length).toBeGreaterThanOrEqual(8);
    for (const f of WIRE_FIXTURES) expect(f.segments.map((s) => s.hex).join(""), f.name).toBe(f.hex);
  });

  for (const f of WIRE_FIXTURES.filter((x) => x.direction === "filter->relay")) {
    it(`decodes and re-encodes ${f.name}`, () => {
      const bytes = Buffer.from(f.hex, "hex");
      const frame = decodeFilterFrame(bytes);
      const d = f.decoded;
      if (frame.type === "OPEN") {
        expect({ ...frame, connectionId: Number(frame.connectionId) }).toEqual({ ...d });
        expect(encodeOpen({ ...frame })).toEqual(bytes);
      } else if (frame.type === "DATA") {
        expect({ type: frame.type, offset: frame.offset, bytes: frame.bytes.toString() }).toEqual(d);
        expect(encodeData(frame.offset, frame.bytes)).toEqual(bytes);
      } else {
        expect(frame).toEqual(d);
        expect(encodeEnd(frame.totalBytes)).toEqual(bytes);
      }
    });
  }

  for (const f of WIRE_FIXTURES.filter((x) => x.direction === "relay->filter")) {
    it(`encodes and decodes ${f.name}`, () => {
      expect(encodeAck(f.decoded.received, f.decoded.replicas).toString("hex")).toBe(f.hex);
      expect(decodeAck(Buffer.from(f.hex, "hex"))).toEqual(f.decoded);
    });
  }

  it.each([
    ["an empty frame", Buffer.alloc(0), "empty frame"],
    ["an unknown type", Buffer.from([0x7f]), "unknown frame type 0x7f"],
    ["a truncated OPEN", fixtureBytes("open").subarray(0, 12), "OPEN frame truncated"],
    ["an OPEN with a string longer than the frame", Buffer.concat([fixtureBytes("open").subarray(0, 11), Buffer.from([0xff, 0x00])]), "OPEN frame truncated: service needs 255 bytes"],
    ["an OPEN of another version", Buffer.from(fixtureBytes("open").map((b, i) => (i === 1 ? 9 : b))), "unsupported version 9"],
    ["an END with trailing bytes", Buffer.concat([fixtureBytes("end"), Buffer.from([0])]), "1 unexpected trailing bytes"],
    ["a truncated DATA header", fixtureBytes("data").subarray(0, 5), "DATA frame truncated"],
  ])("rejects %s with a precise message", (_what, bytes, message) => {
    expect(() => decodeFilterFrame(bytes)).toThrow(FrameError);
    expect(() => decodeFilterFrame(bytes)).toThrow(message);
  });
});
