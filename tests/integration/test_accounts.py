"""Team accounts (README "Accounts"): accounts pay, users spend. Members spend from one balance within
their own limits, concurrently; who may manage whom; removal stops spending at once; Stripe credits
the account named in the metadata; each role reads what it should, through PostgREST's exact SQL."""
import threading
import uuid

import psycopg
import pytest

from conftest import Db, connect, create_database, run_threads, sqlstate
from postgrest import call


def rpc(db, fn, args, sub, **kw):
    return call(lambda: connect(db.name, user="authenticator"), fn, args, sub=sub, **kw)


def team(db, owner, tokens=0, name="team"):
    """A team account owned by `owner`, funded with `tokens` by the backend."""
    account = db.one("select billing.create_team_account(%s, %s)", (name, owner))[0]
    if tokens:
        db.one("select * from billing.grant_purchase(null, %s, %s, p_account_id => %s)",
               (tokens, f"fund-{uuid.uuid4()}", account))
    return account


def add(db, account, user, role="member", limit=None, period="month"):
    return db.one("select role, spend_limit from billing.add_account_member(%s, %s, %s, %s, %s)",
                  (account, user, role, limit, period))


def consume(c, user, amount, account, key=None):
    return c.execute("select * from billing.consume_tokens(%s, %s, %s, '{}', %s)", (user, amount, key, account)).fetchone()


def spent(db, account, user):
    return db.one("select coalesce(sum(tokens), 0) from billing.token_usage where account_id = %s and user_id = %s",
                  (account, user))[0]


def test_members_spend_from_one_balance_within_their_limits_concurrently(db):
    """8 members, each in its own connection, spend from one account until refused: the account never
    goes below zero, no member passes their limit, and every refusal is a PT402 saying which limit."""
    owner = db.user()
    members = [db.user() for _ in range(8)]
    account = team(db, owner, tokens=2000)
    for i, m in enumerate(members):
        add(db, account, m, limit=150 + 50 * i, period="day")  # limits sum to 2600 > 2000
    refusals = {}

    def spend(i):
        reasons = set()
        with connect(db.name) as c:
            for k in range(200):
                try:
                    with c.transaction():
                        # reserve, then commit part of it; or consume outright
                        if k % 3 == 0:
                            rid = c.execute("select reservation_id from billing.reserve_tokens(%s, 12, %s, '1 minute', %s)",
                                            (members[i], f"r{k}", account)).fetchone()[0]
                            c.execute("select * from billing.commit_reservation(%s, 9)", (rid,))
                        else:
                            consume(c, members[i], 7, account, key=f"k{k}")
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402", (e.sqlstate, str(e))
                    reasons.add(e.diag.message_primary)
                    if len(reasons) == 2 or (k > 50 and e.diag.message_primary == "member spend limit reached"):
                        break
        refusals[i] = reasons

    run_threads(8, spend)
    assert db.ledger_problems() == []
    total = sum(spent(db, account, m) for m in members)
    balance = db.one("select billing.get_balance(%s, %s)", (owner, account))[0]
    assert balance + total == 2000 and balance >= 0
    for i, m in enumerate(members):
        limit = 150 + 50 * i
        row = db.one("select period_spent from billing.account_members where account_id = %s and user_id = %s",
                     (account, m))[0]
        assert spent(db, account, m) == row <= limit, (i, row, limit)
    # the account ran dry before every member reached their limit (2000 < 2600), so both limits refused
    assert balance < 12
    assert set().union(*refusals.values()) <= {"insufficient tokens", "member spend limit reached"}
    assert db.one("select count(*) from billing.token_reservations where account_id = %s and status = 'held'",
                  (account,))[0] == 0


def test_no_member_passes_a_limit_when_the_account_has_plenty(db):
    owner, member = db.user(), db.user()
    account = team(db, owner, tokens=100000)
    add(db, account, member, limit=100, period="day")

    def spend(i):
        with connect(db.name) as c:
            for _ in range(10):
                try:
                    consume(c, member, 3, account)
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402" and e.diag.message_detail.startswith("member limit"), str(e)

    run_threads(8, spend)
    assert spent(db, account, member) == 99  # 33 consumes of 3 fit in 100; 47 were refused
    assert db.one("select billing.get_balance(%s, %s)", (owner, account))[0] == 100000 - 99
    assert db.ledger_problems() == []


