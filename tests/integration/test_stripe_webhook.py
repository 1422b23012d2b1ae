"""billing.handle_stripe_webhook, rule by rule (README "Webhooks"): the fixture story in both API
versions, exactly-once delivery, the amount and catalog checks, subscription periods and plan
changes, refunds and disputes in any order, test mode and Connect, the dead-letter status."""
import datetime as dt
import json
import threading

import psycopg
import pytest

from conftest import run_threads, sqlstate
from stripe_story import CLOVER, LEGACY, SECRET, SHIFT, USER, VERSIONS, event, event_json, fresh_story_db

P1_END = 1763900000 + 30 * 86400


def at(ts):
    return dt.datetime.fromtimestamp(ts + SHIFT, dt.timezone.utc)


def db_name(test, version=""):
    return f"pg_billing_wh_{test}_{version.replace('-', '_').replace('.', '_')}"


@pytest.mark.parametrize("version", VERSIONS)
def test_fixture_story(version):
    d = fresh_story_db(db_name("story", version))
    bal = lambda: d.balance(USER)  # noqa: E731

    r = d.deliver(event(version, "01"))
    assert (r["outcome"], r["effect"]["action"], bal()) == ("processed", "granted", 1000)
    assert d.one("select stripe_customer_id from billing.stripe_customers where account_id = %s", (USER,))[0] == "cus_TestUserA"
    r = d.deliver(event(version, "02"))
    assert (r["outcome"], r["effect"]["action"], bal()) == ("processed", "awaiting_payment", 1000)
    r = d.deliver(event(version, "03"))
    assert (r["effect"]["action"], bal()) == ("granted", 2000)
    r = d.deliver(event(version, "04"))
    assert (r["effect"]["action"], bal()) == ("linked_subscription_customer", 2000)
    d.deliver(event(version, "05"))
    assert d.subscription() == ("active", False, "pro", at(P1_END))
    r = d.deliver(event(version, "06"))
    assert (r["effect"]["action"], r["effect"]["tokens"], bal()) == ("granted", 100000, 102000)
    assert d.period_grants("sub_TestProA") == [(100000, 100000, at(P1_END))]
    r = d.deliver(event(version, "07"))
    assert bal() == 202000
    if version == CLOVER:  # basil and later: the invoice's payment arrives on its own
        assert d.deliver(event(version, "06b"))["effect"]["action"] == "linked"
        assert d.deliver(event(version, "07b"))["effect"]["action"] == "linked"
    d.deliver(event(version, "08"))
    assert d.subscription()[:3] == ("active", False, "pro")
    d.deliver(event(version, "09"))
    assert d.subscription()[:2] == ("active", True)
    d.deliver(event(version, "10"))
    assert d.subscription()[:2] == ("canceled", True)
    r = d.deliver(event(version, "11"))  # created before 10, delivered after it
    assert r["outcome"] == "stale"
    assert d.subscription()[0] == "canceled"
    r = d.deliver(event(version, "12"))  # 500 of 999 cents refunded: floor(1000 * 500 / 999) = 500
    assert r["effect"]["grants"][0]["clawed_back"] == 500 and bal() == 201500
    d.deliver(event(version, "13"))  # fully refunded: the rest of that pack
    assert bal() == 201000
    assert d.grant_row("cs_test_PackA", "remaining, clawed_back") == (0, 1000)
    r = d.deliver(event(version, "17"))
    assert (r["outcome"], r["reason"]) == ("ignored", "event_type_not_used")
    # every delivery is in the inbox exactly once, with its outcome
    statuses = dict(d.all("select stripe_event_id, status from billing.payment_transactions"))
    assert len(statuses) == (16 if version == CLOVER else 14)
    assert statuses["evt_Test011"] == "stale" and statuses["evt_Test017"] == "ignored"
    # a redelivery of anything is a duplicate that changes nothing
    assert d.deliver(event(version, "06"))["outcome"] == "duplicate"
    assert bal() == 201000
    assert d.ledger_problems() == []


