"""The outbox and its automations (README "Outbox"): events written with their cause and only then,
balance alerts once per crossing under concurrency, auto top-up within its rails, consumers that
never receive an event twice from their claims, NOTIFY at commit, and Stripe outcomes as events."""
import json
import time
import uuid

import psycopg
import pytest

from conftest import Db, connect, create_database, run_threads, sqlstate


def events(db, account, event_type=None):
    return db.all("select event_type, payload from billing.outbox where account_id = %s"
                  + (" and event_type = %s" if event_type else "") + " order by id",
                  (account, event_type) if event_type else (account,))


def settings(db, account, **values):
    cols = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    db.one(f"insert into billing.account_settings (account_id, {cols}) values (%s, {marks})"
           f" on conflict (account_id) do update set ({cols}) = row({marks}) returning 1",
           (account, *values.values(), *values.values()))


def consume(c, user, amount, account=None):
    return c.execute("select * from billing.consume_tokens(%s, %s, null, '{}', %s)", (user, amount, account)).fetchone()


def test_forty_concurrent_consumes_crossing_a_threshold_write_one_low_balance_event(db):
    user = db.user()
    db.grant(user, 1000)
    settings(db, user, low_balance_threshold=500)

    def spend(i):
        with connect(db.name) as c:
            consume(c, user, 20)

    run_threads(40, spend)
    assert db.balance(user) == 200
    low = events(db, user, "balance.low")
    assert len(low) == 1
    assert low[0][1]["threshold"] == 500 and low[0][1]["balance"] < 500
    assert low[0][1]["dedupe_key"] == f"balance.low:{user}:1"
    # rising back to the threshold re-arms it; the next crossing writes a second event
    db.grant(user, 400)
    assert len(events(db, user, "balance.low")) == 1
    with db.service() as c:
        consume(c, user, 150)
    assert [e[1]["balance"] for e in events(db, user, "balance.low")][1] == 450
    # reaching zero: balance.depleted, once
    with db.service() as c:
        consume(c, user, 450)
        with pytest.raises(psycopg.Error):
            consume(c, user, 1)
    assert [e[1]["balance"] for e in events(db, user, "balance.depleted")] == [0]
    assert db.ledger_problems() == []


def test_a_rolled_back_transaction_writes_no_event_and_notifies_no_one(db):
    user = db.user()
    db.grant(user, 100)
    settings(db, user, low_balance_threshold=50)
    listener = connect(db.name)
    listener.execute("listen billing_outbox")
    with connect(db.name, autocommit=False) as c:
        consume(c, user, 80)
        c.rollback()
    assert events(db, user) == [] and db.balance(user) == 100
    assert list(listener.notifies(timeout=0.5)) == []
    # and a committed one notifies at commit
    with db.service() as c:
        consume(c, user, 80)
    notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in notes] == ["billing_outbox"]
    assert [e[0] for e in events(db, user)] == ["balance.low"]
    listener.close()


def test_accounts_without_settings_get_no_balance_events(db):
    user = db.user()
    db.grant(user, 10)
    with db.service() as c:
        consume(c, user, 10)
    assert events(db, user) == []
    assert db.one("select alert_below, alert_above from billing.balances where account_id = %s", (user,)) == (None, None)


def emit_many(db, n):
    account = uuid.uuid4()
    with db.service() as c:
        for i in range(n):
            c.execute("select billing_internal.emit(%s, 'purchase.completed', %s, '{}')", (account, f"test:{account}:{i}"))
    return account


def test_four_concurrent_consumers_never_receive_an_event_twice():
    d = Db("pg_billing_outbox_consumers")  # only this test's events
    create_database(d.name)
    account = emit_many(d, 300)
    ids = {r[0] for r in d.all("select id from billing.outbox")}
    received = [[] for _ in range(4)]

    def consumer(i):
        with connect(d.name) as c:
            while True:
                got = [r[0] for r in c.execute("select id from billing.claim_outbox(7, interval '1 minute')").fetchall()]
                if not got:
                    return
                received[i].extend(got)
                c.execute("select billing.ack_outbox(%s)", (got,))

    run_threads(4, consumer)
    got = [e for r in received for e in r]
    assert sorted(got) == sorted(ids)  # every event once, none twice
    assert sum(1 for r in received if r) >= 2  # the consumers shared the work
    assert d.one("select count(*) from billing.outbox where account_id = %s and acked_at is null", (account,))[0] == 0


