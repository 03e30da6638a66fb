#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need first
# (idempotently), so it works on a fresh Debian 12 machine with Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

# The OS-keyring credential test needs a session bus and a Secret Service;
# the SIEM test streams the audit log to a real rsyslog over TLS; the
# desktop console (Tauri 2) builds against WebKitGTK.
EXTRA_PACKAGES="dbus-daemon dbus-bin gnome-keyring rsyslog rsyslog-openssl libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev"
source scripts/prerequisites.sh
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "==> console front end"
(cd ui && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; } && npm run build)

echo "==> formatting"
cargo fmt --all -- --check

echo "==> lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
cargo test --workspace --locked
