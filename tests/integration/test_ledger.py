"""Ledger core: atomic consumption, idempotent grants, reservations, expiry, the ledger check."""
import datetime as dt
import re
import threading
import time
import uuid

import psycopg
import pytest

from conftest import run_threads, sqlstate, wait_for_a_lock_wait

NOW = lambda: dt.datetime.now(dt.timezone.utc)  # noqa: E731


def test_race_spends_each_token_once(db):
    """16 connections, 2,000 attempts at 1 token against 1,000 tokens: exactly 1,000 succeed."""
    user = db.user()
    db.grant(user, 1000)
    ok, insufficient, lock = [0], [0], threading.Lock()

    def worker(i):
        with db.service() as c:
            for _ in range(125):
                try:
                    c.execute("select * from billing.consume_tokens(%s, 1)", (user,))
                    with lock:
                        ok[0] += 1
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402", e
                    with lock:
                        insufficient[0] += 1

    run_threads(16, worker)
    assert ok[0] == 1000
    assert insufficient[0] == 1000
    assert db.balance(user) == 0
    assert db.one("select count(*), sum(tokens) from billing.token_usage where account_id = %s", (user,)) == (1000, 1000)
    assert db.ledger_problems() == []


def test_concurrent_grants_with_one_reference_grant_once(db):
    user = db.user()
    ref = f"cs_{uuid.uuid4()}"
    results = []

    def worker(i):
        results.append(db.grant(user, 500, reference=ref))

    run_threads(60, worker)
    assert sorted(r[3] for r in results) == [False] + [True] * 59
    assert len({r[0] for r in results}) == 1
    assert db.one("select count(*) from billing.token_grants where reference = %s", (ref,))[0] == 1
    assert db.balance(user) == 500
    assert db.ledger_problems() == []


def test_concurrent_consumes_with_one_key_charge_once(db):
    user = db.user()
    db.grant(user, 100)
    results = []

    def worker(i):
        results.append(db.one("select * from billing.consume_tokens(%s, 7, 'req-1')", (user,)))

    run_threads(20, worker)
    assert sorted(r[3] for r in results) == [False] + [True] * 19
    assert len({r[0] for r in results}) == 1
    assert db.balance(user) == 93
    assert db.ledger_problems() == []


def test_replay_returns_original_and_conflict_is_pt409(db):
    user = db.user()
    db.grant(user, 100)
    first = db.one("select * from billing.consume_tokens(%s, 10, 'k', '{\"model\":\"gpt\"}')", (user,))
    db.one("select * from billing.consume_tokens(%s, 5)", (user,))
    again = db.one("select * from billing.consume_tokens(%s, 10, 'k')", (user,))
    assert first[:3] == again[:3] and first[3] is False and again[3] is True
    assert db.balance(user) == 85
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 11, 'k')", (user,))
    assert sqlstate(e) == "PT409"
    assert db.balance(user) == 85


def test_replay_wins_over_insufficient_balance(db):
    """A retried request whose first attempt succeeded gets its result back, even when broke now."""
    user = db.user()
    db.grant(user, 10)
    first = db.one("select * from billing.consume_tokens(%s, 10, 'only')", (user,))
    again = db.one("select * from billing.consume_tokens(%s, 10, 'only')", (user,))
    assert again[0] == first[0] and again[3] is True
    assert db.balance(user) == 0


def test_insufficient_is_pt402_with_detail_and_changes_nothing(db):
    user = db.user()
    db.grant(user, 5)
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 6)", (user,))
    assert sqlstate(e) == "PT402"
    assert e.value.diag.message_detail == "requested 6, available 5"
    assert e.value.diag.message_hint
    # a user who never had tokens
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 1)", (uuid.uuid4(),))
    assert sqlstate(e) == "PT402"
    assert db.balance(user) == 5
    assert db.one("select count(*) from billing.token_usage where account_id = %s", (user,))[0] == 0


