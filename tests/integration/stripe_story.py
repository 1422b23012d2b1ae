"""The Stripe fixture stories (tests/fixtures/stripe) as signed webhook deliveries to a real database.

Every event is moved in time so the story began a day ago (its period grants are current), signed
with the official `stripe` library's scheme, and delivered through billing.handle_stripe_webhook.
"""
import json
import pathlib
import time
import uuid

import stripe

from conftest import Db, connect, create_database

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "stripe" / "events"
CLOVER, LEGACY = "2025-10-29.clover", "2024-06-20"
VERSIONS = [CLOVER, LEGACY]
USER = uuid.UUID("5a1b2c3d-0000-4000-8000-00000000000a")
SECRET = "whsec_story_secret"
STORY_START = 1763900000
# The story happened in late 2025; move it so it started a day ago, so period grants are current.
SHIFT = int(time.time()) - 86400 - STORY_START
CATALOG = [
    "insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency) values ('price_Pack1000', 1000, 999, 'usd')",
    "insert into billing.plans (code, stripe_price_id, tokens_per_period, price_amount, currency, rollover)"
    " values ('pro', 'price_ProMonthly', 100000, 2000, 'usd', false), ('starter', 'price_StarterMonthly', 30000, 1000, 'usd', false)",
]
TEST_MODE = ("insert into billing.settings (stripe_livemode) values (false)"
             " on conflict (id) do update set stripe_livemode = excluded.stripe_livemode")


def shifted(value, shift=SHIFT):
    if isinstance(value, dict):
        return {k: shifted(v, shift) for k, v in value.items()}
    if isinstance(value, list):
        return [shifted(v, shift) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and 1_700_000_000 <= value <= 1_800_000_000:
        return value + shift
    return value


def names(version):
    return sorted(p.name.split(".json")[0] for p in (FIXTURES / version).glob("*.json"))


def event_json(version, prefix, shift=SHIFT):
    """The fixture whose name starts with `prefix` (e.g. "06" or "06b"), as a dict moved in time."""
    matches = [p for p in (FIXTURES / version).glob(f"{prefix}_*.json")]
    assert len(matches) == 1, (version, prefix, matches)
    return shifted(json.loads(matches[0].read_text()), shift)


def event(version, prefix, shift=SHIFT):
    return json.dumps(event_json(version, prefix, shift), separators=(",", ":"))


def sign(payload, secret=SECRET):
    ts = int(time.time())
    return f"t={ts},v1={stripe.WebhookSignature._compute_signature(f'{ts}.{payload}', secret)}"


class StoryDb(Db):
    def deliver(self, payload, secret=SECRET, with_secret=True):
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        args = (payload, sign(payload, secret)) + ((secret,) if with_secret else ())
        fn = "billing.handle_stripe_webhook(%s, %s, %s)" if with_secret else "billing.handle_stripe_webhook(%s, %s)"
        with self.service() as c:
            return c.execute(f"select {fn}", args).fetchone()[0]

    def deliver_fixture(self, version, prefix, **kw):
        return self.deliver(event(version, prefix), **kw)

    def subscription(self, sub="sub_TestProA"):
        return self.one("select status, cancel_at_period_end, p.code, current_period_end"
                        " from billing.user_subscriptions s left join billing.plans p on p.id = s.plan_id"
                        " where stripe_subscription_id = %s", (sub,))

    def grant_row(self, reference, columns="tokens, remaining, frozen, expired, clawed_back, debt_incurred"):
        return self.one(f"select {columns} from billing.token_grants where reference = %s", (reference,))

    def period_grants(self, sub):
        return self.all("select tokens, remaining, expires_at from billing.token_grants"
                        " where reference like %s order by expires_at", (sub + "@%",))

    def money(self, user=USER):
        return self.one("select spendable, held, debt from billing.balances where account_id = %s", (user,)) or (0, 0, 0)

    def status(self, event_id):
        return self.one("select status from billing.payment_transactions where stripe_event_id = %s", (event_id,))[0]

    def final_state(self):
        """What a story leaves behind, independent of grant ids and arrival order."""
        return {
            "balances": self.all("select account_id, spendable, held, debt from billing.balances order by 1"),
            "grants": self.all("select kind, reference, tokens, remaining, frozen, expired, clawed_back, debt_incurred,"
                               " debt_repaid, freeze_target, expires_at from billing.token_grants order by kind, reference"),
            "subscriptions": self.all("select stripe_subscription_id, account_id, plan_id, status, current_period_start,"
                                      " current_period_end, cancel_at_period_end, canceled_at, last_event_id"
                                      " from billing.user_subscriptions order by 1"),
            "customers": self.all("select account_id, stripe_customer_id from billing.stripe_customers order by 1"),
            "purchases": self.all("select purchase_id, kind, allowance, amount from billing.grant_purchases order by 1"),
            "refunds": self.all("select refund_id, amount, status from billing.stripe_refunds order by 1"),
            "disputes": self.all("select dispute_id, amount, status from billing.stripe_disputes order by 1"),
            "inbox": self.all("select stripe_event_id, status from billing.payment_transactions order by 1"),
        }


STORY_TEMPLATE = "pg_billing_story_template"
_template_ready = False


def fresh_story_db(name, catalog=True, test_mode=True):
    """A new database with the user and (by default) the catalog, in test mode."""
    global _template_ready
    if catalog and test_mode:
        if not _template_ready:
            create_database(STORY_TEMPLATE)
            with connect(STORY_TEMPLATE) as c:
                c.execute("insert into auth.users (id, email) values (%s, 'story@example.com')", (USER,))
                for sql in CATALOG + [TEST_MODE]:
                    c.execute(sql)
            _template_ready = True
        with connect("postgres") as c:
            c.execute(f'drop database if exists "{name}" with (force)')
            c.execute(f'create database "{name}" template "{STORY_TEMPLATE}"')
        return StoryDb(name)
    create_database(name)
    d = StoryDb(name)
    with d.service() as c:
        c.execute("insert into auth.users (id, email) values (%s, 'story@example.com')", (USER,))
        if catalog:
            for sql in CATALOG:
                c.execute(sql)
        if test_mode:
            c.execute(TEST_MODE)
    return d
