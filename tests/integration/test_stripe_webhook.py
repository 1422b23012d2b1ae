"""billing.handle_stripe_webhook: the fixture story in both API shapes, exactly-once delivery,
out-of-order subscription events, rollback on failure, secrets from Vault and the settings table."""
import datetime as dt
import json
import pathlib
import threading
import time
import uuid

import psycopg
import pytest
import stripe

from conftest import Db, create_database, run_threads, sqlstate

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "stripe" / "events"
SHAPES = ["current", "2024-06-20"]
USER = uuid.UUID("5a1b2c3d-0000-4000-8000-00000000000a")
SECRET = "whsec_story_secret"
STORY_START = 1763900000
# The story happened in late 2025; move it so it started a day ago, so period grants are current.
SHIFT = int(time.time()) - 86400 - STORY_START


def shifted(value):
    if isinstance(value, dict):
        return {k: shifted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shifted(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and 1_700_000_000 <= value <= 1_800_000_000:
        return value + SHIFT
    return value


def event(shape, prefix):
    path = next((FIXTURES / shape).glob(f"{prefix}_*.json"))
    return json.dumps(shifted(json.loads(path.read_text())), separators=(",", ":"))


class StoryDb(Db):
    def deliver(self, payload, secret=SECRET, with_secret=True):
        ts = int(time.time())
        sig = stripe.WebhookSignature._compute_signature(f"{ts}.{payload}", secret)
        args = (payload, f"t={ts},v1={sig}") + ((secret,) if with_secret else ())
        fn = "billing.handle_stripe_webhook(%s, %s, %s)" if with_secret else "billing.handle_stripe_webhook(%s, %s)"
        with self.service() as c:
            return c.execute(f"select {fn}", args).fetchone()[0]

    def subscription(self):
        return self.one("select status, cancel_at_period_end, p.code, current_period_end"
                        " from billing.user_subscriptions s left join billing.plans p on p.id = s.plan_id"
                        " where stripe_subscription_id = 'sub_TestProA'")


def fresh_story_db(name, catalog=True):
    create_database(name)
    d = StoryDb(name)
    with d.service() as c:
        c.execute("insert into auth.users (id, email) values (%s, 'story@example.com')", (USER,))
        if catalog:
            c.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency)"
                      " values ('price_Pack1000', 1000, 999, 'usd')")
            c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period, price_amount, currency,"
                      " rollover) values ('pro', 'price_ProMonthly', 100000, 2000, 'usd', false)")
    return d


@pytest.mark.parametrize("shape", SHAPES)
def test_fixture_story(shape):
    d = fresh_story_db(f"pg_billing_story_{shape.replace('-', '_')}")
    bal = lambda: d.balance(USER)  # noqa: E731

    r = d.deliver(event(shape, "01"))
    assert (r["outcome"], r["effect"]["action"], bal()) == ("processed", "granted", 1000)
    assert d.one("select stripe_customer_id from billing.stripe_customers where user_id = %s", (USER,))[0] == "cus_TestUserA"
    r = d.deliver(event(shape, "02"))
    assert (r["outcome"], r["effect"]["action"], bal()) == ("processed", "awaiting_payment", 1000)
    r = d.deliver(event(shape, "03"))
    assert (r["effect"]["action"], bal()) == ("granted", 2000)
    r = d.deliver(event(shape, "04"))
    assert (r["effect"]["action"], bal()) == ("linked_subscription_customer", 2000)
    d.deliver(event(shape, "05"))
    period_1_end = dt.datetime.fromtimestamp(1766492000 + SHIFT, dt.timezone.utc)
    assert d.subscription() == ("active", False, "pro", period_1_end)
    r = d.deliver(event(shape, "06"))
    assert (r["effect"]["action"], bal()) == ("granted", 102000)
    assert d.one("select kind, tokens, expires_at from billing.token_grants where reference = 'in_TestProA1'") == \
        ("subscription", 100000, period_1_end)
    r = d.deliver(event(shape, "07"))
    assert bal() == 202000
    d.deliver(event(shape, "08"))
    assert d.subscription()[:3] == ("active", False, "pro")
    d.deliver(event(shape, "09"))
    assert d.subscription()[:2] == ("active", True)
    d.deliver(event(shape, "10"))
    assert d.subscription()[:2] == ("canceled", True)
    r = d.deliver(event(shape, "11"))  # created before 10, delivered after it
    assert r["outcome"] == "stale"
    assert d.subscription()[0] == "canceled"
    r = d.deliver(event(shape, "12"))  # 500 of 999 cents refunded: floor(1000 * 500 / 999) = 500
    assert r["effect"]["grants"] == [{"grant_id": d.one("select id from billing.token_grants where reference = 'cs_test_PackA'")[0],
                                      "clawed_back": 500, "debt": 0}]
    assert bal() == 201500
    d.deliver(event(shape, "13"))  # fully refunded: the rest of that pack
    assert bal() == 201000
    assert d.one("select remaining, clawed_back from billing.token_grants where reference = 'cs_test_PackA'") == (0, 1000)
    r = d.deliver(event(shape, "17"))
    assert r["outcome"] == "ignored"
    # every delivery is in the inbox exactly once, with its outcome
    statuses = dict(d.all("select stripe_event_id, status from billing.payment_transactions"))
    assert len(statuses) == 14 and statuses["evt_Test011"] == "stale" and statuses["evt_Test017"] == "ignored"
    # a redelivery of anything is a duplicate that changes nothing
    assert d.deliver(event(shape, "06"))["outcome"] == "duplicate"
    assert bal() == 201000
    assert d.ledger_problems() == []


