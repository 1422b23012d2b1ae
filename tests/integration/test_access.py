"""Row-level security and privileges, called the way PostgREST calls (transaction-local role + claims)."""
import uuid

import psycopg
import pytest

from conftest import sqlstate

USER_TABLES = ["stripe_customers", "user_subscriptions", "balances", "token_grants", "token_usage",
               "token_reservations", "payment_transactions"]
ALL_TABLES = USER_TABLES + ["accounts", "account_members", "plans", "token_packs", "webhook_secrets"]


@pytest.fixture(scope="module")
def two_users(db):
    """Users A and B, each with a row in every user table."""
    users = []
    for _ in range(2):
        u = db.user()
        db.grant(u, 100)
        db.one("select * from billing.consume_tokens(%s, 1, 'k')", (u,))
        db.one("select * from billing.reserve_tokens(%s, 1, 'r')", (u,))
        with db.service() as c:
            c.execute("insert into billing.stripe_customers values (%s, %s)", (u, f"cus_{u.hex}"))
            c.execute("insert into billing.user_subscriptions (stripe_subscription_id, account_id, status,"
                      " last_event_created, last_event_id) values (%s, %s, 'active', now(), 'evt_x')",
                      (f"sub_{u.hex}", u))
            c.execute("insert into billing.payment_transactions (stripe_event_id, event_type, event_created,"
                      " status, payload, account_id) values (%s, 't', now(), 'processed', '{}', %s)",
                      (f"evt_{u.hex}", u))
        users.append(u)
    with db.service() as c:
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values"
                  " ('access-plan', 'price_access_plan', 10) on conflict do nothing")
        c.execute("insert into billing.token_packs (stripe_price_id, tokens) values ('price_access_pack', 10)"
                  " on conflict do nothing")
        c.execute("insert into billing.webhook_secrets (secret) values ('whsec_access_test')")
    return users


@pytest.mark.parametrize("table", USER_TABLES)
def test_user_sees_only_own_rows(db, two_users, table):
    a, b = two_users
    with db.as_role("authenticated", sub=a, read_only=True) as c:
        owners = {r[0] for r in c.execute(f"select account_id from billing.{table}").fetchall()}
    assert owners == {a}


@pytest.mark.parametrize("table", USER_TABLES)
def test_admin_claim_sees_every_row(db, two_users, table):
    a, b = two_users
    claims = {"app_metadata": {"billing_admin": True}}
    with db.as_role("authenticated", sub=a, claims=claims, read_only=True) as c:
        owners = {r[0] for r in c.execute(f"select account_id from billing.{table}").fetchall()}
    assert {a, b} <= owners


@pytest.mark.parametrize("table", ALL_TABLES)
@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_write_any_table(db, two_users, table, role):
    a, _ = two_users
    cols = {
        "balances": "(account_id) values (gen_random_uuid())",
        "accounts": "(name) values ('mine')",
        "plans": "(code, stripe_price_id, tokens_per_period) values ('x', 'price_x', 1)",
        "token_packs": "(stripe_price_id, tokens) values ('price_y', 1)",
        "webhook_secrets": "(secret) values ('s')",
    }.get(table, "default values")
    col = {"accounts": "name", "account_members": "role"}.get(table, "account_id" if table in USER_TABLES else "active")
    update = ("update billing.balances set spendable = 1000000 where true" if table == "balances"
              else f"update billing.{table} set {col} = {col} where true")
    for sql in [f"insert into billing.{table} {cols}", update, f"delete from billing.{table} where true"]:
        with pytest.raises(psycopg.Error) as e:
            with db.as_role(role, sub=a) as c:
                c.execute(sql)
        assert sqlstate(e) == "42501", sql


def test_anon_reads_only_the_catalog(db, two_users):
    with db.as_role("anon", read_only=True) as c:
        assert c.execute("select count(*) from billing.plans").fetchone()[0] >= 1
        assert c.execute("select count(*) from billing.token_packs").fetchone()[0] >= 1
    for table in USER_TABLES + ["accounts", "account_members", "webhook_secrets"]:
        with pytest.raises(psycopg.Error) as e:
            with db.as_role("anon", read_only=True) as c:
                c.execute(f"select * from billing.{table}")
        assert sqlstate(e) == "42501", table


