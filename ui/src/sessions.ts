// The session browser: recorded sessions filtered by identity, connection,
// time and outcome, and searched by the statements they ran ("who ran
// DELETE on payments"). Pages come from the gateway (keyset paging), so it
// stays fast on 100k sessions; the list grows with "Show more".

import type { SessionFilter, SessionPage, SessionSummary, Viewer } from "./generated/types";
import { clock, plural } from "./format";
import { h } from "./dom";

export const PAGE_SIZE = 50;

export interface BrowserHandlers {
  list(filter: SessionFilter): Promise<SessionPage>;
  open(session: SessionSummary, frame: number): void;
  error(message: string): void;
  /** Switch the local viewer's role (local mode only). */
  viewAs(role: "analyst" | "auditor"): Promise<Viewer | null>;
}

/** A datetime-local value (local time) as RFC 3339 UTC, or undefined. */
export function localToRfc3339(value: string): string | undefined {
  if (!value) return undefined;
  const t = new Date(value);
  return Number.isNaN(t.getTime()) ? undefined : t.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** The filter the form describes. */
export function filterOf(form: {
  subject: string;
  connection: string;
  from: string;
  to: string;
  outcome: string;
  q: string;
  order: string;
}): SessionFilter {
  const text = (v: string) => (v.trim() ? v.trim() : undefined);
  return {
    subject: text(form.subject),
    connection: text(form.connection),
    from: localToRfc3339(form.from),
    to: localToRfc3339(form.to),
    outcome: text(form.outcome),
    q: text(form.q),
    order: form.order === "oldest" ? "oldest" : undefined,
    limit: PAGE_SIZE,
  };
}

function row(s: SessionSummary, open: (s: SessionSummary, frame: number) => void): HTMLElement {
  const chip = (n: number, label: string, cls: string) => (n > 0 ? h("span", { class: `chip ${cls}` }, `${n} ${label}`) : null);
  const tr = h(
    "tr",
    { class: "session-row", "data-id": s.id, "data-test": "session-row", tabindex: "0" },
    h("td", { class: "nowrap" }, clock(s.started_at)),
    h(
      "td",
      {},
      h("span", { class: "who" }, h("span", { class: `kind kind-${s.kind}` }, s.kind === "agent" ? "Agent" : "Person"), h("strong", {}, s.subject)),
    ),
    h("td", {}, s.connection, s.protocol === "mcp" ? h("span", { class: "chip protocol", title: "MCP tool calls" }, "MCP") : null),
    h("td", { class: "num" }, String(s.statements)),
    h(
      "td",
      {},
      h(
        "div",
        { class: "outcomes" },
        chip(s.refused, "refused", "chip-bad"),
        chip(s.held, "held", "chip-warn"),
        chip(s.masked, "masked", "chip-card"),
        chip(s.errors, s.errors === 1 ? "error" : "errors", "chip-bad"),
        s.ended_at ? null : h("span", { class: "chip" }, "live or cut off"),
      ),
    ),
    h(
      "td",
      { class: "matched" },
      s.matched ? h("code", { title: `frame ${s.matched.seq}` }, s.matched.text) : h("span", { class: "muted" }, plural(s.frames, "frame")),
    ),
  );
  const go = () => open(s, s.matched?.seq ?? 0);
  tr.addEventListener("click", go);
  tr.addEventListener("keydown", (e) => {
    if (e.key === "Enter") go();
  });
  return tr;
}

/** The session browser. */
export class SessionBrowser {
  private readonly fields: Record<string, HTMLInputElement | HTMLSelectElement>;
  private readonly body: HTMLElement;
  private readonly more: HTMLButtonElement;
  private readonly count: HTMLElement;
  private readonly viewer: HTMLElement;
  private readonly roleSelect: HTMLSelectElement;
  private next: string | null = null;
  private filter: SessionFilter = { limit: PAGE_SIZE };
  private generation = 0;
  private loaded = 0;

  constructor(
    root: HTMLElement,
    private readonly handlers: BrowserHandlers,
  ) {
    const input = (name: string, placeholder: string, type = "text") =>
      h("input", { type, name, placeholder, "data-test": `filter-${name}` }) as HTMLInputElement;
    const select = (name: string, options: [string, string][]) =>
      h("select", { name, "data-test": `filter-${name}` }, ...options.map(([v, l]) => h("option", { value: v }, l))) as HTMLSelectElement;
    this.fields = {
      q: input("q", "Statements, e.g. delete payments"),
      subject: input("subject", "Identity"),
      connection: input("connection", "Connection"),
      from: input("from", "", "datetime-local"),
      to: input("to", "", "datetime-local"),
      outcome: select("outcome", [
        ["", "Any outcome"],
        ["refused", "Refused"],
        ["held", "Held for approval"],
        ["masked", "Masked values"],
        ["error", "Errors"],
      ]),
      order: select("order", [
        ["newest", "Newest first"],
        ["oldest", "Oldest first"],
      ]),
    };
    const form = h(
      "form",
      { class: "filters", "data-test": "session-filters" },
      h("label", { class: "grow" }, "Search", this.fields.q),
      h("label", {}, "Identity", this.fields.subject),
      h("label", {}, "Connection", this.fields.connection),
      h("label", {}, "From", this.fields.from),
      h("label", {}, "To", this.fields.to),
      h("label", {}, "Outcome", this.fields.outcome),
      h("label", {}, "Order", this.fields.order),
      h("button", { type: "submit", class: "primary", "data-test": "filter-apply" }, "Apply"),
    );
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      void this.reload();
    });
    for (const name of ["outcome", "order"]) this.fields[name].addEventListener("change", () => void this.reload());
    this.roleSelect = h(
      "select",
      { "data-test": "view-as", title: "In local mode the console can view as an analyst or an auditor" },
      h("option", { value: "analyst" }, "as alice (analyst)"),
      h("option", { value: "auditor" }, "as quinn (auditor)"),
    ) as HTMLSelectElement;
    this.roleSelect.addEventListener("change", async () => {
      await this.handlers.viewAs(this.roleSelect.value === "auditor" ? "auditor" : "analyst");
      await this.reload();
    });
    this.viewer = h("span", { class: "muted", "data-test": "viewer" });
    this.count = h("span", { class: "muted", "data-test": "session-count" });
    this.body = h("tbody", {});
    this.more = h("button", { "data-test": "more" }, "Show more") as HTMLButtonElement;
    this.more.addEventListener("click", () => void this.load(false));
    const table = h(
      "table",
      { class: "sessions", "data-test": "sessions" },
      h(
        "thead",
        {},
        h("tr", {}, ...["Started", "Identity", "Connection", "Statements", "Outcomes", "Matched statement"].map((t) => h("th", {}, t))),
      ),
      this.body,
    );
    root.replaceChildren(
      form,
      h("div", { class: "list-head" }, this.count, h("span", { class: "spacer-flex" }), this.viewer, this.roleSelect),
      h("div", { class: "pane sessions-pane" }, table, h("div", { class: "more" }, this.more)),
    );
  }

  /** Show who the browser acts as. */
  setViewer(viewer: Viewer | null): void {
    if (!viewer) {
      this.viewer.textContent = "";
      this.roleSelect.hidden = true;
      return;
    }
    const where = viewer.mode === "local" ? "the local gateway" : viewer.gateway;
    this.viewer.textContent = `Viewing ${where} as ${viewer.subject} (${viewer.roles.join(", ") || "no role"})`;
    this.roleSelect.hidden = viewer.mode !== "local";
    if (viewer.mode === "local") this.roleSelect.value = viewer.roles.includes("auditor") ? "auditor" : "analyst";
  }

  private read(): SessionFilter {
    const v = (name: string) => this.fields[name].value;
    return filterOf({
      subject: v("subject"),
      connection: v("connection"),
      from: v("from"),
      to: v("to"),
      outcome: v("outcome"),
      q: v("q"),
      order: v("order"),
    });
  }

  /** Fill the filter from a search ("who ran DELETE on payments") and list. */
  async search(q: string): Promise<void> {
    this.fields.q.value = q;
    await this.reload();
  }

  async reload(): Promise<void> {
    this.filter = this.read();
    await this.load(true);
  }

  private async load(fresh: boolean): Promise<void> {
    this.generation += 1;
    const generation = this.generation;
    if (fresh) {
      this.next = null;
      this.loaded = 0;
      this.count.textContent = "Loading…";
    }
    this.more.disabled = true;
    let page: SessionPage;
    try {
      page = await this.handlers.list({ ...this.filter, after: fresh ? undefined : (this.next ?? undefined) });
    } catch (e) {
      const err = e as { message?: string; hint?: string };
      this.count.textContent = "";
      this.body.replaceChildren(
        h("tr", {}, h("td", { colspan: "6" }, h("div", { class: "empty" }, h("div", { class: "empty-title" }, err.message ?? String(e)), h("p", {}, err.hint ?? "")))),
      );
      this.more.hidden = true;
      return;
    }
    if (generation !== this.generation) return;
    if (fresh) this.body.replaceChildren();
    for (const s of page.sessions) this.body.append(row(s, this.handlers.open));
    this.loaded += page.sessions.length;
    this.next = page.next;
    this.more.hidden = !page.next;
    this.more.disabled = false;
    if (this.loaded === 0) {
      this.body.replaceChildren(
        h(
          "tr",
          {},
          h(
            "td",
            { colspan: "6" },
            h(
              "div",
              { class: "empty" },
              h("div", { class: "empty-title" }, "No sessions match"),
              h("p", {}, "Widen the time range or clear a filter. Sessions appear here as soon as a client connects through the gateway."),
            ),
          ),
        ),
      );
    }
    const total = page.total;
    this.count.textContent =
      total === null
        ? `${plural(this.loaded, "session")} with a matching statement${page.next ? " so far" : ""}`
        : `${this.loaded.toLocaleString("en-US")} of ${plural(total, "session")}`;
  }

  /** Rows listed now. */
  rows(): number {
    return this.body.querySelectorAll("tr.session-row").length;
  }
}
