-- pg_billing: the outbox (events for the world outside) and the automations that write to it.
--
-- Every event is written in the transaction of its cause, once per (account, dedupe_key): a
-- rolled-back transaction leaves none, and a cause applied twice (a webhook redelivered) writes
-- one. Consumers (service only) claim events with SKIP LOCKED and a visibility timeout, then
-- acknowledge them, or give them back with an error and a delay; a claim that is neither comes
-- back when its timeout passes. Delivery is at least once: a consumer that crashes after acting and
-- before acknowledging sees the event again, so its payload carries the dedupe key to act on once.
-- NOTIFY billing_outbox is sent at commit whenever a transaction wrote events.
--
-- Automations (billing.account_settings, accounts with a row only): balance.low once per crossing
-- below the threshold (re-armed when the balance rises back to it), balance.depleted once per
-- reaching 0 (re-armed above 0), and auto top-up: topup.requested when the balance is below the
-- top-up threshold, at most once per cooldown and auto_topup_monthly_limit times per calendar month
-- (UTC), stopped (topup.disabled) after 3 failed top-up payments in a row. They run at commit of
-- any transaction that moved the balance across a level (billing.alert_checks and its constraint
-- trigger, in sql/ledger.sql), on the balance as it ends.

-- The account of events that name none (a failed payment of an unknown customer).
create function billing_internal.no_account() returns uuid
language sql immutable parallel safe set search_path = pg_catalog, pg_temp as $$
  select '00000000-0000-0000-0000-000000000000'::uuid
$$;

-- Writes one event unless (account, dedupe_key) was written before; true when written.
create function billing_internal.emit(p_account_id uuid, p_event_type text, p_dedupe_key text, p_payload jsonb)
returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := coalesce(p_account_id, billing_internal.no_account());
begin
  insert into billing.outbox (account_id, event_type, dedupe_key, payload)
  values (v_account, p_event_type, p_dedupe_key,
          pg_catalog.jsonb_build_object('event_type', p_event_type, 'dedupe_key', p_dedupe_key, 'account_id', v_account)
          operator(pg_catalog.||) coalesce(p_payload, '{}'::jsonb))
  on conflict (account_id, dedupe_key) do nothing;
  return found;
end
$$;

create function billing_internal.notify_outbox() returns trigger
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  perform pg_catalog.pg_notify('billing_outbox', '');  -- one per transaction: PostgreSQL folds duplicates
  return null;
end
$$;
create trigger outbox_notify after insert on billing.outbox for each statement
  execute function billing_internal.notify_outbox();

-- The alert levels of an account's settings: {below, above}. A balance below `below` crosses an
-- armed level (balance.low, balance.depleted, or the top-up threshold while top-ups are on); a
-- balance at or above `above` re-arms a level. NULL: nothing to watch.
create function billing_internal.alert_levels(p_settings billing.account_settings) returns bigint[]
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select array[
    greatest(case when p_settings.low_balance_threshold is not null and p_settings.low_balance_armed
                  then p_settings.low_balance_threshold end,
             case when p_settings.depleted_armed then 1 end,
             case when p_settings.auto_topup_price_id is not null and p_settings.topup_disabled_at is null
                       and p_settings.auto_topup_monthly_limit > 0 then p_settings.auto_topup_threshold end),
    least(case when p_settings.low_balance_threshold is not null and not p_settings.low_balance_armed
               then p_settings.low_balance_threshold end,
          case when not p_settings.depleted_armed then 1 end)]
$$;

-- Runs the automations of an account whose balance is now p_spendable: re-arms, emits crossings,
-- requests a top-up. Returns the account's new alert levels (billing_internal.alert_levels), or
-- NULL to keep them. The caller holds the account's balance lock, so concurrent consumes are seen
-- one after the other.
create function billing_internal.run_automations(p_account_id uuid, p_spendable bigint) returns bigint[]
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_settings billing.account_settings;
  v_before billing.account_settings;
  v_month timestamptz := pg_catalog.date_trunc('month', pg_catalog.now() at time zone 'UTC') at time zone 'UTC';
  v_pack billing.token_packs;
  v_key text;
