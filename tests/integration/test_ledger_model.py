"""Randomized operations against a model of the ledger, crossing the consume fast path (head grant
in the balance row) and every slow path, with verify_ledger() after each step."""
import datetime as dt
import random

import psycopg

NOW = lambda: dt.datetime.now(dt.timezone.utc)  # noqa: E731


def test_random_operations_match_the_model(db):
    rng = random.Random(1124)
    user = db.user()
    grants = {}     # id -> [remaining, expires_at or None]  (model)
    holds = {}      # reservation id -> {grant_id: tokens}
    usage_seen = 0

    def model_balance():
        now = NOW()
        return sum(r for r, exp in grants.values() if exp is None or exp > now + dt.timedelta(seconds=1))

    def burn(amount):
        now = NOW()
        order = sorted((g for g, (r, exp) in grants.items() if r > 0 and (exp is None or exp > now)),
                       key=lambda g: (grants[g][1] or dt.datetime.max.replace(tzinfo=dt.timezone.utc), g))
        drawn = []
        for g in order:
            take = min(amount, grants[g][0])
            if take:
                grants[g][0] -= take
                drawn.append([g, take])
                amount -= take
            if amount == 0:
                break
        return drawn

    with db.service() as c:
        for step in range(400):
            op = rng.choice(["grant", "grant_exp", "consume", "consume", "consume", "consume_big", "key",
                             "reserve", "commit", "release"])
            before = model_balance()
            if op in ("grant", "grant_exp"):
                tokens = rng.randint(1, 60)
                exp = NOW() + dt.timedelta(hours=rng.randint(1, 48)) if op == "grant_exp" else None
                gid = c.execute("select grant_id from billing.grant_purchase(%s, %s, %s, 'promo', %s)",
                                (user, tokens, f"m-{step}", exp)).fetchone()[0]
                grants[gid] = [tokens, exp]
            elif op in ("consume", "consume_big", "key"):
                amount = rng.randint(1, 5) if op != "consume_big" else rng.randint(20, 120)
                key = f"k-{step}" if op == "key" else None
                try:
                    row = c.execute("select usage_id, balance_after from billing.consume_tokens(%s, %s, %s)",
                                    (user, amount, key)).fetchone()
                    assert amount <= before, (step, amount, before)
                    drawn = c.execute("select drawn_from from billing.token_usage where id = %s", (row[0],)).fetchone()[0]
                    assert drawn == burn(amount), (step, drawn)
                    usage_seen += 1
                    if key:  # a replay returns the same row and charges nothing
                        again = c.execute("select usage_id, replayed from billing.consume_tokens(%s, %s, %s)",
                                          (user, amount, key)).fetchone()
                        assert again == (row[0], True)
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402" and amount > before, (step, e, amount, before)
            elif op == "reserve":
                amount = rng.randint(1, 30)
                try:
                    rid = c.execute("select reservation_id from billing.reserve_tokens(%s, %s, %s)",
                                    (user, amount, f"r-{step}")).fetchone()[0]
                    holds[rid] = burn(amount)
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402" and amount > before, (step, e)
            elif op in ("commit", "release") and holds:
                rid = rng.choice(list(holds))
                drawn = holds.pop(rid)
                total = sum(t for _, t in drawn)
                actual = rng.randint(0, total) if op == "commit" else 0
                if op == "commit":
                    c.execute("select billing.commit_reservation(%s, %s)", (rid, actual))
                else:
                    c.execute("select billing.release_reservation(%s)", (rid,))
                left = actual
                for g, t in drawn:  # the soonest-expiring part is charged, the rest goes back
                    charged = min(left, t)
                    left -= charged
                    grants[g][0] += t - charged
            assert c.execute("select billing.get_balance(%s)", (user,)).fetchone()[0] == model_balance(), (step, op)
            problems = c.execute("select * from billing.verify_ledger() where account_id = %s", (user,)).fetchall()
            assert problems == [], (step, op, problems)
    assert usage_seen > 100
