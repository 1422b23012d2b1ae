"""Usage rollups (docs/design.md "Usage history at any size"): get_usage_history from the rollups plus
the rows since equals a direct aggregate of the rows, for any range, bucket and grouping; the
watermark never passes a row a running transaction may still commit; verify_ledger checks the
rollups."""
import datetime as dt
import json
import random
import threading

import psycopg
import pytest

from conftest import Db, connect, create_database

UTC = dt.timezone.utc


def history(d, user, p_from, p_to, p_bucket, p_group_by=None, account=None):
    """get_usage_history as the signed-in user calls it (row-level security applies)."""
    with d.as_role("authenticated", sub=user, read_only=True) as c:
        return c.execute("select * from billing.get_usage_history(%s, %s, %s, %s, %s)",
                         (p_from, p_to, p_bucket, p_group_by, account)).fetchall()


def expected(d, account, p_from, p_to, bucket, group_by, member=None):
    """The same numbers straight from token_usage (as the service, then filtered like RLS)."""
    key = "null::text" if group_by is None else "u.metadata ->> %(g)s"
    return d.all(
        f"select date_trunc(%(b)s, u.created_at at time zone 'UTC') at time zone 'UTC', {key}, sum(u.tokens)::bigint,"
        " count(*)::bigint, coalesce(sum(billing_internal.llm_count(u.metadata, 'input_tokens')), 0)::bigint,"
        " coalesce(sum(billing_internal.llm_count(u.metadata, 'output_tokens')), 0)::bigint,"
        " coalesce(sum(billing_internal.llm_count(u.metadata, 'cached_input_tokens')), 0)::bigint"
        " from billing.token_usage u where u.account_id = %(a)s and u.created_at >= %(f)s and u.created_at < %(t)s"
        " and (%(m)s::uuid is null or u.user_id = %(m)s) group by 1, 2 order by 1, 2",
        {"b": bucket, "g": group_by, "a": account, "f": p_from, "t": p_to, "m": member})


def maintenance(d, times=2):
    for _ in range(times):  # the first run takes a watermark, the next rolls up to it
        d.one("select billing.run_maintenance()")


@pytest.fixture(scope="module")
def story():
    """A user with ~3,000 usage rows spread over 45 days, in three models, some LLM rows; rolled up;
    then more rows since (the live tail)."""
    d = Db("pg_billing_rollups")
    create_database(d.name)
    user = d.user()
    d.grant(user, 10 ** 9)
    now = dt.datetime.now(UTC)
    rng = random.Random(7)
    with d.service() as c:
        c.execute("insert into billing.model_prices values ('m-llm', 1000000, 2000000, 500000, now() - interval '1 year')")
        for i in range(3000):
            if i % 5 == 0:
                c.execute("select billing.record_llm_usage(%s, 'm-llm', %s, %s, %s)",
                          (user, rng.randint(1, 900), rng.randint(0, 300), 0))
            else:
                c.execute("select billing.consume_tokens(%s, %s, null, %s)",
                          (user, rng.randint(1, 50), json.dumps({"model": rng.choice(["a", "b", None])})))
        # spread them over the past 45 days, to the microsecond (before any rollup exists)
        c.execute("update billing.token_usage set created_at = now() - (random() * interval '45 days')"
                  " where account_id = %s", (user,))
        for _ in range(20):  # and some in this hour, before the watermark
            c.execute("select billing.consume_tokens(%s, 2, null, '{\"model\": \"b\"}')", (user,))
    maintenance(d)
    assert d.one("select count(*) from billing.usage_rollups")[0] > 0
    assert d.one("select count(*) from billing.usage_rollups_daily")[0] > 40  # a row per day and model
    with d.service() as c:  # the tail: rows after the watermark
        for _ in range(50):
            c.execute("select billing.consume_tokens(%s, 3, null, '{\"model\": \"a\"}')", (user,))
    return d, user, now


@pytest.mark.parametrize("bucket", ["hour", "day", "month"])
@pytest.mark.parametrize("group_by", [None, "model"])
def test_history_from_rollups_equals_the_rows(story, bucket, group_by):
    d, user, now = story
    rng = random.Random(f"{bucket}{group_by}")
    ranges = [(now - dt.timedelta(days=30), now + dt.timedelta(minutes=5)),  # the default window and the tail
              (now - dt.timedelta(days=400), now + dt.timedelta(days=1))]
    for _ in range(6):  # edges anywhere, to the microsecond
        a = now - dt.timedelta(seconds=rng.uniform(0, 46 * 86400))
        b = a + dt.timedelta(seconds=rng.uniform(1, 20 * 86400))
        ranges.append((a, b))
    ranges.append((now - dt.timedelta(hours=3, minutes=17), now - dt.timedelta(hours=3, minutes=2)))  # within an hour
    top = now.replace(minute=0, second=0, microsecond=0)  # ranges ending in the hour the watermark is in
    ranges += [(top, now + dt.timedelta(minutes=1)), (top - dt.timedelta(minutes=1), top + dt.timedelta(hours=1)),
               (now - dt.timedelta(days=2), now), (top + dt.timedelta(seconds=1), now + dt.timedelta(seconds=1))]
    for p_from, p_to in ranges:
        got = history(d, user, p_from=p_from, p_to=p_to, p_bucket=bucket, p_group_by=group_by)
        assert got == expected(d, user, p_from, p_to, bucket, group_by), (p_from, p_to)
    assert d.ledger_problems() == []