begin
  -- SKIP LOCKED: a settings row being changed right now (its change sets the levels itself) is not
  -- waited for, so no lock order can deadlock; the automations run again at the next change.
  select s.* into v_settings from billing.account_settings s where s.account_id = p_account_id for update skip locked;
  if not found then
    return case when exists (select 1 from billing.account_settings s where s.account_id = p_account_id)
                then null else array[null, null]::bigint[] end;
  end if;
  v_before := v_settings;
  -- re-arm what the balance rose back to
  if v_settings.low_balance_threshold is not null and not v_settings.low_balance_armed
     and p_spendable >= v_settings.low_balance_threshold then
    v_settings.low_balance_armed := true;
  end if;
  if not v_settings.depleted_armed and p_spendable > 0 then
    v_settings.depleted_armed := true;
  end if;
  -- crossings
  if v_settings.low_balance_armed and p_spendable < v_settings.low_balance_threshold then
    v_settings.alerts_sent := v_settings.alerts_sent + 1;
    perform billing_internal.emit(p_account_id, 'balance.low',
      pg_catalog.format('balance.low:%s:%s', p_account_id, v_settings.alerts_sent),
      pg_catalog.jsonb_build_object('balance', p_spendable, 'threshold', v_settings.low_balance_threshold));
    v_settings.low_balance_armed := false;
  end if;
  if v_settings.depleted_armed and p_spendable <= 0 then
    v_settings.alerts_sent := v_settings.alerts_sent + 1;
    perform billing_internal.emit(p_account_id, 'balance.depleted',
      pg_catalog.format('balance.depleted:%s:%s', p_account_id, v_settings.alerts_sent),
      pg_catalog.jsonb_build_object('balance', p_spendable));
    v_settings.depleted_armed := false;
  end if;
  -- auto top-up: below its threshold, after the cooldown, within the month's limit
  if v_settings.auto_topup_price_id is not null and v_settings.topup_disabled_at is null
     and p_spendable < v_settings.auto_topup_threshold
     and (v_settings.topup_requested_at is null
          or pg_catalog.now() >= v_settings.topup_requested_at + v_settings.auto_topup_cooldown) then
    if v_settings.topup_month_start is distinct from v_month then
      v_settings.topup_month_start := v_month;
      v_settings.topup_month_count := 0;
    end if;
    if v_settings.topup_month_count < v_settings.auto_topup_monthly_limit then
      select p.* into v_pack from billing.token_packs p where p.stripe_price_id = v_settings.auto_topup_price_id;
      v_settings.topup_requests := v_settings.topup_requests + 1;
      v_settings.topup_month_count := v_settings.topup_month_count + 1;
      v_settings.topup_requested_at := pg_catalog.now();
      v_key := pg_catalog.format('topup.requested:%s:%s', p_account_id, v_settings.topup_requests);
      -- metadata: what the PaymentIntent must carry for its webhook to grant the pack to this account
      perform billing_internal.emit(p_account_id, 'topup.requested', v_key, pg_catalog.jsonb_build_object(
        'request_id', v_key, 'balance', p_spendable, 'price_id', v_pack.stripe_price_id, 'quantity', 1,
        'tokens', v_pack.tokens, 'amount', v_pack.price_amount, 'currency', v_pack.currency,
        'customer', (select c.stripe_customer_id from billing.stripe_customers c where c.account_id = p_account_id),
        'metadata', pg_catalog.jsonb_build_object('pg_billing_topup', v_key, 'price_id', v_pack.stripe_price_id,
          'quantity', '1',
          case when exists (select 1 from billing.accounts a where a.id = p_account_id and a.kind = 'team')
               then 'account_id' else 'user_id' end, p_account_id)));
    end if;
  end if;
  if v_settings is distinct from v_before then
    v_settings.updated_at := pg_catalog.now();
    update billing.account_settings s set
      low_balance_armed = v_settings.low_balance_armed, depleted_armed = v_settings.depleted_armed,
      alerts_sent = v_settings.alerts_sent, topup_requests = v_settings.topup_requests,
      topup_requested_at = v_settings.topup_requested_at, topup_month_start = v_settings.topup_month_start,
      topup_month_count = v_settings.topup_month_count, updated_at = v_settings.updated_at
     where s.account_id = p_account_id;
  end if;
  return billing_internal.alert_levels(v_settings);
end
$$;

