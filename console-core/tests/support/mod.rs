//! What the console's headless tests share: a host that records what the
//! console tells the window and the desktop and, when the console opens
//! the browser, signs in at the test OpenID Provider as a scripted user;
//! and that provider (npm oidc-provider, a real one) on a free port.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console_core::types::{ConsoleEvent, LocalOptions};
use console_core::{Host, Notice};

/// Records what the console tells the window and the desktop.
#[derive(Clone)]
pub struct Recorder {
    pub dir: Arc<tempfile::TempDir>,
    pub events: Arc<Mutex<Vec<ConsoleEvent>>>,
    pub notices: Arc<Mutex<Vec<Notice>>>,
    pub closed: Arc<Mutex<Vec<String>>>,
    /// No notification service on this desktop.
    no_notifications: bool,
    /// Who signs in when the console opens the browser.
    pub login: Arc<Mutex<String>>,
    /// The addresses the console opened.
    pub opened: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn new(no_notifications: bool) -> Recorder {
        Recorder {
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            events: Arc::default(),
            notices: Arc::default(),
            closed: Arc::default(),
            no_notifications,
            login: Arc::new(Mutex::new("alice".into())),
            opened: Arc::default(),
        }
    }

    pub fn warnings(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ConsoleEvent::Notice { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Host for Recorder {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn emit(&self, event: ConsoleEvent) {
        self.events.lock().unwrap().push(event);
    }

    fn notify(&self, notice: &Notice) -> Result<(), String> {
        if self.no_notifications {
            return Err("no notification service on the session bus".into());
        }
        self.notices.lock().unwrap().push(notice.clone());
        Ok(())
    }

    fn close_notice(&self, request: &str) {
        self.closed.lock().unwrap().push(request.to_string());
    }

    /// The scripted user signs in at the provider's login form; the
    /// provider then sends the "browser" back to the console's loopback
    /// redirect.
    fn open_url(&self, url: &str) -> Result<(), String> {
        self.opened.lock().unwrap().push(url.to_string());
        let login = self.login.lock().unwrap().clone();
        let script = oidc_dir().join("browser.mjs");
        let url = url.to_string();
        std::thread::spawn(move || {
            let out = std::process::Command::new("node")
                .arg(script)
                .arg(url)
                .env("TOLLGATE_TEST_LOGIN", login)
                .output();
            match out {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "scripted browser failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("scripted browser did not start: {e}"),
            }
        });
        Ok(())
    }
}

pub fn any_port() -> LocalOptions {
    LocalOptions {
        listen: Some("127.0.0.1:0".into()),
        api_listen: Some("127.0.0.1:0".into()),
        mcp_listen: Some("127.0.0.1:0".into()),
        ..LocalOptions::default()
    }
}

pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

#[allow(unused_imports)]
pub use tollgate_e2e::oidc::{Provider, oidc_dir};
