"""The properties Supabase's database linter (supabase/splinter) checks, as tests on pg_billing's own
objects. They read the catalog, so they also fail for any table or function added later."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"

# SECURITY DEFINER functions that `authenticated` may call, each listed in the README with why.
DEFINER_FOR_USERS = {"consume_tokens", "reserve_tokens", "commit_reservation", "release_reservation",
                     "redeem_promo_code", "create_team_account", "add_account_member", "remove_account_member",
                     "member_account_ids", "managed_account_ids", "record_llm_usage", "reserve_llm_usage",
                     "commit_llm_usage", "rolled_up_to"}
# Functions without a SET clause: the hot read get_balance (a SET costs a GUC save/restore per call)
# and _is_live, which the planner inlines only without one. They must qualify every name, operator
# and type themselves, and must not be SECURITY DEFINER (README "Privileges").
UNPINNED = {"billing.get_balance(uuid,uuid)": ("plpgsql", "s"),
            "billing_internal.is_live(timestamp with time zone)": ("sql", "s"),
            "billing_internal.llm_count(jsonb,text)": ("sql", "i")}
# Rust functions without a SET clause: they run no SQL, so no search_path reaches them, and the hot
# path calls them on every consume: the debit that counts a rate limit (src/sql_api/rate.rs, pure
# arithmetic) and the test whether a call needs its checks (src/sql_api/call.rs, which reads the role
# setting). {function: (source, volatility)}
RATE_RS, CALL_RS = "rate.rs", "call.rs"
UNPINNED_RUST = {"billing_internal.rate_counted(bigint[],bigint,integer,timestamp with time zone)": (RATE_RS, "i"),
                 "billing_internal.rate_over(bigint[],bigint,integer)": (RATE_RS, "i"),
                 "billing_internal.rate_refusal(bigint[],bigint,integer)": (RATE_RS, "i"),
                 "billing_internal.rate_windows(bigint[],bigint,integer)": (RATE_RS, "i"),
                 "billing_internal.rate_given_back(bigint[],bigint[],bigint,integer)": (RATE_RS, "i"),
                 "billing_internal.rate_rebuilt(bigint[],bigint[],timestamp with time zone)": (RATE_RS, "i"),
                 "billing_internal.rate_usage(bigint[],timestamp with time zone)": (RATE_RS, "i"),
                 "billing_internal.spend_needs_checks(uuid,bigint,text,jsonb)": (CALL_RS, "s"),
                 "billing_internal.read_needs_checks(uuid,uuid)": (CALL_RS, "s")}
SQL_WORDS = {"select", "coalesce", "case", "when", "then", "else", "end", "from", "where", "and", "or", "any", "array",
             "operator", "is", "null", "not", "as", "exists", "in", "if", "perform", "into", "return", "found",
             "declare", "begin"}


def test_rls_enabled_on_every_table(db):  # splinter 0007/0013
    missing = db.all("select relname from pg_class where relnamespace = 'billing'::regnamespace"
                     " and relkind in ('r', 'p') and not relrowsecurity")
    assert missing == []


def test_every_function_pins_search_path(db):  # splinter 0011, stricter: pg_temp last
    unpinned = db.all(
        "select p.oid::regprocedure::text, p.proconfig from pg_proc p where p.pronamespace in ('billing'::regnamespace, 'billing_internal'::regnamespace)"
        " and not ('search_path=pg_catalog, pg_temp' = any(coalesce(p.proconfig, '{}')))")
    assert {r[0] for r in unpinned} == set(UNPINNED) | set(UNPINNED_RUST)


def test_unpinned_rust_functions_run_no_sql(db):
    for fn, (source_file, volatility_expected) in UNPINNED_RUST.items():
        lang, definer, volatility = db.one(
            "select l.lanname, p.prosecdef, p.provolatile from pg_proc p join pg_language l on l.oid = p.prolang"
            " where p.oid = %s::regprocedure", (fn,))
        # Rust that runs no SQL: nothing a search_path could redirect
        assert (lang, definer, volatility) == ("c", False, volatility_expected), fn
        source = (README.parent / "src" / "sql_api" / source_file).read_text()
        assert not re.search(r"\bSpi|\bspi|SPI_", source), source_file


def test_unpinned_functions_qualify_everything(db):
    for fn, (language, volatility_expected) in UNPINNED.items():
        lang, definer, volatility, src = db.one(
            "select l.lanname, p.prosecdef, p.provolatile, p.prosrc from pg_proc p join pg_language l on l.oid = p.prolang"
            " where p.oid = %s::regprocedure", (fn,))
        assert (lang, definer, volatility) == (language, False, volatility_expected), fn
        calls = re.findall(r"(?<![.\w])([a-z_][a-z0-9_]*)\s*\(", src)
        assert [c for c in calls if c not in SQL_WORDS] == [], (fn, calls)
        bare_operators = re.sub(r"operator\(pg_catalog\.[^)]*\)|:=", "", src)  # := is assignment, not an operator
        assert not re.search(r"[=<>]", bare_operators), fn
        assert re.findall(r"::(\w+)\b(?!\.)", src) == [], "casts must name pg_catalog types"
        declared = re.findall(r"^\s+v_\w+\s+([\w.]+)", src, re.M)
        assert all(t.startswith("pg_catalog.") for t in declared), (fn, declared)
        assert declared or language == "sql", fn


def test_is_live_is_inlined_into_the_queries_that_use_it(db):
    plan = "\n".join(r[0] for r in db.all(
        "explain (verbose, costs off) select id from billing.token_grants g where billing_internal.is_live(g.expires_at)"))
    assert "is_live" not in plan and "now()" in plan, plan


def test_no_security_definer_function_executable_by_anon_or_public(db):  # splinter 0028
    exposed = db.all(
        "select p.oid::regprocedure::text from pg_proc p where p.pronamespace in ('billing'::regnamespace, 'billing_internal'::regnamespace)"
        " and p.prosecdef and (has_function_privilege('anon', p.oid, 'EXECUTE')"
        " or exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a where a.grantee = 0))")
    assert exposed == []


def test_definer_functions_for_users_are_the_documented_ones(db):  # splinter 0029
    callable_ = {r[0] for r in db.all(
        "select p.proname from pg_proc p where p.pronamespace in ('billing'::regnamespace, 'billing_internal'::regnamespace)"
        " and p.prosecdef and has_function_privilege('authenticated', p.oid, 'EXECUTE')")}
    assert callable_ == DEFINER_FOR_USERS
    readme = README.read_text()
    section = readme[readme.index("SECURITY DEFINER functions callable by `authenticated`"):]
    section = section[:section.index("\n\n")]
    for name in DEFINER_FOR_USERS:
        assert f"`{name}`" in section, name


def test_policies_call_auth_functions_only_inside_select(db):  # splinter 0003
    rows = db.all("select tablename, policyname, coalesce(qual, '') || ' ' || coalesce(with_check, '')"
                  " from pg_policies where schemaname = 'billing'")
    assert rows
    functions = r"(?:auth\.(?:uid|jwt|role|email)|billing(?:_internal)?\.(?:auth_uid|jwt_claims|is_billing_admin|" \
                r"member_account_ids|managed_account_ids))\(\)"
    call, wrapped = re.compile(functions), re.compile("SELECT " + functions)
    calls = 0
    for table, policy, expr in rows:
        assert len(call.findall(expr)) == len(wrapped.findall(expr)), (table, policy, expr)
        assert "current_setting" not in expr, (table, policy)
        calls += len(call.findall(expr))
    assert calls >= len(rows) - 2  # every per-account policy calls one (the two catalog ones need none)


def test_no_write_policy_is_always_true(db):  # splinter 0024
    assert db.all("select tablename, policyname from pg_policies where schemaname = 'billing'"
                  " and cmd <> 'SELECT'") == []


def test_no_duplicate_indexes(db):  # splinter 0009
    dupes = db.all(
        "select indrelid::regclass::text, array_agg(indexrelid::regclass::text) from pg_index i"
        " join pg_class c on c.oid = i.indrelid where c.relnamespace = 'billing'::regnamespace"
        " group by indrelid, indkey::text, indclass::text, coalesce(pg_get_expr(indexprs, indrelid), ''),"
        " coalesce(pg_get_expr(indpred, indrelid), '') having count(*) > 1")
    assert dupes == []


def test_foreign_keys_are_indexed(db):  # splinter 0001
    unindexed = db.all(
        "select c.conrelid::regclass::text, c.conname from pg_constraint c"
        " where c.contype = 'f' and c.connamespace = 'billing'::regnamespace and not exists ("
        "  select 1 from pg_index i where i.indrelid = c.conrelid"
        "   and (i.indkey::int2[])[0:array_length(c.conkey, 1) - 1] = c.conkey)")
    assert unindexed == []


def test_policy_columns_are_indexed(db):
    """Every column a per-account policy starts from leads an index (Supabase RLS guidance)."""
    policies = db.all("select p.tablename, substring(p.qual from '^\\(*(\\w+)') from pg_policies p"
                      " where p.schemaname = 'billing' and p.policyname = 'own_rows'")
    assert len(policies) == 13
    for table, column in policies:
        assert db.one("select exists (select 1 from pg_index i join pg_attribute a on a.attrelid = i.indrelid"
                      " and a.attnum = i.indkey[0] where i.indrelid = ('billing.' || %s)::regclass and a.attname = %s)",
                      (table, column))[0], (table, column)


def test_extension_lives_in_its_own_schema(db):  # splinter 0014
    assert db.one("select extnamespace::regnamespace::text, extrelocatable from pg_extension"
                  " where extname = 'pg_billing'") == ("billing", False)


def test_only_ledger_sql_writes_ledger_tables():
    """One home for ledger mutations: sql/stripe.sql and the others translate into ledger calls."""
    root = pathlib.Path(__file__).resolve().parents[2] / "sql"
    write = re.compile(r"\b(?:update|insert\s+into|delete\s+from)\s+billing\.(token_grants|balances|token_usage|token_reservations)\b",
                       re.I)
    offenders = {}
    for f in ["schema.sql", "accounts.sql", "stripe.sql", "verify.sql", "frontend.sql", "privileges.sql"]:
        found = write.findall((root / f).read_text())
        if found:
            offenders[f] = found
    assert offenders == {}
    assert write.search((root / "ledger.sql").read_text())  # the rule is not vacuous
