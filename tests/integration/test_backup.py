"""pg_dump keeps billing data: every billing table (and identity sequence) is registered with
pg_extension_config_dump, so a dump holds the rows, not just CREATE EXTENSION. Without it a
restored database has an empty ledger."""
import subprocess

from conftest import HOST, PORT, connect
from stripe_story import CLOVER, USER, event, fresh_story_db

TABLES = ["plans", "token_packs", "balances", "token_grants", "token_usage", "token_reservations",
          "payment_transactions", "stripe_customers", "user_subscriptions", "settings", "stripe_payments",
          "stripe_refunds", "stripe_disputes", "grant_purchases", "purchase_payments", "webhook_secrets",
          "promo_codes", "promo_redemptions"]


def contents(d):
    return {t: d.all(f"select * from billing.{t} order by 1") for t in TABLES}


def test_dump_and_restore_keep_every_billing_row(tmp_path):
    d = fresh_story_db("pg_billing_backup_source")
    for prefix in ["01", "12", "30", "04", "05", "06", "06b", "28", "27"]:
        d.deliver(event(CLOVER, prefix))
    with d.service() as c:
        c.execute("select billing.consume_tokens(%s, 7, 'k-1', '{\"model\": \"m\"}')", (USER,))
        c.execute("select billing.reserve_tokens(%s, 5, 'r-1')", (USER,))
        c.execute("insert into billing.webhook_secrets (secret) values ('whsec_kept')")
        c.execute("insert into billing.promo_codes (code, tokens) values ('KEPT', 5)")
    before = contents(d)
    assert [t for t in TABLES if not before[t] and t != "promo_redemptions"] == [], "every table holds a row to keep"

    dump = tmp_path / "billing.dump"
    subprocess.run(["/usr/lib/postgresql/15/bin/pg_dump", "-h", HOST, "-p", str(PORT), "-U", "postgres", "-Fc",
                    "-f", str(dump), d.name], check=True)
    with connect("postgres") as c:
        c.execute("drop database if exists pg_billing_backup_restored with (force)")
        c.execute("create database pg_billing_restored_tmp")
        c.execute("alter database pg_billing_restored_tmp rename to pg_billing_backup_restored")
    subprocess.run(["/usr/lib/postgresql/15/bin/pg_restore", "-h", HOST, "-p", str(PORT), "-U", "postgres",
                    "--exit-on-error", "-d", "pg_billing_backup_restored", str(dump)], check=True)

    restored = type(d)("pg_billing_backup_restored")
    assert contents(restored) == before
    assert restored.ledger_problems() == []
    # identity sequences came along: new rows do not collide with restored ones
    restored.grant(USER, 3, reference="after-restore")
    assert restored.balance(USER) == d.balance(USER) + 3
