//! The desktop console: Tauri commands and events over `console-core`, which
//! does the work. Nothing here decides anything: each command is one call
//! of [`console_core::Console`], and the [`Desktop`] host turns the core's
//! events into window events and its notices into native notifications.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use console_core::types::ConsoleEvent;
use console_core::{Console, Host, Notice};
use serde::Serialize;
use tauri::{AppHandle, Emitter, Manager};

/// The window event every core event arrives as.
pub const EVENT: &str = "console";

/// How the console was started.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "tollgate-console",
    version,
    about = "Tollgate's desktop console"
)]
pub struct Args {
    /// Start the local gateway and the demo traffic (an agent's queries and
    /// a held bulk export about once a minute).
    #[arg(long)]
    pub demo: bool,
    /// Do not start the local gateway on launch.
    #[arg(long, conflicts_with = "demo")]
    pub no_autostart: bool,
    /// The local gateway's PostgreSQL listener.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The local gateway's API listener.
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// The local gateway's MCP listener, in front of the payments MCP
    /// server (with the demo database; default 127.0.0.1:6434).
    #[arg(long, value_name = "ADDR")]
    pub mcp_listen: Option<String>,
    /// Where the console keeps its files (default: the OS's app data directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Open this frame link (`tollgate://session/ID?frame=N`, copied from the player).
    #[arg(value_name = "LINK")]
    pub open: Option<String>,
}

/// The desktop as the console's host.
pub struct Desktop {
    app: AppHandle,
    data_dir: PathBuf,
    /// Notifications on screen: their ids, by request.
    open: Arc<Mutex<HashMap<String, u32>>>,
}

impl Host for Desktop {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    fn emit(&self, event: ConsoleEvent) {
        if let Err(e) = self.app.emit(EVENT, &event) {
            tracing::warn!(error = %e, "could not send an event to the window");
        }
    }

    fn notify(&self, notice: &Notice) -> Result<(), String> {
        // notify-rust blocks on D-Bus: show, then wait for the click on a
        // thread of its own, and report only whether it could be shown.
        let (shown, outcome) = mpsc::channel();
        let (app, notice, open) = (self.app.clone(), notice.clone(), self.open.clone());
        std::thread::spawn(move || {
            // Notification servers may render a subset of HTML in the body,
            // and its texts come from identities and databases.
            let handle = notify_rust::Notification::new()
                .appname("Tollgate")
                .summary(&notice.title)
                .body(&escape_markup(&notice.body))
                .action("default", "Show request")
                .timeout(notify_rust::Timeout::Milliseconds(60_000))
                .show();
            let handle = match handle {
                Ok(handle) => handle,
                Err(e) => {
                    let e = e.to_string();
                    let why = if e.contains("bus") || e.contains("ServiceUnknown") {
                        "no notification service is running on this desktop".to_string()
                    } else {
                        e.chars().take(80).collect()
                    };
                    let _ = shown.send(Err(why));
                    return;
                }
            };
            lock(&open).insert(notice.request.clone(), handle.id());
            let _ = shown.send(Ok(()));
            // On the connection that showed it: servers send the click only
            // there. Returns when it is clicked or closed.
            handle.wait_for_action(|action| {
                if action == "default" {
                    focus(&app, &notice.request);
                }
            });
            lock(&open).remove(&notice.request);
        });
        match outcome.recv_timeout(Duration::from_secs(5)) {
            Ok(result) => result,
            Err(_) => Err("the notification service did not answer".into()),
        }
    }

    fn close_notice(&self, request: &str) {
        let Some(id) = lock(&self.open).remove(request) else {
            return;
        };
        let closed = tauri::async_runtime::block_on(async move {
            zbus::Connection::session()
                .await?
                .call_method(
                    Some("org.freedesktop.Notifications"),
                    "/org/freedesktop/Notifications",
                    Some("org.freedesktop.Notifications"),
                    "CloseNotification",
                    &(id,),
                )
                .await
                .map(drop)
        });
        if let Err(e) = closed {
            tracing::debug!(error = %e, "could not take a notification down");
        }
    }

    fn open_url(&self, url: &str) -> Result<(), String> {
        open_in_browser(url)
    }
}

