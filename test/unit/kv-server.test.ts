// The sample key-value server's commands for the fault-injection workload and for reseeding:
// APPEND (with its silent counter), EXPORT and IMPORT, deterministic and exact.
import { describe, it, expect } from "vitest";
import { createKvServer } from "../../samples/kv-server.ts";

describe("kv-server APPEND, EXPORT, IMPORT", () => {
  it("APPEND answers the list's new length, keeps the order, and counts silently", () => {
    const { execute } = createKvServer();
    expect(execute("APPEND log:c1:1 c1-1 n:c1")).toBe("1");
    expect(execute("APPEND log:c1:1 c1-2 n:c1")).toBe("2");
    expect(execute("APPEND log:c1:2 c1-3 n:c1")).toBe("1");
    expect(execute("APPEND log:c1:3 c1-4")).toBe("1");
    expect(execute("GET log:c1:1")).toBe("VALUE c1-1 c1-2");
    expect(execute("GET n:c1")).toBe("VALUE 3");
    expect(execute("APPEND onlykey")).toMatch(/^ERR/);
  });

  it("IMPORT of another instance's EXPORT gives the same DIGEST; a bad IMPORT changes nothing", () => {
    const a = createKvServer("a");
    const b = createKvServer("b");
    for (const line of ["SET k some value with spaces", "APPEND l t1 n", "APPEND l t2 n", "INCR i"]) a.execute(line);
    b.execute("SET stale 1");
    const exported = a.execute("EXPORT");
    expect(JSON.parse(exported)).toEqual({ i: "1", k: "some value with spaces", l: "t1 t2", n: "2" });
    expect(b.execute(`IMPORT ${exported}`)).toBe("OK");
    expect(b.execute("DIGEST")).toBe(a.execute("DIGEST"));
    expect(b.execute("IMPORT [1,2]")).toMatch(/^ERR/);
    expect(b.execute('IMPORT {"x": 1}')).toMatch(/^ERR/);
    expect(b.execute("IMPORT {not json")).toMatch(/^ERR/);
    expect(b.execute("DIGEST")).toBe(a.execute("DIGEST"));
  });
});
