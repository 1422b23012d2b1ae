-- pg_billing 0.3.0 -> 0.4.0: Stripe money rules (README "Webhooks", docs/stripe.md).
-- scripts/gen-upgrade.py turns this file into sql/pg_billing--0.3.0--0.4.0.sql: the functions that
-- changed since 0.3.0 go where the `@functions` line is. tests/integration/test_upgrade.py proves
-- the result equals a fresh install and keeps the data.
--
-- * billing.settings (test mode, Connect account); plans.grant_on_zero_amount;
-- * Stripe facts recorded per payment (stripe_payments, stripe_refunds, stripe_disputes) and what
--   each grant was bought with (grant_purchases, purchase_payments): refunds and disputes in any
--   order, subscription refunds on basil and later, one allowance per subscription period;
-- * token_grants.freeze_target: a disputed grant's tokens stay frozen when a hold comes back;
-- * payment_transactions: status 'failed' with error and attempts (nothing verified is lost);
-- * every table registered with pg_extension_config_dump, so pg_dump saves billing data;
-- * token_grants_payment_intent index dropped (payments are found through purchase_payments);
-- * every helper moves to schema billing_internal, which PostgREST never exposes (without its `_`
--   prefix): schema billing keeps the tables and the public API only. The old helpers are dropped
--   at the end, once setup_roles() has recreated the policies that used billing.auth_uid().

create schema billing_internal;
comment on schema billing_internal is 'pg_billing internals: never exposed through PostgREST; call the functions in schema billing.';

alter table billing.plans add column grant_on_zero_amount boolean not null default false;
alter table billing.token_grants add column freeze_target bigint not null default 0 check (freeze_target >= 0);
drop index billing.token_grants_payment_intent;
alter table billing.payment_transactions
  drop constraint payment_transactions_status_check,
  add constraint payment_transactions_status_check check (status in ('processed', 'ignored', 'stale', 'failed')),
  add column error jsonb,
  add column attempts integer not null default 1,
  add column stripe_customer text;
create index payment_transactions_failed on billing.payment_transactions (stripe_customer, event_created)
  where status = 'failed';

create table billing.settings (
  id              boolean primary key default true check (id),
  stripe_livemode boolean not null default true,
  stripe_account  text check (stripe_account <> ''),
  updated_at      timestamptz not null default now()
);
create table billing.stripe_payments (
  payment_key       text primary key,
  charge_id         text,
  currency          text,
  amount_captured   bigint check (amount_captured >= 0),
  refunded_reported bigint not null default 0 check (refunded_reported >= 0),
  updated_at        timestamptz not null default now()
);
create table billing.stripe_refunds (
  refund_id          text primary key,
  payment_key        text not null,
  amount             bigint not null check (amount >= 0),
  currency           text,
  status             text not null,
  last_event_created timestamptz not null,
  last_event_id      text not null
);
create index stripe_refunds_payment on billing.stripe_refunds (payment_key);
create table billing.stripe_disputes (
  dispute_id         text primary key,
  payment_key        text not null,
  amount             bigint not null check (amount >= 0),
  currency           text,
  status             text not null,
  last_event_created timestamptz not null,
  last_event_id      text not null
);
create index stripe_disputes_payment on billing.stripe_disputes (payment_key);
create table billing.grant_purchases (
  purchase_id            text primary key,
  grant_id               bigint not null references billing.token_grants (id),
  kind                   text not null check (kind in ('checkout_session', 'invoice')),
  allowance              bigint not null check (allowance > 0),
  amount                 bigint not null check (amount >= 0),
  currency               text not null,
  purchased_at           timestamptz not null,
  stripe_subscription_id text,
  period_end             timestamptz,
  plan_id                bigint references billing.plans (id)
);
create index grant_purchases_grant on billing.grant_purchases (grant_id);
create unique index grant_purchases_period on billing.grant_purchases (stripe_subscription_id, period_end, purchase_id)
  where stripe_subscription_id is not null;
create index grant_purchases_plan_id on billing.grant_purchases (plan_id) where plan_id is not null;
create table billing.purchase_payments (
  purchase_id text not null,
  payment_key text not null,
  amount      bigint not null check (amount >= 0),
  primary key (purchase_id, payment_key)
);
create index purchase_payments_payment on billing.purchase_payments (payment_key);

alter table billing.settings enable row level security;
alter table billing.stripe_payments enable row level security;
alter table billing.stripe_refunds enable row level security;
alter table billing.stripe_disputes enable row level security;
alter table billing.grant_purchases enable row level security;
alter table billing.purchase_payments enable row level security;

