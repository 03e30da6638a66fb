#!/usr/bin/env bash
# Runs the benchmarks the results page reports (docs/benchmarks.md), after
# installing what they need (PgBouncer among them), idempotently:
#   - pgbench through the gateway against direct and PgBouncer, every arm
#     interleaved; the cards workload; the 1M-row masked COPY;
#   - approvals latency; audit appends per second and verification rate.
# The table and plot land in target/bench-results (BENCH_OUT). The
# environment variables of tests/benches/pgbench.rs (ROUNDS, SECONDS, MODES,
# CLIENTS, ONLY) pass through. A full run takes about 25 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh

# The throwaway PostgreSQL lives on tmpfs when there is one: it runs with
# fsync off, and on one shared disk its write-back would only slow the
# gateway's own audit fsyncs, which stay on disk (the data directory).
if [ -z "${TOLLGATE_DEVDB_DIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TOLLGATE_DEVDB_DIR=/dev/shm
fi

echo "==> pgbench: direct, PgBouncer, the gateway, the bare relay"
cargo bench --locked -p tollgate-e2e --bench pgbench
if [ "${ONLY:-}" = "" ]; then
  echo "==> approvals"
  cargo bench --locked -p tollgate-e2e --bench approvals
  echo "==> audit log"
  cargo bench --locked -p gateway-core --bench audit
fi
