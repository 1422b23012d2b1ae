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

create function billing._raise_unprocessable(p_message text, p_detail text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT422', message = p_message, detail = coalesce(p_detail, ''),
    hint = 'Fix the catalog or the customer link; Stripe retries the delivery.';
end
$$;

-- The signing secrets to try: Supabase Vault secrets named stripe_webhook_secret or
-- stripe_webhook_secret_<suffix> (rotation), else active rows of billing.webhook_secrets.
create function billing._webhook_secrets() returns text[]
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
create function billing._event_user(p_event jsonb) returns uuid
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
create function billing._link_customer(p_user_id uuid, p_customer text) returns text
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
create function billing._apply_checkout(p_event jsonb) returns jsonb
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
create function billing._apply_invoice_paid(p_event jsonb) returns jsonb
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
create function billing._apply_subscription(p_event jsonb) returns jsonb
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
create function billing._claw_back(p_grant_id bigint, p_target bigint) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_g billing.token_grants;
  v_split bigint[];  -- {from_remaining, from_frozen, debt}: billing._claw_back_split (pg_billing_core::ledger)
begin
  select g.* into v_g from billing.token_grants g where g.id = p_grant_id;
  v_split := billing._claw_back_split(v_g.tokens, v_g.remaining, v_g.frozen, v_g.clawed_back, v_g.debt_incurred, p_target);
  if v_split is null then
    raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
      detail = pg_catalog.format('grant %s cannot be clawed back to %s tokens', p_grant_id, p_target);
  end if;
  if v_split[1] + v_split[2] + v_split[3] > 0 then
    update billing.token_grants g
       set remaining = g.remaining - v_split[1],
           frozen = g.frozen - v_split[2],
           clawed_back = g.clawed_back + v_split[1] + v_split[2],
           debt_incurred = g.debt_incurred + v_split[3]
     where g.id = p_grant_id;
  end if;
  return pg_catalog.jsonb_build_object('grant_id', p_grant_id, 'clawed_back', v_split[1] + v_split[2], 'debt', v_split[3]);
end
$$;

-- Refunds claw back the refunded share (amount_refunded / amount, cumulative, rounded down in the
-- customer's favour) of every grant that payment bought.
create function billing._apply_refund(p_event jsonb) returns jsonb
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
    v_effects := v_effects || billing._claw_back(v_g.id, billing._refund_share(v_g.tokens, v_amount, v_refunded));
    perform billing._recompute_balance(v_g.user_id);
    v_user := v_g.user_id;
  end loop;
  return pg_catalog.jsonb_build_object('user_id', v_user, 'action',
    case when v_user is null then 'no_grant_for_payment' else 'clawed_back' end, 'grants', v_effects);
end
$$;

-- Disputes: created freezes what is left of the payment's grants; closed as lost claws the whole
-- grant back (spent tokens become debt); won (or warning_closed) releases the frozen tokens.
create function billing._apply_dispute(p_event jsonb) returns jsonb
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

create function billing.handle_stripe_webhook(
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
