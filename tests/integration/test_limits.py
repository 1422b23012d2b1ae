"""Rate limits per plan and LLM prices per model (README "Limits" and "LLM prices"): exact under
concurrency, fixed UTC windows, corrections of reservations, limits that change at once, and costs
in integer arithmetic checked against a reference calculator."""
import datetime as dt
import random
import threading
import time
import uuid

import psycopg
import pytest

from conftest import Db, connect, create_database, run_threads, sqlstate, wait_for_a_lock_wait


def limited_user(db, limits, tokens=10_000):
    """A user on a plan of their own with `limits` [(metric, window_seconds, max_amount)], funded."""
    user = db.user()
    plan = f"lim-{uuid.uuid4().hex[:12]}"
    with db.service() as c:
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values (%s, %s, 1)",
                  (plan, f"price_{plan}"))
        for metric, window, amount in limits:
            c.execute("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
                      " values (%s, %s, %s, %s)", (plan, metric, window, amount))
        c.execute("insert into billing.user_subscriptions (stripe_subscription_id, account_id, plan_id, status,"
                  " last_event_created, last_event_id) select %s, %s, id, 'active', now(), 'evt_x'"
                  " from billing.plans where code = %s", (f"sub_{user.hex}", user, plan))
    if tokens:
        db.grant(user, tokens)
    return user, plan


def away_from_window_end(window_seconds, margin=60):
    """Waits, if needed, so the next `margin` seconds stay inside one fixed window."""
    left = window_seconds - time.time() % window_seconds
    if left < margin:
        time.sleep(left + 0.5)


def concurrent(db, n, call):
    """Runs call(connection) n times at once, each in its own connection; returns the SQLSTATEs (None: ok)."""
    outcomes = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        with connect(db.name) as c:
            barrier.wait()
            try:
                call(c)
                outcomes[i] = "ok"
            except psycopg.Error as e:
                outcomes[i] = e.sqlstate

    run_threads(n, one)
    return outcomes


def test_fifty_concurrent_calls_against_100_tokens_per_hour_accept_exactly_twenty_of_five(db):
    user, _ = limited_user(db, [("tokens", 3600, 100)])
    away_from_window_end(3600)
    outcomes = concurrent(db, 50, lambda c: c.execute("select * from billing.consume_tokens(%s, 5)", (user,)))
    assert sorted(outcomes) == ["PT429"] * 30 + ["ok"] * 20
    assert db.balance(user) == 10_000 - 100
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 5)", (user,))
    assert sqlstate(e) == "PT429"
    detail = e.value.diag.message_detail
    assert detail.startswith("limit tokens per 3600s: used 100 of 100; retry after ")
    retry = int(detail.rsplit(" ", 1)[1].rstrip("s"))
    expected = 3600 - int(time.time()) % 3600
    assert abs(retry - expected) <= 2
    assert db.ledger_problems() == []


def test_request_limits_count_calls_whatever_their_size(db):
    user, _ = limited_user(db, [("requests", 60, 7)])
    away_from_window_end(60, margin=20)
    outcomes = concurrent(db, 30, lambda c: c.execute("select * from billing.consume_tokens(%s, %s)",
                                                      (user, random.randint(1, 50))))
    assert outcomes.count("ok") == 7 and outcomes.count("PT429") == 23
    assert db.one("select count(*) from billing.token_usage where account_id = %s", (user,))[0] == 7


def test_every_limit_of_the_plan_applies_and_a_refusal_names_the_one_that_frees_up_last(db):
    user, _ = limited_user(db, [("requests", 3600, 3), ("tokens", 60, 1000)])
    away_from_window_end(3600)
    with db.service() as c:
        for _ in range(3):
            c.execute("select * from billing.consume_tokens(%s, 10)", (user,))
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.consume_tokens(%s, 10)", (user,))
    assert e.value.diag.message_detail.startswith("limit requests per 3600s: used 3 of 3")
    # a call larger than the limit can never pass: said so, without a retry time
    user, _ = limited_user(db, [("tokens", 3600, 100)])
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 101)", (user,))
    assert sqlstate(e) == "PT429"
    assert e.value.diag.message_detail == "limit tokens per 3600s: used 0 of 100; this call needs 101, more than the limit"


