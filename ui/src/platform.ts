// The only module that talks to Tauri. Everything else calls these functions.
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type {
  ConsoleEvent,
  Decision,
  DevAccess,
  ErrorView,
  InboxView,
  LocalInfo,
  LocalOptions,
  LocalStatus,
  RequestView,
  TrafficStatus,
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
