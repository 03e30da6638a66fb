import { describe, expect, it } from "vitest";
import { highlight, tokenize } from "./sql";

const kinds = (sql: string) => tokenize(sql).filter((t) => t.kind !== "space").map((t) => [t.kind, t.text]);

describe("the statement highlighter", () => {
  it("marks keywords, parameters, identifiers and comments", () => {
    expect(kinds("/* reason: audit */ SELECT pan FROM payments WHERE id = $1")).toEqual([
      ["comment", "/* reason: audit */"],
      ["keyword", "SELECT"],
      ["ident", "pan"],
      ["keyword", "FROM"],
      ["ident", "payments"],
      ["keyword", "WHERE"],
      ["ident", "id"],
      ["op", "="],
      ["param", "$1"],
    ]);
  });

  it("keeps every character, whatever the input", () => {
    for (const sql of ["SELECT 'it''s', E'a\\'b', $$x$$, \"Odd \"\"name\"\"\" -- end", "'unterminated", "/* open", "$tag$ never closed", "1.5e3 + 2"]) {
      expect(tokenize(sql).map((t) => t.text).join("")).toBe(sql);
    }
  });

  it("builds text nodes, never markup", () => {
    const pre = document.createElement("pre");
    highlight("SELECT '<img src=x onerror=alert(1)>' FROM t", pre);
    expect(pre.querySelector("img")).toBeNull();
    expect(pre.textContent).toBe("SELECT '<img src=x onerror=alert(1)>' FROM t");
    expect(pre.querySelector(".sql-keyword")?.textContent).toBe("SELECT");
    expect(pre.querySelector(".sql-string")?.textContent).toBe("'<img src=x onerror=alert(1)>'");
  });
});
