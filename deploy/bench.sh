#!/usr/bin/env bash
# Builds hookline and its benchmark, then runs every scenario against a broker it starts on a
# fresh local PostgreSQL cluster (fsync on), beside pgbench baselines on the same cluster.
# Extra arguments go to hookline-bench (e.g. --secs 5, --scenarios ingest-one,fifo-one,
# --base URL --key KEY for a running broker); --help lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_postgres_binaries
cargo build --release --quiet --workspace
exec ./target/release/hookline-bench "$@"
