#!/usr/bin/env bash
# Installs what pg_billing needs on a Debian machine; quick when everything is there already.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo

PACKAGES="postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo postgresql-15-pgtap
          libtap-parser-sourcehandler-pgtap-perl pgbouncer python3-venv postgresql-15-plpgsql-check
          postgresql-15-cron chromium valgrind"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
# Debian starts a default cluster on 5432; pg_billing uses its own, so leave that one alone.

if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.0"; then
  echo "== installing cargo-pgrx 0.18.0 (about 5 minutes)"
  cargo install cargo-pgrx --version 0.18.0 --locked
fi

export PGRX_HOME="$ROOT/pgrx-config"
if [ ! -f "$PGRX_HOME/.initialized-pg15" ]; then
  echo "== cargo pgrx init --pg15 (offline, uses the system pg_config)"
  cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config
  touch "$PGRX_HOME/.initialized-pg15"
fi

# Supabase's type generator (npm, pinned by tools/typegen/package-lock.json), for the tests that check
# what a supabase-js user sees; reinstalled whenever the lockfile changes.
want_npm=$(sha256sum tools/typegen/package-lock.json | cut -d' ' -f1)
if [ ! -d tools/typegen/node_modules ] || [ "$(cat tools/typegen/node_modules/.lock.sha 2>/dev/null)" != "$want_npm" ]; then
  echo "== installing tools/typegen (npm ci)"
  (cd tools/typegen && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want_npm" > tools/typegen/node_modules/.lock.sha
fi

# The web app's dependencies (examples/web/package-lock.json), likewise.
want_web=$(sha256sum examples/web/package-lock.json | cut -d' ' -f1)
if [ ! -d examples/web/node_modules ] || [ "$(cat examples/web/node_modules/.lock.sha 2>/dev/null)" != "$want_web" ]; then
  echo "== installing examples/web (npm ci)"
  (cd examples/web && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want_web" > examples/web/node_modules/.lock.sha
fi

# The virtualenv is rebuilt whenever tests/requirements.txt changes.
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/pytest ] || [ "$(cat .venv/.requirements.sha 2>/dev/null)" != "$want" ]; then
  echo "== installing .venv (tests/requirements.txt)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/requirements.txt
  echo "$want" > .venv/.requirements.sha
fi
