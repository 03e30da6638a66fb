//! The real desktop app driven as a user would: under Xvfb (started here
//! when there is no display), through `tauri-driver` and Debian's
//! WebKitWebDriver, over the W3C WebDriver protocol. The client is a few
//! JSON calls over reqwest, which the harness already has; a WebDriver
//! crate would bring a second HTTP stack for the dozen endpoints used.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::free_port;

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where `tauri-driver` is: on PATH or in cargo's bin directory.
pub fn tauri_driver() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(home.map(|h| h.join("bin")))
        .map(|dir| dir.join("tauri-driver"))
        .find(|p| p.exists())
}

/// A display for the app: the session's own, or an Xvfb started here.
pub struct Display {
    /// `:N`.
    pub name: String,
    xvfb: Option<Child>,
}

impl Display {
    /// The current display, or a new Xvfb at 1280x800.
    pub fn get() -> Display {
        if let Ok(name) = std::env::var("DISPLAY")
            && !name.is_empty()
        {
            return Display { name, xvfb: None };
        }
        for n in 90..140 {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                || Path::new(&format!("/tmp/.X{n}-lock")).exists()
            {
                continue;
            }
            let name = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .args([&name, "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb starts (apt-get install xvfb)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                    return Display {
                        name,
                        xvfb: Some(child),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("Xvfb {name} did not come up");
        }
        panic!("no free X display number");
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        if let Some(mut xvfb) = self.xvfb.take() {
            let _ = xvfb.kill();
            let _ = xvfb.wait();
            // Killed, Xvfb leaves its lock and socket behind: without this,
            // each run would take a display number for good.
            let n = self.name.trim_start_matches(':');
            let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
            let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
        }
    }
}

/// A D-Bus session bus of a test's own, stopped on drop.
pub struct SessionBus {
    /// Its address (`DBUS_SESSION_BUS_ADDRESS`).
    pub address: String,
    daemon: Child,
}

impl SessionBus {
    /// Start one.
    pub fn start() -> SessionBus {
        use std::io::BufRead;
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon starts (apt-get install dbus-daemon)");
        let mut line = String::new();
        std::io::BufReader::new(daemon.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the bus address");
        SessionBus {
            address: line.trim().to_string(),
            daemon,
        }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A desktop notification service for the app: a session bus of its own
/// and dunst (a real notification daemon) on the display.
pub struct Notifications {
    /// The bus address to give the app (`DBUS_SESSION_BUS_ADDRESS`).
    pub bus: String,
    dunst: Child,
    /// Stopped after dunst (fields drop after `drop`).
    _session: SessionBus,
}

impl Notifications {
    /// Start a session bus and dunst on `display`.
    pub fn start(display: &Display) -> Notifications {
        let session = SessionBus::start();
        let bus = session.address.clone();
        let dunst = Command::new("dunst")
            .env("DISPLAY", &display.name)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dunst starts (apt-get install dunst)");
        let service = Notifications {
            bus,
            dunst,
            _session: session,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.dunstctl(&["is-paused"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "dunst did not come up on the bus"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    fn dunstctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("dunstctl")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Notifications on screen now.
    pub fn displayed(&self) -> u32 {
        self.dunstctl(&["count", "displayed"])
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Notifications shown so far: on screen, waiting, and closed.
    pub fn shown(&self) -> u32 {
        ["displayed", "waiting", "history"]
            .iter()
            .map(|which| {
                self.dunstctl(&["count", which])
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Click the first notification on screen (its default action; dunst
    /// 1.9 acts on position 0 only).
    pub fn click_first(&self) {
        self.dunstctl(&["action", "0"]).expect("dunstctl action");
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        let _ = self.dunst.kill();
        let _ = self.dunst.wait();
    }
}

/// A WebDriver session on the real app.
pub struct App {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
    native: u16,
    _display: Display,
}

/// An element of the app's window.
#[derive(Debug, Clone)]
pub struct Element(String);

impl App {
    /// Start `application` with `args` on `display`, through tauri-driver.
    pub async fn launch(
        display: Display,
        application: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> App {
        let driver_path = tauri_driver()
            .expect("tauri-driver is installed (cargo install tauri-driver --locked)");
        let (port, native) = (free_port(), free_port());
        let mut command = Command::new(driver_path);
        command
            .args([
                "--port",
                &port.to_string(),
                "--native-port",
                &native.to_string(),
            ])
            .env("DISPLAY", &display.name)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let driver = command.spawn().expect("tauri-driver starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "tauri:options": { "application": application, "args": args }
            }}
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let session = loop {
            match http
                .post(format!("{base}/session"))
                .json(&capabilities)
                .send()
                .await
            {
                Ok(response) => {
                    let body: Value = response.json().await.expect("json");
                    match body["value"]["sessionId"].as_str() {
                        Some(id) => break id.to_string(),
                        None => panic!("no WebDriver session: {body}"),
                    }
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("tauri-driver did not answer: {e}"),
            }
        };
        App {
            http,
            base,
            session,
            driver,
            native,
            _display: display,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let body: Value = response.json().await.unwrap_or(Value::Null);
        body["value"].clone()
    }

    /// Elements matching a CSS selector now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.into())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `css`, waiting up to `timeout`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.all(css).await.into_iter().next() {
                return found;
            }
            if Instant::now() > deadline {
                let page = self
                    .script("return document.body.innerText", json!([]))
                    .await;
                let shot = std::env::temp_dir().join("tollgate-webdriver-failure.png");
                let _ = std::fs::write(&shot, self.screenshot().await);
                panic!(
                    "no element {css} within {timeout:?}; the window (screenshot in {}) shows:\n{}",
                    shot.display(),
                    page.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until the text of the first `css` element satisfies `check`; that text.
    pub async fn wait_for_text(
        &self,
        css: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(el) = self.all(css).await.into_iter().next() {
                let text = self.text(&el).await;
                if check(&text) {
                    return text;
                }
                if Instant::now() > deadline {
                    panic!("{css} shows {text:?}, not what was expected within {timeout:?}");
                }
            } else if Instant::now() > deadline {
                panic!("no element {css} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Click (a click the driver refuses fails the test, with its reason).
    pub async fn click(&self, element: &Element) {
        if let Err(error) = self.try_click(element).await {
            panic!("the click was refused: {error}");
        }
    }

    async fn try_click(&self, element: &Element) -> Result<(), String> {
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("/element/{}/click", element.0),
                Some(json!({})),
            )
            .await;
        match answer.get("error") {
            Some(error) => Err(format!("{error} {}", answer["message"])),
            None => Ok(()),
        }
    }

    /// Click the first element matching `css` once the page settles: found
    /// again when a re-render replaced it between finding and clicking.
    pub async fn click_css(&self, css: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let element = self.wait_for(css, timeout).await;
            match self.try_click(&element).await {
                Ok(()) => return,
                Err(e) if e.contains("stale element") && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the click on {css} was refused: {e}"),
            }
        }
    }

    /// Empty an input.
    pub async fn clear(&self, element: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", element.0),
            Some(json!({})),
        )
        .await;
    }

    /// Type into an input.
    pub async fn type_text(&self, element: &Element, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Its visible text.
    pub async fn text(&self, element: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", element.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// An attribute.
    pub async fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/attribute/{name}", element.0),
            None,
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    /// Whether it is enabled.
    pub async fn enabled(&self, element: &Element) -> bool {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/enabled", element.0),
            None,
        )
        .await
        .as_bool()
        .unwrap_or(false)
    }

    /// Run a script in the page.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("a PNG")
    }

    /// End the session (the app exits; its local gateway stops).
    pub async fn quit(&self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // SIGTERM lets tauri-driver stop the WebKitWebDriver it started; a
        // SIGKILL would leave that running (and holding the test's pipes).
        let _ = Command::new("kill")
            .args(["-TERM", &self.driver.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.driver.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = Command::new("pkill")
            .args(["-f", &format!("WebKitWebDriver --port={}", self.native)])
            .status();
    }
}
