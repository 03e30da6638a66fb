#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need first
# (idempotently), so it works on a fresh Debian 12 machine with Rust and Node.
set -euo pipefail
cd "$(dirname "$0")/.."

# The OS-keyring tests (the gateway's upstream credentials, the console's
# sign-in) need a session bus and a Secret Service;
# the SIEM test streams the audit log to a real rsyslog over TLS; the
# desktop console (Tauri 2) builds against WebKitGTK, and its end-to-end
# test drives the real app under Xvfb through tauri-driver and WebKitWebDriver.
CONSOLE_PACKAGES="$(sed -n 's/^CONSOLE_PACKAGES="\(.*\)"$/\1/p' scripts/prerequisites.sh)"
EXTRA_PACKAGES="dbus-daemon dbus-bin gnome-keyring rsyslog rsyslog-openssl xvfb xauth webkit2gtk-driver dunst $CONSOLE_PACKAGES"
source scripts/prerequisites.sh
installed="$(rustup component list --installed 2>/dev/null || true)"
grep -q '^rustfmt' <<<"$installed" && grep -q '^clippy' <<<"$installed" || rustup component add rustfmt clippy
command -v tauri-driver >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tauri-driver" ] || cargo install tauri-driver --locked --version 2.1.0

echo "==> console front end"
build_ui
(cd ui && npm test)
# The console's sign-in tests run a real OpenID Provider (npm oidc-provider, offline).
(cd tests/oidc && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; })
# The MCP gateway's tests run real peers: npm server-everything, and the
# official Python SDK (client, and the payments fixture server) in a venv.
(cd tests/mcp && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; })
payments_mcp_venv

echo "==> formatting"
cargo fmt --all -- --check

echo "==> lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
cargo test --workspace --locked