def window_starts(db, window_seconds, times):
    """The window start a call at each of `times` counts in (billing_internal.rate_counted's clock)."""
    return [r[0] for r in db.all(
        "select pg_catalog.to_timestamp((billing_internal.rate_counted("
        "  billing_internal.rate_rebuilt(null, array[1, 1, %s, 100]::bigint[], t), 1, 1, t))[6])"
        " from unnest(%s::timestamptz[]) t", (window_seconds, times))]


def test_window_boundaries_are_exact(db):
    hour = lambda h: dt.datetime(2026, 1, 1, h, tzinfo=dt.timezone.utc)  # noqa: E731
    assert window_starts(db, 3600, ["2026-01-01 11:59:59.999999+00", "2026-01-01 12:00:00+00",
                                    "2026-01-01 12:59:59.999999+00", "2026-01-01 13:00:00+00"]) == \
        [hour(11), hour(12), hour(12), hour(13)]
    assert window_starts(db, 86400, ["2026-03-05 23:59:59+05"]) == \
        [dt.datetime(2026, 3, 5, tzinfo=dt.timezone.utc)]  # windows are in UTC
    # a full window stays full until it ends; the first call of the next window starts from zero
    user, _ = limited_user(db, [("tokens", 3600, 100)])
    away_from_window_end(3600)
    with db.service() as c:
        c.execute("select * from billing.consume_tokens(%s, 100)", (user,))
        with pytest.raises(psycopg.Error):
            c.execute("select * from billing.consume_tokens(%s, 1)", (user,))
        # the window ends: its counter now belongs to the previous hour (element 6: the window start)
        c.execute("update billing.balances set rate_state[6] = rate_state[6] - 3600 where account_id = %s", (user,))
        assert c.execute("select used from billing.rate_limit_usage where account_id = %s", (user,)).fetchone()[0] == 0
        c.execute("select * from billing.consume_tokens(%s, 60)", (user,))
        assert c.execute("select used from billing.rate_limit_usage where account_id = %s", (user,)).fetchone()[0] == 60


def test_a_change_of_limits_or_plan_applies_at_once(db):
    user, plan = limited_user(db, [("tokens", 3600, 100)])
    away_from_window_end(3600)
    with db.service() as c:
        c.execute("select * from billing.consume_tokens(%s, 50)", (user,))
        c.execute("update billing.rate_limits set max_amount = 40 where plan_code = %s", (plan,))
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.consume_tokens(%s, 1)", (user,))
        assert e.value.diag.message_detail.startswith("limit tokens per 3600s: used 50 of 40")
        c.execute("update billing.rate_limits set max_amount = 1000 where plan_code = %s", (plan,))
        c.execute("select * from billing.consume_tokens(%s, 500)", (user,))
        # a plan without limits: unlimited at once
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values (%s, %s, 1)",
                  (plan + "-free", f"price_{plan}-free"))
        c.execute("update billing.user_subscriptions set plan_id = (select id from billing.plans where code = %s)"
                  " where account_id = %s", (plan + "-free", user))
        c.execute("select * from billing.consume_tokens(%s, 5000)", (user,))
        # and a canceled subscription falls back to the limits for accounts without a plan (none here)
        c.execute("update billing.user_subscriptions set status = 'canceled' where account_id = %s", (user,))
        assert c.execute("select billing_internal.account_plan(%s)", (user,)).fetchone()[0] is None


def counters(db, user):
    return dict(db.all("select l.metric, u.used from billing.rate_limit_usage u"
                       " join billing.rate_limits l on l.id = u.limit_id where u.account_id = %s", (user,)))


def test_a_limit_added_to_the_plan_counts_from_the_next_call_and_nothing_counts_twice(db):
    # a limit added to the plan reaches its accounts at once (their counters are rebuilt), the others' counts kept
    user, plan = limited_user(db, [("tokens", 3600, 100)])
    away_from_window_end(3600)
    db.one("select * from billing.consume_tokens(%s, 10)", (user,))
    with db.service() as c:
        c.execute("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
                  " values (%s, 'requests', 3600, 2)", (plan,))
    db.one("select * from billing.consume_tokens(%s, 5)", (user,))
    assert counters(db, user) == {"tokens": 15, "requests": 1}
    db.one("select * from billing.consume_tokens(%s, 5, 'with-a-key')", (user,))
    db.one("select * from billing.consume_tokens(%s, 5, 'with-a-key')", (user,))  # a replay counts nothing
    assert counters(db, user) == {"tokens": 20, "requests": 2}
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 1)", (user,))
    assert sqlstate(e) == "PT429" and e.value.diag.message_detail.startswith("limit requests per 3600s: used 2 of 2")
    assert counters(db, user) == {"tokens": 20, "requests": 2}
    assert db.balance(user) == 10_000 - 20


