// The relay's codec against the shared fixtures of docs/wire-format.md, and its errors on
// malformed frames (the filter's side of the same fixtures: filter-mirror.test.ts).
import { describe, it, expect } from "vitest";
import { crc32 } from "node:zlib";
import { decodeFilterFrame, decodeRelayFrame, encodeAck, encodeClose, encodeOpen, encodeData, encodeEnd, encodeReplyDigest, encodeReplyEnd, FrameError } from "../../relay/frames.ts";
import { WindowedDigest } from "../../relay/reply-check.ts";
import { WIRE_FIXTURES, DIGEST_VECTORS, fixtureBytes, vectorBytes } from "../support/wire-fixtures.ts";

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
        expect({ type: frame.type, offset: frame.offset, bytes: Buffer.concat(frame.parts).toString() }).toEqual(d);
        expect(frame.length).toBe(Buffer.concat(frame.parts).length);
        expect(encodeData(frame.offset, Buffer.concat(frame.parts))).toEqual(bytes);
      } else if (frame.type === "END") {
        expect(frame).toEqual(d);
        expect(encodeEnd(frame.totalBytes)).toEqual(bytes);
      } else if (frame.type === "REPLY_DIGEST") {
        expect(frame).toEqual(d);
        expect(encodeReplyDigest(frame.firstWindow, frame.crcs)).toEqual(bytes);
      } else {
        expect(frame).toEqual(d);
        expect(encodeReplyEnd(frame.totalBytes, frame.tailCrc, frame.end)).toEqual(bytes);
      }
    });
  }

  it("decodes every filter fixture the same from pieces split at every byte (as HTTP/2 delivers them), a DATA frame's bytes unjoined", () => {
    for (const f of WIRE_FIXTURES.filter((x) => x.direction === "filter->relay")) {
      const bytes = Buffer.from(f.hex, "hex");
      const whole = decodeFilterFrame(bytes);
      for (let cut = 1; cut < bytes.length; cut++) {
        const pieces = [bytes.subarray(0, cut), bytes.subarray(cut)];
        const frame = decodeFilterFrame(pieces);
        if (whole.type !== "DATA" || frame.type !== "DATA") { expect(frame, `${f.name} cut at ${cut}`).toEqual(whole); continue; }
        expect({ offset: frame.offset, length: frame.length, bytes: Buffer.concat(frame.parts) }).toEqual({ offset: whole.offset, length: whole.length, bytes: Buffer.concat(whole.parts) });
        // Past the 9-byte header, the bytes stay in the pieces they came in (views, not a copy).
        if (cut > 9) expect(frame.parts.map((p) => p.length)).toEqual([cut - 9, bytes.length - cut]);
      }
    }
  });

  for (const f of WIRE_FIXTURES.filter((x) => x.direction === "relay->filter")) {
    it(`encodes and decodes ${f.name}`, () => {
      const encoded = f.decoded.type === "CLOSE" ? encodeClose(f.decoded.reason) : encodeAck(f.decoded.received, f.decoded.replicas);
      expect(encoded.toString("hex")).toBe(f.hex);
      expect(decodeRelayFrame(Buffer.from(f.hex, "hex"))).toEqual(f.decoded);
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
    ["a REPLY_DIGEST with no window", Buffer.from("04" + "00".repeat(8) + "0000", "hex"), "REPLY_DIGEST frame with count 0"],
    ["a REPLY_DIGEST shorter than its count", fixtureBytes("reply-digest").subarray(0, 15), "REPLY_DIGEST frame truncated: crc 1 needs 4 bytes"],
    ["a REPLY_DIGEST longer than its count", Buffer.concat([fixtureBytes("reply-digest"), Buffer.from([1])]), "1 unexpected trailing bytes"],
    ["a REPLY_END of an unknown kind", Buffer.from(fixtureBytes("reply-end").map((b, i) => (i === 13 ? 9 : b))), "REPLY_END frame: unknown end 9"],
  ])("rejects %s with a precise message", (_what, bytes, message) => {
    expect(() => decodeFilterFrame(bytes)).toThrow(FrameError);
    expect(() => decodeFilterFrame(bytes)).toThrow(message);
  });

  it("reproduces the reply frames from the reply they describe (40000 bytes of \"+OK\\r\\n\")", () => {
    const reply = vectorBytes({ name: "", note: "", patternHex: Buffer.from("+OK\r\n").toString("hex"), length: 40000, crc32: "" });
    const d = new WindowedDigest();
    // Odd chunk sizes: the windows depend on byte offsets only.
    const crcs: number[] = [];
    for (let at = 0, n = 1; at < reply.length; at += n, n = n * 7 % 9973 + 1) crcs.push(...d.push(reply.subarray(at, at + n)));
    expect(encodeReplyDigest(0, crcs)).toEqual(fixtureBytes("reply-digest"));
    expect(encodeReplyEnd(d.total, d.tail, "PRIMARY_CLOSED")).toEqual(fixtureBytes("reply-end"));
  });
});

describe("reply digest vectors (CRC-32, zlib's)", () => {
  it.each(DIGEST_VECTORS.map((v) => [v.name, v] as const))("%s: zlib.crc32 and the windowed digest agree with the fixture", (_name, v) => {
    const bytes = vectorBytes(v);
    expect(crc32(bytes).toString(16).padStart(8, "0")).toBe(v.crc32);
    if (v.length <= 16384) {
      const d = new WindowedDigest();
      const windows = d.push(bytes);
      const crc = v.length === 16384 ? windows[0] : d.tail;
      expect(crc.toString(16).padStart(8, "0")).toBe(v.crc32);
    }
  });
});
