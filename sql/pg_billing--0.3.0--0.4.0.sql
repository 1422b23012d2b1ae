-- pg_billing 0.3.0 -> 0.4.0: Stripe money rules (README "Webhooks", docs/stripe.md), team accounts,
-- rate limits and LLM prices, the outbox and its automations.
-- Hand-written, except the two `@generated` regions, which scripts/gen-upgrade.py rewrites (the
-- functions new or changed since 0.3.0, and the privileges). tests/integration/test_upgrade.py
-- proves the result equals a fresh install and keeps the data.
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
-- * team accounts (billing.accounts, billing.account_members): accounts pay, users spend. Every
--   table that held a user's money now names the account that pays (user_id -> account_id, the same
--   uuid: a user's personal account has the user's id), and its primary and unique keys start with
--   account_id (docs/scale-out.md). token_usage and token_reservations gain user_id, the member who
--   spent. Rebuilding those keys rewrites the indexes of token_grants, token_usage and
--   token_reservations (docs/dba.md: upgrade cost). stripe_customers no longer references
--   auth.users: a team account is not a user.
-- * rate limits per plan (rate_limits; balances.plan_code and the counters balances.rate_state,
--   kept by triggers on user_subscriptions, plans and rate_limits, read through the view
--   rate_limit_usage; token_reservations.rate_windows) and LLM
--   prices per model (model_prices), with llm_cost, record_llm_usage, reserve_llm_usage and
--   commit_llm_usage; get_usage_history returns LLM token counts.
-- * the outbox (billing.outbox, claim_outbox / ack_outbox / nack_outbox) and per-account
--   automations (billing.account_settings: balance.low, balance.depleted, auto top-up;
--   balances.alert_below / alert_above, alert_checks and its constraint trigger alert_checks_run).
-- * usage rollups (usage_rollups, usage_rollup_state; token_usage.created_at is the insertion clock),
--   read by get_usage_history with the rows since; its buckets are UTC; idempotency keys unique per
--   (account, key, member) on token_usage and token_reservations.

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

-- Team accounts, and every payer column renamed to account_id.
create table billing.accounts (
  id         uuid primary key default gen_random_uuid(),
  kind       text not null default 'team' check (kind in ('personal', 'team')),
  name       text not null check (pg_catalog.length(name) between 1 and 200),
  created_at timestamptz not null default now()
);
comment on table billing.accounts is 'Accounts that pay: team accounts (a personal account, id = the user''s id, needs no row).';
-- A member's role and the calendar period of their spend limit: domains, not table CHECKs, like
-- billing.token_count (docs/design.md: the executor re-reads a table's CHECKs at every statement that
-- writes it, and every team consume updates its member's row). The remaining rule, a limit needs a period, is not a table
-- CHECK either: add_account_member, the only writer of those columns, refuses it (22023), and
-- verify_ledger() reports a row that breaks it.
create domain billing.member_role as text constraint member_role_valid check (value in ('owner', 'admin', 'member'));
create domain billing.spend_period as text constraint spend_period_valid check (value in ('day', 'week', 'month'));
create table billing.account_members (
  account_id         uuid not null references billing.accounts (id) on delete cascade,
  user_id            uuid not null,
  role               billing.member_role not null default 'member',
  spend_limit        billing.token_count,
  spend_limit_period billing.spend_period,
  period_start       timestamptz,
  period_spent       billing.token_count not null default 0,
  created_at         timestamptz not null default now(),
  primary key (account_id, user_id)
);
create index account_members_user on billing.account_members (user_id);
alter table billing.accounts enable row level security;
alter table billing.account_members enable row level security;

alter table billing.stripe_customers drop constraint if exists stripe_customers_user_id_fkey;
alter table billing.stripe_customers rename column user_id to account_id;
alter table billing.user_subscriptions rename column user_id to account_id;
alter index billing.user_subscriptions_user_id rename to user_subscriptions_account_id;
alter table billing.balances rename column user_id to account_id;
alter table billing.balances add column alert_below bigint, add column alert_above bigint, add column plan_code text,
  add column rate_state bigint[];
alter table billing.payment_transactions rename column user_id to account_id;
alter index billing.payment_transactions_user rename to payment_transactions_account;

-- Keys that start with account_id; no foreign key into token_usage (a reservation names its
-- commit's usage row by id only).
alter table billing.promo_redemptions drop constraint promo_redemptions_grant_id_fkey;
alter table billing.token_reservations drop constraint token_reservations_usage_id_fkey;
alter table billing.token_grants rename column user_id to account_id;
alter table billing.token_grants
  drop constraint token_grants_pkey,
  drop constraint token_grants_kind_reference_key,
  add primary key (account_id, id),
  add unique (account_id, kind, reference);
create index token_grants_reference on billing.token_grants (kind, reference);

alter table billing.token_usage rename column user_id to account_id;
alter table billing.token_usage
  add column user_id uuid,
  drop constraint token_usage_pkey,
  add primary key (account_id, created_at, id);
drop index billing.token_usage_idempotency;
drop index billing.token_usage_user_time;
create unique index token_usage_idempotency on billing.token_usage (account_id, idempotency_key, user_id)
  nulls not distinct where idempotency_key is not null;

alter table billing.token_reservations rename column user_id to account_id;
alter table billing.token_reservations
  add column user_id uuid,
  add column limit_period_start timestamptz,
  add column rate_windows bigint[],
  drop constraint token_reservations_pkey,
  add primary key (account_id, id),
  -- no table CHECKs, as on token_usage (sql/schema.sql): verify_ledger() reports a row that breaks them
  drop constraint token_reservations_tokens_check,
  drop constraint token_reservations_idempotency_key_check,
  drop constraint token_reservations_status_check,
  drop constraint token_reservations_committed_tokens_check,
  drop constraint token_reservations_metadata_check;
drop index billing.token_reservations_idempotency;
drop index billing.token_reservations_usage_id;
alter index billing.token_reservations_user rename to token_reservations_account;
create index token_reservations_id on billing.token_reservations (id);
create unique index token_reservations_idempotency on billing.token_reservations (account_id, idempotency_key, user_id)
  nulls not distinct where idempotency_key is not null;

alter table billing.promo_redemptions rename column user_id to account_id;
alter table billing.promo_redemptions
  drop constraint promo_redemptions_pkey,
  add primary key (account_id, code),
  add foreign key (account_id, grant_id) references billing.token_grants (account_id, id);
drop index billing.promo_redemptions_user_id;
drop index billing.promo_redemptions_grant_id;
create index promo_redemptions_code on billing.promo_redemptions (code);
create index promo_redemptions_grant_id on billing.promo_redemptions (account_id, grant_id);

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
  account_id             uuid not null,
  purchase_id            text not null,
  grant_id               bigint not null,
  kind                   text not null check (kind in ('checkout_session', 'invoice', 'payment_intent')),
  allowance              bigint not null check (allowance > 0),
  amount                 bigint not null check (amount >= 0),
  currency               text not null,
  purchased_at           timestamptz not null,
  stripe_subscription_id text,
  period_end             timestamptz,
  plan_id                bigint references billing.plans (id),
  primary key (account_id, purchase_id),
  foreign key (account_id, grant_id) references billing.token_grants (account_id, id)
);
create index grant_purchases_grant on billing.grant_purchases (account_id, grant_id);
create index grant_purchases_purchase on billing.grant_purchases (purchase_id);
create index grant_purchases_period on billing.grant_purchases (stripe_subscription_id, period_end)
  where stripe_subscription_id is not null;
create index grant_purchases_plan_id on billing.grant_purchases (plan_id) where plan_id is not null;
create table billing.purchase_payments (
  purchase_id text not null,
  payment_key text not null,
  amount      bigint not null check (amount >= 0),
  primary key (purchase_id, payment_key)
);
create index purchase_payments_payment on billing.purchase_payments (payment_key);

create table billing.rate_limits (
  id             bigint generated always as identity primary key,
  plan_code      text references billing.plans (code) on update cascade,
  metric         text not null check (metric in ('requests', 'tokens')),
  window_seconds integer not null check (window_seconds between 1 and 31622400),
  max_amount     bigint not null check (max_amount >= 0),
  created_at     timestamptz not null default now(),
  unique nulls not distinct (plan_code, metric, window_seconds)
);
comment on table billing.rate_limits is 'Rate limits per plan (plan_code NULL: accounts without an active plan), per fixed UTC window.';
create table billing.model_prices (
  model                    text not null check (pg_catalog.length(model) between 1 and 200),
  input_per_million        bigint not null check (input_per_million >= 0),
  output_per_million       bigint not null check (output_per_million >= 0),
  cached_input_per_million bigint not null default 0 check (cached_input_per_million >= 0),
  valid_from               timestamptz not null default now(),
  primary key (model, valid_from)
);
comment on table billing.model_prices is 'Credits per million LLM tokens per model, versioned by valid_from.';
-- Usage summed per account, member, UTC hour and model (metadata ->> 'model'): run_maintenance adds
-- the usage rows created before usage_rollup_state.rolled_up_to (billing_internal.roll_up_usage);
-- get_usage_history reads these, and the rows since, so it costs the same at any history size.
create table billing.usage_rollups (
  account_id          uuid not null,
  user_id             uuid,                 -- the member; NULL on the account's own usage
  hour_start          timestamptz not null,
  model               text,
  tokens              bigint not null,      -- credits debited
  requests            bigint not null,
  input_tokens        numeric not null default 0,
  output_tokens       numeric not null default 0,
  cached_input_tokens numeric not null default 0,
  unique nulls not distinct (account_id, hour_start, user_id, model)
);
-- The same per UTC day: a range of days or months reads a row per day instead of one per hour.
create table billing.usage_rollups_daily (
  account_id          uuid not null,
  user_id             uuid,
  day_start           timestamptz not null,
  model               text,
  tokens              bigint not null,
  requests            bigint not null,
  input_tokens        numeric not null default 0,
  output_tokens       numeric not null default 0,
  cached_input_tokens numeric not null default 0,
  unique nulls not distinct (account_id, day_start, user_id, model)
);
-- One row, written by roll_up_usage (no row: nothing rolled up yet).
create table billing.usage_rollup_state (
  id             boolean primary key default true check (id),
  rolled_up_to   timestamptz not null default '-infinity', -- every usage row created before is in usage_rollups
  candidate_at   timestamptz,  -- the next watermark: usable once every transaction below candidate_xmax has ended
  candidate_xmax xid8
);
alter table billing.token_usage alter column created_at set default clock_timestamp();
-- Rows by insertion time, for roll_up_usage: created_at follows the physical order, so a BRIN index
-- finds the rows since the watermark for almost nothing per insert (autosummarize: ranges are
-- summarized as they fill, in the background).
create index token_usage_created_at on billing.token_usage using brin (created_at) with (autosummarize = on);
create table billing.account_settings (
  account_id               uuid primary key,
  low_balance_threshold    bigint check (low_balance_threshold > 0),
  auto_topup_price_id      text references billing.token_packs (stripe_price_id) on update cascade,
  auto_topup_threshold     bigint check (auto_topup_threshold > 0),
  auto_topup_cooldown      interval not null default '1 hour' check (auto_topup_cooldown >= interval '0'),
  auto_topup_monthly_limit integer not null default 5 check (auto_topup_monthly_limit >= 0),
  low_balance_armed        boolean not null default true,
  depleted_armed           boolean not null default true,
  alerts_sent              bigint not null default 0,
  topup_requests           bigint not null default 0,
  topup_requested_at       timestamptz,
  topup_month_start        timestamptz,
  topup_month_count        integer not null default 0,
  topup_failures           integer not null default 0,
  topup_disabled_at        timestamptz,
  updated_at               timestamptz not null default now(),
  check ((auto_topup_price_id is null) = (auto_topup_threshold is null))
);
create index account_settings_topup_price on billing.account_settings (auto_topup_price_id)
  where auto_topup_price_id is not null;
create table billing.outbox (
  id           bigint generated always as identity,
  account_id   uuid not null,
  event_type   text not null check (event_type in ('purchase.completed', 'subscription.changed', 'payment.failed',
                 'refund.applied', 'balance.low', 'balance.depleted', 'topup.requested', 'topup.disabled')),
  dedupe_key   text not null,
  payload      jsonb not null,
  created_at   timestamptz not null default now(),
  available_at timestamptz not null default now(),
  attempts     integer not null default 0,
  last_error   text,
  acked_at     timestamptz,
  primary key (account_id, id),
  unique (account_id, dedupe_key)
);
create index outbox_claimable on billing.outbox (available_at, id) where acked_at is null;
create index outbox_id on billing.outbox (id);
create index outbox_acked on billing.outbox (acked_at) where acked_at is not null;
create table billing.alert_checks (
  account_id uuid primary key
);

alter table billing.settings enable row level security;
alter table billing.stripe_payments enable row level security;
alter table billing.stripe_refunds enable row level security;
alter table billing.stripe_disputes enable row level security;
alter table billing.grant_purchases enable row level security;
alter table billing.purchase_payments enable row level security;
alter table billing.rate_limits enable row level security;
alter table billing.model_prices enable row level security;
alter table billing.account_settings enable row level security;
alter table billing.outbox enable row level security;
alter table billing.alert_checks enable row level security;
alter table billing.usage_rollups enable row level security;
alter table billing.usage_rollups_daily enable row level security;
alter table billing.usage_rollup_state enable row level security;

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
-- @rust llm_cost_of rate_counted rate_over rate_refusal rate_windows rate_given_back rate_rebuilt rate_usage
-- 0.3.0's Rust helpers: the claw-back ones are replaced (billing_internal.adjustment_targets,
-- adjusted_grant), the others move to billing_internal.
drop function billing._refund_share(bigint, bigint, bigint);
drop function billing._claw_back_split(bigint, bigint, bigint, bigint, bigint, bigint);
drop function billing._burn_allocation(bigint[], bigint);
drop function billing.decode_stripe_event(text);
drop function billing.stripe_signature_check(text, text, text[], integer);

-- @generated functions
-- functions whose result changed
drop function billing.verify_ledger(); -- its result changed

-- Rust functions new or changed in 0.4.0 (as generated by pgrx)

CREATE  FUNCTION billing_internal."burn_allocation"(
	"p_remaining" bigint[], /* Array < i64 > */
	"p_amount" bigint /* i64 */
) RETURNS bigint[] /* :: std :: option :: Option < Vec < i64 > > */
IMMUTABLE STRICT PARALLEL SAFE  
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'burn_allocation_wrapper';

CREATE  FUNCTION billing_internal."adjustment_targets"(
	"p_grant_tokens" bigint, /* i64 */
	"p_tokens" bigint[], /* Array < i64 > */
	"p_weight" bigint[], /* Array < i64 > */
	"p_purchase_weight" bigint[], /* Array < i64 > */
	"p_captured" bigint[], /* Array < i64 > */
	"p_taken" bigint[], /* Array < i64 > */
	"p_open" bigint[] /* Array < i64 > */
) RETURNS bigint[] /* :: std :: option :: Option < Vec < i64 > > */
IMMUTABLE STRICT PARALLEL SAFE  
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'adjustment_targets_wrapper';

CREATE  FUNCTION billing_internal."adjusted_grant"(
	"p_tokens" bigint, /* i64 */
	"p_remaining" bigint, /* i64 */
	"p_frozen" bigint, /* i64 */
	"p_expired" bigint, /* i64 */
	"p_clawed_back" bigint, /* i64 */
	"p_debt_incurred" bigint, /* i64 */
	"p_debt_repaid" bigint, /* i64 */
	"p_live" bool, /* bool */
	"p_claw_target" bigint, /* i64 */
	"p_freeze_target" bigint /* i64 */
) RETURNS bigint[] /* :: std :: option :: Option < Vec < i64 > > */
IMMUTABLE STRICT PARALLEL SAFE  
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'adjusted_grant_wrapper';

CREATE  FUNCTION billing_internal."given_back_grant"(
	"p_tokens" bigint, /* i64 */
	"p_remaining" bigint, /* i64 */
	"p_frozen" bigint, /* i64 */
	"p_expired" bigint, /* i64 */
	"p_clawed_back" bigint, /* i64 */
	"p_debt_incurred" bigint, /* i64 */
	"p_debt_repaid" bigint, /* i64 */
	"p_live" bool, /* bool */
	"p_back" bigint, /* i64 */
	"p_freeze_target" bigint /* i64 */
) RETURNS bigint[] /* :: std :: option :: Option < Vec < i64 > > */
IMMUTABLE STRICT PARALLEL SAFE  
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'given_back_grant_wrapper';

CREATE  FUNCTION billing_internal."decode_stripe_event"(
	"p_payload" TEXT /* & str */
) RETURNS jsonb /* JsonB */
IMMUTABLE STRICT PARALLEL SAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'decode_stripe_event_wrapper';

CREATE  FUNCTION billing_internal."stripe_signature_check"(
	"p_payload" TEXT, /* Option < & str > */
	"p_signature_header" TEXT, /* Option < & str > */
	"p_secrets" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"p_tolerance_seconds" INT /* i32 */
) RETURNS TEXT /* Option < String > */
VOLATILE PARALLEL SAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stripe_signature_check_wrapper';

CREATE  FUNCTION billing_internal."llm_cost_of"(
	"p_input_per_million" bigint, /* i64 */
	"p_output_per_million" bigint, /* i64 */
	"p_cached_input_per_million" bigint, /* i64 */
	"p_input_tokens" bigint, /* i64 */
	"p_output_tokens" bigint, /* i64 */
	"p_cached_input_tokens" bigint /* i64 */
) RETURNS bigint /* Option < i64 > */
IMMUTABLE STRICT PARALLEL SAFE  
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'llm_cost_of_wrapper';