def test_limit_error_says_which_limit_and_resets_when_the_period_ends(db):
    owner, member = db.user(), db.user()
    account = team(db, owner, tokens=1000)
    add(db, account, member, limit=100, period="week")
    with db.service() as c:
        consume(c, member, 100, account)
        with pytest.raises(psycopg.Error) as e:
            consume(c, member, 1, account)
    assert sqlstate(e) == "PT402"
    assert e.value.diag.message_detail == "member limit: requested 1, spent 100 of 100 this week"
    # a hold is charged by the same rule (consume_tokens writes charge_member's UPDATE out)
    with db.service() as c, pytest.raises(psycopg.Error) as e:
        c.execute("select * from billing.reserve_tokens(%s, 1, 'over', '1 hour', %s)", (member, account))
    assert (sqlstate(e), e.value.diag.message_detail) == ("PT402", "member limit: requested 1, spent 100 of 100 this week")
    # a hold taken in the period counts in it, and gives back nothing to a later period
    with db.service() as c:
        c.execute("update billing.account_members set period_spent = 60 where account_id = %s and user_id = %s",
                  (account, member))
        rid = c.execute("select reservation_id from billing.reserve_tokens(%s, 40, 'h', '1 hour', %s)",
                        (member, account)).fetchone()[0]
        # the week ends: its start moves a week back, as if the hold and the spending were last week's
        c.execute("update billing.account_members set period_start = period_start - interval '7 days'"
                  " where account_id = %s and user_id = %s", (account, member))
        c.execute("update billing.token_reservations set limit_period_start = limit_period_start - interval '7 days'"
                  " where id = %s", (rid,))
        assert consume(c, member, 100, account)[1] == 100  # a new week starts from 0
        c.execute("select * from billing.release_reservation(%s)", (rid,))
        with pytest.raises(psycopg.Error) as e:
            consume(c, member, 1, account)  # last week's hold gave nothing back to this week
    assert sqlstate(e) == "PT402"
    assert db.one("select extract(isodow from billing_internal.limit_period_start('week') at time zone 'UTC'),"
                  " billing_internal.limit_period_start('month') = date_trunc('month', now() at time zone 'UTC')"
                  " at time zone 'UTC'") == (1, True)
    assert db.ledger_problems() == []


def test_a_released_hold_gives_its_tokens_back_to_the_members_limit(db):
    owner, member = db.user(), db.user()
    account = team(db, owner, tokens=1000)
    add(db, account, member, limit=50, period="day")
    with db.service() as c:
        rid = c.execute("select reservation_id from billing.reserve_tokens(%s, 50, 'a', '1 hour', %s)",
                        (member, account)).fetchone()[0]
        with pytest.raises(psycopg.Error):
            consume(c, member, 1, account)
        c.execute("select * from billing.commit_reservation(%s, 20)", (rid,))
        assert consume(c, member, 30, account)[1] == 30
    assert spent(db, account, member) == 50


def test_removing_a_member_stops_their_spending_at_once_and_releases_their_holds(db):
    owner, member = db.user(), db.user()
    account = team(db, owner, tokens=1000)
    add(db, account, member)
    with db.service() as c:
        rid = c.execute("select reservation_id from billing.reserve_tokens(%s, 300, 'stream', '1 hour', %s)",
                        (member, account)).fetchone()[0]
    assert db.one("select billing.get_balance(%s, %s)", (owner, account))[0] == 700

    # The removal commits while the member's consume waits for the account's lock: the consume is refused.
    remover = connect(db.name, autocommit=False)
    remover.execute("select billing.remove_account_member(%s, %s)", (account, member))
    outcome = {}

    def spend():
        try:
            with connect(db.name) as c:
                outcome["row"] = consume(c, member, 5, account)
        except psycopg.Error as e:
            outcome["error"] = e.sqlstate

    t = threading.Thread(target=spend)
    t.start()
    t.join(0.5)
    assert t.is_alive()  # waiting for the remover's lock
    remover.commit()
    remover.close()
    t.join()
    assert outcome == {"error": "42501"}
    assert db.one("select status from billing.token_reservations where id = %s", (rid,))[0] == "released"
    assert db.one("select billing.get_balance(%s, %s)", (owner, account))[0] == 1000
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.commit_reservation(%s, 10)", (rid,))
    assert sqlstate(e) == "PT410"
    for fn, args in [("consume_tokens", {"p_user_id": str(member), "p_amount": 1, "p_account_id": str(account)}),
                     ("reserve_tokens", {"p_user_id": str(member), "p_amount": 1, "p_idempotency_key": "x",
                                         "p_account_id": str(account)}),
                     ("get_balance", {"p_user_id": str(member), "p_account_id": str(account)}),
                     ("get_billing_summary", {"p_account_id": str(account)})]:
        status, body = rpc(db, fn, args, sub=member)
        assert (status, body["code"]) == (403, "42501"), fn
    assert db.ledger_problems() == []


