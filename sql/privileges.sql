-- pg_billing: who may do what, in one list (the arrays of billing_internal.setup_roles() below), and
-- the grants and row-level security policies derived from it, for the roles that exist. This file
-- runs last in CREATE EXTENSION (and its last statement at the end of every upgrade script), once
-- every function exists.
--
-- Supabase's roles (anon, authenticated, service_role) may not exist when the extension is
-- created (plain PostgreSQL, `cargo pgrx test`), and a policy or GRANT naming a missing role
-- fails. So both live in one idempotent function, run at the end of CREATE EXTENSION and again by
-- a DBA after creating the roles: `select billing_internal.setup_roles();`.
--
-- Who may do what (README "Privileges"):
--   anon           reads the catalog (plans, token_packs, rate_limits, model_prices); calls nothing.
--   authenticated  reads the rows of its accounts (its personal account and the team accounts it is
--                  a member of; what a member reads, owners and admins read more of: below); an
--                  admin JWT reads all. Calls the user-facing functions, which check inside that it
--                  acts only for itself and only on accounts it belongs to.
--   service_role   reads every table (BYPASSRLS), manages the catalog, webhook secrets and
--                  billing.settings, and calls every public function. The backend role (postgres) likewise.
--   nobody         writes ledger tables directly: only the extension's functions do.

create function billing_internal.setup_roles() returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_role text;
  v_table text;
  v_done text[] := '{}'::text[];
  -- Tables `authenticated` reads, and which of their rows (always also: an admin JWT reads all):
  -- every member of an account reads its balance, grants and subscription (and, through the view
  -- rate_limit_usage over balances, with the reader's rights, its rate-limit use); a member
  -- reads their own usage, holds and membership; owners and admins read all of an account's rows (a
  -- user owns their personal account). Each expression starts from account_id, the leading column
  -- of every key.
  c_user_tables constant text[] := array['accounts', 'account_members', 'balances', 'token_grants',
                                          'user_subscriptions', 'stripe_customers',
                                          'payment_transactions', 'promo_redemptions', 'account_settings',
                                          'token_usage', 'token_reservations', 'usage_rollups', 'usage_rollups_daily'];
  c_readers constant text[] := array[
    'id = any ((select billing_internal.member_account_ids())::uuid[])',
    'user_id = (select billing_internal.auth_uid()) or account_id = any ((select billing_internal.managed_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.member_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.member_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.member_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.managed_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.managed_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.managed_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.managed_account_ids())::uuid[])',
    'account_id = any ((select billing_internal.member_account_ids())::uuid[]) and (user_id = (select billing_internal.auth_uid()) or account_id = any ((select billing_internal.managed_account_ids())::uuid[]))',
    'account_id = any ((select billing_internal.member_account_ids())::uuid[]) and (user_id = (select billing_internal.auth_uid()) or account_id = any ((select billing_internal.managed_account_ids())::uuid[]))',
    'account_id = any ((select billing_internal.member_account_ids())::uuid[]) and (user_id = (select billing_internal.auth_uid()) or account_id = any ((select billing_internal.managed_account_ids())::uuid[]))',
    'account_id = any ((select billing_internal.member_account_ids())::uuid[]) and (user_id = (select billing_internal.auth_uid()) or account_id = any ((select billing_internal.managed_account_ids())::uuid[]))'];
  c_catalog constant text[] := array['plans', 'token_packs', 'rate_limits', 'model_prices'];
  -- what Stripe said about payments and what grants were bought with: service reads, nobody writes
  c_stripe_facts constant text[] := array['stripe_payments', 'stripe_refunds', 'stripe_disputes', 'grant_purchases',
                                          'purchase_payments'];
  -- user-facing functions: authenticated may call them for itself
  c_user_functions constant text[] := array[
    'billing.get_balance(uuid, uuid)', 'billing.consume_tokens(uuid, bigint, text, jsonb, uuid)',
    'billing.reserve_tokens(uuid, bigint, text, interval, uuid)', 'billing.commit_reservation(uuid, bigint)',
    'billing.release_reservation(uuid)', 'billing.get_billing_summary(uuid)',
    'billing.get_usage_history(timestamptz, timestamptz, text, text, uuid)', 'billing.get_grant_history(integer, integer, uuid)',
    'billing.get_payment_history(integer, integer, uuid)', 'billing.redeem_promo_code(text)', 'billing.get_accounts()',
    'billing.create_team_account(text, uuid)', 'billing.add_account_member(uuid, uuid, text, bigint, text)',
    'billing.remove_account_member(uuid, uuid)', 'billing.llm_cost(text, bigint, bigint, bigint)',
    'billing.record_llm_usage(uuid, text, bigint, bigint, bigint, text, jsonb, uuid)',
    'billing.reserve_llm_usage(uuid, text, bigint, bigint, text, interval, uuid)',
    'billing.commit_llm_usage(uuid, bigint, bigint, bigint)'];
  -- The only internals an API role may execute: they run with the caller's rights, from row-level
  -- security policies and from the read functions above (SECURITY INVOKER). Everything else in
  -- billing_internal runs only inside SECURITY DEFINER functions, as the owner.
  c_caller_helpers constant text[] := array[
    'billing_internal.auth_uid()', 'billing_internal.jwt_claims()', 'billing_internal.is_billing_admin()',
    'billing_internal.caller_kind()', 'billing_internal.current_user_id()', 'billing_internal.require_access(uuid)',
    'billing_internal.check_balance_reader(uuid)', 'billing_internal.read_needs_checks(uuid, uuid)',
    'billing_internal.spendable_now(uuid)',
    'billing_internal.is_live(timestamptz)', 'billing_internal.check_page(integer, integer)',
    'billing_internal.require_member(uuid, uuid)', 'billing_internal.member_account_ids()',
    'billing_internal.managed_account_ids()', 'billing_internal.limit_period_start(text)',
    'billing_internal.member_limits(billing.account_members)', 'billing_internal.model_price(text, timestamptz)',
    'billing_internal.priced(billing.model_prices, bigint, bigint, bigint)',
    'billing_internal.llm_cost_of(bigint, bigint, bigint, bigint, bigint, bigint)', 'billing_internal.rolled_up_to()',
    'billing_internal.rate_usage(bigint[], timestamptz)',
    'billing_internal.llm_count(jsonb, text)'];
  c_service_functions constant text[] := array[
    'billing.grant_purchase(uuid, bigint, text, text, timestamptz, jsonb, uuid)',
    'billing.handle_stripe_webhook(text, text, text)', 'billing.reprocess_failed_events()',
    'billing.run_maintenance(integer)', 'billing.claim_outbox(integer, interval)', 'billing.ack_outbox(bigint[])',
    'billing.nack_outbox(bigint, text, interval)',
    'billing.verify_ledger()', 'billing.verify_stripe_signature(text, text, text, integer)',
    'billing.verify_stripe_signature(bytea, text, text, integer)',
    'billing.stripe_signature_rejection(text, text, text, integer)'];
  v_fn text;