def test_grouping_by_another_key_reads_the_rows(story):
    d, user, now = story
    with d.service() as c:
        c.execute("select billing.consume_tokens(%s, 9, null, '{\"feature\": \"chat\"}')", (user,))
    p_from, p_to = now - dt.timedelta(days=40), now + dt.timedelta(hours=1)
    assert history(d, user, p_from=p_from, p_to=p_to, p_bucket="day", p_group_by="feature") == \
        expected(d, user, p_from, p_to, "day", "feature")


def test_members_see_their_own_rolled_up_usage_and_owners_everyones():
    d = Db("pg_billing_rollups_team")
    create_database(d.name)
    owner, member = d.user(), d.user()
    with d.service() as c:
        team = c.execute("select billing.create_team_account('t', %s)", (owner,)).fetchone()[0]
        c.execute("select billing.add_account_member(%s, %s)", (team, member))
        c.execute("select billing.grant_purchase(null, 100000, 'fund', p_account_id => %s)", (team,))
        for u, n in [(owner, 30), (member, 20)]:
            for _ in range(n):
                c.execute("select billing.consume_tokens(%s, 2, null, '{\"model\": \"x\"}', %s)", (u, team))
        c.execute("update billing.token_usage set created_at = created_at - interval '3 days'")
    maintenance(d)
    now = dt.datetime.now(UTC)
    window = dict(p_from=now - dt.timedelta(days=10), p_to=now, p_bucket="day", p_group_by="model")
    assert [r[2:4] for r in history(d, member, account=team, **window)] == [(40, 20)]
    assert [r[2:4] for r in history(d, owner, account=team, **window)] == [(100, 50)]
    assert d.ledger_problems() == []


def test_the_watermark_never_passes_a_row_an_open_transaction_may_commit():
    d = Db("pg_billing_rollups_watermark")
    create_database(d.name)
    user, other = d.user(), d.user()
    d.grant(user, 1000)
    d.grant(other, 1000)
    maintenance(d)
    open_tx = connect(d.name, autocommit=False)
    open_tx.execute("select billing.consume_tokens(%s, 7)", (user,))  # written, not committed
    with d.service() as c:
        c.execute("select billing.consume_tokens(%s, 5)", (other,))  # another account: it does not wait
    maintenance(d, times=3)  # runs while the row is uncommitted: they must not roll up past it
    open_tx.commit()
    open_tx.close()
    maintenance(d, times=2)
    now = dt.datetime.now(UTC)
    assert d.one("select sum(tokens) from billing.usage_rollups")[0] == 12
    # a range whose whole hours include this one: read from the rollups, the 7 must be there
    assert sum(r[2] for r in history(d, user, p_from=now - dt.timedelta(days=1), p_to=now + dt.timedelta(days=1),
                                     p_bucket="day")) == 7
    assert d.ledger_problems() == []
    # and verify_ledger notices a rollup that disagrees with the rows
    with d.service() as c:
        c.execute("update billing.usage_rollups set tokens = tokens + 1")
    assert {p[0] for p in d.ledger_problems()} == {"usage rollup differs from the usage rows",
                                                   "daily usage rollup differs from its hours"}
    with d.service() as c:
        c.execute("update billing.usage_rollups set tokens = tokens - 1")
        c.execute("update billing.usage_rollups_daily set requests = requests + 1")
    assert {p[0] for p in d.ledger_problems()} == {"daily usage rollup differs from its hours"}


def test_rollups_do_not_block_consumes(story):
    """A maintenance run and consumes of the same account at once: neither waits for the other."""
    d, user, _ = story
    errors = []

    def consume():
        try:
            with connect(d.name) as c:
                for _ in range(50):
                    c.execute("select billing.consume_tokens(%s, 1)", (user,))
        except psycopg.Error as e:
            errors.append(e)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    maintenance(d, times=3)
    for t in threads:
        t.join()
    assert errors == []
    maintenance(d)
    assert d.ledger_problems() == []
