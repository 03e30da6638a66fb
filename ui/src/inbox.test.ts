import { beforeEach, describe, expect, it, vi } from "vitest";
import type { Decision, InboxItem, InboxView, RequestView } from "./generated/types";
import { ACTIONS, InboxPanel, decision, details, secondsUntil, step } from "./inbox";

const EXPIRES = new Date(Date.now() + 300_000).toISOString();

function request(id: string, extra: Partial<RequestView> = {}): RequestView {
  return {
    id,
    state: "pending",
    requester: { subject: "agent-7", issuer: "https://dev", groups: ["agents"], mfa: false, kind: "agent" },
    origin: "127.0.0.1",
    session: "s_1",
    connection: "payments",
    statement: "COPY payments TO STDOUT",
    actions: ["copy_out"],
    accesses: ["COPY on public.payments"],
    resources: ["COPY on public.payments", "SELECT on public.orders"],
    cardholder_resources: ["COPY on public.payments"],
    cardholder: true,
    row_estimate: 12,
    policy: "cardholder-bulk-export-needs-approval",
    policy_reason: "bulk export of cardholder data needs an approver's sign-off",
    reason: "nightly settlement",
    requested_at: "2026-12-02T10:00:00Z",
    notified: ["olga"],
    expires_at: EXPIRES,
    expires_in_secs: 300,
    approvals_needed: 1,
    approvals: [],
    decided_by: null,
    decision_reason: null,
    decided_at: null,
    grant: null,
    ...extra,
  };
}

const item = (r: RequestView, cannot: string | null = null): InboxItem => ({ request: r, cannot_decide: cannot });

function view(items: InboxItem[]): InboxView {
  return {
    me: { subject: "olga", issuer: "https://dev", connections: ["payments"] },
    link: { state: "live", detail: null, url: "https://127.0.0.1:6433" },
    items,
    grants: [],
  };
}

describe("an MCP request in the detail pane", () => {
  it("is shown as a tool call, not as SQL with a row estimate", () => {
    const call = request("m", {
      connection: "payments",
      statement: "tools/call export_cards {}  -- Export every card on file",
      actions: ["call_tool"],
      accesses: ["call payments/export_cards"],
      resources: ["call payments/export_cards"],
      cardholder_resources: [],
      cardholder: false,
      row_estimate: null,
    });
    const pane = details(item(call));
    const statement = pane.querySelector("[data-test=statement]") as HTMLElement;
    expect(statement.textContent).toBe("tools/call export_cards {}  -- Export every card on file");
    expect(statement.querySelector("span")).toBeNull();
    const text = pane.textContent ?? "";
    expect(text).toContain("MCP server");
    expect(text).toContain("Tool call");
    expect(text).not.toContain("Estimated rows");
    const sql = details(item(request("s")));
    expect(sql.textContent).toContain("Estimated rows");
    expect(sql.querySelector("[data-test=statement] span")).not.toBeNull();
  });
});

describe("inbox logic", () => {
  it("moves the selection with j and k within bounds", () => {
    const items = [item(request("a")), item(request("b")), item(request("c"))];
    expect(step(items, null, 1)).toBe("a");
    expect(step(items, "a", 1)).toBe("b");
    expect(step(items, "c", 1)).toBe("c");
    expect(step(items, "a", -1)).toBe("a");
    expect(step([], "a", 1)).toBeNull();
  });

  it("requires a reason and carries the window", () => {
    expect(typeof decision(request("a"), ACTIONS[0], "  ")).toBe("string");
    expect(decision(request("a"), ACTIONS[1], " ticket 42 ")).toEqual({ id: "a", approve: true, reason: "ticket 42", window_secs: 900 });
    expect(decision(request("a"), ACTIONS[3], "no")).toEqual({ id: "a", approve: false, reason: "no", window_secs: null });
  });

  it("counts down to the expiry", () => {
    expect(secondsUntil("2026-12-02T10:05:00Z", Date.parse("2026-12-02T10:00:00Z"))).toBe(300);
    expect(secondsUntil("2026-12-02T09:00:00Z", Date.parse("2026-12-02T10:00:00Z"))).toBe(0);
  });
});

