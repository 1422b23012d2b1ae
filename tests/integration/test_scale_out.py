"""The schema can be distributed by account (docs/scale-out.md). No Citus here, so this checks, from
the catalog, the rules Citus enforces when tables are distributed: a distributed table's primary and
unique keys include its distribution column, a foreign key between distributed tables joins their
distribution columns (co-located tables), and no reference table points into a distributed one.
A table added later fails the first test until it is classified."""
import pytest

# Each table's class and distribution column (None for reference tables, copied to every node).
PER_ACCOUNT = {  # distributed by the account, co-located: one account's ledger lives on one node
    "accounts": "id", "account_members": "account_id", "balances": "account_id", "token_grants": "account_id",
    "token_usage": "account_id", "token_reservations": "account_id", "grant_purchases": "account_id",
    "promo_redemptions": "account_id", "account_settings": "account_id",
    "outbox": "account_id", "usage_rollups": "account_id", "usage_rollups_daily": "account_id",
    "alert_checks": "account_id",
}
STRIPE_KEYED = {  # distributed by the Stripe id they are looked up by
    "payment_transactions": "stripe_event_id", "user_subscriptions": "stripe_subscription_id",
    "stripe_payments": "payment_key", "stripe_refunds": "refund_id", "stripe_disputes": "dispute_id",
    "purchase_payments": "purchase_id",
}
REFERENCE = {"plans", "token_packs", "promo_codes", "settings", "webhook_secrets", "stripe_customers", "rate_limits",
             "model_prices", "usage_rollup_state"}
DISTRIBUTED = {**PER_ACCOUNT, **STRIPE_KEYED}


def test_every_table_is_classified(db):
    tables = {r[0] for r in db.all("select relname from pg_class where relnamespace = 'billing'::regnamespace"
                                   " and relkind in ('r', 'p')")}
    assert tables == set(DISTRIBUTED) | REFERENCE
    assert not set(DISTRIBUTED) & REFERENCE


def test_per_account_tables_share_one_distribution_type(db):
    types = {t: db.one("select format_type(atttypid, atttypmod) from pg_attribute where attrelid = %s::regclass"
                       " and attname = %s", (f"billing.{t}", c))[0] for t, c in PER_ACCOUNT.items()}
    assert set(types.values()) == {"uuid"}, types


@pytest.mark.parametrize("table", sorted(DISTRIBUTED))
def test_unique_keys_include_the_distribution_column(db, table):
    column = DISTRIBUTED[table]
    uniques = db.all(
        "select i.indexrelid::regclass::text, array(select a.attname from unnest(i.indkey) k"
        "  join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k)::text[]"
        " from pg_index i where i.indrelid = %s::regclass and i.indisunique", (f"billing.{table}",))
    assert uniques, table  # at least the primary key
    for index, columns in uniques:
        assert column in columns, (index, columns)


def test_foreign_keys_join_co_located_tables_or_point_at_reference_tables(db):
    fks = db.all(
        "select c.conname, c.conrelid::regclass::text, c.confrelid::regclass::text,"
        " array(select a.attname from unnest(c.conkey) with ordinality k(n, i) join pg_attribute a"
        "  on a.attrelid = c.conrelid and a.attnum = k.n order by k.i)::text[],"
        " array(select a.attname from unnest(c.confkey) with ordinality k(n, i) join pg_attribute a"
        "  on a.attrelid = c.confrelid and a.attnum = k.n order by k.i)::text[]"
        " from pg_constraint c where c.contype = 'f' and c.connamespace = 'billing'::regnamespace")
    assert fks
    for name, source, target, columns, target_columns in fks:
        source, target = source.removeprefix("billing."), target.removeprefix("billing.")
        if target in REFERENCE:
            continue  # any table may point at a reference table
        assert source in PER_ACCOUNT and target in PER_ACCOUNT, name  # only co-located tables
        pairs = dict(zip(columns, target_columns))
        assert pairs.get(PER_ACCOUNT[source]) == PER_ACCOUNT[target], (name, pairs)