# --- subscription periods -------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_plan_changes_in_one_period_never_add_up_past_the_largest_plan(version):
    d = fresh_story_db(db_name("plans", version))
    q1_end = at(1763900000 + 32 * 86400)
    steps = [("18", None), ("19", 30000), ("21", 100000), ("22", 100000), ("23", 100000)]
    for prefix, period_tokens in steps:
        r = d.deliver(event(version, prefix))
        assert r["outcome"] == "processed", (prefix, r)
        if period_tokens is not None:
            assert d.period_grants("sub_TestPlanB") == [(period_tokens, period_tokens, q1_end)], prefix
    # the upgrade topped the period up; the $0 downgrade and the second upgrade added nothing
    assert [r[0] for r in d.all("select purchase_id from billing.grant_purchases order by purchased_at")] == \
        ["in_TestPlanB1", "in_TestPlanB2", "in_TestPlanB4"]
    assert d.balance(USER) == 100000
    assert d.ledger_problems() == []


@pytest.mark.parametrize("version", VERSIONS)
def test_renewal_with_prorations_first_grants_the_plan_line(version):
    d = fresh_story_db(db_name("prorations", version))
    r = d.deliver(event(version, "20"))
    # the first line is the old plan's proration ending at the renewal instant; the plan line is Pro for Q2
    assert (r["effect"]["action"], r["effect"]["plan"], r["effect"]["tokens"]) == ("granted", "pro", 100000)
    assert d.period_grants("sub_TestPlanB") == [(100000, 100000, at(1763900000 + 62 * 86400))]
    assert d.balance(USER) == 100000


@pytest.mark.parametrize("version", VERSIONS)
def test_invoices_paid_with_nothing_grant_nothing_unless_the_plan_says_so(version):
    d = fresh_story_db(db_name("zero", version))
    for prefix in ["24", "25", "26"]:
        r = d.deliver(event(version, prefix))
        assert (r["outcome"], r["effect"]["action"]) == ("processed", "zero_amount"), prefix
    assert d.balance(USER) == 0
    with d.service() as c:
        c.execute("update billing.plans set grant_on_zero_amount = true where code = 'starter'")
        c.execute("delete from billing.payment_transactions")
    for prefix in ["24", "25", "26"]:
        assert d.deliver(event(version, prefix))["effect"]["action"] == "granted", prefix
    assert d.balance(USER) == 3 * 30000
    assert d.ledger_problems() == []


@pytest.mark.parametrize("version", VERSIONS)
def test_one_off_invoice_is_ignored(version):
    d = fresh_story_db(db_name("oneoff", version))
    r = d.deliver(event(version, "35"))
    assert (r["outcome"], r["reason"]) == ("ignored", "not_a_subscription_invoice")
    assert d.status("evt_Test035") == "ignored"
    assert d.balance(USER) == 0


def test_invoice_with_an_unknown_plan_price_fails_and_is_reprocessed_after_the_catalog_fix():
    d = fresh_story_db(db_name("unknown_plan"))
    with d.service() as c:
        c.execute("delete from billing.plans where code = 'pro'")
    r = d.deliver(event(CLOVER, "06"))
    assert r["outcome"] == "failed" and r["error"]["code"] == "PT422"
    assert "price_ProMonthly" in r["error"]["detail"]
    with d.service() as c:
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period, price_amount, currency)"
                  " values ('pro', 'price_ProMonthly', 100000, 2000, 'usd')")
        assert c.execute("select billing.reprocess_failed_events()").fetchone()[0] == 1
    assert d.status("evt_Test006") == "processed"
    assert d.balance(USER) == 100000


# --- Checkout ---------------------------------------------------------------------------------------

def test_checkout_amount_must_match_the_catalog():
    d = fresh_story_db(db_name("amount"))
    r = d.deliver(event(CLOVER, "36"))  # metadata.quantity 10 on a 9.99 session
    assert r["outcome"] == "failed"
    assert r["error"]["code"] == "PT422" and "amount does not match the catalog" in r["error"]["message"]
    assert "999" in r["error"]["detail"] and "9990" in r["error"]["detail"]
    assert d.balance(USER) == 0
    # the failed attempt's effects are undone, the event kept with its error
    assert d.one("select count(*) from billing.stripe_customers")[0] == 0
    row = d.one("select status, attempts, error ->> 'code', payload ->> 'id' from billing.payment_transactions")
    assert row == ("failed", 1, "PT422", "evt_Test036")
    # Stripe's redelivery tries again (and fails again): no duplicate, no grant
    assert d.deliver(event(CLOVER, "36"))["outcome"] == "failed"
    assert d.one("select attempts from billing.payment_transactions")[0] == 2
    assert d.balance(USER) == 0