def test_burn_down_spends_soonest_expiring_first(db):
    user = db.user()
    forever = db.grant(user, 100)[0]
    later = db.grant(user, 50, kind="promo", expires_at=NOW() + dt.timedelta(hours=2))[0]
    sooner = db.grant(user, 30, kind="promo", expires_at=NOW() + dt.timedelta(hours=1))[0]
    usage = db.one("select * from billing.consume_tokens(%s, 40)", (user,))
    drawn = db.one("select drawn_from from billing.token_usage where id = %s", (usage[0],))[0]
    assert drawn == [[sooner, 30], [later, 10]]
    db.one("select * from billing.consume_tokens(%s, 60)", (user,))
    rem = dict(db.all("select id, remaining from billing.token_grants where account_id = %s", (user,)))
    assert rem == {sooner: 0, later: 0, forever: 80}
    assert db.ledger_problems() == []


def test_expired_tokens_are_never_spendable(db):
    user = db.user()
    db.grant(user, 10, kind="promo", expires_at=NOW() + dt.timedelta(seconds=1))
    db.grant(user, 5)
    assert db.balance(user) == 15
    time.sleep(1.2)
    assert db.balance(user) == 5  # read-only path, before anything settled
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 6)", (user,))
    assert sqlstate(e) == "PT402"
    assert e.value.diag.message_detail == "requested 6, available 5"
    db.one("select * from billing.consume_tokens(%s, 5)", (user,))
    assert db.one("select sum(expired), sum(remaining) from billing.token_grants where account_id = %s", (user,)) == (10, 0)
    assert db.ledger_problems() == []


def test_reservation_lifecycle(db):
    user = db.user()
    db.grant(user, 100)
    res = db.one("select * from billing.reserve_tokens(%s, 50, 'stream-1')", (user,))
    rid = res[0]
    assert res[1] == 50 and res[3] == 50 and res[4] is False
    # replay of the reserve returns the same hold
    assert db.one("select * from billing.reserve_tokens(%s, 50, 'stream-1')", (user,))[0] == rid
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.reserve_tokens(%s, 51, 'stream-1')", (user,))
    assert sqlstate(e) == "PT409"
    # held tokens are not spendable by others
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, 60)", (user,))
    assert sqlstate(e) == "PT402"
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.commit_reservation(%s, 51)", (rid,))
    assert sqlstate(e) == "22023"
    committed = db.one("select * from billing.commit_reservation(%s, 30)", (rid,))
    assert committed[1:] == (30, 20, 70, False)
    assert db.one("select * from billing.commit_reservation(%s, 30)", (rid,))[4] is True
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.commit_reservation(%s, 29)", (rid,))
    assert sqlstate(e) == "PT409"
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.release_reservation(%s)", (rid,))
    assert sqlstate(e) == "PT410"
    assert db.balance(user) == 70
    # release gives everything back; releasing twice is harmless
    rid2 = db.one("select * from billing.reserve_tokens(%s, 20, 'stream-2')", (user,))[0]
    assert db.one("select * from billing.release_reservation(%s)", (rid2,)) == (20, 70, False)
    assert db.one("select * from billing.release_reservation(%s)", (rid2,))[2] is True
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.commit_reservation(%s, 1)", (uuid.uuid4(),))
    assert sqlstate(e) == "PT404"
    assert db.ledger_problems() == []


