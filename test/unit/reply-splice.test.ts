// Session mode's reply stream (relay/reply-splice.ts): the client gets the leader's bytes once,
// in order; a takeover sends on only what lies past what the client got; a member whose
// replies differ anywhere, or ran past a bound, may not take over.
import { describe, it, expect } from "vitest";
import { ReplySplice } from "../../relay/reply-splice.ts";

function make(bounds: { aheadBytes: number; behindBytes: number; budget?: { take(n: number): boolean; give(n: number): void } } = { aheadBytes: 1 << 20, behindBytes: 1 << 20 }) {
  const sent: Buffer[] = [];
  const diverged: [string, number][] = [];
  const overflowed: string[] = [];
  const splice = new ReplySplice<string>("p", ["s", "r"], bounds, {
    send: (b) => sent.push(b),
    diverged: (k, offset) => diverged.push([k, offset]),
    overflowed: (k) => overflowed.push(k),
  });
  return { splice, client: () => Buffer.concat(sent).toString(), diverged, overflowed };
}
const b = (s: string) => Buffer.from(s);

describe("the session reply stream", () => {
  it("sends the leader's bytes and matches members ahead and behind at any chunking", () => {
    const { splice, client, diverged } = make();
    splice.bytes("s", b("+OK\r\n+O")); // ahead
    splice.bytes("p", b("+OK\r"));
    splice.bytes("p", b("\n+OK\r\n:1\r\n"));
    splice.bytes("s", b("K\r\n:1\r\n"));
    splice.bytes("r", b("+OK\r\n+OK\r\n:1\r\n")); // behind, all at once
    expect(client()).toBe("+OK\r\n+OK\r\n:1\r\n");
    expect(diverged).toEqual([]);
    expect(splice.endsWithR("s") && splice.endsWithR("r")).toBe(true);
    expect(splice.keptBytes).toBe(0);
  });

  it("on takeover sends only what the client has not got, from a successor ahead", () => {
    const { splice, client } = make();
    splice.bytes("p", b("$5\r\nhel"));
    splice.bytes("s", b("$5\r\nhello\r\n$5\r\nworld\r\n"));
    expect(splice.takeOver("s")).toBe(true);
    expect(client()).toBe("$5\r\nhello\r\n$5\r\nworld\r\n");
    splice.bytes("p", b("lo\r\n")); // the failed leader is not heard any more
    splice.bytes("s", b(":7\r\n"));
    expect(client()).toBe("$5\r\nhello\r\n$5\r\nworld\r\n:7\r\n");
  });

  it("on takeover checks a successor behind against what the client got before sending on", () => {
    const { splice, client, diverged } = make();
    splice.bytes("p", b("abcdef"));
    splice.bytes("s", b("ab"));
    expect(splice.takeOver("s")).toBe(true);
    splice.bytes("s", b("cdefgh"));
    expect(client()).toBe("abcdefgh");
    expect(diverged).toEqual([]);
    // r, behind too, is compared with the new leader's bytes as well
    splice.bytes("r", b("abcdefgX"));
    expect(diverged).toEqual([["r", 7]]);
  });

  it("never lets a member that differed take over, and names the first differing byte", () => {
    const { splice, client, diverged } = make();
    splice.bytes("p", b("VALUE 1\n"));
    splice.bytes("s", b("VALUE 2\n"));
    expect(diverged).toEqual([["s", 6]]);
    expect(splice.state("s")).toBe("diverged");
    expect(splice.takeOver("s")).toBe(false);
    expect(client()).toBe("VALUE 1\n");
  });

  it("a member ahead past the bound, or behind past it, may not take over", () => {
    const { splice, overflowed } = make({ aheadBytes: 8, behindBytes: 8 });
    splice.bytes("s", b("0123456789"));
    expect(overflowed).toEqual(["s"]);
    splice.bytes("p", b("0123456789"));
    expect(overflowed).toEqual(["s", "r"]); // r produced nothing: 10 bytes of R would be kept for it
    expect(splice.takeOver("s")).toBe(false);
    expect(splice.takeOver("r")).toBe(false);
    expect(splice.keptBytes).toBe(0);
  });

  it("takes every byte it holds from the relay's budget, overflows a member when it is spent, and gives all back", () => {
    let held = 0;
    const budget = { take: (n: number) => (held + n > 12 ? false : (held += n, true)), give: (n: number) => { held -= n; } };
    const { splice, overflowed, client } = make({ aheadBytes: 1 << 20, behindBytes: 1 << 20, budget });
    splice.bytes("s", b("0123456789")); // s ahead by 10
    expect(held).toBe(10);
    splice.bytes("p", b("01234")); // 5 of s matched; r is behind by 5: kept
    expect(held).toBe(5 + 5);
    splice.bytes("r", b("0123"));
    expect(held).toBe(5 + 1);
    splice.bytes("s", b("ABCDEFGHIJ")); // 15 ahead would pass the budget: s overflows, its bytes given back
    expect(overflowed).toEqual(["s"]);
    expect(held).toBe(1);
    splice.bytes("p", b("56789"));
    expect(client()).toBe("0123456789");
    splice.dispose();
    expect(held).toBe(0);
  });

  it("gives back a successor's bytes ahead when it takes over", () => {
    let held = 0;
    const budget = { take: (n: number) => ((held += n), true), give: (n: number) => { held -= n; } };
    const { splice, client } = make({ aheadBytes: 1 << 20, behindBytes: 1 << 20, budget });
    splice.bytes("p", b("ab"));
    splice.bytes("r", b("ab"));
    splice.bytes("s", b("abcdef"));
    expect(splice.takeOver("s")).toBe(true);
    expect(client()).toBe("abcdef");
    expect(held).toBe(4); // "cdef" kept for r, which has not produced them yet
    splice.bytes("r", b("cdef"));
    expect(held).toBe(0);
  });
});
