-- pg_billing: rate limits per plan, and LLM usage priced per model.
--
-- Rate limits: fixed windows aligned to the Unix epoch (a window of W seconds starts at every
-- multiple of W, in UTC). Each (account, limit) has one row with the current window's start and
-- what was used in it; the ledger functions count a call after its debit, under the account's
-- balance lock, so concurrent calls of one account are counted one after the other and a limit is
-- never exceeded. A window boundary resets the count (a burst of up to twice the limit across a
-- boundary is the known cost of fixed windows, README "Limits").
--
-- Prices: credits per million tokens (billing.model_prices), the cost computed in Rust
-- (billing_internal.llm_cost_of: integer arithmetic, rounded up once). An unknown model, or one
-- without a price in force, is 22023: nothing is ever priced 0 by omission.
--
-- SQLSTATEs: PT429 a limit reached (DETAIL `limit <metric> per <W>s: used U of M; retry after Ns`),
-- 22023 invalid arguments or unknown model, 22003 a cost above 2^63-1 credits.

-- The start of the fixed window of p_window_seconds that contains p_at.
-- PL/pgSQL, like every helper a consume calls: a SQL function with a SET clause is not inlined and
-- is planned again on every call (measured: a consume under one rate limit ran at 0.38x without).
create function billing_internal.rate_window_start(p_window_seconds integer, p_at timestamptz) returns timestamptz
language plpgsql immutable parallel safe set search_path = pg_catalog, pg_temp as $$
begin
  return pg_catalog.to_timestamp((pg_catalog.floor(pg_catalog.date_part('epoch', p_at) / p_window_seconds)
                                  * p_window_seconds)::double precision);
end
$$;

-- The plan whose limits apply to an account: its current subscription's (active, trialing or
-- past_due; the latest period first), else NULL.
create function billing_internal.account_plan(p_account_id uuid) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  return (select p.code from billing.user_subscriptions s join billing.plans p on p.id = s.plan_id
           where s.account_id = p_account_id and s.status in ('active', 'trialing', 'past_due')
           order by s.current_period_end desc nulls last, s.stripe_subscription_id
           limit 1);
end
$$;

-- balances.plan_code follows account_plan. A subscription written (by a webhook or by hand) updates
-- its account's row, creating it if need be, so that a balance row inserted concurrently, before the
-- subscription committed, is updated too. The row is locked as by every writer, so a consume counts
-- against the plan in force when it ran.
create function billing_internal.subscription_written() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid;
begin
  foreach v_account in array array[old.account_id, new.account_id] loop
    if v_account is not null then
      insert into billing.balances as b (account_id, plan_code)
      values (v_account, billing_internal.account_plan(v_account))
      on conflict (account_id) do update set plan_code = excluded.plan_code
       where b.plan_code is distinct from excluded.plan_code;
    end if;
  end loop;
  return null;
end
$$;

-- A plan's code renamed (rate_limits follow by ON UPDATE CASCADE): the balance rows follow too.
-- Both triggers are definers: service_role manages the catalog but writes no ledger table.
create function billing_internal.plan_code_renamed() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  update billing.balances b set plan_code = new.code where b.plan_code = old.code;
  return null;
end
$$;

create trigger user_subscriptions_plan_code after insert or update or delete on billing.user_subscriptions
  for each row execute function billing_internal.subscription_written();
create trigger plans_code_renamed after update of code on billing.plans
  for each row when (old.code is distinct from new.code) execute function billing_internal.plan_code_renamed();

-- Counts a call (p_requests calls, p_tokens credits) against every limit of the account's plan but
-- those in p_counted_already, or raises PT429 (billing_internal.raise_rate_limited). Returns the
-- windows it counted in ({{limit_id, window start as epoch seconds}, ...}) for a reservation to
-- correct later. The caller holds the account's balance lock, so calls of one account are counted
-- one after the other. consume_tokens' fast path updates the counters that exist itself, with a
-- plain UPDATE after its debit, and leaves the limits without one to this function.
create function billing_internal.take_rate_limits(p_account_id uuid, p_tokens bigint, p_requests integer,
                                                  p_counted_already bigint[] default '{}')
returns bigint[]
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_windows bigint[];
  v_breached boolean;
begin
  with applicable as (
    select l.id, l.max_amount, case l.metric when 'tokens' then p_tokens else p_requests end as amount,
           billing_internal.rate_window_start(l.window_seconds, pg_catalog.now()) as window_start
      from billing.rate_limits l
     where l.plan_code is not distinct from (select b.plan_code from billing.balances b where b.account_id = p_account_id)
       and l.id <> all (p_counted_already)
  ), counted as (
    insert into billing.rate_limit_usage as u (account_id, limit_id, window_start, used)
    select p_account_id, a.id, a.window_start, a.amount from applicable a where a.amount > 0
    on conflict (account_id, limit_id) do update
       set used = case when u.window_start = excluded.window_start then u.used else 0 end + excluded.used,
           window_start = excluded.window_start
    returning u.limit_id, u.used
  )
  select pg_catalog.array_agg(array[a.id, pg_catalog.date_part('epoch', a.window_start)::bigint] order by a.id),
         pg_catalog.bool_or(c.used > a.max_amount)
    into v_windows, v_breached
    from applicable a join counted c on c.limit_id = a.id;
  if v_breached then
    perform billing_internal.raise_rate_limited(p_account_id, p_tokens, p_requests);
  end if;
  return v_windows;
end
$$;

-- PT429 for a call that took p_tokens credits / p_requests calls and so went over a limit of the
-- account's plan in the current window; names the limit that frees up last. Called only when the
-- count found a limit over: finding none here is an internal error, never a pass.
create function billing_internal.raise_rate_limited(p_account_id uuid, p_tokens bigint, p_requests integer)
returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_metric text;
  v_window_seconds integer;
  v_max bigint;
  v_used bigint;
  v_amount bigint;
  v_ends timestamptz;