def in_thread(db, sql, params):
    """Runs sql on its own connection in a thread; returns (thread, result) with result's "row" or
    "error" (SQLSTATE) filled when it ends."""
    result = {}

    def run():
        try:
            result["row"] = db.one(sql, params)
        except psycopg.Error as e:
            result["error"] = e.sqlstate

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_commit_racing_the_same_commit_answers_as_a_retry(db):
    """Two commits of one hold at once: the second waits for the account's lock, then finds the hold
    committed and answers as a retry would (the first result, replayed; PT409 for another amount).
    One usage row per hold, whatever the interleaving."""
    user = db.user()
    db.grant(user, 100)
    for second_amount, balance in ((30, 70), (31, 40)):
        rid = db.one("select reservation_id from billing.reserve_tokens(%s, 50, %s)", (user, f"race-{second_amount}"))[0]
        with db.service(autocommit=False) as first:
            first_row = first.execute("select * from billing.commit_reservation(%s, 30)", (rid,)).fetchone()
            thread, second = in_thread(db, "select * from billing.commit_reservation(%s, %s)", (rid, second_amount))
            wait_for_a_lock_wait(db, "commit_reservation")
            first.commit()
            thread.join(10)
        assert first_row[1:] == (30, 20, balance, False)
        if second_amount == 30:
            assert second == {"row": first_row[:4] + (True,)}
        else:
            assert second["error"] == "PT409"
        assert db.one("select count(*), sum(tokens) from billing.token_usage where reservation_id = %s", (rid,)) == (1, 30)
        assert db.balance(user) == balance
    assert db.ledger_problems() == []


def test_a_reserve_racing_its_retry_makes_one_hold(db):
    """A retry of a reserve that runs while the first is still open waits for it, then returns the
    same hold (replayed) instead of holding the tokens twice."""
    user = db.user()
    db.grant(user, 100)
    with db.service(autocommit=False) as first:
        rid = first.execute("select reservation_id from billing.reserve_tokens(%s, 40, 'retry')", (user,)).fetchone()[0]
        thread, second = in_thread(db, "select * from billing.reserve_tokens(%s, 40, 'retry')", (user,))
        wait_for_a_lock_wait(db, "reserve_tokens")
        first.commit()
        thread.join(10)
    assert second["row"][0] == rid and second["row"][1] == 40 and second["row"][4] is True
    assert db.balance(user) == 60
    assert db.one("select count(*) from billing.token_reservations where account_id = %s", (user,))[0] == 1
    assert db.ledger_problems() == []


@pytest.mark.parametrize("second_expires", [None, "soon"])
def test_a_hold_committed_for_less_gives_back_to_its_grant_whatever_happened_between(db, second_expires):
    """Reserve, then a write that re-reads the grants (a new grant: burned after the first one, so the
    commit stays on the fast path, or before it, so it does not), then commit for less: the unused
    tokens go back to the grant the hold came from, and the next consume burns in the usual order."""
    user = db.user()
    first = db.grant(user, 100, reference=f"first-{user}")[0]
    rid = db.one("select reservation_id from billing.reserve_tokens(%s, 30, 'between')", (user,))[0]
    expires = NOW() + dt.timedelta(days=1) if second_expires else None
    second = db.grant(user, 5, reference=f"second-{user}", kind="promo", expires_at=expires)[0]
    assert db.one("select * from billing.commit_reservation(%s, 10)", (rid,))[1:] == (10, 20, 95, False)
    assert db.one("select drawn_from from billing.token_usage where reservation_id = %s", (rid,))[0] == [[first, 10]]
    usage = db.one("select usage_id from billing.consume_tokens(%s, 7)", (user,))[0]
    drawn = db.one("select drawn_from from billing.token_usage where id = %s", (usage,))[0]
    assert drawn == ([[second, 5], [first, 2]] if second_expires else [[first, 7]])
    assert db.balance(user) == 88
    assert db.ledger_problems() == []


def test_expired_hold_is_released_without_a_scheduler(db):
    user = db.user()
    db.grant(user, 100)
    rid = db.one("select * from billing.reserve_tokens(%s, 80, 'short', interval '1 second')", (user,))[0]
    assert db.balance(user) == 20
    time.sleep(1.2)
    assert db.balance(user) == 100  # read path sees the hold gone
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.commit_reservation(%s, 10)", (rid,))
    assert sqlstate(e) == "PT410"  # the error rolls back its own settle; the next writer settles
    db.one("select * from billing.consume_tokens(%s, 100)", (user,))
    assert db.one("select status from billing.token_reservations where id = %s", (rid,))[0] == "expired"
    assert db.balance(user) == 0
    assert db.ledger_problems() == []


