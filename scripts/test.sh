#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need first
# (idempotently), so it works on a fresh Debian 12 machine with Rust.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
command -v psql >/dev/null || packages+=(postgresql-client)
command -v runuser >/dev/null || packages+=(util-linux)
# The OS-keyring credential test needs a session bus and a Secret Service.
command -v dbus-run-session >/dev/null || packages+=(dbus-daemon)
command -v dbus-send >/dev/null || packages+=(dbus-bin)
command -v gnome-keyring-daemon >/dev/null || packages+=(gnome-keyring)
# The SIEM test streams the audit log to a real rsyslog over TLS.
command -v rsyslogd >/dev/null || packages+=(rsyslog)
dpkg-query -W -f='${Status}' rsyslog-openssl 2>/dev/null | grep -q "ok installed" || packages+=(rsyslog-openssl)
# The desktop console (Tauri 2) builds against WebKitGTK.
# pg_query compiles PostgreSQL's parser and generates bindings with libclang.
for pkg in libclang-dev libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || packages+=("$pkg")
done
if [ "${#packages[@]}" -gt 0 ]; then
  echo "==> installing ${packages[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

echo "==> console front end"
(cd ui && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; } && npm run build)

echo "==> formatting"
cargo fmt --all -- --check

echo "==> lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
cargo test --workspace --locked
