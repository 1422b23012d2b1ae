-- pg_billing: rate limits per plan, and LLM usage priced per model.
--
-- Rate limits: fixed windows aligned to the Unix epoch (a window of W seconds starts at every
-- multiple of W, in UTC). An account's counters live in its balance row (balances.rate_state, one
-- per limit of its plan: the limit's definition, the current window's start and what it counted;
-- arithmetic in Rust, pg_billing_core::rate). The ledger functions count a call in the UPDATE that
-- debits the account, or right after it, under the row's lock, so concurrent calls of one account
-- are counted one after the other and a limit is never exceeded. A window boundary resets the count
-- (a burst of up to twice the limit across a boundary is the known cost of fixed windows, README
-- "Limits"). Triggers copy the definitions into the rows whenever a plan, a subscription or a limit
-- changes, so a change applies from the next call.
--
-- Prices: credits per million tokens (billing.model_prices), the cost computed in Rust
-- (billing_internal.llm_cost_of: integer arithmetic, rounded up once). An unknown model, or one
-- without a price in force, is 22023: nothing is ever priced 0 by omission.
--
-- SQLSTATEs: PT429 a limit reached (DETAIL `limit <metric> per <W>s: used U of M; retry after Ns`),
-- 22023 invalid arguments or unknown model, 22003 a cost above 2^63-1 credits.

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

-- The limits of a plan (NULL: of accounts without a plan) as billing_internal.rate_rebuilt takes
-- them: {id, metric (0 requests, 1 tokens), window_seconds, max_amount, ...}.
create function billing_internal.plan_limits(p_plan_code text) returns bigint[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  select pg_catalog.array_agg(f.value order by l.id, f.n)
    from billing.rate_limits l
   cross join lateral pg_catalog.unnest(array[l.id, case l.metric when 'tokens' then 1 else 0 end, l.window_seconds,
                                              l.max_amount]) with ordinality as f(value, n)
   where l.plan_code is not distinct from p_plan_code
$$;

-- An account's counters once its plan is p_plan_code: one per limit of the plan, keeping the counts
-- of p_state (a limit the plan no longer has is kept, counting nothing, until its window ends, so a
-- move back within the window keeps the count).
create function billing_internal.plan_rate_state(p_plan_code text, p_state bigint[]) returns bigint[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  select billing_internal.rate_rebuilt(p_state, billing_internal.plan_limits(p_plan_code), pg_catalog.now())
$$;

-- Every writer that copies a plan's limits into an account's counters takes this transaction lock
-- first: a change of limits exclusively (rate_limits_changed), the others shared (a subscription
-- written, a balance row created). So a change of limits and such a writer take turns, and each
-- reads by a snapshot taken after the other committed: the writer sees the new limits, or the
-- change sees the account on its plan and rebuilds it. (Without it either could copy the limits
-- from before the other's change, and the counters kept them until the next change.)
create function billing_internal.lock_plan_limits(p_exclusive boolean) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
begin
  if p_exclusive then
    perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_billing.rate_limits'), 0);
  else
    perform pg_catalog.pg_advisory_xact_lock_shared(pg_catalog.hashtext('pg_billing.rate_limits'), 0);
  end if;
end
$$;

-- Inserts an account's balance row, with its plan and counters, unless it has one.
create function billing_internal.new_balance(p_account_id uuid) returns void
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

-- balances.plan_code follows account_plan. A subscription written (by a webhook or by hand) updates
-- its account's row, creating it if need be. The row is locked before the plan is read: concurrent
-- writers of one account's subscriptions then take turns, and each reads the plan by a snapshot
-- taken after the one before it committed (reading first let a writer that waited for the lock
-- store a plan computed without the other's change: a cancelled plan could stay in force). The
-- lock is the one every writer of the row takes, so a consume counts against the plan in force when
-- it ran. Accounts are locked in one order, so two writers moving subscriptions between the same
-- two accounts cannot deadlock.
create function billing_internal.subscription_written() returns trigger
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

-- A plan's code renamed (rate_limits follow by ON UPDATE CASCADE, whose trigger below may run
-- before or after this one): the balance rows follow, and their counters are rebuilt either way.
-- The triggers are definers: service_role manages the catalog but writes no ledger table.
create function billing_internal.plan_code_renamed() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  update billing.balances b set plan_code = new.code, rate_state = billing_internal.plan_rate_state(new.code, b.rate_state)
   where b.plan_code = old.code;
  return null;
end
$$;

-- Limits added, changed or removed: the counters of every account of the plans concerned are
-- rebuilt, in one statement over balances (it locks the rows it rebuilds, as a consume does; each
-- plan's limits are read once, not per row), after the lock above: concurrent changes of limits
-- take turns, and the statement sees the limits and the accounts' plans the others committed.
create function billing_internal.rate_limits_changed() returns trigger
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

-- What each account used of each limit of its plan in the current window (billing_internal.rate_usage
-- reads balances.rate_state), with the reader's rights: the balance rows' row-level security applies.
create view billing.rate_limit_usage with (security_invoker = true) as
select b.account_id, u.limit_id, pg_catalog.to_timestamp(u.window_start::double precision) as window_start, u.used
  from billing.balances b
 cross join lateral billing_internal.rate_usage(b.rate_state, pg_catalog.now()) as u;
comment on view billing.rate_limit_usage is 'Use of each rate limit of the account''s plan in the current window.';

-- Counts a call (p_requests calls, p_tokens credits) against every limit of the account's plan, or
-- raises PT429 (billing_internal.raise_rate_limited). Returns the windows it counted in ({limit_id,
-- window start as epoch seconds, ...}) for a reservation to give back later; NULL without limits.
-- The caller holds the account's balance lock. consume_tokens counts in its debit's UPDATE instead.
create function billing_internal.take_rate_limits(p_account_id uuid, p_tokens bigint, p_requests integer)
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

-- PT429 for a call that took p_tokens credits / p_requests calls and so went over a limit of the
-- account's plan in the current window; names the limit that frees up last. Called only when the
-- count found a limit over: finding none here is an internal error, never a pass.
create function billing_internal.raise_rate_limited(p_account_id uuid, p_tokens bigint, p_requests integer)
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

-- Gives back what a reservation counted (p_tokens credits, p_requests calls) in the windows it
-- counted in, unless a window has ended since. The caller holds the account's balance lock.
create function billing_internal.return_rate_limits(p_account_id uuid, p_windows bigint[], p_tokens bigint,
                                                    p_requests integer) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  update billing.balances b
     set rate_state = billing_internal.rate_given_back(b.rate_state, p_windows, p_tokens, p_requests)
   where b.account_id = p_account_id and b.rate_state is not null and pg_catalog.cardinality(p_windows) > 0
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