def test_outsiders_cannot_spend_or_read_through_postgrest(db):
    owner, member, outsider, other_owner = db.user(), db.user(), db.user(), db.user()
    account = team(db, owner, tokens=500)
    other = team(db, other_owner, tokens=500)
    add(db, account, member)
    db.grant(outsider, 10)
    for sub, target in [(outsider, account), (member, other), (other_owner, account)]:
        for fn, args in [("consume_tokens", {"p_user_id": str(sub), "p_amount": 1, "p_account_id": str(target)}),
                         ("reserve_tokens", {"p_user_id": str(sub), "p_amount": 1, "p_idempotency_key": "x",
                                             "p_account_id": str(target)}),
                         ("get_balance", {"p_user_id": str(sub), "p_account_id": str(target)}),
                         ("get_billing_summary", {"p_account_id": str(target)}),
                         ("get_usage_history", {"p_account_id": str(target)}),
                         ("add_account_member", {"p_account_id": str(target), "p_user_id": str(sub)}),
                         ("remove_account_member", {"p_account_id": str(target), "p_user_id": str(owner)})]:
            status, body = rpc(db, fn, args, sub=sub)
            assert (status, body["code"]) == (403, "42501"), (fn, sub, target)
    # spending for another user, or naming another user's personal account, is refused too
    status, body = rpc(db, "consume_tokens", {"p_user_id": str(member), "p_amount": 1, "p_account_id": str(account)},
                       sub=outsider)
    assert (status, body["code"]) == (403, "42501")
    status, body = rpc(db, "consume_tokens", {"p_user_id": str(member), "p_amount": 1, "p_account_id": str(outsider)},
                       sub=member)
    assert (status, body["code"]) == (403, "42501")  # the same answer as for any team they are not in
    # a member reads the team's balance as a member (p_account_id), not by passing it as their user id
    status, body = rpc(db, "get_balance", {"p_user_id": str(account)}, sub=member)
    assert (status, body["code"]) == (403, "42501")
    status, body = rpc(db, "get_balance", {"p_user_id": str(member), "p_account_id": str(account)}, sub=member)
    assert (status, body) == (200, 500)
    assert db.one("select billing.get_balance(%s, %s)", (owner, account))[0] == 500
    assert db.one("select billing.get_balance(%s, %s)", (other_owner, other))[0] == 500
    assert db.balance(outsider) == 10
    # a member spends through the same path
    status, body = rpc(db, "consume_tokens", {"p_user_id": str(member), "p_amount": 4, "p_account_id": str(account)},
                       sub=member)
    assert status == 200 and body[0]["balance_after"] == 496


def test_what_each_role_reads(db):
    """The RLS matrix: rows of a team account each kind of user reads, table by table."""
    owner, admin, member, outsider = db.user(), db.user(), db.user(), db.user()
    account = team(db, owner, tokens=1000)
    add(db, account, admin, role="admin")
    add(db, account, member, limit=100)
    with db.service() as c:
        for u in (owner, admin, member):
            consume(c, u, 1, account)
            c.execute("select * from billing.reserve_tokens(%s, 1, 'rls', '1 hour', %s)", (u, account))
        c.execute("insert into billing.stripe_customers values (%s, %s)", (account, f"cus_{account.hex}"))
        c.execute("insert into billing.user_subscriptions (stripe_subscription_id, account_id, status,"
                  " last_event_created, last_event_id) values (%s, %s, 'active', now(), 'evt_x')",
                  (f"sub_{account.hex}", account))
        c.execute("insert into billing.payment_transactions (stripe_event_id, event_type, event_created,"
                  " status, payload, account_id) values (%s, 't', now(), 'processed', '{}', %s)",
                  (f"evt_{account.hex}", account))
    everyone = 3
    expected = {  # table: rows of the account read by (owner, admin, member, outsider)
        "accounts": (1, 1, 1, 0),
        "account_members": (everyone, everyone, 1, 0),
        "balances": (1, 1, 1, 0),
        "token_grants": (1, 1, 1, 0),
        "user_subscriptions": (1, 1, 1, 0),
        "stripe_customers": (1, 1, 0, 0),
        "payment_transactions": (1, 1, 0, 0),
        "token_usage": (everyone, everyone, 1, 0),
        "token_reservations": (everyone, everyone, 1, 0),
    }
    for table, counts in expected.items():
        column = "id" if table == "accounts" else "account_id"
        for user, count in zip((owner, admin, member, outsider), counts):
            with db.as_role("authenticated", sub=user, read_only=True) as c:
                got = c.execute(f"select count(*) from billing.{table} where {column} = %s", (account,)).fetchone()[0]
            assert got == count, (table, user, got, count)
    with db.as_role("authenticated", sub=member, read_only=True) as c:
        assert c.execute("select user_id from billing.token_usage where account_id = %s", (account,)).fetchall() == \
            [(member,)]


