"""A caller who can run SQL (a login role that may act as `authenticated`) tries to subvert the
SECURITY DEFINER functions by shadowing what their bodies use: temp types and tables, functions and
operators in public, and its search_path. Nothing changes."""
import json
import uuid

import psycopg
import pytest

from conftest import connect


@pytest.fixture(scope="module")
def attacker(db):
    name = f"attacker_{uuid.uuid4().hex[:8]}"
    with db.service() as c:
        c.execute(f"create role {name} login")
        c.execute(f"grant authenticated to {name}")
        c.execute(f"grant create on schema public to {name}")
    yield name
    with db.service() as c:
        c.execute(f"drop owned by {name} cascade")
        c.execute(f"drop role {name}")


SHADOWS = [
    # tables with the names the bodies use (they qualify them all)
    "create table pg_temp.balances (user_id text, spendable bigint)",
    "create table pg_temp.token_grants (id bigint)",
    # functions and operators in public, put first on the search path
    "create function public.now() returns timestamptz language sql as $$ select 'infinity'::timestamptz $$",
    "create function public.current_setting(text, boolean) returns text language sql as $$ select 'service_role' $$",
    "create function public.lt_always(bigint, bigint) returns boolean language sql as $$ select true $$",
    "create operator public.< (leftarg = bigint, rightarg = bigint, function = public.lt_always)",
    "create function public.ge_always(bigint, bigint) returns boolean language sql as $$ select true $$",
    "create operator public.>= (leftarg = bigint, rightarg = bigint, function = public.ge_always)",
    # types the function bodies declare and cast to (last: the lines above use the real ones)
    "create type pg_temp.uuid as enum ('x')",
    "create type pg_temp.jsonb as enum ('{}')",
    "create type pg_temp.timestamptz as enum ('now')",
    "set search_path = public, pg_temp, billing",
]


def test_shadowing_objects_change_nothing(db, attacker):
    me, other = db.user(), db.user()
    db.grant(me, 10)
    db.grant(other, 10)
    with connect(db.name, user=attacker) as c:
        for sql in SHADOWS:
            c.execute(sql)
        with c.transaction():
            c.execute("set local role authenticated")
            c.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": str(me)}),))
            # still only my own balance, and spending more than I have still fails
            assert c.execute("select billing.get_balance(%s)", (str(me),)).fetchone()[0] == 10
            with pytest.raises(psycopg.Error) as e:
                with c.transaction():
                    c.execute("select * from billing.consume_tokens(%s, 11)", (str(me),))
            assert e.value.sqlstate == "PT402"
            with pytest.raises(psycopg.Error) as e:
                with c.transaction():
                    c.execute("select * from billing.consume_tokens(%s, 1)", (str(other),))
            assert e.value.sqlstate == "42501"
            with pytest.raises(psycopg.Error) as e:
                with c.transaction():
                    c.execute("select * from billing.grant_purchase(%s, 1000, 'attack')", (str(me),))
            assert e.value.sqlstate == "42501"
            row = c.execute("select * from billing.consume_tokens(%s, 4)", (str(me),)).fetchone()
            assert row[1:] == (4, 6, False)
    assert db.balance(me) == 6 and db.balance(other) == 10
    assert db.one("select expires_at from billing.token_grants where account_id = %s", (me,))[0] is None
    assert db.ledger_problems() == []


def test_secrets_and_settings_unreadable_by_api_roles(db):
    with db.service() as c:
        c.execute("insert into billing.webhook_secrets (secret) values ('whsec_top_secret')")
        c.execute("select vault.create_secret('whsec_vault_secret', 'attack_probe_secret')")
    for role in ["anon", "authenticated"]:
        for sql in ["select secret from billing.webhook_secrets", "select decrypted_secret from vault.decrypted_secrets",
                    "select * from billing.promo_codes", "select billing_internal.webhook_secrets()"]:
            with pytest.raises(psycopg.Error) as e:
                with db.as_role(role, sub=uuid.uuid4()) as c:
                    c.execute(sql)
            assert e.value.sqlstate == "42501", (role, sql)
