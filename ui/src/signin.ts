// Signing in to a team's gateway. The console reads the gateway's sign-in
// settings (which OpenID Provider, the console's client id there), opens the
// provider's page in the system browser, and keeps the tokens in the OS
// keyring. Where no keyring runs, it says so and offers a session-only
// sign-in. Approvals, sessions and evidence then use that identity.

import type { ErrorView, RemoteStatus, SignInOptions } from "./generated/types";
import { clock } from "./format";
import { h, present } from "./dom";

export interface SignInHandlers {
  signIn(options: SignInOptions): Promise<ErrorView | null>;
  signOut(): Promise<void>;
  cancel(): Promise<void>;
}

/** One line for the navigation. */
export function remoteSummary(status: RemoteStatus): string {
  switch (status.state) {
    case "signed_in":
      return `${status.session.subject} at ${new URL(status.session.gateway).host}`;
    case "signing_in":
      return "Signing in…";
    default:
      return "Not signed in";
  }
}

export class SignInPanel {
  private readonly card: HTMLElement;
  private readonly gateway: HTMLInputElement;
  private readonly ca: HTMLInputElement;
  private readonly error: HTMLElement;
  private status: RemoteStatus = { state: "signed_out", gateway: null, reason: null };

  constructor(
    root: HTMLElement,
    private readonly handlers: SignInHandlers,
  ) {
    this.gateway = h("input", { type: "text", placeholder: "https://tollgate.example.com:6433", "data-test": "remote-url" }) as HTMLInputElement;
    this.ca = h("input", { type: "text", placeholder: "optional: /path/to/ca.pem", "data-test": "remote-ca" }) as HTMLInputElement;
    this.error = h("div", { "data-test": "signin-error" });
    this.card = h("section", { class: "card", "data-test": "remote" });
    root.replaceChildren(h("div", { class: "signin-grid" }, this.card));
    this.render();
  }

  set(status: RemoteStatus): void {
    this.status = status;
    if (status.state === "signed_out" && status.gateway && !this.gateway.value) this.gateway.value = status.gateway;
    this.render();
  }

  private async go(sessionOnly: boolean): Promise<void> {
    this.error.replaceChildren();
    const err = await this.handlers.signIn({
      gateway: this.gateway.value.trim(),
      ca_file: this.ca.value.trim() || undefined,
      session_only: sessionOnly,
    });
    if (!err) return;
    const offer =
      err.code === "no_keyring"
        ? (() => {
            const b = h("button", { "data-test": "signin-session-only" }, "Sign in for this session only");
            b.addEventListener("click", () => void this.go(true));
            return b;
          })()
        : null;
    this.error.replaceChildren(h("div", { class: "error-box" }, h("strong", {}, err.message), h("p", {}, err.hint), offer));
  }

  private render(): void {
    const s = this.status;
    if (s.state === "signed_in") {
      const who = s.session;
      const out = h("button", { class: "danger", "data-test": "signout" }, "Sign out");
      out.addEventListener("click", () => void this.handlers.signOut());
      const field = (label: string, ...v: (Node | string | null)[]) => h("div", { class: "field" }, h("dt", {}, label), h("dd", {}, ...v));
      this.card.replaceChildren(
        h("div", { class: "card-head" }, h("h2", {}, "Team gateway"), h("span", { class: "pill pill-running" }, "Signed in")),
        h(
          "dl",
          { class: "fields" },
          field("Gateway", h("code", {}, who.gateway)),
          field("Signed in as", h("strong", { "data-test": "remote-subject" }, who.subject), h("span", { class: "muted" }, ` via ${who.issuer}`)),
          field("Roles", who.roles.length ? who.roles.join(", ") : h("span", { class: "muted" }, "none: no sessions or evidence"), h("div", { class: "muted" }, `groups: ${who.groups.join(", ") || "none"}`)),
          field(
            "Tokens",
            who.in_keyring ? "in the OS keyring" : h("span", { class: "chip chip-warn" }, "this session only"),
            who.refreshable ? ` · refreshed before ${clock(who.expires_at)}` : ` · expire ${clock(who.expires_at)}`,
          ),
        ),
        h("p", { class: "muted" }, "Approvals, sessions and evidence now come from this gateway, as this identity."),
        h("div", { class: "buttons" }, out),
      );
      return;
    }
    const busy = s.state === "signing_in";
    const button = h("button", { class: "primary", "data-test": "signin", disabled: busy }, "Sign in with your identity provider");
    button.addEventListener("click", () => void this.go(false));
    const cancel = h("button", { "data-test": "signin-cancel" }, "Cancel");
    cancel.addEventListener("click", () => void this.handlers.cancel());
    this.gateway.disabled = busy;
    this.ca.disabled = busy;
    this.card.replaceChildren(
      ...present(
      h("div", { class: "card-head" }, h("h2", {}, "Sign in to your team's gateway"), busy ? h("span", { class: "pill pill-starting" }, "Signing in") : null),
      h("p", { class: "muted" }, "Give the gateway's API address. The console opens your identity provider's sign-in page in your browser and keeps the tokens in the OS keyring, never on disk."),
      h("label", { class: "stack" }, "Gateway API", this.gateway),
      h("label", { class: "stack" }, "CA certificate (if the gateway's is not publicly trusted)", this.ca),
      s.state === "signed_out" && s.reason ? h("div", { class: "blocked" }, `Signed out: ${s.reason}.`) : null,
      busy ? h("div", { class: "progress", "data-test": "signin-step" }, h("span", { class: "spinner" }), s.step) : null,
      busy ? cancel : null,
      h("div", { class: "buttons" }, button),
      this.error,
      ),
    );
  }
}