def test_the_plan_a_consume_counts_against_follows_subscriptions_and_renamed_plans(db):
    user, plan = limited_user(db, [("tokens", 3600, 100)])
    away_from_window_end(3600)
    db.one("select * from billing.consume_tokens(%s, 60)", (user,))
    with db.service() as c:
        c.execute("update billing.plans set code = %s where code = %s", (plan + "-renamed", plan))
        with pytest.raises(psycopg.Error) as e:  # the limit followed the rename, and so did the account
            c.execute("select * from billing.consume_tokens(%s, 50)", (user,))
        assert e.value.diag.message_detail.startswith("limit tokens per 3600s: used 60 of 100")
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values (%s, %s, 1)",
                  (plan + "-free", f"price_{plan}-free"))
        c.execute("update billing.user_subscriptions set plan_id = (select id from billing.plans where code = %s)"
                  " where account_id = %s", (plan + "-free", user))
        c.execute("select * from billing.consume_tokens(%s, 50)", (user,))  # a plan without limits
        c.execute("update billing.user_subscriptions set plan_id = (select id from billing.plans where code = %s)"
                  " where account_id = %s", (plan + "-renamed", user))
        with pytest.raises(psycopg.Error) as e:  # back on the limited plan: its count of this window
            c.execute("select * from billing.consume_tokens(%s, 50)", (user,))
        assert e.value.diag.message_detail.startswith("limit tokens per 3600s: used 60 of 100")
        c.execute("update billing.user_subscriptions set status = 'canceled' where account_id = %s", (user,))
        c.execute("select * from billing.consume_tokens(%s, 50)", (user,))  # no plan, no limits here
    assert db.one("select plan_code from billing.balances where account_id = %s", (user,))[0] is None
    assert db.ledger_problems() == []
    # verify_ledger compares the plan each balance row caches with the subscriptions
    with connect(db.name, autocommit=False) as c:
        c.execute("update billing.balances set plan_code = %s where account_id = %s", (plan + "-renamed", user))
        found = c.execute("select invariant from billing.verify_ledger() where account_id = %s", (user,)).fetchall()
        c.rollback()
    # (its counters are still the plan's it had: they differ from the cached plan's limits too)
    assert sorted(found) == [("rate-limit counters differ from the plan's limits",),
                             ("rate-limit plan differs from the subscription",)]
    # and the counters a debit checks with the plan's limits: a lost or altered counter is found
    for damage in ("rate_state = null", "rate_state[5] = 1000", "rate_state = rate_state[1:6]"):
        with connect(db.name, autocommit=False) as c:
            c.execute("update billing.user_subscriptions set status = 'active' where account_id = %s", (user,))
            assert c.execute("select invariant from billing.verify_ledger() where account_id = %s", (user,)).fetchall() == []
            c.execute(f"update billing.balances set {damage} where account_id = %s", (user,))
            found = c.execute("select invariant from billing.verify_ledger() where account_id = %s", (user,)).fetchall()
            c.rollback()
        assert found == [("rate-limit counters differ from the plan's limits",)], damage


def one_while_another_is_open(db, first, second):
    """Runs `first` (sql, params) in a transaction left open, then `second` (sql, params, a fragment of
    its text) on another connection, which must wait for a lock; commits the first, then the second."""
    with connect(db.name, autocommit=False) as c:
        c.execute(*first)
        outcome = []

        def run():
            try:
                with connect(db.name, autocommit=False) as c2:
                    c2.execute(second[0], second[1])
                    c2.commit()
                outcome.append("committed")
            except psycopg.Error as e:
                outcome.append(e)

        t = threading.Thread(target=run)
        t.start()
        wait_for_a_lock_wait(db, second[2])
        c.commit()
        t.join()
    assert outcome == ["committed"]


