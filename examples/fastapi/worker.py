"""The outbox worker: drains billing.outbox (README "Outbox") and does what each event asks.

- Billing emails over SMTP (purchases, subscription changes, failed payments, refunds, low and
  depleted balances, auto top-up stopped), to the user of a personal account or the owners and
  admins of a team account.
- Auto top-ups: an off-session PaymentIntent through the `stripe` client for each topup.requested,
  with the event's metadata and its request id as Stripe's Idempotency-Key; Stripe's webhook
  (payment_intent.succeeded) then grants the pack, once.

Delivery is at least once: an event whose claim times out (the worker crashed after acting, before
acknowledging) is claimed again. Each email's Message-ID is the event's dedupe key, so a mailbox
or an MTA that deduplicates shows it once, and a retried top-up reuses its Idempotency-Key, so
Stripe creates one PaymentIntent.

Run: PG_BILLING_DSN=... STRIPE_API_KEY=... SMTP_HOST=... python worker.py   (waits on NOTIFY billing_outbox)
"""
import os
import smtplib
from email.message import EmailMessage

import psycopg
import stripe

SUBJECTS = {
    "purchase.completed": "Your tokens have arrived",
    "subscription.changed": "Your subscription changed",
    "payment.failed": "A payment failed",
    "refund.applied": "A refund was applied to your tokens",
    "balance.low": "Your token balance is low",
    "balance.depleted": "You are out of tokens",
    "topup.disabled": "Automatic top-up stopped",
}


class Worker:
    def __init__(self, dsn, stripe_client, smtp_host, smtp_port=25, mail_from="billing@example.com",
                 visibility="1 minute", after_action=None):
        self.dsn, self.stripe, self.smtp = dsn, stripe_client, (smtp_host, smtp_port)
        self.mail_from, self.visibility = mail_from, visibility
        self.after_action = after_action  # tests: called between acting and acknowledging

    def recipients(self, conn, account_id):
        """The user of a personal account; the owners and admins of a team account."""
        return [r[0] for r in conn.execute(
            "select u.email from auth.users u where u.id = %(a)s and u.email is not null"
            " union select u.email from billing.account_members m join auth.users u on u.id = m.user_id"
            " where m.account_id = %(a)s and m.role in ('owner', 'admin') and u.email is not null order by 1",
            {"a": account_id}).fetchall()]

    def send_email(self, conn, event):
        to = self.recipients(conn, event["account_id"])
        if not to:
            return
        msg = EmailMessage()
        msg["From"], msg["To"] = self.mail_from, ", ".join(to)
        msg["Subject"] = SUBJECTS[event["event_type"]]
        msg["Message-ID"] = f"<{event['dedupe_key'].replace(':', '.')}@pg-billing>"
        msg.set_content("\n".join(f"{k}: {v}" for k, v in sorted(event.items())))
        with smtplib.SMTP(*self.smtp) as s:
            s.send_message(msg)

    def top_up(self, event):
        if not event.get("customer"):
            raise RuntimeError("the account has no Stripe customer to charge")
        self.stripe.v1.payment_intents.create(
            {"amount": event["amount"], "currency": event["currency"], "customer": event["customer"],
             "confirm": True, "off_session": True, "metadata": event["metadata"]},
            {"idempotency_key": event["request_id"]})

    def handle(self, conn, event):
        if event["event_type"] == "topup.requested":
            self.top_up(event)
        else:
            self.send_email(conn, event)

    def run_once(self, limit=10):
        """Claims and handles due events until none is left; returns how many were acknowledged."""
        done = 0
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                rows = conn.execute("select id, payload from billing.claim_outbox(%s, %s::interval)",
                                    (limit, self.visibility)).fetchall()
                if not rows:
                    return done
                for event_id, payload in rows:
                    try:
                        self.handle(conn, payload)
                    except Exception as e:  # noqa: BLE001 - any failure: back to the outbox, retried later
                        conn.execute("select billing.nack_outbox(%s, %s, interval '1 minute')", (event_id, repr(e)))
                        continue
                    if self.after_action:
                        self.after_action(payload)
                    conn.execute("select billing.ack_outbox(%s)", ([event_id],))
                    done += 1

    def run_forever(self):
        with psycopg.connect(self.dsn, autocommit=True) as listener:
            listener.execute("listen billing_outbox")
            while True:
                self.run_once()
                for _ in listener.notifies(timeout=60, stop_after=1):
                    pass


if __name__ == "__main__":
    Worker(os.environ["PG_BILLING_DSN"], stripe.StripeClient(os.environ["STRIPE_API_KEY"]),
           os.environ.get("SMTP_HOST", "localhost"), int(os.environ.get("SMTP_PORT", "25")),
           os.environ.get("MAIL_FROM", "billing@example.com")).run_forever()
