#!/usr/bin/env bash
# Real clients through rlsgate: drivers' own test suites and a golden protocol diff.
#
#   integration/clients/run.sh [runner options]      e.g. --suites psycopg2,pgproto --modes session
#
# Installs what it needs (Debian packages, PyPI, npm, crates.io only), builds rlsgate if
# needed, then runs runner.py, which regenerates integration/clients/RESULTS.md and exits
# non-zero when a test fails through rlsgate without a documented reason in
# integration/clients/expected-failures/<suite>.txt. Works unattended (CI=true, no stdin).
#
# Work and cache directory: $RLSGATE_CLIENTS_WORK (default /var/tmp/rlsgate-clients).
# Runs as root (PostgreSQL, PgBouncer and the asyncpg suite then run as the `postgres` OS
# user) or as an ordinary user with the packages already installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${RLSGATE_CLIENTS_WORK:-/var/tmp/rlsgate-clients}"
cache="$work/cache"
mkdir -p "$cache"
export DEBIAN_FRONTEND=noninteractive

log() { echo "[clients] $*"; }

# --- Debian packages ------------------------------------------------------------------
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
command -v pgbench >/dev/null || need+=(postgresql-contrib)
command -v pgbouncer >/dev/null || need+=(pgbouncer)
command -v pgproto >/dev/null || need+=(pgpool2)
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/lib/pq ] || need+=(golang-github-lib-pq-dev)
# pgx v4 with its dependencies (its stdlib tests also import Masterminds/semver).
[ -d /usr/share/gocode/src/github.com/jackc/pgx/v4 ] || need+=(golang-github-jackc-pgx-v4-dev)
[ -d /usr/share/gocode/src/github.com/Masterminds/semver ] || need+=(golang-github-masterminds-semver-dev)
[ -f /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
command -v javac >/dev/null || need+=(default-jdk-headless)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages (run as root to install them): ${need[*]}" >&2
        exit 1
    fi
    log "apt-get install ${need[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# The pgpool2 and pgbouncer packages start system services; the runner uses its own
# instances on other ports, so stop the packaged ones if they came up.
if [ "$(id -u)" = 0 ]; then
    for svc in pgpool2 pgbouncer; do
        if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
            systemctl stop "$svc" || true
        fi
    done
fi

# --- Python: psycopg2, asyncpg, Django (wheels for the modules, sdists for their tests) -
# The venv is made with Debian's /usr/bin/python3 so that the `postgres` OS user (asyncpg's
# suite runs as it) can execute it; a pyenv under /root is not reachable for that user.
venv="$cache/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import psycopg2, asyncpg, pytest, pytest_timeout, distro' 2>/dev/null; then
    log "creating $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "psycopg2-binary==2.9.13" "asyncpg==0.32.0" "pytest>=8" "pytest-timeout" "distro"
fi
# Django's test suite (suites/django.py runs it from the Django 5.2.19 sdist, which the
# runner downloads): psycopg 3 (which Django prefers), its pool (backends' pool tests),
# Django's own dependencies, and the test requirements of the apps it runs (PyYAML for
# serialization, Pillow for ImageField).
if ! "$venv/bin/python" -c 'import psycopg, psycopg_pool, asgiref, sqlparse, yaml, PIL' 2>/dev/null; then
    log "pip install (Django test requirements)"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "psycopg[binary]==3.2.13" "psycopg-pool==3.2.8" "asgiref==3.9.2" "sqlparse==0.5.5" \
        "PyYAML==6.0.3" "pillow==11.3.0"
fi

# --- npm: node-postgres --------------------------------------------------------------
if [ ! -d "$cache/node/node_modules/pg-copy-streams" ] || ! cmp -s "$here/node/package.json" "$cache/node/package.json"; then
    log "npm install (pg, pg-cursor, pg-copy-streams)"
    mkdir -p "$cache/node"
    cp "$here/node/package.json" "$cache/node/package.json"
    (cd "$cache/node" && npm install --no-audit --no-fund --loglevel=error)
fi

# --- rlsgate --------------------------------------------------------------------------
if [ -z "${RLSGATE_BIN:-}" ]; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release --quiet)
fi

chmod 755 "$work" "$cache"
# Bounded: each suite run has its own timeout inside the runner; this caps the whole.
exec timeout --kill-after=30 "${CLIENTS_TOTAL_TIMEOUT:-3600}" \
    "$venv/bin/python" "$here/runner.py" "$@" </dev/null
