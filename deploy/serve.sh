#!/usr/bin/env bash
# Starts the broker. Without DATABASE_URL it runs its own local PostgreSQL cluster (installing
# PostgreSQL first if needed). Extra arguments go to `hookline serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
database_url_given || ensure_postgres_binaries
exec cargo run --release --quiet --bin hookline -- serve "$@"