do $$
declare
  v_table regclass;
begin
  for v_table in
    select c.oid::regclass from pg_catalog.pg_class c
     where c.relnamespace = 'billing'::regnamespace and c.relkind in ('r', 'S')
  loop
    perform pg_catalog.pg_extension_config_dump(v_table, '');
  end loop;
end
$$;

-- @rust burn_allocation adjustment_targets adjusted_grant given_back_grant decode_stripe_event stripe_signature_check
-- 0.3.0's Rust helpers: the claw-back ones are replaced (billing_internal.adjustment_targets,
-- adjusted_grant), the others move to billing_internal.
drop function billing._refund_share(bigint, bigint, bigint);
drop function billing._claw_back_split(bigint, bigint, bigint, bigint, bigint, bigint);
drop function billing._burn_allocation(bigint[], bigint);
drop function billing.decode_stripe_event(text);
drop function billing.stripe_signature_check(text, text, text[], integer);

-- @functions

-- What 0.3.0's Stripe grants were bought with: a Checkout Session (grant reference cs_...) or an
-- invoice (reference in_...; its period ends when the grant expires, or, for a plan that rolls
-- over, at the period end of the invoice line 0.3.0 read).
insert into billing.grant_purchases (purchase_id, grant_id, kind, allowance, amount, currency, purchased_at,
                                     stripe_subscription_id, period_end, plan_id)
select g.reference, g.id, case g.kind when 'purchase' then 'checkout_session' else 'invoice' end, g.tokens,
       coalesce(g.amount_paid, 0), coalesce(g.currency, 'usd'), g.created_at,
       case when g.kind = 'subscription' then g.metadata ->> 'subscription' end,
       case when g.kind = 'subscription' then coalesce(g.expires_at,
         (select pg_catalog.to_timestamp((billing_internal.decode_stripe_event(t.payload::text) -> 'lines' -> 0 ->> 'period_end')::bigint)
            from billing.payment_transactions t where t.stripe_event_id = g.metadata ->> 'stripe_event_id')) end,
       (select p.id from billing.plans p where p.stripe_price_id = g.stripe_price_id and g.kind = 'subscription')
  from billing.token_grants g
 where g.kind in ('purchase', 'subscription') and g.metadata ? 'stripe_event_id';
insert into billing.purchase_payments (purchase_id, payment_key, amount)
select g.reference, g.stripe_payment_intent, coalesce(g.amount_paid, 0)
  from billing.token_grants g
 where g.kind in ('purchase', 'subscription') and g.metadata ? 'stripe_event_id' and g.stripe_payment_intent is not null;

-- The refunds and disputes 0.3.0 applied, as facts, oldest first.
do $$
declare
  v_payload jsonb;
  v_event jsonb;
begin
  for v_payload in
    select t.payload from billing.payment_transactions t
     where t.status = 'processed'
       and t.event_type in ('charge.refunded', 'charge.dispute.created', 'charge.dispute.closed')
     order by t.event_created, t.stripe_event_id
  loop
    v_event := billing_internal.decode_stripe_event(v_payload::text);
    if v_event ->> 'kind' = 'charge' then
      perform billing_internal.record_charge(v_event);
    elsif v_event ->> 'kind' = 'dispute' and v_event ->> 'payment_key' is not null then
      perform billing_internal.record_dispute(v_event);
    end if;
  end loop;
end
$$;

-- Re-settle every Stripe-funded grant with 0.4.0's rules. Where 0.3.0 moved money wrongly this
-- corrects it (0.3.0 froze and clawed back whole grants for partial disputes, counted expired tokens
-- of a refunded grant as debt); anywhere else it changes nothing.
update billing.token_grants set freeze_target = frozen where frozen > 0;
do $$
declare
  v_user uuid;
  v_grant bigint;
begin
  for v_user in
    select distinct g.user_id from billing.token_grants g
     where exists (select 1 from billing.grant_purchases gp where gp.grant_id = g.id)
     order by 1
  loop
    perform billing_internal.lock_and_settle(v_user, true);
    for v_grant in
      select g.id from billing.token_grants g
       where g.user_id = v_user and exists (select 1 from billing.grant_purchases gp where gp.grant_id = g.id)
       order by g.id
    loop
      perform billing_internal.settle_stripe_grant(v_grant);
    end loop;
    perform billing_internal.recompute_balance(v_user);
  end loop;
end
$$;