/// Open `url` with the user's browser: `$BROWSER` when set (a command,
/// `%s` standing for the address, else the address appended), as
/// xdg-utils and Python's webbrowser do; else `xdg-open`.
fn open_in_browser(url: &str) -> Result<(), String> {
    // Only web addresses: a file:, smb: or custom scheme would run a handler.
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("not a web address: {url}"));
    }
    let (program, args): (String, Vec<String>) = match std::env::var("BROWSER") {
        Ok(browser) if !browser.trim().is_empty() => {
            let first = browser
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let mut words: Vec<String> = first.split_whitespace().map(str::to_string).collect();
            if words.is_empty() {
                return Err("$BROWSER is empty".into());
            }
            let program = words.remove(0);
            if words.iter().any(|w| w.contains("%s")) {
                words = words.into_iter().map(|w| w.replace("%s", url)).collect();
            } else {
                words.push(url.to_string());
            }
            (program, words)
        }
        _ if cfg!(target_os = "macos") => ("open".into(), vec![url.to_string()]),
        _ if cfg!(target_os = "windows") => (
            "rundll32".into(),
            vec!["url.dll,FileProtocolHandler".into(), url.to_string()],
        ),
        _ => ("xdg-open".into(), vec![url.to_string()]),
    };
    std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|mut child| {
            // Reaped when it exits (browsers' launchers return at once).
            std::thread::spawn(move || child.wait());
        })
        .map_err(|e| format!("{program}: {e}"))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Text for a notification body, whose markup servers may interpret.
fn escape_markup(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Bring the window forward on `request`.
fn focus(app: &AppHandle, request: &str) {
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
    }
    let _ = app.emit(
        EVENT,
        &ConsoleEvent::Focus {
            request: request.to_string(),
        },
    );
}

/// What the console shows about itself.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct About {
    /// Product name.
    pub product: &'static str,
    /// Version.
    pub version: &'static str,
    /// The embedded dev configuration loads (the local gateway can start).
    pub dev_config_ok: bool,
    /// Where the console keeps its files.
    pub data_dir: String,
}

/// The Tauri commands: each adapts one core call.
pub mod commands {
    use console_core::types::{
        AuditState, Decision, DevAccess, ExportOptions, ExportResult, FramePage, InboxView,
        LocalInfo, LocalOptions, LocalStatus, MarkerList, Persona, RemoteStatus, RequestView,
        SearchResult, SessionDetail, SessionFilter, SessionPage, SignInOptions, TrafficStatus,
        Viewer,
    };
    use console_core::{Console, ConsoleError, Host};

    use super::{About, Desktop};

    type State<'a> = tauri::State<'a, Console<Desktop>>;

    /// `about`.
    #[tauri::command]
    pub fn about(console: State<'_>) -> About {
        About {
            product: "Tollgate",
            version: env!("CARGO_PKG_VERSION"),
            dev_config_ok: console_core::local::dev_config_loads(),
            data_dir: console.host().data_dir().display().to_string(),
        }
    }

    /// `local_status`.
    #[tauri::command]
    pub fn local_status(console: State<'_>) -> LocalStatus {
        console.local_status()
    }

    /// `start_local`.
    #[tauri::command]
    pub async fn start_local(
        console: State<'_>,
        options: LocalOptions,
    ) -> Result<LocalInfo, ConsoleError> {
        console.start_local(options).await
    }

    /// `stop_local`.
    #[tauri::command]
    pub async fn stop_local(console: State<'_>) -> Result<(), ConsoleError> {
        console.stop_local().await;
        Ok(())
    }

    /// `dev_access`: `engineer`, `agent` or `approver`.
    #[tauri::command]
    pub async fn dev_access(console: State<'_>, who: String) -> Result<DevAccess, ConsoleError> {
        let persona = match who.as_str() {
            "agent" => Persona::agent(),
            "approver" => Persona::approver(),
            _ => Persona::engineer(),
        };
        console.dev_access(persona).await
    }

    /// `inbox`.
    #[tauri::command]
    pub fn inbox(console: State<'_>) -> InboxView {
        console.inbox()
    }

    /// `decide`.
    #[tauri::command]
    pub async fn decide(
        console: State<'_>,
        decision: Decision,
    ) -> Result<RequestView, ConsoleError> {
        console.decide(decision).await
    }

    /// `start_traffic`.
    #[tauri::command]
    pub async fn start_traffic(console: State<'_>) -> Result<TrafficStatus, ConsoleError> {
        console.start_traffic().await
    }

    /// `stop_traffic`.
    #[tauri::command]
    pub fn stop_traffic(console: State<'_>) -> TrafficStatus {
        console.stop_traffic()
    }

