#!/usr/bin/env bash
# The README's first command: installs what the console needs when missing
# (PostgreSQL's server binaries, psql, libclang, WebKitGTK, the front end's
# npm packages), builds the desktop console and opens it in local mode: the
# gateway in front of a throwaway PostgreSQL with fake card data, and demo
# traffic whose bulk exports wait for your approval in the inbox; the payments
# MCP server runs behind the MCP listener (its Python packages in a venv).
# Without a display it says so and runs the command-line demo instead.
# Arguments go to the console (for example --listen, --api-listen).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  source scripts/prerequisites.sh
  payments_mcp_venv || echo "warning: the payments MCP server's packages did not install; the demo runs without it" >&2
  cat >&2 <<'MSG'
No display: the desktop console needs one. Run this from a desktop session
(or, to try it headless, `sudo apt-get install xvfb` and then
`xvfb-run scripts/demo.sh`). Starting the command-line demo instead: the same
gateway and data, approvals with `tollgate approvals`.
MSG
  exec cargo run --locked -p gateway-core -- demo "$@"
fi

# The package list is defined by prerequisites.sh; read it, then install.
EXTRA_PACKAGES="$(sed -n 's/^CONSOLE_PACKAGES="\(.*\)"$/\1/p' scripts/prerequisites.sh)"
source scripts/prerequisites.sh
payments_mcp_venv || echo "warning: the payments MCP server's packages did not install; the demo runs without it" >&2
echo "==> console front end"
build_ui
echo "==> building and opening the console (the first build takes several minutes)"
exec cargo run --locked -p tollgate-console -- --demo "$@"
