-- pg_billing: functions a signed-in user calls for themselves through Supabase RPC (PostgREST as
-- role `authenticated`). No user-id argument: the user is the JWT's `sub`. Those that take
-- p_account_id read a team account the user is a member of (default: their personal account).
--
-- The read-only ones are STABLE and SECURITY INVOKER: row-level security does the protecting, and
-- PostgREST runs them in a READ ONLY transaction (supabase.rpc(fn, args, { get: true }) works).
-- redeem_promo_code writes, so it is SECURITY DEFINER and checks the caller in its body.

-- The signed-in user, or 42501 for anon and for callers without a `sub` claim.
create function billing_internal.current_user_id() returns uuid
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

create function billing.get_billing_summary(p_account_id uuid default null) returns jsonb
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

-- A member's role and spend limit with what is left of it this period (a period that ended counts 0).
create function billing_internal.member_limits(p_member billing.account_members) returns jsonb
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

-- A number an LLM usage row keeps in its metadata (input_tokens, output_tokens, cached_input_tokens),
-- NULL when absent or not a number. No SET clause, so the planner inlines it into the aggregates
-- that call it per row; it qualifies every name itself (tests/integration/test_linter.py).
create function billing_internal.llm_count(p_metadata jsonb, p_key text) returns numeric
language sql immutable parallel safe as $$
  select case when pg_catalog.jsonb_typeof(p_metadata operator(pg_catalog.->) p_key) operator(pg_catalog.=) 'number'
              then pg_catalog.numeric(p_metadata operator(pg_catalog.->) p_key) end
$$;

-- Adds the usage rows that can no longer change to billing.usage_rollups (per account, member, UTC
-- hour and model) and usage_rollups_daily (per UTC day), and moves the watermark (run_maintenance
-- calls it). A row's created_at is the clock when it was inserted, by a transaction that had its
-- xid by then; so once every transaction older than the snapshot taken after a time T has ended,
-- no row before T can still appear. Each run rolls up to the previous run's T if that holds, then
-- takes a new T. Returns the day rows written.
create function billing_internal.roll_up_usage() returns bigint
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

-- Up to when usage is rolled up (readable by every caller of get_usage_history; the state table
-- itself is not).
create function billing_internal.rolled_up_to() returns timestamptz
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select coalesce((select s.rolled_up_to from billing.usage_rollup_state s), '-infinity'::timestamptz)
$$;

create function billing.get_usage_history(
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

-- Paging arguments of the history functions: 22023 unless 1 <= p_limit <= 500 and p_offset >= 0.
create function billing_internal.check_page(p_limit integer, p_offset integer) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 500 or p_offset is null or p_offset < 0 then
    raise exception using errcode = '22023', message = 'p_limit must be 1 to 500 and p_offset >= 0';
  end if;
end
$$;

create function billing.get_grant_history(p_limit integer default 50, p_offset integer default 0,
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

create function billing.get_payment_history(p_limit integer default 50, p_offset integer default 0,
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

create function billing.redeem_promo_code(p_code text)
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

-- The signed-in user's accounts: their personal account first, then every team account they are a
-- member of, with their role, the account's spendable balance, and their spend limit and what is
-- left of it this period.
create function billing.get_accounts()
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
