import { about, inDesktopApp } from "./platform";

function set(id: string, text: string): void {
  const el = document.getElementById(id);
  if (el) el.textContent = text;
}

async function start(): Promise<void> {
  if (!inDesktopApp()) {
    set("status", "Running in a browser: start the desktop app to reach the embedded gateway.");
    return;
  }
  try {
    const info = await about();
    set("core-version", info.version);
    set("version", `gateway core ${info.version}`);
    set("dev-config", info.dev_config_ok ? "loads" : "invalid: check fixtures/dev.toml");
  } catch (e) {
    set("status", `Could not reach the embedded gateway: ${String(e)}. Restart the app; if it persists, run it from a terminal to see the log.`);
  }
}

void start();