    /// `traffic`.
    #[tauri::command]
    pub fn traffic(console: State<'_>) -> TrafficStatus {
        console.traffic()
    }

    /// `remote_status`.
    #[tauri::command]
    pub fn remote_status(console: State<'_>) -> RemoteStatus {
        console.remote_status()
    }

    /// `sign_in`.
    #[tauri::command]
    pub async fn sign_in(
        console: State<'_>,
        options: SignInOptions,
    ) -> Result<RemoteStatus, ConsoleError> {
        console.sign_in(options).await
    }

    /// `cancel_sign_in`.
    #[tauri::command]
    pub fn cancel_sign_in(console: State<'_>) {
        console.cancel_sign_in();
    }

    /// `sign_out`.
    #[tauri::command]
    pub async fn sign_out(console: State<'_>) -> Result<RemoteStatus, ConsoleError> {
        console.sign_out().await
    }

    /// `viewer`.
    #[tauri::command]
    pub async fn viewer(console: State<'_>) -> Result<Viewer, ConsoleError> {
        console.viewer().await
    }

    /// `set_local_viewer`: `analyst` or `auditor`.
    #[tauri::command]
    pub async fn set_local_viewer(
        console: State<'_>,
        role: String,
    ) -> Result<Viewer, ConsoleError> {
        console.set_local_viewer(match role.as_str() {
            "auditor" => Persona::auditor(),
            _ => Persona::engineer(),
        });
        console.viewer().await
    }

    /// `sessions`.
    #[tauri::command]
    pub async fn sessions(
        console: State<'_>,
        filter: SessionFilter,
    ) -> Result<SessionPage, ConsoleError> {
        console.sessions(filter).await
    }

    /// `session`.
    #[tauri::command]
    pub async fn session(console: State<'_>, id: String) -> Result<SessionDetail, ConsoleError> {
        console.session(id).await
    }

    /// `frames`.
    #[tauri::command]
    pub async fn frames(
        console: State<'_>,
        id: String,
        after: i64,
        limit: u32,
    ) -> Result<FramePage, ConsoleError> {
        console.frames(id, after, limit).await
    }

    /// `markers`.
    #[tauri::command]
    pub async fn markers(console: State<'_>, id: String) -> Result<MarkerList, ConsoleError> {
        console.markers(id).await
    }

    /// `search_session`.
    #[tauri::command]
    pub async fn search_session(
        console: State<'_>,
        id: String,
        q: String,
    ) -> Result<SearchResult, ConsoleError> {
        console.search_session(id, q).await
    }

    /// `audit_state`.
    #[tauri::command]
    pub async fn audit_state(console: State<'_>) -> Result<AuditState, ConsoleError> {
        console.audit_state().await
    }

    /// `export_evidence`.
    #[tauri::command]
    pub async fn export_evidence(
        console: State<'_>,
        options: ExportOptions,
    ) -> Result<ExportResult, ConsoleError> {
        console.export_evidence(options).await
    }

    /// `launch_link`: the frame link the console was started with, once.
    #[tauri::command]
    pub fn launch_link(link: tauri::State<'_, super::LaunchLink>) -> Option<String> {
        super::lock(&link.0).take()
    }
}

/// A `tollgate://` frame link given on the command line, for the window to open.
#[derive(Default)]
pub struct LaunchLink(pub Mutex<Option<String>>);

/// The file that remembers whether the local gateway ran when the console closed.
const SETTINGS: &str = "console-settings.json";

/// Whether to start the local gateway (with the demo database) on launch.
fn autostart(data_dir: &std::path::Path) -> bool {
    // First start: no settings yet, start it; afterwards, as it was left.
    // One in front of an existing database is not restarted on its own: its
    // URL holds a password, which the console does not write to disk.
    match std::fs::read_to_string(data_dir.join(SETTINGS)) {
        Err(_) => true,
        Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .map(|v| {
                v["local_gateway_running"].as_bool().unwrap_or(true)
                    && v["mode"].as_str().unwrap_or("demo") == "demo"
            })
            .unwrap_or(true),
    }
}

fn remember(data_dir: &std::path::Path, status: &console_core::types::LocalStatus) {
    use console_core::types::LocalStatus;
    let (running, mode) = match status {
        LocalStatus::Running { info } => (true, info.mode.as_str()),
        _ => (false, "demo"),
    };
    let _ = std::fs::create_dir_all(data_dir);
    let _ = std::fs::write(
        data_dir.join(SETTINGS),
        serde_json::json!({ "local_gateway_running": running, "mode": mode }).to_string(),
    );
}

