-- pg_billing 0.2.0 -> 0.3.0
-- Every schema change after the 0.1.0 release lands here as well as in the sql/*.sql files that a
-- fresh install runs; tests/integration/test_upgrade.py proves both give the same schema and keep data.
--
-- 0.3.0:
-- * balances counters (spendable, held, debt, head_remaining) use the domain billing.token_count
--   instead of CHECK constraints, and token_usage has no CHECK constraints: PostgreSQL re-reads a
--   table's CHECK constraints from text at the start of every statement that writes it (12% of
--   server time in the consume benchmark); a domain's check is compiled once per session. The
--   functions validate what token_usage's checks did, and verify_ledger() reports violations.
--   Changing the column type rewrites billing.balances (one row per user), not token_usage.
-- * consume_tokens: plain INSERT when there is no idempotency key, RETURN NEXT instead of RETURN QUERY.
-- * history functions share billing._check_page.
-- * billing._check_balance_reader returns void (its uuid result was only needed inside 0.2.0's SQL
--   get_balance).
-- * get_balance is PL/pgSQL again (a scalar SQL function that reads a table is never inlined, and
--   a non-inlined SQL function is planned on every call).
-- * Burn-down and claw-back arithmetic moved to Rust (pg_billing_core::ledger, fuzzed):
--   billing._burn_allocation, billing._refund_share, billing._claw_back_split.

create domain billing.token_count as bigint constraint token_count_nonnegative check (value >= 0);

do $$
declare
  r record;
begin
  for r in select c.conrelid::regclass as tbl, c.conname from pg_catalog.pg_constraint c
            where c.contype = 'c' and c.conrelid in ('billing.balances'::regclass, 'billing.token_usage'::regclass)
  loop
    execute pg_catalog.format('alter table %s drop constraint %I', r.tbl, r.conname);
  end loop;
end
$$;

alter table billing.balances
  alter column spendable type billing.token_count,
  alter column held type billing.token_count,
  alter column debt type billing.token_count,
  alter column head_remaining type billing.token_count;

-- Its return type changes, which CREATE OR REPLACE cannot do.
drop function billing._check_balance_reader(uuid);