begin
  -- Nothing by default: PostgreSQL grants EXECUTE to PUBLIC, Supabase adds default privileges.
  revoke all on all tables in schema billing from public;
  revoke all on all sequences in schema billing from public;
  revoke all on all functions in schema billing from public;
  revoke all on schema billing from public;
  revoke all on all functions in schema billing_internal from public;
  revoke all on schema billing_internal from public;

  for v_role in select r.rolname from pg_catalog.pg_roles r
                 where r.rolname in ('anon', 'authenticated', 'service_role', 'postgres')
                   and r.oid <> (select n.nspowner from pg_catalog.pg_namespace n where n.nspname = 'billing')
  loop
    execute pg_catalog.format('revoke all on all tables in schema billing from %I', v_role);
    execute pg_catalog.format('revoke all on all sequences in schema billing from %I', v_role);
    execute pg_catalog.format('revoke all on all functions in schema billing from %I', v_role);
    execute pg_catalog.format('revoke all on all functions in schema billing_internal from %I', v_role);
    execute pg_catalog.format('revoke all on schema billing_internal from %I', v_role);
    execute pg_catalog.format('grant usage on schema billing to %I', v_role);
    foreach v_table in array c_catalog loop
      execute pg_catalog.format('grant select on billing.%I to %I', v_table, v_role);
    end loop;
    if v_role <> 'anon' then
      foreach v_table in array c_user_tables loop
        execute pg_catalog.format('grant select on billing.%I to %I', v_table, v_role);
      end loop;
      execute pg_catalog.format('grant select on billing.rate_limit_usage to %I', v_role);
      foreach v_fn in array c_user_functions loop
        execute pg_catalog.format('grant execute on function %s to %I', v_fn, v_role);
      end loop;
      execute pg_catalog.format('grant usage on schema billing_internal to %I', v_role);
      foreach v_fn in array c_caller_helpers loop
        execute pg_catalog.format('grant execute on function %s to %I', v_fn, v_role);
      end loop;
    end if;
    if v_role in ('service_role', 'postgres') then
      foreach v_table in array c_catalog loop
        execute pg_catalog.format('grant insert, update, delete on billing.%I to %I', v_table, v_role);
      end loop;
      execute pg_catalog.format('grant select, insert, update, delete on billing.webhook_secrets to %I', v_role);
      execute pg_catalog.format('grant select, insert, update, delete on billing.promo_codes to %I', v_role);
      execute pg_catalog.format('grant select, update on billing.settings to %I', v_role);
      execute pg_catalog.format('grant insert, update, delete on billing.account_settings to %I', v_role);
      execute pg_catalog.format('grant select on billing.outbox to %I', v_role);
      foreach v_table in array c_stripe_facts loop
        execute pg_catalog.format('grant select on billing.%I to %I', v_table, v_role);
      end loop;
      foreach v_fn in array c_service_functions loop
        execute pg_catalog.format('grant execute on function %s to %I', v_fn, v_role);
      end loop;
    end if;
    v_done := v_done || v_role;
  end loop;

  -- Policies (Supabase style: `to <role>`, auth functions inside `(select ...)` so they run once).
  if exists (select 1 from pg_catalog.pg_roles where rolname in ('anon', 'authenticated')) then
    foreach v_table in array c_catalog loop
      execute pg_catalog.format('drop policy if exists catalog_readable on billing.%I', v_table);
      execute pg_catalog.format('create policy catalog_readable on billing.%I for select to %s using (true)', v_table,
        (select pg_catalog.string_agg(pg_catalog.quote_ident(rolname), ', ') from pg_catalog.pg_roles
          where rolname in ('anon', 'authenticated')));
    end loop;
  end if;
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticated') then
    for v_i in 1 .. pg_catalog.array_length(c_user_tables, 1) loop
      execute pg_catalog.format('drop policy if exists own_rows on billing.%I', c_user_tables[v_i]);
      execute pg_catalog.format(
        'create policy own_rows on billing.%I for select to authenticated using ((%s) or (select billing_internal.is_billing_admin()))',
        c_user_tables[v_i], c_readers[v_i]);
    end loop;
  end if;
  return 'privileges set for: ' || coalesce(pg_catalog.array_to_string(v_done, ', '), '');
end
$$;
comment on function billing_internal.setup_roles() is
  'Idempotent: revokes defaults, grants per role and creates RLS policies for the Supabase roles that exist.';

-- Applied last in CREATE EXTENSION and at the end of every upgrade script.
select billing_internal.setup_roles();