def test_who_manages_whom(db):
    owner, admin, member, newcomer = db.user(), db.user(), db.user(), db.user()
    account = team(db, owner)
    assert rpc(db, "add_account_member", {"p_account_id": str(account), "p_user_id": str(admin), "p_role": "admin"},
               sub=owner)[0] == 200
    status, body = rpc(db, "add_account_member", {"p_account_id": str(account), "p_user_id": str(member),
                                                  "p_spend_limit": 500}, sub=admin)
    assert status == 200 and (body["role"], body["spend_limit"], body["spend_limit_period"]) == ("member", 500, "month")
    refused = [
        (admin, "add_account_member", {"p_user_id": str(newcomer), "p_role": "admin"}),  # admins add members only
        (admin, "add_account_member", {"p_user_id": str(owner), "p_role": "member"}),  # nor demote an owner
        (admin, "remove_account_member", {"p_user_id": str(owner)}),
        (member, "add_account_member", {"p_user_id": str(newcomer)}),
        (member, "add_account_member", {"p_user_id": str(member), "p_spend_limit": 10**9}),  # nor raise own limit
        (member, "remove_account_member", {"p_user_id": str(admin)}),
    ]
    for sub, fn, args in refused:
        status, body = rpc(db, fn, {"p_account_id": str(account), **args}, sub=sub)
        assert (status, body["code"]) == (403, "42501"), (fn, args)
    # the last owner can neither leave nor step down; with a second owner they can
    for fn, args in [("remove_account_member", {"p_user_id": str(owner)}),
                     ("add_account_member", {"p_user_id": str(owner), "p_role": "admin"})]:
        status, body = rpc(db, fn, {"p_account_id": str(account), **args}, sub=owner)
        assert (status, body["code"]) == (409, "PT409"), fn
    assert rpc(db, "add_account_member", {"p_account_id": str(account), "p_user_id": str(admin), "p_role": "owner"},
               sub=owner)[0] == 200
    assert rpc(db, "remove_account_member", {"p_account_id": str(account), "p_user_id": str(owner)}, sub=owner) == \
        (200, True)
    # a member may leave; removing someone who is not a member is a no-op
    assert rpc(db, "remove_account_member", {"p_account_id": str(account), "p_user_id": str(member)}, sub=member) == \
        (200, True)
    assert rpc(db, "remove_account_member", {"p_account_id": str(account), "p_user_id": str(member)}, sub=admin) == \
        (200, False)
    assert db.all("select user_id, role from billing.account_members where account_id = %s", (account,)) == \
        [(admin, "owner")]
    # bad arguments are 22023, a missing account PT404
    for args, code in [({"p_user_id": str(newcomer), "p_role": "boss"}, "22023"),
                       ({"p_user_id": str(newcomer), "p_spend_limit": -1}, "22023"),
                       ({"p_user_id": str(newcomer), "p_spend_limit_period": "year"}, "22023")]:
        assert rpc(db, "add_account_member", {"p_account_id": str(account), **args}, sub=admin)[1]["code"] == code
    status, body = rpc(db, "add_account_member", {"p_account_id": str(uuid.uuid4()), "p_user_id": str(newcomer)},
                       sub=admin)
    assert (status, body["code"]) == (404, "PT404")