def test_maintenance_settles_due_users(db):
    user = db.user()
    db.grant(user, 10, kind="promo", expires_at=NOW() + dt.timedelta(seconds=1))
    db.one("select * from billing.reserve_tokens(%s, 4, null, interval '1 second')", (user,))
    time.sleep(1.2)
    assert db.one("select billing.run_maintenance()")[0] >= 1
    row = db.one("select spendable, held, next_event_at from billing.balances where account_id = %s", (user,))
    assert row == (0, 0, None)
    assert db.one("select expired from billing.token_grants where account_id = %s", (user,))[0] == 10
    assert db.ledger_problems() == []


def test_concurrent_reserve_commit_consume_keep_ledger_consistent(db):
    user = db.user()
    db.grant(user, 3000)

    def worker(i):
        with db.service() as c:
            for j in range(30):
                try:
                    if j % 3 == 0:
                        rid = c.execute("select reservation_id from billing.reserve_tokens(%s, 20, %s)",
                                        (user, f"{i}-{j}")).fetchone()[0]
                        if j % 2:
                            c.execute("select * from billing.commit_reservation(%s, 13)", (rid,))
                        else:
                            c.execute("select * from billing.release_reservation(%s)", (rid,))
                    else:
                        c.execute("select * from billing.consume_tokens(%s, 9)", (user,))
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402", e

    run_threads(12, worker)
    used = db.one("select coalesce(sum(tokens), 0) from billing.token_usage where account_id = %s", (user,))[0]
    assert db.balance(user) == 3000 - used
    assert db.ledger_problems() == []


@pytest.mark.parametrize("amount", [0, -1, None])
def test_amount_must_be_positive(db, amount):
    user = db.user()
    db.grant(user, 10)
    for sql in ["select * from billing.consume_tokens(%s, %s)",
                "select * from billing.grant_purchase(%s, %s, 'zero-ref')",
                "select * from billing.reserve_tokens(%s, %s, 'k')"]:
        with pytest.raises(psycopg.Error) as e:
            db.one(sql, (user, amount))
        assert sqlstate(e) == "22023", sql
    assert db.balance(user) == 10


def test_invalid_arguments_are_22023(db):
    user = db.user()
    db.grant(user, 10)
    cases = [
        ("select * from billing.consume_tokens(%s, 1, %s)", (user, "x" * 256)),
        ("select * from billing.consume_tokens(%s, 1, %s)", (user, "é" * 256)),
        ("select * from billing.consume_tokens(%s, 1, %s)", (user, "")),
        ("select * from billing.reserve_tokens(%s, 1, %s)", (user, "é" * 256)),
        ("select * from billing.reserve_tokens(%s, 1, %s)", (user, "")),
        ("select * from billing.consume_tokens(%s, 1, null, '[1]')", (user,)),
        ("select * from billing.consume_tokens(null, 1)", None),
        ("select * from billing.grant_purchase(%s, 1, '')", (user,)),
        ("select * from billing.grant_purchase(%s, 1, 'r', 'Not A Kind')", (user,)),
        ("select * from billing.grant_purchase(%s, 1, 'r', 'promo', now() - interval '1 day')", (user,)),
        ("select * from billing.reserve_tokens(%s, 1, 'k', interval '0')", (user,)),
        ("select * from billing.reserve_tokens(%s, 1, 'k', interval '2 days')", (user,)),
        ("select * from billing.commit_reservation(null, 1)", None),
    ]
    for sql, params in cases:
        with pytest.raises(psycopg.Error) as e:
            db.one(sql, params)
        assert sqlstate(e) == "22023", sql
    assert db.balance(user) == 10
    assert db.ledger_problems() == []


