#!/usr/bin/env bash
# make lint: rustfmt, clippy, plpgsql_check over every PL/pgSQL function (what `supabase db lint`
# runs), every SQL-language function parsed, the current upgrade script regenerated and compared,
# and every path the docs name exists.
# Needs the extension installed and the cluster running (make install start).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PGRX_HOME="$ROOT/pgrx-config"
DIR=$(bash scripts/cluster.sh dir)
PORT=${PG_BILLING_PORT:-54329}
PSQL=(psql -h "$DIR/sock" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1)

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --no-deps --quiet -- -D warnings

echo "== plpgsql_check: every PL/pgSQL function of billing and billing_internal"
PGOPTIONS=--client-min-messages=warning "${PSQL[@]}" -d postgres \
  -c "drop database if exists pg_billing_lint with (force)" -c "create database pg_billing_lint"
PGOPTIONS=--client-min-messages=warning "${PSQL[@]}" -d pg_billing_lint -f sql/supabase-compat.sql \
  -c "create extension pg_billing" -c "create extension plpgsql_check"
findings=$("${PSQL[@]}" -d pg_billing_lint -At -F ' | ' -c "
  select p.oid::regprocedure, r.level, r.lineno, r.message
    from pg_proc p join pg_language l on l.oid = p.prolang and l.lanname = 'plpgsql'
   cross join lateral plpgsql_check_function_tb(p.oid,
                        relid => coalesce((select t.tgrelid from pg_trigger t where t.tgfoid = p.oid limit 1), 0),
                        -- transition tables, by the names the function's triggers give them
                        oldtable => (select max(t.tgoldtable) from pg_trigger t where t.tgfoid = p.oid),
                        newtable => (select max(t.tgnewtable) from pg_trigger t where t.tgfoid = p.oid),
                        fatal_errors => false, extra_warnings => true, performance_warnings => false,
                        all_warnings => true) r
   where p.pronamespace in ('billing'::regnamespace, 'billing_internal'::regnamespace)
     and r.level in ('error', 'warning', 'warning extra')
   order by 1, 3")
checked=$("${PSQL[@]}" -d pg_billing_lint -At -c "select count(*) from pg_proc p join pg_language l on l.oid = p.prolang
  where l.lanname = 'plpgsql' and p.pronamespace in ('billing'::regnamespace, 'billing_internal'::regnamespace)")
if [ -n "$findings" ]; then
  echo "$findings"
  exit 1
fi
echo "   $checked functions, no errors or warnings"

# The install script runs with check_function_bodies off, so a SQL-language body is first parsed
# when called: parse every one now, with the validator CREATE FUNCTION would have run.
echo "== every SQL-language function of billing and billing_internal parses and plans"
sql_checked=$("${PSQL[@]}" -d pg_billing_lint -At -c "
  set check_function_bodies = on;
  select count(pg_catalog.fmgr_sql_validator(p.oid)) from pg_proc p join pg_language l on l.oid = p.prolang
   where l.lanname = 'sql' and p.pronamespace in ('billing'::regnamespace, 'billing_internal'::regnamespace)")
echo "   $sql_checked functions"

echo "== the current upgrade script is what scripts/gen-upgrade.py writes"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
upgrade=$(ls sql/pg_billing--*--"$version".sql)
from=$(basename "$upgrade" .sql); from=${from#pg_billing--}; from=${from%%--*}
python3 scripts/gen-upgrade.py "$from" "$version" --check

echo "== every file the docs name exists"
python3 scripts/check-doc-paths.py
