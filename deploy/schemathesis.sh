#!/usr/bin/env bash
# schemathesis (from PyPI) against the OpenAPI document the broker serves: generated valid
# requests must be accepted, invalid ones refused with a 4xx, no answer may be a 5xx or
# differ from the document, and the stateful phase follows the document's links from
# created webhooks, messages and keys to every route. The broker runs on a throwaway
# embedded cluster, loopback only.
#
#   deploy/schemathesis.sh           a 120-second run (seeded runs: add --seed N)
#   deploy/schemathesis.sh --short   a bounded run (what deploy/test.sh runs)
#
# Key revocation is tested apart, without links: a stateful run would revoke its own key.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_postgres_binaries

budget=(--max-time 120)
if [ "${1:-}" = --short ]; then
    shift
    budget=(--max-examples 25 --seed 1)
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    else
        echo "deploy/schemathesis.sh: needs python3 with venv (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi
venv=target/schemathesis-venv
version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    echo "== installing schemathesis $version"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$version"
fi

cargo build --quiet --bin hookline
data_dir="${TMPDIR:-/tmp}/hookline-schemathesis-$$"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
export HOOKLINE_DATA_DIR="$data_dir" HOOKLINE_BIND="127.0.0.1:$port" RUST_LOG=warn RUST_LIB_BACKTRACE=0
unset DATABASE_URL HOOKLINE_ENCRYPTION_KEY
target/debug/hookline serve &
broker=$!
stop() {
    kill -TERM "$broker" 2>/dev/null && wait "$broker" 2>/dev/null || true
    rm -rf "$data_dir"
}
trap stop EXIT
python3 - "$base" <<'PY'
import sys, time, urllib.request
for _ in range(600):
    try:
        if urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("the broker did not become ready")
PY
key=$(target/debug/hookline admin create-key --project schemathesis | tail -n 1)

run() {
    "$venv/bin/schemathesis" --config-file deploy/schemathesis/schemathesis.toml run "$base/openapi.json" \
        -H "x-api-key: $key" --checks all --workers 1 --request-timeout 30 --max-response-time 25 \
        --generation-database none "${budget[@]}" "$@"
}
echo "== schemathesis: every route, stateful phase following the links"
run --exclude-operation-id delete_api_keys_prefix "$@"
echo "== schemathesis: key revocation"
run --include-operation-id delete_api_keys_prefix --phases examples,coverage,fuzzing "$@"