@pytest.mark.parametrize("shape", SHAPES)
def test_refund_of_spent_tokens_becomes_debt_that_blocks_spending(shape):
    d = fresh_story_db(f"pg_billing_debt_{shape.replace('-', '_')}")
    d.deliver(event(shape, "01"))
    d.one("select * from billing.consume_tokens(%s, 800)", (USER,))
    r = d.deliver(event(shape, "12"))  # claw back 500: 200 left to take, 300 already spent
    assert r["effect"]["grants"][0]["clawed_back"] == 200 and r["effect"]["grants"][0]["debt"] == 300
    assert d.one("select spendable, debt from billing.balances where user_id = %s", (USER,)) == (0, 300)
    with pytest.raises(psycopg.Error) as e:
        d.one("select * from billing.consume_tokens(%s, 1)", (USER,))
    assert sqlstate(e) == "PT402" and "debt 300" in e.value.diag.message_detail
    d.grant(USER, 500, kind="admin")  # new tokens pay the debt first
    assert d.one("select spendable, debt from billing.balances where user_id = %s", (USER,)) == (200, 0)
    assert d.ledger_problems() == []


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("close,balance_after,debt", [("15", 0, 300), ("16", 700, 0)])
def test_dispute_freezes_then_claws_back_or_releases(shape, close, balance_after, debt):
    d = fresh_story_db(f"pg_billing_dispute_{close}_{shape.replace('-', '_')}")
    d.deliver(event(shape, "01"))
    d.one("select * from billing.consume_tokens(%s, 300)", (USER,))
    d.deliver(event(shape, "14"))
    assert d.balance(USER) == 0
    assert d.one("select frozen from billing.token_grants where reference = 'cs_test_PackA'")[0] == 700
    d.deliver(event(shape, close))
    assert d.one("select spendable, debt from billing.balances where user_id = %s", (USER,)) == (balance_after, debt)
    assert d.one("select frozen from billing.token_grants where reference = 'cs_test_PackA'")[0] == 0
    assert d.ledger_problems() == []


def test_concurrent_duplicate_deliveries_grant_once():
    d = fresh_story_db("pg_billing_webhook_race")
    payload = event("current", "01")
    outcomes, lock = [], threading.Lock()

    def worker(_):
        r = d.deliver(payload)
        with lock:
            outcomes.append(r["outcome"])

    run_threads(20, worker)
    assert sorted(outcomes) == ["duplicate"] * 19 + ["processed"]
    assert d.balance(USER) == 1000
    assert d.one("select count(*) from billing.token_grants")[0] == 1
    assert d.ledger_problems() == []


