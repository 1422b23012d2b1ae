-- pg_billing ledger: grants, consumption, reservations, expiry, debt and the ledger check.
--
-- One rule keeps concurrent writers correct: every function that changes an account's grants, usage
-- or reservations first locks that account's billing.balances row (UPDATE or SELECT ... FOR UPDATE), and
-- reads the grants only afterwards (READ COMMITTED takes a fresh snapshot per statement).
-- Balances are then recomputed from the grants (billing_internal.recompute_balance), except on the
-- consume_tokens fast path: while the head of the burn order (balances.head_grant_id) covers the
-- amount, a consume is one UPDATE of the balance row and one INSERT into token_usage. Slow-path
-- writers first flush head_remaining back into token_grants (billing_internal.flush_head), so grant rows
-- are authoritative whenever anything else reads or writes them.
--
-- SQLSTATEs (README "Errors"): PT402 insufficient tokens, 42501 not allowed, 22023 invalid argument,
-- PT409 idempotency conflict, PT404 unknown reservation, PT410 reservation no longer held.

-- Caller rules: service callers act for anyone, `authenticated` only for itself, `anon` never.
create function billing_internal.require_access(p_user_id uuid) returns void
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

create function billing_internal.require_service() returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if billing_internal.caller_kind() <> 'service' then
    raise exception using errcode = '42501', message = 'only the service role or the backend may call this function';
  end if;
end
$$;

create function billing_internal.check_amount(p_name text, p_amount bigint) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_amount is null or p_amount <= 0 then
    raise exception using errcode = '22023',
      message = pg_catalog.format('%s must be a positive number of tokens', p_name),
      detail = pg_catalog.format('%s = %s', p_name, coalesce(p_amount::text, 'NULL'));
  end if;
end
$$;

create function billing_internal.check_key(p_key text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_key is not null and (pg_catalog.length(p_key) < 1 or pg_catalog.length(p_key) > 255) then
    raise exception using errcode = '22023', message = 'idempotency key must be 1 to 255 characters';
  end if;
end
$$;

create function billing_internal.check_metadata(p_metadata jsonb) returns jsonb
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

create function billing_internal.raise_insufficient(p_requested bigint, p_available bigint, p_debt bigint) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT402', message = 'insufficient tokens',
    detail = pg_catalog.format('requested %s, available %s', p_requested, p_available)
             || case when p_debt > 0 then pg_catalog.format(', debt %s', p_debt) else '' end,
    hint = case when p_debt > 0 then 'A refund or lost dispute left a debt; new tokens pay it off first.'
                else 'Buy more tokens or wait for the plan to renew.' end;
end
$$;

-- Takes p_amount tokens from the account's grants, soonest expiry first (never-expiring last), and
-- returns {{grant_id, tokens}, ...}. The caller holds the balance lock and has checked that enough
-- is spendable. p_repays_debt marks the tokens as used to cover debt. How much each grant gives is
-- billing_internal.burn_allocation (pg_billing_core::ledger, fuzzed).
create function billing_internal.burn(p_account_id uuid, p_amount bigint, p_repays_debt boolean) returns bigint[]
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

-- New counters for a grant, computed by pg_billing_core::ledger (fuzzed): {remaining, frozen,
-- expired, clawed_back, debt_incurred, debt_forgiven}. Writes the first five; raises XX000 on NULL
-- (counters no consistent ledger holds). Returns debt_forgiven: debt this change cancelled, which
-- billing_internal.recompute_balance settles against debt the account already repaid.
create function billing_internal.set_grant_counters(p_account_id uuid, p_grant_id bigint, p_counters bigint[], p_what text)
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

-- Gives tokens back to the grants they were drawn from ({{grant_id, tokens}, ...}): a released,
-- expired or partly committed hold. Per grant (billing_internal.given_back_grant): debt a claw-back recorded
-- for them while held is settled first; the rest is frozen up to the grant's freeze_target, else
-- spendable, or expired if the grant expired meanwhile. Returns how many became spendable again.
create function billing_internal.return_to_grants(p_account_id uuid, p_drawn bigint[]) returns bigint
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

-- Brings a grant to p_tokens in total (never fewer) and, while it lives, to the expiry
-- p_expires_at: a subscription period whose plan was upgraded. New tokens are spendable, or
-- expired if the grant has expired. Returns the tokens added. The caller holds the balance lock.
create function billing_internal.extend_grant(p_account_id uuid, p_grant_id bigint, p_tokens bigint, p_expires_at timestamptz)
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

-- Moves a grant to its Stripe adjustment targets (billing_internal.adjusted_grant: claw back to
-- p_claw_target, keep p_freeze_target frozen, or give back when a target fell). The caller holds
-- the balance lock and recomputes the balance afterwards. Returns what changed.
create function billing_internal.adjust_grant(p_account_id uuid, p_grant_id bigint, p_claw_target bigint, p_freeze_target bigint)
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

-- Debt that was forgiven after other tokens had already repaid it (a refund that failed, a dispute
-- won after a loss was recorded) leaves the account owed: Σ(debt_incurred - debt_repaid) < 0. Gives the
-- repaid tokens back, to live grants latest-expiring first. Repeats while giving back settles debt
-- of the receiving grant itself. The caller holds the balance lock.
create function billing_internal.return_repaid_debt(p_account_id uuid) returns void
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

-- Writes the head grant's authoritative remaining back into token_grants and clears the head, so
-- the grant rows are exact. The caller holds the balance lock and recomputes the balance afterwards.
create function billing_internal.flush_head(p_account_id uuid) returns void
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

-- Recomputes the account's balance row from the ledger, after covering debt with spendable tokens (or
-- giving back tokens that repaid debt since forgiven), and picks the new head of the burn order.
-- The caller holds the balance lock and has settled expired grants and holds.
create function billing_internal.recompute_balance(p_account_id uuid) returns billing.balances
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

