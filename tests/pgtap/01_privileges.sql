-- Who may do what, per table and per role, per function and per role (run by pg_prove).
begin;
select * from no_plan();

-- Tables: the exact privileges each API role holds.
with expected(tbl, role, privs) as (values
  ('plans', 'anon', '{SELECT}'), ('token_packs', 'anon', '{SELECT}'),
  ('plans', 'authenticated', '{SELECT}'), ('token_packs', 'authenticated', '{SELECT}'),
  ('plans', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'), ('token_packs', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('rate_limits', 'anon', '{SELECT}'), ('rate_limits', 'authenticated', '{SELECT}'),
  ('rate_limits', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('model_prices', 'anon', '{SELECT}'), ('model_prices', 'authenticated', '{SELECT}'),
  ('model_prices', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('webhook_secrets', 'anon', '{}'), ('webhook_secrets', 'authenticated', '{}'),
  ('webhook_secrets', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('promo_codes', 'anon', '{}'), ('promo_codes', 'authenticated', '{}'),
  ('promo_codes', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('settings', 'anon', '{}'), ('settings', 'authenticated', '{}'), ('settings', 'service_role', '{SELECT,UPDATE}'),
  ('stripe_payments', 'anon', '{}'), ('stripe_payments', 'authenticated', '{}'), ('stripe_payments', 'service_role', '{SELECT}'),
  ('stripe_refunds', 'anon', '{}'), ('stripe_refunds', 'authenticated', '{}'), ('stripe_refunds', 'service_role', '{SELECT}'),
  ('stripe_disputes', 'anon', '{}'), ('stripe_disputes', 'authenticated', '{}'), ('stripe_disputes', 'service_role', '{SELECT}'),
  ('grant_purchases', 'anon', '{}'), ('grant_purchases', 'authenticated', '{}'), ('grant_purchases', 'service_role', '{SELECT}'),
  ('purchase_payments', 'anon', '{}'), ('purchase_payments', 'authenticated', '{}'), ('purchase_payments', 'service_role', '{SELECT}'),
  ('account_settings', 'anon', '{}'), ('account_settings', 'authenticated', '{SELECT}'),
  ('account_settings', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('outbox', 'anon', '{}'), ('outbox', 'authenticated', '{}'), ('outbox', 'service_role', '{SELECT}'),
  ('usage_rollup_state', 'anon', '{}'), ('usage_rollup_state', 'authenticated', '{}'),
  ('usage_rollup_state', 'service_role', '{}'),
  ('alert_checks', 'anon', '{}'), ('alert_checks', 'authenticated', '{}'), ('alert_checks', 'service_role', '{}')
), user_tables(tbl) as (values ('stripe_customers'), ('user_subscriptions'), ('balances'), ('token_grants'),
  ('token_usage'), ('token_reservations'), ('payment_transactions'), ('promo_redemptions'), ('accounts'), ('account_members'),
  ('rate_limit_usage'), ('usage_rollups'), ('usage_rollups_daily'))
select table_privs_are('billing', e.tbl, e.role, e.privs::text[], e.role || ' on billing.' || e.tbl || ': ' || e.privs)
  from (select * from expected
        union all select tbl, 'anon', '{}' from user_tables
        union all select tbl, 'authenticated', '{SELECT}' from user_tables
        union all select tbl, 'service_role', '{SELECT}' from user_tables) e
 order by e.tbl, e.role;

-- Every table in the schema is covered above and has row-level security enabled.
select tables_are('billing', array['plans', 'token_packs', 'webhook_secrets', 'promo_codes', 'stripe_customers',
  'user_subscriptions', 'balances', 'token_grants', 'token_usage', 'token_reservations', 'payment_transactions',
  'promo_redemptions', 'settings', 'stripe_payments', 'stripe_refunds', 'stripe_disputes', 'grant_purchases',
  'purchase_payments', 'accounts', 'account_members', 'rate_limits', 'model_prices',
  'account_settings', 'outbox', 'usage_rollups', 'usage_rollups_daily', 'usage_rollup_state', 'alert_checks'],
  'every billing table has its privileges listed above');
select is((select count(*)::int from pg_tables where schemaname = 'billing' and not rowsecurity), 0, 'RLS on every table');
-- The one view reads with its reader's rights, so the balance rows' policies apply to it.
select views_are('billing', array['rate_limit_usage'], 'billing has one view');
select ok((select 'security_invoker=true' = any(c.reloptions) from pg_class c where c.oid = 'billing.rate_limit_usage'::regclass),
          'rate_limit_usage is security_invoker');

-- The exposed schema holds the public API and nothing else: every helper is in billing_internal,
-- which PostgREST never exposes (a supabase-js user sees exactly these functions).
select functions_are('billing', array['consume_tokens', 'get_balance', 'reserve_tokens', 'commit_reservation',
  'release_reservation', 'get_billing_summary', 'get_usage_history', 'get_grant_history', 'get_payment_history',
  'redeem_promo_code', 'grant_purchase', 'handle_stripe_webhook', 'reprocess_failed_events', 'run_maintenance',
  'verify_ledger', 'verify_stripe_signature', 'stripe_signature_rejection', 'get_accounts', 'create_team_account',
  'add_account_member', 'remove_account_member', 'llm_cost', 'record_llm_usage', 'reserve_llm_usage',
  'commit_llm_usage', 'claim_outbox', 'ack_outbox', 'nack_outbox'], 'schema billing holds only the public API');

-- Functions: EXECUTE per role. 'caller' = an internal helper that runs with the caller's rights
-- (policies, SECURITY INVOKER read functions): authenticated and service_role may execute it.
with fns(schema, fn, args, who) as (values
  ('billing', 'consume_tokens', '{uuid,bigint,text,jsonb,uuid}', 'user'),
  ('billing', 'get_balance', '{uuid,uuid}', 'user'),
  ('billing', 'reserve_tokens', '{uuid,bigint,text,interval,uuid}', 'user'),
  ('billing', 'commit_reservation', '{uuid,bigint}', 'user'),
  ('billing', 'release_reservation', '{uuid}', 'user'),
  ('billing', 'get_billing_summary', '{uuid}', 'user'),
  ('billing', 'get_usage_history', '{"timestamp with time zone","timestamp with time zone",text,text,uuid}', 'user'),
  ('billing', 'get_grant_history', '{integer,integer,uuid}', 'user'),
  ('billing', 'get_payment_history', '{integer,integer,uuid}', 'user'),
  ('billing', 'redeem_promo_code', '{text}', 'user'),
  ('billing', 'get_accounts', '{}', 'user'),
  ('billing', 'create_team_account', '{text,uuid}', 'user'),
  ('billing', 'add_account_member', '{uuid,uuid,text,bigint,text}', 'user'),
  ('billing', 'remove_account_member', '{uuid,uuid}', 'user'),
  ('billing', 'llm_cost', '{text,bigint,bigint,bigint}', 'user'),
  ('billing', 'record_llm_usage', '{uuid,text,bigint,bigint,bigint,text,jsonb,uuid}', 'user'),
  ('billing', 'reserve_llm_usage', '{uuid,text,bigint,bigint,text,interval,uuid}', 'user'),
  ('billing', 'commit_llm_usage', '{uuid,bigint,bigint,bigint}', 'user'),
  ('billing', 'grant_purchase', '{uuid,bigint,text,text,"timestamp with time zone",jsonb,uuid}', 'service'),
  ('billing', 'handle_stripe_webhook', '{text,text,text}', 'service'),
  ('billing', 'reprocess_failed_events', '{}', 'service'),
  ('billing', 'run_maintenance', '{integer}', 'service'),
  ('billing', 'claim_outbox', '{integer,interval}', 'service'),
  ('billing', 'ack_outbox', '{bigint[]}', 'service'),
  ('billing', 'nack_outbox', '{bigint,text,interval}', 'service'),
  ('billing_internal', 'emit', '{uuid,text,text,jsonb}', 'owner'),
  ('billing_internal', 'run_automations', '{uuid,bigint}', 'owner'),
  ('billing_internal', 'run_alert_check', '{}', 'owner'),
  ('billing_internal', 'queue_alert_check', '{uuid}', 'owner'),
  ('billing_internal', 'settings_changed', '{}', 'owner'),
  ('billing', 'verify_ledger', '{}', 'service'),
  ('billing', 'verify_stripe_signature', '{text,text,text,integer}', 'service'),
  ('billing', 'stripe_signature_rejection', '{text,text,text,integer}', 'service'),
  ('billing_internal', 'auth_uid', '{}', 'caller'),
  ('billing_internal', 'jwt_claims', '{}', 'caller'),
  ('billing_internal', 'is_billing_admin', '{}', 'caller'),
  ('billing_internal', 'caller_kind', '{}', 'caller'),
  ('billing_internal', 'current_user_id', '{}', 'caller'),
  ('billing_internal', 'require_access', '{uuid}', 'caller'),
  ('billing_internal', 'check_balance_reader', '{uuid}', 'caller'),
  ('billing_internal', 'read_needs_checks', '{uuid,uuid}', 'caller'),
  ('billing_internal', 'spendable_now', '{uuid}', 'caller'),
  ('billing_internal', 'is_live', '{"timestamp with time zone"}', 'caller'),
  ('billing_internal', 'check_page', '{integer,integer}', 'caller'),
  ('billing_internal', 'require_member', '{uuid,uuid}', 'caller'),
  ('billing_internal', 'member_account_ids', '{}', 'caller'),
  ('billing_internal', 'managed_account_ids', '{}', 'caller'),
  ('billing_internal', 'limit_period_start', '{text}', 'caller'),
  ('billing_internal', 'member_limits', '{billing.account_members}', 'caller'),
  ('billing_internal', 'model_price', '{text,"timestamp with time zone"}', 'caller'),
  ('billing_internal', 'priced', '{billing.model_prices,bigint,bigint,bigint}', 'caller'),
  ('billing_internal', 'llm_cost_of', '{bigint,bigint,bigint,bigint,bigint,bigint}', 'caller'),
  ('billing_internal', 'rolled_up_to', '{}', 'caller'),
  ('billing_internal', 'llm_count', '{jsonb,text}', 'caller'),
  ('billing_internal', 'rate_usage', '{bigint[],"timestamp with time zone"}', 'caller'),
  ('billing_internal', 'roll_up_usage', '{}', 'owner'),
  ('billing_internal', 'take_rate_limits', '{uuid,bigint,integer}', 'owner'),
  ('billing_internal', 'plan_limits', '{text}', 'owner'),
  ('billing_internal', 'plan_rate_state', '{text,bigint[]}', 'owner'),
  ('billing_internal', 'new_balance', '{uuid}', 'owner'),
  ('billing_internal', 'rate_limits_changed', '{}', 'owner'),
  ('billing_internal', 'rate_counted', '{bigint[],bigint,integer,"timestamp with time zone"}', 'owner'),
  ('billing_internal', 'rate_over', '{bigint[],bigint,integer}', 'owner'),
  ('billing_internal', 'rate_refusal', '{bigint[],bigint,integer}', 'owner'),
  ('billing_internal', 'rate_windows', '{bigint[],bigint,integer}', 'owner'),
  ('billing_internal', 'rate_given_back', '{bigint[],bigint[],bigint,integer}', 'owner'),
  ('billing_internal', 'rate_rebuilt', '{bigint[],bigint[],"timestamp with time zone"}', 'owner'),
  ('billing_internal', 'raise_rate_limited', '{uuid,bigint,integer}', 'owner'),
  ('billing_internal', 'subscription_written', '{}', 'owner'),
  ('billing_internal', 'plan_code_renamed', '{}', 'owner'),
  ('billing_internal', 'return_rate_limits', '{uuid,bigint[],bigint,integer}', 'owner'),
  ('billing_internal', 'hold', '{uuid,bigint,text,interval,uuid,jsonb}', 'owner'),
  ('billing_internal', 'commit_hold', '{uuid,bigint,jsonb}', 'owner'),
  ('billing_internal', 'charge_member', '{uuid,uuid,bigint}', 'owner'),
  ('billing_internal', 'raise_member_limit', '{bigint,bigint,bigint,text}', 'owner'),
  ('billing_internal', 'refund_member', '{uuid,uuid,bigint,"timestamp with time zone"}', 'owner'),
  ('billing_internal', 'release_member_holds', '{uuid,uuid}', 'owner'),
  ('billing_internal', 'create_account', '{text,uuid}', 'owner'),
  ('billing_internal', 'setup_roles', '{}', 'owner'),
  ('billing_internal', 'burn', '{uuid,bigint,boolean}', 'owner'),
  ('billing_internal', 'payer', '{uuid,uuid}', 'owner'),
  ('billing_internal', 'lock_and_settle', '{uuid,boolean}', 'owner'),
  ('billing_internal', 'adjust_grant', '{uuid,bigint,bigint,bigint}', 'owner'),
  ('billing_internal', 'return_to_grants', '{uuid,bigint[]}', 'owner'),
  ('billing_internal', 'settle_stripe_grant', '{uuid,bigint}', 'owner'),
  ('billing_internal', 'process_event', '{jsonb,boolean}', 'owner'),
  ('billing_internal', 'burn_allocation', '{bigint[],bigint}', 'owner'),
  ('billing_internal', 'adjustment_targets', '{bigint,bigint[],bigint[],bigint[],bigint[],bigint[],bigint[]}', 'owner'),
  ('billing_internal', 'adjusted_grant', '{bigint,bigint,bigint,bigint,bigint,bigint,bigint,boolean,bigint,bigint}', 'owner'),
  ('billing_internal', 'given_back_grant', '{bigint,bigint,bigint,bigint,bigint,bigint,bigint,boolean,bigint,bigint}', 'owner'),
  ('billing_internal', 'stripe_signature_check', '{text,text,text[],integer}', 'owner'),
  ('billing_internal', 'decode_stripe_event', '{text}', 'owner')
), roles(role) as (values ('anon'), ('authenticated'), ('service_role')),
allowed as (select f.*, r.role, (r.role = 'authenticated' and f.who in ('user', 'caller'))
                              or (r.role = 'service_role' and f.who in ('user', 'service', 'caller')) as may
              from fns f cross join roles r)
select function_privs_are(a.schema, a.fn, a.args::text[], a.role,
         case when a.may then '{EXECUTE}'::text[] else '{}'::text[] end,
         a.role || ' may ' || case when a.may then '' else 'not ' end || 'execute ' || a.schema || '.' || a.fn)
  from allowed a
 order by a.schema, a.fn, a.role;

-- Of the internals, API roles may execute exactly the caller helpers above; anon none of them.
select is((select count(*)::int from pg_proc p where p.pronamespace = 'billing_internal'::regnamespace
            and has_function_privilege('authenticated', p.oid, 'EXECUTE')), 22, 'authenticated executes 22 internal helpers');
select is((select count(*)::int from pg_proc p where p.pronamespace = 'billing_internal'::regnamespace
            and has_function_privilege('anon', p.oid, 'EXECUTE')), 0, 'anon executes no internal helper');
select schema_privs_are('billing_internal', 'anon', '{}'::text[], 'anon has no usage on billing_internal');

-- PUBLIC holds nothing in the schema.
select is((select count(*)::int from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
            where p.pronamespace in ('billing'::regnamespace, 'billing_internal'::regnamespace) and a.grantee = 0), 0,
          'no billing or billing_internal function is granted to PUBLIC');

select * from finish();
rollback;