def test_tokens_come_from_the_catalog_not_the_event():
    d = fresh_story_db(db_name("catalog"))
    body = event_json(CLOVER, "01")
    body["data"]["object"]["metadata"]["tokens"] = "999999999"
    body["data"]["object"]["metadata"]["quantity"] = "2"
    body["data"]["object"]["amount_subtotal"] = body["data"]["object"]["amount_total"] = 1998
    assert d.deliver(body)["effect"]["tokens"] == 2000
    assert d.balance(USER) == 2000


def test_coupon_lowers_the_total_but_the_subtotal_must_match():
    d = fresh_story_db(db_name("coupon"))
    body = event_json(CLOVER, "01")
    body["data"]["object"]["amount_total"] = 0
    body["data"]["object"]["payment_status"] = "no_payment_required"
    assert d.deliver(body)["effect"]["action"] == "granted"
    assert d.balance(USER) == 1000


def test_currency_mismatch_fails():
    d = fresh_story_db(db_name("currency"))
    with d.service() as c:
        c.execute("update billing.token_packs set currency = 'eur'")
    r = d.deliver(event(CLOVER, "01"))
    assert r["outcome"] == "failed" and "currency" in r["error"]["message"]
    assert d.balance(USER) == 0


def test_missing_pack_fails_then_redelivery_applies_it():
    d = fresh_story_db(db_name("retry"), catalog=False)
    payload = event(CLOVER, "01")
    r = d.deliver(payload)
    assert (r["outcome"], r["error"]["code"]) == ("failed", "PT422")
    assert d.one("select count(*) from billing.stripe_customers")[0] == 0
    with d.service() as c:
        c.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency)"
                  " values ('price_Pack1000', 1000, 999, 'usd')")
    r = d.deliver(payload)  # Stripe's retry
    assert (r["outcome"], r["effect"]["action"]) == ("processed", "granted")
    assert d.one("select status, attempts from billing.payment_transactions") == ("processed", 2)
    assert d.balance(USER) == 1000


def test_concurrent_duplicate_deliveries_grant_once():
    d = fresh_story_db(db_name("race"))
    payload = event(CLOVER, "01")
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


def test_event_ids_need_not_start_with_evt():
    d = fresh_story_db(db_name("evtid"))
    r = d.deliver(event(CLOVER, "42"))
    assert (r["event_id"], r["outcome"]) == ("TestEvent042", "processed")
    assert d.balance(USER) == 1000


# --- refunds and disputes ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_refund_and_lost_dispute_before_their_checkout_are_applied_when_it_arrives(version):
    d = fresh_story_db(db_name("early", version))
    r = d.deliver(event(version, "12"))  # refund of 500/999 of pack A, before pack A exists
    assert (r["outcome"], r["effect"]["action"]) == ("processed", "recorded_pending")
    r = d.deliver(event(version, "01"))
    assert r["effect"]["adjusted"]["clawed_back"] == 500
    assert d.balance(USER) == 500
    # a lost dispute before its purchase (pack C: 400 of 999 disputed and lost)
    assert d.deliver(event(version, "29"))["effect"]["action"] == "recorded_pending"
    d.deliver(event(version, "27"))
    assert d.grant_row("cs_test_PackC", "remaining, clawed_back") == (600, 400)
    assert d.balance(USER) == 1100
    assert d.ledger_problems() == []


@pytest.mark.parametrize("version", VERSIONS)
def test_partial_dispute_freezes_and_claws_back_only_its_share(version):
    d = fresh_story_db(db_name("partial", version))
    d.deliver(event(version, "27"))
    d.deliver(event(version, "28"))  # 400 of 999 disputed: floor(1000 * 400 / 999) = 400
    assert d.grant_row("cs_test_PackC", "remaining, frozen") == (600, 400)
    assert d.balance(USER) == 600
    d.deliver(event(version, "29"))  # lost
    assert d.grant_row("cs_test_PackC", "remaining, frozen, clawed_back") == (600, 0, 400)
    assert d.balance(USER) == 600
    assert d.ledger_problems() == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("close,balance_after,debt", [("15", 0, 300), ("16", 700, 0)])