def test_a_signed_in_user_creates_a_team_and_sees_it_with_their_limits(db):
    owner, member = db.user(), db.user()
    db.grant(owner, 70)
    status, account = rpc(db, "create_team_account", {"p_name": "  Research  "}, sub=owner)
    assert status == 200
    status, body = rpc(db, "create_team_account", {"p_name": "x", "p_owner": str(member)}, sub=owner)
    assert (status, body["code"]) == (403, "42501")  # only the backend names another owner
    status, body = rpc(db, "create_team_account", {"p_name": ""}, sub=owner)
    assert (status, body["code"]) == (400, "22023")
    rpc(db, "add_account_member", {"p_account_id": account, "p_user_id": str(member), "p_spend_limit": 40,
                                   "p_spend_limit_period": "day"}, sub=owner)
    db.one("select * from billing.grant_purchase(null, 300, %s, p_account_id => %s)", (f"t-{account}", account))
    rpc(db, "consume_tokens", {"p_user_id": str(member), "p_amount": 15, "p_account_id": account}, sub=member)
    status, rows = rpc(db, "get_accounts", {}, sub=member, method="GET")
    assert status == 200
    assert [(r["kind"], r["name"], r["role"], r["balance"], r["spend_limit"], r["spent_this_period"],
             r["remaining_limit"]) for r in rows] == [
        ("personal", None, "owner", 0, None, None, None), ("team", "Research", "member", 285, 40, 15, 25)]
    status, summary = rpc(db, "get_billing_summary", {"p_account_id": account}, sub=member, method="GET")
    assert status == 200 and summary["account_id"] == account and summary["balance"] == 285
    assert summary["member"]["remaining_limit"] == 25
    status, history = rpc(db, "get_usage_history", {"p_account_id": account}, sub=member, method="GET")
    assert status == 200 and sum(r["tokens"] for r in history) == 15
    status, grants = rpc(db, "get_grant_history", {"p_account_id": account}, sub=member, method="GET")
    assert status == 200 and [(g["tokens"], g["remaining"]) for g in grants] == [(300, 285)]
    status, body = rpc(db, "get_payment_history", {"p_account_id": account}, sub=member, method="GET")
    assert (status, body["code"]) == (403, "42501")  # payments: owners and admins only
    assert rpc(db, "get_payment_history", {"p_account_id": account}, sub=owner, method="GET") == (200, [])
    assert rpc(db, "get_balance", {"p_user_id": str(owner)}, sub=owner, method="GET") == (200, 70)


def test_idempotency_keys_are_per_member(db):
    owner, a, b = db.user(), db.user(), db.user()
    account = team(db, owner, tokens=100)
    add(db, account, a)
    add(db, account, b)
    with db.service() as c:
        first = consume(c, a, 10, account, key="req-1")
        assert consume(c, a, 10, account, key="req-1") == first[:3] + (True,)
        assert consume(c, b, 10, account, key="req-1")[3] is False  # another member's request
        with pytest.raises(psycopg.Error) as e:
            consume(c, a, 11, account, key="req-1")
    assert sqlstate(e) == "PT409"
    assert db.one("select billing.get_balance(%s, %s)", (owner, account))[0] == 80


def test_one_grant_reference_goes_to_one_account_even_when_raced(db):
    users = [db.user() for _ in range(8)]
    accounts = [team(db, u) for u in users]
    reference = f"race-{uuid.uuid4()}"
    outcomes = [None] * 8
    barrier = threading.Barrier(8)

    def grant(i):
        with connect(db.name) as c:
            barrier.wait()
            try:
                c.execute("select * from billing.grant_purchase(null, 100, %s, p_account_id => %s)",
                          (reference, accounts[i]))
                outcomes[i] = "granted"
            except psycopg.Error as e:
                outcomes[i] = e.sqlstate

    run_threads(8, grant)
    assert sorted(outcomes) == ["PT409"] * 7 + ["granted"]
    assert db.one("select count(*) from billing.token_grants where reference = %s", (reference,))[0] == 1


