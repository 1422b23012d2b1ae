-- pg_billing 0.1.0 -> 0.2.0
-- Every schema change after the 0.1.0 release lands here as well as in the sql/*.sql files that a
-- fresh install runs; tests/integration/test_upgrade.py proves both give the same schema.

-- run_maintenance(NULL) meant "no limit"; it now means the default batch size.
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
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;
comment on function billing.run_maintenance(integer) is
  'Expires grants and holds that are due; schedule with pg_cron, e.g. every minute.';

-- Re-apply privileges last, so functions added by this script get their grants.
select billing.setup_roles();
