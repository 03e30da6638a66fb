import { describe, expect, it } from "vitest";
import type { Frame, FramePage, MarkerList, SessionDetail } from "./generated/types";
import { IDLE_CAP_MS, PAGE, Player, frameDetail, frameLink, markOf, nearMarker, parseLink, playDelay, visibleRange } from "./player";
import { filterOf } from "./sessions";
import { dayWindow } from "./evidence";

const frame = (seq: number, kind = "statement", body: Record<string, unknown> = { text: `SELECT ${seq}`, decision: "allowed", approval: null }): Frame => ({
  seq,
  at_us: seq * 1000,
  kind,
  body,
});

/** A source for a session of `total` frames that counts the pages asked for. */
function source(total: number) {
  const asked: number[] = [];
  const detail: SessionDetail = {
    session: {
      id: "s1", started_at: "2026-12-01T10:00:00Z", ended_at: null, subject: "agent-7", kind: "agent",
      connection: "payments", client: "127.0.0.1:1", protocol: "postgres", started_ms: 0, statements: total, refused: 1, held: 1,
      masked: 0, errors: 0, frames: total,
    },
    last_frame: { seq: total - 1, at_us: (total - 1) * 1000 },
    previews: true,
  };
  return {
    asked,
    session: async () => detail,
    markers: async (): Promise<MarkerList> => ({
      markers: [
        { seq: 10, at_us: 10_000, mark: "refused" },
        { seq: 70_000, at_us: 70_000_000, mark: "approved" },
      ],
      truncated: false,
    }),
    frames: async (_id: string, after: number, limit: number): Promise<FramePage> => {
      asked.push(after);
      const frames: Frame[] = [];
      for (let s = after + 1; s < Math.min(total, after + 1 + limit); s += 1) frames.push(frame(s));
      return { frames, next_after: frames.length === limit ? after + limit : null };
    },
    search: async () => ({ matches: [42, 99_000], truncated: false }),
  };
}

describe("the player", () => {
  it("caps idle gaps and speeds up", () => {
    const a = frame(0);
    const b = { ...frame(1), at_us: 60_000_000 };
    expect(playDelay(a, b, 1)).toBe(IDLE_CAP_MS);
    expect(playDelay(a, b, 16)).toBe(IDLE_CAP_MS / 16);
    expect(playDelay(a, { ...frame(1), at_us: 400_000 }, 4)).toBe(100);
  });

  it("renders only the rows in view", () => {
    expect(visibleRange(0, 600, 100_000)).toEqual([0, 30]);
    expect(visibleRange(30 * 50_000, 600, 100_000)).toEqual([49_990, 50_030]);
    expect(visibleRange(0, 600, 5)).toEqual([0, 5]);
  });

  it("finds markers either side", () => {
    const m = [
      { seq: 10, at_us: 0, mark: "refused" },
      { seq: 20, at_us: 0, mark: "approved" },
    ];
    expect(nearMarker(m, 0, 1)?.seq).toBe(10);
    expect(nearMarker(m, 10, 1)?.seq).toBe(20);
    expect(nearMarker(m, 15, -1)?.seq).toBe(10);
    expect(nearMarker(m, 20, 1)).toBeNull();
  });

  it("links to a frame and reads the link back, refusing anything else", () => {
    expect(parseLink(frameLink("aB3-_x", 77))).toEqual({ session: "aB3-_x", frame: 77 });
    for (const bad of ["https://x/session/a", "tollgate://session/../x", "tollgate://session/a?frame=-1", "tollgate://session/a b"]) {
      expect(parseLink(bad)).toBeNull();
    }
  });

  it("marks what the gateway marks", () => {
    expect(markOf(frame(1, "statement", { decision: "refused", approval: null }))).toBe("refused");
    expect(markOf(frame(1, "statement", { decision: "allowed", approval: "ap_1", approval_state: "approved" }))).toBe("approved");
    expect(markOf(frame(1, "statement", { decision: "refused", approval: "ap_1", approval_state: "denied" }))).toBe("denied");
    expect(markOf(frame(1, "result", { masked: 3 }))).toBe("masked");
    expect(markOf(frame(1, "result", { masked: 0 }))).toBeNull();
  });

  it("says why result rows are withheld instead of showing an empty grid", () => {
    const result = frame(5, "result", { tag: "SELECT 3", rows: 3, columns: ["pan"], withheld: "result rows: analysts only" });
    const el = frameDetail(result, false, ["auditor"]);
    expect(el.querySelector("[data-test=withheld]")?.textContent).toContain("auditor");
    expect(el.querySelector("table")).toBeNull();
    const shown = frameDetail(frame(5, "result", { tag: "SELECT 1", rows: 1, columns: ["pan"], preview: [["411111******1111"]], preview_complete: true }), true, ["analyst"]);
    expect(shown.querySelector("[data-test=result-grid] td")?.textContent).toBe("411111******1111");
  });

  it("opens a 100k-frame session with one page and a few dozen rows, and seeks by fetching one more page", async () => {
    const root = document.createElement("div");
    document.body.append(root);
    const src = source(100_000);
    const player = new Player(root, src, { copy: () => {}, error: (m) => { throw new Error(m); }, back: () => {} });
    await player.open("s1", 0);
    expect(src.asked).toEqual([-1]);
    expect(player.renderedRows()).toBeLessThan(60);
    expect(root.querySelectorAll("[data-test=marker]").length).toBe(2);
    await player.seek(50_000);
    expect(player.at()).toBe(50_000);
    expect(src.asked).toContain(Math.floor(50_000 / PAGE) * PAGE - 1);
    expect(src.asked.length).toBeLessThanOrEqual(3);
    expect(root.querySelector("[data-test=frame-sql]")?.textContent).toBe("SELECT 50000");
    // The next marker from here is the approval.
    (root.querySelector("[data-test=next-marker]") as HTMLButtonElement).click();
    await new Promise((r) => setTimeout(r, 0));
    await new Promise((r) => setTimeout(r, 0));
    expect(player.at()).toBe(70_000);
    root.remove();
  });
});

describe("filters and windows", () => {
  it("sends only what is filled in", () => {
    const f = filterOf({ subject: " ", connection: "payments", from: "", to: "", outcome: "refused", q: "delete payments", order: "newest" });
    expect(f).toEqual({ subject: undefined, connection: "payments", from: undefined, to: undefined, outcome: "refused", q: "delete payments", order: undefined, limit: 50 });
  });

  it("makes whole local days, the last one included", () => {
    const w = dayWindow("2026-12-01", "2026-12-01");
    expect(Date.parse(w.to!) - Date.parse(w.from!)).toBe(86_400_000);
    expect(dayWindow("", "")).toEqual({ from: undefined, to: undefined });
  });
});