begin
  select l.metric, l.window_seconds, l.max_amount, u.used, case l.metric when 'tokens' then p_tokens else p_requests end
    into v_metric, v_window_seconds, v_max, v_used, v_amount
    from billing.rate_limit_usage u join billing.rate_limits l on l.id = u.limit_id
   where u.account_id = p_account_id and u.used > l.max_amount
     and case l.metric when 'tokens' then p_tokens else p_requests end > 0
     and l.plan_code is not distinct from (select b.plan_code from billing.balances b where b.account_id = p_account_id)
     and u.window_start = billing_internal.rate_window_start(l.window_seconds, pg_catalog.now())
   order by u.window_start + pg_catalog.make_interval(secs => l.window_seconds) desc, l.id
   limit 1;
  if not found then
    raise exception using errcode = 'XX000', message = 'pg_billing: a rate limit was counted over but is not found',
      detail = pg_catalog.format('account %s', p_account_id);
  end if;
  v_ends := billing_internal.rate_window_start(v_window_seconds, pg_catalog.now())
            + pg_catalog.make_interval(secs => v_window_seconds);
  if v_amount > v_max then
    raise exception using errcode = 'PT429', message = 'rate limit reached',
      detail = pg_catalog.format('limit %s per %ss: used %s of %s; this call needs %s, more than the limit',
                                 v_metric, v_window_seconds, v_used - v_amount, v_max, v_amount),
      hint = 'Ask for less in one call, or move to a plan with a higher limit.';
  end if;
  raise exception using errcode = 'PT429', message = 'rate limit reached',
    detail = pg_catalog.format('limit %s per %ss: used %s of %s; retry after %ss', v_metric, v_window_seconds,
                               v_used - v_amount, v_max,
                               greatest(1, pg_catalog.ceil(pg_catalog.date_part('epoch', v_ends - pg_catalog.clock_timestamp())))::bigint),
    hint = pg_catalog.format('The window ends at %s.', v_ends);
end
$$;

-- Gives back what a reservation counted (p_tokens credits, p_requests calls) in the windows it
-- counted in, unless a window has ended since. The caller holds the account's balance lock.
create function billing_internal.return_rate_limits(p_account_id uuid, p_windows bigint[], p_tokens bigint,
                                                    p_requests integer) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  update billing.rate_limit_usage u
     set used = greatest(0, u.used - case l.metric when 'tokens' then p_tokens else p_requests end)
    from billing.rate_limits l, pg_catalog.generate_subscripts(p_windows, 1) as i
   where pg_catalog.cardinality(p_windows) > 0
     and u.account_id = p_account_id and u.limit_id = p_windows[i][1] and l.id = u.limit_id
     and u.window_start = pg_catalog.to_timestamp(p_windows[i][2]::double precision)
$$;

-- The prices of a model in force at p_at, or 22023.
create function billing_internal.model_price(p_model text, p_at timestamptz) returns billing.model_prices
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

-- The cost in credits of token counts at given prices, or 22023 (a negative count, more cached than
-- input tokens) or 22003 (above 2^63-1 credits).
create function billing_internal.priced(p_price billing.model_prices, p_input_tokens bigint, p_output_tokens bigint,
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

-- Credits one call of a model costs at today's prices: ceil of (uncached input x input price +
-- cached input x cached price + output x output price) / 1,000,000.
create function billing.llm_cost(p_model text, p_input_tokens bigint, p_output_tokens bigint,
                                 p_cached_input_tokens bigint default 0) returns bigint
language sql stable set search_path = pg_catalog, pg_temp as $$
  select billing_internal.priced(billing_internal.model_price(p_model, pg_catalog.now()), p_input_tokens,
                                 p_output_tokens, p_cached_input_tokens)
$$;
comment on function billing.llm_cost(text, bigint, bigint, bigint) is
  'Credits an LLM call costs at the model''s price in force (ceil, integer arithmetic); 22023 for an unknown model.';

-- The usage row's metadata of an LLM call: the caller's keys, then the model and its token counts.
create function billing_internal.llm_metadata(p_metadata jsonb, p_model text, p_input_tokens bigint,
                                              p_output_tokens bigint, p_cached_input_tokens bigint) returns jsonb
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select case when pg_catalog.jsonb_typeof(p_metadata) = 'object' then p_metadata else '{}'::jsonb end
         operator(pg_catalog.||) pg_catalog.jsonb_build_object('model', p_model, 'input_tokens', p_input_tokens,
           'output_tokens', p_output_tokens, 'cached_input_tokens', p_cached_input_tokens)
$$;

-- Charges an LLM call at the model's current price, like consume_tokens (same keys, limits and
-- errors), recording the model and token counts in the usage row's metadata. A call that costs 0
-- credits (no tokens, or a model priced 0) is recorded nowhere and returns usage_id NULL.
create function billing.record_llm_usage(
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

-- Holds the cost of an LLM call before it runs: the input tokens (known) and at most
-- p_max_output_tokens output, at the prices in force now. The reservation keeps those prices, so
-- commit_llm_usage charges them even if the price changes meanwhile.
create function billing.reserve_llm_usage(
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

-- Charges a reservation made by reserve_llm_usage for the tokens the call really used, at the
-- prices the reservation kept; the rest of the hold is released. A call that cost more than was
-- held is charged in full: the hold, and the excess as a consume (PT402 if the account cannot pay
-- it, and then nothing is committed).
create function billing.commit_llm_usage(p_reservation_id uuid, p_input_tokens bigint, p_output_tokens bigint,
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
