#!/usr/bin/env bash
# The README's first command: installs what the demo needs when missing,
# then starts a throwaway, seeded PostgreSQL with the gateway in front of it.
# Arguments go to `tollgate demo` (for example --listen, --api-listen).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
exec cargo run --locked -p gateway-core -- demo "$@"
