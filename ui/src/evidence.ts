// Evidence: the audit log's state (its last checkpoint, verified here with
// the gateway's key, and that key compared with the one first seen), and
// the QSA's evidence bundle for a time range, exported with progress and
// verified by the console itself once downloaded.

import type { AuditState, ExportOptions, ExportProgress, ExportResult, ErrorView } from "./generated/types";
import { clock, plural } from "./format";
import { h, present } from "./dom";

export interface EvidenceHandlers {
  state(): Promise<AuditState>;
  export(options: ExportOptions): Promise<ExportResult>;
  copy(text: string, what: string): void;
  /** The console's data folder, to suggest a destination under it. */
  suggestDir(): string;
}

/** `YYYY-MM-DD` of a date, in local time. */
export function day(d: Date): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** The window of whole local days [from, to] as RFC 3339 UTC, `to` inclusive. */
export function dayWindow(from: string, to: string): { from?: string; to?: string } {
  const start = from ? new Date(`${from}T00:00:00`) : null;
  const end = to ? new Date(`${to}T00:00:00`) : null;
  if (end) end.setDate(end.getDate() + 1);
  const iso = (d: Date | null) => (d && !Number.isNaN(d.getTime()) ? d.toISOString().replace(/\.\d{3}Z$/, "Z") : undefined);
  return { from: iso(start), to: iso(end) };
}

export class EvidencePanel {
  private readonly stateCard: HTMLElement;
  private readonly from: HTMLInputElement;
  private readonly to: HTMLInputElement;
  private readonly dir: HTMLInputElement;
  private readonly button: HTMLButtonElement;
  private readonly bar: HTMLElement;
  private readonly fill: HTMLElement;
  private readonly stage: HTMLElement;
  private readonly result: HTMLElement;

