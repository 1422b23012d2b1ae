-- Who may do what, per table and per role, per function and per role (run by pg_prove).
begin;
select * from no_plan();

-- Tables: the exact privileges each API role holds.
with expected(tbl, role, privs) as (values
  ('plans', 'anon', '{SELECT}'), ('token_packs', 'anon', '{SELECT}'),
  ('plans', 'authenticated', '{SELECT}'), ('token_packs', 'authenticated', '{SELECT}'),
  ('plans', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'), ('token_packs', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('webhook_secrets', 'anon', '{}'), ('webhook_secrets', 'authenticated', '{}'),
  ('webhook_secrets', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('promo_codes', 'anon', '{}'), ('promo_codes', 'authenticated', '{}'),
  ('promo_codes', 'service_role', '{DELETE,INSERT,SELECT,UPDATE}'),
  ('settings', 'anon', '{}'), ('settings', 'authenticated', '{}'), ('settings', 'service_role', '{SELECT,UPDATE}'),
  ('stripe_payments', 'anon', '{}'), ('stripe_payments', 'authenticated', '{}'), ('stripe_payments', 'service_role', '{SELECT}'),
  ('stripe_refunds', 'anon', '{}'), ('stripe_refunds', 'authenticated', '{}'), ('stripe_refunds', 'service_role', '{SELECT}'),
  ('stripe_disputes', 'anon', '{}'), ('stripe_disputes', 'authenticated', '{}'), ('stripe_disputes', 'service_role', '{SELECT}'),
  ('grant_purchases', 'anon', '{}'), ('grant_purchases', 'authenticated', '{}'), ('grant_purchases', 'service_role', '{SELECT}'),
  ('purchase_payments', 'anon', '{}'), ('purchase_payments', 'authenticated', '{}'), ('purchase_payments', 'service_role', '{SELECT}')
), user_tables(tbl) as (values ('stripe_customers'), ('user_subscriptions'), ('balances'), ('token_grants'),
  ('token_usage'), ('token_reservations'), ('payment_transactions'), ('promo_redemptions'))
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
  'purchase_payments'], 'every billing table has its privileges listed above');
select is((select count(*)::int from pg_tables where schemaname = 'billing' and not rowsecurity), 0, 'RLS on every table');

-- Functions: EXECUTE per role.
with fns(fn, args, who) as (values
  ('consume_tokens', '{uuid,bigint,text,jsonb}', 'user'),
  ('get_balance', '{uuid}', 'user'),
  ('reserve_tokens', '{uuid,bigint,text,interval}', 'user'),
  ('commit_reservation', '{uuid,bigint}', 'user'),
  ('release_reservation', '{uuid}', 'user'),
  ('get_billing_summary', '{}', 'user'),
  ('get_usage_history', '{"timestamp with time zone","timestamp with time zone",text,text}', 'user'),
  ('get_grant_history', '{integer,integer}', 'user'),
  ('get_payment_history', '{integer,integer}', 'user'),
  ('redeem_promo_code', '{text}', 'user'),
  ('grant_purchase', '{uuid,bigint,text,text,"timestamp with time zone",jsonb}', 'service'),
  ('handle_stripe_webhook', '{text,text,text}', 'service'),
  ('reprocess_failed_events', '{}', 'service'),
  ('run_maintenance', '{integer}', 'service'),
  ('verify_ledger', '{}', 'service'),
  ('verify_stripe_signature', '{text,text,text,integer}', 'service'),
  ('stripe_signature_rejection', '{text,text,text,integer}', 'service'),
  ('setup_roles', '{}', 'owner'),
  ('_burn', '{uuid,bigint,boolean}', 'owner'),
  ('_lock_and_settle', '{uuid,boolean}', 'owner'),
  ('_adjust_grant', '{bigint,bigint,bigint}', 'owner'),
  ('_return_to_grants', '{bigint[]}', 'owner'),
  ('_settle_stripe_grant', '{bigint}', 'owner'),
  ('_process_event', '{jsonb,boolean}', 'owner'),
  ('_burn_allocation', '{bigint[],bigint}', 'owner'),
  ('_adjustment_targets', '{bigint,bigint[],bigint[],bigint[],bigint[],bigint[],bigint[]}', 'owner'),
  ('_adjusted_grant', '{bigint,bigint,bigint,bigint,bigint,bigint,bigint,boolean,bigint,bigint}', 'owner'),
  ('_given_back_grant', '{bigint,bigint,bigint,bigint,bigint,bigint,bigint,boolean,bigint,bigint}', 'owner'),
  ('stripe_signature_check', '{text,text,text[],integer}', 'owner'),
  ('decode_stripe_event', '{text}', 'owner')
), roles(role) as (values ('anon'), ('authenticated'), ('service_role'))
select function_privs_are('billing', f.fn, f.args::text[], r.role,
         case when (r.role = 'authenticated' and f.who = 'user')
                or (r.role = 'service_role' and f.who in ('user', 'service')) then '{EXECUTE}'::text[]
              else '{}'::text[] end,
         r.role || ' may ' || case when (r.role = 'authenticated' and f.who = 'user')
                or (r.role = 'service_role' and f.who in ('user', 'service')) then '' else 'not ' end
         || 'execute billing.' || f.fn)
  from fns f cross join roles r
 order by f.fn, r.role;

-- PUBLIC holds nothing in the schema.
select is((select count(*)::int from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
            where p.pronamespace = 'billing'::regnamespace and a.grantee = 0), 0, 'no billing function is granted to PUBLIC');

select * from finish();
rollback;