def test_dispute_freezes_then_claws_back_or_releases(version, close, balance_after, debt):
    d = fresh_story_db(db_name(f"dispute_{close}", version))
    d.deliver(event(version, "01"))
    d.one("select * from billing.consume_tokens(%s, 300)", (USER,))
    d.deliver(event(version, "14"))
    assert d.balance(USER) == 0
    assert d.grant_row("cs_test_PackA", "frozen")[0] == 700
    d.deliver(event(version, close))
    assert d.one("select spendable, debt from billing.balances where account_id = %s", (USER,)) == (balance_after, debt)
    assert d.grant_row("cs_test_PackA", "frozen")[0] == 0
    assert d.ledger_problems() == []


def test_dispute_status_never_goes_back():
    d = fresh_story_db(db_name("dispute_order"))
    d.deliver(event(CLOVER, "01"))
    d.deliver(event(CLOVER, "15"))  # closed lost first
    assert d.deliver(event(CLOVER, "14"))["outcome"] == "stale"  # the older 'needs_response' changes nothing
    assert d.grant_row("cs_test_PackA", "remaining, frozen, clawed_back") == (0, 0, 1000)


def test_released_hold_of_a_disputed_grant_stays_frozen():
    d = fresh_story_db(db_name("hold_frozen"))
    d.deliver(event(CLOVER, "01"))
    res = d.one("select reservation_id from billing.reserve_tokens(%s, 600, 'chat-1')", (USER,))[0]
    d.deliver(event(CLOVER, "14"))  # the whole payment disputed: the 400 unspent freeze
    assert d.grant_row("cs_test_PackA", "remaining, frozen") == (0, 400)
    d.one("select * from billing.release_reservation(%s)", (res,))
    assert d.grant_row("cs_test_PackA", "remaining, frozen") == (0, 1000)  # not spendable during the dispute
    assert d.balance(USER) == 0
    with pytest.raises(psycopg.Error) as e:
        d.one("select * from billing.consume_tokens(%s, 1)", (USER,))
    assert sqlstate(e) == "PT402"
    d.deliver(event(CLOVER, "16"))  # won
    assert d.balance(USER) == 1000
    assert d.ledger_problems() == []


def test_committed_hold_of_a_disputed_grant_gives_back_frozen_tokens():
    """A hold committed for less during a dispute: what it gives back stays frozen, as a release's does."""
    d = fresh_story_db(db_name("hold_commit_frozen"))
    d.deliver(event(CLOVER, "01"))
    res = d.one("select reservation_id from billing.reserve_tokens(%s, 600, 'chat-1')", (USER,))[0]
    d.deliver(event(CLOVER, "14"))  # the whole payment disputed: the 400 unspent freeze
    assert d.one("select * from billing.commit_reservation(%s, 100)", (res,))[1:] == (100, 500, 0, False)
    assert d.grant_row("cs_test_PackA", "remaining, frozen") == (0, 900)
    assert d.balance(USER) == 0
    d.deliver(event(CLOVER, "16"))  # won
    assert d.balance(USER) == 900
    assert d.ledger_problems() == []


def test_expired_hold_of_a_disputed_grant_stays_frozen():
    d = fresh_story_db(db_name("hold_expired"))
    d.deliver(event(CLOVER, "01"))
    d.one("select * from billing.reserve_tokens(%s, 600, 'chat-1', interval '1 hour')", (USER,))
    d.deliver(event(CLOVER, "14"))
    with d.service() as c:  # let the hold's TTL pass
        c.execute("update billing.token_reservations set expires_at = now() - interval '1 second'")
        c.execute("update billing.balances set next_event_at = now() - interval '1 second'")
        c.execute("select billing.run_maintenance()")
    assert d.grant_row("cs_test_PackA", "remaining, frozen") == (0, 1000)
    assert d.balance(USER) == 0
    assert d.ledger_problems() == []


