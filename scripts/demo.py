"""The `make run` demo: what pg_billing does, step by step, against the local cluster."""
import argparse
import hashlib
import hmac
import json
import pathlib
import time

import psycopg

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "stripe" / "events" / "2025-10-29.clover"
USER = "5a1b2c3d-0000-4000-8000-00000000000a"  # the fixture story's user
SECRET = "whsec_demo_secret"


def step(title):
    print(f"\n== {title}")


def show(conn, sql, params=None):
    print(f"   sql> {sql}")
    try:
        cur = conn.execute(sql, params)
        if cur.description is None:
            print(f"        {cur.statusmessage}")
            return
        cols = [d.name for d in cur.description]
        for row in cur.fetchall():
            print("        " + ", ".join(f"{c}={v}" for c, v in zip(cols, row)))
    except psycopg.Error as e:
        print(f"        ERROR {e.sqlstate}: {e.diag.message_primary}")
        if e.diag.message_detail:
            print(f"        DETAIL: {e.diag.message_detail}")


def story_event(name: str) -> str:
    """A fixture event, moved in time so its story began a day ago (as the tests do)."""
    shift = int(time.time()) - 86400 - 1763900000

    def move(v):
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        if isinstance(v, list):
            return [move(x) for x in v]
        if isinstance(v, int) and not isinstance(v, bool) and 1_700_000_000 <= v <= 1_800_000_000:
            return v + shift
        return v
    return json.dumps(move(json.loads((FIXTURES / name).read_text())))


def signed(payload: str, secret: str) -> str:
    t = int(time.time())
    sig = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dbname", required=True)
    a = ap.parse_args()
    conn = psycopg.connect(host=a.host, port=a.port, dbname=a.dbname, user="postgres", autocommit=True)

    step("Catalog: a DBA adds a token pack and a plan with plain INSERTs")
    conn.execute("insert into billing.token_packs (stripe_price_id, tokens, name, price_amount, currency)"
                 " values ('price_Pack1000', 1000, '1,000 tokens', 999, 'usd')")
    conn.execute("insert into billing.plans (code, name, stripe_price_id, tokens_per_period, price_amount)"
                 " values ('pro', 'Pro', 'price_ProMonthly', 100000, 2000),"
                 " ('starter', 'Starter', 'price_StarterMonthly', 30000, 1000)")
    show(conn, "select stripe_price_id, tokens, price_amount, currency from billing.token_packs")
    conn.execute("insert into auth.users (id, email) values (%s, 'demo@example.com')", (USER,))

    step("Grant a purchase (idempotent on kind + reference): the second call grants nothing")
    show(conn, "select * from billing.grant_purchase(%s, 500, 'manual-demo-1', 'admin')", (USER,))
    show(conn, "select * from billing.grant_purchase(%s, 500, 'manual-demo-1', 'admin')", (USER,))

    step("Consume with an idempotency key, then replay it")
    show(conn, "select * from billing.consume_tokens(%s, 120, 'chat-req-1', '{\"model\":\"gpt-4o\"}')", (USER,))
    show(conn, "select * from billing.consume_tokens(%s, 120, 'chat-req-1')", (USER,))

    step("Reserve for a streaming reply, commit what was used (the rest is released)")
    show(conn, "select * from billing.reserve_tokens(%s, 300, 'stream-1')", (USER,))
    show(conn, "select * from billing.commit_reservation("
               "(select id from billing.token_reservations where idempotency_key = 'stream-1'), 180)")

    step("Run out of tokens: SQLSTATE PT402 (PostgREST answers HTTP 402)")
    show(conn, "select * from billing.consume_tokens(%s, 10000)", (USER,))

    step("Stripe: this endpoint receives test-mode events (live mode is the default)")
    show(conn, "insert into billing.settings (stripe_livemode) values (false)"
               " on conflict (id) do update set stripe_livemode = excluded.stripe_livemode")

    def deliver(name, what="-> 'effect'"):
        payload = story_event(name)
        show(conn, f"select billing.handle_stripe_webhook(%s, %s, %s) {what}", (payload, signed(payload, SECRET), SECRET))

    step("charge.refunded for 500 of 999 cents arrives before its Checkout Session: recorded, waiting")
    deliver("12_charge_refunded_partial.json")

    step("The signed checkout.session.completed, delivered twice: granted once, the early refund applied at once")
    deliver("01_checkout_pack_paid.json", "")
    deliver("01_checkout_pack_paid.json", "->> 'outcome'")
    show(conn, "select kind, tokens, remaining, clawed_back from billing.token_grants where account_id = %s order by id", (USER,))

    step("A tampered delivery is refused (PT400) and records nothing")
    payload = story_event("01_checkout_pack_paid.json")
    show(conn, "select billing.handle_stripe_webhook(%s, %s, %s)",
         (payload.replace("999", "1"), signed(payload, SECRET), SECRET))

    step("A session whose amount does not match the catalog (quantity 10 for 9.99) is kept as failed")
    deliver("36_checkout_amount_mismatch.json", "")
    show(conn, "select stripe_event_id, status, attempts, error ->> 'message' as error from billing.payment_transactions"
               " where status = 'failed'")

    step("A subscription period: Starter, upgraded to Pro, downgraded for $0, upgraded again: one Pro allowance")
    for name in ["18_plan_subscription_created.json", "19_plan_invoice_create.json", "21_plan_invoice_upgrade.json",
                 "22_plan_invoice_downgrade_zero.json", "23_plan_invoice_upgrade_again.json"]:
        deliver(name, "-> 'effect' ->> 'action'")
    show(conn, "select reference, tokens, expires_at from billing.token_grants where kind = 'subscription'")
    show(conn, "select billing.get_balance(%s)", (USER,))

    step("A team account: accounts pay, users spend. The owner buys; a member spends within a daily limit")
    member = "5a1b2c3d-0000-4000-8000-00000000000b"
    conn.execute("insert into auth.users (id, email) values (%s, 'member@example.com')", (member,))
    team = conn.execute("select billing.create_team_account('Demo team', %s)", (USER,)).fetchone()[0]
    show(conn, "select account_id, user_id, role, spend_limit, spend_limit_period"
               " from billing.add_account_member(%s, %s, 'member', 200, 'day')", (team, member))
    show(conn, "select * from billing.grant_purchase(null, 1000, 'team-demo-1', p_account_id => %s)", (team,))
    show(conn, "select * from billing.consume_tokens(%s, 150, 'team-req-1', '{}', %s)", (member, team))
    step("Over the member's limit: PT402 with the member's limit in DETAIL, the team's balance untouched")
    show(conn, "select * from billing.consume_tokens(%s, 100, null, '{}', %s)", (member, team))
    show(conn, "select billing.get_balance(%s, %s) as team_balance", (USER, team))
    step("Removed, the member spends nothing more (42501)")
    show(conn, "select billing.remove_account_member(%s, %s)", (team, member))
    show(conn, "select * from billing.consume_tokens(%s, 1, null, '{}', %s)", (member, team))

    step("The ledger check: no rows means every invariant holds")
    show(conn, "select * from billing.verify_ledger()")
    rows = conn.execute("select count(*) from billing.verify_ledger()").fetchone()[0]
    print(f"        ({rows} violations)")


if __name__ == "__main__":
    main()