def test_a_key_of_255_characters_is_valid_whatever_its_bytes(db):
    """The limit is 255 characters: a key of 255 two- or four-byte characters is a key like any other."""
    user = db.user()
    db.grant(user, 10)
    for key in ("é" * 255, "😀" * 255, "x" * 255):
        first = db.one("select * from billing.consume_tokens(%s, 1, %s)", (user, key))
        again = db.one("select * from billing.consume_tokens(%s, 1, %s)", (user, key))
        assert first[3] is False and again[:3] == first[:3] and again[3] is True
    hold = db.one("select * from billing.reserve_tokens(%s, 2, %s)", (user, "😀" * 255))
    assert db.one("select * from billing.reserve_tokens(%s, 2, %s)", (user, "😀" * 255))[:2] == hold[:2]
    assert db.balance(user) == 5
    assert db.ledger_problems() == []


# The rules billing_internal.spend_needs_checks (Rust) decides in one call, as the SQL expression they
# were: the hot path may skip the checks exactly when none of these holds.
NEEDS_CHECKS_SQL = """coalesce(u is null or a is null or a <= 0 or m is null or jsonb_typeof(m) <> 'object'
                     or (k is not null and octet_length(k) not between 1 and 255)
                     or current_setting('role') in ('authenticated', 'anon'), false)"""


def test_the_tests_whether_a_call_needs_checks_follow_the_rules(db):
    """Every combination of NULL, edge and stored (compressed, out-of-line) arguments, for a backend
    and for each role PostgREST sets: the Rust tests say what the rules say."""
    with db.service() as c:
        c.execute("create temporary table stored (k text, m jsonb)")
        c.execute("insert into stored values (null, null), ('k', '{}'), (repeat('x', 255), '{\"a\": 1}'),"
                  " (repeat('é', 128), '[]'), (repeat('k', 100000), jsonb_build_object('big', repeat('v', 100000))),"
                  " (repeat('ab', 127), '1'), ('', '\"s\"'), (repeat('x', 256), 'null'),"
                  " (repeat('x', 3000), jsonb_build_array(repeat('w', 3000)))")
        assert c.execute("select count(*) from stored where pg_column_size(k) < octet_length(k)").fetchone()[0] >= 2
        disagreements, total = c.execute(
            "select count(*) filter (where billing_internal.spend_needs_checks(u, a, k, m) is distinct from "
            + NEEDS_CHECKS_SQL + "), count(*)"
            " from (values (null::uuid), (gen_random_uuid())) users(u),"
            " (values (null::bigint), (-9223372036854775808), (-1), (0), (1), (9223372036854775807)) amounts(a),"
            " stored keys(k, ignored), stored metas(ignored, m)").fetchone()
        assert (disagreements, total) == (0, 2 * 6 * 9 * 9)
        assert c.execute("select array_agg(billing_internal.read_needs_checks(u, t) order by u nulls first, t nulls first)"
                         " from (values (null::uuid), (gen_random_uuid())) users(u),"
                         " (values (null::uuid), (gen_random_uuid())) teams(t)").fetchone()[0] == [True, True, False, True]
    for role in ("authenticated", "anon", "service_role"):
        with db.service() as c, c.transaction() as undone:  # the grants below are rolled back
            c.execute("grant usage on schema billing_internal to " + role)
            c.execute("grant execute on function billing_internal.spend_needs_checks(uuid, bigint, text, jsonb),"
                      " billing_internal.read_needs_checks(uuid, uuid) to " + role)
            c.execute("set local role " + role)
            # get_balance's test: a NULL user, a team account or a browser
            assert c.execute(
                "select array_agg(billing_internal.read_needs_checks(u, t) order by u nulls first, t nulls first)"
                " from (values (null::uuid), (gen_random_uuid())) users(u), (values (null::uuid), (gen_random_uuid())) teams(t)"
            ).fetchone()[0] == ([True, True, True, True] if role != "service_role" else [True, True, False, True]), role
            disagreements, total, needing = c.execute(
                "select count(*) filter (where billing_internal.spend_needs_checks(u, a, k, m) is distinct from "
                + NEEDS_CHECKS_SQL + "), count(*), count(*) filter (where billing_internal.spend_needs_checks(u, a, k, m))"
                " from (values (gen_random_uuid())) users(u), (values (1::bigint), (0)) amounts(a),"
                " (values (null::text), ('k')) keys(k), (values ('{}'::jsonb), ('[]')) metas(m)").fetchone()
            assert (disagreements, total) == (0, 8), role
            assert needing == (8 if role != "service_role" else 6), role
            raise psycopg.Rollback(undone)
    assert not db.one("select has_function_privilege('authenticated',"
                      " 'billing_internal.spend_needs_checks(uuid, bigint, text, jsonb)', 'execute')")[0]


