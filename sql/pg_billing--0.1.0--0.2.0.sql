-- pg_billing 0.1.0 -> 0.2.0
-- Every schema change after the 0.1.0 release lands here as well as in the sql/*.sql files that a
-- fresh install runs; tests/integration/test_upgrade.py proves both give the same schema and keep data.
--
-- 0.2.0:
-- * balances.head_grant_id / head_remaining: the head of the burn order lives in the balance row, so
--   a consume that fits is one UPDATE and one INSERT (consume_tokens fast path).
-- * get_balance is an inlinable SQL function (SECURITY INVOKER, no SET) instead of PL/pgSQL.
-- * run_maintenance(NULL) means the default batch size (it meant "no limit").
-- Below the schema changes: the functions new or changed in 0.2.0 (scripts/gen-upgrade.py's rules).

alter table billing.balances
  add column head_grant_id bigint,
  add column head_remaining bigint not null default 0 check (head_remaining >= 0),
  add check (head_grant_id is not null or head_remaining = 0);

-- ===== SQL functions new or changed in 0.2.0 (14 of 46) =====

create or replace function billing._flush_head(p_user_id uuid) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  update billing.token_grants g set remaining = b.head_remaining
    from billing.balances b
   where b.user_id = p_user_id and b.head_grant_id is not null and g.id = b.head_grant_id;
  update billing.balances b set head_grant_id = null, head_remaining = 0
   where b.user_id = p_user_id and b.head_grant_id is not null;
end
$$;

create or replace function billing._recompute_balance(p_user_id uuid) returns billing.balances
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_debt bigint;
  v_spendable bigint;
  v_head billing.token_grants;
  v_row billing.balances;
begin
  perform billing._flush_head(p_user_id);
  select coalesce(pg_catalog.sum(g.debt_incurred - g.debt_repaid), 0), coalesce(pg_catalog.sum(g.remaining), 0)
    into v_debt, v_spendable
    from billing.token_grants g where g.user_id = p_user_id;
  if v_debt > 0 and v_spendable > 0 then
    perform billing._burn(p_user_id, least(v_debt, v_spendable), true);
  end if;
  select g.* into v_head from billing.token_grants g
   where g.user_id = p_user_id and g.remaining > 0 and (g.expires_at is null or g.expires_at > pg_catalog.now())
   order by g.expires_at, g.id
   limit 1;
  update billing.balances b
     set spendable = (select coalesce(pg_catalog.sum(g.remaining), 0) from billing.token_grants g
                       where g.user_id = p_user_id),
         held = (select coalesce(pg_catalog.sum(r.tokens), 0) from billing.token_reservations r
                  where r.user_id = p_user_id and r.status = 'held'),
         debt = (select coalesce(pg_catalog.sum(g.debt_incurred - g.debt_repaid), 0) from billing.token_grants g
                  where g.user_id = p_user_id),
         next_event_at = least(
           (select pg_catalog.min(g.expires_at) from billing.token_grants g
             where g.user_id = p_user_id and g.remaining > 0),
           (select pg_catalog.min(r.expires_at) from billing.token_reservations r
             where r.user_id = p_user_id and r.status = 'held')),
         head_grant_id = v_head.id,
         head_remaining = coalesce(v_head.remaining, 0),
         updated_at = pg_catalog.now()
   where b.user_id = p_user_id
  returning b.* into v_row;
  return v_row;
end
$$;

create or replace function billing._lock_and_settle(p_user_id uuid, p_create boolean) returns billing.balances
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_row billing.balances;
  v_hold record;
begin
  select b.* into v_row from billing.balances b where b.user_id = p_user_id for update;
  if not found then
    if not p_create then
      return null;
    end if;
    insert into billing.balances (user_id) values (p_user_id) on conflict (user_id) do nothing;
    select b.* into v_row from billing.balances b where b.user_id = p_user_id for update;
  end if;
  perform billing._flush_head(p_user_id);
  if v_row.next_event_at is null or v_row.next_event_at > pg_catalog.now() then
    return v_row; -- spendable, held and debt are exact; the caller recomputes the head when done
  end if;
  for v_hold in
    select r.id, r.drawn_from from billing.token_reservations r
     where r.user_id = p_user_id and r.status = 'held' and r.expires_at <= pg_catalog.now()
  loop
    perform billing._return_to_grants(v_hold.drawn_from);
    update billing.token_reservations set status = 'expired', settled_at = pg_catalog.now() where id = v_hold.id;
  end loop;
  update billing.token_grants g set expired = g.expired + g.remaining, remaining = 0
   where g.user_id = p_user_id and g.remaining > 0 and g.expires_at <= pg_catalog.now();
  v_row := billing._recompute_balance(p_user_id);
  -- The caller writes grants next: leave no head, so its final recompute cannot overwrite them.
  perform billing._flush_head(p_user_id);
  return v_row;
end
$$;

create or replace function billing._spendable_now(p_user_id uuid) returns bigint
language sql stable set search_path = pg_catalog, pg_temp as $$
  select case
    when b.user_id is null then 0
    when b.next_event_at is null or b.next_event_at > pg_catalog.now() then b.spendable
    else greatest(0,
      (select coalesce(pg_catalog.sum(case when g.id = b.head_grant_id then b.head_remaining else g.remaining end), 0)
         from billing.token_grants g
        where g.user_id = p_user_id and g.remaining > 0
          and (g.expires_at is null or g.expires_at > pg_catalog.now()))
      + (select coalesce(pg_catalog.sum(r.drawn_from[i][2]), 0)
           from billing.token_reservations r
           cross join lateral pg_catalog.generate_subscripts(r.drawn_from, 1) as i
           join billing.token_grants g on g.id = r.drawn_from[i][1]
          where r.user_id = p_user_id and r.status = 'held' and r.expires_at <= pg_catalog.now()
            and (g.expires_at is null or g.expires_at > pg_catalog.now()))
      - b.debt)
  end
  from (select p_user_id as id) u
  left join billing.balances b on b.user_id = u.id
$$;

create or replace function billing._check_balance_reader(p_user_id uuid) returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  perform billing._require_access(p_user_id);
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  end if;
  return p_user_id;
end
$$;

create or replace function billing.get_balance(p_user_id uuid) returns bigint
language sql stable as $$
  select (
    select coalesce(
             (select b.spendable from billing.balances b
               where b.user_id operator(pg_catalog.=) r.u
                 and (b.next_event_at is null or b.next_event_at operator(pg_catalog.>) pg_catalog.now())),
             billing._spendable_now(r.u))
      from (select case when x.p is null
                          or pg_catalog.current_setting('role') operator(pg_catalog.=) any
                             (array['anon', 'authenticated']::pg_catalog.text[])
                        then billing._check_balance_reader(x.p)
                        else x.p end as u
              from (select p_user_id as p) x) r)
$$;
comment on function billing.get_balance(uuid) is 'Spendable tokens now (excludes expired and held tokens).';

create or replace function billing._consume_replay(p_user_id uuid, p_amount bigint, p_key text)
returns table (usage_id bigint, tokens_charged bigint, balance_after bigint, replayed boolean)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_prev billing.token_usage;
begin
  select u.* into v_prev from billing.token_usage u where u.user_id = p_user_id and u.idempotency_key = p_key;
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
  p_metadata jsonb default '{}'
) returns table (usage_id bigint, tokens_charged bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_role text := pg_catalog.current_setting('role');
  v_after bigint;
  v_id bigint;
  v_row billing.balances;
  v_drawn bigint[];
begin
  -- Checks inline (this is the hot path); the same rules as billing._require_access.
  if v_role = 'authenticated' or v_role = 'anon' then
    perform billing._require_access(p_user_id);
  end if;
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  elsif p_amount is null or p_amount <= 0 then
    perform billing._check_amount('p_amount', p_amount);
  elsif p_idempotency_key is not null and pg_catalog.length(p_idempotency_key) not between 1 and 255 then
    perform billing._check_key(p_idempotency_key);
  end if;
  if p_metadata is null then
    p_metadata := '{}';
  elsif pg_catalog.jsonb_typeof(p_metadata) <> 'object' then
    perform billing._check_metadata(p_metadata);
  end if;

  -- Fast path: nothing is due to expire and the head grant covers the amount. One UPDATE (which
  -- also locks the user's balance row) and one INSERT; a key seen before inserts nothing.
  with debit as (
    update billing.balances b
       set spendable = b.spendable - p_amount, head_remaining = b.head_remaining - p_amount
     where b.user_id = p_user_id and b.head_remaining >= p_amount and b.debt = 0
       and (b.next_event_at is null or b.next_event_at > pg_catalog.now())
    returning b.user_id, b.spendable, b.head_grant_id
  ), usage as (
    insert into billing.token_usage (user_id, tokens, idempotency_key, metadata, drawn_from, balance_after)
    select d.user_id, p_amount, p_idempotency_key, p_metadata, array[[d.head_grant_id, p_amount]], d.spendable
      from debit d
    on conflict (user_id, idempotency_key) where idempotency_key is not null do nothing
    returning id
  )
  select d.spendable, (select u.id from usage u) into v_after, v_id from debit d;

  if v_id is not null then
    return query select v_id, p_amount, v_after, false;
    return;
  elsif v_after is not null then
    -- The key was used before (or by a racing call that committed first): undo the debit.
    update billing.balances b set spendable = b.spendable + p_amount, head_remaining = b.head_remaining + p_amount
     where b.user_id = p_user_id;
    return query select * from billing._consume_replay(p_user_id, p_amount, p_idempotency_key);
    return;
  end if;

  -- Slow path: lock, flush the head, settle what is due, then spend across grants in order.
  v_row := billing._lock_and_settle(p_user_id, false);
  if v_row.user_id is not null and p_idempotency_key is not null
     and exists (select 1 from billing.token_usage u where u.user_id = p_user_id and u.idempotency_key = p_idempotency_key) then
    return query select * from billing._consume_replay(p_user_id, p_amount, p_idempotency_key);
    return;
  end if;
  if v_row.user_id is null or v_row.spendable < p_amount or v_row.debt > 0 then
    perform billing._raise_insufficient(p_amount, coalesce(v_row.spendable, 0), coalesce(v_row.debt, 0));
  end if;
  v_drawn := billing._burn(p_user_id, p_amount, false);
  v_row := billing._recompute_balance(p_user_id);
  insert into billing.token_usage (user_id, tokens, idempotency_key, metadata, drawn_from, balance_after)
  values (p_user_id, p_amount, p_idempotency_key, p_metadata, v_drawn, v_row.spendable)
  returning id into v_id;
  return query select v_id, p_amount, v_row.spendable, false;
end
$$;
comment on function billing.consume_tokens(uuid, bigint, text, jsonb) is
  'Atomically debits tokens (soonest-expiring first); PT402 when not enough, PT409 on a key reused with another amount.';

create or replace function billing.reserve_tokens(
  p_user_id uuid,
  p_amount bigint,
  p_idempotency_key text,
  p_ttl interval default '15 minutes'
) returns table (reservation_id uuid, tokens_held bigint, expires_at timestamptz, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_row billing.balances;
  v_prev billing.token_reservations;
  v_res billing.token_reservations;
begin
  perform billing._require_access(p_user_id);
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  end if;
  perform billing._check_amount('p_amount', p_amount);
  perform billing._check_key(p_idempotency_key);
  if p_ttl is null or p_ttl <= interval '0' or p_ttl > interval '1 day' then
    raise exception using errcode = '22023', message = 'p_ttl must be between 0 and 1 day (exclusive of 0)';
  end if;

  v_row := billing._lock_and_settle(p_user_id, false);
  if v_row.user_id is not null and p_idempotency_key is not null then
    select r.* into v_prev from billing.token_reservations r
     where r.user_id = p_user_id and r.idempotency_key = p_idempotency_key;
    if found then
      if v_prev.tokens <> p_amount then
        raise exception using errcode = 'PT409', message = 'idempotency key reused with a different amount',
          detail = pg_catalog.format('key %L reserved %s tokens, this call asks for %s', p_idempotency_key, v_prev.tokens, p_amount);
      end if;
      v_row := billing._recompute_balance(p_user_id);
      return query select v_prev.id, v_prev.tokens, v_prev.expires_at, v_row.spendable, true;
      return;
    end if;
  end if;
  if v_row.user_id is null or v_row.spendable < p_amount or v_row.debt > 0 then
    perform billing._raise_insufficient(p_amount, coalesce(v_row.spendable, 0), coalesce(v_row.debt, 0));
  end if;

  insert into billing.token_reservations (user_id, tokens, idempotency_key, expires_at, drawn_from)
  values (p_user_id, p_amount, p_idempotency_key, pg_catalog.now() + p_ttl, billing._burn(p_user_id, p_amount, false))
  returning * into v_res;
  v_row := billing._recompute_balance(p_user_id);
  return query select v_res.id, v_res.tokens, v_res.expires_at, v_row.spendable, false;
end
$$;
comment on function billing.reserve_tokens(uuid, bigint, text, interval) is
  'Holds tokens for a streaming request; expired holds are released lazily or by billing.run_maintenance().';

create or replace function billing.run_maintenance(p_limit integer default 10000) returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid;
  v_count integer := 0;
begin
  perform billing._require_service();
  for v_user in
    select b.user_id from billing.balances b
     where b.next_event_at <= pg_catalog.now()
     order by b.next_event_at
     limit greatest(coalesce(p_limit, 10000), 0) -- NULL means the default, not "no limit"
       for update skip locked
  loop
    perform billing._lock_and_settle(v_user, false);
    perform billing._recompute_balance(v_user);
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;
comment on function billing.run_maintenance(integer) is
  'Expires grants and holds that are due; schedule with pg_cron, e.g. every minute.';

create or replace function billing.verify_ledger()
returns table (invariant text, user_id uuid, detail text)
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  with live as (  -- grants with the head's authoritative remaining
    select g.*, case when b.head_grant_id = g.id then b.head_remaining else g.remaining end as live_remaining
      from billing.token_grants g
      left join billing.balances b on b.user_id = g.user_id
  ), spent as (
    select (u.drawn_from[i][1]) as grant_id, pg_catalog.sum(u.drawn_from[i][2]) as t
      from billing.token_usage u cross join lateral pg_catalog.generate_subscripts(u.drawn_from, 1) as i
     group by 1
  ), held as (
    select (r.drawn_from[i][1]) as grant_id, pg_catalog.sum(r.drawn_from[i][2]) as t
      from billing.token_reservations r cross join lateral pg_catalog.generate_subscripts(r.drawn_from, 1) as i
     where r.status = 'held'
     group by 1
  ), per_user as (
    select g.user_id, pg_catalog.sum(g.live_remaining) as remaining,
           pg_catalog.sum(g.debt_incurred - g.debt_repaid) as debt
      from live g group by g.user_id
  ), holds as (
    select r.user_id, pg_catalog.sum(r.tokens) as held
      from billing.token_reservations r where r.status = 'held' group by r.user_id
  )
  select 'grant tokens do not add up', g.user_id,
         pg_catalog.format('grant %s: tokens %s <> remaining %s + frozen %s + expired %s + clawed back %s + debt repaid %s + spent %s + held %s',
           g.id, g.tokens, g.live_remaining, g.frozen, g.expired, g.clawed_back, g.debt_repaid, coalesce(s.t, 0), coalesce(h.t, 0))
    from live g
    left join spent s on s.grant_id = g.id
    left join held h on h.grant_id = g.id
   where g.tokens <> g.live_remaining + g.frozen + g.expired + g.clawed_back + g.debt_repaid + coalesce(s.t, 0) + coalesce(h.t, 0)
  union all
  select 'grant remaining out of range', g.user_id, pg_catalog.format('grant %s: remaining %s of %s', g.id, g.live_remaining, g.tokens)
    from live g where g.live_remaining < 0 or g.live_remaining > g.tokens
  union all
  select 'balance does not match ledger', coalesce(b.user_id, p.user_id),
         pg_catalog.format('spendable %s vs grants %s; held %s vs reservations %s; debt %s vs grants %s',
           b.spendable, coalesce(p.remaining, 0), b.held, coalesce(hs.held, 0), b.debt, coalesce(p.debt, 0))
    from billing.balances b
    full join per_user p on p.user_id = b.user_id
    left join holds hs on hs.user_id = coalesce(b.user_id, p.user_id)
   where b.user_id is null
      or b.spendable <> coalesce(p.remaining, 0)
      or b.held <> coalesce(hs.held, 0)
      or b.debt <> coalesce(p.debt, 0)
  union all
  select 'negative balance', b.user_id, pg_catalog.format('spendable %s, held %s, debt %s', b.spendable, b.held, b.debt)
    from billing.balances b where b.spendable < 0 or b.held < 0 or b.debt < 0
  union all
  select 'debt with spendable tokens', b.user_id, pg_catalog.format('spendable %s, debt %s', b.spendable, b.debt)
    from billing.balances b where b.debt > 0 and b.spendable > 0
  union all
  select 'head grant is not the user''s', b.user_id, pg_catalog.format('head %s', b.head_grant_id)
    from billing.balances b
   where b.head_grant_id is not null
     and not exists (select 1 from billing.token_grants g where g.id = b.head_grant_id and g.user_id = b.user_id
                       and b.head_remaining <= g.remaining)
  union all
  select 'head grant is not first in burn order', b.user_id,
         pg_catalog.format('head %s, but grant %s expires sooner', b.head_grant_id, g.id)
    from billing.balances b
    join billing.token_grants h on h.id = b.head_grant_id
    join live g on g.user_id = b.user_id and g.id <> h.id and g.live_remaining > 0
   where b.head_remaining > 0
     and (g.expires_at is null or g.expires_at > pg_catalog.now())
     and (coalesce(g.expires_at, 'infinity'), g.id) < (coalesce(h.expires_at, 'infinity'), h.id)
  union all
  select 'usage does not match its grants', u.user_id,
         pg_catalog.format('usage %s: tokens %s, drawn %s', u.id, u.tokens,
           (select pg_catalog.sum(u.drawn_from[i][2]) from pg_catalog.generate_subscripts(u.drawn_from, 1) as i))
    from billing.token_usage u
   where u.tokens is distinct from
         (select pg_catalog.sum(u.drawn_from[i][2]) from pg_catalog.generate_subscripts(u.drawn_from, 1) as i)
  union all
  select 'duplicate grant reference', null::uuid, pg_catalog.format('(%s, %s) granted %s times', g.kind, g.reference, pg_catalog.count(*))
    from billing.token_grants g group by g.kind, g.reference having pg_catalog.count(*) > 1
$$;
comment on function billing.verify_ledger() is 'Every violated ledger invariant; empty means consistent.';

create or replace function billing.get_billing_summary() returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing.current_user_id();
  v_bal billing.balances;
begin
  select b.* into v_bal from billing.balances b where b.user_id = v_user;
  return pg_catalog.jsonb_build_object(
    'user_id', v_user,
    'balance', billing.get_balance(v_user),
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
               where g.user_id = v_user and g.remaining > 0
                 and (g.expires_at is null or g.expires_at > pg_catalog.now())
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
       where s.user_id = v_user
       order by (s.status in ('active', 'trialing', 'past_due')) desc, s.current_period_end desc nulls last
       limit 1));
end
$$;
comment on function billing.get_billing_summary() is
  'The signed-in user''s balance, its breakdown by grant kind and expiry, reserved tokens, debt and plan.';

create or replace function billing.get_grant_history(p_limit integer default 50, p_offset integer default 0)
returns table (grant_id bigint, kind text, tokens bigint, remaining bigint, frozen bigint, expired bigint,
               clawed_back bigint, expires_at timestamptz, created_at timestamptz)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing.current_user_id();
begin
  if p_limit is null or p_limit < 1 or p_limit > 500 or p_offset is null or p_offset < 0 then
    raise exception using errcode = '22023', message = 'p_limit must be 1 to 500 and p_offset >= 0';
  end if;
  return query
    select g.id, g.kind, g.tokens,
           case when g.id = b.head_grant_id then b.head_remaining else g.remaining end,
           g.frozen, g.expired, g.clawed_back, g.expires_at, g.created_at
      from billing.token_grants g
      left join billing.balances b on b.user_id = g.user_id
     where g.user_id = v_user
     order by g.id desc
     limit p_limit offset p_offset;
end
$$;
comment on function billing.get_grant_history(integer, integer) is 'The signed-in user''s credits, newest first.';

create or replace function billing.setup_roles() returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_role text;
  v_table text;
  v_done text[] := '{}';
  c_user_tables constant text[] := array['stripe_customers', 'user_subscriptions', 'balances', 'token_grants',
                                          'token_usage', 'token_reservations', 'payment_transactions',
                                          'promo_redemptions'];
  c_catalog constant text[] := array['plans', 'token_packs'];
  -- user-facing functions: authenticated may call them for itself
  c_user_functions constant text[] := array[
    'billing.auth_uid()', 'billing.jwt_claims()', 'billing.is_billing_admin()', 'billing.caller_kind()',
    'billing.get_balance(uuid)', 'billing._check_balance_reader(uuid)', 'billing._spendable_now(uuid)',
    'billing._require_access(uuid)',
    'billing.consume_tokens(uuid, bigint, text, jsonb)',
    'billing.reserve_tokens(uuid, bigint, text, interval)', 'billing.commit_reservation(uuid, bigint)',
    'billing.release_reservation(uuid)', 'billing.current_user_id()', 'billing.get_billing_summary()',
    'billing.get_usage_history(timestamptz, timestamptz, text, text)', 'billing.get_grant_history(integer, integer)',
    'billing.get_payment_history(integer, integer)', 'billing.redeem_promo_code(text)'];
  c_service_functions constant text[] := array[
    'billing.grant_purchase(uuid, bigint, text, text, timestamptz, jsonb)',
    'billing.handle_stripe_webhook(text, text, text)', 'billing.run_maintenance(integer)',
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

  for v_role in select r.rolname from pg_catalog.pg_roles r
                 where r.rolname in ('anon', 'authenticated', 'service_role', 'postgres')
                   and r.oid <> (select n.nspowner from pg_catalog.pg_namespace n where n.nspname = 'billing')
  loop
    execute pg_catalog.format('revoke all on all tables in schema billing from %I', v_role);
    execute pg_catalog.format('revoke all on all sequences in schema billing from %I', v_role);
    execute pg_catalog.format('revoke all on all functions in schema billing from %I', v_role);
    execute pg_catalog.format('grant usage on schema billing to %I', v_role);
    foreach v_table in array c_catalog loop
      execute pg_catalog.format('grant select on billing.%I to %I', v_table, v_role);
    end loop;
    if v_role <> 'anon' then
      foreach v_table in array c_user_tables loop
        execute pg_catalog.format('grant select on billing.%I to %I', v_table, v_role);
      end loop;
      foreach v_fn in array c_user_functions loop
        execute pg_catalog.format('grant execute on function %s to %I', v_fn, v_role);
      end loop;
    end if;
    if v_role in ('service_role', 'postgres') then
      foreach v_table in array c_catalog loop
        execute pg_catalog.format('grant insert, update, delete on billing.%I to %I', v_table, v_role);
      end loop;
      execute pg_catalog.format('grant select, insert, update, delete on billing.webhook_secrets to %I', v_role);
      execute pg_catalog.format('grant select, insert, update, delete on billing.promo_codes to %I', v_role);
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
    foreach v_table in array c_user_tables loop
      execute pg_catalog.format('drop policy if exists own_rows on billing.%I', v_table);
      execute pg_catalog.format(
        'create policy own_rows on billing.%I for select to authenticated '
        'using (user_id = (select billing.auth_uid()) or (select billing.is_billing_admin()))', v_table);
    end loop;
  end if;
  return 'privileges set for: ' || coalesce(pg_catalog.array_to_string(v_done, ', '), '');
end
$$;
comment on function billing.setup_roles() is
  'Idempotent: revokes defaults, grants per role and creates RLS policies for the Supabase roles that exist.';

-- Privileges and policies for every function.
select billing.setup_roles();