@pytest.mark.parametrize("version", VERSIONS)
def test_failed_refund_gives_back_what_it_clawed_back(version):
    d = fresh_story_db(db_name("refund_failed", version))
    d.deliver(event(version, "01"))
    d.deliver(event(version, "12"))  # 500 refunded
    d.deliver(event(version, "13"))  # 999 refunded in all (a second refund re_TestPackA2 of 499)
    assert d.balance(USER) == 0
    r = d.deliver(event(version, "30"))  # that second refund as an object: nothing new
    assert d.balance(USER) == 0
    r = d.deliver(event(version, "31"))  # it failed: its share comes back
    assert (r["effect"]["action"], r["effect"]["status"]) == ("adjusted", "failed")
    assert d.grant_row("cs_test_PackA", "remaining, clawed_back") == (500, 500)
    assert d.balance(USER) == 500
    assert d.ledger_problems() == []


def test_failed_refund_forgives_debt_and_returns_tokens_that_repaid_it():
    d = fresh_story_db(db_name("refund_failed_debt"))
    d.deliver(event(CLOVER, "01"))
    d.one("select * from billing.consume_tokens(%s, 800)", (USER,))
    d.deliver(event(CLOVER, "13"))  # fully refunded: 200 unspent taken, 800 spent become debt
    assert d.money() == (0, 0, 800)
    d.grant(USER, 1000, kind="admin")  # new tokens repay the debt first
    assert d.money() == (200, 0, 0)
    d.deliver(event(CLOVER, "30"))
    d.deliver(event(CLOVER, "31"))  # the 499 refund failed: the claw-back falls to floor(1000 * 500 / 999) = 500
    # 500 of the 800 debt is forgiven; the admin tokens that had repaid it come back
    assert d.money() == (700, 0, 0)
    assert d.ledger_problems() == []


def test_refund_share_uses_the_captured_amount():
    d = fresh_story_db(db_name("captured"))
    d.deliver(event(CLOVER, "01"))
    body = event_json(CLOVER, "12")
    body["data"]["object"].update(amount=1500, amount_captured=999, amount_refunded=333)  # authorized 15.00, captured 9.99
    d.deliver(body)
    assert d.grant_row("cs_test_PackA", "clawed_back")[0] == 333  # floor(1000 * 333 / 999), not / 1500


def test_refund_of_spent_tokens_becomes_debt_that_blocks_spending():
    d = fresh_story_db(db_name("debt"))
    d.deliver(event(CLOVER, "01"))
    d.one("select * from billing.consume_tokens(%s, 800)", (USER,))
    r = d.deliver(event(CLOVER, "12"))  # claw back 500: 200 left to take, 300 already spent
    assert r["effect"]["grants"][0]["clawed_back"] == 200 and r["effect"]["grants"][0]["debt"] == 300
    assert d.money() == (0, 0, 300)
    with pytest.raises(psycopg.Error) as e:
        d.one("select * from billing.consume_tokens(%s, 1)", (USER,))
    assert sqlstate(e) == "PT402" and "debt 300" in e.value.diag.message_detail
    d.grant(USER, 500, kind="admin")  # new tokens pay the debt first
    assert d.money() == (200, 0, 0)
    assert d.ledger_problems() == []


def test_refund_of_an_expired_grant_takes_expired_tokens_not_debt():
    d = fresh_story_db(db_name("expired_refund"))
    # period 1 of sub_TestProA ended an hour ago: its 100,000 tokens expired unused
    old = -(1763900000 + 30 * 86400) + int(dt.datetime.now().timestamp()) - 3600
    body = event_json(CLOVER, "06", shift=old)
    d.deliver(body)
    d.deliver(event_json(CLOVER, "06b", shift=old))
    d.one("select billing.run_maintenance()")
    assert d.grant_row("sub_TestProA@" + str(1763900000 + 30 * 86400 + old), "remaining, expired") == (0, 100000)
    d.deliver(event_json(CLOVER, "39", shift=old))  # half the invoice refunded
    assert d.money() == (0, 0, 0)  # no debt for tokens the customer never used
    assert d.grant_row("sub_TestProA@" + str(1763900000 + 30 * 86400 + old), "expired, clawed_back, debt_incurred") == (50000, 50000, 0)
    assert d.ledger_problems() == []


@pytest.mark.parametrize("order", [["06", "06b", "39"], ["06b", "06", "39"], ["39", "06b", "06"], ["06", "39", "06b"]])
def test_subscription_refund_claws_back_on_basil_in_any_order(order):
    d = fresh_story_db(db_name("sub_refund_" + "_".join(order)))
    for prefix in order:
        assert d.deliver(event(CLOVER, prefix))["outcome"] == "processed", prefix
    assert d.balance(USER) == 50000  # 1,000 of 2,000 refunded: half of the period's 100,000
    assert d.ledger_problems() == []