/// Register the console's commands on a builder (shared by `main` and the tests).
pub fn with_commands<R: tauri::Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder.invoke_handler(tauri::generate_handler![
        commands::about,
        commands::local_status,
        commands::start_local,
        commands::stop_local,
        commands::dev_access,
        commands::inbox,
        commands::decide,
        commands::start_traffic,
        commands::stop_traffic,
        commands::traffic,
        commands::remote_status,
        commands::sign_in,
        commands::sign_out,
        commands::cancel_sign_in,
        commands::viewer,
        commands::set_local_viewer,
        commands::sessions,
        commands::session,
        commands::frames,
        commands::markers,
        commands::search_session,
        commands::audit_state,
        commands::export_evidence,
        commands::launch_link,
    ])
}

/// Run the console until its window closes; the local gateway stops with it.
pub fn run(args: Args) {
    let app = with_commands(tauri::Builder::default())
        .setup(move |app| {
            let data_dir = match &args.data_dir {
                Some(dir) => dir.clone(),
                None => app.path().app_data_dir()?,
            };
            std::fs::create_dir_all(&data_dir)?;
            let console = Console::new(Desktop {
                app: app.handle().clone(),
                data_dir: data_dir.clone(),
                open: Arc::default(),
            });
            app.manage(console.clone());
            app.manage(LaunchLink(Mutex::new(args.open.clone())));
            // A sign-in the keyring kept is restored without the browser.
            let restoring = console.clone();
            tauri::async_runtime::spawn(async move {
                restoring.restore_remote().await;
            });
            // Ctrl-C, SIGTERM or SIGHUP close the console as the window
            // would, so the local gateway stops and its throwaway database is
            // removed; a second one, while that takes its time, exits at once.
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    tracing::warn!(
                        "no signal handlers: Ctrl-C will not stop the local gateway cleanly"
                    );
                    return;
                };
                let mut asked = 0;
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    asked += 1;
                    if asked > 1 {
                        std::process::exit(130);
                    }
                    handle.exit(0);
                }
            });
            if args.demo || (!args.no_autostart && autostart(&data_dir)) {
                let options = console_core::types::LocalOptions {
                    listen: args.listen.clone(),
                    api_listen: args.api_listen.clone(),
                    mcp_listen: args.mcp_listen.clone(),
                    ..console_core::types::LocalOptions::default()
                };
                let demo = args.demo;
                tauri::async_runtime::spawn(async move {
                    if console.start_local(options).await.is_ok() && demo {
                        let _ = console.start_traffic().await;
                    }
                });
            }
            Ok(())
        })
        .build(tauri::generate_context!())
        .expect("the Tollgate console could not start");
    app.run(|app, event| {
        if let tauri::RunEvent::Exit = event {
            let console = app.state::<Console<Desktop>>().inner().clone();
            remember(&console.host().data_dir(), &console.local_status());
            tauri::async_runtime::block_on(console.shutdown());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_starts_the_local_gateway_and_later_ones_as_it_was_left() {
        let dir = tempfile::tempdir().unwrap();
        use console_core::types::LocalStatus;
        assert!(autostart(dir.path()));
        remember(dir.path(), &LocalStatus::Stopped);
        assert!(!autostart(dir.path()));
        remember(dir.path(), &LocalStatus::Starting { step: "x".into() });
        assert!(!autostart(dir.path()), "its mode is not known yet");
    }

    #[test]
    fn notification_bodies_carry_no_markup() {
        assert_eq!(
            escape_markup("<b>a</b> & <img src=x>"),
            "&lt;b&gt;a&lt;/b&gt; &amp; &lt;img src=x&gt;"
        );
    }

    #[test]
    fn arguments_parse_as_documented() {
        use clap::Parser;
        let args = Args::try_parse_from(["tollgate-console", "--demo", "--listen", "127.0.0.1:0"])
            .unwrap();
        assert!(args.demo);
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:0"));
        assert!(Args::try_parse_from(["tollgate-console", "--demo", "--no-autostart"]).is_err());
        let args =
            Args::try_parse_from(["tollgate-console", "tollgate://session/abc?frame=7"]).unwrap();
        assert_eq!(args.open.as_deref(), Some("tollgate://session/abc?frame=7"));
    }
}