def subscription_race(db, tokens):
    """Two transactions change one account's subscriptions at once: the first cancels its 'pro'
    subscription, the second starts a 'starter' one while the first has not committed. Each one's
    trigger reads the account's plan; the second, which waits for the first, must read it after the
    first committed (a read from before, with the cancellation unseen, left 'pro' behind). Returns
    (balances.plan_code, the plan the subscriptions say, verify_ledger's findings)."""
    user = db.user()
    plans = {name: f"{name}-{uuid.uuid4().hex[:12]}" for name in ("pro", "starter")}
    with db.service() as c:
        for code in plans.values():
            c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values (%s, %s, 1)",
                      (code, f"price_{code}"))
        c.execute("insert into billing.user_subscriptions (stripe_subscription_id, account_id, plan_id, status,"
                  " current_period_end, last_event_created, last_event_id)"
                  " select %s, %s, id, 'active', now() + interval '30 days', now(), 'evt_a' from billing.plans"
                  " where code = %s", (f"sub_pro_{user.hex}", user, plans["pro"]))
    if tokens:
        db.grant(user, tokens)
    one_while_another_is_open(
        db, ("update billing.user_subscriptions set status = 'canceled' where stripe_subscription_id = %s",
             (f"sub_pro_{user.hex}",)),
        ("insert into billing.user_subscriptions (stripe_subscription_id, account_id, plan_id, status,"
         " current_period_end, last_event_created, last_event_id)"
         " select %s, %s, id, 'active', now() + interval '10 days', now(), 'evt_b'"
         " from billing.plans where code = %s", (f"sub_starter_{user.hex}", user, plans["starter"]), "evt_b"))
    cached = db.one("select plan_code from billing.balances where account_id = %s", (user,))[0]
    return cached, db.one("select billing_internal.account_plan(%s)", (user,))[0], \
        db.all("select invariant from billing.verify_ledger() where account_id = %s", (user,)), plans


@pytest.mark.parametrize("tokens", [100, 0], ids=["balance row", "no balance row yet"])
def test_concurrent_subscription_changes_leave_the_plan_the_subscriptions_say(db, tokens):
    cached, current, problems, plans = subscription_race(db, tokens)
    assert current == plans["starter"]
    assert cached == plans["starter"]
    assert problems == []


@pytest.mark.parametrize("first", ["limit change", "subscription"])
def test_a_change_of_limits_and_a_subscription_written_at_once_leave_the_plans_limits(db, first):
    """A limit added to a plan while an account moves onto the plan, in either order: the account's
    counters hold the plan's limits after both commit (verify_ledger compares them)."""
    user = db.user()
    db.grant(user, 100)
    plan = f"race-{uuid.uuid4().hex[:12]}"
    with db.service() as c:
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values (%s, %s, 1)",
                  (plan, f"price_{plan}"))
        c.execute("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
                  " values (%s, 'requests', 3600, 1000)", (plan,))
    limit = ("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
             " values (%s, 'tokens', 3600, 777)", (plan,), "777)")
    subscription = ("insert into billing.user_subscriptions (stripe_subscription_id, account_id, plan_id, status,"
                    " last_event_created, last_event_id) select %s, %s, id, 'active', now(), 'evt_race'"
                    " from billing.plans where code = %s", (f"sub_{user.hex}", user, plan), "evt_race")
    a, b = (limit, subscription) if first == "limit change" else (subscription, limit)
    one_while_another_is_open(db, a[:2], b)
    assert db.one("select plan_code from billing.balances where account_id = %s", (user,))[0] == plan
    assert sorted(counters(db, user)) == ["requests", "tokens"]
    assert db.all("select invariant from billing.verify_ledger() where account_id = %s", (user,)) == []


def test_two_changes_of_one_plans_limits_at_once_both_reach_its_accounts(db):
    user, plan = limited_user(db, [("requests", 3600, 1000)])
    one_while_another_is_open(
        db, ("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
             " values (%s, 'tokens', 3600, 777)", (plan,)),
        ("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
         " values (%s, 'tokens', 60, 555)", (plan,), "555)"))
    assert db.one("select pg_catalog.array_length(rate_state, 1) / 7 from billing.balances where account_id = %s",
                  (user,))[0] == 3
    assert db.all("select invariant from billing.verify_ledger() where account_id = %s", (user,)) == []


def test_a_subscription_written_before_the_first_grant_limits_the_account(db):
    user, _ = limited_user(db, [("requests", 3600, 1)], tokens=0)  # no balance row until now
    away_from_window_end(3600)
    db.grant(user, 100)
    db.one("select * from billing.consume_tokens(%s, 1)", (user,))
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 1)", (user,))
    assert sqlstate(e) == "PT429"


