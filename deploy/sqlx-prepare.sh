#!/usr/bin/env bash
# Regenerates .sqlx/, the offline data that checks every sqlx::query! against the schema at
# compile time: migrates a scratch database with migrations/ (psql, each file in one
# transaction as sqlx runs it), then builds with the macros online so each writes its
# query's data. Run it after changing a query or a migration, and commit .sqlx/ with it.
#
#   deploy/sqlx-prepare.sh            regenerate .sqlx/
#   deploy/sqlx-prepare.sh --check    fail if .sqlx/ is stale (nothing is written)
#
# ADMIN_DATABASE_URL: a server where the scratch database `hookline_sqlx` may be created,
# as postgres://user@host:port/database (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
admin="${ADMIN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
base="${admin%%\?*}"
scratch="${base%/*}/hookline_sqlx${admin#"$base"}"
psql -q -v ON_ERROR_STOP=1 "$admin" -c "DROP DATABASE IF EXISTS hookline_sqlx" -c "CREATE DATABASE hookline_sqlx"
trap 'psql -q "$admin" -c "DROP DATABASE IF EXISTS hookline_sqlx" >/dev/null 2>&1 || true' EXIT
for m in migrations/*.sql; do
    if head -n 1 "$m" | grep -q -- '-- no-transaction'; then
        psql -q -v ON_ERROR_STOP=1 "$scratch" -f "$m"
    else
        psql -q -v ON_ERROR_STOP=1 -1 "$scratch" -f "$m"
    fi
done
# The migrator's own table, as sqlx creates it (store::migrate reads it).
psql -q -v ON_ERROR_STOP=1 "$scratch" -c "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY,
    description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)"

# Written to a new directory first, so a failed build leaves .sqlx/ as it was.
out="$(mktemp -d)" && chmod 755 "$out"
# Touching the crate root makes cargo re-expand every macro.
touch src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$out" DATABASE_URL="$scratch" cargo check --quiet -p hookline --lib
if [ "${1:-}" = "--check" ]; then
    if ! diff -r -q .sqlx "$out" >/dev/null; then
        echo "sqlx-prepare: .sqlx/ is stale; run deploy/sqlx-prepare.sh and commit it" >&2
        diff -r .sqlx "$out" | head -40 >&2
        exit 1
    fi
    echo "sqlx-prepare: .sqlx/ is up to date"
else
    rm -rf .sqlx && mv "$out" .sqlx
fi
