#!/usr/bin/env bash
# make bench-ab BASE=<git ref> [HEAD_REF=<git ref>]: this tree's (or HEAD_REF's) consume and
# get_balance against another commit's, on one cluster, runs interleaved, as ratios (head / base).
# Both are release builds; the base is installed
# under another extension name (pg_billing_base, its library pg_billing_base.so), so each runs in a
# database of its own on the same server at the same time of day. Results: bench/results/ab-latest.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BASE=${BASE:?set BASE to a git ref, e.g. make bench-ab BASE=v0.3.0}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PORT=${PG_BILLING_PORT:-54340}
export PGRX_HOME="$ROOT/pgrx-config"
SRC="$ROOT/target/ab/src"
EXT=$("$PG_CONFIG" --sharedir)/extension
LIB=$("$PG_CONFIG" --pkglibdir)

echo "== base: $BASE ($(git rev-parse --short "$BASE")), release build"
rm -rf "$SRC" && mkdir -p "$SRC"
git archive "$BASE" | tar -x -C "$SRC"
# its own target directory: the base's build never invalidates this tree's
(cd "$SRC" && CARGO_TARGET_DIR="$ROOT/target/ab/target" cargo pgrx package --pg-config "$PG_CONFIG" >/dev/null)
PKG="$ROOT/target/ab/target/release/pg_billing-pg15"
install -m 755 "$PKG$LIB/pg_billing.so" "$LIB/pg_billing_base.so"
rm -f "$EXT"/pg_billing_base--*.sql
for f in "$PKG$EXT"/pg_billing--*.sql; do
  install -m 644 "$f" "$EXT/pg_billing_base--${f##*/pg_billing--}"
done
sed "s/module_pathname = 'pg_billing'/module_pathname = 'pg_billing_base'/" "$PKG$EXT/pg_billing.control" \
  > "$EXT/pg_billing_base.control"

if [ -n "${HEAD_REF:-}" ]; then
  echo "== head: $HEAD_REF ($(git rev-parse --short "$HEAD_REF")), release build"
  HSRC="$ROOT/target/ab/head-src"
  rm -rf "$HSRC" && mkdir -p "$HSRC"
  git archive "$HEAD_REF" | tar -x -C "$HSRC"
  (cd "$HSRC" && CARGO_TARGET_DIR="$ROOT/target/ab/target" cargo pgrx package --pg-config "$PG_CONFIG" >/dev/null)
  rm -f "$EXT"/pg_billing--*.sql
  install -m 755 "$PKG$LIB/pg_billing.so" "$LIB/pg_billing.so"
  install -m 644 "$PKG$EXT"/pg_billing--*.sql "$PKG$EXT/pg_billing.control" "$EXT/"
  HEAD_NAME="$HEAD_REF ($(git rev-parse --short "$HEAD_REF"))"
else
  echo "== head: this tree, release build"
  rm -f "$EXT"/pg_billing--*.sql
  cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
  HEAD_NAME="this tree"
fi

PG_BILLING_PORT=$PORT PG_BILLING_CLUSTER_DIR="$ROOT/.cluster-bench" bash scripts/cluster.sh start
SOCK="$ROOT/.cluster-bench/sock"
for side in base head; do
  ext=$([ $side = base ] && echo pg_billing_base || echo pg_billing)
  PGOPTIONS=--client-min-messages=warning psql -h "$SOCK" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 -d postgres \
    -c "drop database if exists pg_billing_ab_$side with (force)" -c "create database pg_billing_ab_$side"
  PGOPTIONS=--client-min-messages=warning psql -h "$SOCK" -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1 \
    -d "pg_billing_ab_$side" -f sql/supabase-compat.sql -c "create extension $ext"
done
"$ROOT/.venv/bin/python" bench/ab.py --host "$SOCK" --port "$PORT" --base "$BASE ($(git rev-parse --short "$BASE"))" \
  --head "$HEAD_NAME"
PG_BILLING_PORT=$PORT PG_BILLING_CLUSTER_DIR="$ROOT/.cluster-bench" bash scripts/cluster.sh stop
