// The approvals inbox: a list (pending newest first, then recent decisions)
// and a detail pane with the decision form. The core sends the whole inbox
// on every change; this view keeps one element per request and updates it
// in place, so nothing jumps when requests arrive.

import type { Decision, InboxItem, InboxView, RequestView } from "./generated/types";
import { clock, countdown, plural, rows } from "./format";
import { h } from "./dom";
import { highlight } from "./sql";

/** What a decision button does. */
export interface Action {
  approve: boolean;
  /** Seconds for a window approval; null: once. */
  window: number | null;
  label: string;
}

export const ACTIONS: Action[] = [
  { approve: true, window: null, label: "Approve once" },
  { approve: true, window: 15 * 60, label: "Approve 15 min" },
  { approve: true, window: 60 * 60, label: "Approve 1 h" },
  { approve: false, window: null, label: "Deny" },
];

/** What decides whether a request's elements need rebuilding: everything
 * but the seconds-left counter (the view counts down from `expires_at`). */
function signature(item: InboxItem): string {
  return JSON.stringify({ ...item, request: { ...item.request, expires_in_secs: 0 } });
}

/** Seconds until an RFC 3339 time. */
export function secondsUntil(rfc3339: string, now: number = Date.now()): number {
  const t = Date.parse(rfc3339);
  return Number.isNaN(t) ? 0 : Math.max(0, Math.round((t - now) / 1000));
}

/** The id `step` places from `selected` (j: +1, k: -1), staying in bounds. */
export function step(items: InboxItem[], selected: string | null, by: number): string | null {
  if (items.length === 0) return null;
  const at = items.findIndex((i) => i.request.id === selected);
  if (at < 0) return items[0].request.id;
  return items[Math.min(items.length - 1, Math.max(0, at + by))].request.id;
}

/** A decision, or why it cannot be sent yet. */
export function decision(request: RequestView, action: Action, reason: string): Decision | string {
  if (!reason.trim()) return "Write a reason first: it goes into the audit log, and the requester is told.";
  return { id: request.id, approve: action.approve, reason: reason.trim(), window_secs: action.window };
}

/** What is asked, in a few words: the held accesses, else the statement. */
/** What an MCP request is (a tool call, resource read or prompt), or null for SQL. */
export function mcpKind(request: RequestView): string | null {
  if (request.actions.includes("call_tool")) return "Tool call";
  if (request.actions.includes("read_resource")) return "Resource read";
  if (request.actions.includes("get_prompt")) return "Prompt";
  return null;
}

export function headline(request: RequestView): string {
  if (request.accesses.length > 0) return request.accesses.join(", ");
  return request.statement.length > 80 ? `${request.statement.slice(0, 77)}...` : request.statement;
}

function stateLabel(request: RequestView): string {
  switch (request.state) {
    case "approved":
      return `Approved by ${request.decided_by ?? "?"}`;
    case "denied":
      return `Denied by ${request.decided_by ?? "?"}`;
    case "expired":
      return "Expired";
    case "withdrawn":
      return "Withdrawn";
    default:
      return "Pending";
  }
}

function who(request: RequestView): HTMLElement {
  const r = request.requester;
  return h(
    "span",
    { class: "who" },
    h("span", { class: `kind kind-${r.kind}` }, r.kind === "agent" ? "Agent" : "Person"),
    h("strong", {}, r.subject),
  );
}

/** One row of the list. */
export function listRow(item: InboxItem): HTMLElement {
  const r = item.request;
  const pending = r.state === "pending";
  const row = h(
    "li",
    { class: `row state-${r.state}`, "data-id": r.id, tabindex: "-1" },
    h(
      "div",
      { class: "row-top" },
      who(r),
      h("span", { class: "muted" }, `on ${r.connection}`),
      pending
        ? h("span", { class: "timer", "data-expires": r.expires_at }, countdown(secondsUntil(r.expires_at)))
        : h("span", { class: `outcome outcome-${r.state}` }, stateLabel(r)),
    ),
    h("div", { class: "row-what" }, headline(r)),
    h(
      "div",
      { class: "row-meta" },
      r.cardholder ? h("span", { class: "chip chip-card" }, "Card data") : null,
      h("span", { class: "chip" }, mcpKind(r) ?? `${rows(r.row_estimate)} rows`),
      h("span", { class: "chip", title: "approvals so far, of those needed" }, `${r.approvals.length}/${r.approvals_needed} approved`),
      pending ? null : h("span", { class: "muted" }, clock(r.decided_at)),
    ),
  );
  return row;
}