def test_grant_reference_reused_with_other_terms_is_pt409(db):
    a, b = db.user(), db.user()
    db.grant(a, 10, reference="shared-ref")
    for args in [(b, 10), (a, 11)]:
        with pytest.raises(psycopg.Error) as e:
            db.grant(args[0], args[1], reference="shared-ref")
        assert sqlstate(e) == "PT409"
    assert db.balance(b) == 0 and db.balance(a) == 10


def test_balance_overflow_is_an_error_and_writes_nothing(db):
    user = db.user()
    db.grant(user, 2**63 - 1)
    with pytest.raises(psycopg.Error) as e:
        db.grant(user, 1)
    assert sqlstate(e) == "22003"
    assert db.balance(user) == 2**63 - 1
    assert db.one("select count(*) from billing.token_grants where account_id = %s", (user,))[0] == 1
    assert db.one("select * from billing.consume_tokens(%s, %s)", (user, 2**63 - 1))[2] == 0
    assert db.ledger_problems() == []


def test_verify_ledger_reports_tampering(db):
    """The check is not vacuous: a balance edited behind the ledger's back is reported."""
    user = db.user()
    db.grant(user, 10)
    with db.service() as c:
        c.execute("begin")
        c.execute("update billing.balances set spendable = 11 where account_id = %s", (user,))
        problems = c.execute("select invariant from billing.verify_ledger() where account_id = %s", (user,)).fetchall()
        c.execute("rollback")
    assert problems == [("balance does not match ledger",)]


def test_balance_counters_cannot_go_negative_even_behind_the_functions_back(db):
    """billing.token_count (a domain, 0.3.0) keeps the database's own guarantee: no write of any
    kind leaves a negative spendable, held, debt or head count."""
    user = db.user()
    db.grant(user, 10)
    for column in ("spendable", "held", "debt", "head_remaining"):
        with db.service() as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute(f"update billing.balances set {column} = {column} - 1000 where account_id = %s", (user,))
        assert sqlstate(e) == "23514", column
    assert db.balance(user) == 10
    assert db.ledger_problems() == []


def test_verify_ledger_reports_reservation_rows_that_break_the_column_rules(db):
    """token_reservations has no CHECK constraints either (every hold writes it twice); a row written
    behind the functions' back with a bad value is reported."""
    user = db.user()
    db.grant(user, 10, reference=f"hold-rules-{user}")
    rid = db.one("select reservation_id from billing.reserve_tokens(%s, 2, 'k')", (user,))[0]
    db.one("select * from billing.commit_reservation(%s, 1)", (rid,))
    bad = [("tokens", "0"), ("status", "'gone'"), ("committed_tokens", "3"), ("committed_tokens", "null"),
           ("idempotency_key", "''"), ("metadata", "'[]'::jsonb")]
    for column, value in bad:
        with db.service() as c:
            c.execute("begin")
            c.execute(f"update billing.token_reservations set {column} = {value} where id = %s", (rid,))
            problems = {r[0] for r in c.execute(
                "select invariant from billing.verify_ledger() where account_id = %s", (user,)).fetchall()}
            c.execute("rollback")
        assert "reservation row breaks its column rules" in problems, (column, value, problems)
    assert db.ledger_problems() == []


