#!/usr/bin/env bash
# Installs, when missing, what building and running the gateway needs on
# Debian 12: the PostgreSQL server binaries and psql (the demo's throwaway
# database), libclang (pg_query compiles PostgreSQL's parser and generates
# its bindings with it), pkg-config, python3-venv (the demo's payments
# MCP server) and pgbouncer (the benchmarks' baseline). Idempotent; sourced by demo.sh and
# test.sh, which may add packages of their own in EXTRA_PACKAGES
# (CONSOLE_PACKAGES: what the desktop console builds against).
set -euo pipefail

CONSOLE_PACKAGES="libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev"

packages=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
command -v psql >/dev/null || packages+=(postgresql-client)
command -v runuser >/dev/null || packages+=(util-linux)
for pkg in libclang-dev pkg-config python3-venv pgbouncer ${EXTRA_PACKAGES:-}; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || packages+=("$pkg")
done
if [ "${#packages[@]}" -gt 0 ]; then
  echo "==> installing ${packages[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install Rust from https://rustup.rs, then run this again" >&2
  exit 1
fi

# The console's front end: its npm packages, then its build (ui/dist, which
# the desktop app embeds).
build_ui() {
  # Vite 7 needs Node.js 20.19 or later (Debian 12's own nodejs is 18).
  if ! command -v npm >/dev/null || ! node -e '
    const [major, minor] = process.versions.node.split(".").map(Number);
    process.exit(major > 20 || (major === 20 && minor >= 19) ? 0 : 1);'; then
    echo "the console needs Node.js 20.19 or later with npm (found: $(node --version 2>/dev/null || echo none));" \
      "install it from https://nodejs.org or NodeSource, then run this again" >&2
    exit 1
  fi
  (cd ui && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund; } && npm run build)
}

# The demo's payments MCP server (fixtures/mcp): the official MCP Python SDK
# and psycopg in fixtures/mcp/.venv, where `tollgate demo` looks for them.
payments_mcp_venv() {
  (cd fixtures/mcp && { [ -x .venv/bin/python ] && [ .venv/installed -nt requirements.txt ] || {
    echo "==> the payments MCP server's Python packages (fixtures/mcp/.venv)"
    python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && touch .venv/installed; }; })
}
