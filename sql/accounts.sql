-- pg_billing: accounts that pay and members that spend (team billing).
--
-- A user's personal account has id = the user's id and needs no row: every call without
-- p_account_id works on it, exactly as before accounts existed. A team account has a row in
-- billing.accounts and members in billing.account_members, each with a role and an optional spend
-- limit per calendar period in UTC: a day, a week from Monday 00:00, a month from the 1st.
-- Owners manage everyone; admins manage members (not owners or admins); a member may leave; an
-- account keeps at least one owner. Service callers manage any account.
--
-- Every change of an account's members locks the account's balance row first, as every ledger
-- writer does (sql/ledger.sql), so a member removed by a committed transaction spends nothing more.
--
-- SQLSTATEs: 42501 not allowed (not a member; not an owner or admin), 22023 invalid argument,
-- PT404 no such team account, PT409 an account needs an owner.

-- The account a ledger call works on: p_account_id, or the personal account of p_user_id when it
-- is NULL or p_user_id itself. 22023 for a NULL user without an account, or an account id that is
-- not a team account.
create function billing_internal.payer(p_user_id uuid, p_account_id uuid) returns uuid
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

-- p_user_id's membership of team account p_account_id, or 42501. Runs with the caller's rights: a
-- signed-in user reads their own membership row.
create function billing_internal.require_member(p_account_id uuid, p_user_id uuid) returns billing.account_members
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

-- The start of the calendar period (UTC) a spend limit counts in; NULL for no period.
-- PL/pgSQL, like every helper a consume calls: a SQL function with a SET clause is not inlined and
-- is planned again on every call.
create function billing_internal.limit_period_start(p_period text) returns timestamptz
language plpgsql stable parallel safe set search_path = pg_catalog, pg_temp as $$
begin
  return pg_catalog.date_trunc(p_period, pg_catalog.now(), 'UTC');
end
$$;

-- Counts p_amount in a member's spending of the current period (a new period starts from 0), or
-- raises 42501 when p_user_id is not a member, or PT402 whose DETAIL starts with 'member limit'
-- when the spending would exceed the member's spend limit. Returns the period's start. The caller
-- holds the account's lock. One UPDATE (a team consume runs this on every call); the period start
-- is billing_internal.limit_period_start's, written out so no function call is made per row.
create function billing_internal.charge_member(p_account_id uuid, p_user_id uuid, p_amount bigint) returns timestamptz
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

-- PT402 for a member's call of p_amount that took their period spending to p_spent, over p_limit.
create function billing_internal.raise_member_limit(p_amount bigint, p_spent bigint, p_limit bigint, p_period text)
returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT402', message = 'member spend limit reached',
    detail = pg_catalog.format('member limit: requested %s, spent %s of %s this %s', p_amount, p_spent - p_amount,
                               p_limit, p_period),
    hint = 'An owner or admin of the account can raise the limit; it resets when the period ends (UTC).';
end
$$;

-- Gives back p_amount of a member's spending that a hold counted (released, expired, or committed
-- for less), unless the period it counted in has ended. No-op for the account's own user (NULL).
create function billing_internal.refund_member(p_account_id uuid, p_user_id uuid, p_amount bigint,
                                               p_period_start timestamptz) returns void
language sql set search_path = pg_catalog, pg_temp as $$
  update billing.account_members m set period_spent = greatest(0, m.period_spent - p_amount)
   where p_user_id is not null and p_amount > 0 and m.account_id = p_account_id and m.user_id = p_user_id
     and m.period_start is not distinct from p_period_start
$$;

-- The accounts the signed-in user reads as a member (their personal account included), and those
-- they manage as owner or admin: for row-level security policies. SECURITY DEFINER, so the policy
-- on billing.account_members can use them without recursing into itself.
create function billing_internal.member_account_ids() returns uuid[]
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select billing_internal.auth_uid() operator(pg_catalog.||) coalesce(pg_catalog.array_agg(m.account_id), '{}'::uuid[])
    from billing.account_members m where m.user_id = billing_internal.auth_uid()
$$;

create function billing_internal.managed_account_ids() returns uuid[]
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select billing_internal.auth_uid() operator(pg_catalog.||) coalesce(pg_catalog.array_agg(m.account_id), '{}'::uuid[])
    from billing.account_members m where m.user_id = billing_internal.auth_uid() and m.role in ('owner', 'admin')
$$;

-- The role the caller acts with on a team account: 'owner' for service callers, the signed-in
-- user's role, or 42501 for anyone else. PT404 when the account does not exist.
create function billing_internal.manager_role(p_account_id uuid) returns text
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

create function billing_internal.create_account(p_name text, p_owner uuid) returns uuid
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

-- Creates a team account owned by p_owner: the signed-in user by default; the backend names anyone.
create function billing.create_team_account(p_name text, p_owner uuid default null) returns uuid
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

-- Adds a member, or changes a member's role and spend limit. Owners (and service) may set any role;
-- admins manage members only. An account keeps at least one owner.
create function billing.add_account_member(
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

-- Removes a member: their held reservations are released and they spend nothing more, at once.
-- Owners (and service) remove anyone, admins remove members, and a member may leave.
create function billing.remove_account_member(p_account_id uuid, p_user_id uuid) returns boolean
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

-- PT409 unless the account has an owner other than p_user_id.
create function billing_internal.keep_an_owner(p_account_id uuid, p_user_id uuid) returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if not exists (select 1 from billing.account_members m
                  where m.account_id = p_account_id and m.role = 'owner' and m.user_id <> p_user_id) then
    raise exception using errcode = 'PT409', message = 'an account needs an owner',
      hint = 'Make another member an owner first.';
  end if;
end
$$;