def test_verify_ledger_reports_usage_rows_that_break_the_column_rules(db):
    """token_usage has no CHECK constraints (only the functions insert, and they validate); a row
    written behind their back with bad values is reported."""
    user = db.user()
    db.grant(user, 10, reference=f"rules-{user}")
    db.one("select * from billing.consume_tokens(%s, 1)", (user,))
    bad = [("tokens", "0"), ("idempotency_key", "''"), ("metadata", "'[]'::jsonb"), ("head", None)]
    for column, value in bad:
        with db.service() as c:
            c.execute("begin")
            if column == "head":
                c.execute("update billing.balances set head_grant_id = null where account_id = %s", (user,))
            else:
                c.execute(f"update billing.token_usage set {column} = {value} where account_id = %s", (user,))
            problems = {r[0] for r in c.execute(
                "select invariant from billing.verify_ledger() where account_id = %s", (user,)).fetchall()}
            c.execute("rollback")
        expected = "head tokens without a head grant" if column == "head" else "usage row breaks its column rules"
        assert expected in problems, (column, problems)
    assert db.ledger_problems() == []


def test_idempotency_keys_are_found_through_their_index_in_generic_plans(db):
    """A key is looked up by (account, key) through the idempotency index on every path, also after
    PL/pgSQL switches a function's statements to generic plans, where `user_id IS NOT DISTINCT FROM`
    a parameter cannot be an index condition. A lookup that filtered the account's rows (or the whole
    table) would slow every keyed call down as the ledger grows. Sequential scans are disabled so the
    test's small tables plan as large ones do."""
    user, owner, member = db.user(), db.user(), db.user()
    db.grant(user, 1000)
    account = db.one("select billing.create_team_account('keys', %s)", (owner,))[0]
    db.one("select * from billing.grant_purchase(null, 1000, %s, p_account_id => %s)", (f"fund-{uuid.uuid4()}", account))
    db.one("select * from billing.add_account_member(%s, %s)", (account, member))
    plans = []
    with db.service() as c:
        c.add_notice_handler(lambda n: plans.append(n.message_primary))
        for setting in ("plan_cache_mode = force_generic_plan", "enable_seqscan = off", "client_min_messages = log",
                        "auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on"):
            c.execute("set " + setting)
        c.execute("load 'auto_explain'")
        for _ in range(2):  # the first call of each path, then its replay
            c.execute("select * from billing.consume_tokens(%s, 1, 'consume-key')", (user,))
            c.execute("select * from billing.consume_tokens(%s, 1, 'team-key', '{}', %s)", (member, account))
            c.execute("select * from billing.reserve_tokens(%s, 1, 'hold-key')", (user,))
            c.execute("select * from billing.reserve_tokens(%s, 1, 'team-hold-key', p_account_id => %s)", (member, account))
    lookups = [p for p in plans if "idempotency_key = p_" in p]  # the statements that look a key up
    for table in ("token_usage", "token_reservations"):
        mine = [p for p in lookups if f"billing.{table} " in p]
        assert mine, f"no key lookup on {table} was planned"
        for plan in mine:
            # an index scan, or a bitmap scan of the idempotency index (the planner picks either by
            # the table's statistics); the key must be in the index condition either way
            assert re.search(rf"Index (Only )?Scan using \w+ on {table} |Bitmap Index Scan on {table}_idempotency\b",
                             plan), plan
            assert "Seq Scan" not in plan, plan
            assert "idempotency_key = $" in plan.split("Index Cond:", 1)[-1].split("\n", 1)[0], plan
    assert db.balance(user) == 998 and db.ledger_problems() == []