describe("the inbox panel", () => {
  let root: HTMLElement;
  let decided: Decision[];
  let panel: InboxPanel;
  beforeEach(() => {
    document.body.replaceChildren();
    root = document.createElement("div");
    document.body.append(root);
    decided = [];
    panel = new InboxPanel(root, {
      decide: async (d) => {
        decided.push(d);
        return null;
      },
      elsewhere: () => {},
    });
  });

  it("says what to do when empty", () => {
    panel.update(view([]));
    expect(root.textContent).toContain("No approval requests");
    expect(root.textContent).toContain("COPY payments TO STDOUT");
  });

  it("keeps a request's element when others arrive, so nothing is rebuilt", () => {
    panel.update(view([item(request("ap_1"))]));
    const first = root.querySelector('[data-id="ap_1"]');
    panel.update(view([item(request("ap_2")), item(request("ap_1"))]));
    expect(root.querySelector('[data-id="ap_1"]')).toBe(first);
    const ids = [...root.querySelectorAll("[data-id]")].map((e) => e.getAttribute("data-id"));
    expect(ids).toEqual(["ap_2", "ap_1"]);
    // The selection stays on the request the approver was reading.
    expect(first?.classList.contains("selected")).toBe(true);
  });

  it("shows what an approver needs in the detail pane, card data marked", () => {
    panel.update(view([item(request("ap_1"))]));
    const detail = root.querySelector('[data-test="detail"]')!;
    expect(detail.querySelector('[data-test="statement"]')?.textContent).toBe("COPY payments TO STDOUT");
    expect(detail.textContent).toContain("agent-7");
    expect(detail.textContent).toContain("no MFA");
    expect(detail.textContent).toContain("cardholder-bulk-export-needs-approval");
    expect(detail.textContent).toContain("nightly settlement");
    expect(detail.textContent).toContain("0 of 1");
    const card = [...detail.querySelectorAll(".resources li.holds-card")].map((l) => l.textContent);
    expect(card).toEqual(["Card dataCOPY on public.payments"]);
  });

  it("decides with a, a reason and Enter", async () => {
    panel.update(view([item(request("ap_1"))]));
    panel.key(new KeyboardEvent("keydown", { key: "a" }));
    const reason = root.querySelector<HTMLTextAreaElement>('[data-test="reason"]')!;
    expect(document.activeElement).toBe(reason);
    reason.value = "ticket 42";
    reason.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter" }));
    await vi.waitFor(() => expect(decided).toHaveLength(1));
    expect(decided[0]).toEqual({ id: "ap_1", approve: true, reason: "ticket 42", window_secs: null });
  });

  it("never sends a reason written for one request with another", async () => {
    panel.update(view([item(request("ap_1")), item(request("ap_2"))]));
    panel.key(new KeyboardEvent("keydown", { key: "a" }));
    const reason = root.querySelector<HTMLTextAreaElement>('[data-test="reason"]')!;
    reason.value = "ok for ap_1";
    reason.blur();
    panel.key(new KeyboardEvent("keydown", { key: "j" }));
    expect(reason.value).toBe("");
    reason.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter" }));
    await Promise.resolve();
    expect(decided).toHaveLength(0);
  });

  it("leaves Enter to a focused button", () => {
    panel.update(view([item(request("ap_1"))]));
    const deny = root.querySelector<HTMLButtonElement>('[data-test="deny"]')!;
    const enter = new KeyboardEvent("keydown", { key: "Enter", bubbles: true });
    Object.defineProperty(enter, "target", { value: deny });
    expect(panel.key(enter)).toBe(false);
    const j = new KeyboardEvent("keydown", { key: "j", bubbles: true });
    Object.defineProperty(j, "target", { value: deny });
    expect(panel.key(j)).toBe(true);
  });

  it("refuses to send without a reason", async () => {
    panel.update(view([item(request("ap_1"))]));
    root.querySelector<HTMLButtonElement>('[data-test="deny"]')!.click();
    await Promise.resolve();
    expect(decided).toHaveLength(0);
    expect(root.querySelector(".form-error")?.textContent).toContain("Write a reason first");
  });

  it("disables the buttons with the reason when the approver may not decide", () => {
    panel.update(view([item(request("ap_1", { requester: { subject: "olga", issuer: "https://dev", groups: [], mfa: true, kind: "person" } }), "You (olga) made this request: another approver has to decide it.")]));
    const approve = root.querySelector<HTMLButtonElement>('[data-test="approve-once"]')!;
    expect(approve.disabled).toBe(true);
    expect(approve.title).toContain("made this request");
    expect(root.querySelector('[data-test="blocked"]')?.textContent).toContain("another approver has to decide it");
  });

  it("lists decisions under their own heading with who decided", () => {
    const done = request("ap_0", { state: "denied", decided_by: "ravi", decided_at: "2026-12-02T10:01:00Z", decision_reason: "no ticket" });
    panel.update(view([item(request("ap_1")), item(done, "This request is denied.")]));
    const list = root.querySelector('[data-test="requests"]')!;
    expect([...list.children].map((c) => c.className.split(" ")[0])).toEqual(["row", "section", "row"]);
    expect(list.textContent).toContain("Denied by ravi");
  });
});