def test_an_unacknowledged_claim_comes_back_after_its_timeout_and_a_nack_keeps_the_error(db):
    account = emit_many(db, 1)
    event_id = db.one("select id from billing.outbox where account_id = %s", (account,))[0]

    def claim(visibility):
        return [r for r in db.all("select id, attempts, last_error from billing.claim_outbox(1000, %s::interval)",
                                  (visibility,)) if r[0] == event_id]

    assert claim("1 second") == [(event_id, 1, None)]
    assert claim("1 minute") == []  # hidden while claimed
    time.sleep(1.2)
    assert claim("1 minute") == [(event_id, 2, None)]  # the consumer crashed: back after the timeout
    assert db.one("select billing.nack_outbox(%s, 'smtp: 421 try later', interval '0')", (event_id,))[0] is True
    assert claim("1 minute") == [(event_id, 3, "smtp: 421 try later")]
    assert db.one("select billing.ack_outbox(%s)", ([event_id],))[0] == 1
    assert db.one("select billing.ack_outbox(%s)", ([event_id],))[0] == 0
    assert db.one("select billing.nack_outbox(%s, 'late', interval '0')", (event_id,))[0] is False
    time.sleep(0.1)
    assert claim("1 second") == []


def test_only_the_service_consumes_the_outbox(db):
    user = db.user()
    for fn in ["select * from billing.claim_outbox()", "select billing.ack_outbox('{1}')",
               "select billing.nack_outbox(1, 'x')"]:
        with pytest.raises(psycopg.Error) as e:
            with db.as_role("authenticated", sub=user) as c:
                c.execute(fn)
        assert sqlstate(e) == "42501", fn
    with pytest.raises(psycopg.Error) as e:
        with db.as_role("authenticated", sub=user, read_only=True) as c:
            c.execute("select * from billing.outbox")
    assert sqlstate(e) == "42501"


@pytest.fixture(scope="module")
def topup_pack(db):
    price = f"price_topup_{uuid.uuid4().hex[:8]}"
    with db.service() as c:
        c.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency) values (%s, 1000, 500, 'usd')",
                  (price,))
    return price


def test_auto_top_up_respects_cooldown_and_monthly_limit_under_concurrent_consumes(db, topup_pack):
    user = db.user()
    db.grant(user, 10_000)
    settings(db, user, auto_topup_price_id=topup_pack, auto_topup_threshold=5000,
             auto_topup_cooldown="1 hour", auto_topup_monthly_limit=2)

    def spend(i):
        with connect(db.name) as c:
            for _ in range(4):
                try:
                    consume(c, user, 100)
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402", str(e)  # the last calls find the balance spent

    run_threads(30, spend)  # 12,000 asked, 10,000 there: crossing 5,000 once, then more calls below it
    requests = events(db, user, "topup.requested")
    assert len(requests) == 1  # the cooldown holds back the others
    payload = requests[0][1]
    assert (payload["price_id"], payload["quantity"], payload["amount"], payload["currency"], payload["tokens"]) == \
        (topup_pack, 1, 500, "usd", 1000)
    assert payload["metadata"] == {"pg_billing_topup": payload["request_id"], "price_id": topup_pack, "quantity": "1",
                                   "user_id": str(user)}
    # the cooldown passes: the next consume below the threshold asks again; then the month's limit stops it
    for expected in (2, 2):
        db.one("update billing.account_settings set topup_requested_at = now() - interval '2 hours'"
               " where account_id = %s returning 1", (user,))
        db.grant(user, 200)
        with db.service() as c:
            consume(c, user, 100)
        assert len(events(db, user, "topup.requested")) == expected
    assert db.ledger_problems() == []


