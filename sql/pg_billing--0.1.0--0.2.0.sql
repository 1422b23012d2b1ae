-- pg_billing 0.1.0 -> 0.2.0
-- Every schema change after the 0.1.0 release lands here as well as in the sql/*.sql files that a
-- fresh install runs; tests/integration/test_upgrade.py proves both give the same schema and keep data.
--
-- 0.2.0:
-- * balances.head_grant_id / head_remaining: the head of the burn order lives in the balance row, so
--   a consume that fits is one UPDATE and one INSERT (consume_tokens fast path).
-- * get_balance is an inlinable SQL function (SECURITY INVOKER, no SET) instead of PL/pgSQL.
-- * run_maintenance(NULL) means the default batch size (it meant "no limit").
-- The function bodies below are the 0.2.0 files verbatim, with `create or replace`.

alter table billing.balances
  add column head_grant_id bigint,
  add column head_remaining bigint not null default 0 check (head_remaining >= 0),
  add check (head_grant_id is not null or head_remaining = 0);

-- ===== functions from sql/ledger.sql (create or replace) =====
-- pg_billing ledger: grants, consumption, reservations, expiry, debt and the ledger check.
--
-- One rule keeps concurrent writers correct: every function that changes a user's grants, usage or
-- reservations first locks that user's billing.balances row (UPDATE or SELECT ... FOR UPDATE), and
-- reads the grants only afterwards (READ COMMITTED takes a fresh snapshot per statement).
-- Balances are then recomputed from the grants (billing._recompute_balance), except on the
-- consume_tokens fast path: while the head of the burn order (balances.head_grant_id) covers the
-- amount, a consume is one UPDATE of the balance row and one INSERT into token_usage. Slow-path
-- writers first flush head_remaining back into token_grants (billing._flush_head), so grant rows
-- are authoritative whenever anything else reads or writes them.
--
-- SQLSTATEs (README "Errors"): PT402 insufficient tokens, 42501 not allowed, 22023 invalid argument,
-- PT409 idempotency conflict, PT404 unknown reservation, PT410 reservation no longer held.

-- Caller rules: service callers act for anyone, `authenticated` only for itself, `anon` never.
create or replace function billing._require_access(p_user_id uuid) returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_kind text := billing.caller_kind();
begin
  if v_kind = 'service' then
    return;
  elsif v_kind = 'anon' then
    raise exception using errcode = '42501', message = 'anonymous callers cannot use billing functions';
  elsif p_user_id is distinct from billing.auth_uid() then
    raise exception using errcode = '42501', message = 'not allowed to act for another user';
  end if;
end
$$;

create or replace function billing._require_service() returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if billing.caller_kind() <> 'service' then
    raise exception using errcode = '42501', message = 'only the service role or the backend may call this function';
  end if;
end
$$;

create or replace function billing._check_amount(p_name text, p_amount bigint) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_amount is null or p_amount <= 0 then
    raise exception using errcode = '22023',
      message = pg_catalog.format('%s must be a positive number of tokens', p_name),
      detail = pg_catalog.format('%s = %s', p_name, coalesce(p_amount::text, 'NULL'));
  end if;
end
$$;

create or replace function billing._check_key(p_key text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_key is not null and (pg_catalog.length(p_key) < 1 or pg_catalog.length(p_key) > 255) then
    raise exception using errcode = '22023', message = 'idempotency key must be 1 to 255 characters';
  end if;
end
$$;

create or replace function billing._check_metadata(p_metadata jsonb) returns jsonb
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

create or replace function billing._raise_insufficient(p_requested bigint, p_available bigint, p_debt bigint) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT402', message = 'insufficient tokens',
    detail = pg_catalog.format('requested %s, available %s', p_requested, p_available)
             || case when p_debt > 0 then pg_catalog.format(', debt %s', p_debt) else '' end,
    hint = case when p_debt > 0 then 'A refund or lost dispute left a debt; new tokens pay it off first.'
                else 'Buy more tokens or wait for the plan to renew.' end;
end
$$;

-- Takes p_amount tokens from the user's grants, soonest expiry first (never-expiring last), and
-- returns {{grant_id, tokens}, ...}. The caller holds the balance lock and has checked that enough
-- is spendable. p_repays_debt marks the tokens as used to cover debt.
create or replace function billing._burn(p_user_id uuid, p_amount bigint, p_repays_debt boolean) returns bigint[]
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_drawn bigint[];
  v_total numeric;
begin
  with ordered as (
    select g.id, g.remaining, g.expires_at,
           pg_catalog.sum(g.remaining) over (order by g.expires_at, g.id) - g.remaining as before
      from billing.token_grants g
     where g.user_id = p_user_id and g.remaining > 0
       and (g.expires_at is null or g.expires_at > pg_catalog.now())
  ), take as (
    select o.id, o.expires_at, least(o.remaining, p_amount - o.before)::bigint as t
      from ordered o where o.before < p_amount
  ), upd as (
    update billing.token_grants g
       set remaining = g.remaining - take.t,
           debt_repaid = g.debt_repaid + case when p_repays_debt then take.t else 0 end
      from take where g.id = take.id
    returning g.id, take.t, take.expires_at
  )
  select pg_catalog.array_agg(array[upd.id, upd.t] order by upd.expires_at, upd.id),
         pg_catalog.sum(upd.t)
    into v_drawn, v_total
    from upd;
  if v_total is distinct from p_amount then
    raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
      detail = pg_catalog.format('needed %s tokens for user %s, grants held %s', p_amount, p_user_id, coalesce(v_total, 0));
  end if;
  return v_drawn;
end
$$;

-- Gives tokens back to the grants they were drawn from ({{grant_id, tokens}, ...}); tokens of a
-- grant that expired in the meantime expire. Returns how many became spendable again.
create or replace function billing._return_to_grants(p_drawn bigint[]) returns bigint
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_back bigint;
begin
  with parts as (
    select p_drawn[i][1] as grant_id, pg_catalog.sum(p_drawn[i][2]) as t
      from pg_catalog.generate_subscripts(p_drawn, 1) as i
     group by 1
  ), upd as (
    update billing.token_grants g
       set remaining = g.remaining + case when g.expires_at is null or g.expires_at > pg_catalog.now() then parts.t else 0 end,
           expired   = g.expired   + case when g.expires_at is null or g.expires_at > pg_catalog.now() then 0 else parts.t end
      from parts where g.id = parts.grant_id
    returning case when g.expires_at is null or g.expires_at > pg_catalog.now() then parts.t else 0 end as back
  )
  select coalesce(pg_catalog.sum(back), 0) into v_back from upd;
  return v_back;
end
$$;

-- Writes the head grant's authoritative remaining back into token_grants and clears the head, so
-- the grant rows are exact. The caller holds the balance lock and recomputes the balance afterwards.
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

-- Recomputes the user's balance row from the ledger, after covering debt with spendable tokens,
-- and picks the new head of the burn order. The caller holds the balance lock and has settled
-- expired grants and holds.
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

-- Locks the user's balance row (creating it when p_create), flushes the head grant, and settles
-- what is due: holds past their TTL go back to their grants, grants past expiry expire, debt is
-- covered, the row is recomputed. Returns the row, or NULL when the user has none and p_create is
-- false. The head stays flushed: while a head is set only the fast path may write grant rows, so
-- every caller recomputes the balance (which sets the head again) as its last write.
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

-- Spendable tokens now, without writing: the cached balance unless something expired since the
-- last settle, in which case the grants and holds are read directly.
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

-- ---------------------------------------------------------------------------------------------
-- Public functions
-- ---------------------------------------------------------------------------------------------

-- Who may read p_user_id's balance: raises 42501 for anon and for a user asking about someone
-- else, 22023 for NULL; returns p_user_id. get_balance calls it only for API roles.
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

-- An inlinable SQL function (no SECURITY DEFINER, no SET): the planner folds it into the calling
-- query, so reading a balance costs about a primary-key lookup. Without a pinned search_path it
-- qualifies every function, operator and type. It runs with the caller's rights: row-level
-- security limits `authenticated` to its own row; the explicit check adds the 42501 the contract
-- promises. p_user_id is referenced once so that inlining never duplicates the argument.
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

-- The original result of a consume whose idempotency key was used before, or PT409.
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

-- Inserts a grant once per (kind, reference). Returns its id and whether this call inserted it
-- (false: the reference was granted before). Caller holds the balance lock and recomputes after.
create or replace function billing._insert_grant(
  p_user_id uuid, p_tokens bigint, p_reference text, p_kind text, p_expires_at timestamptz, p_metadata jsonb,
  p_payment_intent text, p_price_id text, p_amount_paid bigint, p_currency text,
  out grant_id bigint, out inserted boolean
)
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  insert into billing.token_grants (user_id, kind, reference, tokens, remaining, expires_at, metadata,
                                    stripe_payment_intent, stripe_price_id, amount_paid, currency)
  values (p_user_id, p_kind, p_reference, p_tokens, p_tokens, p_expires_at, p_metadata,
          p_payment_intent, p_price_id, p_amount_paid, p_currency)
  on conflict (kind, reference) do nothing
  returning id into grant_id;
  inserted := found;
  if not inserted then
    select g.id into grant_id from billing.token_grants g where g.kind = p_kind and g.reference = p_reference;
  end if;
end
$$;

create or replace function billing.grant_purchase(
  p_user_id uuid,
  p_tokens bigint,
  p_reference text,
  p_kind text default 'purchase',
  p_expires_at timestamptz default null,
  p_metadata jsonb default '{}'
) returns table (grant_id bigint, tokens bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_grant billing.token_grants;
  v_ins record;
  v_row billing.balances;
begin
  perform billing._require_service();
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  end if;
  perform billing._check_amount('p_tokens', p_tokens);
  if p_reference is null or pg_catalog.length(p_reference) < 1 or pg_catalog.length(p_reference) > 255 then
    raise exception using errcode = '22023', message = 'p_reference must be 1 to 255 characters';
  end if;
  if p_kind is null or p_kind !~ '^[a-z][a-z_]{0,31}$' then
    raise exception using errcode = '22023', message = 'p_kind must be a lowercase word such as purchase, subscription, promo or admin';
  end if;
  if p_expires_at is not null and p_expires_at <= pg_catalog.now() then
    raise exception using errcode = '22023', message = 'p_expires_at must be in the future';
  end if;
  p_metadata := billing._check_metadata(p_metadata);

  perform billing._lock_and_settle(p_user_id, true);
  select * into v_ins from billing._insert_grant(p_user_id, p_tokens, p_reference, p_kind, p_expires_at,
                                                p_metadata, null, null, null, null);
  select g.* into v_grant from billing.token_grants g where g.id = v_ins.grant_id;
  if v_grant.user_id is distinct from p_user_id or v_grant.tokens <> p_tokens
     or v_grant.expires_at is distinct from p_expires_at then
    raise exception using errcode = 'PT409', message = 'grant reference already used with different terms',
      detail = pg_catalog.format('(%s, %s) already granted %s tokens', p_kind, p_reference, v_grant.tokens);
  end if;
  v_row := billing._recompute_balance(p_user_id);
  return query select v_grant.id, v_grant.tokens, v_row.spendable, not v_ins.inserted;
end
$$;
comment on function billing.grant_purchase(uuid, bigint, text, text, timestamptz, jsonb) is
  'Credits tokens once per (kind, reference); repeats return the same grant.';

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

-- Locks the reservation's user and returns the reservation after settling (so a hold past its TTL
-- reads as expired). PT404 when it does not exist or belongs to someone the caller cannot act for.
create or replace function billing._lock_reservation(p_reservation_id uuid) returns billing.token_reservations
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid;
  v_res billing.token_reservations;
begin
  if p_reservation_id is null then
    raise exception using errcode = '22023', message = 'p_reservation_id must not be NULL';
  end if;
  if billing.caller_kind() = 'anon' then
    perform billing._require_access(null); -- 42501, as everywhere for anon
  end if;
  select r.user_id into v_user from billing.token_reservations r where r.id = p_reservation_id;
  -- Another user's reservation reads as missing: its existence is not theirs to learn.
  if not found or (billing.caller_kind() <> 'service' and v_user is distinct from billing.auth_uid()) then
    raise exception using errcode = 'PT404', message = 'reservation not found';
  end if;
  perform billing._lock_and_settle(v_user, false);
  select r.* into v_res from billing.token_reservations r where r.id = p_reservation_id;
  return v_res;
end
$$;

create or replace function billing.commit_reservation(p_reservation_id uuid, p_actual_amount bigint)
returns table (usage_id bigint, tokens_charged bigint, tokens_released bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_res billing.token_reservations;
  v_charged bigint[] := '{}';
  v_returned bigint[] := '{}';
  v_left bigint;
  v_part bigint;
  v_row billing.balances;
  v_usage bigint;
  i int;
begin
  v_res := billing._lock_reservation(p_reservation_id);
  if v_res.status = 'committed' then
    if v_res.committed_tokens is distinct from p_actual_amount then
      raise exception using errcode = 'PT409', message = 'reservation already committed with a different amount',
        detail = pg_catalog.format('committed %s tokens, this call asks for %s', v_res.committed_tokens, p_actual_amount);
    end if;
    return query select v_res.usage_id, v_res.committed_tokens, v_res.tokens - v_res.committed_tokens,
                        billing._spendable_now(v_res.user_id), true;
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
    perform billing._return_to_grants(v_returned);
  end if;
  update billing.token_reservations set status = 'committed', committed_tokens = p_actual_amount,
         settled_at = pg_catalog.now() where id = v_res.id;
  v_row := billing._recompute_balance(v_res.user_id);
  if p_actual_amount > 0 then
    insert into billing.token_usage (user_id, tokens, metadata, drawn_from, balance_after, reservation_id)
    values (v_res.user_id, p_actual_amount, v_res.metadata, v_charged, v_row.spendable, v_res.id)
    returning id into v_usage;
    update billing.token_reservations set usage_id = v_usage where id = v_res.id;
  end if;
  return query select v_usage, p_actual_amount, v_res.tokens - p_actual_amount, v_row.spendable, false;
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
  v_res := billing._lock_reservation(p_reservation_id);
  if v_res.status in ('released', 'expired') then
    -- Releasing twice (or after the TTL released it) is harmless: report what is there.
    return query select 0::bigint, billing._spendable_now(v_res.user_id), true;
    return;
  elsif v_res.status = 'committed' then
    raise exception using errcode = 'PT410', message = 'reservation is committed',
      hint = 'A committed reservation was charged; it cannot be released.';
  end if;
  perform billing._return_to_grants(v_res.drawn_from);
  update billing.token_reservations set status = 'released', settled_at = pg_catalog.now() where id = v_res.id;
  v_row := billing._recompute_balance(v_res.user_id);
  return query select v_res.tokens, v_row.spendable, false;
end
$$;
comment on function billing.release_reservation(uuid) is 'Releases every token of a held reservation.';

-- Maintenance for pg_cron: settles every user with something due (expired holds and grants).
-- Users whose balance row is locked by a running transaction are skipped; they settle lazily.
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

-- Every violated invariant, one row each; no rows means the ledger is consistent.
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

-- ===== functions from sql/stripe.sql (create or replace) =====
-- pg_billing: Stripe webhooks applied inside the database, one transaction per delivery.
--
-- billing.handle_stripe_webhook verifies the signature (Rust: billing.stripe_signature_check),
-- decodes the event (Rust: billing.decode_stripe_event, both API shapes), records it in the inbox
-- billing.payment_transactions exactly once (primary key on the event id; a concurrent duplicate
-- waits for the first delivery's transaction, then sees the conflict), applies it and returns a
-- JSON summary. Any error rolls back the whole delivery, inbox row included, so Stripe retries.
--
-- SQLSTATEs: PT400 bad signature, PT500 no secret configured, 22023 not a Stripe event,
-- PT422 event cannot be applied (unknown price, currency mismatch, user unknown).

create or replace function billing._raise_unprocessable(p_message text, p_detail text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT422', message = p_message, detail = coalesce(p_detail, ''),
    hint = 'Fix the catalog or the customer link; Stripe retries the delivery.';
end
$$;

-- The signing secrets to try: Supabase Vault secrets named stripe_webhook_secret or
-- stripe_webhook_secret_<suffix> (rotation), else active rows of billing.webhook_secrets.
create or replace function billing._webhook_secrets() returns text[]
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

-- Resolves the user an event is about: an explicit user id (client_reference_id / metadata) wins,
-- then the linked Stripe customer, then the subscription's user.
create or replace function billing._event_user(p_event jsonb) returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_ref text := p_event ->> 'client_reference_id';
  v_meta text := p_event ->> 'metadata_user_id';
  v_user uuid;
begin
  if v_ref is not null and v_meta is not null and v_ref <> v_meta then
    perform billing._raise_unprocessable('client_reference_id and metadata.user_id disagree',
      pg_catalog.format('%s vs %s', v_ref, v_meta));
  end if;
  if coalesce(v_ref, v_meta) is not null then
    begin
      return coalesce(v_ref, v_meta)::uuid;
    exception when invalid_text_representation then
      perform billing._raise_unprocessable('user id in the event is not a uuid', coalesce(v_ref, v_meta));
    end;
  end if;
  select c.user_id into v_user from billing.stripe_customers c where c.stripe_customer_id = p_event ->> 'customer';
  if v_user is null then
    select s.user_id into v_user from billing.user_subscriptions s where s.stripe_subscription_id = p_event ->> 'subscription';
  end if;
  return v_user;
end
$$;

-- Links a Stripe customer to a user; an existing, different link is kept (and reported).
create or replace function billing._link_customer(p_user_id uuid, p_customer text) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_customer is null or p_user_id is null then
    return 'none';
  end if;
  insert into billing.stripe_customers (user_id, stripe_customer_id) values (p_user_id, p_customer)
  on conflict do nothing;
  if found then
    return 'linked';
  elsif exists (select 1 from billing.stripe_customers c where c.user_id = p_user_id and c.stripe_customer_id = p_customer) then
    return 'already_linked';
  end if;
  return 'conflict_kept_existing';
end
$$;

-- Grants a paid Checkout Session's token pack: tokens from the catalog by price id, never from
-- the event; idempotent per session id, so completed + async_payment_succeeded grant once.
create or replace function billing._apply_checkout(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing._event_user(p_event);
  v_pack billing.token_packs;
  v_quantity bigint := coalesce((p_event ->> 'quantity')::bigint, 1);
  v_link text;
  v_ins record;
  v_tokens numeric;
begin
  if v_user is null then
    perform billing._raise_unprocessable('checkout session has no user', p_event ->> 'object_id');
  end if;
  v_link := billing._link_customer(v_user, p_event ->> 'customer');
  if p_event ->> 'mode' = 'subscription' then
    return pg_catalog.jsonb_build_object('user_id', v_user, 'customer', v_link, 'action', 'linked_subscription_customer');
  elsif p_event ->> 'type' = 'checkout.session.async_payment_failed' then
    return pg_catalog.jsonb_build_object('user_id', v_user, 'action', 'payment_failed');
  elsif p_event ->> 'mode' <> 'payment' then
    return pg_catalog.jsonb_build_object('user_id', v_user, 'action', 'ignored_mode');
  elsif coalesce(p_event ->> 'payment_status', '') not in ('paid', 'no_payment_required') then
    return pg_catalog.jsonb_build_object('user_id', v_user, 'action', 'awaiting_payment');
  end if;

  select p.* into v_pack from billing.token_packs p where p.stripe_price_id = p_event ->> 'price_id';
  if not found then
    perform billing._raise_unprocessable('price is not a token pack in billing.token_packs',
      coalesce(p_event ->> 'price_id', 'metadata.price_id missing'));
  end if;
  if v_pack.currency is distinct from pg_catalog.lower(p_event ->> 'currency') then
    perform billing._raise_unprocessable('currency does not match the token pack',
      pg_catalog.format('pack %s, session %s', v_pack.currency, p_event ->> 'currency'));
  end if;
  if v_quantity < 1 or v_quantity > 1000 then
    perform billing._raise_unprocessable('quantity out of range (1 to 1000)', v_quantity::text);
  end if;
  v_tokens := v_pack.tokens::numeric * v_quantity;
  if v_tokens > 9223372036854775807 then
    perform billing._raise_unprocessable('token amount overflows', v_tokens::text);
  end if;

  perform billing._lock_and_settle(v_user, true);
  select * into v_ins from billing._insert_grant(v_user, v_tokens::bigint, p_event ->> 'object_id', 'purchase', null,
    pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'quantity', v_quantity),
    p_event ->> 'payment_intent', v_pack.stripe_price_id, (p_event ->> 'amount_total')::bigint, v_pack.currency);
  perform billing._recompute_balance(v_user);
  return pg_catalog.jsonb_build_object('user_id', v_user, 'customer', v_link, 'action',
    case when v_ins.inserted then 'granted' else 'already_granted' end,
    'grant_id', v_ins.grant_id, 'tokens', v_tokens);
end
$$;

-- A paid invoice grants the plan's period allowance, expiring at period end unless the plan rolls
-- over; idempotent per invoice id.
create or replace function billing._apply_invoice_paid(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing._event_user(p_event);
  v_plan billing.plans;
  v_expires timestamptz;
  v_ins record;
begin
  if v_user is null then
    perform billing._raise_unprocessable('invoice customer is not linked to a user', p_event ->> 'customer');
  end if;
  select p.* into v_plan from billing.plans p where p.stripe_price_id = p_event ->> 'price_id';
  if not found then
    perform billing._raise_unprocessable('price is not a plan in billing.plans', coalesce(p_event ->> 'price_id', 'no price'));
  end if;
  if v_plan.currency is distinct from pg_catalog.lower(p_event ->> 'currency') then
    perform billing._raise_unprocessable('currency does not match the plan',
      pg_catalog.format('plan %s, invoice %s', v_plan.currency, p_event ->> 'currency'));
  end if;
  if not v_plan.rollover and p_event ? 'period_end' and p_event ->> 'period_end' is not null then
    v_expires := pg_catalog.to_timestamp((p_event ->> 'period_end')::bigint);
  end if;
  perform billing._lock_and_settle(v_user, true);
  select * into v_ins from billing._insert_grant(v_user, v_plan.tokens_per_period, p_event ->> 'object_id',
    'subscription', v_expires,
    pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'subscription', p_event ->> 'subscription',
                                  'plan', v_plan.code),
    p_event ->> 'payment_intent', v_plan.stripe_price_id, (p_event ->> 'amount_paid')::bigint, v_plan.currency);
  -- A period that already ended is recorded with its real end and expires at the next settle.
  perform billing._recompute_balance(v_user);
  return pg_catalog.jsonb_build_object('user_id', v_user, 'action',
    case when v_ins.inserted then 'granted' else 'already_granted' end,
    'grant_id', v_ins.grant_id, 'tokens', v_plan.tokens_per_period, 'expires_at', v_expires);
end
$$;

-- Upserts subscription state unless a newer event was applied already (then 'stale').
create or replace function billing._apply_subscription(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing._event_user(p_event);
  v_created timestamptz := pg_catalog.to_timestamp((p_event ->> 'created')::bigint);
  v_status text := case when p_event ->> 'type' = 'customer.subscription.deleted' then 'canceled'
                        else p_event ->> 'status' end;
  v_plan_id bigint;
  v_applied boolean;
begin
  if v_user is null then
    perform billing._raise_unprocessable('subscription customer is not linked to a user', p_event ->> 'customer');
  end if;
  if v_status is null or v_status not in ('incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due',
                                          'canceled', 'unpaid', 'paused') then
    perform billing._raise_unprocessable('unknown subscription status', coalesce(v_status, 'NULL'));
  end if;
  select p.id into v_plan_id from billing.plans p where p.stripe_price_id = p_event ->> 'price_id';
  perform billing._link_customer(v_user, p_event ->> 'customer');

  insert into billing.user_subscriptions as s (stripe_subscription_id, user_id, plan_id, stripe_price_id, status,
      current_period_start, current_period_end, cancel_at_period_end, canceled_at, last_event_created, last_event_id)
  values (p_event ->> 'object_id', v_user, v_plan_id, p_event ->> 'price_id', v_status,
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
   where s.last_event_created <= excluded.last_event_created
  returning true into v_applied;
  if v_applied is null then
    return pg_catalog.jsonb_build_object('user_id', v_user, 'action', 'stale', 'subscription', p_event ->> 'object_id');
  end if;
  return pg_catalog.jsonb_build_object('user_id', v_user, 'action', 'updated', 'subscription', p_event ->> 'object_id',
    'status', v_status);
end
$$;

-- Takes back up to p_target tokens in total from a grant (cumulative over events): remaining first,
-- then frozen; what was spent already becomes debt. Returns the tokens taken by this call.
create or replace function billing._claw_back(p_grant_id bigint, p_target bigint) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_g billing.token_grants;
  v_delta bigint;
  v_from_remaining bigint;
  v_from_frozen bigint;
begin
  select g.* into v_g from billing.token_grants g where g.id = p_grant_id;
  v_delta := least(p_target, v_g.tokens) - (v_g.clawed_back + v_g.debt_incurred);
  if v_delta <= 0 then
    return pg_catalog.jsonb_build_object('grant_id', p_grant_id, 'clawed_back', 0, 'debt', 0);
  end if;
  v_from_remaining := least(v_delta, v_g.remaining);
  v_from_frozen := least(v_delta - v_from_remaining, v_g.frozen);
  update billing.token_grants g
     set remaining = g.remaining - v_from_remaining,
         frozen = g.frozen - v_from_frozen,
         clawed_back = g.clawed_back + v_from_remaining + v_from_frozen,
         debt_incurred = g.debt_incurred + (v_delta - v_from_remaining - v_from_frozen)
   where g.id = p_grant_id;
  return pg_catalog.jsonb_build_object('grant_id', p_grant_id, 'clawed_back', v_from_remaining + v_from_frozen,
    'debt', v_delta - v_from_remaining - v_from_frozen);
end
$$;

-- Refunds claw back the refunded share (amount_refunded / amount, cumulative, rounded down in the
-- customer's favour) of every grant that payment bought.
create or replace function billing._apply_refund(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_amount bigint := (p_event ->> 'amount')::bigint;
  v_refunded bigint := (p_event ->> 'amount_refunded')::bigint;
  v_g record;
  v_effects jsonb := '[]';
  v_user uuid;
begin
  if p_event ->> 'payment_intent' is null or v_amount is null or v_amount <= 0 or v_refunded is null
     or v_refunded < 0 or v_refunded > v_amount then
    perform billing._raise_unprocessable('charge.refunded without a usable payment_intent, amount and amount_refunded', null);
  end if;
  for v_g in
    select g.id, g.user_id, g.tokens, g.currency from billing.token_grants g
     where g.stripe_payment_intent = p_event ->> 'payment_intent' order by g.id
  loop
    if v_g.currency is distinct from pg_catalog.lower(p_event ->> 'currency') then
      perform billing._raise_unprocessable('refund currency does not match the grant',
        pg_catalog.format('grant %s, charge %s', v_g.currency, p_event ->> 'currency'));
    end if;
    perform billing._lock_and_settle(v_g.user_id, true);
    v_effects := v_effects || billing._claw_back(v_g.id,
      pg_catalog.floor(v_g.tokens::numeric * v_refunded / v_amount)::bigint);
    perform billing._recompute_balance(v_g.user_id);
    v_user := v_g.user_id;
  end loop;
  return pg_catalog.jsonb_build_object('user_id', v_user, 'action',
    case when v_user is null then 'no_grant_for_payment' else 'clawed_back' end, 'grants', v_effects);
end
$$;

-- Disputes: created freezes what is left of the payment's grants; closed as lost claws the whole
-- grant back (spent tokens become debt); won (or warning_closed) releases the frozen tokens.
create or replace function billing._apply_dispute(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_g record;
  v_user uuid;
  v_effects jsonb := '[]';
  v_status text := p_event ->> 'status';
begin
  if p_event ->> 'payment_intent' is null then
    perform billing._raise_unprocessable('dispute without payment_intent', p_event ->> 'object_id');
  end if;
  for v_g in
    select g.id, g.user_id, g.tokens from billing.token_grants g
     where g.stripe_payment_intent = p_event ->> 'payment_intent' order by g.id
  loop
    perform billing._lock_and_settle(v_g.user_id, true);
    if p_event ->> 'type' = 'charge.dispute.created' then
      update billing.token_grants g set frozen = g.frozen + g.remaining, remaining = 0 where g.id = v_g.id;
      v_effects := v_effects || pg_catalog.jsonb_build_object('grant_id', v_g.id, 'action', 'frozen');
    elsif v_status = 'lost' then
      v_effects := v_effects || billing._claw_back(v_g.id, v_g.tokens);
    elsif v_status in ('won', 'warning_closed') then
      update billing.token_grants g
         set remaining = g.remaining + case when g.expires_at is null or g.expires_at > pg_catalog.now() then g.frozen else 0 end,
             expired = g.expired + case when g.expires_at is null or g.expires_at > pg_catalog.now() then 0 else g.frozen end,
             frozen = 0
       where g.id = v_g.id;
      v_effects := v_effects || pg_catalog.jsonb_build_object('grant_id', v_g.id, 'action', 'released');
    end if;
    perform billing._recompute_balance(v_g.user_id);
    v_user := v_g.user_id;
  end loop;
  return pg_catalog.jsonb_build_object('user_id', v_user, 'action',
    case when v_user is null then 'no_grant_for_payment' else coalesce(v_status, 'unknown') end, 'grants', v_effects);
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
  v_effect jsonb;
  v_status text;
begin
  perform billing._require_service();
  if p_secret is not null then
    v_secrets := array[p_secret];
  else
    v_secrets := billing._webhook_secrets();
  end if;
  if v_secrets is null or pg_catalog.cardinality(v_secrets) = 0 then
    raise exception using errcode = 'PT500', message = 'no Stripe webhook secret configured',
      hint = 'Store it in Supabase Vault as stripe_webhook_secret, or insert it into billing.webhook_secrets.';
  end if;
  v_rejection := billing.stripe_signature_check(p_payload, p_signature_header, v_secrets, 300);
  if v_rejection is not null then
    raise exception using errcode = 'PT400', message = 'invalid Stripe signature', detail = v_rejection;
  end if;
  v_event := billing.decode_stripe_event(p_payload);

  insert into billing.payment_transactions (stripe_event_id, event_type, event_created, livemode, api_version,
                                            status, payload)
  values (v_event ->> 'id', v_event ->> 'type', pg_catalog.to_timestamp((v_event ->> 'created')::bigint),
          (v_event ->> 'livemode')::boolean, v_event ->> 'api_version', 'processed', p_payload::jsonb)
  on conflict (stripe_event_id) do nothing;
  if not found then
    select t.* into v_prior from billing.payment_transactions t where t.stripe_event_id = v_event ->> 'id';
    return pg_catalog.jsonb_build_object('event_id', v_event ->> 'id', 'type', v_event ->> 'type',
      'outcome', 'duplicate', 'first_outcome', v_prior.status);
  end if;

  v_effect := case v_event ->> 'kind'
    when 'checkout' then billing._apply_checkout(v_event)
    when 'invoice_paid' then billing._apply_invoice_paid(v_event)
    when 'subscription' then billing._apply_subscription(v_event)
    when 'charge_refunded' then billing._apply_refund(v_event)
    when 'dispute' then billing._apply_dispute(v_event)
    else '{}'::jsonb
  end;
  v_status := case when v_event ->> 'kind' = 'ignored' then 'ignored'
                   when v_effect ->> 'action' = 'stale' then 'stale'
                   else 'processed' end;
  update billing.payment_transactions
     set status = v_status, outcome = v_effect, user_id = (v_effect ->> 'user_id')::uuid,
         processed_at = pg_catalog.clock_timestamp()
   where stripe_event_id = v_event ->> 'id';
  return pg_catalog.jsonb_build_object('event_id', v_event ->> 'id', 'type', v_event ->> 'type',
    'outcome', v_status, 'effect', v_effect);
end
$$;
comment on function billing.handle_stripe_webhook(text, text, text) is
  'Verifies, records exactly once and applies one Stripe webhook delivery; returns {event_id, type, outcome, effect}.';

-- ===== functions from sql/frontend.sql (create or replace) =====
-- pg_billing: functions a signed-in user calls for themselves through Supabase RPC (PostgREST as
-- role `authenticated`). No user-id argument: the user is the JWT's `sub`.
--
-- The read-only ones are STABLE and SECURITY INVOKER: row-level security does the protecting, and
-- PostgREST runs them in a READ ONLY transaction (supabase.rpc(fn, args, { get: true }) works).
-- redeem_promo_code writes, so it is SECURITY DEFINER and checks the caller in its body.

-- The signed-in user, or 42501 for anon and for callers without a `sub` claim.
create or replace function billing.current_user_id() returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid;
begin
  if billing.caller_kind() = 'anon' then
    raise exception using errcode = '42501', message = 'sign in to use billing';
  end if;
  v_user := billing.auth_uid();
  if v_user is null then
    raise exception using errcode = '42501', message = 'no user in the JWT (sub claim)';
  end if;
  return v_user;
end
$$;

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

create or replace function billing.get_usage_history(
  p_from timestamptz default null,
  p_to timestamptz default null,
  p_bucket text default 'day',
  p_group_by text default null
) returns table (bucket timestamptz, group_key text, tokens bigint, requests bigint)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing.current_user_id();
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

create or replace function billing.get_payment_history(p_limit integer default 50, p_offset integer default 0)
returns table (event_id text, event_type text, event_created timestamptz, status text, action text, tokens bigint)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing.current_user_id();
begin
  if p_limit is null or p_limit < 1 or p_limit > 500 or p_offset is null or p_offset < 0 then
    raise exception using errcode = '22023', message = 'p_limit must be 1 to 500 and p_offset >= 0';
  end if;
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

create or replace function billing.redeem_promo_code(p_code text)
returns table (grant_id bigint, tokens bigint, expires_at timestamptz, balance_after bigint)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user uuid := billing.current_user_id();
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
  perform billing._lock_and_settle(v_user, true);
  select * into v_ins from billing._insert_grant(v_user, v_promo.tokens, v_code || ':' || v_user::text, 'promo',
    v_expires, pg_catalog.jsonb_build_object('promo_code', v_code), null, null, null, null);
  insert into billing.promo_redemptions (code, user_id, grant_id) values (v_code, v_user, v_ins.grant_id);
  v_row := billing._recompute_balance(v_user);
  return query select v_ins.grant_id, v_promo.tokens, v_expires, v_row.spendable;
end
$$;
comment on function billing.redeem_promo_code(text) is
  'Redeems a promo code for the signed-in user: once per user, within the code''s global limit and validity.';

-- ===== functions from sql/policies.sql (create or replace) =====
-- pg_billing: row-level security policies and privileges, for the roles that exist.
--
-- Supabase's roles (anon, authenticated, service_role) may not exist when the extension is
-- created (plain PostgreSQL, `cargo pgrx test`), and a policy or GRANT naming a missing role
-- fails. So both live in one idempotent function, run at the end of CREATE EXTENSION and again by
-- a DBA after creating the roles: `select billing.setup_roles();`.
--
-- Who may do what (README "Privileges"):
--   anon           reads the catalog (plans, token_packs); calls nothing.
--   authenticated  reads its own rows of the user tables (an admin JWT reads all); calls the
--                  user-facing functions, which check inside that it acts only for itself.
--   service_role   reads every table (BYPASSRLS), manages the catalog and webhook secrets,
--                  and calls every public function. The backend role (postgres) likewise.
--   nobody         writes ledger tables directly: only the extension's functions do.

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

-- ===== data: pick every user's head grant =====
select pg_catalog.count(billing._recompute_balance(b.user_id)) from billing.balances b;

-- Re-apply privileges last, so functions added by this script get their grants.
select billing.setup_roles();