-- A top-up payment's outcome (payment_intent.succeeded / payment_failed with pg_billing_topup
-- metadata): success resets the failure count; the third failure in a row stops auto top-up.
create function billing_internal.topup_payment_outcome(p_account_id uuid, p_succeeded boolean, p_payment text,
                                                       p_reason text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_settings billing.account_settings;
begin
  perform 1 from billing.balances b where b.account_id = p_account_id for update;  -- the balance first, as everywhere
  select s.* into v_settings from billing.account_settings s where s.account_id = p_account_id for update;
  if not found then
    return;
  elsif p_succeeded then
    update billing.account_settings s set topup_failures = 0, updated_at = pg_catalog.now()
     where s.account_id = p_account_id and s.topup_failures <> 0;
    return;
  end if;
  update billing.account_settings s set topup_failures = s.topup_failures + 1, updated_at = pg_catalog.now(),
         topup_disabled_at = case when s.topup_failures + 1 >= 3 then coalesce(s.topup_disabled_at, pg_catalog.now())
                                  else s.topup_disabled_at end
   where s.account_id = p_account_id
  returning s.* into v_settings;
  if v_settings.topup_failures >= 3 and v_settings.auto_topup_price_id is not null then
    perform billing_internal.emit(p_account_id, 'topup.disabled',
      pg_catalog.format('topup.disabled:%s:%s', p_account_id, v_settings.topup_requests),
      pg_catalog.jsonb_build_object('failures', v_settings.topup_failures, 'last_payment', p_payment,
                                    'reason', p_reason));
  end if;
end
$$;

-- The events a Stripe event's effect calls for (inside the event's subtransaction: a failed event
-- writes none).
create function billing_internal.emit_stripe_events(p_event jsonb, p_effect jsonb) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := (p_effect ->> 'account_id')::uuid;
  v_kind text := p_event ->> 'kind';
  v_action text := p_effect ->> 'action';
  v_clawed bigint;
  v_frozen bigint;
begin
  if v_action = 'granted' and v_kind in ('checkout', 'invoice_paid', 'payment_intent') then
    perform billing_internal.emit(v_account, 'purchase.completed', 'purchase.completed:' || (p_event ->> 'object_id'),
      pg_catalog.jsonb_build_object('purchase_id', p_event ->> 'object_id',
        'kind', case v_kind when 'checkout' then 'checkout_session' when 'invoice_paid' then 'invoice'
                            else 'payment_intent' end,
        'tokens', p_effect -> 'tokens', 'grant_id', p_effect -> 'grant_id',
        'amount', coalesce(p_event -> 'amount_total', p_event -> 'amount_paid', p_event -> 'amount_received'),
        'currency', p_event -> 'currency', 'customer', p_event -> 'customer',
        'subscription', p_event -> 'subscription', 'topup', p_event -> 'topup',
        'stripe_event_id', p_event -> 'id'));
  elsif v_kind = 'subscription' and v_action = 'updated' then
    perform billing_internal.emit(v_account, 'subscription.changed', 'subscription.changed:' || (p_event ->> 'id'),
      pg_catalog.jsonb_build_object('subscription', p_event -> 'object_id', 'status', p_effect -> 'status',
        'price_id', p_event -> 'price_id',
        'plan', (select pg_catalog.to_jsonb(p.code) from billing.plans p where p.stripe_price_id = p_event ->> 'price_id'),
        'cancel_at_period_end', p_event -> 'cancel_at_period_end',
        'current_period_end', p_event -> 'current_period_end', 'stripe_event_id', p_event -> 'id'));
  elsif (v_kind = 'checkout' and v_action = 'payment_failed')
        or (v_kind = 'payment_intent' and p_event ->> 'type' = 'payment_intent.payment_failed')
        or v_kind = 'invoice_failed' then
    perform billing_internal.emit(v_account, 'payment.failed', 'payment.failed:' || (p_event ->> 'id'),
      pg_catalog.jsonb_build_object('object_id', p_event -> 'object_id', 'type', p_event -> 'type',
        'amount', coalesce(p_event -> 'amount_due', p_event -> 'amount', p_event -> 'amount_total'),
        'currency', p_event -> 'currency', 'customer', p_event -> 'customer',
        'subscription', p_event -> 'subscription', 'topup', p_event -> 'topup',
        'reason', coalesce(p_event -> 'failure_message', p_event -> 'failure_code'),
        'stripe_event_id', p_event -> 'id'));
  elsif v_kind in ('charge', 'refund', 'dispute') and v_action = 'adjusted' then
    select coalesce(pg_catalog.sum((g ->> 'clawed_back')::bigint), 0), coalesce(pg_catalog.sum((g ->> 'frozen')::bigint), 0)
      into v_clawed, v_frozen
      from pg_catalog.jsonb_array_elements(p_effect -> 'grants') g;
    if v_clawed <> 0 or v_frozen <> 0 then
      perform billing_internal.emit(v_account, 'refund.applied', 'refund.applied:' || (p_event ->> 'id'),
        pg_catalog.jsonb_build_object('cause', case v_kind when 'dispute' then 'dispute' else 'refund' end,
          'payment', p_event -> 'payment_key', 'object_id', p_event -> 'object_id', 'status', p_event -> 'status',
          'tokens_clawed_back', v_clawed, 'tokens_frozen', v_frozen, 'grants', p_effect -> 'grants',
          'stripe_event_id', p_event -> 'id'));
    end if;
  end if;
