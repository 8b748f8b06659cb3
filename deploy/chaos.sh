#!/usr/bin/env bash
# The fault suite (RELIABILITY.md): kills the broker with SIGKILL and crashes PostgreSQL
# (immediate stop) under steady load, on a throwaway embedded cluster, loopback only; then
# drains the queues and fails unless every acknowledged message was committed exactly once,
# in seq order, and the broker served again by itself after every fault.
#
#   deploy/chaos.sh            20 kills and 2 PostgreSQL crashes, release build (about 2 minutes)
#   deploy/chaos.sh --short    5 kills and 1 crash on the debug build (what deploy/test.sh runs)
#
# Further arguments go to hookline-chaos (--help lists them). Figures: target/chaos.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_postgres_binaries

profile=release
faults=()
if [ "${1:-}" = --short ]; then
    shift
    profile=debug
    faults=(--kills 5 --pg-restarts 1 --interval-ms 800)
fi
if [ "$profile" = release ]; then
    cargo build --release --quiet --bins -p hookline -p hookline-bench
else
    cargo build --quiet --bins -p hookline -p hookline-bench
fi
data_dir="${TMPDIR:-/tmp}/hookline-chaos-$$"
trap 'rm -rf "$data_dir"' EXIT
"target/$profile/hookline-chaos" --data-dir "$data_dir" "${faults[@]}" "$@"
