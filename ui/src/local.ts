// The local gateway: start it in front of a throwaway demo database or an
// existing one, see where it listens, copy a dev token or a psql line, and
// run the demo traffic.

import type { DevAccess, ErrorView, LocalInfo, LocalOptions, LocalStatus, TrafficStatus } from "./generated/types";
import { h } from "./dom";

export interface LocalHandlers {
  start(options: LocalOptions): Promise<ErrorView | null>;
  stop(): Promise<void>;
  access(who: "engineer" | "agent" | "approver"): Promise<DevAccess | ErrorView>;
  copy(text: string, what: string): Promise<void>;
  traffic(on: boolean): Promise<ErrorView | null>;
}

const PERSONAS: { who: "engineer" | "agent" | "approver"; label: string }[] = [
  { who: "engineer", label: "alice · analyst, MFA" },
  { who: "agent", label: "agent-7 · AI agent" },
  { who: "approver", label: "olga · approver, MFA" },
];

/** A one-line summary for the sidebar. */
export function summary(status: LocalStatus): string {
  switch (status.state) {
    case "running":
      return `Listening on ${status.info.listen}`;
    case "starting":
      return "Starting...";
    case "stopping":
      return "Stopping...";
    case "failed":
      return "Did not start";
    default:
      return "Stopped";
  }
}

export class LocalPanel {
  private status: LocalStatus = { state: "stopped" };
  private traffic: TrafficStatus | null = null;
  private who: "engineer" | "agent" | "approver" = "engineer";
  private access: DevAccess | null = null;
  private upstreamMode = false;
  private asked = 0;
  private readonly statusBox: HTMLElement;
  private readonly trafficBox: HTMLElement;
  private readonly form: HTMLFormElement;
  private readonly upstream: HTMLInputElement;
  private readonly listen: HTMLInputElement;
  private readonly apiListen: HTMLInputElement;

