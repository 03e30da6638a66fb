// The console's shell: navigation, the status bar, and wiring the core's
// events to the inbox and local gateway views.

import * as platform from "./platform";
import type { ConsoleEvent, InboxView, Link } from "./generated/types";
import { byId } from "./dom";
import { InboxPanel } from "./inbox";
import { LocalPanel, summary } from "./local";

type Page = "inbox" | "local";

/** The link detail last shown, so each is shown once and cleared when the link recovers. */
let linkDetail: string | null = null;

function status(text: string, level: "info" | "warning" | "error" = "info"): void {
  const bar = byId("status");
  bar.className = `status status-${level}`;
  bar.textContent = text;
}

function showPage(page: Page): void {
  for (const p of ["inbox", "local"] as Page[]) {
    byId(`page-${p}`).hidden = p !== page;
    byId(`nav-${p}`).classList.toggle("active", p === page);
  }
  byId("title").textContent = page === "inbox" ? "Approvals" : "Local gateway";
  byId("subtitle").textContent =
    page === "inbox"
      ? "Statements a policy holds for sign-off. Decide with a reason; the requester is told and the audit log keeps it."
      : "The gateway core in this window, in front of a demo database or yours.";
}

function linkText(link: Link): string {
  switch (link.state) {
    case "live":
      return "Live";
    case "polling":
      return "Polling";
    case "connecting":
      return "Connecting";
    case "down":
      return "Reconnecting";
    default:
      return "Off";
  }
}

async function start(): Promise<void> {
  if (!platform.inDesktopApp()) {
    status("Running in a browser: start the desktop app (scripts/demo.sh) to reach the gateway.", "warning");
    return;
  }
  const inbox = new InboxPanel(byId("page-inbox"), {
    decide: async (decision) => {
      try {
        const request = await platform.decide(decision);
        status(`${request.state === "denied" ? "Denied" : "Approved"} ${request.id}.`);
        return null;
      } catch (e) {
        const error = platform.asError(e);
        return `${error.message}. ${error.hint}`;
      }
    },
    elsewhere: (message) => status(message, "error"),
  });
  const local = new LocalPanel(byId("page-local"), {
    start: async (options) => {
      try {
        await platform.startLocal(options);
        return null;
      } catch (e) {
        return platform.asError(e);
      }
    },
    stop: () => platform.stopLocal(),
    access: async (who) => {
      try {
        return await platform.devAccess(who);
      } catch (e) {
        return platform.asError(e);
      }
    },
    copy: async (text, what) => {
      await platform.copyText(text);
      status(`${what} copied to the clipboard.`);
    },
    traffic: async (on) => {
      try {
        if (on) await platform.startTraffic();
        else await platform.stopTraffic();
        return null;
      } catch (e) {
        const error = platform.asError(e);
        status(`${error.message}. ${error.hint}`, "error");
        return error;
      }
    },
  });

  const showInbox = (view: InboxView) => {
    inbox.update(view);
    const count = inbox.pendingCount();
    const badge = byId("badge");
    badge.textContent = String(count);
    badge.hidden = count === 0;
    const dot = byId("link");
    dot.className = `link link-${view.link.state}`;
    dot.title = view.link.detail ?? "";
    byId("link-text").textContent = linkText(view.link);
    byId("me").textContent = view.me ? view.me.subject : "not signed in";
    const detail = view.link.state !== "off" ? view.link.detail : null;
    if (detail && detail !== linkDetail) status(detail, "warning");
    else if (!detail && linkDetail) status(view.link.state === "live" ? "Connected to the gateway's approvals." : "");
    linkDetail = detail;
  };

  const handle = (event: ConsoleEvent) => {
    switch (event.kind) {
      case "local":
        local.setStatus(event.status);
        byId("local-summary").textContent = summary(event.status);
        if (event.status.state === "failed") showPage("local");
        break;
      case "inbox":
        showInbox(event.inbox);
        break;
      case "traffic":
        local.setTraffic(event.status);
        break;
      case "notice":
        status(event.message, event.level === "warning" ? "warning" : "info");
        break;
      case "focus":
        showPage("inbox");
        inbox.focus(event.request);
        break;
    }
  };
  await platform.onConsoleEvent(handle);

  byId("nav-inbox").addEventListener("click", () => showPage("inbox"));
  byId("nav-local").addEventListener("click", () => showPage("local"));
  document.addEventListener("keydown", (e) => {
    if (!byId("page-inbox").hidden && inbox.key(e)) e.preventDefault();
  });
  setInterval(() => inbox.tick(), 1000);
  // Between the commands below and the first events, poll once a second
  // for what events do not cover (the live session count).
  setInterval(async () => {
    const s = await platform.localStatus();
    if (s.state === "running") local.setStatus(s);
  }, 2000);

  try {
    const info = await platform.about();
    byId("version").textContent = `Tollgate ${info.version}`;
    const initial = await platform.localStatus();
    showPage(initial.state === "failed" ? "local" : "inbox");
    handle({ kind: "local", status: initial });
    showInbox(await platform.inbox());
    local.setTraffic(await platform.traffic());
  } catch (e) {
    const error = platform.asError(e);
    status(`The console core did not answer: ${error.message}. ${error.hint}`, "error");
  }
}

void start().catch((e) => status(String(e), "error"));

