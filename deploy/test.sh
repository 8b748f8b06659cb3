#!/usr/bin/env bash
# Runs every check and test. Without DATABASE_URL the tests start a throwaway PostgreSQL
# cluster in the temp directory (as the `postgres` user when run as root) and this script
# stops and removes it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
database_url_given || ensure_postgres_binaries

# Each run its own cluster (the tests read HOOKLINE_TEST_PG_DIR), so two runs never meet.
test_cluster="${TMPDIR:-/tmp}/hookline-test-pg-$$"
export HOOKLINE_TEST_PG_DIR="$test_cluster"
stop_test_cluster() {
    if [ -f "$test_cluster/postmaster.pid" ]; then
        local ctl
        ctl="$(pg_bin_dir)/pg_ctl"
        if [ "$(id -u)" = 0 ]; then
            (cd / && runuser -u postgres -- "$ctl" stop -m fast -D "$test_cluster" >/dev/null 2>&1) || true
        else
            "$ctl" stop -m fast -D "$test_cluster" >/dev/null 2>&1 || true
        fi
    fi
    rm -rf "$test_cluster" "$test_cluster.lock"
}
if [ -z "${DATABASE_URL:-}" ]; then
    stop_test_cluster
    trap stop_test_cluster EXIT
fi

# The gates are not optional: a missing rustfmt or clippy is installed (rustup) or fails the run.
require_component() {
    local tool=$1 component=$2
    if ! cargo "$tool" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
        echo "== installing the $component component"
        rustup component add "$component"
    fi
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "deploy/test.sh: cargo $tool is missing; install the $component component of your toolchain" >&2
        exit 1
    fi
}
require_component fmt rustfmt
require_component clippy clippy
# SQL is checked against the committed .sqlx/ data, never a live database: stale data fails
# the build (regenerate it with deploy/sqlx-prepare.sh).
export SQLX_OFFLINE=true

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets "$@"
if [ -z "${DATABASE_URL:-}" ]; then
    # A seconds-long smoke of the benchmark: it starts a broker on a fresh cluster, drives it
    # over HTTP and checks order; the full run is deploy/bench.sh (see BENCHMARKS.md).
    echo "== benchmark smoke"
    smoke_dir="${TMPDIR:-/tmp}/hookline-bench-smoke-$$"
    cargo run --quiet -p hookline-bench -- --secs 1 --scenarios ingest-one,fifo-one,fifo-many,standard --check \
        --port 0 --data-dir "$smoke_dir" --json target/bench-smoke.json
    rm -rf "$smoke_dir"
fi
# The short fault suite: SIGKILL the broker and crash PostgreSQL under load, then account for
# every acknowledged message (RELIABILITY.md; the full run is deploy/chaos.sh).
echo "== fault suite (short)"
bash deploy/chaos.sh --short
# The served OpenAPI document against the broker: no 5xx, no answer the document does not
# describe, valid requests accepted and invalid ones refused (deploy/schemathesis.sh).
echo "== schemathesis (short)"
bash deploy/schemathesis.sh --short
# Offline data that no longer matches the schema (a migration changed what an unchanged
# query sees) compiles; regenerating it against a scratch database tells, where a
# PostgreSQL server is at hand.
admin_url="${ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if command -v psql >/dev/null 2>&1 && psql -q "$admin_url" -c "SELECT 1" >/dev/null 2>&1; then
    echo "== sqlx offline data"
    bash deploy/sqlx-prepare.sh --check
else
    echo "== sqlx offline data: not compared (no PostgreSQL server at ADMIN_DATABASE_URL; see deploy/sqlx-prepare.sh)"
fi
