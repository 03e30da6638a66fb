// The only module that talks to Tauri. Everything else calls these functions.
import { invoke } from "@tauri-apps/api/core";

export interface About {
  product: string;
  version: string;
  dev_config_ok: boolean;
}

/** Whether the page runs inside the desktop app (not a plain browser). */
export function inDesktopApp(): boolean {
  return typeof window !== "undefined" && "__TAURI_INTERNALS__" in window;
}

export async function about(): Promise<About> {
  return invoke<About>("about");
}
