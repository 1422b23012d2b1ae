-- pg_billing: the ledger check. After stripe.sql: it recomputes the Stripe adjustment targets.
--
-- Every violated invariant, one row each; no rows means the ledger is consistent.
create function billing.verify_ledger()
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