def test_reservations_count_when_made_and_are_corrected_at_commit_release_and_expiry(db):
    user, _ = limited_user(db, [("tokens", 3600, 100), ("requests", 3600, 5)])
    away_from_window_end(3600)
    used = lambda: dict(db.all("select l.metric, u.used from billing.rate_limit_usage u"  # noqa: E731
                               " join billing.rate_limits l on l.id = u.limit_id where u.account_id = %s", (user,)))
    with db.service() as c:
        a = c.execute("select reservation_id from billing.reserve_tokens(%s, 60, 'a')", (user,)).fetchone()[0]
        assert used() == {"tokens": 60, "requests": 1}
        # a retry of the same reserve returns the same hold and counts nothing more
        assert c.execute("select reservation_id, replayed from billing.reserve_tokens(%s, 60, 'a')",
                         (user,)).fetchone() == (a, True)
        assert used() == {"tokens": 60, "requests": 1}
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.reserve_tokens(%s, 50, 'b')", (user,))
        assert sqlstate(e) == "PT429"
        c.execute("select * from billing.commit_reservation(%s, 20)", (a,))
        assert used() == {"tokens": 20, "requests": 1}  # the call was made; 40 tokens came back
        b = c.execute("select reservation_id from billing.reserve_tokens(%s, 50, 'b')", (user,)).fetchone()[0]
        c.execute("select * from billing.release_reservation(%s)", (b,))
        assert used() == {"tokens": 20, "requests": 1}  # a released hold counts nothing
        c.execute("select * from billing.reserve_tokens(%s, 30, 'c', interval '1 second')", (user,))
        assert used() == {"tokens": 50, "requests": 2}
    time.sleep(1.2)
    with db.service() as c:
        c.execute("select billing.run_maintenance()")
    assert used() == {"tokens": 20, "requests": 1}  # the expired hold gave back what it counted
    assert db.ledger_problems() == []


def test_limits_for_accounts_without_a_plan_and_for_a_teams_plan():
    """In a database of its own: a NULL-plan limit applies to every account without an active plan."""
    d = Db("pg_billing_limits_no_plan")
    create_database(d.name)
    free, paying = d.user(), d.user()
    with d.service() as c:
        c.execute("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
                  " values (null, 'requests', 3600, 2)")
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values ('pro', 'price_pro', 1)")
        c.execute("insert into billing.user_subscriptions (stripe_subscription_id, account_id, plan_id, status,"
                  " last_event_created, last_event_id) select 'sub_paying', %s, id, 'trialing', now(), 'evt'"
                  " from billing.plans where code = 'pro'", (paying,))
    away_from_window_end(3600)
    for u in (free, paying):
        d.grant(u, 100)
    with d.service() as c:
        for _ in range(2):
            c.execute("select * from billing.consume_tokens(%s, 1)", (free,))
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.consume_tokens(%s, 1)", (free,))
        assert sqlstate(e) == "PT429"
        for _ in range(5):
            c.execute("select * from billing.consume_tokens(%s, 1)", (paying,))  # pro has no limits
        # a team account without a plan is limited as an account; its members share the count
        team = c.execute("select billing.create_team_account('t', %s)", (paying,)).fetchone()[0]
        c.execute("select billing.add_account_member(%s, %s)", (team, free))
        c.execute("select * from billing.grant_purchase(null, 100, 'team-fund', p_account_id => %s)", (team,))
        c.execute("select * from billing.consume_tokens(%s, 1, null, '{}', %s)", (paying, team))
        c.execute("select * from billing.consume_tokens(%s, 1, null, '{}', %s)", (free, team))
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.consume_tokens(%s, 1, null, '{}', %s)", (paying, team))
        assert sqlstate(e) == "PT429"
        # the limit removed: every account without a plan is unlimited at once; added again (a new
        # limit): counted from zero, and the third call refused again
        c.execute("delete from billing.rate_limits where plan_code is null")
        for _ in range(3):
            c.execute("select * from billing.consume_tokens(%s, 1)", (free,))
        c.execute("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
                  " values (null, 'requests', 3600, 2)")
        for _ in range(2):
            c.execute("select * from billing.consume_tokens(%s, 1)", (free,))
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.consume_tokens(%s, 1)", (free,))
        assert sqlstate(e) == "PT429"
    # a user reads the use of their own accounts' limits (the view has the balance rows' policies)
    with d.as_role("authenticated", sub=free, read_only=True) as c:
        seen = c.execute("select account_id, used from billing.rate_limit_usage").fetchall()
    assert sorted(seen) == sorted([(free, 2), (team, 0)])  # the team has not called since the limit came back
    with d.as_role("authenticated", sub=paying, read_only=True) as c:
        assert c.execute("select count(*) from billing.rate_limit_usage where account_id = %s", (free,)).fetchone()[0] == 0
    with d.as_role("anon", read_only=True) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.rate_limit_usage")
        assert sqlstate(e) == "42501"
    assert d.ledger_problems() == []


