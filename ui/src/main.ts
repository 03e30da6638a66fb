// The console's shell: navigation, the status bar, and wiring the core's
// events to the inbox and local gateway views.

import * as platform from "./platform";
import type { ConsoleEvent, InboxView, Link } from "./generated/types";
import { byId } from "./dom";
import { InboxPanel } from "./inbox";
import { LocalPanel, summary } from "./local";
import { SessionBrowser } from "./sessions";
import { Player, parseLink } from "./player";
import { EvidencePanel } from "./evidence";
import { SignInPanel, remoteSummary } from "./signin";

type Page = "inbox" | "sessions" | "player" | "evidence" | "remote" | "local";

const PAGES: Page[] = ["inbox", "sessions", "player", "evidence", "remote", "local"];

const TITLES: Record<Page, [string, string]> = {
  inbox: ["Approvals", "Statements a policy holds for sign-off. Decide with a reason; the requester is told and the audit log keeps it."],
  sessions: ["Sessions", "Every recorded session: filter by who, where, when and what happened, or search the statements they ran."],
  player: ["Session replay", "Frame by frame, as the gateway saw it: each statement, its decision and policy, the masked result."],
  evidence: ["Evidence", "The audit log's state and the evidence bundle a QSA asks for."],
  remote: ["Team gateway", "Sign in to your team's gateway with your identity provider."],
  local: ["Local gateway", "The gateway core in this window, in front of a demo database or yours."],
};

/** Each page has its nav item (the player belongs to Sessions). */
function navOf(page: Page): string {
  return page === "player" ? "sessions" : page;
}

/** Who is signed in to a team's gateway, if anyone. */
let remoteSubject: string | null = null;

/** The console's data folder (from `about`). */
let dataDir = "";

/** The link detail last shown, so each is shown once and cleared when the link recovers. */
let linkDetail: string | null = null;

function status(text: string, level: "info" | "warning" | "error" = "info"): void {
  const bar = byId("status");
  bar.className = `status status-${level}`;
  bar.textContent = text;
}

let current: Page = "inbox";
const onShow: Partial<Record<Page, () => void>> = {};

function showPage(page: Page): void {
  current = page;
  for (const p of PAGES) {
    byId(`page-${p}`).hidden = p !== page;
    const nav = document.getElementById(`nav-${p}`);
    if (nav) nav.classList.toggle("active", p === navOf(page));
  }
  byId("title").textContent = TITLES[page][0];
  byId("subtitle").textContent = TITLES[page][1];
  onShow[page]?.();
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
    case "refused":
      return "Not an approver";
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

  const copy = async (text: string, what: string) => {
    await platform.copyText(text);
    status(`${what} copied to the clipboard.`);
  };
  const player = new Player(
    byId("page-player"),
    {
      session: platform.session,
      frames: platform.frames,
      markers: platform.markers,
      search: platform.searchSession,
    },
    {
      copy: (text, what) => void copy(text, what),
      error: (message) => status(message, "error"),
      back: () => showPage("sessions"),
    },
  );
  const openSession = async (id: string, frame: number) => {
    showPage("player");
    try {
      const viewer = await platform.viewer();
      player.setRoles(viewer.roles);
      await player.open(id, frame);
    } catch (e) {
      const error = platform.asError(e);
      status(`${error.message}. ${error.hint}`, "error");
    }
  };
  const browser = new SessionBrowser(byId("page-sessions"), {
    list: platform.sessions,
    open: (s, frame) => void openSession(s.id, frame),
    error: (message) => status(message, "error"),
    viewAs: async (role) => {
      try {
        const viewer = await platform.setLocalViewer(role);
        browser.setViewer(viewer);
        return viewer;
      } catch {
        return null;
      }
    },
  });
  onShow.sessions = () => {
    void platform
      .viewer()
      .then((v) => browser.setViewer(v))
      .catch(() => browser.setViewer(null));
    void browser.reload();
  };
  const evidence = new EvidencePanel(byId("page-evidence"), {
    state: platform.auditState,
    export: platform.exportEvidence,
    copy: (text, what) => void copy(text, what),
    suggestDir: () => `${dataDir}/evidence-${new Date().toISOString().slice(0, 10)}-${Date.now() % 100000}`,
  });
  onShow.evidence = () => evidence.show();
  const signin = new SignInPanel(byId("page-remote"), {
    signIn: async (options) => {
      try {
        await platform.signIn(options);
        status("Signed in; approvals, sessions and evidence now come from the team's gateway.");
        return null;
      } catch (e) {
        return platform.asError(e);
      }
    },
    cancel: () => platform.cancelSignIn(),
    signOut: async () => {
      await platform.signOut();
      status("Signed out; the tokens were removed from the keyring.");
    },
  });
  const openLink = (link: string) => {
    const target = parseLink(link);
    if (target) void openSession(target.session, target.frame);
    else status(`Not a frame link: ${link}. Links look like tollgate://session/ID?frame=N.`, "warning");
  };
  document.addEventListener("paste", (e) => {
    const text = e.clipboardData?.getData("text") ?? "";
    if (text.startsWith("tollgate://") && !(e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement)) {
      e.preventDefault();
      openLink(text);
    }
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
    byId("me").textContent = view.me ? view.me.subject : (remoteSubject ?? "not signed in");
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
      case "remote":
        remoteSubject = event.status.state === "signed_in" ? event.status.session.subject : null;
        signin.set(event.status);
        byId("remote-summary").textContent = remoteSummary(event.status);
        break;
      case "export":
        evidence.progress(event.progress);
        break;
    }
  };
  await platform.onConsoleEvent(handle);

  for (const p of ["inbox", "sessions", "evidence", "remote", "local"] as Page[]) {
    byId(`nav-${p}`).addEventListener("click", () => showPage(p));
  }
  document.addEventListener("keydown", (e) => {
    if (current === "inbox" && inbox.key(e)) e.preventDefault();
    else if (current === "player" && player.key(e)) e.preventDefault();
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
    dataDir = info.data_dir;
    byId("version").textContent = `Tollgate ${info.version}`;
    handle({ kind: "remote", status: await platform.remoteStatus() });
    const initial = await platform.localStatus();
    showPage(initial.state === "failed" ? "local" : "inbox");
    handle({ kind: "local", status: initial });
    showInbox(await platform.inbox());
    local.setTraffic(await platform.traffic());
    const link = await platform.launchLink();
    if (link) openLink(link);
  } catch (e) {
    const error = platform.asError(e);
    status(`The console core did not answer: ${error.message}. ${error.hint}`, "error");
  }
}

void start().catch((e) => status(String(e), "error"));

