"""The outbox worker end to end: a real SMTP server on loopback (aiosmtpd), Stripe's HTTP recorded,
the resulting webhook delivered signed to the backend."""
import email
import email.policy
import json
import socket
import time
import uuid

import pytest
import stripe
from aiosmtpd.controller import Controller

from support import HOST, PORT, post_webhook, story_event
from test_app import balance, new_user
from worker import Worker


@pytest.fixture
def dsn(database):
    return f"host={HOST} port={PORT} dbname={database} user=postgres"


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    with socket.socket() as s:  # a free port (aiosmtpd needs one it can connect to, not 0)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


class Crash(Exception):
    pass


def test_billing_emails_arrive_once_each_even_after_a_crash_between_send_and_ack(http, db, smtp, stripe_http, dsn):
    inbox, port = smtp
    user = new_user(db)
    db.execute("insert into billing.account_settings (account_id, low_balance_threshold) values (%s, 500)", (user,))
    checkout = json.loads(story_event("01", user, **{
        "id": f"evt_{uuid.uuid4().hex}", "data.object.id": f"cs_{uuid.uuid4().hex}",
        "data.object.payment_intent": f"pi_{uuid.uuid4().hex}"}))
    assert post_webhook(http, json.dumps(checkout)).json()["outcome"] == "processed"
    db.execute("select billing.consume_tokens(%s, 600)", (user,))  # 1000 -> 400: below 500
    mine = {r[0]: r[1] for r in db.execute("select dedupe_key, event_type from billing.outbox where account_id = %s",
                                           (user,)).fetchall()}
    assert sorted(mine.values()) == ["balance.low", "purchase.completed"]

    crashed = []

    def crash_once(event):  # the worker sent the email, then died before acknowledging it
        if event["account_id"] == str(user) and not crashed:
            crashed.append(event["dedupe_key"])
            raise Crash()

    client = stripe.StripeClient("sk_test_example", http_client=stripe_http)
    with pytest.raises(Crash):
        Worker(dsn, client, "127.0.0.1", port, visibility="1 second", after_action=crash_once).run_once()
    time.sleep(1.2)  # the claim times out; a new worker picks the event up again
    Worker(dsn, client, "127.0.0.1", port, visibility="1 second").run_once()

    to_user = [m for m in inbox.messages if m["To"] == f"{user}@example.com"]
    ids = [m["Message-ID"].strip() for m in to_user]  # a long header is folded
    expected = {f"<{key.replace(':', '.')}@pg-billing>" for key in mine}
    assert set(ids) == expected  # each event's email arrived, with its dedupe key as Message-ID
    assert sorted(ids).count(f"<{crashed[0].replace(':', '.')}@pg-billing>") == 2  # at least once: the crash resent it
    assert len(ids) == len(expected) + 1
    assert {m["Subject"] for m in to_user} == {"Your tokens have arrived", "Your token balance is low"}
    assert db.execute("select count(*) from billing.outbox where account_id = %s and acked_at is null",
                      (user,)).fetchone()[0] == 0


def test_auto_top_up_charges_off_session_and_the_webhook_grants_once(http, db, smtp, stripe_http, dsn):
    _, port = smtp
    user = new_user(db)
    customer = f"cus_{user.hex[:12]}"
    db.execute("insert into billing.stripe_customers (account_id, stripe_customer_id) values (%s, %s)", (user, customer))
    db.execute("insert into billing.account_settings (account_id, auto_topup_price_id, auto_topup_threshold,"
               " auto_topup_cooldown) values (%s, 'price_Pack1000', 500, '1 hour')", (user,))
    db.execute("select billing.grant_purchase(%s, 600, %s)", (user, f"start-{user}"))
    db.execute("select billing.consume_tokens(%s, 200)", (user,))  # 400: below 500
    request = db.execute("select payload from billing.outbox where account_id = %s and event_type = 'topup.requested'",
                         (user,)).fetchone()[0]

    n = len(stripe_http.requests)
    Worker(dsn, stripe.StripeClient("sk_test_example", http_client=stripe_http), "127.0.0.1", port).run_once()
    calls = [(r, h) for r, h in zip(stripe_http.requests[n:], stripe_http.headers[n:]) if r[1].endswith("/v1/payment_intents")]
    assert len(calls) == 1
    (method, _, params), headers = calls[0]
    assert params == {"amount": "999", "currency": "usd", "customer": customer, "confirm": "true", "off_session": "true",
                      "metadata[pg_billing_topup]": request["request_id"], "metadata[price_id]": "price_Pack1000",
                      "metadata[quantity]": "1", "metadata[user_id]": str(user)}
    assert headers["Idempotency-Key"] == request["request_id"]

    # Stripe confirms the payment: the signed webhook grants the pack, once however often it arrives
    intent = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "payment_intent.succeeded",
              "created": int(time.time()), "livemode": False, "api_version": "2025-10-29.clover",
              "data": {"object": {"id": f"pi_{uuid.uuid4().hex[:14]}", "object": "payment_intent", "amount": 999,
                                  "amount_received": 999, "currency": "usd", "customer": customer, "status": "succeeded",
                                  "created": int(time.time()),
                                  "metadata": {k.split("[")[1][:-1]: v for k, v in params.items() if k.startswith("metadata[")}}}}
    assert post_webhook(http, json.dumps(intent)).json()["effect"]["action"] == "granted"
    assert post_webhook(http, json.dumps(intent)).json()["outcome"] == "duplicate"
    assert balance(db, user) == 1400
    assert db.execute("select count(*) from billing.verify_ledger()").fetchone()[0] == 0
