"""The frontend RPC surface through PostgREST's exact per-request SQL: bodies and HTTP statuses."""
import datetime as dt
import threading
import uuid

import pytest

from conftest import connect, run_threads
from postgrest import call


@pytest.fixture
def rpc(db):
    def do(fn, args=None, **kw):
        return call(lambda: connect(db.name, user="authenticator"), fn, args, **kw)
    return do


def test_consume_success_body(db, rpc):
    u = db.user()
    db.grant(u, 100)
    status, body = rpc("consume_tokens", {"p_user_id": str(u), "p_amount": 3, "p_metadata": {"model": "m"}}, sub=u)
    assert status == 200
    assert body == [{"usage_id": body[0]["usage_id"], "tokens_charged": 3, "balance_after": 97, "replayed": False}]


def test_insufficient_is_402_with_details_and_hint(db, rpc):
    u = db.user()
    db.grant(u, 5)
    status, body = rpc("consume_tokens", {"p_user_id": str(u), "p_amount": 6}, sub=u)
    assert status == 402
    assert body["code"] == "PT402" and body["message"] == "insufficient tokens"
    assert body["details"] == "requested 6, available 5" and body["hint"]


def test_forbidden_is_403_and_anon_401(db, rpc):
    a, b = db.user(), db.user()
    db.grant(b, 5)
    assert rpc("consume_tokens", {"p_user_id": str(b), "p_amount": 1}, sub=a)[0] == 403
    assert rpc("get_balance", {"p_user_id": str(b)}, sub=a)[0] == 403
    assert rpc("get_balance", {"p_user_id": str(b)}, role="anon")[0] == 401
    assert rpc("get_billing_summary", role="anon", method="GET")[0] == 401
    assert rpc("grant_purchase", {"p_user_id": str(a), "p_tokens": 5, "p_reference": "x"}, sub=a)[0] == 403
    assert db.balance(b) == 5


def test_invalid_argument_is_400_and_conflict_409(db, rpc):
    u = db.user()
    db.grant(u, 50)
    assert rpc("consume_tokens", {"p_user_id": str(u), "p_amount": 0}, sub=u)[0] == 400
    assert rpc("consume_tokens", {"p_user_id": str(u), "p_amount": 1, "p_idempotency_key": "k"}, sub=u)[0] == 200
    status, body = rpc("consume_tokens", {"p_user_id": str(u), "p_amount": 2, "p_idempotency_key": "k"}, sub=u)
    assert (status, body["code"]) == (409, "PT409")
    assert rpc("get_usage_history", {"p_bucket": "week"}, sub=u, method="GET")[0] == 400


def test_summary_by_get_in_a_read_only_transaction(db, rpc):
    u = db.user()
    db.grant(u, 100)
    db.grant(u, 40, kind="promo", expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3))
    db.one("select * from billing.consume_tokens(%s, 10)", (u,))
    db.one("select * from billing.reserve_tokens(%s, 5, 'r')", (u,))
    status, body = rpc("get_billing_summary", sub=u, method="GET")
    assert status == 200
    assert (body["balance"], body["reserved"], body["debt"]) == (125, 5, 0)
    assert [(b["kind"], b["tokens"]) for b in body["breakdown"]] == [("promo", 25), ("purchase", 100)]
    assert body["subscription"] is None


def test_usage_history_buckets_and_groups(db, rpc):
    u = db.user()
    db.grant(u, 1000)
    for model, n in [("a", 3), ("b", 5), ("a", 7)]:
        db.one("select * from billing.consume_tokens(%s, %s, null, %s)", (u, n, f'{{"model":"{model}"}}'))
    status, rows = rpc("get_usage_history", {"p_bucket": "day", "p_group_by": "model"}, sub=u, method="GET")
    assert status == 200
    assert sorted((r["group_key"], r["tokens"], r["requests"]) for r in rows) == [("a", 10, 2), ("b", 5, 1)]
    status, rows = rpc("get_usage_history", {"p_bucket": "month"}, sub=u, method="GET")
    assert [(r["tokens"], r["requests"]) for r in rows] == [(15, 3)]


def test_grant_and_payment_history_are_own_rows(db, rpc):
    a, b = db.user(), db.user()
    db.grant(a, 10)
    db.grant(b, 20)
    status, rows = rpc("get_grant_history", sub=a, method="GET")
    assert status == 200 and [r["tokens"] for r in rows] == [10]
    assert rpc("get_payment_history", sub=a, method="GET") == (200, [])


def test_volatile_function_over_get_is_refused_405(db, rpc):
    u = db.user()
    db.grant(u, 10)
    status, body = rpc("consume_tokens", {"p_user_id": str(u), "p_amount": 1}, sub=u, method="GET")
    assert (status, body["code"]) == (405, "25006")
    assert db.balance(u) == 10


def test_promo_code_redemption(db, rpc):
    code = f"WELCOME{uuid.uuid4().hex[:6].upper()}"
    with db.service() as c:
        c.execute("insert into billing.promo_codes (code, tokens, max_redemptions, token_lifetime)"
                  " values (%s, 250, 100, interval '30 days')", (code,))
    u = db.user()
    status, rows = rpc("redeem_promo_code", {"p_code": code.lower()}, sub=u)
    assert status == 200 and rows[0]["tokens"] == 250 and rows[0]["balance_after"] == 250
    assert rows[0]["expires_at"] is not None
    assert db.one("select kind from billing.token_grants where account_id = %s", (u,))[0] == "promo"
    assert rpc("redeem_promo_code", {"p_code": code}, sub=u)[0] == 409
    assert rpc("redeem_promo_code", {"p_code": "NO-SUCH-CODE"}, sub=u)[0] == 404
    assert rpc("redeem_promo_code", {"p_code": code}, role="anon")[0] == 401
    assert db.balance(u) == 250
    assert db.one("select redeemed_count from billing.promo_codes where code = %s", (code,))[0] == 1


def test_promo_code_expired_is_410(db, rpc):
    code = f"OLD{uuid.uuid4().hex[:6].upper()}"
    with db.service() as c:
        c.execute("insert into billing.promo_codes (code, tokens, valid_until) values (%s, 5, now() - interval '1 day')",
                  (code,))
    assert rpc("redeem_promo_code", {"p_code": code}, sub=db.user())[0] == 410


def test_promo_global_limit_holds_under_concurrency(db, rpc):
    code = f"LIMITED{uuid.uuid4().hex[:6].upper()}"
    with db.service() as c:
        c.execute("insert into billing.promo_codes (code, tokens, max_redemptions) values (%s, 10, 10)", (code,))
    users = [db.user() for _ in range(30)]
    statuses, lock = [], threading.Lock()

    def worker(u):
        s = rpc("redeem_promo_code", {"p_code": code}, sub=u)[0]
        with lock:
            statuses.append(s)

    run_threads(len(users), lambda i: worker(users[i]))
    assert sorted(statuses) == [200] * 10 + [410] * 20
    assert db.one("select redeemed_count from billing.promo_codes where code = %s", (code,))[0] == 10
    assert db.one("select count(*) from billing.promo_redemptions where code = %s", (code,))[0] == 10
    assert db.ledger_problems() == []


def test_promo_codes_are_not_readable_by_users(db, two_users=None):
    import psycopg
    with pytest.raises(psycopg.Error) as e:
        with db.as_role("authenticated", sub=db.user(), read_only=True) as c:
            c.execute("select * from billing.promo_codes")
    assert e.value.sqlstate == "42501"
