# pg_billing — the two commands: `make run` (demo) and `make test` (every test layer).
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PGRX_HOME := $(CURDIR)/pgrx-config
PG_CONFIG := /usr/lib/postgresql/15/bin/pg_config
PORT ?= 54329
export PG_BILLING_PORT := $(PORT)
CLUSTER_DIR = $(shell bash scripts/cluster.sh dir)
PSQL = PGOPTIONS=--client-min-messages=warning psql -h $(CLUSTER_DIR)/sock -p $(PORT) -U postgres -v ON_ERROR_STOP=1 -X -q
DEMO_DB ?= pg_billing_demo

.PHONY: help setup build install start stop run demo web test lint types test-unit test-pg test-integration test-pgtap test-example test-web bench bench-profile bench-ab bench-instructions clean

help:
	@echo "make run    set up, start a local cluster, install pg_billing, run the demo"
	@echo "make test   set up if needed, run every test layer"
	@echo "make web    the billing web app against the demo database (after make run)"
	@echo "make setup | install | start | stop | lint | types | test-web | bench | bench-instructions | clean"

setup:
	@bash scripts/setup.sh

build: setup
	cargo build --lib

# Installs the extension (debug build) into the system PostgreSQL 15. Old pg_billing scripts are
# removed first, so the extension directory holds exactly this checkout's install and upgrade script.
EXTDIR = $(shell $(PG_CONFIG) --sharedir)/extension
define install_debug_build
	rm -f $(EXTDIR)/pg_billing--*.sql
	cargo pgrx install --pg-config $(PG_CONFIG)
endef
install: setup
	$(install_debug_build)

start: setup
	@bash scripts/cluster.sh start

stop:
	@bash scripts/cluster.sh stop

run: install start
	@$(PSQL) -d postgres -c "drop database if exists $(DEMO_DB) with (force)" -c "create database $(DEMO_DB)"
	@$(PSQL) -d $(DEMO_DB) -f sql/supabase-compat.sql
	@$(PSQL) -d $(DEMO_DB) -c "create extension pg_billing"
	@.venv/bin/python scripts/demo.py --host $(CLUSTER_DIR)/sock --port $(PORT) --dbname $(DEMO_DB)
	@echo
	@echo "Connect:  psql -h $(CLUSTER_DIR)/sock -p $(PORT) -U postgres $(DEMO_DB)"
	@echo "Stop:     make stop"

test: lint test-unit test-pg test-integration test-pgtap test-example test-web
	@echo "all test layers passed"

# The billing web app (examples/web) on the demo database, at http://127.0.0.1:8000 (the URL printed
# signs you in as the demo's user). Run `make run` first: it creates the demo database.
web: install start
	cd examples/web && npm run build
	.venv/bin/python scripts/web.py --host $(CLUSTER_DIR)/sock --port $(PORT) --dbname $(DEMO_DB)

# types/database.ts: the TypeScript types of schema billing, by Supabase's own generator
# (`supabase gen types typescript`) over the installed extension. Commit the result: a test fails
# when the public API changes and these were not regenerated.
types: install start
	@$(PSQL) -d postgres -c "drop database if exists pg_billing_types with (force)" -c "create database pg_billing_types"
	@$(PSQL) -d pg_billing_types -f sql/supabase-compat.sql -c "create extension pg_billing"
	@mkdir -p types
	PG_META_DB_URL=postgresql://postgres@127.0.0.1:$(PORT)/pg_billing_types PG_META_GENERATE_TYPES=typescript \
	  PG_META_GENERATE_TYPES_INCLUDED_SCHEMAS=billing node tools/typegen/node_modules/@supabase/postgres-meta/dist/server/server.js \
	  > types/database.ts 2>/dev/null
	@echo "wrote types/database.ts"

# rustfmt, clippy -D warnings, plpgsql_check on every PL/pgSQL function, upgrade script up to date,
# every path the docs name exists.
lint: install start
	PG_BILLING_PORT=$(PORT) bash scripts/lint.sh

test-unit: setup
	cargo test -p pg_billing_core

# In-database #[pg_test]s; cargo pgrx test needs a non-root server owner and a data dir it owns.
test-pg: setup
	@mkdir -p $(CLUSTER_DIR)/pgrx-test-data && chown postgres $(CLUSTER_DIR)/pgrx-test-data
	cargo pgrx test pg15 --runas postgres --pgdata $(CLUSTER_DIR)/pgrx-test-data
	# cargo pgrx test installed a build with the in-database tests: put the plain build back
	$(install_debug_build)

test-integration: install start
	PG_BILLING_HOST=$(CLUSTER_DIR)/sock PG_BILLING_PORT=$(PORT) .venv/bin/pytest -q tests/integration

# The FastAPI example (examples/fastapi) end to end against the cluster.
test-example: install start
	PG_BILLING_HOST=$(CLUSTER_DIR)/sock PG_BILLING_PORT=$(PORT) .venv/bin/pytest -q examples/fastapi/tests