CREATE  FUNCTION billing_internal."rate_counted"(
	"p_state" bigint[], /* Array < i64 > */
	"p_tokens" bigint, /* i64 */
	"p_requests" INT, /* i32 */
	"p_now" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS bigint[] /* Vec < i64 > */
IMMUTABLE STRICT PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_counted_wrapper';

CREATE  FUNCTION billing_internal."rate_over"(
	"p_state" bigint[], /* Array < i64 > */
	"p_tokens" bigint, /* i64 */
	"p_requests" INT /* i32 */
) RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_over_wrapper';

CREATE  FUNCTION billing_internal."rate_refusal"(
	"p_state" bigint[], /* Array < i64 > */
	"p_tokens" bigint, /* i64 */
	"p_requests" INT /* i32 */
) RETURNS bigint[] /* :: std :: option :: Option < Vec < i64 > > */
IMMUTABLE STRICT PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_refusal_wrapper';

CREATE  FUNCTION billing_internal."rate_windows"(
	"p_state" bigint[], /* Array < i64 > */
	"p_tokens" bigint, /* i64 */
	"p_requests" INT /* i32 */
) RETURNS bigint[] /* Vec < i64 > */
IMMUTABLE STRICT PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_windows_wrapper';

CREATE  FUNCTION billing_internal."rate_given_back"(
	"p_state" bigint[], /* Array < i64 > */
	"p_windows" bigint[], /* Array < i64 > */
	"p_tokens" bigint, /* i64 */
	"p_requests" INT /* i32 */
) RETURNS bigint[] /* Vec < i64 > */
IMMUTABLE STRICT PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_given_back_wrapper';

CREATE  FUNCTION billing_internal."rate_rebuilt"(
	"p_state" bigint[], /* :: std :: option :: Option < Array < i64 > > */
	"p_limits" bigint[], /* :: std :: option :: Option < Array < i64 > > */
	"p_now" timestamp with time zone /* Option < TimestampWithTimeZone > */
) RETURNS bigint[] /* :: std :: option :: Option < Vec < i64 > > */
IMMUTABLE PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_rebuilt_wrapper';

CREATE  FUNCTION billing_internal."rate_usage"(
	"p_state" bigint[], /* Array < i64 > */
	"p_now" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS TABLE (
	"limit_id" bigint,  /* i64 */
	"window_start" bigint,  /* i64 */
	"used" bigint  /* i64 */
)
IMMUTABLE STRICT PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rate_usage_wrapper';

-- SQL functions new or changed in 0.4.0 (125 of 125)

create or replace function billing_internal.auth_uid() returns uuid
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select coalesce(
    nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
    (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb operator(pg_catalog.->>) 'sub')
  )::uuid
$$;

create or replace function billing_internal.jwt_claims() returns jsonb
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select coalesce(nullif(pg_catalog.current_setting('request.jwt.claim', true), ''),
                  nullif(pg_catalog.current_setting('request.jwt.claims', true), ''))::jsonb
$$;

create or replace function billing_internal.is_billing_admin() returns boolean
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select coalesce((billing_internal.jwt_claims() operator(pg_catalog.->) 'app_metadata'
                   operator(pg_catalog.->>) 'billing_admin') = 'true', false)
$$;

create or replace function billing_internal.caller_kind() returns text
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select case coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text)
           when 'anon' then 'anon'
           when 'authenticated' then 'user'
           else 'service'
         end
$$;

create or replace function billing_internal.is_live(p_expires_at timestamptz) returns boolean
language sql stable parallel safe as $$
  select p_expires_at is null or p_expires_at operator(pg_catalog.>) pg_catalog.now()
$$;

create or replace function billing_internal.require_access(p_user_id uuid) returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_kind text := billing_internal.caller_kind();
begin
  if v_kind = 'service' then
    return;
  elsif v_kind = 'anon' then
    raise exception using errcode = '42501', message = 'anonymous callers cannot use billing functions';
  elsif p_user_id is distinct from billing_internal.auth_uid() then
    raise exception using errcode = '42501', message = 'not allowed to act for another user';
  end if;
end
$$;

create or replace function billing_internal.require_service() returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if billing_internal.caller_kind() <> 'service' then
    raise exception using errcode = '42501', message = 'only the service role or the backend may call this function';
  end if;
end
$$;

create or replace function billing_internal.check_amount(p_name text, p_amount bigint) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_amount is null or p_amount <= 0 then
    raise exception using errcode = '22023',
      message = pg_catalog.format('%s must be a positive number of tokens', p_name),
      detail = pg_catalog.format('%s = %s', p_name, coalesce(p_amount::text, 'NULL'));
  end if;
end
$$;

create or replace function billing_internal.check_key(p_key text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_key is not null and (pg_catalog.length(p_key) < 1 or pg_catalog.length(p_key) > 255) then
    raise exception using errcode = '22023', message = 'idempotency key must be 1 to 255 characters';
  end if;
end
$$;

create or replace function billing_internal.check_metadata(p_metadata jsonb) returns jsonb
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_metadata is null then
    return '{}'::jsonb;
  elsif pg_catalog.jsonb_typeof(p_metadata) <> 'object' then
    raise exception using errcode = '22023', message = 'metadata must be a JSON object';
  end if;
  return p_metadata;
end
$$;

create or replace function billing_internal.raise_insufficient(p_requested bigint, p_available bigint, p_debt bigint) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT402', message = 'insufficient tokens',
    detail = pg_catalog.format('requested %s, available %s', p_requested, p_available)
             || case when p_debt > 0 then pg_catalog.format(', debt %s', p_debt) else '' end,
    hint = case when p_debt > 0 then 'A refund or lost dispute left a debt; new tokens pay it off first.'
                else 'Buy more tokens or wait for the plan to renew.' end;
end
$$;

create or replace function billing_internal.burn(p_account_id uuid, p_amount bigint, p_repays_debt boolean) returns bigint[]
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_ids bigint[];
  v_remaining bigint[];
  v_take bigint[];
  v_drawn bigint[];
begin
  select pg_catalog.array_agg(g.id order by g.expires_at, g.id),
         pg_catalog.array_agg(g.remaining order by g.expires_at, g.id)
    into v_ids, v_remaining
    from billing.token_grants g
   where g.account_id = p_account_id and g.remaining > 0
     and billing_internal.is_live(g.expires_at);
  v_take := billing_internal.burn_allocation(v_remaining, p_amount);
  if v_take is null then
    raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
      detail = pg_catalog.format('needed %s tokens for account %s, grants held %s', p_amount, p_account_id,
                                 coalesce((select pg_catalog.sum(r) from pg_catalog.unnest(v_remaining) r), 0));
  end if;
  with take as (
    select t.id, t.tokens, t.ord from rows from (pg_catalog.unnest(v_ids), pg_catalog.unnest(v_take)) with ordinality as t(id, tokens, ord)
     where t.tokens > 0
  ), upd as (
    update billing.token_grants g
       set remaining = g.remaining - take.tokens,
           debt_repaid = g.debt_repaid + case when p_repays_debt then take.tokens else 0 end
      from take where g.account_id = p_account_id and g.id = take.id
    returning g.id
  )
  select pg_catalog.array_agg(array[take.id, take.tokens] order by take.ord) into v_drawn
    from take join upd on upd.id = take.id;
  return v_drawn;
end
$$;

create or replace function billing_internal.set_grant_counters(p_account_id uuid, p_grant_id bigint, p_counters bigint[], p_what text)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_counters is null then
    raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
      detail = pg_catalog.format('grant %s: %s is impossible with its counters', p_grant_id, p_what);
  end if;
  update billing.token_grants g
     set remaining = p_counters[1], frozen = p_counters[2], expired = p_counters[3],
         clawed_back = p_counters[4], debt_incurred = p_counters[5]
   where g.account_id = p_account_id and g.id = p_grant_id;
  return p_counters[6];
end
$$;

create or replace function billing_internal.return_to_grants(p_account_id uuid, p_drawn bigint[]) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_part record;
  v_spendable bigint := 0;
begin
  for v_part in
    select g.*, parts.t
      from (select p_drawn[i][1] as grant_id, pg_catalog.sum(p_drawn[i][2])::bigint as t
              from pg_catalog.generate_subscripts(p_drawn, 1) as i group by 1) parts
      join billing.token_grants g on g.account_id = p_account_id and g.id = parts.grant_id
     order by g.id
  loop
    perform billing_internal.set_grant_counters(p_account_id, v_part.id,
      billing_internal.given_back_grant(v_part.tokens, v_part.remaining, v_part.frozen, v_part.expired, v_part.clawed_back,
                                        v_part.debt_incurred, v_part.debt_repaid, billing_internal.is_live(v_part.expires_at),
                                        v_part.t, v_part.freeze_target),
      pg_catalog.format('giving back %s tokens', v_part.t));
    v_spendable := v_spendable + (select g.remaining from billing.token_grants g
                                   where g.account_id = p_account_id and g.id = v_part.id) - v_part.remaining;
  end loop;
  return v_spendable;
end
$$;

create or replace function billing_internal.extend_grant(p_account_id uuid, p_grant_id bigint, p_tokens bigint, p_expires_at timestamptz)
returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_before bigint;
begin
  update billing.token_grants g set expires_at = p_expires_at
   where g.account_id = p_account_id and g.id = p_grant_id and billing_internal.is_live(g.expires_at)
     and g.expires_at is distinct from p_expires_at;
  select g.tokens into v_before from billing.token_grants g where g.account_id = p_account_id and g.id = p_grant_id;
  if v_before >= p_tokens then
    return 0;
  end if;
  update billing.token_grants g
     set remaining = g.remaining + case when billing_internal.is_live(g.expires_at) then p_tokens - g.tokens else 0 end,
         expired = g.expired + case when billing_internal.is_live(g.expires_at) then 0 else p_tokens - g.tokens end,
         tokens = p_tokens
   where g.account_id = p_account_id and g.id = p_grant_id;
  return p_tokens - v_before;
end
$$;

create or replace function billing_internal.adjust_grant(p_account_id uuid, p_grant_id bigint, p_claw_target bigint, p_freeze_target bigint)
returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  g billing.token_grants;
  v_after billing.token_grants;
begin
  select * into g from billing.token_grants t where t.account_id = p_account_id and t.id = p_grant_id;
  perform billing_internal.set_grant_counters(p_account_id, p_grant_id,
    billing_internal.adjusted_grant(g.tokens, g.remaining, g.frozen, g.expired, g.clawed_back, g.debt_incurred, g.debt_repaid,
                                    billing_internal.is_live(g.expires_at), p_claw_target, p_freeze_target),
    pg_catalog.format('adjusting to claw back %s and freeze %s', p_claw_target, p_freeze_target));
  update billing.token_grants t set freeze_target = p_freeze_target
   where t.account_id = p_account_id and t.id = p_grant_id
  returning * into v_after;
  return pg_catalog.jsonb_build_object('grant_id', p_grant_id,
    'clawed_back', v_after.clawed_back - g.clawed_back, 'debt', v_after.debt_incurred - g.debt_incurred,
    'frozen', v_after.frozen - g.frozen, 'spendable', v_after.remaining - g.remaining);
end
$$;

create or replace function billing_internal.return_repaid_debt(p_account_id uuid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_owed bigint;
  v_ids bigint[];
  v_repaid bigint[];
  v_take bigint[];
  v_round integer := 0;
  v_grant record;
begin
  loop
    select -(coalesce(pg_catalog.sum(g.debt_incurred - g.debt_repaid), 0)) into v_owed
      from billing.token_grants g where g.account_id = p_account_id;
    exit when v_owed <= 0;
    v_round := v_round + 1;
    if v_round > 100 then
      raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
        detail = pg_catalog.format('account %s: repaid debt does not settle', p_account_id);
    end if;
    select pg_catalog.array_agg(g.id order by billing_internal.is_live(g.expires_at) desc, g.expires_at desc nulls first, g.id desc),
           pg_catalog.array_agg(g.debt_repaid order by billing_internal.is_live(g.expires_at) desc, g.expires_at desc nulls first, g.id desc)
      into v_ids, v_repaid
      from billing.token_grants g where g.account_id = p_account_id and g.debt_repaid > 0;
    v_take := billing_internal.burn_allocation(v_repaid, v_owed);
    if v_take is null then
      raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
        detail = pg_catalog.format('account %s is owed %s tokens of repaid debt, grants hold %s', p_account_id, v_owed,
                                   coalesce((select pg_catalog.sum(r) from pg_catalog.unnest(v_repaid) r), 0));
    end if;
    for v_grant in
      select g.*, t.tokens as back
        from rows from (pg_catalog.unnest(v_ids), pg_catalog.unnest(v_take)) as t(id, tokens)
        join billing.token_grants g on g.account_id = p_account_id and g.id = t.id
       where t.tokens > 0
    loop
      update billing.token_grants g set debt_repaid = g.debt_repaid - v_grant.back
       where g.account_id = p_account_id and g.id = v_grant.id;
      perform billing_internal.set_grant_counters(p_account_id, v_grant.id,
        billing_internal.given_back_grant(v_grant.tokens, v_grant.remaining, v_grant.frozen, v_grant.expired,
                                  v_grant.clawed_back, v_grant.debt_incurred, v_grant.debt_repaid - v_grant.back,
                                  billing_internal.is_live(v_grant.expires_at), v_grant.back, v_grant.freeze_target),
        pg_catalog.format('returning %s tokens of repaid debt', v_grant.back));
    end loop;
  end loop;
end
$$;

create or replace function billing_internal.flush_head(p_account_id uuid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  update billing.token_grants g set remaining = b.head_remaining
    from billing.balances b
   where b.account_id = p_account_id and b.head_grant_id is not null
     and g.account_id = b.account_id and g.id = b.head_grant_id;
  update billing.balances b set head_grant_id = null, head_remaining = 0
   where b.account_id = p_account_id and b.head_grant_id is not null;
end
$$;

create or replace function billing_internal.recompute_balance(p_account_id uuid) returns billing.balances
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_debt bigint;
  v_spendable bigint;
  v_head billing.token_grants;
  v_row billing.balances;
begin
  perform billing_internal.flush_head(p_account_id);
  select coalesce(pg_catalog.sum(g.debt_incurred - g.debt_repaid), 0), coalesce(pg_catalog.sum(g.remaining), 0)
    into v_debt, v_spendable
    from billing.token_grants g where g.account_id = p_account_id;
  if v_debt < 0 then  -- forgiven debt that others had repaid: give those tokens back
    perform billing_internal.return_repaid_debt(p_account_id);
    select coalesce(pg_catalog.sum(g.remaining), 0) into v_spendable from billing.token_grants g where g.account_id = p_account_id;
    v_debt := 0;
  end if;
  if v_debt > 0 and v_spendable > 0 then
    perform billing_internal.burn(p_account_id, least(v_debt, v_spendable), true);
  end if;
  select g.* into v_head from billing.token_grants g
   where g.account_id = p_account_id and g.remaining > 0 and billing_internal.is_live(g.expires_at)
   order by g.expires_at, g.id
   limit 1;
  update billing.balances b
     set spendable = (select coalesce(pg_catalog.sum(g.remaining), 0) from billing.token_grants g
                       where g.account_id = p_account_id),
         held = (select coalesce(pg_catalog.sum(r.tokens), 0) from billing.token_reservations r
                  where r.account_id = p_account_id and r.status = 'held'),
         debt = (select coalesce(pg_catalog.sum(g.debt_incurred - g.debt_repaid), 0) from billing.token_grants g
                  where g.account_id = p_account_id),
         next_event_at = least(
           (select pg_catalog.min(g.expires_at) from billing.token_grants g
             where g.account_id = p_account_id and g.remaining > 0),
           (select pg_catalog.min(r.expires_at) from billing.token_reservations r
             where r.account_id = p_account_id and r.status = 'held')),
         head_grant_id = v_head.id,
         head_remaining = coalesce(v_head.remaining, 0),
         updated_at = pg_catalog.now()
   where b.account_id = p_account_id
  returning b.* into v_row;
  if v_row.spendable < v_row.alert_below or v_row.spendable >= v_row.alert_above then
    perform billing_internal.queue_alert_check(p_account_id);
  end if;
  return v_row;
end
$$;

create or replace function billing_internal.lock_and_settle(p_account_id uuid, p_create boolean) returns billing.balances
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_row billing.balances;
  v_hold record;
begin
  select b.* into v_row from billing.balances b where b.account_id = p_account_id for update;
  if not found then
    if not p_create then
      return null;
    end if;
    perform billing_internal.new_balance(p_account_id);
    select b.* into v_row from billing.balances b where b.account_id = p_account_id for update;
  end if;
  perform billing_internal.flush_head(p_account_id);
  if v_row.next_event_at is null or v_row.next_event_at > pg_catalog.now() then
    return v_row; -- spendable, held and debt are exact; the caller recomputes the head when done
  end if;
  for v_hold in
    select r.id, r.drawn_from, r.user_id, r.tokens, r.limit_period_start, r.rate_windows from billing.token_reservations r
     where r.account_id = p_account_id and r.status = 'held' and r.expires_at <= pg_catalog.now()
  loop
    perform billing_internal.return_to_grants(p_account_id, v_hold.drawn_from);
    perform billing_internal.refund_member(p_account_id, v_hold.user_id, v_hold.tokens, v_hold.limit_period_start);
    perform billing_internal.return_rate_limits(p_account_id, v_hold.rate_windows, v_hold.tokens, 1);
    update billing.token_reservations r set status = 'expired', settled_at = pg_catalog.now()
     where r.account_id = p_account_id and r.id = v_hold.id;
  end loop;
  update billing.token_grants g set expired = g.expired + g.remaining, remaining = 0
   where g.account_id = p_account_id and g.remaining > 0 and not billing_internal.is_live(g.expires_at);
  v_row := billing_internal.recompute_balance(p_account_id);
  -- The caller writes grants next: leave no head, so its final recompute cannot overwrite them.
  perform billing_internal.flush_head(p_account_id);
  return v_row;
end
$$;

create or replace function billing_internal.spendable_now(p_account_id uuid) returns bigint
language sql stable set search_path = pg_catalog, pg_temp as $$
  select case
    when b.account_id is null then 0
    when b.next_event_at is null or b.next_event_at > pg_catalog.now() then b.spendable
    else greatest(0,
      (select coalesce(pg_catalog.sum(case when g.id = b.head_grant_id then b.head_remaining else g.remaining end), 0)
         from billing.token_grants g
        where g.account_id = p_account_id and g.remaining > 0
          and billing_internal.is_live(g.expires_at))
      + (select coalesce(pg_catalog.sum(r.drawn_from[i][2]), 0)
           from billing.token_reservations r
           cross join lateral pg_catalog.generate_subscripts(r.drawn_from, 1) as i
           join billing.token_grants g on g.account_id = r.account_id and g.id = r.drawn_from[i][1]
          where r.account_id = p_account_id and r.status = 'held' and r.expires_at <= pg_catalog.now()
            and billing_internal.is_live(g.expires_at))
      - b.debt)
  end
  from (select p_account_id as id) u
  left join billing.balances b on b.account_id = u.id
$$;

create or replace function billing_internal.check_balance_reader(p_user_id uuid) returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  perform billing_internal.require_access(p_user_id);
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  end if;
end
$$;

create or replace function billing_internal.spend_needs_checks(p_user_id uuid, p_amount bigint, p_idempotency_key text,
                                                    p_metadata jsonb) returns boolean
language c stable parallel safe as 'MODULE_PATHNAME', 'spend_needs_checks';

create or replace function billing_internal.read_needs_checks(p_user_id uuid, p_account_id uuid) returns boolean
language c stable parallel safe as 'MODULE_PATHNAME', 'read_needs_checks';

create or replace function billing.get_balance(p_user_id uuid, p_account_id uuid default null) returns bigint
language plpgsql stable as $$
declare
  v_spendable pg_catalog.int8;
begin
  -- One test on the hot path, which a backend asking about a personal account passes: PL/pgSQL sets
  -- each expression up again in every transaction.
  if billing_internal.read_needs_checks(p_user_id, p_account_id) then
    if p_user_id is null
       or pg_catalog.current_setting('role') operator(pg_catalog.=) any (array['anon', 'authenticated']::pg_catalog.text[]) then
      perform billing_internal.check_balance_reader(p_user_id);
    end if;
    if p_account_id operator(pg_catalog.<>) p_user_id then
      perform billing_internal.require_member(p_account_id, p_user_id);
    end if;
  end if;
  select b.spendable into v_spendable
    from billing.balances b
   where b.account_id operator(pg_catalog.=) coalesce(p_account_id, p_user_id)
     and (b.next_event_at is null or b.next_event_at operator(pg_catalog.>) pg_catalog.now());
  if found then
    return v_spendable;
  end if;
  return billing_internal.spendable_now(coalesce(p_account_id, p_user_id));
end
$$;
comment on function billing.get_balance(uuid, uuid) is
  'Spendable tokens now of the account (default: p_user_id''s personal account); excludes expired and held tokens.';

create or replace function billing_internal.consume_replay(p_account_id uuid, p_member uuid, p_amount bigint, p_key text)
returns table (usage_id bigint, tokens_charged bigint, balance_after bigint, replayed boolean)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_prev billing.token_usage;
begin
  select u.* into v_prev from billing.token_usage u
   where u.account_id = p_account_id and u.user_id is not distinct from p_member and u.idempotency_key = p_key;
  if not found then
    raise exception using errcode = 'XX000', message = 'pg_billing: idempotency key conflict without a usage row';
  elsif v_prev.tokens <> p_amount then
    raise exception using errcode = 'PT409', message = 'idempotency key reused with a different amount',
      detail = pg_catalog.format('key %L charged %s tokens, this call asks for %s', p_key, v_prev.tokens, p_amount);
  end if;
  return query select v_prev.id, v_prev.tokens, v_prev.balance_after, true;
end
$$;

create or replace function billing.consume_tokens(
  p_user_id uuid,
  p_amount bigint,
  p_idempotency_key text default null,
  p_metadata jsonb default '{}',
  p_account_id uuid default null
) returns table (usage_id bigint, tokens_charged bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_role text;
  v_id bigint;
  v_flags integer;
  v_row billing.balances;
  v_drawn bigint[];
  v_balance bigint;
  v_spent bigint;
  v_limit bigint;
  v_period text;
  v_over boolean;
begin
  -- One test for every check a backend's call passes (PL/pgSQL sets each expression up again in
  -- every transaction, so the hot path evaluates as few as it can): a browser caller, or an argument
  -- to check. The checks inside are the rules of billing_internal.require_access and the check_*
  -- helpers, with their errors. The key's length is tested in bytes first (no character count on
  -- the hot path; at most 255 bytes is at most 255 characters), in characters inside.
  if billing_internal.spend_needs_checks(p_user_id, p_amount, p_idempotency_key, p_metadata) then
    v_role := pg_catalog.current_setting('role');
    if v_role = 'authenticated' or v_role = 'anon' then
      perform billing_internal.require_access(p_user_id);
    end if;
    if p_user_id is null then
      raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
    elsif p_amount is null or p_amount <= 0 then
      perform billing_internal.check_amount('p_amount', p_amount);
    elsif p_idempotency_key is not null and pg_catalog.length(p_idempotency_key) not between 1 and 255 then
      perform billing_internal.check_key(p_idempotency_key);
    end if;
    if p_metadata is null then
      p_metadata := '{}';
    elsif pg_catalog.jsonb_typeof(p_metadata) <> 'object' then
      perform billing_internal.check_metadata(p_metadata);
    end if;
  end if;
  if p_account_id <> p_user_id then  -- (p_user_id is not NULL here; no account given: NULL, not taken)
    -- A member spends from a team account. Every writer of an account locks its balance row first:
    -- here the debit's UPDATE takes it (or lock_and_settle on the slow path, or, with a key, a lock
    -- taken before the key is looked up), and the member is charged under it, so a member removed
    -- by a committed transaction spends nothing more. A refusal (not a member, over the member's
    -- limit, a rate limit) raises inside the transaction, which undoes the debit. Written here, not
    -- in helpers: each helper call's SET search_path cost a contended team consume about 10%.
    if p_idempotency_key is not null then
      perform 1 from billing.balances b where b.account_id = p_account_id for update;
      perform billing_internal.require_member(p_account_id, p_user_id);
      if exists (select 1 from billing.token_usage u where u.account_id = p_account_id
                    and u.user_id = p_user_id and u.idempotency_key = p_idempotency_key) then
        return query select * from billing_internal.consume_replay(p_account_id, p_user_id, p_amount, p_idempotency_key);
        return;
      end if;
    end if;
    -- The debit, as on the personal fast path; v_flags as there (NULL: the fast path did not apply).
    update billing.balances b
       set spendable = b.spendable - p_amount, head_remaining = b.head_remaining - p_amount,
           rate_state = billing_internal.rate_counted(b.rate_state, p_amount, 1, pg_catalog.now())
     where b.account_id = p_account_id and b.head_remaining >= p_amount and b.debt = 0
       and (b.next_event_at is null or b.next_event_at > pg_catalog.now())
    returning b.spendable, array[[b.head_grant_id, p_amount]],
              ((b.spendable < b.alert_below or b.spendable >= b.alert_above) is true)::integer
              + 2 * (billing_internal.rate_over(b.rate_state, p_amount, 1) is true)::integer
         into v_balance, v_drawn, v_flags;
    if v_flags is null then
      v_row := billing_internal.lock_and_settle(p_account_id, false);
    end if;
    -- The member's period spending: billing_internal.charge_member's UPDATE, written out. v_over:
    -- over the member's limit; NULL: not a member.
    update billing.account_members m
       set period_start = pg_catalog.date_trunc(m.spend_limit_period, pg_catalog.now(), 'UTC'),
           period_spent = least(case when m.period_start is not distinct from
                                           pg_catalog.date_trunc(m.spend_limit_period, pg_catalog.now(), 'UTC')
                                     then m.period_spent else 0 end, 9223372036854775807 - p_amount) + p_amount
     where m.account_id = p_account_id and m.user_id = p_user_id
    returning m.period_spent, m.spend_limit, m.spend_limit_period, (m.period_spent > m.spend_limit) is true
         into v_spent, v_limit, v_period, v_over;
    -- One test on the hot path (a member within their limit, the fast path's debit, nothing crossed).
    if v_flags is distinct from 0 or v_over is not false then
      if v_over is null then
        perform billing_internal.require_member(p_account_id, p_user_id);  -- raises 42501
      elsif v_over then
        perform billing_internal.raise_member_limit(p_amount, v_spent, v_limit, v_period);
      end if;
      if v_flags is null then
        if v_row.account_id is null or v_row.spendable < p_amount or v_row.debt > 0 then
          perform billing_internal.raise_insufficient(p_amount, coalesce(v_row.spendable, 0), coalesce(v_row.debt, 0));
        end if;
        v_drawn := billing_internal.burn(p_account_id, p_amount, false);
        v_balance := (billing_internal.recompute_balance(p_account_id)).spendable;
        perform billing_internal.take_rate_limits(p_account_id, p_amount, 1);
      else
        if v_flags >= 2 then
          perform billing_internal.raise_rate_limited(p_account_id, p_amount, 1);
        end if;
        perform billing_internal.queue_alert_check(p_account_id);
      end if;
    end if;
    insert into billing.token_usage (account_id, user_id, tokens, idempotency_key, metadata, drawn_from, balance_after)
    values (p_account_id, p_user_id, p_amount, p_idempotency_key, p_metadata, v_drawn, v_balance)
    returning id, token_usage.tokens, token_usage.balance_after, false into usage_id, tokens_charged, balance_after, replayed;
    return next;
    return;
  end if;

  -- The user's personal account (id = p_user_id). Fast path: nothing is due to expire and the head
  -- grant covers the amount. Two statements: the UPDATE of the balance row (which also locks it),
  -- then the INSERT of the usage row; with a key, ON CONFLICT inserts nothing for a key seen before.
  -- (One statement, a CTE feeding the INSERT, costs more: its CTE scans and the subquery that reads
  -- the flags back set up more executor state than the second statement does.) A racing retry waits
  -- for this UPDATE's lock, so it finds the first call's row. The UPDATE also counts the call against
  -- the rate limits of the account's plan (balances.rate_state; NULL, and no call, without limits).
  -- v_flags says what is left to do: 1 the balance crossed an alert level, 2 the call went over a
  -- rate limit, 4 the key was used before; NULL: the fast path did not apply.
  update billing.balances b
     set spendable = b.spendable - p_amount, head_remaining = b.head_remaining - p_amount,
         rate_state = billing_internal.rate_counted(b.rate_state, p_amount, 1, pg_catalog.now())
   where b.account_id = p_user_id and b.head_remaining >= p_amount and b.debt = 0
     and (b.next_event_at is null or b.next_event_at > pg_catalog.now())
  returning b.spendable, array[[b.head_grant_id, p_amount]],
            ((b.spendable < b.alert_below or b.spendable >= b.alert_above) is true)::integer
            + 2 * (billing_internal.rate_over(b.rate_state, p_amount, 1) is true)::integer
       into balance_after, v_drawn, v_flags;
  if v_flags is null then
    null;  -- the slow path below
  elsif p_idempotency_key is null then
    insert into billing.token_usage (account_id, tokens, metadata, drawn_from, balance_after)
    values (p_user_id, p_amount, p_metadata, v_drawn, balance_after)
    returning id, token_usage.tokens, false into usage_id, tokens_charged, replayed;
  else
    insert into billing.token_usage (account_id, tokens, idempotency_key, metadata, drawn_from, balance_after)
    values (p_user_id, p_amount, p_idempotency_key, p_metadata, v_drawn, balance_after)
    on conflict (account_id, idempotency_key, user_id) where idempotency_key is not null do nothing
    returning id, token_usage.tokens, false into usage_id, tokens_charged, replayed;
    if usage_id is null then
      v_flags := v_flags + 4;
    end if;
  end if;
  if v_flags = 0 then  -- the common case: nothing more to do
    return next;
    return;
  elsif v_flags >= 4 then
    -- The key was used before (or by a racing call that committed first): undo the debit and its count.
    update billing.balances b set spendable = b.spendable + p_amount, head_remaining = b.head_remaining + p_amount,
           rate_state = billing_internal.rate_given_back(b.rate_state, billing_internal.rate_windows(b.rate_state, p_amount, 1),
                                                         p_amount, 1)
     where b.account_id = p_user_id;
    return query select * from billing_internal.consume_replay(p_user_id, null, p_amount, p_idempotency_key);
    return;
  elsif v_flags is not null then
    if v_flags >= 2 then
      perform billing_internal.raise_rate_limited(p_user_id, p_amount, 1);
    end if;
    perform billing_internal.queue_alert_check(p_user_id);
    return next;
    return;
  end if;

  -- Slow path: lock, flush the head, settle what is due, then spend across grants in order.
  v_row := billing_internal.lock_and_settle(p_user_id, false);
  if v_row.account_id is not null and p_idempotency_key is not null
     and exists (select 1 from billing.token_usage u where u.account_id = p_user_id and u.user_id is null
                    and u.idempotency_key = p_idempotency_key) then
    return query select * from billing_internal.consume_replay(p_user_id, null, p_amount, p_idempotency_key);
    return;
  end if;
  if v_row.account_id is null or v_row.spendable < p_amount or v_row.debt > 0 then
    perform billing_internal.raise_insufficient(p_amount, coalesce(v_row.spendable, 0), coalesce(v_row.debt, 0));
  end if;
  v_drawn := billing_internal.burn(p_user_id, p_amount, false);
  v_row := billing_internal.recompute_balance(p_user_id);
  insert into billing.token_usage (account_id, tokens, idempotency_key, metadata, drawn_from, balance_after)
  values (p_user_id, p_amount, p_idempotency_key, p_metadata, v_drawn, v_row.spendable)
  returning id into v_id;
  perform billing_internal.take_rate_limits(p_user_id, p_amount, 1);
  return query select v_id, p_amount, v_row.spendable::bigint, false;
end
$$;
comment on function billing.consume_tokens(uuid, bigint, text, jsonb, uuid) is
  'Atomically debits tokens (soonest-expiring first) from the account (default: p_user_id''s personal account); PT402 when not enough or over the member''s limit, PT409 on a key reused with another amount.';

create or replace function billing_internal.insert_grant(
  p_account_id uuid, p_tokens bigint, p_reference text, p_kind text, p_expires_at timestamptz, p_metadata jsonb,
  p_payment_intent text, p_price_id text, p_amount_paid bigint, p_currency text,
  out grant_id bigint, out inserted boolean
)
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  -- A reference names one grant across accounts: another account's use of it is a conflict. The
  -- unique key is per account (so the schema distributes by account), so grants of one reference
  -- to two accounts serialize on a transaction lock of the reference; the check below then sees
  -- the other's committed grant (each statement reads a fresh snapshot). The lock is one of 1024 by
  -- the reference's hash, so a transaction granting to many accounts (a bulk import) takes at most
  -- 1024 locks, not one per grant, which would exhaust the shared lock table.
  perform pg_catalog.pg_advisory_xact_lock(1651076204, pg_catalog.hashtext(p_kind || ':' || p_reference) & 1023);
  if exists (select 1 from billing.token_grants g
              where g.kind = p_kind and g.reference = p_reference and g.account_id <> p_account_id) then
    raise exception using errcode = 'PT409', message = 'grant reference already used for another account',
      detail = pg_catalog.format('(%s, %s)', p_kind, p_reference);
  end if;
  insert into billing.token_grants (account_id, kind, reference, tokens, remaining, expires_at, metadata,
                                    stripe_payment_intent, stripe_price_id, amount_paid, currency)
  values (p_account_id, p_kind, p_reference, p_tokens, p_tokens, p_expires_at, p_metadata,
          p_payment_intent, p_price_id, p_amount_paid, p_currency)
  on conflict (account_id, kind, reference) do nothing
  returning id into grant_id;
  inserted := found;
  if not inserted then
    select g.id into grant_id from billing.token_grants g
     where g.account_id = p_account_id and g.kind = p_kind and g.reference = p_reference;
  end if;
end
$$;

create or replace function billing.grant_purchase(
  p_user_id uuid,
  p_tokens bigint,
  p_reference text,
  p_kind text default 'purchase',
  p_expires_at timestamptz default null,
  p_metadata jsonb default '{}',
  p_account_id uuid default null
) returns table (grant_id bigint, tokens bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid;
  v_grant billing.token_grants;
  v_ins record;
  v_row billing.balances;
begin
  perform billing_internal.require_service();
  v_account := billing_internal.payer(p_user_id, p_account_id);
  perform billing_internal.check_amount('p_tokens', p_tokens);
  if p_reference is null or pg_catalog.length(p_reference) < 1 or pg_catalog.length(p_reference) > 255 then
    raise exception using errcode = '22023', message = 'p_reference must be 1 to 255 characters';
  end if;
  if p_kind is null or p_kind !~ '^[a-z][a-z_]{0,31}$' then
    raise exception using errcode = '22023', message = 'p_kind must be a lowercase word such as purchase, subscription, promo or admin';
  end if;
  if p_expires_at is not null and p_expires_at <= pg_catalog.now() then
    raise exception using errcode = '22023', message = 'p_expires_at must be in the future';
  end if;
  p_metadata := billing_internal.check_metadata(p_metadata);

  perform billing_internal.lock_and_settle(v_account, true);
  select * into v_ins from billing_internal.insert_grant(v_account, p_tokens, p_reference, p_kind, p_expires_at,
                                                         p_metadata, null, null, null, null);
  select g.* into v_grant from billing.token_grants g where g.account_id = v_account and g.id = v_ins.grant_id;
  if v_grant.tokens <> p_tokens or v_grant.expires_at is distinct from p_expires_at then
    raise exception using errcode = 'PT409', message = 'grant reference already used with different terms',
      detail = pg_catalog.format('(%s, %s) already granted %s tokens', p_kind, p_reference, v_grant.tokens);
  end if;
  v_row := billing_internal.recompute_balance(v_account);
  return query select v_grant.id, v_grant.tokens, v_row.spendable::bigint, not v_ins.inserted;
end
$$;
comment on function billing.grant_purchase(uuid, bigint, text, text, timestamptz, jsonb, uuid) is
  'Credits tokens once per (kind, reference) to the account (default: p_user_id''s personal account); repeats return the same grant.';

create or replace function billing_internal.hold(p_user_id uuid, p_amount bigint, p_idempotency_key text, p_ttl interval,
                                      p_account_id uuid, p_metadata jsonb)
returns table (reservation_id uuid, tokens_held bigint, expires_at timestamptz, balance_after bigint, replayed boolean)
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := coalesce(p_account_id, p_user_id);
  v_member uuid;  -- a team member; null for the user's own (personal) account
  v_period timestamptz;
  v_row billing.balances;
  v_prev billing.token_reservations;
  v_res billing.token_reservations;
  v_windows bigint[];
  v_head bigint;
  v_spendable bigint;
  v_alert boolean;
  v_over boolean;
begin
  -- One test for every check a backend's call passes, as in consume_tokens (no metadata here).
  if billing_internal.spend_needs_checks(p_user_id, p_amount, p_idempotency_key, '{}')
     or p_ttl is null or p_ttl <= interval '0' or p_ttl > interval '1 day' then
    perform billing_internal.require_access(p_user_id);
    if p_user_id is null then
      raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
    end if;
    perform billing_internal.check_amount('p_amount', p_amount);
    perform billing_internal.check_key(p_idempotency_key);
    if p_ttl is null or p_ttl <= interval '0' or p_ttl > interval '1 day' then
      raise exception using errcode = '22023', message = 'p_ttl must be between 0 and 1 day (exclusive of 0)';
    end if;
  end if;
  if v_account <> p_user_id then
    v_member := p_user_id;
  end if;

  -- Fast path, as consume_tokens': the head grant covers the amount, nothing is due, no debt. The
  -- UPDATE locks the account's row, holds the tokens on the head, as burn would take them from it,
  -- and counts the call against the plan's rate limits as take_rate_limits does (v_windows: where it
  -- counted, for the commit or release to give back); next_event_at becomes the hold's expiry at
  -- the latest, so whoever comes after it settles the hold. The key is looked up under the lock; a
  -- key seen before undoes the UPDATE and the count, and the slow path replays it.
  update billing.balances b
     set spendable = b.spendable - p_amount, held = b.held + p_amount, head_remaining = b.head_remaining - p_amount,
         next_event_at = least(b.next_event_at, pg_catalog.now() + p_ttl),
         rate_state = billing_internal.rate_counted(b.rate_state, p_amount, 1, pg_catalog.now())
   where b.account_id = v_account and b.head_remaining >= p_amount and b.debt = 0
     and (b.next_event_at is null or b.next_event_at > pg_catalog.now())
  returning b.head_grant_id, b.spendable, (b.spendable < b.alert_below or b.spendable >= b.alert_above) is true,
            billing_internal.rate_over(b.rate_state, p_amount, 1) is true,
            billing_internal.rate_windows(b.rate_state, p_amount, 1)
       into v_head, v_spendable, v_alert, v_over, v_windows;
  if found then
    if p_idempotency_key is not null and exists (
         select 1 from billing.token_reservations r
          where r.account_id = v_account and r.user_id is not distinct from v_member
            and r.idempotency_key = p_idempotency_key) then
      update billing.balances b
         set spendable = b.spendable + p_amount, held = b.held - p_amount, head_remaining = b.head_remaining + p_amount
       where b.account_id = v_account;
      perform billing_internal.return_rate_limits(v_account, v_windows, p_amount, 1);  -- no-op without limits
    else
      if v_member is not null then
        v_period := billing_internal.charge_member(v_account, v_member, p_amount);  -- counts while held
      end if;
      if v_over then
        perform billing_internal.raise_rate_limited(v_account, p_amount, 1);
      end if;
      if v_alert then
        perform billing_internal.queue_alert_check(v_account);
      end if;
      insert into billing.token_reservations (account_id, user_id, tokens, idempotency_key, expires_at, drawn_from,
                                              limit_period_start, rate_windows, metadata)
      values (v_account, v_member, p_amount, p_idempotency_key, pg_catalog.now() + p_ttl, array[[v_head, p_amount]],
              v_period, v_windows, p_metadata)
      returning * into v_res;
      return query select v_res.id, v_res.tokens, v_res.expires_at, v_spendable, false;
      return;
    end if;
  end if;

  v_row := billing_internal.lock_and_settle(v_account, false);
  if v_member is not null then
    perform billing_internal.require_member(v_account, v_member);  -- under the account's lock
  end if;
  if v_row.account_id is not null and p_idempotency_key is not null then
    select r.* into v_prev from billing.token_reservations r
     where r.account_id = v_account and r.user_id is not distinct from v_member and r.idempotency_key = p_idempotency_key;
    if found then
      if v_prev.tokens <> p_amount then
        raise exception using errcode = 'PT409', message = 'idempotency key reused with a different amount',
          detail = pg_catalog.format('key %L reserved %s tokens, this call asks for %s', p_idempotency_key, v_prev.tokens, p_amount);
      end if;
      v_row := billing_internal.recompute_balance(v_account);
      return query select v_prev.id, v_prev.tokens, v_prev.expires_at, v_row.spendable::bigint, true;
      return;
    end if;
  end if;
  if v_member is not null then
    v_period := billing_internal.charge_member(v_account, v_member, p_amount);  -- counts while held
  end if;
  if v_row.account_id is null or v_row.spendable < p_amount or v_row.debt > 0 then
    perform billing_internal.raise_insufficient(p_amount, coalesce(v_row.spendable, 0), coalesce(v_row.debt, 0));
  end if;

  v_windows := billing_internal.take_rate_limits(v_account, p_amount, 1);  -- corrected at commit or release
  insert into billing.token_reservations (account_id, user_id, tokens, idempotency_key, expires_at, drawn_from,
                                          limit_period_start, rate_windows, metadata)
  values (v_account, v_member, p_amount, p_idempotency_key, pg_catalog.now() + p_ttl,
          billing_internal.burn(v_account, p_amount, false), v_period, v_windows, p_metadata)
  returning * into v_res;
  v_row := billing_internal.recompute_balance(v_account);
  return query select v_res.id, v_res.tokens, v_res.expires_at, v_row.spendable::bigint, false;
end
$$;

create or replace function billing.reserve_tokens(
  p_user_id uuid,
  p_amount bigint,
  p_idempotency_key text,
  p_ttl interval default '15 minutes',
  p_account_id uuid default null
) returns table (reservation_id uuid, tokens_held bigint, expires_at timestamptz, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin  -- PL/pgSQL keeps the plan (a SQL function with a SET clause is planned again on every call)
  return query select * from billing_internal.hold(p_user_id, p_amount, p_idempotency_key, p_ttl, p_account_id, '{}'::jsonb);
end
$$;
comment on function billing.reserve_tokens(uuid, bigint, text, interval, uuid) is
  'Holds tokens of the account (default: p_user_id''s personal account) for a streaming request; expired holds are released lazily or by billing.run_maintenance().';

create or replace function billing_internal.lock_reservation(p_reservation_id uuid) returns billing.token_reservations
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid;
  v_holder uuid;
  v_res billing.token_reservations;
begin
  if p_reservation_id is null then
    raise exception using errcode = '22023', message = 'p_reservation_id must not be NULL';
  end if;
  if billing_internal.caller_kind() = 'anon' then
    perform billing_internal.require_access(null); -- 42501, as everywhere for anon
  end if;
  select r.account_id, coalesce(r.user_id, r.account_id) into v_account, v_holder
    from billing.token_reservations r where r.id = p_reservation_id;
  -- Another user's reservation reads as missing: its existence is not theirs to learn.
  if not found or (billing_internal.caller_kind() <> 'service' and v_holder is distinct from billing_internal.auth_uid()) then
    raise exception using errcode = 'PT404', message = 'reservation not found';
  end if;
  perform billing_internal.lock_and_settle(v_account, false);
  select r.* into v_res from billing.token_reservations r where r.account_id = v_account and r.id = p_reservation_id;
  return v_res;
end
$$;

create or replace function billing_internal.commit_hold(p_reservation_id uuid, p_actual_amount bigint, p_metadata jsonb)
returns table (usage_id bigint, tokens_charged bigint, tokens_released bigint, balance_after bigint, replayed boolean)
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_res billing.token_reservations;
  v_charged bigint[] := '{}'::bigint[];
  v_returned bigint[] := '{}'::bigint[];
  v_left bigint;
  v_part bigint;
  v_row billing.balances;
  v_usage bigint;
  v_spendable bigint;
  v_alert boolean;
begin
  -- Fast path, for a hold the fast path of billing_internal.hold made: held by the caller (or the
  -- backend calls), drawn from one grant that is still the head, nothing due (so the hold has not
  -- expired), no debt. The balance UPDATE locks the account; the reservation's
  -- UPDATE then checks, in a snapshot taken under the lock, that it is still held and that its grant
  -- takes the rest back as spendable tokens (no debt or freeze on it: given_back_grant's plain
  -- case). If not, the balance UPDATE is undone and the slow path answers.
  select r.* into v_res from billing.token_reservations r where r.id = p_reservation_id;
  if v_res.status = 'held' and pg_catalog.array_length(v_res.drawn_from, 1) = 1
     and p_actual_amount between 0 and v_res.tokens
     and (pg_catalog.current_setting('role') not in ('authenticated', 'anon')
          or pg_catalog.current_setting('role') = 'authenticated'
             and coalesce(v_res.user_id, v_res.account_id) = billing_internal.auth_uid()) then
    update billing.balances b
       set held = b.held - v_res.tokens, spendable = b.spendable + (v_res.tokens - p_actual_amount),
           head_remaining = b.head_remaining + (v_res.tokens - p_actual_amount)
     where b.account_id = v_res.account_id and b.head_grant_id = v_res.drawn_from[1][1] and b.held >= v_res.tokens
       and b.debt = 0
       and (b.next_event_at is null or b.next_event_at > pg_catalog.now())
    returning b.spendable, (b.spendable < b.alert_below or b.spendable >= b.alert_above) is true
         into v_spendable, v_alert;
    if found then
      update billing.token_reservations r
         set status = 'committed', committed_tokens = p_actual_amount, settled_at = pg_catalog.now(),
             usage_id = case when p_actual_amount > 0 then pg_catalog.nextval('billing.token_usage_id_seq'::pg_catalog.regclass) end
       where r.account_id = v_res.account_id and r.id = v_res.id and r.status = 'held'
         and (p_actual_amount = v_res.tokens or exists (
               select 1 from billing.token_grants g
                where g.account_id = v_res.account_id and g.id = v_res.drawn_from[1][1] and g.debt_incurred = 0
                  and g.frozen = 0 and g.freeze_target = 0 and billing_internal.is_live(g.expires_at)))
      returning r.usage_id into v_usage;
      if found then
        if p_actual_amount > 0 then
          insert into billing.token_usage (id, account_id, user_id, tokens, metadata, drawn_from, balance_after, reservation_id)
          overriding system value
          values (v_usage, v_res.account_id, v_res.user_id, p_actual_amount, coalesce(p_metadata, v_res.metadata),
                  array[[v_res.drawn_from[1][1], p_actual_amount]], v_spendable, v_res.id);
        end if;
        if v_res.user_id is not null and p_actual_amount < v_res.tokens then
          perform billing_internal.refund_member(v_res.account_id, v_res.user_id, v_res.tokens - p_actual_amount,
                                                 v_res.limit_period_start);
        end if;
        if v_res.rate_windows is not null and p_actual_amount < v_res.tokens then
          perform billing_internal.return_rate_limits(v_res.account_id, v_res.rate_windows,
                                                      v_res.tokens - p_actual_amount, 0);
        end if;
        if v_alert then
          perform billing_internal.queue_alert_check(v_res.account_id);
        end if;
        return query select v_usage, p_actual_amount, v_res.tokens - p_actual_amount, v_spendable, false;
        return;
      end if;
      update billing.balances b
         set held = b.held + v_res.tokens, spendable = b.spendable - (v_res.tokens - p_actual_amount),
             head_remaining = b.head_remaining - (v_res.tokens - p_actual_amount)
       where b.account_id = v_res.account_id;
    end if;
  end if;

  v_res := billing_internal.lock_reservation(p_reservation_id);
  if v_res.status = 'committed' then
    if v_res.committed_tokens is distinct from p_actual_amount then
      raise exception using errcode = 'PT409', message = 'reservation already committed with a different amount',
        detail = pg_catalog.format('committed %s tokens, this call asks for %s', v_res.committed_tokens, p_actual_amount);
    end if;
    return query select v_res.usage_id, v_res.committed_tokens, v_res.tokens - v_res.committed_tokens,
                        billing_internal.spendable_now(v_res.account_id), true;
    return;
  elsif v_res.status <> 'held' then
    raise exception using errcode = 'PT410', message = pg_catalog.format('reservation is %s', v_res.status),
      hint = 'Reserve again; an expired or released hold no longer guarantees tokens.';
  end if;
  if p_actual_amount is null or p_actual_amount < 0 or p_actual_amount > v_res.tokens then
    raise exception using errcode = '22023', message = 'p_actual_amount must be between 0 and the reserved amount',
      detail = pg_catalog.format('reserved %s, p_actual_amount = %s', v_res.tokens, coalesce(p_actual_amount::text, 'NULL'));
  end if;

  -- The soonest-expiring part of the hold is charged; the rest goes back to its grants.
  v_left := p_actual_amount;
  for i in 1 .. pg_catalog.array_length(v_res.drawn_from, 1) loop
    v_part := least(v_left, v_res.drawn_from[i][2]);
    if v_part > 0 then
      v_charged := v_charged || array[[v_res.drawn_from[i][1], v_part]];
    end if;
    if v_res.drawn_from[i][2] - v_part > 0 then
      v_returned := v_returned || array[[v_res.drawn_from[i][1], v_res.drawn_from[i][2] - v_part]];
    end if;
    v_left := v_left - v_part;
  end loop;
  if pg_catalog.cardinality(v_returned) > 0 then
    perform billing_internal.return_to_grants(v_res.account_id, v_returned);
  end if;
  perform billing_internal.refund_member(v_res.account_id, v_res.user_id, v_res.tokens - p_actual_amount,
                                         v_res.limit_period_start);
  perform billing_internal.return_rate_limits(v_res.account_id, v_res.rate_windows, v_res.tokens - p_actual_amount, 0);
  update billing.token_reservations r set status = 'committed', committed_tokens = p_actual_amount,
         settled_at = pg_catalog.now() where r.account_id = v_res.account_id and r.id = v_res.id;
  v_row := billing_internal.recompute_balance(v_res.account_id);
  if p_actual_amount > 0 then
    insert into billing.token_usage (account_id, user_id, tokens, metadata, drawn_from, balance_after, reservation_id)
    values (v_res.account_id, v_res.user_id, p_actual_amount, coalesce(p_metadata, v_res.metadata), v_charged,
            v_row.spendable, v_res.id)
    returning id into v_usage;
    update billing.token_reservations r set usage_id = v_usage where r.account_id = v_res.account_id and r.id = v_res.id;
  end if;
  return query select v_usage, p_actual_amount, v_res.tokens - p_actual_amount, v_row.spendable::bigint, false;
end
$$;

create or replace function billing.commit_reservation(p_reservation_id uuid, p_actual_amount bigint)
returns table (usage_id bigint, tokens_charged bigint, tokens_released bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin  -- PL/pgSQL keeps the plan (a SQL function with a SET clause is planned again on every call)
  return query select * from billing_internal.commit_hold(p_reservation_id, p_actual_amount, null);
end
$$;
comment on function billing.commit_reservation(uuid, bigint) is
  'Charges the actual amount (<= held) of a reservation and releases the rest.';

create or replace function billing.release_reservation(p_reservation_id uuid)
returns table (tokens_released bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_res billing.token_reservations;
  v_row billing.balances;
begin
  v_res := billing_internal.lock_reservation(p_reservation_id);
  if v_res.status in ('released', 'expired') then
    -- Releasing twice (or after the TTL released it) is harmless: report what is there.
    return query select 0::bigint, billing_internal.spendable_now(v_res.account_id), true;
    return;
  elsif v_res.status = 'committed' then
    raise exception using errcode = 'PT410', message = 'reservation is committed',
      hint = 'A committed reservation was charged; it cannot be released.';
  end if;
  perform billing_internal.return_to_grants(v_res.account_id, v_res.drawn_from);
  perform billing_internal.refund_member(v_res.account_id, v_res.user_id, v_res.tokens, v_res.limit_period_start);
  perform billing_internal.return_rate_limits(v_res.account_id, v_res.rate_windows, v_res.tokens, 1);
  update billing.token_reservations r set status = 'released', settled_at = pg_catalog.now()
   where r.account_id = v_res.account_id and r.id = v_res.id;
  v_row := billing_internal.recompute_balance(v_res.account_id);
  return query select v_res.tokens, v_row.spendable::bigint, false;
end
$$;
comment on function billing.release_reservation(uuid) is 'Releases every token of a held reservation.';

create or replace function billing_internal.release_member_holds(p_account_id uuid, p_user_id uuid) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_hold record;
  v_released bigint := 0;
begin
  for v_hold in
    select r.id, r.drawn_from, r.tokens, r.rate_windows from billing.token_reservations r
     where r.account_id = p_account_id and r.user_id = p_user_id and r.status = 'held'
  loop
    perform billing_internal.return_to_grants(p_account_id, v_hold.drawn_from);
    perform billing_internal.return_rate_limits(p_account_id, v_hold.rate_windows, v_hold.tokens, 1);
    update billing.token_reservations r set status = 'released', settled_at = pg_catalog.now()
     where r.account_id = p_account_id and r.id = v_hold.id;
    v_released := v_released + v_hold.tokens;
  end loop;
  return v_released;
end
$$;

create or replace function billing.run_maintenance(p_limit integer default 10000) returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid;
  v_count integer := 0;
begin
  perform billing_internal.require_service();
  for v_account in
    select b.account_id from billing.balances b
     where b.next_event_at <= pg_catalog.now()
     order by b.next_event_at
     limit greatest(coalesce(p_limit, 10000), 0) -- NULL means the default, not "no limit"
       for update skip locked
  loop
    perform billing_internal.lock_and_settle(v_account, false);
    perform billing_internal.recompute_balance(v_account);
    v_count := v_count + 1;
  end loop;
  perform billing_internal.purge_outbox(interval '30 days', greatest(coalesce(p_limit, 10000), 0));
  perform billing_internal.roll_up_usage();
  return v_count;
end
$$;
comment on function billing.run_maintenance(integer) is
  'Expires grants and holds that are due, rolls up usage for get_usage_history, and deletes outbox events acknowledged 30 days ago; schedule with pg_cron, e.g. every minute.';

create or replace function billing_internal.queue_alert_check(p_account_id uuid) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  insert into billing.alert_checks (account_id) values (p_account_id) on conflict (account_id) do nothing
$$;

create or replace function billing_internal.set_alert_levels(p_account_id uuid, p_levels bigint[]) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  with changed as (
    update billing.balances b set alert_below = p_levels[1], alert_above = p_levels[2]
     where b.account_id = p_account_id
       and (b.alert_below is distinct from p_levels[1] or b.alert_above is distinct from p_levels[2])
    returning b.account_id, b.spendable, b.alert_below, b.alert_above)
  insert into billing.alert_checks (account_id)
  select c.account_id from changed c where c.spendable < c.alert_below or c.spendable >= c.alert_above
  on conflict (account_id) do nothing
$$;

create or replace function billing_internal.run_alert_check() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_levels bigint[];
begin
  v_levels := billing_internal.run_automations(new.account_id,
                (select b.spendable from billing.balances b where b.account_id = new.account_id));
  if v_levels is not null then
    perform billing_internal.set_alert_levels(new.account_id, v_levels);
  end if;
  delete from billing.alert_checks c where c.account_id = new.account_id;
  return null;
end
$$;

create or replace function billing_internal.settings_changed() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_spendable bigint;
begin
  if tg_op = 'DELETE' then
    perform billing_internal.set_alert_levels(old.account_id, array[null, null]::bigint[]);
    return old;
  end if;
  perform billing_internal.new_balance(new.account_id);
  select b.spendable into v_spendable from billing.balances b where b.account_id = new.account_id;
  if tg_op = 'INSERT' or new.low_balance_threshold is distinct from old.low_balance_threshold then
    new.low_balance_armed := new.low_balance_threshold is not null and v_spendable >= new.low_balance_threshold;
  end if;
  if tg_op = 'INSERT' then
    new.depleted_armed := v_spendable > 0;
  end if;
  perform billing_internal.set_alert_levels(new.account_id, billing_internal.alert_levels(new));
  return new;
end
$$;

create or replace function billing_internal.payer(p_user_id uuid, p_account_id uuid) returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if p_account_id is null or p_account_id = p_user_id then
    if p_user_id is null then
      raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
    end if;
    return p_user_id;
  elsif not exists (select 1 from billing.accounts a where a.id = p_account_id and a.kind = 'team') then
    raise exception using errcode = '22023', message = 'p_account_id is not a team account',
      detail = p_account_id::text;
  end if;
  return p_account_id;
end
$$;

create or replace function billing_internal.require_member(p_account_id uuid, p_user_id uuid) returns billing.account_members
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_member billing.account_members;
begin
  select m.* into v_member from billing.account_members m
   where m.account_id = p_account_id and m.user_id = p_user_id;
  if not found then
    raise exception using errcode = '42501', message = 'not a member of the account',
      detail = pg_catalog.format('user %s, account %s', p_user_id, p_account_id);
  end if;
  return v_member;
end
$$;

create or replace function billing_internal.limit_period_start(p_period text) returns timestamptz
language plpgsql stable parallel safe set search_path = pg_catalog, pg_temp as $$
begin
  return pg_catalog.date_trunc(p_period, pg_catalog.now(), 'UTC');
end
$$;

create or replace function billing_internal.charge_member(p_account_id uuid, p_user_id uuid, p_amount bigint) returns timestamptz
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_start timestamptz;
  v_spent bigint;
  v_limit bigint;
  v_period text;
begin
  -- consume_tokens writes this UPDATE out for a member's consume (a call costs its SET search_path)
  update billing.account_members m
     set period_start = pg_catalog.date_trunc(m.spend_limit_period, pg_catalog.now(), 'UTC'),
         period_spent = least(case when m.period_start is not distinct from
                                         pg_catalog.date_trunc(m.spend_limit_period, pg_catalog.now(), 'UTC')
                                   then m.period_spent else 0 end, 9223372036854775807 - p_amount) + p_amount
   where m.account_id = p_account_id and m.user_id = p_user_id
  returning m.period_start, m.period_spent, m.spend_limit, m.spend_limit_period into v_start, v_spent, v_limit, v_period;
  if not found then
    perform billing_internal.require_member(p_account_id, p_user_id);  -- raises 42501
  elsif v_limit is not null and v_spent > v_limit then
    perform billing_internal.raise_member_limit(p_amount, v_spent, v_limit, v_period);
  end if;
  return v_start;
end
$$;

create or replace function billing_internal.raise_member_limit(p_amount bigint, p_spent bigint, p_limit bigint, p_period text)
returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT402', message = 'member spend limit reached',
    detail = pg_catalog.format('member limit: requested %s, spent %s of %s this %s', p_amount, p_spent - p_amount,
                               p_limit, p_period),
    hint = 'An owner or admin of the account can raise the limit; it resets when the period ends (UTC).';
end
$$;

create or replace function billing_internal.refund_member(p_account_id uuid, p_user_id uuid, p_amount bigint,
                                               p_period_start timestamptz) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  update billing.account_members m set period_spent = greatest(0, m.period_spent - p_amount)
   where p_user_id is not null and p_amount > 0 and m.account_id = p_account_id and m.user_id = p_user_id
     and m.period_start is not distinct from p_period_start
$$;

create or replace function billing_internal.member_account_ids() returns uuid[]
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select billing_internal.auth_uid() operator(pg_catalog.||) coalesce(pg_catalog.array_agg(m.account_id), '{}'::uuid[])
    from billing.account_members m where m.user_id = billing_internal.auth_uid()
$$;

create or replace function billing_internal.managed_account_ids() returns uuid[]
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select billing_internal.auth_uid() operator(pg_catalog.||) coalesce(pg_catalog.array_agg(m.account_id), '{}'::uuid[])
    from billing.account_members m where m.user_id = billing_internal.auth_uid() and m.role in ('owner', 'admin')
$$;

create or replace function billing_internal.manager_role(p_account_id uuid) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid;
  v_role text;
begin
  if p_account_id is null then
    raise exception using errcode = '22023', message = 'p_account_id must not be NULL';
  elsif not exists (select 1 from billing.accounts a where a.id = p_account_id and a.kind = 'team') then
    raise exception using errcode = 'PT404', message = 'team account not found';
  elsif billing_internal.caller_kind() = 'service' then
    return 'owner';
  end if;
  v_user := billing_internal.current_user_id();
  select m.role into v_role from billing.account_members m where m.account_id = p_account_id and m.user_id = v_user;
  if v_role is null then
    raise exception using errcode = '42501', message = 'not a member of the account';
  end if;
  return v_role;
end
$$;

create or replace function billing_internal.create_account(p_name text, p_owner uuid) returns uuid
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_id uuid;
begin
  if p_name is null or pg_catalog.length(pg_catalog.btrim(p_name)) not between 1 and 200 then
    raise exception using errcode = '22023', message = 'p_name must be 1 to 200 characters';
  elsif p_owner is null then
    raise exception using errcode = '22023', message = 'p_owner must not be NULL';
  end if;
  insert into billing.accounts (kind, name) values ('team', pg_catalog.btrim(p_name)) returning id into v_id;
  insert into billing.account_members (account_id, user_id, role) values (v_id, p_owner, 'owner');
  return v_id;
end
$$;

create or replace function billing.create_team_account(p_name text, p_owner uuid default null) returns uuid
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_owner uuid := p_owner;
begin
  if v_owner is null and billing_internal.caller_kind() = 'service' then
    raise exception using errcode = '22023', message = 'p_owner must not be NULL (the backend names the owner)';
  end if;
  v_owner := coalesce(v_owner, billing_internal.current_user_id());
  perform billing_internal.require_access(v_owner);
  return billing_internal.create_account(p_name, v_owner);
end
$$;
comment on function billing.create_team_account(text, uuid) is
  'Creates a team account owned by the signed-in user (or, for the backend, by p_owner).';

create or replace function billing.add_account_member(
  p_account_id uuid,
  p_user_id uuid,
  p_role text default 'member',
  p_spend_limit bigint default null,
  p_spend_limit_period text default 'month'
) returns billing.account_members
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_actor text := billing_internal.manager_role(p_account_id);
  v_current billing.account_members;
  v_member billing.account_members;
begin
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  elsif p_role is null or p_role not in ('owner', 'admin', 'member') then
    raise exception using errcode = '22023', message = 'p_role must be owner, admin or member';
  elsif p_spend_limit < 0 then
    raise exception using errcode = '22023', message = 'p_spend_limit must be >= 0 tokens (NULL: no limit)';
  elsif p_spend_limit_period is null and p_spend_limit is not null
     or p_spend_limit_period not in ('day', 'week', 'month') then
    raise exception using errcode = '22023', message = 'p_spend_limit_period must be day, week or month';
  end if;
  perform billing_internal.lock_and_settle(p_account_id, true);
  select m.* into v_current from billing.account_members m where m.account_id = p_account_id and m.user_id = p_user_id;
  if v_actor = 'member' or (v_actor = 'admin' and (p_role <> 'member' or coalesce(v_current.role, 'member') <> 'member')) then
    raise exception using errcode = '42501', message = 'not allowed to manage this member',
      hint = 'Owners manage every member; admins manage members with the member role.';
  end if;
  if v_current.role = 'owner' and p_role <> 'owner' then
    perform billing_internal.keep_an_owner(p_account_id, p_user_id);
  end if;
  insert into billing.account_members as m (account_id, user_id, role, spend_limit, spend_limit_period)
  values (p_account_id, p_user_id, p_role, p_spend_limit, p_spend_limit_period)
  on conflict (account_id, user_id) do update
     set role = excluded.role, spend_limit = excluded.spend_limit, spend_limit_period = excluded.spend_limit_period
  returning m.* into v_member;
  perform billing_internal.recompute_balance(p_account_id);
  return v_member;
end
$$;
comment on function billing.add_account_member(uuid, uuid, text, bigint, text) is
  'Adds a member to a team account, or changes a member''s role and spend limit (owners, admins for members, service).';

create or replace function billing.remove_account_member(p_account_id uuid, p_user_id uuid) returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_actor text := billing_internal.manager_role(p_account_id);
  v_target billing.account_members;
  v_self boolean := billing_internal.caller_kind() <> 'service' and p_user_id = billing_internal.current_user_id();
begin
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  end if;
  perform billing_internal.lock_and_settle(p_account_id, true);
  select m.* into v_target from billing.account_members m where m.account_id = p_account_id and m.user_id = p_user_id;
  if not found then
    return false;
  elsif not v_self and (v_actor = 'member' or (v_actor = 'admin' and v_target.role <> 'member')) then
    raise exception using errcode = '42501', message = 'not allowed to remove this member';
  elsif v_target.role = 'owner' then
    perform billing_internal.keep_an_owner(p_account_id, p_user_id);
  end if;
  perform billing_internal.release_member_holds(p_account_id, p_user_id);
  delete from billing.account_members m where m.account_id = p_account_id and m.user_id = p_user_id;
  perform billing_internal.recompute_balance(p_account_id);
  return true;
end
$$;
comment on function billing.remove_account_member(uuid, uuid) is
  'Removes a member from a team account and releases their holds (owners, admins for members, the member themselves, service).';

create or replace function billing_internal.keep_an_owner(p_account_id uuid, p_user_id uuid) returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if not exists (select 1 from billing.account_members m
                  where m.account_id = p_account_id and m.role = 'owner' and m.user_id <> p_user_id) then
    raise exception using errcode = 'PT409', message = 'an account needs an owner',
      hint = 'Make another member an owner first.';
  end if;
end
$$;

create or replace function billing_internal.account_plan(p_account_id uuid) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  return (select p.code from billing.user_subscriptions s join billing.plans p on p.id = s.plan_id
           where s.account_id = p_account_id and s.status in ('active', 'trialing', 'past_due')
           order by s.current_period_end desc nulls last, s.stripe_subscription_id
           limit 1);
end
$$;

create or replace function billing_internal.plan_limits(p_plan_code text) returns bigint[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  select pg_catalog.array_agg(f.value order by l.id, f.n)
    from billing.rate_limits l
   cross join lateral pg_catalog.unnest(array[l.id, case l.metric when 'tokens' then 1 else 0 end, l.window_seconds,
                                              l.max_amount]) with ordinality as f(value, n)
   where l.plan_code is not distinct from p_plan_code
$$;

create or replace function billing_internal.plan_rate_state(p_plan_code text, p_state bigint[]) returns bigint[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  select billing_internal.rate_rebuilt(p_state, billing_internal.plan_limits(p_plan_code), pg_catalog.now())
$$;

create or replace function billing_internal.lock_plan_limits(p_exclusive boolean) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
begin
  if p_exclusive then
    perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_billing.rate_limits'), 0);
  else
    perform pg_catalog.pg_advisory_xact_lock_shared(pg_catalog.hashtext('pg_billing.rate_limits'), 0);
  end if;
end
$$;

create or replace function billing_internal.new_balance(p_account_id uuid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_plan text;
begin
  perform billing_internal.lock_plan_limits(false);
  v_plan := billing_internal.account_plan(p_account_id);
  insert into billing.balances (account_id, plan_code, rate_state)
  values (p_account_id, v_plan, billing_internal.plan_rate_state(v_plan, null))
  on conflict (account_id) do nothing;
end
$$;

create or replace function billing_internal.subscription_written() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid;
  v_plan text;
  v_new boolean;
begin
  perform billing_internal.lock_plan_limits(false);
  foreach v_account in array array(select distinct a from pg_catalog.unnest(array[old.account_id, new.account_id]) a
                                    where a is not null order by a) loop
    -- (a row another transaction is inserting is waited for, and the lock below then sees it)
    insert into billing.balances (account_id) values (v_account) on conflict (account_id) do nothing;
    v_new := found;
    perform from billing.balances b where b.account_id = v_account for update;
    v_plan := billing_internal.account_plan(v_account);
    update billing.balances b
       set plan_code = v_plan, rate_state = billing_internal.plan_rate_state(v_plan, b.rate_state)
     where b.account_id = v_account and (v_new or b.plan_code is distinct from v_plan);
  end loop;
  return null;
end
$$;

create or replace function billing_internal.plan_code_renamed() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  update billing.balances b set plan_code = new.code, rate_state = billing_internal.plan_rate_state(new.code, b.rate_state)
   where b.plan_code = old.code;
  return null;
end
$$;

create or replace function billing_internal.rate_limits_changed() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_plans text[];  -- the plans whose limits changed (a NULL element: accounts without a plan)
begin
  perform billing_internal.lock_plan_limits(true);
  if tg_op = 'INSERT' then
    select pg_catalog.array_agg(distinct n.plan_code) into v_plans from new_limits n;
  elsif tg_op = 'DELETE' then
    select pg_catalog.array_agg(distinct o.plan_code) into v_plans from old_limits o;
  else
    select pg_catalog.array_agg(distinct c.plan_code) into v_plans
      from (select o.plan_code from old_limits o union all select n.plan_code from new_limits n) c;
  end if;
  update billing.balances b set rate_state = billing_internal.rate_rebuilt(b.rate_state, p.limits, pg_catalog.now())
    from (select c.code, billing_internal.plan_limits(c.code) as limits from pg_catalog.unnest(v_plans) as c(code)) p
   where b.plan_code is not distinct from p.code;
  return null;
end
$$;

create or replace function billing_internal.take_rate_limits(p_account_id uuid, p_tokens bigint, p_requests integer)
returns bigint[]
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_over boolean;
  v_windows bigint[];
begin
  update billing.balances b
     set rate_state = billing_internal.rate_counted(b.rate_state, p_tokens, p_requests, pg_catalog.now())
   where b.account_id = p_account_id and b.rate_state is not null
  returning billing_internal.rate_over(b.rate_state, p_tokens, p_requests),
            billing_internal.rate_windows(b.rate_state, p_tokens, p_requests)
       into v_over, v_windows;
  if v_over then
    perform billing_internal.raise_rate_limited(p_account_id, p_tokens, p_requests);
  end if;
  return v_windows;
end
$$;

create or replace function billing_internal.raise_rate_limited(p_account_id uuid, p_tokens bigint, p_requests integer)
returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_refusal bigint[];  -- {limit_id, metric, window_seconds, max_amount, used, amount, window_start}
  v_metric text;
  v_ends timestamptz;
begin
  select billing_internal.rate_refusal(b.rate_state, p_tokens, p_requests) into v_refusal
    from billing.balances b where b.account_id = p_account_id;
  if v_refusal is null then
    raise exception using errcode = 'XX000', message = 'pg_billing: a rate limit was counted over but is not found',
      detail = pg_catalog.format('account %s', p_account_id);
  end if;
  v_metric := case v_refusal[2] when 1 then 'tokens' else 'requests' end;
  v_ends := pg_catalog.to_timestamp((v_refusal[7] + v_refusal[3])::double precision);
  if v_refusal[6] > v_refusal[4] then
    raise exception using errcode = 'PT429', message = 'rate limit reached',
      detail = pg_catalog.format('limit %s per %ss: used %s of %s; this call needs %s, more than the limit',
                                 v_metric, v_refusal[3], v_refusal[5] - v_refusal[6], v_refusal[4], v_refusal[6]),
      hint = 'Ask for less in one call, or move to a plan with a higher limit.';
  end if;
  raise exception using errcode = 'PT429', message = 'rate limit reached',
    detail = pg_catalog.format('limit %s per %ss: used %s of %s; retry after %ss', v_metric, v_refusal[3],
                               v_refusal[5] - v_refusal[6], v_refusal[4],
                               greatest(1, pg_catalog.ceil(pg_catalog.date_part('epoch', v_ends - pg_catalog.clock_timestamp())))::bigint),
    hint = pg_catalog.format('The window ends at %s.', v_ends);
end
$$;

create or replace function billing_internal.return_rate_limits(p_account_id uuid, p_windows bigint[], p_tokens bigint,
                                                    p_requests integer) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  update billing.balances b
     set rate_state = billing_internal.rate_given_back(b.rate_state, p_windows, p_tokens, p_requests)
   where b.account_id = p_account_id and b.rate_state is not null and pg_catalog.cardinality(p_windows) > 0
$$;

create or replace function billing_internal.model_price(p_model text, p_at timestamptz) returns billing.model_prices
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_price billing.model_prices;
begin
  if p_model is null then
    raise exception using errcode = '22023', message = 'p_model must not be NULL';
  end if;
  select m.* into v_price from billing.model_prices m
   where m.model = p_model and m.valid_from <= p_at order by m.valid_from desc limit 1;
  if not found then
    raise exception using errcode = '22023', message = 'unknown model: no price in force',
      detail = pg_catalog.format('model %L at %s', p_model, p_at),
      hint = 'Add the model to billing.model_prices; a model without a price is never charged 0.';
  end if;
  return v_price;
end
$$;

create or replace function billing_internal.priced(p_price billing.model_prices, p_input_tokens bigint, p_output_tokens bigint,
                                        p_cached_input_tokens bigint) returns bigint
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  v_cost bigint;
begin
  if p_input_tokens is null or p_output_tokens is null or p_cached_input_tokens is null
     or p_input_tokens < 0 or p_output_tokens < 0 or p_cached_input_tokens < 0 then
    raise exception using errcode = '22023', message = 'token counts must be >= 0 and not NULL',
      detail = pg_catalog.format('input %s, output %s, cached input %s', p_input_tokens, p_output_tokens,
                                 p_cached_input_tokens);
  elsif p_cached_input_tokens > p_input_tokens then
    raise exception using errcode = '22023', message = 'cached input tokens are part of the input tokens',
      detail = pg_catalog.format('input %s, cached input %s', p_input_tokens, p_cached_input_tokens),
      hint = 'Pass every input token in p_input_tokens (OpenAI''s prompt_tokens) and the cached part in p_cached_input_tokens.';
  end if;
  v_cost := billing_internal.llm_cost_of(p_price.input_per_million, p_price.output_per_million,
                                         p_price.cached_input_per_million, p_input_tokens, p_output_tokens,
                                         p_cached_input_tokens);
  if v_cost is null then
    raise exception using errcode = '22003', message = 'LLM cost out of range (above 2^63-1 credits)';
  end if;
  return v_cost;
end
$$;

create or replace function billing.llm_cost(p_model text, p_input_tokens bigint, p_output_tokens bigint,
                                 p_cached_input_tokens bigint default 0) returns bigint
language sql stable set search_path = pg_catalog, pg_temp as $$
  select billing_internal.priced(billing_internal.model_price(p_model, pg_catalog.now()), p_input_tokens,
                                 p_output_tokens, p_cached_input_tokens)
$$;
comment on function billing.llm_cost(text, bigint, bigint, bigint) is
  'Credits an LLM call costs at the model''s price in force (ceil, integer arithmetic); 22023 for an unknown model.';

create or replace function billing_internal.llm_metadata(p_metadata jsonb, p_model text, p_input_tokens bigint,
                                              p_output_tokens bigint, p_cached_input_tokens bigint) returns jsonb
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select case when pg_catalog.jsonb_typeof(p_metadata) = 'object' then p_metadata else '{}'::jsonb end
         operator(pg_catalog.||) pg_catalog.jsonb_build_object('model', p_model, 'input_tokens', p_input_tokens,
           'output_tokens', p_output_tokens, 'cached_input_tokens', p_cached_input_tokens)
$$;

create or replace function billing.record_llm_usage(
  p_user_id uuid,
  p_model text,
  p_input_tokens bigint,
  p_output_tokens bigint,
  p_cached_input_tokens bigint default 0,
  p_idempotency_key text default null,
  p_metadata jsonb default '{}',
  p_account_id uuid default null
) returns table (usage_id bigint, tokens_charged bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_cost bigint;
begin
  if p_metadata is not null and pg_catalog.jsonb_typeof(p_metadata) <> 'object' then
    perform billing_internal.check_metadata(p_metadata);
  end if;
  v_cost := billing_internal.priced(billing_internal.model_price(p_model, pg_catalog.now()), p_input_tokens,
                                    p_output_tokens, coalesce(p_cached_input_tokens, 0));
  if v_cost = 0 then
    perform billing_internal.require_access(p_user_id);
    return query select null::bigint, 0::bigint, billing.get_balance(p_user_id, p_account_id), false;
    return;
  end if;
  return query select * from billing.consume_tokens(p_user_id, v_cost, p_idempotency_key,
    billing_internal.llm_metadata(p_metadata, p_model, p_input_tokens, p_output_tokens,
                                  coalesce(p_cached_input_tokens, 0)), p_account_id);
end
$$;
comment on function billing.record_llm_usage(uuid, text, bigint, bigint, bigint, text, jsonb, uuid) is
  'Charges an LLM call at its model''s price (like consume_tokens) and records the model and token counts.';

create or replace function billing.reserve_llm_usage(
  p_user_id uuid,
  p_model text,
  p_input_tokens bigint,
  p_max_output_tokens bigint,
  p_idempotency_key text,
  p_ttl interval default '15 minutes',
  p_account_id uuid default null
) returns table (reservation_id uuid, tokens_held bigint, expires_at timestamptz, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_price billing.model_prices := billing_internal.model_price(p_model, pg_catalog.now());
  v_cost bigint := billing_internal.priced(v_price, p_input_tokens, p_max_output_tokens, 0);
begin
  return query select * from billing_internal.hold(p_user_id, greatest(v_cost, 1), p_idempotency_key, p_ttl,
    p_account_id, pg_catalog.jsonb_build_object('llm_price', pg_catalog.to_jsonb(v_price),
                                                 'input_tokens', p_input_tokens));
end
$$;
comment on function billing.reserve_llm_usage(uuid, text, bigint, bigint, text, interval, uuid) is
  'Holds the cost of an LLM call (input tokens and the most output it may produce) at the model''s price now.';

create or replace function billing.commit_llm_usage(p_reservation_id uuid, p_input_tokens bigint, p_output_tokens bigint,
                                         p_cached_input_tokens bigint default 0)
returns table (usage_id bigint, tokens_charged bigint, tokens_released bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_res billing.token_reservations := billing_internal.lock_reservation(p_reservation_id);
  v_price billing.model_prices;
  v_cost bigint;
  v_meta jsonb;
  v_commit record;
  v_excess record;
begin
  if not v_res.metadata ? 'llm_price' then
    raise exception using errcode = '22023', message = 'not a reservation made by reserve_llm_usage';
  end if;
  v_price := pg_catalog.jsonb_populate_record(null::billing.model_prices, v_res.metadata -> 'llm_price');
  v_cost := billing_internal.priced(v_price, p_input_tokens, p_output_tokens, coalesce(p_cached_input_tokens, 0));
  v_meta := billing_internal.llm_metadata('{}', v_price.model, p_input_tokens, p_output_tokens,
                                          coalesce(p_cached_input_tokens, 0));
  select * into v_commit from billing_internal.commit_hold(p_reservation_id, least(v_cost, v_res.tokens), v_meta);
  if v_cost <= v_res.tokens then
    return query select v_commit.usage_id, v_cost, v_commit.tokens_released, v_commit.balance_after, v_commit.replayed;
    return;
  end if;
  select * into v_excess from billing.consume_tokens(coalesce(v_res.user_id, v_res.account_id), v_cost - v_res.tokens,
    'llm-excess:' || p_reservation_id::text, v_meta || '{"excess_of_hold": true}'::jsonb,
    case when v_res.user_id is not null then v_res.account_id end);
  return query select v_commit.usage_id, v_cost, 0::bigint, v_excess.balance_after, v_commit.replayed and v_excess.replayed;
end
$$;
comment on function billing.commit_llm_usage(uuid, bigint, bigint, bigint) is
  'Charges an LLM reservation for the tokens used, at the prices it kept; releases the rest.';

create or replace function billing_internal.no_account() returns uuid
language sql immutable parallel safe set search_path = pg_catalog, pg_temp as $$
  select '00000000-0000-0000-0000-000000000000'::uuid
$$;

create or replace function billing_internal.emit(p_account_id uuid, p_event_type text, p_dedupe_key text, p_payload jsonb)
returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := coalesce(p_account_id, billing_internal.no_account());
begin
  insert into billing.outbox (account_id, event_type, dedupe_key, payload)
  values (v_account, p_event_type, p_dedupe_key,
          pg_catalog.jsonb_build_object('event_type', p_event_type, 'dedupe_key', p_dedupe_key, 'account_id', v_account)
          operator(pg_catalog.||) coalesce(p_payload, '{}'::jsonb))
  on conflict (account_id, dedupe_key) do nothing;
  return found;
end
$$;

create or replace function billing_internal.notify_outbox() returns trigger
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  perform pg_catalog.pg_notify('billing_outbox', '');  -- one per transaction: PostgreSQL folds duplicates
  return null;
end
$$;

create or replace function billing_internal.alert_levels(p_settings billing.account_settings) returns bigint[]
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select array[
    greatest(case when p_settings.low_balance_threshold is not null and p_settings.low_balance_armed
                  then p_settings.low_balance_threshold end,
             case when p_settings.depleted_armed then 1 end,
             case when p_settings.auto_topup_price_id is not null and p_settings.topup_disabled_at is null
                       and p_settings.auto_topup_monthly_limit > 0 then p_settings.auto_topup_threshold end),
    least(case when p_settings.low_balance_threshold is not null and not p_settings.low_balance_armed
               then p_settings.low_balance_threshold end,
          case when not p_settings.depleted_armed then 1 end)]
$$;

create or replace function billing_internal.run_automations(p_account_id uuid, p_spendable bigint) returns bigint[]
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_settings billing.account_settings;
  v_before billing.account_settings;
  v_month timestamptz := pg_catalog.date_trunc('month', pg_catalog.now() at time zone 'UTC') at time zone 'UTC';
  v_pack billing.token_packs;
  v_key text;
begin
  -- SKIP LOCKED: a settings row being changed right now (its change sets the levels itself) is not
  -- waited for, so no lock order can deadlock; the automations run again at the next change.
  select s.* into v_settings from billing.account_settings s where s.account_id = p_account_id for update skip locked;
  if not found then
    return case when exists (select 1 from billing.account_settings s where s.account_id = p_account_id)
                then null else array[null, null]::bigint[] end;
  end if;
  v_before := v_settings;
  -- re-arm what the balance rose back to
  if v_settings.low_balance_threshold is not null and not v_settings.low_balance_armed
     and p_spendable >= v_settings.low_balance_threshold then
    v_settings.low_balance_armed := true;
  end if;
  if not v_settings.depleted_armed and p_spendable > 0 then
    v_settings.depleted_armed := true;
  end if;
  -- crossings
  if v_settings.low_balance_armed and p_spendable < v_settings.low_balance_threshold then
    v_settings.alerts_sent := v_settings.alerts_sent + 1;
    perform billing_internal.emit(p_account_id, 'balance.low',
      pg_catalog.format('balance.low:%s:%s', p_account_id, v_settings.alerts_sent),
      pg_catalog.jsonb_build_object('balance', p_spendable, 'threshold', v_settings.low_balance_threshold));
    v_settings.low_balance_armed := false;
  end if;
  if v_settings.depleted_armed and p_spendable <= 0 then
    v_settings.alerts_sent := v_settings.alerts_sent + 1;
    perform billing_internal.emit(p_account_id, 'balance.depleted',
      pg_catalog.format('balance.depleted:%s:%s', p_account_id, v_settings.alerts_sent),
      pg_catalog.jsonb_build_object('balance', p_spendable));
    v_settings.depleted_armed := false;
  end if;
  -- auto top-up: below its threshold, after the cooldown, within the month's limit
  if v_settings.auto_topup_price_id is not null and v_settings.topup_disabled_at is null
     and p_spendable < v_settings.auto_topup_threshold
     and (v_settings.topup_requested_at is null
          or pg_catalog.now() >= v_settings.topup_requested_at + v_settings.auto_topup_cooldown) then
    if v_settings.topup_month_start is distinct from v_month then
      v_settings.topup_month_start := v_month;
      v_settings.topup_month_count := 0;
    end if;
    if v_settings.topup_month_count < v_settings.auto_topup_monthly_limit then
      select p.* into v_pack from billing.token_packs p where p.stripe_price_id = v_settings.auto_topup_price_id;
      v_settings.topup_requests := v_settings.topup_requests + 1;
      v_settings.topup_month_count := v_settings.topup_month_count + 1;
      v_settings.topup_requested_at := pg_catalog.now();
      v_key := pg_catalog.format('topup.requested:%s:%s', p_account_id, v_settings.topup_requests);
      -- metadata: what the PaymentIntent must carry for its webhook to grant the pack to this account
      perform billing_internal.emit(p_account_id, 'topup.requested', v_key, pg_catalog.jsonb_build_object(
        'request_id', v_key, 'balance', p_spendable, 'price_id', v_pack.stripe_price_id, 'quantity', 1,
        'tokens', v_pack.tokens, 'amount', v_pack.price_amount, 'currency', v_pack.currency,
        'customer', (select c.stripe_customer_id from billing.stripe_customers c where c.account_id = p_account_id),
        'metadata', pg_catalog.jsonb_build_object('pg_billing_topup', v_key, 'price_id', v_pack.stripe_price_id,
          'quantity', '1',
          case when exists (select 1 from billing.accounts a where a.id = p_account_id and a.kind = 'team')
               then 'account_id' else 'user_id' end, p_account_id)));
    end if;
  end if;
  if v_settings is distinct from v_before then
    v_settings.updated_at := pg_catalog.now();
    update billing.account_settings s set
      low_balance_armed = v_settings.low_balance_armed, depleted_armed = v_settings.depleted_armed,
      alerts_sent = v_settings.alerts_sent, topup_requests = v_settings.topup_requests,
      topup_requested_at = v_settings.topup_requested_at, topup_month_start = v_settings.topup_month_start,
      topup_month_count = v_settings.topup_month_count, updated_at = v_settings.updated_at
     where s.account_id = p_account_id;
  end if;
  return billing_internal.alert_levels(v_settings);
end
$$;

create or replace function billing_internal.topup_payment_outcome(p_account_id uuid, p_succeeded boolean, p_payment text,
                                                       p_reason text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_settings billing.account_settings;
begin
  perform 1 from billing.balances b where b.account_id = p_account_id for update;  -- the balance first, as everywhere
  select s.* into v_settings from billing.account_settings s where s.account_id = p_account_id for update;
  if not found then
    return;
  elsif p_succeeded then
    update billing.account_settings s set topup_failures = 0, updated_at = pg_catalog.now()
     where s.account_id = p_account_id and s.topup_failures <> 0;
    return;
  end if;
  update billing.account_settings s set topup_failures = s.topup_failures + 1, updated_at = pg_catalog.now(),
         topup_disabled_at = case when s.topup_failures + 1 >= 3 then coalesce(s.topup_disabled_at, pg_catalog.now())
                                  else s.topup_disabled_at end
   where s.account_id = p_account_id
  returning s.* into v_settings;
  if v_settings.topup_failures >= 3 and v_settings.auto_topup_price_id is not null then
    perform billing_internal.emit(p_account_id, 'topup.disabled',
      pg_catalog.format('topup.disabled:%s:%s', p_account_id, v_settings.topup_requests),
      pg_catalog.jsonb_build_object('failures', v_settings.topup_failures, 'last_payment', p_payment,
                                    'reason', p_reason));
  end if;
end
$$;

create or replace function billing_internal.emit_stripe_events(p_event jsonb, p_effect jsonb) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := (p_effect ->> 'account_id')::uuid;
  v_kind text := p_event ->> 'kind';
  v_action text := p_effect ->> 'action';
  v_clawed bigint;
  v_frozen bigint;
begin
  if v_action = 'granted' and v_kind in ('checkout', 'invoice_paid', 'payment_intent') then
    perform billing_internal.emit(v_account, 'purchase.completed', 'purchase.completed:' || (p_event ->> 'object_id'),
      pg_catalog.jsonb_build_object('purchase_id', p_event ->> 'object_id',
        'kind', case v_kind when 'checkout' then 'checkout_session' when 'invoice_paid' then 'invoice'
                            else 'payment_intent' end,
        'tokens', p_effect -> 'tokens', 'grant_id', p_effect -> 'grant_id',
        'amount', coalesce(p_event -> 'amount_total', p_event -> 'amount_paid', p_event -> 'amount_received'),
        'currency', p_event -> 'currency', 'customer', p_event -> 'customer',
        'subscription', p_event -> 'subscription', 'topup', p_event -> 'topup',
        'stripe_event_id', p_event -> 'id'));
  elsif v_kind = 'subscription' and v_action = 'updated' then
    perform billing_internal.emit(v_account, 'subscription.changed', 'subscription.changed:' || (p_event ->> 'id'),
      pg_catalog.jsonb_build_object('subscription', p_event -> 'object_id', 'status', p_effect -> 'status',
        'price_id', p_event -> 'price_id',
        'plan', (select pg_catalog.to_jsonb(p.code) from billing.plans p where p.stripe_price_id = p_event ->> 'price_id'),
        'cancel_at_period_end', p_event -> 'cancel_at_period_end',
        'current_period_end', p_event -> 'current_period_end', 'stripe_event_id', p_event -> 'id'));
  elsif (v_kind = 'checkout' and v_action = 'payment_failed')
        or (v_kind = 'payment_intent' and p_event ->> 'type' = 'payment_intent.payment_failed')
        or v_kind = 'invoice_failed' then
    perform billing_internal.emit(v_account, 'payment.failed', 'payment.failed:' || (p_event ->> 'id'),
      pg_catalog.jsonb_build_object('object_id', p_event -> 'object_id', 'type', p_event -> 'type',
        'amount', coalesce(p_event -> 'amount_due', p_event -> 'amount', p_event -> 'amount_total'),
        'currency', p_event -> 'currency', 'customer', p_event -> 'customer',
        'subscription', p_event -> 'subscription', 'topup', p_event -> 'topup',
        'reason', coalesce(p_event -> 'failure_message', p_event -> 'failure_code'),
        'stripe_event_id', p_event -> 'id'));
  elsif v_kind in ('charge', 'refund', 'dispute') and v_action = 'adjusted' then
    select coalesce(pg_catalog.sum((g ->> 'clawed_back')::bigint), 0), coalesce(pg_catalog.sum((g ->> 'frozen')::bigint), 0)
      into v_clawed, v_frozen
      from pg_catalog.jsonb_array_elements(p_effect -> 'grants') g;
    if v_clawed <> 0 or v_frozen <> 0 then
      perform billing_internal.emit(v_account, 'refund.applied', 'refund.applied:' || (p_event ->> 'id'),
        pg_catalog.jsonb_build_object('cause', case v_kind when 'dispute' then 'dispute' else 'refund' end,
          'payment', p_event -> 'payment_key', 'object_id', p_event -> 'object_id', 'status', p_event -> 'status',
          'tokens_clawed_back', v_clawed, 'tokens_frozen', v_frozen, 'grants', p_effect -> 'grants',
          'stripe_event_id', p_event -> 'id'));
    end if;
  end if;
end
$$;

create or replace function billing.claim_outbox(p_limit integer default 100, p_visibility interval default '1 minute')
returns setof billing.outbox
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  perform billing_internal.require_service();
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception using errcode = '22023', message = 'p_limit must be 1 to 10000';
  elsif p_visibility is null or p_visibility <= interval '0' then
    raise exception using errcode = '22023', message = 'p_visibility must be positive';
  end if;
  return query
    update billing.outbox o
       set available_at = pg_catalog.clock_timestamp() + p_visibility, attempts = o.attempts + 1
     where (o.account_id, o.id) in (
             select c.account_id, c.id from billing.outbox c
              where c.acked_at is null and c.available_at <= pg_catalog.clock_timestamp()
              order by c.available_at, c.id
              limit p_limit
                for update skip locked)
    returning o.*;
end
$$;
comment on function billing.claim_outbox(integer, interval) is
  'Service: claims due outbox events (SKIP LOCKED), hidden from other consumers for p_visibility.';

create or replace function billing.ack_outbox(p_ids bigint[]) returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_count integer;
begin
  perform billing_internal.require_service();
  update billing.outbox o set acked_at = pg_catalog.clock_timestamp()
   where o.id = any (p_ids) and o.acked_at is null;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
comment on function billing.ack_outbox(bigint[]) is 'Service: marks outbox events done.';

create or replace function billing.nack_outbox(p_id bigint, p_error text, p_retry_in interval default '1 minute')
returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  perform billing_internal.require_service();
  if p_retry_in is null or p_retry_in < interval '0' then
    raise exception using errcode = '22023', message = 'p_retry_in must be >= 0';
  end if;
  update billing.outbox o set available_at = pg_catalog.clock_timestamp() + p_retry_in,
         last_error = pg_catalog.left(p_error, 2000)
   where o.id = p_id and o.acked_at is null;
  return found;
end
$$;
comment on function billing.nack_outbox(bigint, text, interval) is
  'Service: gives an outbox event back, claimable again after p_retry_in, with its error.';

create or replace function billing_internal.purge_outbox(p_keep interval, p_limit integer) returns integer
language sql set search_path = pg_catalog, pg_temp as $$
  with gone as (
    delete from billing.outbox o
     where (o.account_id, o.id) in (select x.account_id, x.id from billing.outbox x
                                     where x.acked_at < pg_catalog.now() - p_keep limit p_limit)
    returning 1)
  select pg_catalog.count(*)::integer from gone
$$;

create or replace function billing_internal.raise_unprocessable(p_message text, p_detail text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT422', message = p_message, detail = coalesce(p_detail, ''),
    hint = 'Fix the catalog or the customer link, then billing.reprocess_failed_events() (Stripe also redelivers).';
end
$$;

create or replace function billing_internal.webhook_secrets() returns text[]
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_secrets text[];
begin
  if pg_catalog.to_regclass('vault.decrypted_secrets') is not null then
    execute $q$select pg_catalog.array_agg(decrypted_secret order by created_at desc)
                 from vault.decrypted_secrets
                where name = 'stripe_webhook_secret' or name like 'stripe\_webhook\_secret\_%'$q$
      into v_secrets;
  end if;
  if v_secrets is null then
    select pg_catalog.array_agg(s.secret order by s.id desc) into v_secrets
      from billing.webhook_secrets s where s.active;
  end if;
  return v_secrets;
end
$$;

create or replace function billing_internal.stripe_status_rank(p_object text, p_status text) returns integer
language sql immutable parallel safe set search_path = pg_catalog, pg_temp as $$
  select case p_object
    when 'subscription' then case p_status
      when 'incomplete' then 0 when 'trialing' then 1 when 'active' then 2 when 'past_due' then 3
      when 'unpaid' then 4 when 'paused' then 5 when 'canceled' then 100 when 'incomplete_expired' then 101 end
    when 'refund' then case p_status
      when 'pending' then 0 when 'requires_action' then 1 when 'succeeded' then 2
      when 'failed' then 100 when 'canceled' then 101 else 3 end
    when 'dispute' then case p_status
      when 'warning_needs_response' then 0 when 'warning_under_review' then 1 when 'needs_response' then 2
      when 'under_review' then 3 when 'won' then 100 when 'warning_closed' then 101 when 'prevented' then 102
      when 'lost' then 103 else 4 end
  end
$$;

create or replace function billing_internal.event_account(p_event jsonb) returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_ref text := p_event ->> 'client_reference_id';
  v_meta text := p_event ->> 'metadata_user_id';
  v_user uuid;
  v_account uuid;
begin
  if v_ref is not null and v_meta is not null and v_ref <> v_meta then
    perform billing_internal.raise_unprocessable('client_reference_id and metadata.user_id disagree',
      pg_catalog.format('%s vs %s', v_ref, v_meta));
  end if;
  begin
    v_user := coalesce(v_ref, v_meta)::uuid;
    v_account := (p_event ->> 'metadata_account_id')::uuid;
  exception when invalid_text_representation then
    perform billing_internal.raise_unprocessable('a user or account id in the event is not a uuid',
      pg_catalog.format('user %s, account %s', coalesce(v_ref, v_meta), p_event ->> 'metadata_account_id'));
  end;
  if v_account is not null then
    if not exists (select 1 from billing.accounts a where a.id = v_account and a.kind = 'team') then
      perform billing_internal.raise_unprocessable('metadata.account_id is not a team account', v_account::text);
    elsif v_user is not null and not exists (select 1 from billing.account_members m where m.account_id = v_account
                                                and m.user_id = v_user and m.role in ('owner', 'admin')) then
      perform billing_internal.raise_unprocessable('the user in the event is not an owner or admin of the account',
        pg_catalog.format('user %s, account %s', v_user, v_account));
    end if;
    return v_account;
  elsif v_user is not null then
    return v_user;
  end if;
  select c.account_id into v_account from billing.stripe_customers c where c.stripe_customer_id = p_event ->> 'customer';
  if v_account is null then
    select s.account_id into v_account from billing.user_subscriptions s
     where s.stripe_subscription_id = p_event ->> 'subscription';
  end if;
  return v_account;
end
$$;

create or replace function billing_internal.link_customer(p_account_id uuid, p_customer text) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_customer is null or p_account_id is null then
    return 'none';
  end if;
  insert into billing.stripe_customers (account_id, stripe_customer_id) values (p_account_id, p_customer)
  on conflict do nothing;
  if found then
    return 'linked';
  elsif exists (select 1 from billing.stripe_customers c where c.account_id = p_account_id and c.stripe_customer_id = p_customer) then
    return 'already_linked';
  end if;
  return 'conflict_kept_existing';
end
$$;

create or replace function billing_internal.lock_stripe_object(p_id text) returns void
language sql volatile set search_path = pg_catalog, pg_temp as $$
  select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_billing.stripe'), pg_catalog.hashtext(p_id))
   where p_id is not null
$$;

create or replace function billing_internal.note_payment(p_payment_key text, p_currency text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_currency text;
begin
  insert into billing.stripe_payments as p (payment_key, currency) values (p_payment_key, p_currency)
  on conflict (payment_key) do update set currency = coalesce(p.currency, excluded.currency), updated_at = pg_catalog.now()
  returning p.currency into v_currency;
  if p_currency is not null and v_currency <> p_currency then
    perform billing_internal.raise_unprocessable('currency does not match the payment',
      pg_catalog.format('payment %s is in %s, the event in %s', p_payment_key, v_currency, p_currency));
  end if;
end
$$;

create or replace function billing_internal.stripe_targets(p_account_id uuid, p_grant_id bigint) returns bigint[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  with purchases as (
    -- what each purchase added to the grant, in the order Stripe created them
    select p.purchase_id, p.amount,
           greatest(0, p.allowance - coalesce(pg_catalog.max(p.allowance) over (
             order by p.purchased_at, p.purchase_id rows between unbounded preceding and 1 preceding), 0)) as tokens
      from billing.grant_purchases p where p.account_id = p_account_id and p.grant_id = p_grant_id
  ), shares as (
    select pu.tokens, pp.amount as weight,
           greatest(pu.amount, pg_catalog.sum(pp.amount) over (partition by pu.purchase_id))::bigint as purchase_weight,
           coalesce(sp.amount_captured, (select pg_catalog.sum(x.amount) from billing.purchase_payments x
                                          where x.payment_key = pp.payment_key))::bigint as captured,
           (greatest(0, greatest(coalesce(sp.refunded_reported, 0), coalesce(rf.issued, 0)) - coalesce(rf.failed, 0))
            + coalesce(dp.lost, 0))::bigint as taken,
           coalesce(dp.open, 0)::bigint as open
      from purchases pu
      join billing.purchase_payments pp on pp.purchase_id = pu.purchase_id
      left join billing.stripe_payments sp on sp.payment_key = pp.payment_key
      left join lateral (
        select pg_catalog.sum(r.amount) as issued,
               pg_catalog.sum(r.amount) filter (where billing_internal.stripe_status_rank('refund', r.status) >= 100) as failed
          from billing.stripe_refunds r where r.payment_key = pp.payment_key) rf on true
      left join lateral (
        select pg_catalog.sum(d.amount) filter (where d.status = 'lost') as lost,
               pg_catalog.sum(d.amount) filter (where billing_internal.stripe_status_rank('dispute', d.status) < 100) as open
          from billing.stripe_disputes d where d.payment_key = pp.payment_key) dp on true
  )
  select billing_internal.adjustment_targets(g.tokens, coalesce(a.tokens, '{}'), coalesce(a.weight, '{}'),
           coalesce(a.purchase_weight, '{}'), coalesce(a.captured, '{}'), coalesce(a.taken, '{}'), coalesce(a.open, '{}'))
    from billing.token_grants g,
         (select pg_catalog.array_agg(s.tokens) as tokens, pg_catalog.array_agg(s.weight) as weight,
                 pg_catalog.array_agg(s.purchase_weight) as purchase_weight, pg_catalog.array_agg(s.captured) as captured,
                 pg_catalog.array_agg(s.taken) as taken, pg_catalog.array_agg(s.open) as open
            from shares s) a
   where g.account_id = p_account_id and g.id = p_grant_id
$$;

create or replace function billing_internal.settle_stripe_grant(p_account_id uuid, p_grant_id bigint) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_targets bigint[] := billing_internal.stripe_targets(p_account_id, p_grant_id);
begin
  if v_targets is null then
    raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
      detail = pg_catalog.format('grant %s: Stripe facts give no adjustment targets', p_grant_id);
  end if;
  return billing_internal.adjust_grant(p_account_id, p_grant_id, v_targets[1], v_targets[2]);
end
$$;

create or replace function billing_internal.settle_payment(p_payment_key text) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_grant record;
  v_account uuid;
  v_effects jsonb := '[]'::jsonb;
begin
  for v_grant in
    select distinct gp.account_id, gp.grant_id
      from billing.purchase_payments pp
      join billing.grant_purchases gp on gp.purchase_id = pp.purchase_id
     where pp.payment_key = p_payment_key
     order by gp.account_id, gp.grant_id
  loop
    perform billing_internal.lock_and_settle(v_grant.account_id, true);
    v_effects := v_effects || billing_internal.settle_stripe_grant(v_grant.account_id, v_grant.grant_id);
    perform billing_internal.recompute_balance(v_grant.account_id);
    v_account := v_grant.account_id;
  end loop;
  return pg_catalog.jsonb_build_object('account_id', v_account, 'payment', p_payment_key,
    'action', case when v_account is null then 'recorded_pending' else 'adjusted' end, 'grants', v_effects);
end
$$;

create or replace function billing_internal.apply_checkout(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := billing_internal.event_account(p_event);
  v_pack billing.token_packs;
  v_quantity bigint := coalesce((p_event ->> 'quantity')::bigint, 1);
  v_payment text := p_event ->> 'payment_key';
  v_session text := p_event ->> 'object_id';
  v_paid bigint := coalesce((p_event ->> 'amount_total')::bigint, 0);
  v_link text;
  v_base jsonb;
  v_ins record;
  v_tokens numeric;
  v_adjusted jsonb;
begin
  if v_account is null then
    perform billing_internal.raise_unprocessable('checkout session has no user or account', v_session);
  end if;
  v_link := billing_internal.link_customer(v_account, p_event ->> 'customer');
  v_base := pg_catalog.jsonb_build_object('account_id', v_account, 'customer', v_link)
            || case when v_link = 'linked' then pg_catalog.jsonb_build_object('linked_customer', p_event ->> 'customer')
                    else '{}'::jsonb end;
  if p_event ->> 'mode' = 'subscription' then
    return v_base || '{"action": "linked_subscription_customer"}';
  elsif p_event ->> 'type' = 'checkout.session.async_payment_failed' then
    return v_base || '{"action": "payment_failed"}';
  elsif p_event ->> 'mode' is distinct from 'payment' then
    return v_base || '{"action": "ignored_mode"}';
  elsif coalesce(p_event ->> 'payment_status', '') not in ('paid', 'no_payment_required') then
    return v_base || '{"action": "awaiting_payment"}';
  end if;

  select p.* into v_pack from billing.token_packs p where p.stripe_price_id = p_event ->> 'price_id';
  if not found then
    perform billing_internal.raise_unprocessable('price is not a token pack in billing.token_packs',
      coalesce(p_event ->> 'price_id', 'metadata.price_id missing'));
  elsif v_pack.currency is distinct from p_event ->> 'currency' then
    perform billing_internal.raise_unprocessable('currency does not match the token pack',
      pg_catalog.format('pack %s, session %s', v_pack.currency, p_event ->> 'currency'));
  elsif v_quantity < 1 or v_quantity > 1000 then
    perform billing_internal.raise_unprocessable('quantity out of range (1 to 1000)', v_quantity::text);
  elsif (p_event ->> 'amount_subtotal')::numeric is distinct from v_pack.price_amount::numeric * v_quantity then
    perform billing_internal.raise_unprocessable('amount does not match the catalog',
      pg_catalog.format('session amount_subtotal %s, catalog %s x %s = %s', coalesce(p_event ->> 'amount_subtotal', 'missing'),
                        v_pack.price_amount, v_quantity, v_pack.price_amount::numeric * v_quantity));
  end if;
  v_tokens := v_pack.tokens::numeric * v_quantity;
  if v_tokens > 9223372036854775807 then
    perform billing_internal.raise_unprocessable('token amount overflows', v_tokens::text);
  end if;

  if v_payment is not null then
    perform billing_internal.lock_stripe_object(v_payment);
    perform billing_internal.note_payment(v_payment, v_pack.currency);
  end if;
  perform billing_internal.lock_and_settle(v_account, true);
  select * into v_ins from billing_internal.insert_grant(v_account, v_tokens::bigint, v_session, 'purchase', null,
    pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'quantity', v_quantity),
    v_payment, v_pack.stripe_price_id, v_paid, v_pack.currency);
  if v_ins.inserted then
    insert into billing.grant_purchases (account_id, purchase_id, grant_id, kind, allowance, amount, currency, purchased_at)
    values (v_account, v_session, v_ins.grant_id, 'checkout_session', v_tokens::bigint, v_paid, v_pack.currency,
            pg_catalog.to_timestamp(coalesce((p_event ->> 'object_created')::bigint, (p_event ->> 'created')::bigint)));
    if v_payment is not null then
      insert into billing.purchase_payments (purchase_id, payment_key, amount) values (v_session, v_payment, v_paid)
      on conflict do nothing;
    end if;
    v_adjusted := billing_internal.settle_stripe_grant(v_account, v_ins.grant_id); -- refunds or disputes that came first
  end if;
  perform billing_internal.recompute_balance(v_account);
  return v_base || pg_catalog.jsonb_build_object('action', case when v_ins.inserted then 'granted' else 'already_granted' end,
    'grant_id', v_ins.grant_id, 'tokens', case when v_ins.inserted then v_tokens end, 'adjusted', v_adjusted);
end
$$;

create or replace function billing_internal.apply_payment_intent(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid;
  v_pack billing.token_packs;
  v_quantity bigint := coalesce((p_event ->> 'quantity')::bigint, 1);
  v_payment text := p_event ->> 'object_id';
  v_paid bigint := coalesce((p_event ->> 'amount_received')::bigint, 0);
  v_ins record;
  v_tokens numeric;
  v_adjusted jsonb;
begin
  if p_event ->> 'topup' is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'not_a_top_up');
  end if;
  v_account := billing_internal.event_account(p_event);
  if v_account is null then
    perform billing_internal.raise_unprocessable('top-up payment has no user or account', v_payment);
  end if;
  if p_event ->> 'type' = 'payment_intent.payment_failed' then
    perform billing_internal.topup_payment_outcome(v_account, false, v_payment,
      coalesce(p_event ->> 'failure_code', p_event ->> 'failure_message'));
    return pg_catalog.jsonb_build_object('account_id', v_account, 'action', 'payment_failed', 'payment', v_payment);
  end if;
  select p.* into v_pack from billing.token_packs p where p.stripe_price_id = p_event ->> 'price_id';
  if not found then
    perform billing_internal.raise_unprocessable('price is not a token pack in billing.token_packs',
      coalesce(p_event ->> 'price_id', 'metadata.price_id missing'));
  elsif v_pack.currency is distinct from p_event ->> 'currency' then
    perform billing_internal.raise_unprocessable('currency does not match the token pack',
      pg_catalog.format('pack %s, payment %s', v_pack.currency, p_event ->> 'currency'));
  elsif v_quantity < 1 or v_quantity > 1000 then
    perform billing_internal.raise_unprocessable('quantity out of range (1 to 1000)', v_quantity::text);
  elsif v_paid::numeric is distinct from v_pack.price_amount::numeric * v_quantity then
    perform billing_internal.raise_unprocessable('amount does not match the catalog',
      pg_catalog.format('payment amount_received %s, catalog %s x %s = %s', v_paid, v_pack.price_amount, v_quantity,
                        v_pack.price_amount::numeric * v_quantity));
  end if;
  v_tokens := v_pack.tokens::numeric * v_quantity;
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, v_pack.currency);
  perform billing_internal.lock_and_settle(v_account, true);
  select * into v_ins from billing_internal.insert_grant(v_account, v_tokens::bigint, v_payment, 'purchase', null,
    pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'quantity', v_quantity, 'topup', p_event ->> 'topup'),
    v_payment, v_pack.stripe_price_id, v_paid, v_pack.currency);
  if v_ins.inserted then
    insert into billing.grant_purchases (account_id, purchase_id, grant_id, kind, allowance, amount, currency, purchased_at)
    values (v_account, v_payment, v_ins.grant_id, 'payment_intent', v_tokens::bigint, v_paid, v_pack.currency,
            pg_catalog.to_timestamp(coalesce((p_event ->> 'object_created')::bigint, (p_event ->> 'created')::bigint)));
    insert into billing.purchase_payments (purchase_id, payment_key, amount) values (v_payment, v_payment, v_paid)
    on conflict do nothing;
    v_adjusted := billing_internal.settle_stripe_grant(v_account, v_ins.grant_id);
  end if;
  perform billing_internal.recompute_balance(v_account);
  perform billing_internal.topup_payment_outcome(v_account, true, v_payment, null);
  return pg_catalog.jsonb_build_object('account_id', v_account,
    'action', case when v_ins.inserted then 'granted' else 'already_granted' end,
    'grant_id', v_ins.grant_id, 'tokens', case when v_ins.inserted then v_tokens end, 'adjusted', v_adjusted);
end
$$;

create or replace function billing_internal.apply_invoice_failed(p_event jsonb) returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  return pg_catalog.jsonb_build_object('account_id', billing_internal.event_account(p_event), 'action', 'payment_failed',
    'invoice', p_event ->> 'object_id', 'attempt_count', p_event -> 'attempt_count');
end
$$;

create or replace function billing_internal.apply_invoice_paid(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_invoice text := p_event ->> 'object_id';
  v_reason text := p_event ->> 'billing_reason';
  v_sub text := p_event ->> 'subscription';
  v_paid bigint := coalesce((p_event ->> 'amount_settled')::bigint, 0);
  v_payment text := p_event ->> 'payment_key';
  v_account uuid;
  v_owner uuid;
  v_line jsonb;
  v_plan_id bigint;
  v_plan billing.plans;
  v_allowance bigint;
  v_period_end timestamptz;
  v_grant bigint;
  v_ins record;
  v_created boolean := false;
  v_added bigint;
  v_expires timestamptz;
  v_adjusted jsonb;
begin
  if v_sub is null then
    return '{"action": "ignored", "reason": "not_a_subscription_invoice"}'::jsonb;
  elsif v_reason is null or v_reason not in ('subscription_create', 'subscription_cycle', 'subscription_update', 'subscription') then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_allowance_for_billing_reason',
                                         'billing_reason', v_reason);
  end if;
  v_account := billing_internal.event_account(p_event);
  if v_account is null then
    perform billing_internal.raise_unprocessable('invoice customer is not linked to a user or account', p_event ->> 'customer');
  end if;
  select l.line, p.id into v_line, v_plan_id
    from pg_catalog.jsonb_array_elements(p_event -> 'lines') with ordinality as l(line, ord)
    join billing.plans p on p.stripe_price_id = l.line ->> 'price'
   where ((l.line ->> 'proration')::boolean is not true and l.line ->> 'line_kind' <> 'invoiceitem')
      or (v_reason = 'subscription_update' and (l.line ->> 'proration')::boolean and (l.line ->> 'amount')::bigint > 0)
   order by (l.line ->> 'proration')::boolean, (l.line ->> 'period_end')::bigint desc, p.tokens_per_period desc, l.ord
   limit 1;
  if v_line is null then
    if v_reason = 'subscription_update' and not exists (
         select 1 from pg_catalog.jsonb_array_elements(p_event -> 'lines') l(line)
          where (l.line ->> 'amount')::bigint > 0
            and not exists (select 1 from billing.plans p where p.stripe_price_id = l.line ->> 'price')) then
      return pg_catalog.jsonb_build_object('account_id', v_account, 'action', 'no_plan_line', 'invoice', v_invoice);
    end if;
    perform billing_internal.raise_unprocessable('no line of the invoice is a plan in billing.plans',
      pg_catalog.format('invoice %s prices: %s%s', v_invoice,
        (select pg_catalog.string_agg(coalesce(l.line ->> 'price', 'none'), ', ')
           from pg_catalog.jsonb_array_elements(p_event -> 'lines') l(line)),
        case when (p_event ->> 'lines_has_more')::boolean then ' (more lines than the event lists)' else '' end));
  end if;
  select p.* into v_plan from billing.plans p where p.id = v_plan_id;
  if v_plan.currency is distinct from p_event ->> 'currency' then
    perform billing_internal.raise_unprocessable('currency does not match the plan',
      pg_catalog.format('plan %s, invoice %s', v_plan.currency, p_event ->> 'currency'));
  end if;
  v_period_end := pg_catalog.to_timestamp((v_line ->> 'period_end')::bigint);
  if v_period_end is null then
    perform billing_internal.raise_unprocessable('the plan line has no period', v_invoice);
  end if;
  v_allowance := case when v_paid > 0 or v_plan.grant_on_zero_amount then v_plan.tokens_per_period else 0 end;
  if v_allowance = 0 then
    return pg_catalog.jsonb_build_object('account_id', v_account, 'action', 'zero_amount', 'invoice', v_invoice,
                                         'plan', v_plan.code);
  end if;

  perform billing_internal.lock_stripe_object(v_invoice);
  if v_payment is not null then
    perform billing_internal.lock_stripe_object(v_payment);
    perform billing_internal.note_payment(v_payment, v_plan.currency);
  end if;
  perform billing_internal.lock_and_settle(v_account, true);
  select gp.grant_id, gp.account_id into v_grant, v_owner from billing.grant_purchases gp
   where gp.stripe_subscription_id = v_sub and gp.period_end = v_period_end
   order by gp.purchased_at, gp.purchase_id limit 1;
  if v_owner is distinct from v_account and v_owner is not null then
    perform billing_internal.raise_unprocessable('the subscription period is credited to another account',
      pg_catalog.format('subscription %s, period ending %s, invoice %s for account %s', v_sub, v_period_end, v_invoice,
                        v_account));
  elsif v_grant is null then
    select * into v_ins from billing_internal.insert_grant(v_account, v_allowance,
      v_sub || '@' || extract(epoch from v_period_end)::bigint, 'subscription',
      case when v_plan.rollover then null else v_period_end end,
      pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'subscription', v_sub, 'plan', v_plan.code,
                                    'period_end', v_period_end),
      v_payment, v_plan.stripe_price_id, v_paid, v_plan.currency);
    v_grant := v_ins.grant_id;
    v_created := v_ins.inserted;
  end if;
  insert into billing.grant_purchases (account_id, purchase_id, grant_id, kind, allowance, amount, currency, purchased_at,
                                       stripe_subscription_id, period_end, plan_id)
  values (v_account, v_invoice, v_grant, 'invoice', v_allowance, v_paid, v_plan.currency,
          pg_catalog.to_timestamp(coalesce((p_event ->> 'object_created')::bigint, (p_event ->> 'created')::bigint)),
          v_sub, v_period_end, v_plan.id)
  on conflict (account_id, purchase_id) do nothing;
  -- The period's tokens: the largest allowance among its invoices; its expiry that of the plan
  -- with the largest allowance (period end, unless that plan rolls over).
  select case when p.rollover then null else gp.period_end end into v_expires
    from billing.grant_purchases gp join billing.plans p on p.id = gp.plan_id
   where gp.account_id = v_account and gp.grant_id = v_grant
   order by gp.allowance desc, gp.purchased_at, gp.purchase_id limit 1;
  v_added := case when v_created then v_allowance else 0 end
             + billing_internal.extend_grant(v_account, v_grant,
                 (select pg_catalog.max(gp.allowance) from billing.grant_purchases gp
                   where gp.account_id = v_account and gp.grant_id = v_grant), v_expires);
  if v_payment is not null then
    insert into billing.purchase_payments (purchase_id, payment_key, amount)
    values (v_invoice, v_payment, coalesce((p_event ->> 'amount_paid')::bigint, 0))
    on conflict do nothing;
  end if;
  v_adjusted := billing_internal.settle_stripe_grant(v_account, v_grant); -- refunds or disputes that came first
  perform billing_internal.recompute_balance(v_account);
  return pg_catalog.jsonb_build_object('account_id', v_account, 'action', case when v_added > 0 then 'granted' else 'no_allowance_added' end,
    'grant_id', v_grant, 'tokens', v_added, 'plan', v_plan.code, 'allowance', v_allowance, 'period_end', v_period_end,
    'adjusted', v_adjusted);
end
$$;

create or replace function billing_internal.apply_invoice_payment(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_invoice text := p_event ->> 'invoice';
  v_payment text := p_event ->> 'payment_key';
  v_grant record;
  v_adjusted jsonb;
begin
  if p_event ->> 'status' is distinct from 'paid' then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'invoice_payment_not_paid');
  elsif v_invoice is null or v_payment is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_invoice_or_payment');
  end if;
  perform billing_internal.lock_stripe_object(v_invoice);
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, p_event ->> 'currency');
  insert into billing.purchase_payments as pp (purchase_id, payment_key, amount)
  values (v_invoice, v_payment, coalesce((p_event ->> 'amount_paid')::bigint, 0))
  on conflict (purchase_id, payment_key) do update set amount = excluded.amount;
  select gp.grant_id as id, gp.account_id into v_grant
    from billing.grant_purchases gp where gp.purchase_id = v_invoice;
  if not found then
    return pg_catalog.jsonb_build_object('action', 'linked_before_invoice', 'invoice', v_invoice, 'payment', v_payment);
  end if;
  perform billing_internal.lock_and_settle(v_grant.account_id, true);
  v_adjusted := billing_internal.settle_stripe_grant(v_grant.account_id, v_grant.id);
  perform billing_internal.recompute_balance(v_grant.account_id);
  return pg_catalog.jsonb_build_object('account_id', v_grant.account_id, 'action', 'linked', 'invoice', v_invoice,
    'payment', v_payment, 'grant_id', v_grant.id, 'adjusted', v_adjusted);
end
$$;

create or replace function billing_internal.record_refund(p_payment_key text, p_refund_id text, p_amount bigint, p_currency text,
                                       p_status text, p_event_created timestamptz, p_event_id text) returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_refund_id is null or p_amount is null or p_amount < 0 or p_status is null then
    perform billing_internal.raise_unprocessable('refund without id, amount or status', p_refund_id);
  end if;
  insert into billing.stripe_refunds as r (refund_id, payment_key, amount, currency, status, last_event_created, last_event_id)
  values (p_refund_id, p_payment_key, p_amount, p_currency, p_status, p_event_created, p_event_id)
  on conflict (refund_id) do update
     set amount = excluded.amount, currency = excluded.currency, status = excluded.status,
         last_event_created = excluded.last_event_created, last_event_id = excluded.last_event_id
   where (billing_internal.stripe_status_rank('refund', excluded.status) >= 100, excluded.last_event_created,
          billing_internal.stripe_status_rank('refund', excluded.status), excluded.last_event_id)
       > (billing_internal.stripe_status_rank('refund', r.status) >= 100, r.last_event_created,
          billing_internal.stripe_status_rank('refund', r.status), r.last_event_id);
  return found;
end
$$;

create or replace function billing_internal.record_charge(p_event jsonb) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_payment text := p_event ->> 'payment_key';
  v_refund jsonb;
begin
  if v_payment is null then
    return null;
  elsif p_event ->> 'amount_refunded' is null or (p_event ->> 'amount_refunded')::bigint < 0
     or (p_event ->> 'amount_captured')::bigint < 0 then
    perform billing_internal.raise_unprocessable('charge.refunded without a usable amount_refunded and amount_captured', v_payment);
  end if;
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, p_event ->> 'currency');
  update billing.stripe_payments p
     set charge_id = coalesce(p.charge_id, p_event ->> 'charge'),
         amount_captured = coalesce((p_event ->> 'amount_captured')::bigint, p.amount_captured),
         refunded_reported = greatest(p.refunded_reported, (p_event ->> 'amount_refunded')::bigint),
         updated_at = pg_catalog.now()
   where p.payment_key = v_payment;
  for v_refund in select r from pg_catalog.jsonb_array_elements(coalesce(p_event -> 'refunds', '[]')) r loop
    perform billing_internal.record_refund(v_payment, v_refund ->> 'id', (v_refund ->> 'amount')::bigint, p_event ->> 'currency',
      coalesce(v_refund ->> 'status', 'succeeded'), pg_catalog.to_timestamp((p_event ->> 'created')::bigint), p_event ->> 'id');
  end loop;
  return v_payment;
end
$$;

create or replace function billing_internal.apply_charge(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_payment text := billing_internal.record_charge(p_event);
begin
  if v_payment is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_payment');
  end if;
  return billing_internal.settle_payment(v_payment);
end
$$;

create or replace function billing_internal.apply_refund(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_payment text := p_event ->> 'payment_key';
begin
  if v_payment is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_payment');
  end if;
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, p_event ->> 'currency');
  if not billing_internal.record_refund(v_payment, p_event ->> 'object_id', (p_event ->> 'amount')::bigint, p_event ->> 'currency',
                                p_event ->> 'status', pg_catalog.to_timestamp((p_event ->> 'created')::bigint), p_event ->> 'id') then
    return pg_catalog.jsonb_build_object('action', 'stale', 'refund', p_event ->> 'object_id');
  end if;
  return billing_internal.settle_payment(v_payment) || pg_catalog.jsonb_build_object('refund', p_event ->> 'object_id',
                                                                              'status', p_event ->> 'status');
end
$$;

create or replace function billing_internal.record_dispute(p_event jsonb) returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_amount bigint := (p_event ->> 'amount')::bigint;
begin
  if p_event ->> 'object_id' is null or v_amount is null or v_amount < 0 or p_event ->> 'status' is null then
    perform billing_internal.raise_unprocessable('dispute without id, amount or status', p_event ->> 'object_id');
  end if;
  perform billing_internal.lock_stripe_object(p_event ->> 'payment_key');
  perform billing_internal.note_payment(p_event ->> 'payment_key', p_event ->> 'currency');
  insert into billing.stripe_disputes as d (dispute_id, payment_key, amount, currency, status, last_event_created, last_event_id)
  values (p_event ->> 'object_id', p_event ->> 'payment_key', v_amount, p_event ->> 'currency', p_event ->> 'status',
          pg_catalog.to_timestamp((p_event ->> 'created')::bigint), p_event ->> 'id')
  on conflict (dispute_id) do update
     set amount = excluded.amount, currency = excluded.currency, status = excluded.status,
         last_event_created = excluded.last_event_created, last_event_id = excluded.last_event_id
   where (billing_internal.stripe_status_rank('dispute', excluded.status) >= 100, excluded.last_event_created,
          billing_internal.stripe_status_rank('dispute', excluded.status), excluded.last_event_id)
       > (billing_internal.stripe_status_rank('dispute', d.status) >= 100, d.last_event_created,
          billing_internal.stripe_status_rank('dispute', d.status), d.last_event_id);
  return found;
end
$$;

create or replace function billing_internal.apply_dispute(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_event ->> 'payment_key' is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_payment');
  elsif not billing_internal.record_dispute(p_event) then
    return pg_catalog.jsonb_build_object('action', 'stale', 'dispute', p_event ->> 'object_id');
  end if;
  return billing_internal.settle_payment(p_event ->> 'payment_key') || pg_catalog.jsonb_build_object(
    'dispute', p_event ->> 'object_id', 'status', p_event ->> 'status');
end
$$;

create or replace function billing_internal.apply_subscription(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := billing_internal.event_account(p_event);
  v_created timestamptz := pg_catalog.to_timestamp((p_event ->> 'created')::bigint);
  v_status text := case when p_event ->> 'type' = 'customer.subscription.deleted' then 'canceled'
                        else p_event ->> 'status' end;
  v_plan_id bigint;
  v_link text;
  v_applied boolean;
begin
  if v_account is null then
    perform billing_internal.raise_unprocessable('subscription customer is not linked to a user or account', p_event ->> 'customer');
  end if;
  if billing_internal.stripe_status_rank('subscription', v_status) is null then
    perform billing_internal.raise_unprocessable('unknown subscription status', coalesce(v_status, 'NULL'));
  end if;
  select p.id into v_plan_id from billing.plans p where p.stripe_price_id = p_event ->> 'price_id';
  v_link := billing_internal.link_customer(v_account, p_event ->> 'customer');

  insert into billing.user_subscriptions as s (stripe_subscription_id, account_id, plan_id, stripe_price_id, status,
      current_period_start, current_period_end, cancel_at_period_end, canceled_at, last_event_created, last_event_id)
  values (p_event ->> 'object_id', v_account, v_plan_id, p_event ->> 'price_id', v_status,
      pg_catalog.to_timestamp((p_event ->> 'current_period_start')::bigint),
      pg_catalog.to_timestamp((p_event ->> 'current_period_end')::bigint),
      coalesce((p_event ->> 'cancel_at_period_end')::boolean, false),
      pg_catalog.to_timestamp((p_event ->> 'canceled_at')::bigint),
      v_created, p_event ->> 'id')
  on conflict (stripe_subscription_id) do update
     set plan_id = excluded.plan_id, stripe_price_id = excluded.stripe_price_id, status = excluded.status,
         current_period_start = excluded.current_period_start, current_period_end = excluded.current_period_end,
         cancel_at_period_end = excluded.cancel_at_period_end, canceled_at = excluded.canceled_at,
         last_event_created = excluded.last_event_created, last_event_id = excluded.last_event_id,
         updated_at = pg_catalog.now()
   where (billing_internal.stripe_status_rank('subscription', excluded.status) >= 100, excluded.last_event_created,
          billing_internal.stripe_status_rank('subscription', excluded.status), excluded.last_event_id)
       > (billing_internal.stripe_status_rank('subscription', s.status) >= 100, s.last_event_created,
          billing_internal.stripe_status_rank('subscription', s.status), s.last_event_id)
  returning true into v_applied;
  return pg_catalog.jsonb_build_object('account_id', v_account, 'subscription', p_event ->> 'object_id',
           'action', case when v_applied then 'updated' else 'stale' end,
           'status', case when v_applied then v_status end)
         || case when v_link = 'linked' then pg_catalog.jsonb_build_object('linked_customer', p_event ->> 'customer')
                 else '{}'::jsonb end;
end
$$;

create or replace function billing_internal.ignore_reason(p_event jsonb) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_settings billing.settings;
begin
  if p_event ->> 'kind' = 'ignored' then
    return coalesce(p_event ->> 'ignore_reason', 'event_type_not_used');
  end if;
  select s.* into v_settings from billing.settings s;
  if (p_event ->> 'livemode')::boolean is distinct from coalesce(v_settings.stripe_livemode, true) then
    return 'livemode_mismatch';
  elsif p_event ->> 'account' is not null and p_event ->> 'account' is distinct from v_settings.stripe_account then
    return 'connect_account_mismatch';
  end if;
  return null;
end
$$;

create or replace function billing_internal.apply_event(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_reason text := billing_internal.ignore_reason(p_event);
begin
  if v_reason is not null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', v_reason);
  elsif p_event ->> 'kind' <> 'invoice_payment'
        and coalesce(pg_catalog.length(p_event ->> 'object_id'), 0) not between 1 and 255 then
    perform billing_internal.raise_unprocessable('the event''s object has no usable id (1 to 255 characters)', p_event ->> 'id');
  end if;
  return case p_event ->> 'kind'
    when 'checkout' then billing_internal.apply_checkout(p_event)
    when 'invoice_paid' then billing_internal.apply_invoice_paid(p_event)
    when 'invoice_payment' then billing_internal.apply_invoice_payment(p_event)
    when 'subscription' then billing_internal.apply_subscription(p_event)
    when 'charge' then billing_internal.apply_charge(p_event)
    when 'refund' then billing_internal.apply_refund(p_event)
    when 'dispute' then billing_internal.apply_dispute(p_event)
    when 'payment_intent' then billing_internal.apply_payment_intent(p_event)
    when 'invoice_failed' then billing_internal.apply_invoice_failed(p_event)
  end;
end
$$;

create or replace function billing_internal.process_event(p_event jsonb, p_retry_linked boolean) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_effect jsonb;
  v_status text;
  v_error jsonb;
  v_code text;
  v_message text;
  v_detail text;
  v_failed record;
begin
  begin
    v_effect := billing_internal.apply_event(p_event);
    v_status := case v_effect ->> 'action' when 'ignored' then 'ignored' when 'stale' then 'stale' else 'processed' end;
    if v_status = 'processed' then
      perform billing_internal.emit_stripe_events(p_event, v_effect);
    end if;
  exception
    when serialization_failure or deadlock_detected or lock_not_available or query_canceled then
      raise;
    when others then
      get stacked diagnostics v_code = returned_sqlstate, v_message = message_text, v_detail = pg_exception_detail;
      v_status := 'failed';
      v_error := pg_catalog.jsonb_build_object('code', v_code, 'message', v_message, 'detail', nullif(v_detail, ''));
  end;
  update billing.payment_transactions t
     set status = v_status, outcome = coalesce(v_effect, '{}'), error = v_error,
         account_id = coalesce((v_effect ->> 'account_id')::uuid, t.account_id),
         processed_at = pg_catalog.clock_timestamp()
   where t.stripe_event_id = p_event ->> 'id';
  if p_retry_linked and v_status = 'processed' and v_effect ? 'linked_customer' then
    for v_failed in
      select t.stripe_event_id, t.payload from billing.payment_transactions t
       where t.status = 'failed' and t.stripe_customer = v_effect ->> 'linked_customer'
       order by t.event_created, t.stripe_event_id
         for update
    loop
      update billing.payment_transactions set attempts = attempts + 1 where stripe_event_id = v_failed.stripe_event_id;
      perform billing_internal.process_event(billing_internal.decode_stripe_event(v_failed.payload::text), false);
    end loop;
  end if;
  return pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('event_id', p_event ->> 'id', 'type', p_event ->> 'type',
    'outcome', v_status, 'effect', v_effect, 'reason', case when v_status = 'ignored' then v_effect ->> 'reason' end,
    'error', v_error));
end
$$;

create or replace function billing.handle_stripe_webhook(
  p_payload text,
  p_signature_header text,
  p_secret text default null
) returns jsonb
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_secrets text[];
  v_rejection text;
  v_event jsonb;
  v_prior billing.payment_transactions;
begin
  perform billing_internal.require_service();
  if p_secret is not null then
    v_secrets := array[p_secret];
  else
    v_secrets := billing_internal.webhook_secrets();
  end if;
  if v_secrets is null or pg_catalog.cardinality(v_secrets) = 0 then
    raise exception using errcode = 'PT500', message = 'no Stripe webhook secret configured',
      hint = 'Store it in Supabase Vault as stripe_webhook_secret, or insert it into billing.webhook_secrets.';
  end if;
  v_rejection := billing_internal.stripe_signature_check(p_payload, p_signature_header, v_secrets, 300);
  if v_rejection is not null then
    raise exception using errcode = 'PT400', message = 'invalid Stripe signature',
      detail = v_rejection || case
        when v_rejection = 'signature_mismatch'
             and exists (select 1 from pg_catalog.unnest(v_secrets) s where s <> pg_catalog.btrim(s, E' \t\r\n'))
        then ': a configured webhook secret has leading or trailing whitespace (a newline from copying it?)'
        else '' end,
      hint = 'Use the endpoint''s signing secret (whsec_...) exactly, and pass the raw request body as received.';
  end if;
  v_event := billing_internal.decode_stripe_event(p_payload);

  insert into billing.payment_transactions (stripe_event_id, event_type, event_created, livemode, api_version,
                                            status, payload, stripe_customer)
  values (v_event ->> 'id', v_event ->> 'type',
          coalesce(pg_catalog.to_timestamp((v_event ->> 'created')::bigint), pg_catalog.clock_timestamp()),
          (v_event ->> 'livemode')::boolean, v_event ->> 'api_version', 'processed', p_payload::jsonb,
          v_event ->> 'customer')
  on conflict (stripe_event_id) do nothing;
  if not found then
    select t.* into v_prior from billing.payment_transactions t where t.stripe_event_id = v_event ->> 'id' for update;
    if v_prior.status <> 'failed' then
      return pg_catalog.jsonb_build_object('event_id', v_event ->> 'id', 'type', v_event ->> 'type',
        'outcome', 'duplicate', 'first_outcome', v_prior.status);
    end if;
    update billing.payment_transactions set attempts = attempts + 1 where stripe_event_id = v_event ->> 'id';
  end if;
  return billing_internal.process_event(v_event, true);
end
$$;
comment on function billing.handle_stripe_webhook(text, text, text) is
  'Verifies, records exactly once and applies one Stripe webhook delivery; returns {event_id, type, outcome, effect}.';

create or replace function billing.reprocess_failed_events() returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_row record;
  v_done integer := 0;
  v_pass integer;
begin
  perform billing_internal.require_service();
  loop
    v_pass := 0;
    for v_row in
      select t.stripe_event_id, t.payload from billing.payment_transactions t
       where t.status = 'failed' order by t.event_created, t.stripe_event_id
         for update
    loop
      update billing.payment_transactions set attempts = attempts + 1 where stripe_event_id = v_row.stripe_event_id;
      if billing_internal.process_event(billing_internal.decode_stripe_event(v_row.payload::text), false) ->> 'outcome' <> 'failed' then
        v_pass := v_pass + 1;
      end if;
    end loop;
    v_done := v_done + v_pass;
    exit when v_pass = 0;
  end loop;
  return v_done;
end
$$;
comment on function billing.reprocess_failed_events() is
  'Applies every failed Stripe event again (e.g. after a catalog fix); returns how many are no longer failed.';

create or replace function billing.verify_ledger()
returns table (invariant text, account_id uuid, detail text)
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  with live as (  -- grants with the head's authoritative remaining
    select g.*, case when b.head_grant_id = g.id then b.head_remaining else g.remaining end as live_remaining
      from billing.token_grants g
      left join billing.balances b on b.account_id = g.account_id
  ), spent as (
    select u.account_id, (u.drawn_from[i][1]) as grant_id, pg_catalog.sum(u.drawn_from[i][2]) as t
      from billing.token_usage u cross join lateral pg_catalog.generate_subscripts(u.drawn_from, 1) as i
     group by 1, 2
  ), held as (
    select r.account_id, (r.drawn_from[i][1]) as grant_id, pg_catalog.sum(r.drawn_from[i][2]) as t
      from billing.token_reservations r cross join lateral pg_catalog.generate_subscripts(r.drawn_from, 1) as i
     where r.status = 'held'
     group by 1, 2
  ), per_account as (
    select g.account_id, pg_catalog.sum(g.live_remaining) as remaining,
           pg_catalog.sum(g.debt_incurred - g.debt_repaid) as debt
      from live g group by g.account_id
  ), holds as (
    select r.account_id, pg_catalog.sum(r.tokens) as held
      from billing.token_reservations r where r.status = 'held' group by r.account_id
  )
  select 'grant tokens do not add up', g.account_id,
         pg_catalog.format('grant %s: tokens %s <> remaining %s + frozen %s + expired %s + clawed back %s + debt repaid %s + spent %s + held %s',
           g.id, g.tokens, g.live_remaining, g.frozen, g.expired, g.clawed_back, g.debt_repaid, coalesce(s.t, 0), coalesce(h.t, 0))
    from live g
    left join spent s on s.account_id = g.account_id and s.grant_id = g.id
    left join held h on h.account_id = g.account_id and h.grant_id = g.id
   where g.tokens <> g.live_remaining + g.frozen + g.expired + g.clawed_back + g.debt_repaid + coalesce(s.t, 0) + coalesce(h.t, 0)
  union all
  select 'grant remaining out of range', g.account_id, pg_catalog.format('grant %s: remaining %s of %s', g.id, g.live_remaining, g.tokens)
    from live g where g.live_remaining < 0 or g.live_remaining > g.tokens
  union all
  select 'balance does not match ledger', coalesce(b.account_id, p.account_id),
         pg_catalog.format('spendable %s vs grants %s; held %s vs reservations %s; debt %s vs grants %s',
           b.spendable, coalesce(p.remaining, 0), b.held, coalesce(hs.held, 0), b.debt, coalesce(p.debt, 0))
    from billing.balances b
    full join per_account p on p.account_id = b.account_id
    left join holds hs on hs.account_id = coalesce(b.account_id, p.account_id)
   where b.account_id is null
      or b.spendable <> coalesce(p.remaining, 0)
      or b.held <> coalesce(hs.held, 0)
      or b.debt <> coalesce(p.debt, 0)
  union all
  select 'negative balance', b.account_id, pg_catalog.format('spendable %s, held %s, debt %s', b.spendable, b.held, b.debt)
    from billing.balances b where b.spendable < 0 or b.held < 0 or b.debt < 0
  union all
  select 'debt with spendable tokens', b.account_id, pg_catalog.format('spendable %s, debt %s', b.spendable, b.debt)
    from billing.balances b where b.debt > 0 and b.spendable > 0
  union all
  -- (head_remaining may exceed the head's stale token_grants.remaining: a hold committed for less on
  -- the fast path gives tokens back to the head; 'grant tokens do not add up' checks it exactly)
  select 'head grant is not the user''s', b.account_id, pg_catalog.format('head %s', b.head_grant_id)
    from billing.balances b
   where b.head_grant_id is not null
     and not exists (select 1 from billing.token_grants g where g.id = b.head_grant_id and g.account_id = b.account_id
                       and b.head_remaining <= g.tokens)
  union all
  select 'head grant is not first in burn order', b.account_id,
         pg_catalog.format('head %s, but grant %s expires sooner', b.head_grant_id, g.id)
    from billing.balances b
    join billing.token_grants h on h.account_id = b.account_id and h.id = b.head_grant_id
    join live g on g.account_id = b.account_id and g.id <> h.id and g.live_remaining > 0
   where b.head_remaining > 0
     and billing_internal.is_live(g.expires_at)
     and (coalesce(g.expires_at, 'infinity'), g.id) < (coalesce(h.expires_at, 'infinity'), h.id)
  union all
  select 'usage does not match its grants', u.account_id,
         pg_catalog.format('usage %s: tokens %s, drawn %s', u.id, u.tokens,
           (select pg_catalog.sum(u.drawn_from[i][2]) from pg_catalog.generate_subscripts(u.drawn_from, 1) as i))
    from billing.token_usage u
   where u.tokens is distinct from
         (select pg_catalog.sum(u.drawn_from[i][2]) from pg_catalog.generate_subscripts(u.drawn_from, 1) as i)
  union all
  select 'head tokens without a head grant', b.account_id, pg_catalog.format('head_remaining %s', b.head_remaining)
    from billing.balances b where b.head_grant_id is null and b.head_remaining <> 0
  union all
  select 'usage row breaks its column rules', u.account_id,
         pg_catalog.format('usage %s: tokens %s, key length %s, metadata %s', u.id, u.tokens,
           pg_catalog.length(u.idempotency_key), pg_catalog.jsonb_typeof(u.metadata))
    from billing.token_usage u
   where u.tokens <= 0 or pg_catalog.length(u.idempotency_key) not between 1 and 255
      or pg_catalog.jsonb_typeof(u.metadata) <> 'object'
  union all
  select 'reservation row breaks its column rules', r.account_id,
         pg_catalog.format('reservation %s: tokens %s, status %s, committed %s, key length %s, metadata %s', r.id,
           r.tokens, r.status, r.committed_tokens, pg_catalog.length(r.idempotency_key), pg_catalog.jsonb_typeof(r.metadata))
    from billing.token_reservations r
   where r.tokens <= 0 or r.status not in ('held', 'committed', 'released', 'expired')
      or r.committed_tokens not between 0 and r.tokens or (r.committed_tokens is null) <> (r.status <> 'committed')
      or pg_catalog.length(r.idempotency_key) not between 1 and 255 or pg_catalog.jsonb_typeof(r.metadata) <> 'object'
  union all
  select 'duplicate grant reference', null::uuid, pg_catalog.format('(%s, %s) granted %s times', g.kind, g.reference, pg_catalog.count(*))
    from billing.token_grants g group by g.kind, g.reference having pg_catalog.count(*) > 1
  union all
  select 'debt beyond spent tokens', g.account_id,
         pg_catalog.format('grant %s: debt incurred %s, but only %s of its tokens were spent, held or repaid debt',
           g.id, g.debt_incurred, g.debt_repaid + coalesce(s.t, 0) + coalesce(h.t, 0))
    from live g
    left join spent s on s.account_id = g.account_id and s.grant_id = g.id
    left join held h on h.account_id = g.account_id and h.grant_id = g.id
   where g.debt_incurred > g.debt_repaid + coalesce(s.t, 0) + coalesce(h.t, 0)
  union all
  select 'team usage without a member', u.account_id, pg_catalog.format('usage %s', u.id)
    from billing.token_usage u join billing.accounts a on a.id = u.account_id and a.kind = 'team'
   where u.user_id is null
  union all
  -- the rule add_account_member enforces instead of a table CHECK (sql/schema.sql)
  select 'member spend limit without a period', m.account_id, pg_catalog.format('member %s', m.user_id)
    from billing.account_members m
   where m.spend_limit is not null and m.spend_limit_period is null
  union all
  -- the cached plan of consume's rate limits, against the subscriptions (as account_plan orders them)
  select 'rate-limit plan differs from the subscription', b.account_id,
         pg_catalog.format('balances.plan_code %s, current subscription''s plan %s', coalesce(b.plan_code, 'none'),
                           coalesce(cur.code, 'none'))
    from billing.balances b
    left join (select distinct on (s.account_id) s.account_id, p.code
                 from billing.user_subscriptions s join billing.plans p on p.id = s.plan_id
                where s.status in ('active', 'trialing', 'past_due')
                order by s.account_id, s.current_period_end desc nulls last, s.stripe_subscription_id) cur
      on cur.account_id = b.account_id
   where b.plan_code is distinct from cur.code
  union all
  -- the counters a debit checks, against the limits of the account's plan (ids and definitions)
  select 'rate-limit counters differ from the plan''s limits', b.account_id,
         pg_catalog.format('plan %s, balances.rate_state %s', coalesce(b.plan_code, 'none'), coalesce(b.rate_state::text, 'NULL'))
    from billing.balances b
   where coalesce(pg_catalog.cardinality(b.rate_state), 0) % 7 <> 0
      or (select pg_catalog.array_agg(pg_catalog.format('%s %s %s %s', b.rate_state[i + 1], b.rate_state[i + 3],
                                                        b.rate_state[i + 4], b.rate_state[i + 5]) order by b.rate_state[i + 1])
            from pg_catalog.generate_series(0, pg_catalog.cardinality(b.rate_state) - 1, 7) as i
           where b.rate_state[i + 2] = 1)
         is distinct from
         (select pg_catalog.array_agg(pg_catalog.format('%s %s %s %s', l.id, case l.metric when 'tokens' then 1 else 0 end,
                                                        l.window_seconds, l.max_amount) order by l.id)
            from billing.rate_limits l where l.plan_code is not distinct from b.plan_code)
  union all
  select 'frozen above the dispute hold', g.account_id,
         pg_catalog.format('grant %s: frozen %s, freeze_target %s', g.id, g.frozen, g.freeze_target)
    from billing.token_grants g where g.frozen > g.freeze_target
  union all
  select 'grant tokens differ from its purchases', g.account_id,
         pg_catalog.format('grant %s: tokens %s, largest purchase allowance %s', g.id, g.tokens, p.allowance)
    from billing.token_grants g
    join (select gp.account_id, gp.grant_id, pg_catalog.max(gp.allowance) as allowance
            from billing.grant_purchases gp group by 1, 2) p
      on p.account_id = g.account_id and p.grant_id = g.id
   where g.tokens <> p.allowance
  union all
  select 'Stripe adjustments not applied', g.account_id,
         pg_catalog.format('grant %s: clawed back %s + debt %s, freeze target %s; the Stripe facts give %s and %s',
           g.id, g.clawed_back, g.debt_incurred, g.freeze_target, g.targets[1], g.targets[2])
    from (select g.*, billing_internal.stripe_targets(g.account_id, g.id) as targets from billing.token_grants g
           where exists (select 1 from billing.grant_purchases gp where gp.account_id = g.account_id
                            and gp.grant_id = g.id)) g
   where g.targets is null or g.clawed_back + g.debt_incurred <> g.targets[1] or g.freeze_target <> g.targets[2]
  union all
  select 'usage rollup differs from the usage rows', coalesce(r.account_id, u.account_id),
         pg_catalog.format('hour %s, user %s, model %s: rolled up %s credits in %s calls, the rows have %s in %s',
           coalesce(r.hour_start, u.hour_start), coalesce(r.user_id, u.user_id), coalesce(r.model, u.model),
           coalesce(r.tokens, 0), coalesce(r.requests, 0), coalesce(u.tokens, 0), coalesce(u.requests, 0))
    from (select x.*, coalesce(x.user_id, billing_internal.no_account()) as user_key, coalesce(x.model, pg_catalog.chr(1)) as model_key
            from billing.usage_rollups x) r
    full join (select u.account_id, u.user_id, coalesce(u.user_id, billing_internal.no_account()) as user_key,
                      pg_catalog.date_trunc('hour', u.created_at at time zone 'UTC') at time zone 'UTC' as hour_start,
                      u.metadata ->> 'model' as model, coalesce(u.metadata ->> 'model', pg_catalog.chr(1)) as model_key,
                      pg_catalog.sum(u.tokens) as tokens, pg_catalog.count(*) as requests
                 from billing.token_usage u where u.created_at < billing_internal.rolled_up_to()
                group by 1, 2, 3, 4, 5, 6) u
      on u.account_id = r.account_id and u.hour_start = r.hour_start and u.user_key = r.user_key
     and u.model_key = r.model_key
   where r.tokens is distinct from u.tokens or r.requests is distinct from u.requests
  union all
  select 'daily usage rollup differs from its hours', coalesce(d.account_id, h.account_id),
         pg_catalog.format('day %s, user %s, model %s: %s credits in %s calls, the hours have %s in %s',
           coalesce(d.day_start, h.day_start), coalesce(d.user_id, h.user_id), coalesce(d.model, h.model),
           coalesce(d.tokens, 0), coalesce(d.requests, 0), coalesce(h.tokens, 0), coalesce(h.requests, 0))
    from billing.usage_rollups_daily d
    full join (select x.account_id, x.user_id, x.model,
                      pg_catalog.date_trunc('day', x.hour_start at time zone 'UTC') at time zone 'UTC' as day_start,
                      pg_catalog.sum(x.tokens) as tokens, pg_catalog.sum(x.requests) as requests,
                      pg_catalog.sum(x.input_tokens) as input_tokens, pg_catalog.sum(x.output_tokens) as output_tokens,
                      pg_catalog.sum(x.cached_input_tokens) as cached_input_tokens
                 from billing.usage_rollups x group by 1, 2, 3, 4) h
      on h.account_id = d.account_id and h.day_start = d.day_start and h.user_id is not distinct from d.user_id
     and h.model is not distinct from d.model
   where d.tokens is distinct from h.tokens or d.requests is distinct from h.requests
      or d.input_tokens is distinct from h.input_tokens or d.output_tokens is distinct from h.output_tokens
      or d.cached_input_tokens is distinct from h.cached_input_tokens
$$;
comment on function billing.verify_ledger() is 'Every violated ledger invariant; empty means consistent.';

create or replace function billing_internal.current_user_id() returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid;
begin
  if billing_internal.caller_kind() = 'anon' then
    raise exception using errcode = '42501', message = 'sign in to use billing';
  end if;
  v_user := billing_internal.auth_uid();
  if v_user is null then
    raise exception using errcode = '42501', message = 'no user in the JWT (sub claim)';
  end if;
  return v_user;
end
$$;

create or replace function billing.get_billing_summary(p_account_id uuid default null) returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
  v_account uuid := coalesce(p_account_id, v_user);
  v_member billing.account_members;
  v_bal billing.balances;
begin
  if v_account <> v_user then
    v_member := billing_internal.require_member(v_account, v_user);
  end if;
  select b.* into v_bal from billing.balances b where b.account_id = v_account;
  return pg_catalog.jsonb_build_object(
    'account_id', v_account,
    'user_id', v_user,
    'balance', billing.get_balance(v_user, v_account),
    'reserved', coalesce(v_bal.held, 0),
    'debt', coalesce(v_bal.debt, 0),
    'breakdown', (
      select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('kind', x.kind, 'expires_at', x.expires_at,
                                                                          'tokens', x.tokens)
                                           order by x.expires_at, x.kind), '[]'::jsonb)
        from (select g.kind, g.expires_at,
                     pg_catalog.sum(case when g.id = v_bal.head_grant_id then v_bal.head_remaining
                                         else g.remaining end)::bigint as tokens
                from billing.token_grants g
               where g.account_id = v_account and g.remaining > 0
                 and billing_internal.is_live(g.expires_at)
               group by g.kind, g.expires_at) x
       where x.tokens > 0),
    'subscription', (
      select pg_catalog.jsonb_build_object(
               'plan', p.code, 'plan_name', p.name, 'status', s.status,
               'current_period_end', s.current_period_end, 'cancel_at_period_end', s.cancel_at_period_end,
               'renews_at', case when s.status in ('active', 'trialing') and not s.cancel_at_period_end
                                 then s.current_period_end end)
        from billing.user_subscriptions s
        left join billing.plans p on p.id = s.plan_id
       where s.account_id = v_account
       order by (s.status in ('active', 'trialing', 'past_due')) desc, s.current_period_end desc nulls last
       limit 1),
    'member', case when v_member.account_id is not null then billing_internal.member_limits(v_member) end);
end
$$;
comment on function billing.get_billing_summary(uuid) is
  'The account''s balance, its breakdown by grant kind and expiry, reserved tokens, debt and plan; for a team account also the signed-in member''s role and spend limit.';

create or replace function billing_internal.member_limits(p_member billing.account_members) returns jsonb
language sql stable set search_path = pg_catalog, pg_temp as $$
  select pg_catalog.jsonb_build_object(
    'role', p_member.role, 'spend_limit', p_member.spend_limit, 'spend_limit_period', p_member.spend_limit_period,
    'spent_this_period', x.spent,
    'remaining_limit', case when p_member.spend_limit is not null then greatest(0, p_member.spend_limit - x.spent) end,
    'period_resets_at', case when p_member.spend_limit_period is not null
                             then x.start + ('1 ' || p_member.spend_limit_period)::interval end)
    from (select billing_internal.limit_period_start(p_member.spend_limit_period) as start,
                 case when p_member.period_start is not distinct from
                           billing_internal.limit_period_start(p_member.spend_limit_period)
                      then p_member.period_spent else 0 end as spent) x
$$;

create or replace function billing_internal.llm_count(p_metadata jsonb, p_key text) returns numeric
language sql immutable parallel safe as $$
  select case when pg_catalog.jsonb_typeof(p_metadata operator(pg_catalog.->) p_key) operator(pg_catalog.=) 'number'
              then pg_catalog.numeric(p_metadata operator(pg_catalog.->) p_key) end
$$;

create or replace function billing_internal.roll_up_usage() returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_state billing.usage_rollup_state;
  v_rows bigint := 0;
  v_at timestamptz;
begin
  insert into billing.usage_rollup_state (id) values (true) on conflict (id) do nothing;
  select s.* into v_state from billing.usage_rollup_state s for update skip locked;
  if not found then
    return 0; -- another run is rolling up
  end if;
  if v_state.candidate_at is not null
     and pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()) >= v_state.candidate_xmax then
    with batch as (
      select u.account_id, u.user_id, pg_catalog.date_trunc('hour', u.created_at at time zone 'UTC') at time zone 'UTC' as hour_start,
             u.metadata ->> 'model' as model, pg_catalog.sum(u.tokens) as tokens, pg_catalog.count(*) as requests,
             coalesce(pg_catalog.sum(billing_internal.llm_count(u.metadata, 'input_tokens')), 0) as input_tokens,
             coalesce(pg_catalog.sum(billing_internal.llm_count(u.metadata, 'output_tokens')), 0) as output_tokens,
             coalesce(pg_catalog.sum(billing_internal.llm_count(u.metadata, 'cached_input_tokens')), 0) as cached_input_tokens
        from billing.token_usage u
       where u.created_at >= v_state.rolled_up_to and u.created_at < v_state.candidate_at
       group by 1, 2, 3, 4
    ), hourly as (
      insert into billing.usage_rollups as r (account_id, user_id, hour_start, model, tokens, requests, input_tokens,
                                              output_tokens, cached_input_tokens)
      select b.account_id, b.user_id, b.hour_start, b.model, b.tokens, b.requests, b.input_tokens, b.output_tokens,
             b.cached_input_tokens
        from batch b
      on conflict (account_id, hour_start, user_id, model) do update
         set tokens = r.tokens + excluded.tokens, requests = r.requests + excluded.requests,
             input_tokens = r.input_tokens + excluded.input_tokens, output_tokens = r.output_tokens + excluded.output_tokens,
             cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens
    )
    insert into billing.usage_rollups_daily as d (account_id, user_id, day_start, model, tokens, requests, input_tokens,
                                                  output_tokens, cached_input_tokens)
    select b.account_id, b.user_id, pg_catalog.date_trunc('day', b.hour_start at time zone 'UTC') at time zone 'UTC', b.model,
           pg_catalog.sum(b.tokens)::bigint, pg_catalog.sum(b.requests)::bigint, pg_catalog.sum(b.input_tokens),
           pg_catalog.sum(b.output_tokens), pg_catalog.sum(b.cached_input_tokens)
      from batch b
     group by 1, 2, 3, 4
    on conflict (account_id, day_start, user_id, model) do update
       set tokens = d.tokens + excluded.tokens, requests = d.requests + excluded.requests,
           input_tokens = d.input_tokens + excluded.input_tokens, output_tokens = d.output_tokens + excluded.output_tokens,
           cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens;
    get diagnostics v_rows = row_count;
    v_state.rolled_up_to := v_state.candidate_at;
  end if;
  v_at := pg_catalog.clock_timestamp();
  -- this statement's snapshot is taken after v_at: every transaction that wrote a row before v_at has an xid below its xmax
  update billing.usage_rollup_state s
     set rolled_up_to = v_state.rolled_up_to, candidate_at = v_at,
         candidate_xmax = pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot());
  return v_rows;
end
$$;

create or replace function billing_internal.rolled_up_to() returns timestamptz
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select coalesce((select s.rolled_up_to from billing.usage_rollup_state s), '-infinity'::timestamptz)
$$;

create or replace function billing.get_usage_history(
  p_from timestamptz default null,
  p_to timestamptz default null,
  p_bucket text default 'day',
  p_group_by text default null,
  p_account_id uuid default null
) returns table (bucket timestamptz, group_key text, tokens bigint, requests bigint, input_tokens bigint,
               output_tokens bigint, cached_input_tokens bigint)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
  v_account uuid := coalesce(p_account_id, v_user);
  v_to timestamptz := coalesce(p_to, pg_catalog.now());
  v_from timestamptz := coalesce(p_from, coalesce(p_to, pg_catalog.now()) - interval '30 days');
  v_by_model boolean := p_group_by is not distinct from 'model';
  v_rolled timestamptz := billing_internal.rolled_up_to();
  v_first_hour timestamptz; -- the rollups cover [v_first_hour, v_end) for the rows before v_rolled:
  v_last_hour timestamptz;  -- hours [v_first_hour, v_first_day) and [v_last_day, v_last_hour),
  v_first_day timestamptz;  -- days [v_first_day, v_last_day)
  v_last_day timestamptz;
  v_end timestamptz;
begin
  if p_bucket is null or p_bucket not in ('hour', 'day', 'month') then
    raise exception using errcode = '22023', message = 'p_bucket must be hour, day or month';
  elsif v_from >= v_to then
    raise exception using errcode = '22023', message = 'p_from must be before p_to';
  elsif p_group_by is not null and (pg_catalog.length(p_group_by) < 1 or pg_catalog.length(p_group_by) > 64) then
    raise exception using errcode = '22023', message = 'p_group_by must be a metadata key of 1 to 64 characters';
  end if;
  if v_account <> v_user then
    perform billing_internal.require_member(v_account, v_user);
  end if;
  -- The range is read in up to five parts: rows from its start to the first whole hour; the
  -- whole hours and days after it from the rollups (hourly at the edges, daily in between, except
  -- for hourly buckets), plus the rows created since the watermark; rows after the last whole hour.
  -- A range that ends after the watermark (the usual "until now") also takes the rollup of its
  -- last, partial hour or day: that holds only rows from before the watermark, hence before v_to,
  -- so the rows read are those since the last run_maintenance, not every row since midnight.
  v_first_hour := pg_catalog.date_trunc('hour', v_from at time zone 'UTC') at time zone 'UTC';
  if v_first_hour < v_from then
    v_first_hour := v_first_hour + interval '1 hour';
  end if;
  v_last_hour := greatest(v_first_hour, pg_catalog.date_trunc('hour', v_to at time zone 'UTC') at time zone 'UTC');
  if v_to >= v_rolled and v_last_hour = pg_catalog.date_trunc('hour', v_to at time zone 'UTC') at time zone 'UTC' then
    v_last_hour := v_last_hour + interval '1 hour';
  end if;
  v_first_day := pg_catalog.date_trunc('day', v_first_hour at time zone 'UTC') at time zone 'UTC';
  if v_first_day < v_first_hour then
    v_first_day := v_first_day + interval '1 day';
  end if;
  v_last_day := pg_catalog.date_trunc('day', v_last_hour at time zone 'UTC') at time zone 'UTC';
  if v_to >= v_rolled and pg_catalog.date_trunc('day', v_to at time zone 'UTC') at time zone 'UTC' >= v_first_day then
    v_last_day := (pg_catalog.date_trunc('day', v_to at time zone 'UTC') + interval '1 day') at time zone 'UTC';
  end if;
  if p_bucket = 'hour' or v_last_day <= v_first_day then
    v_first_day := v_last_hour;  -- no whole day to read from the daily rollups
    v_last_day := v_last_hour;
  end if;
  if p_group_by is not null and not v_by_model then
    v_first_hour := v_to;  -- rollups are per model only: any other key reads the rows
    v_last_hour := v_to;
    v_first_day := v_to;
    v_last_day := v_to;
  end if;
  v_end := greatest(v_last_hour, v_last_day);
  -- Row-level security decides whose rows these are (rollups and rows alike): a member's own,
  -- every member's for owners and admins. Buckets are UTC.
  return query
    with parts as (
      select r.hour_start as at, r.model as model_key, r.tokens, r.requests, r.input_tokens, r.output_tokens,
             r.cached_input_tokens
        from billing.usage_rollups r
       where r.account_id = v_account and r.hour_start >= v_first_hour and r.hour_start < least(v_first_day, v_last_hour)
      union all
      select r.day_start, r.model, r.tokens, r.requests, r.input_tokens, r.output_tokens, r.cached_input_tokens
        from billing.usage_rollups_daily r
       where r.account_id = v_account and r.day_start >= v_first_day and r.day_start < v_last_day
      union all
      select r.hour_start, r.model, r.tokens, r.requests, r.input_tokens, r.output_tokens, r.cached_input_tokens
        from billing.usage_rollups r
       where r.account_id = v_account and r.hour_start >= v_last_day and r.hour_start < v_last_hour
      union all
      select u.created_at, case when p_group_by is null then null else u.metadata ->> p_group_by end, u.tokens, 1,
             billing_internal.llm_count(u.metadata, 'input_tokens'), billing_internal.llm_count(u.metadata, 'output_tokens'),
             billing_internal.llm_count(u.metadata, 'cached_input_tokens')
        from billing.token_usage u
       where u.account_id = v_account and u.created_at >= v_from and u.created_at < least(v_first_hour, v_to)
      union all
      select u.created_at, case when p_group_by is null then null else u.metadata ->> p_group_by end, u.tokens, 1,
             billing_internal.llm_count(u.metadata, 'input_tokens'), billing_internal.llm_count(u.metadata, 'output_tokens'),
             billing_internal.llm_count(u.metadata, 'cached_input_tokens')
        from billing.token_usage u
       where u.account_id = v_account and u.created_at >= greatest(v_rolled, v_first_hour)
         and u.created_at < least(v_end, v_to)
      union all
      select u.created_at, case when p_group_by is null then null else u.metadata ->> p_group_by end, u.tokens, 1,
             billing_internal.llm_count(u.metadata, 'input_tokens'), billing_internal.llm_count(u.metadata, 'output_tokens'),
             billing_internal.llm_count(u.metadata, 'cached_input_tokens')
        from billing.token_usage u
       where u.account_id = v_account and u.created_at >= greatest(v_end, v_from) and u.created_at < v_to
    )
    select pg_catalog.date_trunc(p_bucket, p.at at time zone 'UTC') at time zone 'UTC',
           case when p_group_by is null then null else p.model_key end,
           pg_catalog.sum(p.tokens)::bigint, pg_catalog.sum(p.requests)::bigint,
           least(coalesce(pg_catalog.sum(p.input_tokens), 0), 9223372036854775807)::bigint,
           least(coalesce(pg_catalog.sum(p.output_tokens), 0), 9223372036854775807)::bigint,
           least(coalesce(pg_catalog.sum(p.cached_input_tokens), 0), 9223372036854775807)::bigint
      from parts p
     group by 1, 2
     order by 1, 2;
end
$$;
comment on function billing.get_usage_history(timestamptz, timestamptz, text, text, uuid) is
  'Credits used (tokens), calls and LLM token counts per UTC hour/day/month in [p_from, p_to) (default: the last 30 days), optionally per metadata key such as model; for a team account the member''s own usage, every member''s for owners and admins.';

create or replace function billing_internal.check_page(p_limit integer, p_offset integer) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 500 or p_offset is null or p_offset < 0 then
    raise exception using errcode = '22023', message = 'p_limit must be 1 to 500 and p_offset >= 0';
  end if;
end
$$;

create or replace function billing.get_grant_history(p_limit integer default 50, p_offset integer default 0,
                                          p_account_id uuid default null)
returns table (grant_id bigint, kind text, tokens bigint, remaining bigint, frozen bigint, expired bigint,
               clawed_back bigint, expires_at timestamptz, created_at timestamptz)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
  v_account uuid := coalesce(p_account_id, v_user);
begin
  perform billing_internal.check_page(p_limit, p_offset);
  if v_account <> v_user then
    perform billing_internal.require_member(v_account, v_user);
  end if;
  return query
    select g.id, g.kind, g.tokens,
           case when g.id = b.head_grant_id then b.head_remaining else g.remaining end,
           g.frozen, g.expired, g.clawed_back, g.expires_at, g.created_at
      from billing.token_grants g
      left join billing.balances b on b.account_id = g.account_id
     where g.account_id = v_account
     order by g.id desc
     limit p_limit offset p_offset;
end
$$;
comment on function billing.get_grant_history(integer, integer, uuid) is
  'The account''s credits (default: the signed-in user''s personal account), newest first.';

create or replace function billing.get_payment_history(p_limit integer default 50, p_offset integer default 0,
                                            p_account_id uuid default null)
returns table (event_id text, event_type text, event_created timestamptz, status text, action text, tokens bigint,
               amount bigint, currency text, hosted_invoice_url text, invoice_pdf text)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
  v_account uuid := coalesce(p_account_id, v_user);
begin
  perform billing_internal.check_page(p_limit, p_offset);
  if v_account <> v_user and (billing_internal.require_member(v_account, v_user)).role not in ('owner', 'admin') then
    raise exception using errcode = '42501', message = 'only owners and admins read a team account''s payments';
  end if;
  -- The amount in the currency's minor unit as Stripe reported it (paid, total, refunded or
  -- disputed) and an invoice's hosted page and PDF, read from the stored event; anything not of
  -- the expected shape (a number that is no bigint, a link that is not https) reads as NULL.
  return query
    select t.stripe_event_id, t.event_type, t.event_created, t.status,
           t.outcome operator(pg_catalog.->>) 'action',
           (t.outcome operator(pg_catalog.->>) 'tokens')::bigint,
           case when pg_catalog.jsonb_typeof(x.amount) = 'number' and x.amount::text ~ '^-?[0-9]{1,18}$'
                then x.amount::text::bigint end,
           x.currency,
           case when x.invoice_url ~ '^https://[^\s"<>]+$' then x.invoice_url end,
           case when x.invoice_pdf ~ '^https://[^\s"<>]+$' then x.invoice_pdf end
      from billing.payment_transactions t,
           lateral (select coalesce(o operator(pg_catalog.->) 'amount_paid', o operator(pg_catalog.->) 'amount_total',
                                    o operator(pg_catalog.->) 'amount_refunded', o operator(pg_catalog.->) 'amount_received',
                                    o operator(pg_catalog.->) 'amount') as amount,
                           o operator(pg_catalog.->>) 'currency' as currency,
                           o operator(pg_catalog.->>) 'hosted_invoice_url' as invoice_url,
                           o operator(pg_catalog.->>) 'invoice_pdf' as invoice_pdf
                      from (select t.payload operator(pg_catalog.#>) '{data,object}' as o) e) x
     where t.account_id = v_account
     order by t.event_created desc, t.stripe_event_id
     limit p_limit offset p_offset;
end
$$;
comment on function billing.get_payment_history(integer, integer, uuid) is
  'The account''s Stripe events, what they did, their amount, and an invoice''s hosted page and PDF (team accounts: owners and admins), newest first.';

create or replace function billing.redeem_promo_code(p_code text)
returns table (grant_id bigint, tokens bigint, expires_at timestamptz, balance_after bigint)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
  v_code text;
  v_promo billing.promo_codes;
  v_ins record;
  v_expires timestamptz;
  v_row billing.balances;
begin
  if p_code is null or pg_catalog.length(pg_catalog.btrim(p_code)) not between 1 and 64 then
    raise exception using errcode = '22023', message = 'p_code must be 1 to 64 characters';
  end if;
  v_code := pg_catalog.upper(pg_catalog.btrim(p_code));
  -- Lock the code's row: concurrent redemptions of one code queue here, so the global limit holds.
  select c.* into v_promo from billing.promo_codes c where c.code = v_code and c.active for update;
  if not found then
    raise exception using errcode = 'PT404', message = 'promo code not found';
  elsif v_promo.valid_until is not null and v_promo.valid_until <= pg_catalog.now() then
    raise exception using errcode = 'PT410', message = 'promo code expired';
  elsif v_promo.max_redemptions is not null and v_promo.redeemed_count >= v_promo.max_redemptions then
    raise exception using errcode = 'PT410', message = 'promo code fully redeemed';
  elsif exists (select 1 from billing.promo_redemptions r where r.account_id = v_user and r.code = v_code) then
    raise exception using errcode = 'PT409', message = 'promo code already redeemed';
  end if;
  update billing.promo_codes c set redeemed_count = c.redeemed_count + 1 where c.code = v_code;
  v_expires := pg_catalog.now() + v_promo.token_lifetime;
  perform billing_internal.lock_and_settle(v_user, true);
  select * into v_ins from billing_internal.insert_grant(v_user, v_promo.tokens, v_code || ':' || v_user::text, 'promo',
    v_expires, pg_catalog.jsonb_build_object('promo_code', v_code), null, null, null, null);
  insert into billing.promo_redemptions (code, account_id, grant_id) values (v_code, v_user, v_ins.grant_id);
  v_row := billing_internal.recompute_balance(v_user);
  return query select v_ins.grant_id, v_promo.tokens, v_expires, v_row.spendable::bigint;
end
$$;
comment on function billing.redeem_promo_code(text) is
  'Redeems a promo code for the signed-in user: once per user, within the code''s global limit and validity.';

create or replace function billing.get_accounts()
returns table (account_id uuid, kind text, name text, role text, balance bigint, spend_limit bigint,
               spend_limit_period text, spent_this_period bigint, remaining_limit bigint)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
begin
  return query
    select v_user, 'personal'::text, null::text, 'owner'::text, billing.get_balance(v_user), null::bigint,
           null::text, null::bigint, null::bigint
    union all
    select * from (
      select a.id, a.kind, a.name, m.role, billing.get_balance(v_user, a.id), m.spend_limit, m.spend_limit_period,
             (l.limits operator(pg_catalog.->>) 'spent_this_period')::bigint,
             (l.limits operator(pg_catalog.->>) 'remaining_limit')::bigint
        from billing.account_members m
        join billing.accounts a on a.id = m.account_id
        cross join lateral (select billing_internal.member_limits(m) as limits) l
       where m.user_id = v_user
       order by a.name, a.id) teams;
end
$$;
comment on function billing.get_accounts() is
  'The signed-in user''s personal account and team accounts, with role, balance and what is left of their spend limit.';

create or replace function billing_internal.setup_roles() returns text
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
-- @end

-- What 0.3.0's Stripe grants were bought with: a Checkout Session (grant reference cs_...) or an
-- invoice (reference in_...; its period ends when the grant expires, or, for a plan that rolls
-- over, at the period end of the invoice line 0.3.0 read).
insert into billing.grant_purchases (account_id, purchase_id, grant_id, kind, allowance, amount, currency, purchased_at,
                                     stripe_subscription_id, period_end, plan_id)
select g.account_id, g.reference, g.id, case g.kind when 'purchase' then 'checkout_session' else 'invoice' end, g.tokens,
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
  v_account uuid;
  v_grant bigint;
begin
  for v_account in
    select distinct gp.account_id from billing.grant_purchases gp order by 1
  loop
    perform billing_internal.lock_and_settle(v_account, true);
    for v_grant in
      select distinct gp.grant_id from billing.grant_purchases gp where gp.account_id = v_account order by 1
    loop
      perform billing_internal.settle_stripe_grant(v_account, v_grant);
    end loop;
    perform billing_internal.recompute_balance(v_account);
  end loop;
end
$$;

-- What each account used of each limit of its plan in the current window (billing_internal.rate_usage
-- reads balances.rate_state), with the reader's rights: the balance rows' row-level security applies.
create view billing.rate_limit_usage with (security_invoker = true) as
select b.account_id, u.limit_id, pg_catalog.to_timestamp(u.window_start::double precision) as window_start, u.used
  from billing.balances b
 cross join lateral billing_internal.rate_usage(b.rate_state, pg_catalog.now()) as u;
comment on view billing.rate_limit_usage is 'Use of each rate limit of the account''s plan in the current window.';

-- Each balance row knows the plan whose rate limits apply; triggers keep it and the counters
-- (limits.sql). 0.3.0 had no limits: every rate_state stays NULL until one is added.
update billing.balances b set plan_code = billing_internal.account_plan(b.account_id);
create trigger user_subscriptions_plan_code after insert or update or delete on billing.user_subscriptions
  for each row execute function billing_internal.subscription_written();
create trigger plans_code_renamed after update of code on billing.plans
  for each row when (old.code is distinct from new.code) execute function billing_internal.plan_code_renamed();
create trigger rate_limits_added after insert on billing.rate_limits referencing new table as new_limits
  for each statement execute function billing_internal.rate_limits_changed();
create trigger rate_limits_updated after update on billing.rate_limits
  referencing old table as old_limits new table as new_limits
  for each statement execute function billing_internal.rate_limits_changed();
create trigger rate_limits_removed after delete on billing.rate_limits referencing old table as old_limits
  for each statement execute function billing_internal.rate_limits_changed();

-- The triggers of the outbox and the automations (their functions are above).
create trigger outbox_notify after insert on billing.outbox for each statement
  execute function billing_internal.notify_outbox();
create constraint trigger alert_checks_run after insert on billing.alert_checks
  deferrable initially deferred for each row
  execute function billing_internal.run_alert_check();
create trigger account_settings_levels
  before insert or delete or update of low_balance_threshold, auto_topup_price_id, auto_topup_threshold,
                                       auto_topup_monthly_limit, topup_disabled_at on billing.account_settings
  for each row execute function billing_internal.settings_changed();

-- @generated privileges
-- Applied last in CREATE EXTENSION and at the end of every upgrade script.
select billing_internal.setup_roles();

-- SQL functions 0.3.0 had and 0.4.0 does not
drop function billing.auth_uid();
drop function billing.jwt_claims();
drop function billing.is_billing_admin();
drop function billing.caller_kind();
drop function billing._require_access(p_user_id uuid);
drop function billing._require_service();
drop function billing._check_amount(p_name text, p_amount bigint);
drop function billing._check_key(p_key text);
drop function billing._check_metadata(p_metadata jsonb);
drop function billing._raise_insufficient(p_requested bigint, p_available bigint, p_debt bigint);
drop function billing._burn(p_user_id uuid, p_amount bigint, p_repays_debt boolean);
drop function billing._return_to_grants(p_drawn bigint[]);
drop function billing._flush_head(p_user_id uuid);
drop function billing._recompute_balance(p_user_id uuid);
drop function billing._lock_and_settle(p_user_id uuid, p_create boolean);
drop function billing._spendable_now(p_user_id uuid);
drop function billing._check_balance_reader(p_user_id uuid);
drop function billing.get_balance(p_user_id uuid);
drop function billing._consume_replay(p_user_id uuid, p_amount bigint, p_key text);
drop function billing.consume_tokens(p_user_id uuid, p_amount bigint, p_idempotency_key text, p_metadata jsonb);
drop function billing._insert_grant(p_user_id uuid, p_tokens bigint, p_reference text, p_kind text, p_expires_at timestamptz, p_metadata jsonb, p_payment_intent text, p_price_id text, p_amount_paid bigint, p_currency text);
drop function billing.grant_purchase(p_user_id uuid, p_tokens bigint, p_reference text, p_kind text, p_expires_at timestamptz, p_metadata jsonb);
drop function billing.reserve_tokens(p_user_id uuid, p_amount bigint, p_idempotency_key text, p_ttl interval);
drop function billing._lock_reservation(p_reservation_id uuid);
drop function billing._raise_unprocessable(p_message text, p_detail text);
drop function billing._webhook_secrets();
drop function billing._event_user(p_event jsonb);
drop function billing._link_customer(p_user_id uuid, p_customer text);
drop function billing._apply_checkout(p_event jsonb);
drop function billing._apply_invoice_paid(p_event jsonb);
drop function billing._apply_subscription(p_event jsonb);
drop function billing._claw_back(p_grant_id bigint, p_target bigint);
drop function billing._apply_refund(p_event jsonb);
drop function billing._apply_dispute(p_event jsonb);
drop function billing.current_user_id();
drop function billing.get_billing_summary();
drop function billing.get_usage_history(p_from timestamptz, p_to timestamptz, p_bucket text, p_group_by text);
drop function billing._check_page(p_limit integer, p_offset integer);
drop function billing.get_grant_history(p_limit integer, p_offset integer);
drop function billing.get_payment_history(p_limit integer, p_offset integer);
drop function billing.setup_roles();
-- @end