/** The detail pane's body for one request (the decision form is separate). */
export function details(item: InboxItem): HTMLElement {
  const r = item.request;
  const mcp = mcpKind(r);
  // A tool call is not SQL: shown as it was recorded, not highlighted.
  const statement = h("pre", { class: mcp ? "sql mcp" : "sql", "data-test": "statement" });
  if (mcp) statement.textContent = r.statement;
  else highlight(r.statement, statement);
  const card = new Set(r.cardholder_resources);
  const pending = r.state === "pending";
  const field = (label: string, ...value: (Node | string | null)[]) =>
    h("div", { class: "field" }, h("dt", {}, label), h("dd", {}, ...value));
  return h(
    "div",
    { class: "details" },
    h(
      "header",
      { class: "detail-head" },
      h("h2", {}, headline(r)),
      pending
        ? h("span", { class: "timer big", "data-expires": r.expires_at }, countdown(secondsUntil(r.expires_at)))
        : h("span", { class: `outcome outcome-${r.state}` }, stateLabel(r)),
    ),
    statement,
    h(
      "dl",
      { class: "fields" },
      field(
        "Requester",
        who(r),
        " ",
        h("span", { class: "muted" }, r.requester.groups.length ? r.requester.groups.join(", ") : "no groups"),
        " ",
        h("span", { class: r.requester.mfa ? "chip chip-ok" : "chip chip-warn" }, r.requester.mfa ? "MFA" : "no MFA"),
      ),
      field(
        mcp ? "MCP server" : "Connection",
        `${r.connection} from ${r.origin}`,
        r.session ? h("span", { class: "muted" }, ` · session ${r.session}`) : null,
      ),
      field(
        "Touches",
        h(
          "ul",
          { class: "resources" },
          ...r.resources.map((res) =>
            h("li", { class: card.has(res) ? "holds-card" : "" }, card.has(res) ? h("span", { class: "chip chip-card" }, "Card data") : null, res),
          ),
        ),
      ),
      mcp ? field("Kind", mcp) : field("Estimated rows", rows(r.row_estimate)),
      field("Policy", h("code", {}, r.policy), h("div", { class: "muted" }, r.policy_reason)),
      field("Their reason", r.reason ? h("q", {}, r.reason) : h("span", { class: "muted" }, "none given")),
      field("Notified", r.notified.length ? r.notified.join(", ") : h("span", { class: "muted" }, "no approver was connected")),
      field(
        "Votes",
        `${r.approvals.length} of ${r.approvals_needed}`,
        ...r.approvals.map((v) =>
          h("div", { class: "vote" }, h("strong", {}, v.approver), ` ${clock(v.at)}: `, h("q", {}, v.reason)),
        ),
      ),
      field("Asked", clock(r.requested_at)),
      pending
        ? null
        : field(
            "Decision",
            stateLabel(r),
            r.decided_at ? ` at ${clock(r.decided_at)}` : "",
            r.decision_reason ? h("div", {}, h("q", {}, r.decision_reason)) : null,
          ),
    ),
  );
}

export interface InboxHandlers {
  decide(decision: Decision): Promise<string | null>;
  /** Tell the approver something about a request they are no longer looking at. */
  elsewhere(message: string): void;
}

/** The inbox panel. */
export class InboxPanel {
  private view: InboxView | null = null;
  private selected: string | null = null;
  private rows = new Map<string, { el: HTMLElement; sig: string }>();
  private detailSig = "";
  private action: Action | null = null;
  private submitting = false;
  private readonly list: HTMLElement;
  private readonly detail: HTMLElement;
  private readonly form: HTMLElement;
  private readonly reason: HTMLTextAreaElement;
  private readonly blocked: HTMLElement;
  private readonly formError: HTMLElement;
  private readonly hint: HTMLElement;
  private readonly buttons: HTMLButtonElement[];
  private readonly empty: HTMLElement;

