import { describe, expect, it } from "vitest";
import { countdown, rows } from "./format";

describe("formatting", () => {
  it("counts down in minutes and seconds, then hours", () => {
    expect(countdown(0)).toBe("expired");
    expect(countdown(5)).toBe("0:05");
    expect(countdown(299)).toBe("4:59");
    expect(countdown(3723)).toBe("1:02:03");
  });

  it("says when the estimate is unknown", () => {
    expect(rows(null)).toBe("unknown");
    expect(rows(1204)).toBe("1,204");
    expect(rows(2_400_000)).toBe("~2.4M");
  });
});