# The web app: type-checked against types/database.ts (tsc, so a renamed function or argument fails),
# built with Vite, and driven in headless Chromium (Debian's) against the backend and the cluster.
# The billing page's screenshot is written to examples/web/test-output/.
test-web: install start
	cd examples/web && npm run build
	PG_BILLING_HOST=$(CLUSTER_DIR)/sock PG_BILLING_PORT=$(PORT) .venv/bin/pytest -q examples/web/tests

# pgTAP, the way `supabase test db` runs it: pgtap in schema extensions, pg_prove over tests/pgtap.
test-pgtap: install start
	@$(PSQL) -d postgres -c "drop database if exists pg_billing_pgtap with (force)" -c "create database pg_billing_pgtap"
	@$(PSQL) -d pg_billing_pgtap -f sql/supabase-compat.sql
	@$(PSQL) -d pg_billing_pgtap -c "create extension if not exists pgtap with schema extensions" \
	  -c "create extension pg_billing" -c "alter database pg_billing_pgtap set search_path = public, extensions"
	pg_prove -h $(CLUSTER_DIR)/sock -p $(PORT) -U postgres -d pg_billing_pgtap --ext .sql -r tests/pgtap

# Benchmarks: release build, a cluster of their own (port 54340, .cluster-bench/), results in
# bench/results/latest.md. Takes about 40 minutes: the release build, the 10M-row load, and 13 minutes
# of consumes with and without rollups at the documented one-minute schedule.
BENCH_PORT ?= 54340
BENCH_DIR = $(CURDIR)/.cluster-bench
bench: setup
	rm -f $(EXTDIR)/pg_billing--*.sql
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	@PG_BILLING_PORT=$(BENCH_PORT) PG_BILLING_CLUSTER_DIR=$(BENCH_DIR) bash scripts/cluster.sh start
	@PGOPTIONS=--client-min-messages=warning psql -h $(BENCH_DIR)/sock -p $(BENCH_PORT) -U postgres -v ON_ERROR_STOP=1 -X -q -d postgres \
	  -c "drop database if exists pg_billing_bench with (force)" -c "create database pg_billing_bench"
	@PGOPTIONS=--client-min-messages=warning psql -h $(BENCH_DIR)/sock -p $(BENCH_PORT) -U postgres -v ON_ERROR_STOP=1 -X -q -d pg_billing_bench \
	  -f sql/supabase-compat.sql -c "create extension pg_billing"
	.venv/bin/python bench/run.py --host $(BENCH_DIR)/sock --port $(BENCH_PORT)
	@PG_BILLING_PORT=$(BENCH_PORT) PG_BILLING_CLUSTER_DIR=$(BENCH_DIR) bash scripts/cluster.sh stop

# Where a consume's server time goes: server CPU per transaction of pg_billing and its baselines, and a
# perf profile, on the database `make bench` left (run it first). Results in bench/results/profile.md.
bench-profile: setup
	rm -f $(EXTDIR)/pg_billing--*.sql
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	@PG_BILLING_PORT=$(BENCH_PORT) PG_BILLING_CLUSTER_DIR=$(BENCH_DIR) bash scripts/cluster.sh start
	.venv/bin/python bench/profile.py --host $(BENCH_DIR)/sock --port $(BENCH_PORT) --datadir $(BENCH_DIR)/data
	@PG_BILLING_PORT=$(BENCH_PORT) PG_BILLING_CLUSTER_DIR=$(BENCH_DIR) bash scripts/cluster.sh stop

# Instructions per call of consume_tokens, get_balance and their baselines (valgrind, a single-user
# backend on a cluster of its own): a count the machine's noise does not move. Results in
# bench/results/instructions.md; a few minutes after the release build.
bench-instructions: setup
	rm -f $(EXTDIR)/pg_billing--*.sql
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	.venv/bin/python bench/instructions.py --dir $(CURDIR)/.cluster-instructions --port 54370

# A/B: this tree (or HEAD_REF=<git ref>) against another commit (BASE=<git ref>), both release builds on one cluster, runs
# interleaved; results in bench/results/ab-latest.md. About 15 minutes (the base's first build).
bench-ab: setup
	BASE=$(BASE) HEAD_REF=$(HEAD_REF) PG_CONFIG=$(PG_CONFIG) PG_BILLING_PORT=$(BENCH_PORT) bash scripts/bench-ab.sh

clean: stop
	@PG_BILLING_PORT=$(BENCH_PORT) PG_BILLING_CLUSTER_DIR=$(BENCH_DIR) bash scripts/cluster.sh stop
	@PG_BILLING_PORT=54350 PG_BILLING_CLUSTER_DIR=$(CURDIR)/.cluster-crash bash scripts/cluster.sh stop
	rm -rf .cluster .cluster-bench .cluster-crash .cluster-instructions target .venv