end
$$;

-- Claims up to p_limit events that are due, oldest first, hiding them from other consumers for
-- p_visibility: acknowledge each (ack_outbox) or give it back (nack_outbox) before then, or it is
-- claimable again. Concurrent consumers never receive the same event from one claim each.
create function billing.claim_outbox(p_limit integer default 100, p_visibility interval default '1 minute')
returns setof billing.outbox
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  perform billing_internal.require_service();
  if p_limit is null or p_limit < 1 or p_limit > 10000 then
    raise exception using errcode = '22023', message = 'p_limit must be 1 to 10000';
  elsif p_visibility is null or p_visibility <= interval '0' then
    raise exception using errcode = '22023', message = 'p_visibility must be positive';
  end if;
  return query
    update billing.outbox o
       set available_at = pg_catalog.clock_timestamp() + p_visibility, attempts = o.attempts + 1
     where (o.account_id, o.id) in (
             select c.account_id, c.id from billing.outbox c
              where c.acked_at is null and c.available_at <= pg_catalog.clock_timestamp()
              order by c.available_at, c.id
              limit p_limit
                for update skip locked)
    returning o.*;
end
$$;
comment on function billing.claim_outbox(integer, interval) is
  'Service: claims due outbox events (SKIP LOCKED), hidden from other consumers for p_visibility.';

-- Acknowledges events: done, never delivered again. Returns how many were still open.
create function billing.ack_outbox(p_ids bigint[]) returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_count integer;
begin
  perform billing_internal.require_service();
  update billing.outbox o set acked_at = pg_catalog.clock_timestamp()
   where o.id = any (p_ids) and o.acked_at is null;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;
comment on function billing.ack_outbox(bigint[]) is 'Service: marks outbox events done.';

-- Gives an event back: claimable again after p_retry_in, with the error kept. False when it was
-- acknowledged already (or does not exist).
create function billing.nack_outbox(p_id bigint, p_error text, p_retry_in interval default '1 minute')
returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  perform billing_internal.require_service();
  if p_retry_in is null or p_retry_in < interval '0' then
    raise exception using errcode = '22023', message = 'p_retry_in must be >= 0';
  end if;
  update billing.outbox o set available_at = pg_catalog.clock_timestamp() + p_retry_in,
         last_error = pg_catalog.left(p_error, 2000)
   where o.id = p_id and o.acked_at is null;
  return found;
end
$$;
comment on function billing.nack_outbox(bigint, text, interval) is
  'Service: gives an outbox event back, claimable again after p_retry_in, with its error.';

-- Deletes acknowledged events older than p_keep, at most p_limit (run_maintenance calls it).
create function billing_internal.purge_outbox(p_keep interval, p_limit integer) returns integer
language sql set search_path = pg_catalog, pg_temp as $$
  with gone as (
    delete from billing.outbox o
     where (o.account_id, o.id) in (select x.account_id, x.id from billing.outbox x
                                     where x.acked_at < pg_catalog.now() - p_keep limit p_limit)
    returning 1)
  select pg_catalog.count(*)::integer from gone
$$;