# --- prices ---------------------------------------------------------------------------------------

def reference_cost(p_in, p_out, p_cached, n_in, n_out, n_cached):
    """Python's integers are exact at any size: the cost by the README's formula."""
    micro = (n_in - n_cached) * p_in + n_cached * p_cached + n_out * p_out
    return -(-micro // 1_000_000)


@pytest.fixture(scope="module")
def priced(db):
    model = f"model-{uuid.uuid4().hex[:8]}"
    with db.service() as c:
        c.execute("insert into billing.model_prices (model, input_per_million, output_per_million,"
                  " cached_input_per_million, valid_from) values (%s, 2500000, 10000000, 1250000, now() - interval '1 day')",
                  (model,))
    return model


def test_llm_cost_matches_a_reference_calculator(db):
    rng = random.Random(20261125)
    big = 2 ** 63 - 1
    cases = []
    for _ in range(400):
        prices = [rng.choice([0, 1, 999_999, 1_000_000, rng.randrange(10 ** 9), rng.randrange(big)]) for _ in range(3)]
        n_in = rng.choice([0, 1, 7, 10 ** 6, rng.randrange(10 ** 12), rng.randrange(big)])
        counts = [n_in, rng.choice([0, 3, rng.randrange(10 ** 9), rng.randrange(big)]), rng.randrange(n_in + 1)]
        cases.append((prices, counts))
    model = f"ref-{uuid.uuid4().hex[:8]}"
    with db.service() as c:
        for i, (prices, counts) in enumerate(cases):
            c.execute("insert into billing.model_prices values (%s, %s, %s, %s, now() - interval '1 day')",
                      (f"{model}-{i}", *prices))
            expected = reference_cost(*prices, *counts)
            if expected > big:
                with pytest.raises(psycopg.Error) as e:
                    c.execute("select billing.llm_cost(%s, %s, %s, %s)", (f"{model}-{i}", *counts))
                assert sqlstate(e) == "22003", (prices, counts)
            else:
                got = c.execute("select billing.llm_cost(%s, %s, %s, %s)", (f"{model}-{i}", *counts)).fetchone()[0]
                assert got == expected, (prices, counts)
    assert any(reference_cost(*p, *n) > big for p, n in cases)  # the sample reaches past the range
    assert any(0 < reference_cost(*p, *n) <= big for p, n in cases)


def test_llm_cost_rounds_up_and_refuses_what_it_cannot_price(db, priced):
    cost = lambda *a: db.one("select billing.llm_cost(%s, %s, %s, %s)", (priced, *a))[0]  # noqa: E731
    assert cost(1, 0, 0) == 3  # 2.5 credits per input token, rounded up
    assert cost(1000, 500, 400) == 7000  # 600 × 2.5 + 400 × 1.25 (cached) + 500 × 10
    for args, code in [((f"{priced}-nope", 1, 1, 0), "22023"), ((priced, -1, 0, 0), "22023"),
                       ((priced, 10, 0, 11), "22023"), ((None, 1, 1, 0), "22023"), ((priced, None, 1, 0), "22023")]:
        with pytest.raises(psycopg.Error) as e:
            db.one("select billing.llm_cost(%s, %s, %s, %s)", args)
        assert sqlstate(e) == code, args
    # a price that is not in force yet prices nothing
    future = f"future-{uuid.uuid4().hex[:8]}"
    db.one("insert into billing.model_prices values (%s, 1, 1, 0, now() + interval '1 day') returning 1", (future,))
    with pytest.raises(psycopg.Error) as e:
        db.one("select billing.llm_cost(%s, 1, 1)", (future,))
    assert sqlstate(e) == "22023" and "no price in force" in e.value.diag.message_primary


def test_record_llm_usage_charges_the_cost_and_records_the_counts(db, priced):
    user = db.user()
    db.grant(user, 1_000_000)
    row = db.one("select * from billing.record_llm_usage(%s, %s, 10000, 2000, 4000, 'call-1', '{\"chat\": 7}')",
                 (user, priced))
    expected = reference_cost(2_500_000, 10_000_000, 1_250_000, 10000, 2000, 4000)
    assert row[1:] == (expected, 1_000_000 - expected, False)
    assert db.one("select * from billing.record_llm_usage(%s, %s, 10000, 2000, 4000, 'call-1')", (user, priced))[3]
    assert db.one("select metadata from billing.token_usage where id = %s", (row[0],))[0] == \
        {"chat": 7, "model": priced, "input_tokens": 10000, "output_tokens": 2000, "cached_input_tokens": 4000}
    with db.as_role("authenticated", sub=user, read_only=True) as c:
        history = c.execute("select group_key, tokens, requests, input_tokens, output_tokens, cached_input_tokens"
                            " from billing.get_usage_history(p_group_by => 'model')").fetchall()
    assert history == [(priced, expected, 1, 10000, 2000, 4000)]
    # an unknown model charges nothing and records nothing
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.record_llm_usage(%s, 'unpriced-model', 1, 1)", (user,))
    assert sqlstate(e) == "22023"
    assert db.balance(user) == 1_000_000 - expected


def test_a_price_change_does_not_alter_an_open_reservation(db):
    model = f"versioned-{uuid.uuid4().hex[:8]}"
    user = db.user()
    db.grant(user, 100_000)
    with db.service() as c:
        c.execute("insert into billing.model_prices values (%s, 1000000, 1000000, 0, now() - interval '1 day')", (model,))
        old = c.execute("select reservation_id, tokens_held from billing.reserve_llm_usage(%s, %s, 100, 500, 'r1')",
                        (user, model)).fetchone()
        assert old[1] == 600
    with db.service() as c:  # a new price, in force from now on
        c.execute("insert into billing.model_prices values (%s, 3000000, 3000000, 0, clock_timestamp())", (model,))
    with db.service() as c:
        new = c.execute("select reservation_id, tokens_held from billing.reserve_llm_usage(%s, %s, 100, 500, 'r2')",
                        (user, model)).fetchone()
        assert new[1] == 1800
        assert c.execute("select tokens_charged, tokens_released from billing.commit_llm_usage(%s, 100, 200)",
                         (old[0],)).fetchone() == (300, 300)  # the old price
        assert c.execute("select tokens_charged from billing.commit_llm_usage(%s, 100, 200)",
                         (new[0],)).fetchone()[0] == 900
        # committing again with the same counts is a replay
        assert c.execute("select replayed from billing.commit_llm_usage(%s, 100, 200)", (old[0],)).fetchone()[0]
    assert db.balance(user) == 100_000 - 1200
    assert db.ledger_problems() == []


def test_a_call_that_cost_more_than_its_hold_is_charged_in_full(db):
    model = f"flat-{uuid.uuid4().hex[:8]}"  # 1 credit per token
    db.one("insert into billing.model_prices values (%s, 1000000, 1000000, 0, now() - interval '1 day') returning 1",
           (model,))
    user = db.user()
    db.grant(user, 100)
    with db.service() as c:
        rid = c.execute("select reservation_id, tokens_held from billing.reserve_llm_usage(%s, %s, 10, 10, 'x')",
                        (user, model)).fetchone()
        assert rid[1] == 20
        row = c.execute("select tokens_charged, tokens_released from billing.commit_llm_usage(%s, 10, 30)",
                        (rid[0],)).fetchone()
        assert row == (40, 0)  # the hold of 20 and 20 more
    assert db.balance(user) == 60
    with db.service() as c:
        rid = c.execute("select reservation_id from billing.reserve_llm_usage(%s, %s, 0, 10, 'y')",
                        (user, model)).fetchone()[0]
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.commit_llm_usage(%s, 0, 1000)", (rid,))  # 990 more than held: too many
        assert sqlstate(e) == "PT402"
        assert c.execute("select status from billing.token_reservations where id = %s", (rid,)).fetchone()[0] == "held"
        with pytest.raises(psycopg.Error) as e:
            c.execute("select * from billing.commit_llm_usage(%s, 0, 1)",
                      (c.execute("select reservation_id from billing.reserve_tokens(%s, 1, 'plain')",
                                 (user,)).fetchone()[0],))
        assert sqlstate(e) == "22023"  # not an LLM reservation
    assert db.ledger_problems() == []
