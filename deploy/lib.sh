# Shared by serve.sh and test.sh: make sure PostgreSQL's server binaries are on this machine,
# installing Debian's package when run as root, or saying exactly what to install.

pg_bin_dir() {
    if [ -n "${HOOKLINE_PG_BIN_DIR:-}" ]; then echo "$HOOKLINE_PG_BIN_DIR"; return; fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; fi
}

ensure_postgres_binaries() {
    if [ -n "$(pg_bin_dir)" ]; then return 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "hookline: PostgreSQL is not installed; installing Debian's postgresql package..." >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
        [ -n "$(pg_bin_dir)" ] && return 0
    fi
    cat >&2 <<'MSG'
hookline: PostgreSQL's server binaries (initdb, pg_ctl) were not found.
Install them, then run this again:
    Debian/Ubuntu:  sudo apt-get install postgresql
    Fedora:         sudo dnf install postgresql-server
    macOS:          brew install postgresql
or set HOOKLINE_PG_BIN_DIR to the directory holding them,
or set DATABASE_URL to use a PostgreSQL server you already run.
MSG
    exit 1
}

# DATABASE_URL from the environment or from .env.
database_url_given() {
    [ -n "${DATABASE_URL:-}" ] || grep -Eq '^[[:space:]]*DATABASE_URL=.+' .env 2>/dev/null
}