def test_webhook_secrets_unreadable_by_users(db, two_users):
    with pytest.raises(psycopg.Error) as e:
        with db.as_role("authenticated", sub=two_users[0], read_only=True) as c:
            c.execute("select * from billing.webhook_secrets")
    assert sqlstate(e) == "42501"
    with db.as_role("service_role", read_only=True) as c:
        assert c.execute("select count(*) from billing.webhook_secrets").fetchone()[0] >= 1


def test_user_spends_and_reads_only_for_itself(db, two_users):
    a, b = two_users
    with db.as_role("authenticated", sub=a) as c:
        before = c.execute("select billing.get_balance(%s)", (a,)).fetchone()[0]
        row = c.execute("select * from billing.consume_tokens(%s, 2)", (a,)).fetchone()
        assert row[2] == before - 2
    for sql, args in [("select billing.get_balance(%s)", (b,)),
                      ("select * from billing.consume_tokens(%s, 1)", (b,)),
                      ("select * from billing.reserve_tokens(%s, 1, 'x')", (b,))]:
        with pytest.raises(psycopg.Error) as e:
            with db.as_role("authenticated", sub=a) as c:
                c.execute(sql, args)
        assert sqlstate(e) == "42501", sql


def test_user_cannot_commit_or_release_another_users_reservation(db, two_users):
    a, b = two_users
    rid_b = db.one("select id from billing.token_reservations where account_id = %s and status = 'held'", (b,))[0]
    for sql in ["select * from billing.commit_reservation(%s, 0)", "select * from billing.release_reservation(%s)"]:
        with pytest.raises(psycopg.Error) as e:
            with db.as_role("authenticated", sub=a) as c:
                c.execute(sql, (rid_b,))
        assert sqlstate(e) == "PT404"
    assert db.one("select status from billing.token_reservations where id = %s", (rid_b,))[0] == "held"


@pytest.mark.parametrize("tokens", [100, 0, -5])
def test_user_cannot_grant_or_mint(db, two_users, tokens):
    a, _ = two_users
    before = db.balance(a)
    with pytest.raises(psycopg.Error) as e:
        with db.as_role("authenticated", sub=a) as c:
            c.execute("select * from billing.grant_purchase(%s, %s, %s)", (a, tokens, f"mint-{uuid.uuid4()}"))
    assert sqlstate(e) == "42501"
    assert db.balance(a) == before


@pytest.mark.parametrize("fn", ["select billing.get_balance(%s)", "select * from billing.consume_tokens(%s, 1)",
                                "select * from billing.grant_purchase(%s, 1, 'anon-ref')",
                                "select * from billing.reserve_tokens(%s, 1, 'anon')"])
def test_anon_can_call_nothing(db, two_users, fn):
    with pytest.raises(psycopg.Error) as e:
        with db.as_role("anon") as c:
            c.execute(fn, (two_users[0],))
    assert sqlstate(e) == "42501"


@pytest.mark.parametrize("fn", ["billing.handle_stripe_webhook('{}', 't=1,v1=00')", "billing.run_maintenance()",
                                "billing.verify_ledger()"])
def test_service_functions_closed_to_users(db, two_users, fn):
    with pytest.raises(psycopg.Error) as e:
        with db.as_role("authenticated", sub=two_users[0]) as c:
            c.execute(f"select * from {fn}")
    assert sqlstate(e) == "42501"


def test_service_role_grants_for_anyone(db, two_users):
    _, b = two_users
    with db.as_role("service_role") as c:
        row = c.execute("select * from billing.grant_purchase(%s, 5, %s)", (b, f"svc-{uuid.uuid4()}")).fetchone()
    assert row[3] is False
    assert db.ledger_problems() == []


def test_authenticated_without_sub_acts_for_nobody(db, two_users):
    with pytest.raises(psycopg.Error) as e:
        with db.as_role("authenticated") as c:
            c.execute("select billing.get_balance(%s)", (two_users[0],))
    assert sqlstate(e) == "42501"