def test_subscription_refund_on_2024_06_20_needs_no_invoice_payment_event():
    d = fresh_story_db(db_name("sub_refund_legacy"))
    d.deliver(event(LEGACY, "06"))
    d.deliver(event(LEGACY, "39"))
    assert d.balance(USER) == 50000


# --- subscription state -----------------------------------------------------------------------------

def test_out_of_order_subscription_events_keep_the_newest_state():
    d = fresh_story_db(db_name("sub_order"))
    d.deliver(event(CLOVER, "04"))
    outcomes = [d.deliver(event(CLOVER, n))["outcome"] for n in ["10", "05", "08", "11", "09"]]
    assert outcomes == ["processed", "stale", "stale", "stale", "stale"]
    assert d.subscription()[:2] == ("canceled", True)


@pytest.mark.parametrize("order", [["32", "33", "34"], ["32", "34", "33"], ["34", "33", "32"], ["33", "34", "32"]])
def test_same_second_events_never_reactivate_a_canceled_subscription(order):
    d = fresh_story_db(db_name("same_second_" + "".join(order)))
    for prefix in order:
        d.deliver(event(CLOVER, prefix))
    assert d.subscription("sub_TestSameD")[0] == "canceled"
    assert d.one("select last_event_id from billing.user_subscriptions where stripe_subscription_id = 'sub_TestSameD'")[0] \
        == "evt_Test033"


def test_invoice_before_its_customer_is_linked_fails_then_applies_when_the_link_arrives():
    d = fresh_story_db(db_name("autoretry"))
    body = event_json(LEGACY, "06")
    body["data"]["object"]["subscription_details"] = None  # an invoice that names no user (older integrations)
    r = d.deliver(body)
    assert (r["outcome"], r["error"]["code"]) == ("failed", "PT422")
    r = d.deliver(event(LEGACY, "04"))  # the subscription's Checkout links cus_TestUserA to the user
    assert r["effect"]["linked_customer"] == "cus_TestUserA"
    assert d.status("evt_Test006") == "processed"
    assert d.balance(USER) == 100000


# --- what moves nothing -----------------------------------------------------------------------------

def test_test_mode_and_connected_account_events_are_ignored():
    d = fresh_story_db(db_name("modes"))
    r = d.deliver(event(CLOVER, "37"))
    assert (r["outcome"], r["reason"]) == ("ignored", "livemode_mismatch")
    r = d.deliver(event(CLOVER, "38"))
    assert (r["outcome"], r["reason"]) == ("ignored", "connect_account_mismatch")
    assert d.balance(USER) == 0
    with d.service() as c:
        c.execute("update billing.settings set stripe_account = 'acct_TestConnected'")
    body = event_json(CLOVER, "38")
    body["id"] = "evt_Test038_again"
    assert d.deliver(body)["effect"]["action"] == "granted"
    # in live mode (the default), test-mode events move nothing
    with d.service() as c:
        c.execute("delete from billing.settings")
    r = d.deliver(event(CLOVER, "01"))
    assert (r["outcome"], r["reason"]) == ("ignored", "livemode_mismatch")
    assert d.balance(USER) == 1000


@pytest.mark.parametrize("version", VERSIONS)
def test_thin_events_are_recorded_and_ignored(version):
    d = fresh_story_db(db_name("thin", version))
    r = d.deliver(event(version, "40"))
    assert (r["outcome"], r["reason"]) == ("ignored", "thin_event")
    assert d.one("select event_created from billing.payment_transactions")[0] == \
        dt.datetime(2025, 11, 23, 13, 13, 20, tzinfo=dt.timezone.utc)


def test_unknown_shapes_are_ignored_and_non_events_are_22023():
    d = fresh_story_db(db_name("shapes"))
    assert d.deliver('{"id":"whatever-1","type":"x.y","created":"yesterday"}')["reason"] == "unknown_shape"
    for body in ["not json", "[]", '{"id":"evt_1"}', '{"type":"charge.refunded"}']:
        with pytest.raises(psycopg.Error) as e:
            d.deliver(body)
        assert sqlstate(e) == "22023", body
    assert d.one("select count(*) from billing.payment_transactions")[0] == 1


