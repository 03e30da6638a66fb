//! A real OpenID Provider for the console's sign-in tests: npm
//! `oidc-provider` (panva's certified one, offline) from `tests/oidc`, on a
//! free port, stopped on drop. `tests/oidc/browser.mjs` plays the user at
//! its login form; `tests/oidc/sign-in` is that as a `$BROWSER`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The test provider's folder (`tests/oidc`).
pub fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// A running provider.
pub struct Provider {
    /// Its issuer URL (`http://127.0.0.1:PORT`).
    pub issuer: String,
    child: Child,
}

impl Provider {
    /// Start it for `audience`, its access tokens living `ttl_secs`. Its
    /// client `tollgate-console` is a native public client (PKCE, loopback
    /// redirect on any port); users alice (analysts), quinn (auditors), olga
    /// (approvers) and ana (both roles) sign in with any password.
    pub fn start(audience: &str, ttl_secs: u64) -> Provider {
        let port = crate::free_port();
        let mut child = Command::new("node")
            .arg(oidc_dir().join("provider.mjs"))
            .arg(port.to_string())
            .arg(audience)
            .arg(ttl_secs.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs tests/oidc/provider.mjs (the test command installs its packages)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the provider's first line");
        assert!(
            line.starts_with("ready "),
            "the provider did not start: {line}"
        );
        Provider {
            issuer: line.trim_start_matches("ready ").trim().to_string(),
            child,
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