def topup_intent(user, price, request_id, succeeded=True, pi=None, amount=500):
    pi = pi or f"pi_topup_{uuid.uuid4().hex[:10]}"
    return {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "api_version": "2025-10-29.clover",
            "type": "payment_intent.succeeded" if succeeded else "payment_intent.payment_failed",
            "created": int(time.time()), "livemode": False,
            "data": {"object": {"id": pi, "object": "payment_intent", "amount": amount,
                                "amount_received": amount if succeeded else 0, "currency": "usd",
                                "customer": None, "status": "succeeded" if succeeded else "requires_payment_method",
                                "created": int(time.time()),
                                "last_payment_error": None if succeeded else {"code": "card_declined",
                                                                                "message": "Your card was declined."},
                                "metadata": {"pg_billing_topup": request_id, "price_id": price, "quantity": "1",
                                             "user_id": str(user)}}}}


def test_a_top_up_payment_grants_once_and_three_failures_stop_auto_top_up(topup_pack):
    from stripe_story import fresh_story_db

    d = fresh_story_db("pg_billing_outbox_topup")
    with d.service() as c:
        c.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency) values (%s, 1000, 500, 'usd')",
                  (topup_pack,))
    user = d.user()
    d.grant(user, 100)
    settings(d, user, auto_topup_price_id=topup_pack, auto_topup_threshold=50, auto_topup_cooldown="0 seconds")
    with d.service() as c:
        consume(c, user, 60)
    request = events(d, user, "topup.requested")[0][1]
    success = topup_intent(user, topup_pack, request["request_id"])
    for _ in range(2):  # delivered twice: granted once
        r = d.deliver(success)
    assert r["outcome"] == "duplicate"
    assert d.balance(user) == 1040
    assert [e[1]["purchase_id"] for e in events(d, user, "purchase.completed")] == [success["data"]["object"]["id"]]
    # a refund of the top-up claws its tokens back like any purchase's
    refund = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "charge.refunded", "created": int(time.time()),
              "livemode": False, "data": {"object": {"id": f"ch_{uuid.uuid4().hex[:10]}", "object": "charge",
                                                     "payment_intent": success["data"]["object"]["id"], "amount": 500,
                                                     "amount_captured": 500, "amount_refunded": 500, "currency": "usd"}}}
    assert d.deliver(refund)["outcome"] == "processed"
    assert d.balance(user) == 40
    assert [e[1]["tokens_clawed_back"] for e in events(d, user, "refund.applied")] == [1000]
    # three failed top-up payments in a row stop auto top-up, said once
    for i in range(3):
        with d.service() as c:
            consume(c, user, 1)  # below the threshold, no cooldown: a new request each time
        last = events(d, user, "topup.requested")[-1][1]
        r = d.deliver(topup_intent(user, topup_pack, last["request_id"], succeeded=False))
        assert r["outcome"] == "processed"
    assert len(events(d, user, "payment.failed")) == 3
    disabled = events(d, user, "topup.disabled")
    assert len(disabled) == 1 and disabled[0][1]["failures"] == 3
    n = len(events(d, user, "topup.requested"))
    with d.service() as c:
        consume(c, user, 1)
    assert len(events(d, user, "topup.requested")) == n  # stopped
    # a payment without pg_billing's metadata (a Checkout Session's) is not a top-up
    other = topup_intent(user, topup_pack, "x")
    del other["data"]["object"]["metadata"]["pg_billing_topup"]
    assert d.deliver(other)["reason"] == "not_a_top_up"
    assert d.ledger_problems() == []


def test_stripe_outcomes_become_events_once():
    from stripe_story import CLOVER, USER, event, fresh_story_db

    d = fresh_story_db("pg_billing_outbox_stripe")
    for prefix in ["01", "01", "05", "08", "12", "12"]:
        d.deliver(event(CLOVER, prefix))
    kinds = [e[0] for e in events(d, USER)]
    assert kinds == ["purchase.completed", "subscription.changed", "subscription.changed", "refund.applied"]
    purchase = events(d, USER, "purchase.completed")[0][1]
    assert (purchase["purchase_id"], purchase["tokens"], purchase["amount"], purchase["kind"]) == \
        ("cs_test_PackA", 1000, 999, "checkout_session")
    refund = events(d, USER, "refund.applied")[0][1]
    assert (refund["cause"], refund["tokens_clawed_back"]) == ("refund", 500)
    # a failed delivery writes no event
    bad = json.loads(event(CLOVER, "36"))
    assert d.deliver(bad)["outcome"] == "failed"
    assert len(events(d, USER)) == 4