def test_stripe_checkout_and_subscription_credit_the_team_named_in_metadata():
    from stripe_story import CLOVER, LEGACY, USER, event_json, fresh_story_db

    for version in (CLOVER, LEGACY):
        d = fresh_story_db(f"pg_billing_team_stripe_{version.replace('-', '_').replace('.', '_')}")
        account = d.one("select billing.create_team_account('paying team', %s)", (USER,))[0]
        checkout = event_json(version, "01")
        checkout["data"]["object"]["metadata"]["account_id"] = str(account)
        assert d.deliver(checkout)["effect"]["account_id"] == str(account)
        for prefix in ("05", "06"):
            e = event_json(version, prefix)
            obj = e["data"]["object"]
            meta = obj["metadata"] if prefix == "05" else (
                obj["parent"]["subscription_details"]["metadata"] if version == CLOVER
                else obj["subscription_details"]["metadata"])
            meta["account_id"] = str(account)
            assert d.deliver(e)["outcome"] == "processed", prefix
        assert d.one("select billing.get_balance(%s, %s)", (USER, account))[0] == 101000
        assert d.balance(USER) == 0  # the owner's personal account got nothing
        assert d.one("select account_id from billing.user_subscriptions")[0] == account
        # a refund finds the team's grant through the payment
        assert d.deliver(event_json(version, "12"))["outcome"] == "processed"
        assert d.one("select billing.get_balance(%s, %s)", (USER, account))[0] == 100500
        assert d.ledger_problems() == []

        # a team the paying user does not manage is not credited: the event fails, visibly
        member = uuid.uuid4()
        d.one("select role from billing.add_account_member(%s, %s)", (account, member))
        e = event_json(version, "27")
        e["data"]["object"]["client_reference_id"] = str(member)
        e["data"]["object"]["metadata"].update(user_id=str(member), account_id=str(account))
        r = d.deliver(e)
        assert (r["outcome"], r["error"]["code"]) == ("failed", "PT422"), r
        e["data"]["object"]["metadata"].update(user_id=str(USER), account_id=str(uuid.uuid4()))
        e["data"]["object"]["client_reference_id"] = str(USER)
        e["id"] = e["id"] + "_unknown_account"
        r = d.deliver(e)
        assert (r["outcome"], r["error"]["code"]) == ("failed", "PT422"), r
        assert d.one("select billing.get_balance(%s, %s)", (USER, account))[0] == 100500


def test_member_rows_keep_their_rules_behind_the_functions_back(db):
    """account_members has no table CHECKs (each team consume updates its member's row): domains keep
    role, limit and period valid on any write, add_account_member refuses a limit without a period,
    and verify_ledger reports such a row written behind its back."""
    owner, member = db.user(), db.user()
    account = team(db, owner, tokens=10)
    add(db, account, member, limit=5, period="day")
    for column, value in (("role", "'boss'"), ("spend_limit", "-1"), ("spend_limit_period", "'year'")):
        with db.service() as c:
            with pytest.raises(psycopg.Error) as e:
                c.execute(f"update billing.account_members set {column} = {value} where account_id = %s and user_id = %s",
                          (account, member))
        assert sqlstate(e) == "23514", column
    with pytest.raises(psycopg.Error) as e:
        add(db, account, member, limit=5, period=None)
    assert sqlstate(e) == "22023"
    with db.service() as c:
        c.execute("begin")
        c.execute("update billing.account_members set spend_limit_period = null where account_id = %s and user_id = %s",
                  (account, member))
        problems = c.execute("select invariant from billing.verify_ledger() where account_id = %s", (account,)).fetchall()
        c.execute("rollback")
    assert problems == [("member spend limit without a period",)]
    assert db.one("select role, spend_limit, spend_limit_period from billing.account_members"
                  " where account_id = %s and user_id = %s", (account, member)) == ("member", 5, "day")
    assert db.ledger_problems() == []


def test_service_role_cannot_create_a_team_without_an_owner(db):
    with pytest.raises(psycopg.Error) as e:
        db.one("select billing.create_team_account('no owner')")
    assert sqlstate(e) == "22023"


def test_a_bulk_grant_to_fifty_thousand_accounts_in_one_transaction_succeeds():
    # each grant locks its reference against other accounts; one lock per grant would exhaust the
    # shared lock table (max_locks_per_transaction × connections) long before 50,000. In a database
    # of its own: 50,000 more accounts would slow every later whole-ledger check.
    db = Db("pg_billing_bulk_grants")
    create_database(db.name)
    batch = str(uuid.uuid4())
    granted = db.one("""select count(*) from (
                          select billing.grant_purchase(gen_random_uuid(), 5, %s || '-' || n)
                            from generate_series(1, 50000) n) g""", (batch,))[0]
    assert granted == 50000
    assert db.one("select count(*), sum(tokens) from billing.token_grants where reference like %s",
                  (batch + "-%",)) == (50000, 250000)
