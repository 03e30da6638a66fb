// The only module that talks to Tauri. Everything else calls these functions.
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type {
  AuditState,
  ConsoleEvent,
  Decision,
  DevAccess,
  ErrorView,
  ExportOptions,
  ExportResult,
  FramePage,
  InboxView,
  LocalInfo,
  LocalOptions,
  LocalStatus,
  MarkerList,
  RemoteStatus,
  RequestView,
  SearchResult,
  SessionDetail,
  SessionFilter,
  SessionPage,
  SignInOptions,
  TrafficStatus,
  Viewer,
} from "./generated/types";

export interface About {
  product: string;
  version: string;
  dev_config_ok: boolean;
  data_dir: string;
}

/** Whether the page runs inside the desktop app (not a plain browser). */
export function inDesktopApp(): boolean {
  return typeof window !== "undefined" && "__TAURI_INTERNALS__" in window;
}

/** A command's error as the core describes it. */
export function asError(e: unknown): ErrorView {
  if (e && typeof e === "object" && "message" in e && "hint" in e) return e as ErrorView;
  return { code: "internal", message: String(e), hint: "Run the console from a terminal to see its log." };
}

export const about = (): Promise<About> => invoke<About>("about");
export const localStatus = (): Promise<LocalStatus> => invoke<LocalStatus>("local_status");
export const startLocal = (options: LocalOptions): Promise<LocalInfo> =>
  invoke<LocalInfo>("start_local", { options });
export const stopLocal = (): Promise<void> => invoke<void>("stop_local");
export const devAccess = (who: "engineer" | "agent" | "approver"): Promise<DevAccess> =>
  invoke<DevAccess>("dev_access", { who });
export const inbox = (): Promise<InboxView> => invoke<InboxView>("inbox");
export const decide = (decision: Decision): Promise<RequestView> =>
  invoke<RequestView>("decide", { decision });
export const startTraffic = (): Promise<TrafficStatus> => invoke<TrafficStatus>("start_traffic");
export const stopTraffic = (): Promise<TrafficStatus> => invoke<TrafficStatus>("stop_traffic");
export const traffic = (): Promise<TrafficStatus> => invoke<TrafficStatus>("traffic");

export const remoteStatus = (): Promise<RemoteStatus> => invoke<RemoteStatus>("remote_status");
export const signIn = (options: SignInOptions): Promise<RemoteStatus> => invoke<RemoteStatus>("sign_in", { options });
export const signOut = (): Promise<RemoteStatus> => invoke<RemoteStatus>("sign_out");
export const cancelSignIn = (): Promise<void> => invoke<void>("cancel_sign_in");
export const viewer = (): Promise<Viewer> => invoke<Viewer>("viewer");
export const setLocalViewer = (role: "analyst" | "auditor"): Promise<Viewer> =>
  invoke<Viewer>("set_local_viewer", { role });
export const sessions = (filter: SessionFilter): Promise<SessionPage> => invoke<SessionPage>("sessions", { filter });
export const session = (id: string): Promise<SessionDetail> => invoke<SessionDetail>("session", { id });
export const frames = (id: string, after: number, limit: number): Promise<FramePage> =>
  invoke<FramePage>("frames", { id, after, limit });
export const markers = (id: string): Promise<MarkerList> => invoke<MarkerList>("markers", { id });
export const searchSession = (id: string, q: string): Promise<SearchResult> =>
  invoke<SearchResult>("search_session", { id, q });
export const auditState = (): Promise<AuditState> => invoke<AuditState>("audit_state");
export const exportEvidence = (options: ExportOptions): Promise<ExportResult> =>
  invoke<ExportResult>("export_evidence", { options });
export const launchLink = (): Promise<string | null> => invoke<string | null>("launch_link");

/** Every event the core sends the window. */
export function onConsoleEvent(handler: (event: ConsoleEvent) => void): Promise<UnlistenFn> {
  return listen<ConsoleEvent>("console", (e) => handler(e.payload));
}

/** Put text on the clipboard (the webview's API, with the selection fallback). */
export async function copyText(text: string): Promise<void> {
  try {
    await navigator.clipboard.writeText(text);
    return;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}