def test_bad_signature_records_nothing():
    d = fresh_story_db(db_name("badsig"))
    payload = event(CLOVER, "01")
    for h in ["", "t=1,v1=00", "t=99999999999,v1=" + "0" * 64]:
        with pytest.raises(psycopg.Error) as e:
            d.one("select billing.handle_stripe_webhook(%s, %s, %s)", (payload, h, SECRET))
        assert sqlstate(e) == "PT400"
    with pytest.raises(psycopg.Error) as e:
        d.deliver(payload, secret="whsec_wrong", with_secret=False)
    assert sqlstate(e) == "PT500"  # nothing configured yet
    assert d.one("select count(*) from billing.payment_transactions")[0] == 0


def test_signature_mismatch_names_whitespace_in_the_stored_secret():
    d = fresh_story_db(db_name("whitespace"))
    with d.service() as c:
        c.execute("insert into billing.webhook_secrets (secret) values (%s)", (SECRET + "\n",))
    with pytest.raises(psycopg.Error) as e:
        d.deliver(event(CLOVER, "01"), with_secret=False)
    assert sqlstate(e) == "PT400"
    assert e.value.diag.message_detail.startswith("signature_mismatch: a configured webhook secret has leading or trailing whitespace")


def test_secret_from_vault_and_rotation_in_settings_table():
    d = fresh_story_db(db_name("secrets"))
    with d.service() as c:
        c.execute("insert into billing.webhook_secrets (secret) values ('whsec_old'), ('whsec_new')")
    assert d.deliver(event(CLOVER, "01"), secret="whsec_old", with_secret=False)["outcome"] == "processed"
    assert d.deliver(event(CLOVER, "03"), secret="whsec_new", with_secret=False)["outcome"] == "processed"
    with d.service() as c:
        c.execute("select vault.create_secret('whsec_vault', 'stripe_webhook_secret')")
    # Vault wins over the settings table once it has the secret
    with pytest.raises(psycopg.Error) as e:
        d.deliver(event(CLOVER, "05"), secret="whsec_new", with_secret=False)
    assert sqlstate(e) == "PT400"
    assert d.deliver(event(CLOVER, "05"), secret="whsec_vault", with_secret=False)["outcome"] == "processed"


def test_payment_history_lists_the_users_stripe_events():
    d = fresh_story_db(db_name("history"))
    d.deliver(event(CLOVER, "01"))
    d.deliver(event(CLOVER, "02"))
    with d.as_role("authenticated", sub=USER) as c:
        rows = c.execute("select event_id, status, action, tokens from billing.get_payment_history()").fetchall()
    assert ("evt_Test001", "processed", "granted", 1000) in rows
    assert ("evt_Test002", "processed", "awaiting_payment", None) in rows


def test_payment_history_links_to_paid_invoices_and_states_amounts():
    d = fresh_story_db(db_name("invoices"))
    for prefix in ("01", "04", "05", "06"):
        d.deliver(event(CLOVER, prefix))
    bad = event_json(CLOVER, "07")  # an invoice whose links are not https are shown without them
    bad["data"]["object"]["hosted_invoice_url"] = "javascript:alert(1)"
    bad["data"]["object"]["invoice_pdf"] = None
    d.deliver(bad)
    with d.as_role("authenticated", sub=USER) as c:
        checkouts = c.execute("select amount, currency, hosted_invoice_url, invoice_pdf from billing.get_payment_history()"
                              " where event_type = 'checkout.session.completed'").fetchall()
        paid = c.execute("select amount, hosted_invoice_url, invoice_pdf from billing.get_payment_history()"
                         " where event_type = 'invoice.paid' order by event_created").fetchall()
    assert (999, "usd", None, None) in checkouts  # the pack; a Checkout Session has no invoice page
    first = event_json(CLOVER, "06")["data"]["object"]
    assert paid[0] == (first["amount_paid"], "https://invoice.stripe.com/i/acct_Test/in_TestProA1",
                       "https://pay.stripe.com/invoice/acct_Test/in_TestProA1/pdf")
    assert paid[1][1:] == (None, None)