  constructor(
    root: HTMLElement,
    private readonly handlers: LocalHandlers,
  ) {
    this.statusBox = h("article", { class: "card status-card", "data-test": "local-status" });
    this.trafficBox = h("article", { class: "card", "data-test": "traffic" });
    this.upstream = h("input", {
      type: "text",
      placeholder: "postgres://USER:PASSWORD@HOST:5432/DATABASE",
      spellcheck: "false",
      autocomplete: "off",
      "data-test": "upstream",
    });
    this.listen = h("input", { type: "text", value: "127.0.0.1:6432", spellcheck: "false" });
    this.apiListen = h("input", { type: "text", value: "127.0.0.1:6433", spellcheck: "false" });
    const demo = h("input", { type: "radio", name: "mode", value: "demo", checked: true });
    const existing = h("input", { type: "radio", name: "mode", value: "upstream" });
    const sync = () => {
      this.upstreamMode = existing.checked;
      this.upstream.disabled = !this.upstreamMode;
    };
    demo.addEventListener("change", sync);
    existing.addEventListener("change", sync);
    this.form = h(
      "form",
      { class: "card start-form", "data-test": "start-form" },
      h("h2", {}, "Start a local gateway"),
      h("label", { class: "choice" }, demo, h("span", {}, h("strong", {}, "Demo database"), h("span", { class: "muted" }, " A throwaway PostgreSQL seeded with fake cardholder data (public test card numbers).")) ),
      h("label", { class: "choice" }, existing, h("span", {}, h("strong", {}, "An existing database"), h("span", { class: "muted" }, " The gateway logs in with the credentials in the URL; clients log in with dev tokens."))),
      this.upstream,
      h("div", { class: "ports" }, h("label", {}, "PostgreSQL listener", this.listen), h("label", {}, "API listener", this.apiListen)),
      h("div", { class: "buttons" }, h("button", { class: "primary", type: "submit", "data-test": "start" }, "Start")),
    );
    sync();
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      void this.start();
    });
    root.replaceChildren(h("div", { class: "local-grid" }, this.statusBox, this.form, this.trafficBox));
    this.render();
  }

  setStatus(status: LocalStatus): void {
    const before = this.status;
    this.status = status;
    if (
      before.state === "running" &&
      status.state === "running" &&
      before.info.listen === status.info.listen &&
      before.info.health === status.info.health
    ) {
      // The same gateway: only its live counters move; leave the rest (an
      // open menu, a selection in the psql line) alone.
      const sessions = this.statusBox.querySelector('[data-test="sessions"]');
      if (sessions) sessions.textContent = String(status.info.sessions);
      return;
    }
    if (status.state !== "running") this.access = null;
    this.render();
    if (status.state === "running" && !this.access) void this.loadAccess();
  }

  setTraffic(status: TrafficStatus): void {
    this.traffic = status;
    this.renderTraffic();
  }

  private async start(): Promise<void> {
    const options: LocalOptions = {
      upstream: this.upstreamMode ? this.upstream.value : undefined,
      listen: this.listen.value,
      api_listen: this.apiListen.value,
    };
    const error = await this.handlers.start(options);
    // The URL holds the database's password: do not keep it on screen.
    if (!error) this.upstream.value = "";
  }

  private async loadAccess(): Promise<void> {
    const asked = ++this.asked;
    const got = await this.handlers.access(this.who);
    // Only the answer to the latest question (the persona may have changed).
    if (asked !== this.asked) return;
    if ("token" in got) {
      this.access = got;
      this.render();
    }
  }

  private render(): void {
    const s = this.status;
    this.form.hidden = s.state === "running" || s.state === "starting" || s.state === "stopping";
    const rows: HTMLElement[] = [];
    if (s.state === "running") rows.push(...this.running(s.info));
    else if (s.state === "starting")
      rows.push(h("div", { class: "progress" }, h("span", { class: "spinner" }), h("span", { "data-test": "step" }, `${s.step}...`)));
    else if (s.state === "stopping") rows.push(h("div", { class: "progress" }, h("span", { class: "spinner" }), "Stopping the gateway and its database..."));
    else if (s.state === "failed")
      rows.push(
        h("div", { class: "error-box", role: "alert", "data-test": "local-error" }, h("strong", {}, s.error.message), h("p", {}, s.error.hint)),
      );
    else rows.push(h("p", { class: "muted" }, "The local gateway is stopped. Start it below: it runs inside the console and stops when the window closes."));
    let stop: HTMLButtonElement | null = null;
    if (s.state === "running") {
      stop = h("button", { class: "danger", "data-test": "stop" }, "Stop");
      stop.addEventListener("click", () => void this.handlers.stop());
    }
    this.statusBox.replaceChildren(
      h(
        "header",
        { class: "card-head" },
        h("h2", {}, "Gateway"),
        h("span", { class: "actions" }, h("span", { class: `pill pill-${s.state}` }, s.state === "running" ? "Running" : summary(s)), stop),
      ),
      ...rows,
    );
    this.renderTraffic();
  }

  private running(info: LocalInfo): HTMLElement[] {
    const row = (label: string, value: Node | string, test?: string) =>
      h("div", { class: "field" }, h("dt", {}, label), h("dd", test ? { "data-test": test } : {}, value));
    const select = h("select", { "data-test": "persona" }, ...PERSONAS.map((p) => h("option", { value: p.who, selected: p.who === this.who }, p.label)));
    select.addEventListener("change", () => {
      this.who = select.value as typeof this.who;
      this.access = null;
      void this.loadAccess();
    });
    const copyToken = h("button", { "data-test": "copy-token" }, "Copy token");
    copyToken.addEventListener("click", () => this.access && void this.handlers.copy(this.access.token, "Dev token"));
    const copyPsql = h("button", { class: "primary", "data-test": "copy-psql" }, "Copy psql command");
    copyPsql.addEventListener("click", () => this.access && void this.handlers.copy(this.access.psql, "psql command"));
    return [
      info.health ? h("div", { class: "error-box", role: "alert", "data-test": "health" }, h("strong", {}, "Not healthy"), h("p", {}, info.health)) : h("span", { hidden: true }),
      h(
        "dl",
        { class: "fields" },
        row("PostgreSQL", h("code", {}, info.listen), "listen"),
        row("API", h("code", {}, info.api), "api"),
        info.mcp
          ? row("MCP", h("code", {}, info.mcp), "mcp")
          : row("MCP", h("span", { class: "muted" }, info.mcp_note ?? "no MCP servers (the demo's payments server runs with the throwaway database)"), "mcp"),
        row("Connection", h("code", {}, info.connection), "connection"),
        row("In front of", info.upstream),
        row("Card data in", info.cardholder_tables.length ? info.cardholder_tables.join(", ") : "none found"),
        row("Sessions", String(info.sessions), "sessions"),
        row("Inbox signed in as", `${info.approver.subject} (${info.approver.groups.join(", ")}, MFA)`),
        row("Data directory", h("code", {}, info.data_dir)),
      ),
      h(
        "div",
        { class: "connect" },
        h("div", { class: "connect-head" }, h("strong", {}, "Connect as"), select, copyToken, copyPsql),
        h("pre", { class: "command", "data-test": "psql" }, this.access ? this.access.psql.replace(/PGPASSWORD='[^']*'/, "PGPASSWORD='<dev token>'") : "..."),
        h("p", { class: "muted" }, "Tokens are valid for one hour. Try COPY payments TO STDOUT: the starter policy holds it for approval."),
      ),
    ];
  }

  private renderTraffic(): void {
    const running = this.status.state === "running";
    const t = this.traffic;
    const toggle = h("button", { class: t?.running ? "" : "primary", "data-test": "traffic-toggle", disabled: !running }, t?.running ? "Stop demo traffic" : "Start demo traffic");
    toggle.addEventListener("click", () => void this.handlers.traffic(!t?.running));
    const stat = (n: number, label: string) => h("div", { class: "stat" }, h("div", { class: "stat-n" }, String(n)), h("div", { class: "muted" }, label));
    const children: (HTMLElement | null)[] = [
      h("header", { class: "card-head" }, h("h2", {}, "Demo traffic"), h("span", { class: `pill pill-${t?.running ? "running" : "stopped"}` }, t?.running ? "Running" : "Off")),
      h("p", { class: "muted" }, "An AI agent (agent-7) runs ordinary queries and payments tool calls every few seconds and, about once a minute, a bulk export of card data (in SQL, then through the payments MCP tool export_cards) that the starter policies hold for your approval."),
      h("div", { class: "stats" }, stat(t?.queries ?? 0, "queries"), stat(t?.exports ?? 0, "exports asked"), stat(t?.released ?? 0, "released"), stat(t?.refused ?? 0, "refused")),
      t?.waiting ? h("p", { class: "waiting" }, "An export is waiting for approval: see the inbox.") : null,
      t?.last_error ? h("p", { class: "muted" }, `Last error: ${t.last_error}`) : null,
      h("div", { class: "buttons" }, toggle),
    ];
    this.trafficBox.replaceChildren(...children.filter((c): c is HTMLElement => c !== null));
  }
}
