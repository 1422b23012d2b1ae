-- Benchmark data: 10,000 users with effectively unlimited tokens in pg_billing, and the same users in
-- the baselines people write by hand (schema bench). User n has uuid 00000000-0000-4000-8000-<n>.
create schema bench;
create function bench.uid(n int) returns uuid language sql immutable parallel safe
  as $$ select ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;

-- (a)/(b)/(c) baselines: a balance column and a usage ledger, as a hand-written app would have them.
create table bench.accounts (user_id uuid primary key, tokens bigint not null check (tokens >= 0));
create table bench.usage (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  tokens bigint not null,
  idempotency_key text,
  metadata jsonb not null default '{}',
  created_at timestamptz not null default now()
);
create index on bench.usage (user_id, created_at);
create unique index on bench.usage (user_id, idempotency_key) where idempotency_key is not null;

-- (c) the usual hand-written RPC: lock, check, update, insert (SECURITY INVOKER: callable only by
-- roles that may write the tables, e.g. a backend).
create function bench.consume_plpgsql(p_user uuid, p_amount bigint, p_key text default null)
returns bigint language plpgsql as $$
declare v bigint;
begin
  if p_key is not null and exists (select 1 from bench.usage where user_id = p_user and idempotency_key = p_key) then
    return (select tokens from bench.accounts where user_id = p_user);
  end if;
  select tokens into v from bench.accounts where user_id = p_user for update;
  if v is null or v < p_amount then
    raise exception 'insufficient tokens' using errcode = 'P0001';
  end if;
  update bench.accounts set tokens = tokens - p_amount where user_id = p_user;
  insert into bench.usage (user_id, tokens, idempotency_key) values (p_user, p_amount, p_key);
  return v - p_amount;
end $$;