def test_out_of_order_subscription_events_keep_the_newest_state():
    d = fresh_story_db("pg_billing_webhook_order")
    d.deliver(event("current", "04"))
    outcomes = [d.deliver(event("current", n))["outcome"] for n in ["10", "05", "08", "11", "09"]]
    assert outcomes == ["processed", "stale", "stale", "stale", "stale"]
    assert d.subscription()[:2] == ("canceled", True)


def test_processing_failure_leaves_nothing_and_retry_succeeds():
    d = fresh_story_db("pg_billing_webhook_retry", catalog=False)
    payload = event("current", "01")
    with pytest.raises(psycopg.Error) as e:
        d.deliver(payload)
    assert sqlstate(e) == "PT422"
    assert d.one("select count(*) from billing.payment_transactions")[0] == 0
    assert d.one("select count(*) from billing.stripe_customers")[0] == 0
    with d.service() as c:
        c.execute("insert into billing.token_packs (stripe_price_id, tokens, currency) values ('price_Pack1000', 1000, 'usd')")
    assert d.deliver(payload)["outcome"] == "processed"
    assert d.balance(USER) == 1000


def test_currency_mismatch_is_refused():
    d = fresh_story_db("pg_billing_webhook_currency", catalog=False)
    with d.service() as c:
        c.execute("insert into billing.token_packs (stripe_price_id, tokens, currency) values ('price_Pack1000', 1000, 'eur')")
    with pytest.raises(psycopg.Error) as e:
        d.deliver(event("current", "01"))
    assert sqlstate(e) == "PT422" and "currency" in e.value.diag.message_primary
    assert d.balance(USER) == 0


def test_tokens_come_from_the_catalog_not_the_event():
    d = fresh_story_db("pg_billing_webhook_catalog")
    body = json.loads(event("current", "01"))
    body["data"]["object"]["metadata"]["tokens"] = "999999999"
    body["data"]["object"]["metadata"]["quantity"] = "2"
    d.deliver(json.dumps(body))
    assert d.balance(USER) == 2000


def test_bad_signature_records_nothing():
    d = fresh_story_db("pg_billing_webhook_badsig")
    payload = event("current", "01")
    for h in ["", "t=1,v1=00", f"t={int(time.time())},v1={'0' * 64}"]:
        with pytest.raises(psycopg.Error) as e:
            d.one("select billing.handle_stripe_webhook(%s, %s, %s)", (payload, h, SECRET))
        assert sqlstate(e) == "PT400"
    with pytest.raises(psycopg.Error) as e:
        d.deliver(payload, secret="whsec_wrong", with_secret=False)
    assert sqlstate(e) == "PT500"  # nothing configured yet
    assert d.one("select count(*) from billing.payment_transactions")[0] == 0


def test_signed_non_event_is_22023():
    d = fresh_story_db("pg_billing_webhook_nonevent")
    for body in ["not json", "[]", '{"id":"evt_1"}']:
        with pytest.raises(psycopg.Error) as e:
            d.deliver(body)
        assert sqlstate(e) == "22023", body


def test_secret_from_vault_and_rotation_in_settings_table():
    d = fresh_story_db("pg_billing_webhook_secrets")
    with d.service() as c:
        c.execute("insert into billing.webhook_secrets (secret) values ('whsec_old'), ('whsec_new')")
    assert d.deliver(event("current", "01"), secret="whsec_old", with_secret=False)["outcome"] == "processed"
    assert d.deliver(event("current", "03"), secret="whsec_new", with_secret=False)["outcome"] == "processed"
    with d.service() as c:
        c.execute("select vault.create_secret('whsec_vault', 'stripe_webhook_secret')")
    # Vault wins over the settings table once it has the secret
    with pytest.raises(psycopg.Error) as e:
        d.deliver(event("current", "05"), secret="whsec_new", with_secret=False)
    assert sqlstate(e) == "PT400"
    assert d.deliver(event("current", "05"), secret="whsec_vault", with_secret=False)["outcome"] == "processed"
