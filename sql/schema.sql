-- pg_billing: tables of the billing data model, in schema billing (pg_billing.control).
-- Row-level security is enabled on every table here; policies and grants are in privileges.sql.
-- Nobody but the extension's own functions writes the ledger tables.
--
-- Ledger invariants (checked by billing.verify_ledger()):
--   per grant:  tokens = live remaining + frozen + expired + clawed_back + debt_repaid
--                        + spent (token_usage.drawn_from) + held (held reservations' drawn_from)
--   per account: balances.spendable = sum(live remaining), balances.held = sum(held reservations),
--               balances.debt = sum(debt_incurred - debt_repaid); debt > 0 implies spendable = 0.
--   live remaining: balances.head_remaining for the account's head grant, token_grants.remaining otherwise.
--
-- Accounts pay, users spend. A user's personal account has id = the user's id and needs no row in
-- billing.accounts; a team account has a row there and members in billing.account_members. Every
-- table that holds an account's money is keyed by account_id (primary key and every unique key), and
-- no foreign key or unique constraint crosses accounts, so the schema can be distributed by
-- account_id (docs/scale-out.md; tests/integration/test_scale_out.py checks the catalog).

-- Helpers live in billing_internal, a schema that PostgREST never exposes: schema billing holds only
-- the tables and the functions of the public API (what a supabase-js user sees in generated types
-- and can call as RPC). API roles may use a few helpers that run as the caller (policies, and the
-- read functions that run with the caller's rights): billing_internal.setup_roles() lists them.
create schema billing_internal;
comment on schema billing_internal is 'pg_billing internals: never exposed through PostgREST; call the functions in schema billing.';

-- Identity, exactly as Supabase's auth.uid() computes it (supabase/auth migrations), so policies and
-- functions work where schema auth does not exist (plain PostgreSQL, `cargo pgrx test`).
create function billing_internal.auth_uid() returns uuid
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select coalesce(
    nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
    (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb operator(pg_catalog.->>) 'sub')
  )::uuid
$$;

-- The JWT claims, exactly as Supabase's auth.jwt() reads them.
create function billing_internal.jwt_claims() returns jsonb
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select coalesce(nullif(pg_catalog.current_setting('request.jwt.claim', true), ''),
                  nullif(pg_catalog.current_setting('request.jwt.claims', true), ''))::jsonb
$$;

-- Admin rule: a JWT whose app_metadata has "billing_admin": true reads every billing row.
-- app_metadata is writable only with the service role (Supabase Auth), so users cannot set it.
create function billing_internal.is_billing_admin() returns boolean
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select coalesce((billing_internal.jwt_claims() operator(pg_catalog.->) 'app_metadata'
                   operator(pg_catalog.->>) 'billing_admin') = 'true', false)
$$;

-- Who is calling, decided from the role PostgREST (or the backend) set, never from current_user
-- (inside SECURITY DEFINER that is the owner): 'anon', 'user' (authenticated) or 'service'
-- (service_role, postgres, any other role that was granted EXECUTE).
create function billing_internal.caller_kind() returns text
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select case coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text)
           when 'anon' then 'anon'
           when 'authenticated' then 'user'
           else 'service'
         end
$$;

-- A grant's tokens can be spent until it expires (expires_at null: never): the one definition of
-- "live". SQL without a SET clause, so the planner inlines it into each query that uses it instead
-- of calling it per row; it qualifies every function and operator itself.
create function billing_internal.is_live(p_expires_at timestamptz) returns boolean
language sql stable parallel safe as $$
  select p_expires_at is null or p_expires_at operator(pg_catalog.>) pg_catalog.now()
$$;

create table billing.plans (
  id                bigint generated always as identity primary key,
  code              text not null unique check (code ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  name              text not null default '',
  stripe_price_id   text not null unique check (stripe_price_id <> ''),
  tokens_per_period bigint not null check (tokens_per_period > 0),
  rollover          boolean not null default false,
  price_amount      bigint not null default 0 check (price_amount >= 0), -- minor units (cents)
  currency          text not null default 'usd' check (currency ~ '^[a-z]{3}$'),
  active            boolean not null default true,
  created_at        timestamptz not null default now(),
  -- An invoice paid with nothing (trial, 100% coupon, an amount Stripe carries to the next invoice)
  -- grants the allowance only when this is true.
  grant_on_zero_amount boolean not null default false
);
comment on table billing.plans is 'Subscription plans (catalog). A DBA fills it with plain INSERTs.';

create table billing.token_packs (
  id              bigint generated always as identity primary key,
  stripe_price_id text not null unique check (stripe_price_id <> ''),
  tokens          bigint not null check (tokens > 0),
  name            text not null default '',
  price_amount    bigint not null default 0 check (price_amount >= 0),
  currency        text not null default 'usd' check (currency ~ '^[a-z]{3}$'),
  active          boolean not null default true,
  created_at      timestamptz not null default now()
);
comment on table billing.token_packs is 'One-time purchasable token packs (catalog).';

create table billing.stripe_customers (
  account_id         uuid primary key,
  stripe_customer_id text not null unique check (stripe_customer_id <> ''),
  created_at         timestamptz not null default now()
);

create table billing.user_subscriptions (
  stripe_subscription_id text primary key,
  account_id             uuid not null,
  plan_id                bigint references billing.plans (id),
  stripe_price_id        text,
  status                 text not null check (status in ('incomplete', 'incomplete_expired', 'trialing',
                           'active', 'past_due', 'canceled', 'unpaid', 'paused')),
  current_period_start   timestamptz,
  current_period_end     timestamptz,
  cancel_at_period_end   boolean not null default false,
  canceled_at            timestamptz,
  last_event_created     timestamptz not null, -- `created` of the newest Stripe event applied
  last_event_id          text not null,
  created_at             timestamptz not null default now(),
  updated_at             timestamptz not null default now()
);
create index user_subscriptions_account_id on billing.user_subscriptions (account_id);
create index user_subscriptions_plan_id on billing.user_subscriptions (plan_id);

-- Token counters that must never go negative. A domain rather than table CHECK constraints: the
-- executor re-reads a table's CHECK constraints from their stored text at the start of every
-- statement that writes the table (a large share of a consume's server time: docs/design.md),
-- while a domain's check is compiled once per backend (typcache). Every consume writes these columns.
create domain billing.token_count as bigint constraint token_count_nonnegative check (value >= 0);
-- A member's role and the calendar period of their spend limit: domains for the reason above (every
-- team consume updates its member's row). The remaining rule, a limit needs a period, is not a table
-- CHECK either: add_account_member, the only writer of those columns, refuses it (22023), and
-- verify_ledger() reports a row that breaks it.
create domain billing.member_role as text constraint member_role_valid check (value in ('owner', 'admin', 'member'));
create domain billing.spend_period as text constraint spend_period_valid check (value in ('day', 'week', 'month'));

-- Accounts that pay. A user's personal account has id = the user's id and exists without a row;
-- pg_billing creates team rows only ('personal' is accepted for a row a DBA adds for reporting, and
-- is not a team: nobody joins it).
create table billing.accounts (
  id         uuid primary key default gen_random_uuid(),
  kind       text not null default 'team' check (kind in ('personal', 'team')),
  name       text not null check (pg_catalog.length(name) between 1 and 200),
  created_at timestamptz not null default now()
);
comment on table billing.accounts is 'Accounts that pay: team accounts (a personal account, id = the user''s id, needs no row).';

-- Members of team accounts. A member spends from the account within spend_limit tokens per calendar
-- period in UTC (day; week from Monday; month); period_spent counts consumes and held reservations
-- of the period that started at period_start (a new period starts from 0).
create table billing.account_members (
  account_id         uuid not null references billing.accounts (id) on delete cascade,
  user_id            uuid not null,
  role               billing.member_role not null default 'member',
  spend_limit        billing.token_count,                                       -- null: no limit
  spend_limit_period billing.spend_period,
  period_start       timestamptz,
  period_spent       billing.token_count not null default 0,
  created_at         timestamptz not null default now(),
  primary key (account_id, user_id)
);
create index account_members_user on billing.account_members (user_id);

-- One row per account: the O(1) balance. Every writer of an account's grants, usage or reservations
-- locks this row first, so the account's ledger changes are serialized without locking grant rows.
create table billing.balances (
  account_id    uuid primary key,
  spendable     billing.token_count not null default 0,
  held          billing.token_count not null default 0,
  debt          billing.token_count not null default 0,
  -- soonest expiry of a grant with tokens left or of a held reservation: from then on the cached
  -- numbers may include expired tokens, and the next writer settles them first.
  next_event_at timestamptz,
  updated_at    timestamptz not null default now(), -- last settle or slow-path write
  -- The head of the burn order (the grant consume_tokens draws from next) and its authoritative
  -- remaining tokens: a consume that fits updates only this row. token_grants.remaining of the head
  -- is stale until a slow-path writer flushes head_remaining back (billing_internal.flush_head).
  -- (head_remaining = 0 without a head grant is checked by billing.verify_ledger().)
  head_grant_id  bigint,
  head_remaining billing.token_count not null default 0,
  -- Alert levels of the account's automations (billing.account_settings; NULL: none): a change
  -- that leaves spendable below alert_below, or at or above alert_above, queues the account in
  -- billing.alert_checks, whose automations run at commit.
  alert_below    bigint,
  alert_above    bigint,
  -- The plan whose rate limits apply to the account (billing_internal.account_plan; NULL: none), and
  -- the account's counters of those limits (pg_billing_core::rate: 7 bigints per limit, its
  -- definition copied from billing.rate_limits, the window and what it counted; NULL: no limit),
  -- both kept by triggers on user_subscriptions, plans and rate_limits. The debit that locks this
  -- row counts the call in the same UPDATE, so a limit costs a consume no other row or statement.
  plan_code      text,
  rate_state     bigint[]
) with (fillfactor = 70); -- room for HOT updates: every consume updates this row

create table billing.token_grants (
  id                    bigint generated always as identity,
  account_id            uuid not null,
  kind                  text not null check (kind ~ '^[a-z][a-z_]{0,31}$'),
  reference             text not null check (length(reference) between 1 and 255),
  tokens                bigint not null check (tokens > 0),
  remaining             bigint not null check (remaining >= 0),
  frozen                bigint not null default 0 check (frozen >= 0),       -- disputed
  expired               bigint not null default 0 check (expired >= 0),
  clawed_back           bigint not null default 0 check (clawed_back >= 0),  -- refunds, lost disputes
  debt_incurred         bigint not null default 0 check (debt_incurred >= 0), -- clawback already spent
  debt_repaid           bigint not null default 0 check (debt_repaid >= 0),  -- used to cover debt
  expires_at            timestamptz,                                        -- null: never
  -- Informational, as the grant was created; billing.grant_purchases and billing.purchase_payments
  -- record what paid for it (the payment of an invoice can be known only later).
  stripe_payment_intent text,
  stripe_price_id       text,
  amount_paid           bigint,
  currency              text,
  metadata              jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
  created_at            timestamptz not null default now(),
  -- Unspent tokens to keep frozen while disputes of the payments behind this grant are open:
  -- frozen = least(freeze_target, unspent), also when a hold drawn from the grant comes back.
  freeze_target         bigint not null default 0 check (freeze_target >= 0),
  primary key (account_id, id),
  unique (account_id, kind, reference),
  check (remaining + frozen + expired + clawed_back + debt_repaid <= tokens)
) with (fillfactor = 80); -- remaining changes on every consume; no index covers it, so updates stay HOT
comment on table billing.token_grants is 'Every credit (the seed''s token_purchases). Idempotent on (kind, reference).';
-- A reference names one grant across all accounts: the grant functions refuse it for another account.
create index token_grants_reference on billing.token_grants (kind, reference);
-- Burn-down order (soonest expiry first, never-expiring last) and per-user reads.
create index token_grants_burn_order on billing.token_grants (account_id, expires_at, id);

-- No CHECK constraints here (see billing.token_count): only pg_billing's functions insert rows, and
-- they validate tokens > 0, the key's length and that metadata is an object before inserting;
-- billing.verify_ledger() reports any row that breaks those rules.
create table billing.token_usage (
  id              bigint generated always as identity,
  account_id      uuid not null,                -- who paid
  tokens          bigint not null,
  idempotency_key text,
  metadata        jsonb not null default '{}',
  drawn_from      bigint[] not null, -- {{grant_id, tokens}, ...}: which grants paid for it
  balance_after   bigint not null,
  reservation_id  uuid,
  -- the clock at insertion (not the transaction's start): usage rollups rely on it (roll_up_usage)
  created_at      timestamptz not null default clock_timestamp(),
  user_id         uuid,                         -- the member who spent; null: the account's own user
  primary key (account_id, created_at, id)      -- also serves usage history by time
);
comment on table billing.token_usage is 'Append-only debit ledger.';
-- Idempotency keys: unique per account and member (user_id NULL, the account's own user, counts as one
-- member: NULLS NOT DISTINCT). One partial index, not one per kind of caller: every insert evaluates
-- each partial index's predicate, and opens each index. The key comes before user_id so that a lookup
-- by account and key finds its row through the index even when user_id is matched with IS NOT
-- DISTINCT FROM (a generic plan cannot turn that into an index condition).
create unique index token_usage_idempotency on billing.token_usage (account_id, idempotency_key, user_id)
  nulls not distinct where idempotency_key is not null;
-- Rows by insertion time, for roll_up_usage: created_at follows the physical order, so a BRIN index
-- finds the rows since the watermark for almost nothing per insert (autosummarize: ranges are
-- summarized as they fill, in the background).
create index token_usage_created_at on billing.token_usage using brin (created_at) with (autosummarize = on);

-- Holds. No CHECK constraints, like token_usage (docs/design.md): every hold writes this table twice
-- (made, settled); only pg_billing's functions write it, validating the amount, the key and the
-- metadata and setting the status, and verify_ledger() reports a row that breaks those rules.
create table billing.token_reservations (
  id              uuid not null default gen_random_uuid(),
  account_id      uuid not null,
  tokens          bigint not null,
  idempotency_key text,
  status          text not null default 'held',  -- held, committed, released or expired
  expires_at      timestamptz not null,
  drawn_from      bigint[] not null,
  committed_tokens bigint,
  usage_id        bigint,                        -- the usage row of the commit
  metadata        jsonb not null default '{}',
  created_at      timestamptz not null default now(),
  settled_at      timestamptz,
  user_id         uuid,                          -- the member who holds it; null: the account's own user
  limit_period_start timestamptz,                -- the member's spend-limit period the hold counts in
  rate_windows    bigint[],                      -- {limit_id, window start (epoch s), ...} it counted in
  primary key (account_id, id)
);
create index token_reservations_id on billing.token_reservations (id);
-- As token_usage_idempotency: the key before user_id.
create unique index token_reservations_idempotency on billing.token_reservations (account_id, idempotency_key, user_id)
  nulls not distinct where idempotency_key is not null;
create index token_reservations_held on billing.token_reservations (account_id, expires_at) where status = 'held';
create index token_reservations_account on billing.token_reservations (account_id, created_at);

-- The Stripe event inbox and audit trail: one row per event id, written in the same transaction
-- as the event's effects (a failed delivery leaves no row, so Stripe's retry can succeed).
create table billing.payment_transactions (
  stripe_event_id text primary key,
  event_type      text not null,
  event_created   timestamptz not null,
  livemode        boolean,
  api_version     text,
  account_id      uuid,
  -- processed | ignored (outcome.reason says why) | stale (older than the state it would change) |
  -- failed (could not be applied yet: `error` says why; a redelivery or reprocess_failed_events()
  -- applies it again)
  status          text not null check (status in ('processed', 'ignored', 'stale', 'failed')),
  outcome         jsonb not null default '{}',
  payload         jsonb not null,
  received_at     timestamptz not null default now(),
  processed_at    timestamptz not null default now(),
  error           jsonb,            -- {code, message, detail} of the last failed attempt
  attempts        integer not null default 1,
  stripe_customer text              -- the event's customer: a new customer link retries its failed events
);
create index payment_transactions_account on billing.payment_transactions (account_id, event_created)
  where account_id is not null;
create index payment_transactions_failed on billing.payment_transactions (stripe_customer, event_created)
  where status = 'failed';

-- Stripe settings: at most one row; without one the defaults apply (live mode, no connected
-- account). Events from another mode, or from a connected account other than stripe_account, move
-- nothing and are recorded as ignored. Service-writable; RLS, no policy. Set it with an upsert:
--   insert into billing.settings (stripe_livemode) values (false)
--   on conflict (id) do update set stripe_livemode = excluded.stripe_livemode;
-- (No row is inserted here: pg_dump saves the table's rows, and a row the install script created
-- would collide with them on restore.)
create table billing.settings (
  id              boolean primary key default true check (id),
  stripe_livemode boolean not null default true,
  stripe_account  text check (stripe_account <> ''), -- acct_...: the one connected account to accept
  updated_at      timestamptz not null default now()
);

-- What Stripe says happened to each payment since it was made: a PaymentIntent (pi_...), or a
-- charge without one (ch_...). Facts are recorded whether or not the grant they affect exists yet,
-- so a refund or dispute that arrives before its purchase is applied when the purchase arrives.
create table billing.stripe_payments (
  payment_key       text primary key,
  charge_id         text,
  currency          text,
  amount_captured   bigint check (amount_captured >= 0),           -- from charge events
  refunded_reported bigint not null default 0 check (refunded_reported >= 0), -- highest amount_refunded seen
  updated_at        timestamptz not null default now()
);

-- Each refund and dispute follows its own state: the event that is newest by (terminal status,
-- created, status rank, event id) wins, so an older status never overrides a newer one, and a
-- terminal one (a failed refund, a closed dispute) is never left (billing_internal.stripe_status_rank).
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

-- What each Stripe-funded grant was bought with: a Checkout Session, or the subscription invoices
-- of one period (a period's grant holds the largest allowance among them; each invoice is credited
-- with what it added, in the order Stripe created them).
create table billing.grant_purchases (
  account_id             uuid not null,
  purchase_id            text not null,     -- cs_... or in_...
  grant_id               bigint not null,
  kind                   text not null check (kind in ('checkout_session', 'invoice', 'payment_intent')),
  allowance              bigint not null check (allowance > 0), -- tokens it entitles the grant to
  amount                 bigint not null check (amount >= 0),   -- what it cost, minor units
  currency               text not null,
  purchased_at           timestamptz not null,                  -- the Stripe object's `created`
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

-- Which payments paid a purchase: a session's PaymentIntent; an invoice's payments, from
-- invoice_payment.paid (basil and later) or from the invoice itself (earlier API versions). A link
-- may arrive before its purchase.
create table billing.purchase_payments (
  purchase_id text not null,
  payment_key text not null,
  amount      bigint not null check (amount >= 0),
  primary key (purchase_id, payment_key)
);
create index purchase_payments_payment on billing.purchase_payments (payment_key);

-- Webhook signing secrets when Supabase Vault is not used. Several active rows = rotation.
-- RLS on and no policy: only the owner and BYPASSRLS roles granted access (service_role) see it.
create table billing.webhook_secrets (
  id          bigint generated always as identity primary key,
  secret      text not null check (secret <> ''),
  description text not null default '',
  active      boolean not null default true,
  created_at  timestamptz not null default now()
);

-- Promo codes (codes are stored upper-case and matched case-insensitively). Only the service role
-- reads or manages codes; a user sees only their own redemptions.
create table billing.promo_codes (
  code            text primary key check (code ~ '^[A-Z0-9_-]{1,64}$'),
  tokens          bigint not null check (tokens > 0),
  max_redemptions integer check (max_redemptions > 0),       -- null: unlimited
  redeemed_count  integer not null default 0 check (redeemed_count >= 0),
  valid_until     timestamptz,                               -- null: no end date
  token_lifetime  interval check (token_lifetime > interval '0'), -- granted tokens expire after; null: never
  active          boolean not null default true,
  created_at      timestamptz not null default now(),
  check (max_redemptions is null or redeemed_count <= max_redemptions)
);

create table billing.promo_redemptions (
  code        text not null references billing.promo_codes (code),
  account_id  uuid not null,                   -- the redeeming user's personal account
  grant_id    bigint not null,
  redeemed_at timestamptz not null default now(),
  primary key (account_id, code),
  foreign key (account_id, grant_id) references billing.token_grants (account_id, id)
);
create index promo_redemptions_code on billing.promo_redemptions (code);
create index promo_redemptions_grant_id on billing.promo_redemptions (account_id, grant_id);

-- Rate limits per plan (plan_code NULL: accounts without an active plan). Fixed windows aligned to
-- the Unix epoch in UTC: a window of W seconds starts at every multiple of W (3600: each clock
-- hour). 'requests' counts calls, 'tokens' counts credits debited; a reservation counts when made
-- and is corrected at commit, release or expiry (README "Limits").
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

-- LLM prices: credits per million tokens of each kind, in force from valid_from until the model's
-- next row. A price change never alters a reservation made before it (it keeps its prices).
create table billing.model_prices (
  model                    text not null check (pg_catalog.length(model) between 1 and 200),
  input_per_million        bigint not null check (input_per_million >= 0),
  output_per_million       bigint not null check (output_per_million >= 0),
  cached_input_per_million bigint not null default 0 check (cached_input_per_million >= 0),
  valid_from               timestamptz not null default now(),
  primary key (model, valid_from)
);
comment on table billing.model_prices is 'Credits per million LLM tokens per model, versioned by valid_from.';

-- Automations per account (README "Outbox"): the balance.low threshold, auto top-up, and their
-- state. Only accounts with a row get balance.low / balance.depleted events or top-ups.
create table billing.account_settings (
  account_id               uuid primary key,
  low_balance_threshold    bigint check (low_balance_threshold > 0),  -- NULL: no balance.low
  auto_topup_price_id      text references billing.token_packs (stripe_price_id) on update cascade,
  auto_topup_threshold     bigint check (auto_topup_threshold > 0),
  auto_topup_cooldown      interval not null default '1 hour' check (auto_topup_cooldown >= interval '0'),
  auto_topup_monthly_limit integer not null default 5 check (auto_topup_monthly_limit >= 0),
  -- state, kept by pg_billing
  low_balance_armed        boolean not null default true,  -- re-armed when the balance rises to the threshold
  depleted_armed           boolean not null default true,  -- re-armed when the balance rises above 0
  alerts_sent              bigint not null default 0,      -- numbers balance.low / balance.depleted dedupe keys
  topup_requests           bigint not null default 0,      -- numbers topup.requested dedupe keys
  topup_requested_at       timestamptz,
  topup_month_start        timestamptz,
  topup_month_count        integer not null default 0,
  topup_failures           integer not null default 0,     -- consecutive failed top-up payments
  topup_disabled_at        timestamptz,                    -- after 3 in a row; clear it to re-enable
  updated_at               timestamptz not null default now(),
  check ((auto_topup_price_id is null) = (auto_topup_threshold is null))
);
create index account_settings_topup_price on billing.account_settings (auto_topup_price_id)
  where auto_topup_price_id is not null;

-- Events for the world outside, written in the transaction of their cause (a rollback leaves none),
-- unique per account and dedupe_key. Consumers claim, acknowledge or retry them (claim_outbox,
-- ack_outbox, nack_outbox); NOTIFY billing_outbox tells listeners at commit.
create table billing.outbox (
  id           bigint generated always as identity,
  account_id   uuid not null,              -- 00000000-0000-0000-0000-000000000000: no known account
  event_type   text not null check (event_type in ('purchase.completed', 'subscription.changed', 'payment.failed',
                 'refund.applied', 'balance.low', 'balance.depleted', 'topup.requested', 'topup.disabled')),
  dedupe_key   text not null,
  payload      jsonb not null,
  created_at   timestamptz not null default now(),
  available_at timestamptz not null default now(),  -- claimable from then on (claims push it forward)
  attempts     integer not null default 0,
  last_error   text,
  acked_at     timestamptz,
  primary key (account_id, id),
  unique (account_id, dedupe_key)
);
create index outbox_claimable on billing.outbox (available_at, id) where acked_at is null;
create index outbox_id on billing.outbox (id);
create index outbox_acked on billing.outbox (acked_at) where acked_at is not null;

-- Accounts whose balance crossed an alert level in a transaction still running: a row each, handled
-- and deleted at its commit (billing_internal.run_alert_check). Empty between transactions.
create table billing.alert_checks (
  account_id uuid primary key
);

alter table billing.accounts enable row level security;
alter table billing.account_members enable row level security;
alter table billing.plans enable row level security;
alter table billing.token_packs enable row level security;
alter table billing.stripe_customers enable row level security;
alter table billing.user_subscriptions enable row level security;
alter table billing.balances enable row level security;
alter table billing.token_grants enable row level security;
alter table billing.token_usage enable row level security;
alter table billing.token_reservations enable row level security;
alter table billing.payment_transactions enable row level security;
alter table billing.webhook_secrets enable row level security;
alter table billing.promo_codes enable row level security;
alter table billing.promo_redemptions enable row level security;
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

-- pg_dump saves only CREATE EXTENSION for an extension's tables unless they are registered: every
-- table here holds data a backup must keep (the ledger, the inbox, the catalog a DBA filled in).
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