  constructor(
    private readonly root: HTMLElement,
    private readonly handlers: InboxHandlers,
  ) {
    this.list = h("ul", { class: "list", "data-test": "requests" });
    this.empty = h("div", { class: "empty" });
    this.detail = h("div", { class: "detail-body" });
    this.reason = h("textarea", {
      class: "reason",
      rows: "2",
      placeholder: "Why? Required: it goes into the audit log, and the requester is told.",
      "data-test": "reason",
    });
    this.buttons = ACTIONS.map((action) => {
      const button = h(
        "button",
        { class: action.approve ? "primary" : "danger", "data-test": action.approve ? `approve-${action.window ?? "once"}` : "deny" },
        action.label,
      );
      button.addEventListener("click", () => void this.submit(action));
      return button;
    });
    this.blocked = h("div", { class: "blocked", "data-test": "blocked" });
    this.formError = h("div", { class: "form-error", role: "alert" });
    this.hint = h("div", { class: "keys muted" });
    this.form = h(
      "div",
      { class: "decide" },
      this.blocked,
      this.reason,
      h("div", { class: "buttons" }, ...this.buttons),
      this.formError,
      this.hint,
    );
    this.reason.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        void this.submit(this.action ?? null);
      } else if (e.key === "Escape") {
        this.setAction(null);
        this.reason.blur();
      }
    });
    root.replaceChildren(
      h("section", { class: "pane list-pane" }, this.empty, this.list),
      h("section", { class: "pane detail-pane", "data-test": "detail" }, this.detail, this.form),
    );
    this.setAction(null);
    this.render();
  }

  /** The inbox changed. */
  update(view: InboxView): void {
    this.view = view;
    if (!view.items.some((i) => i.request.id === this.selected)) {
      const first = view.items.find((i) => i.request.state === "pending") ?? view.items[0];
      this.select(first ? first.request.id : null);
    }
    this.render();
  }

  /** Show this request (a notification was clicked). */
  focus(id: string): void {
    if (this.view?.items.some((i) => i.request.id === id)) {
      this.select(id);
      this.render();
    }
  }

  /** Change the selection. A reason and an armed decision belong to the
   * request they were written for: they go with the selection. */
  private select(id: string | null): void {
    if (id === this.selected) return;
    this.selected = id;
    this.reason.value = "";
    this.formError.textContent = "";
    this.setAction(null);
  }

  /** Pending requests. */
  pendingCount(): number {
    return this.view?.items.filter((i) => i.request.state === "pending").length ?? 0;
  }

  /** Refresh the countdowns (every second). */
  tick(now: number = Date.now()): void {
    for (const el of this.root.querySelectorAll<HTMLElement>("[data-expires]")) {
      el.textContent = countdown(secondsUntil(el.dataset.expires ?? "", now));
    }
  }

  /** Keyboard shortcuts: j/k move, a approve, d deny, Enter decide, Escape cancel. */
  key(e: KeyboardEvent): boolean {
    const target = e.target;
    const typing =
      target instanceof HTMLTextAreaElement ||
      target instanceof HTMLInputElement ||
      target instanceof HTMLSelectElement ||
      (target instanceof HTMLElement && target.isContentEditable);
    // A focused button or link keeps Enter and space; the letters still work.
    const pressing =
      (target instanceof HTMLButtonElement || target instanceof HTMLAnchorElement) && (e.key === "Enter" || e.key === " ");
    if (typing || pressing || e.ctrlKey || e.metaKey || e.altKey || !this.view) return false;
    const items = this.view.items;
    switch (e.key) {
      case "j":
      case "ArrowDown":
        this.select(step(items, this.selected, 1));
        break;
      case "k":
      case "ArrowUp":
        this.select(step(items, this.selected, -1));
        break;
      case "a":
        this.setAction(ACTIONS[0]);
        this.reason.focus();
        return true;
      case "d":
        this.setAction(ACTIONS[3]);
        this.reason.focus();
        return true;
      case "Enter":
        this.reason.focus();
        return true;
      default:
        return false;
    }
    this.render();
    const row = this.selected ? this.rows.get(this.selected)?.el : undefined;
    row?.scrollIntoView?.({ block: "nearest" });
    return true;
  }

  private current(): InboxItem | undefined {
    return this.view?.items.find((i) => i.request.id === this.selected);
  }

  private setAction(action: Action | null): void {
    this.action = action;
    this.hint.textContent = action
      ? `Enter: ${action.label.toLowerCase()} · Esc: cancel`
      : "j/k: move · a: approve · d: deny · Enter: write a reason";
    this.buttons.forEach((b, i) => b.classList.toggle("armed", action === ACTIONS[i]));
  }

  private async submit(action: Action | null): Promise<void> {
    const item = this.current();
    if (!item || item.cannot_decide || this.submitting) return;
    if (!action) {
      this.formError.textContent = "Choose Approve or Deny below (or press Esc, then a or d).";
      return;
    }
    const made = decision(item.request, action, this.reason.value);
    if (typeof made === "string") {
      this.formError.textContent = made;
      this.reason.focus();
      return;
    }
    this.submitting = true;
    this.formError.textContent = "";
    this.renderForm();
    const error = await this.handlers.decide(made);
    this.submitting = false;
    if (error && this.selected !== made.id) {
      // The approver moved on meanwhile: say which request it was about.
      this.handlers.elsewhere(`Could not decide ${made.id}: ${error}`);
    } else if (error) {
      this.formError.textContent = error;
    } else if (this.selected === made.id) {
      this.reason.value = "";
      this.setAction(null);
    }
    this.renderForm();
  }

  private render(): void {
    const items = this.view?.items ?? [];
    const link = this.view?.link;
    if (items.length === 0) {
      this.empty.hidden = false;
      this.empty.replaceChildren(
        h("div", { class: "empty-title" }, "No approval requests"),
        h(
          "p",
          {},
          link?.state === "live" || link?.state === "polling"
            ? "Statements a policy holds for sign-off appear here the moment they are asked, with a notification. Try a bulk export through the local gateway: COPY payments TO STDOUT."
            : (link?.detail ?? "Start the local gateway to see its approval requests."),
        ),
      );
    } else {
      this.empty.hidden = true;
    }
    // One element per request, updated in place and reordered by moving;
    // rows arriving above the one being read do not move it on screen.
    const pane = this.list.parentElement;
    const anchor = this.selected ? this.rows.get(this.selected)?.el : undefined;
    const anchorTop = pane && anchor && pane.scrollTop > 0 ? anchor.offsetTop - pane.scrollTop : null;
    const seen = new Set<string>();
    let previous: Element | null = null;
    let decidedHeader = this.list.querySelector<HTMLElement>(".section");
    for (const item of items) {
      const id = item.request.id;
      seen.add(id);
      if (item.request.state !== "pending" && previous?.getAttribute("data-state") !== "decided") {
        if (!decidedHeader) decidedHeader = h("li", { class: "section" }, "Recent decisions");
        decidedHeader.setAttribute("data-state", "decided");
        this.place(decidedHeader, previous);
        previous = decidedHeader;
      }
      const sig = signature(item);
      let entry = this.rows.get(id);
      if (!entry || entry.sig !== sig) {
        const el = listRow(item);
        el.addEventListener("click", () => {
          this.select(id);
          this.render();
        });
        if (entry) entry.el.replaceWith(el);
        entry = { el, sig };
        this.rows.set(id, entry);
      }
      entry.el.classList.toggle("selected", id === this.selected);
      entry.el.setAttribute("aria-selected", String(id === this.selected));
      if (item.request.state !== "pending") entry.el.setAttribute("data-state", "decided");
      this.place(entry.el, previous);
      previous = entry.el;
    }
    if (decidedHeader && !items.some((i) => i.request.state !== "pending")) decidedHeader.remove();
    for (const [id, entry] of this.rows) {
      if (!seen.has(id)) {
        entry.el.remove();
        this.rows.delete(id);
      }
    }
    if (pane && anchor && anchorTop !== null && anchor.isConnected) pane.scrollTop = anchor.offsetTop - anchorTop;
    const item = this.current();
    const sig = item ? signature(item) : "";
    if (sig !== this.detailSig) {
      this.detailSig = sig;
      this.detail.replaceChildren(
        item ? details(item) : h("div", { class: "empty" }, h("div", { class: "empty-title" }, "Nothing selected"), h("p", {}, "Requests you can decide appear on the left.")),
      );
    }
    this.renderForm();
  }

  private place(el: Element, after: Element | null): void {
    const want = after ? after.nextSibling : this.list.firstChild;
    if (want !== el) this.list.insertBefore(el, want);
  }

  private renderForm(): void {
    const item = this.current();
    this.form.hidden = !item;
    if (!item) return;
    const why = item.cannot_decide;
    const settled = item.request.state !== "pending";
    this.blocked.hidden = !why;
    this.blocked.textContent = why ?? "";
    this.blocked.classList.toggle("settled", settled);
    // A settled request has nothing to decide: only the line saying how it ended.
    this.reason.hidden = settled;
    this.hint.hidden = settled;
    this.buttons.forEach((b) => (b.hidden = settled));
    this.reason.disabled = Boolean(why) || this.submitting;
    for (const button of this.buttons) {
      button.disabled = Boolean(why) || this.submitting;
      button.title = why ?? "";
    }
  }
}