  constructor(
    root: HTMLElement,
    private readonly handlers: EvidenceHandlers,
  ) {
    this.stateCard = h("section", { class: "card", "data-test": "audit-state" });
    const yesterday = new Date(Date.now() - 86_400_000);
    this.from = h("input", { type: "date", value: day(yesterday), "data-test": "export-from" }) as HTMLInputElement;
    this.to = h("input", { type: "date", value: day(new Date()), "data-test": "export-to" }) as HTMLInputElement;
    this.dir = h("input", { type: "text", "data-test": "export-dir" }) as HTMLInputElement;
    this.button = h("button", { class: "primary", "data-test": "export" }, "Export evidence") as HTMLButtonElement;
    this.fill = h("div", { class: "bar-fill" });
    this.bar = h("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "1000", "data-test": "export-progress" }, this.fill);
    this.stage = h("div", { class: "muted", "data-test": "export-stage" });
    this.result = h("div", { "data-test": "export-result" });
    this.bar.hidden = true;
    this.button.addEventListener("click", () => void this.run());
    const refresh = h("button", { "data-test": "audit-refresh" }, "Check now");
    refresh.addEventListener("click", () => void this.refresh());
    root.replaceChildren(
      h(
        "div",
        { class: "evidence-grid" },
        h("div", { class: "card-stack" }, this.stateCard, h("div", { class: "buttons" }, refresh)),
        h(
          "section",
          { class: "card", "data-test": "export-card" },
          h("div", { class: "card-head" }, h("h2", {}, "Evidence bundle for a QSA")),
          h(
            "p",
            { class: "muted" },
            "The gateway writes the audit log up to its last signed checkpoint, access logs per identity, approvals, masking, " +
              "the access-control configuration and the session recordings of the window, with an index mapping each file to the " +
              "PCI DSS requirements it answers. The console then verifies the log itself.",
          ),
          h("div", { class: "ports" }, h("label", {}, "From (day)", this.from), h("label", {}, "To (day, inclusive)", this.to)),
          h("label", { class: "stack" }, "Folder (new or empty)", this.dir),
          h("div", { class: "buttons" }, this.button),
          this.bar,
          this.stage,
          this.result,
        ),
      ),
    );
  }

  show(): void {
    if (!this.dir.value) this.dir.value = this.handlers.suggestDir();
    void this.refresh();
  }

  async refresh(): Promise<void> {
    this.stateCard.replaceChildren(h("div", { class: "progress" }, h("span", { class: "spinner" }), "Asking the gateway for a signed checkpoint…"));
    try {
      const s = await this.handlers.state();
      const keyButton = h("button", { "data-test": "copy-key" }, "Copy key");
      keyButton.addEventListener("click", () => this.handlers.copy(s.verifier_key, "The verifier key"));
      const field = (label: string, ...v: (Node | string | null)[]) => h("div", { class: "field" }, h("dt", {}, label), h("dd", {}, ...v));
      this.stateCard.replaceChildren(
        ...present(
        h(
          "div",
          { class: "card-head" },
          h("h2", {}, "Audit log"),
          s.signature_ok && !s.key_changed
            ? h("span", { class: "pill pill-running", "data-test": "audit-verified" }, "Verified")
            : h("span", { class: "pill pill-failed", "data-test": "audit-verified" }, "NOT verified"),
        ),
        s.key_changed
          ? h(
              "div",
              { class: "error-box" },
              h("strong", {}, "The gateway's verifier key changed."),
              h("p", {}, `This console first saw another key for ${s.gateway} on ${clock(s.key_first_seen)}. A changed key means a new log or a replaced signer: ask the gateway's operator before trusting new evidence.`),
            )
          : null,
        h(
          "dl",
          { class: "fields" },
          field("Records", h("strong", { "data-test": "audit-size" }, s.size.toLocaleString("en-US")), h("span", { class: "muted" }, ` in ${s.origin}`)),
          field("Checkpoint", `signed ${clock(s.signed_at)}`, h("div", { class: "muted" }, `root ${s.root}`)),
          field("Signature", s.signature_ok ? "verified here with the key below" : h("span", { class: "outcome-denied" }, "does not verify with the gateway's key")),
          field("Verifier key", h("code", { class: "key", "data-test": "verifier-key" }, s.verifier_key), h("div", {}, keyButton)),
          field("Key first seen", clock(s.key_first_seen)),
        ),
        h("p", { class: "muted" }, "Hand the verifier key to the auditor out of band: with it they verify a bundle offline (tollgate verify)."),
        ),
      );
    } catch (e) {
      const err = e as ErrorView;
      this.stateCard.replaceChildren(
        h("div", { class: "card-head" }, h("h2", {}, "Audit log")),
        h("div", { class: "error-box" }, h("strong", {}, err.message ?? String(e)), h("p", {}, err.hint ?? "")),
      );
    }
  }

  /** The core's progress events. */
  progress(p: ExportProgress): void {
    this.bar.hidden = false;
    this.fill.style.width = `${Math.min(100, p.permille / 10)}%`;
    this.bar.setAttribute("aria-valuenow", String(p.permille));
    this.stage.textContent = p.stage;
    this.bar.classList.toggle("bar-failed", p.phase === "failed");
  }

  private async run(): Promise<void> {
    this.button.disabled = true;
    this.result.replaceChildren();
    this.progress({ phase: "exporting", stage: "Starting the export", permille: 0, bytes: 0, result: null, error: null });
    const w = dayWindow(this.from.value, this.to.value);
    try {
      const r = await this.handlers.export({ from: w.from, to: w.to, dir: this.dir.value });
      this.result.replaceChildren(summary(r));
      void this.refresh();
    } catch (e) {
      const err = e as ErrorView;
      this.result.replaceChildren(h("div", { class: "error-box" }, h("strong", {}, err.message ?? String(e)), h("p", {}, err.hint ?? "")));
    } finally {
      this.button.disabled = false;
    }
  }
}

/** The summary of a finished export. */
export function summary(r: ExportResult): HTMLElement {
  const s = r.summary;
  const stat = (n: number | string, label: string) => h("div", { class: "stat" }, h("div", { class: "stat-n" }, String(n)), h("div", { class: "muted" }, label));
  return h(
    "div",
    { class: "export-done", "data-test": "export-summary" },
    h(
      "div",
      { class: r.verified_here ? "done-ok" : "error-box" },
      h("strong", {}, r.verified_here ? "Exported and verified." : "Exported, but the verification FAILED."),
      h(
        "p",
        {},
        `The bundle is in ${r.dir}. `,
        r.verified_here
          ? r.key_pinned_now
            ? "Its audit log verified with its own key, which this console saw for the first time and has pinned: compare it with the key the gateway's operator handed over."
            : "Its audit log verified with the key this console pinned for the gateway."
          : "Read verification-console.txt in the bundle.",
      ),
    ),
    h(
      "div",
      { class: "stats" },
      stat(s.in_window.toLocaleString("en-US"), `records in the window (of ${s.records.toLocaleString("en-US")})`),
      stat(s.identities, plural(s.identities, "identity").replace(/^\d+ /, "")),
      stat(s.sessions, plural(s.sessions, "session").replace(/^\d+ /, "")),
      stat(r.verified_here ? "✓" : "✗", "verified here"),
    ),
  );
}