-- Locks the account's balance row (creating it when p_create), flushes the head grant, and settles
-- what is due: holds past their TTL go back to their grants (and to their member's spend limit),
-- grants past expiry expire, debt is covered, the row is recomputed. Returns the row, or NULL when
-- the account has none and p_create is false. The head stays flushed: while a head is set only the fast path may write grant rows, so
-- every caller recomputes the balance (which sets the head again) as its last write.
create function billing_internal.lock_and_settle(p_account_id uuid, p_create boolean) returns billing.balances
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

-- Spendable tokens now, without writing: the cached balance unless something expired since the
-- last settle, in which case the grants and holds are read directly. It runs with the caller's
-- rights: a team member who cannot see other members' holds counts fewer tokens back, never more.
create function billing_internal.spendable_now(p_account_id uuid) returns bigint
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

-- ---------------------------------------------------------------------------------------------
-- Public functions
-- ---------------------------------------------------------------------------------------------

-- Who may read p_user_id's balance: raises 42501 for anon and for a user asking about someone
-- else, 22023 for NULL. get_balance calls it only for API roles and NULL.
create function billing_internal.check_balance_reader(p_user_id uuid) returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  perform billing_internal.require_access(p_user_id);
  if p_user_id is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be NULL';
  end if;
end
$$;

-- Whether a call must run its checks (src/sql_api/call.rs, the rules in pg_billing_core::call), the
-- first test of the hot paths: true unless a caller that is not a browser passes valid arguments
-- (consume_tokens, reserve_tokens) or asks about a personal account (get_balance). One call, where the
-- same rules as a PL/pgSQL expression cost a set-up of up to eight functions in every transaction.
-- Rust that runs no SQL: no SET search_path (a SET costs every call a GUC save and restore).
create function billing_internal.spend_needs_checks(p_user_id uuid, p_amount bigint, p_idempotency_key text,
                                                    p_metadata jsonb) returns boolean
language c stable parallel safe as 'MODULE_PATHNAME', 'spend_needs_checks';
create function billing_internal.read_needs_checks(p_user_id uuid, p_account_id uuid) returns boolean
language c stable parallel safe as 'MODULE_PATHNAME', 'read_needs_checks';

-- PL/pgSQL, SECURITY INVOKER, no SET: PostgreSQL never inlines a scalar SQL function whose body
-- reads a table, and a non-inlined SQL function is planned again on every call (docs/design.md,
-- bench/results/latest.md); PL/pgSQL keeps its plan for the session. Without a pinned
-- search_path every function, operator and type is qualified (tests/integration/test_linter.py
-- checks it). It runs with the caller's rights: row-level security limits `authenticated` to its
-- own row, and the explicit check adds the 42501 the contract promises.
create function billing.get_balance(p_user_id uuid, p_account_id uuid default null) returns bigint
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

-- The original result of a consume whose idempotency key was used before, or PT409.
create function billing_internal.consume_replay(p_account_id uuid, p_member uuid, p_amount bigint, p_key text)
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

create function billing.consume_tokens(
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

-- Inserts a grant once per (kind, reference). Returns its id and whether this call inserted it
-- (false: the reference was granted before). Caller holds the balance lock and recomputes after.
create function billing_internal.insert_grant(
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

create function billing.grant_purchase(
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

-- Holds p_amount of the account for p_user_id: reserve_tokens, and reserve_llm_usage with the
-- prices it keeps in p_metadata.
create function billing_internal.hold(p_user_id uuid, p_amount bigint, p_idempotency_key text, p_ttl interval,
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

create function billing.reserve_tokens(
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

-- Locks the reservation's account and returns the reservation after settling (so a hold past its
-- TTL reads as expired). PT404 when it does not exist or belongs to someone the caller cannot act for.
create function billing_internal.lock_reservation(p_reservation_id uuid) returns billing.token_reservations
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

-- Charges p_actual_amount of a held reservation and releases the rest: commit_reservation, and
-- commit_llm_usage with the usage row's metadata (NULL: the reservation's).
create function billing_internal.commit_hold(p_reservation_id uuid, p_actual_amount bigint, p_metadata jsonb)
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

create function billing.commit_reservation(p_reservation_id uuid, p_actual_amount bigint)
returns table (usage_id bigint, tokens_charged bigint, tokens_released bigint, balance_after bigint, replayed boolean)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin  -- PL/pgSQL keeps the plan (a SQL function with a SET clause is planned again on every call)
  return query select * from billing_internal.commit_hold(p_reservation_id, p_actual_amount, null);
end
$$;
comment on function billing.commit_reservation(uuid, bigint) is
  'Charges the actual amount (<= held) of a reservation and releases the rest.';

create function billing.release_reservation(p_reservation_id uuid)
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

-- Releases every hold a member has on an account (the member is being removed). The caller holds
-- the account's lock and recomputes the balance. Returns the tokens released.
create function billing_internal.release_member_holds(p_account_id uuid, p_user_id uuid) returns bigint
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

-- Maintenance for pg_cron: settles every account with something due (expired holds and grants).
-- Accounts whose balance row is locked by a running transaction are skipped; they settle lazily.
create function billing.run_maintenance(p_limit integer default 10000) returns integer
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

-- The account's balance crossed one of its alert levels (balances.alert_below / alert_above) in
-- this transaction: its automations run at commit (constraint trigger alert_checks_run), once
-- however often it crosses. Only crossings write here, so an account without automations, or
-- one that crosses nothing, costs nothing at commit.
create function billing_internal.queue_alert_check(p_account_id uuid) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  insert into billing.alert_checks (account_id) values (p_account_id) on conflict (account_id) do nothing
$$;

-- Alert levels of an account, unless they are those already; queues a check when the balance is
-- across a new level already (auto top-up turned on below its threshold).
create function billing_internal.set_alert_levels(p_account_id uuid, p_levels bigint[]) returns void
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

-- At commit of a transaction that left an account's balance across one of its alert levels: the
-- automations (sql/outbox.sql) see the balance as the transaction ends, under the balance lock the
-- transaction holds. SECURITY DEFINER: a deferred trigger runs as whoever commits, here a caller of
-- consume_tokens.
create function billing_internal.run_alert_check() returns trigger
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
create constraint trigger alert_checks_run after insert on billing.alert_checks
  deferrable initially deferred for each row
  execute function billing_internal.run_alert_check();

-- Settings of an account's automations changed: the alerts are armed against the balance as it is
-- (a balance already below a threshold is not a crossing: no event), and the account's alert
-- levels follow at once (its balance row is created if it has none yet). BEFORE the row is
-- written, so it stores the armed flags.
create function billing_internal.settings_changed() returns trigger
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
create trigger account_settings_levels
  before insert or delete or update of low_balance_threshold, auto_topup_price_id, auto_topup_threshold,
                                       auto_topup_monthly_limit, topup_disabled_at on billing.account_settings
  for each row execute function billing_internal.settings_changed();
