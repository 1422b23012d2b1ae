-- pg_billing: functions a signed-in user calls for themselves through Supabase RPC (PostgREST as
-- role `authenticated`). No user-id argument: the user is the JWT's `sub`.
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

create function billing.get_billing_summary() returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
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
       where s.user_id = v_user
       order by (s.status in ('active', 'trialing', 'past_due')) desc, s.current_period_end desc nulls last
       limit 1));
end
$$;
comment on function billing.get_billing_summary() is
  'The signed-in user''s balance, its breakdown by grant kind and expiry, reserved tokens, debt and plan.';

create function billing.get_usage_history(
  p_from timestamptz default null,
  p_to timestamptz default null,
  p_bucket text default 'day',
  p_group_by text default null
) returns table (bucket timestamptz, group_key text, tokens bigint, requests bigint)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
  v_to timestamptz := coalesce(p_to, pg_catalog.now());
  v_from timestamptz := coalesce(p_from, coalesce(p_to, pg_catalog.now()) - interval '30 days');
begin
  if p_bucket is null or p_bucket not in ('hour', 'day', 'month') then
    raise exception using errcode = '22023', message = 'p_bucket must be hour, day or month';
  elsif v_from >= v_to then
    raise exception using errcode = '22023', message = 'p_from must be before p_to';
  elsif p_group_by is not null and (pg_catalog.length(p_group_by) < 1 or pg_catalog.length(p_group_by) > 64) then
    raise exception using errcode = '22023', message = 'p_group_by must be a metadata key of 1 to 64 characters';
  end if;
  return query
    select pg_catalog.date_trunc(p_bucket, u.created_at),
           case when p_group_by is null then null else u.metadata operator(pg_catalog.->>) p_group_by end,
           pg_catalog.sum(u.tokens)::bigint, pg_catalog.count(*)
      from billing.token_usage u
     where u.user_id = v_user and u.created_at >= v_from and u.created_at < v_to
     group by 1, 2
     order by 1, 2;
end
$$;
comment on function billing.get_usage_history(timestamptz, timestamptz, text, text) is
  'Tokens used per hour/day/month in [p_from, p_to) (default: the last 30 days), optionally per metadata key.';

-- Paging arguments of the history functions: 22023 unless 1 <= p_limit <= 500 and p_offset >= 0.
create function billing_internal.check_page(p_limit integer, p_offset integer) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_limit is null or p_limit < 1 or p_limit > 500 or p_offset is null or p_offset < 0 then
    raise exception using errcode = '22023', message = 'p_limit must be 1 to 500 and p_offset >= 0';
  end if;
end
$$;

create function billing.get_grant_history(p_limit integer default 50, p_offset integer default 0)
returns table (grant_id bigint, kind text, tokens bigint, remaining bigint, frozen bigint, expired bigint,
               clawed_back bigint, expires_at timestamptz, created_at timestamptz)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
begin
  perform billing_internal.check_page(p_limit, p_offset);
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

create function billing.get_payment_history(p_limit integer default 50, p_offset integer default 0)
returns table (event_id text, event_type text, event_created timestamptz, status text, action text, tokens bigint)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing_internal.current_user_id();
begin
  perform billing_internal.check_page(p_limit, p_offset);
  return query
    select t.stripe_event_id, t.event_type, t.event_created, t.status,
           t.outcome operator(pg_catalog.->>) 'action',
           (t.outcome operator(pg_catalog.->>) 'tokens')::bigint
      from billing.payment_transactions t
     where t.user_id = v_user
     order by t.event_created desc, t.stripe_event_id
     limit p_limit offset p_offset;
end
$$;
comment on function billing.get_payment_history(integer, integer) is
  'The signed-in user''s Stripe events and what they did, newest first.';

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
  elsif exists (select 1 from billing.promo_redemptions r where r.code = v_code and r.user_id = v_user) then
    raise exception using errcode = 'PT409', message = 'promo code already redeemed';
  end if;
  update billing.promo_codes c set redeemed_count = c.redeemed_count + 1 where c.code = v_code;
  v_expires := pg_catalog.now() + v_promo.token_lifetime;
  perform billing_internal.lock_and_settle(v_user, true);
  select * into v_ins from billing_internal.insert_grant(v_user, v_promo.tokens, v_code || ':' || v_user::text, 'promo',
    v_expires, pg_catalog.jsonb_build_object('promo_code', v_code), null, null, null, null);
  insert into billing.promo_redemptions (code, user_id, grant_id) values (v_code, v_user, v_ins.grant_id);
  v_row := billing_internal.recompute_balance(v_user);
  return query select v_ins.grant_id, v_promo.tokens, v_expires, v_row.spendable::bigint;
end
$$;
comment on function billing.redeem_promo_code(text) is
  'Redeems a promo code for the signed-in user: once per user, within the code''s global limit and validity.';