-- (c) as a Supabase RPC that signed-in users may call: it must write tables they cannot, so
-- SECURITY DEFINER, and Supabase's docs and linter ask for a pinned search_path ('' and qualified
-- names). The body is (c)'s, copied from the catalog.
do $$
begin
  execute format('create function bench.consume_plpgsql_definer(p_user uuid, p_amount bigint, p_key text default null)'
                 ' returns bigint language plpgsql security definer set search_path = '''' as %L',
                 (select prosrc from pg_proc where oid = 'bench.consume_plpgsql(uuid, bigint, text)'::regprocedure));
end $$;

-- (c) with a key, made safe for a retry that races the first call: (c) looks the key up before it
-- locks, so a racing retry passes the lookup and fails on the unique index (23505) instead of getting
-- the first call's result. Safe: lock first, insert the usage row unless the key exists (ON CONFLICT),
-- debit only if it was inserted. Measured in instructions only (bench/instructions.py): what the
-- contract's replay rule costs a hand-written RPC.
create function bench.consume_plpgsql_safe_key(p_user uuid, p_amount bigint, p_key text)
returns bigint language plpgsql as $$
declare v bigint; v_id bigint;
begin
  select tokens into v from bench.accounts where user_id = p_user for update;
  if v is null or v < p_amount then
    raise exception 'insufficient tokens' using errcode = 'P0001';
  end if;
  insert into bench.usage (user_id, tokens, idempotency_key) values (p_user, p_amount, p_key)
  on conflict (user_id, idempotency_key) where idempotency_key is not null do nothing
  returning id into v_id;
  if v_id is null then
    return v;  -- the key was used before: nothing charged
  end if;
  update bench.accounts set tokens = tokens - p_amount where user_id = p_user;
  return v - p_amount;
end $$;

-- (b) inside the leanest PL/pgSQL function (invoker, no SET, no checks): what any function-based API
-- costs on top of (b). Not a baseline with a target; it shows where the gap to (b) comes from.
create function bench.consume_cte_fn(p_user uuid, p_amount bigint) returns bigint language plpgsql as $$
declare v bigint;
begin
  with d as (update bench.accounts set tokens = tokens - p_amount where user_id = p_user and tokens >= p_amount
             returning user_id, tokens)
  insert into bench.usage (user_id, tokens) select user_id, p_amount from d returning id into v;
  return v;
end $$;

-- The primary-key lookup inside the leanest PL/pgSQL function: what any function-based read costs
-- on top of the lookup (get_balance's floor as a PL/pgSQL function).
create function bench.pk_lookup_fn(p_user uuid) returns bigint language plpgsql stable as $$
declare v bigint;
begin
  select tokens into v from bench.accounts where user_id = p_user;
  return v;
end $$;

insert into bench.accounts select bench.uid(n), 1000000000000 from generate_series(1, 10000) n;
select count(*) from (select billing.grant_purchase(bench.uid(n), 1000000000000, 'bench-' || n)
                        from generate_series(1, 10000) n) g;

-- One team account (bench.team()) whose 8 members are users 20001..20008, each with a daily spend
-- limit they never reach (so the limit is checked and counted on every consume); and the same in
-- a hand-written RPC: lock the account, check the member and their limit, count, debit, log.
create function bench.team() returns uuid language sql immutable as $$ select bench.uid(900001) $$;
insert into billing.accounts (id, name) values (bench.team(), 'bench team');
select count(*) from (select billing.add_account_member(bench.team(), bench.uid(n), case when n = 20001 then 'owner' else 'member' end,
                                                        1000000000000, 'day')
                        from generate_series(20001, 20008) n) m;
select count(*) from billing.grant_purchase(null, 1000000000000, 'bench-team', p_account_id => bench.team());
create table bench.members (account_id uuid, user_id uuid, spend_limit bigint, period_start timestamptz,
                            period_spent bigint not null default 0, primary key (account_id, user_id));
insert into bench.accounts values (bench.team(), 1000000000000);
insert into bench.members select bench.team(), bench.uid(n), 1000000000000 from generate_series(20001, 20008) n;
create function bench.consume_team_plpgsql(p_user uuid, p_account uuid, p_amount bigint)
returns bigint language plpgsql as $$
declare v bigint; m bench.members; p timestamptz := date_trunc('day', now());
begin
  select tokens into v from bench.accounts where user_id = p_account for update;
  select * into m from bench.members where account_id = p_account and user_id = p_user;
  if not found then
    raise exception 'not a member' using errcode = '42501';
  end if;
  if m.spend_limit is not null and (case when m.period_start = p then m.period_spent else 0 end) + p_amount > m.spend_limit then
    raise exception 'member spend limit reached' using errcode = 'P0001';
  end if;
  update bench.members set period_start = p, period_spent = case when period_start = p then period_spent else 0 end + p_amount
   where account_id = p_account and user_id = p_user;
  if v is null or v < p_amount then
    raise exception 'insufficient tokens' using errcode = 'P0001';
  end if;
  update bench.accounts set tokens = tokens - p_amount where user_id = p_account;
  insert into bench.usage (user_id, tokens) values (p_account, p_amount);
  return v - p_amount;
end $$;
-- Users 30001..40000 subscribe to plan 'bench-limited'; bench/run.py gives that plan one rate limit
-- (far above what a run uses) for the runs that measure a consume under a limit.
insert into billing.plans (code, stripe_price_id, tokens_per_period) values ('bench-limited', 'price_bench_limited', 1);
insert into billing.user_subscriptions (stripe_subscription_id, account_id, plan_id, status, last_event_created,
                                        last_event_id)
select 'sub_bench_' || n, bench.uid(n), (select id from billing.plans where code = 'bench-limited'), 'active', now(),
       'evt_bench'
  from generate_series(30001, 40000) n;
select count(*) from (select billing.grant_purchase(bench.uid(n), 1000000000000, 'bench-' || n)
                        from generate_series(30001, 40000) n) g;
-- Users 40001..50000 have balance alerts configured (low at 1,000 tokens, depleted): the cost of
-- watching a balance that does not cross.
select count(*) from (select billing.grant_purchase(bench.uid(n), 1000000000000, 'bench-' || n)
                        from generate_series(40001, 50000) n) g;
insert into billing.account_settings (account_id, low_balance_threshold)
select bench.uid(n), 1000 from generate_series(40001, 50000) n;
-- Signature baseline: Stripe's scheme in SQL on pgcrypto's hmac(), as people write it.
create extension if not exists pgcrypto;
create function bench.verify_stripe_signature_sql(p_payload text, p_header text, p_secret text, p_tolerance int default 300)
returns boolean language sql stable as $$
  with parts as (
    select split_part(item, '=', 1) as k, split_part(item, '=', 2) as v
      from unnest(string_to_array(p_header, ',')) item
  ), t as (select v::bigint as ts from parts where k = 't' limit 1)
  select coalesce((select exists (
      select 1 from parts, t
       where parts.k = 'v1'
         and parts.v = encode(hmac(t.ts || '.' || p_payload, p_secret, 'sha256'), 'hex'))
     and (p_tolerance = 0 or (select ts from t) >= extract(epoch from now())::bigint - p_tolerance)), false)
$$;

create table bench.payloads (name text primary key, payload text, header text);
-- Webhook bodies reach the function as uncompressed bind parameters: store them out of line but not
-- compressed, so neither side measures pglz decompression.
alter table bench.payloads alter column payload set storage external;
