-- pg_billing: Stripe webhooks applied inside the database, one transaction per delivery.
--
-- billing.handle_stripe_webhook verifies the signature (Rust: billing_internal.stripe_signature_check),
-- decodes the event (Rust: billing_internal.decode_stripe_event, every API shape), records it in the inbox
-- billing.payment_transactions exactly once and applies it. This file translates Stripe's events
-- into facts and ledger calls; every change of a grant's counters is a function of ledger.sql.
--
-- The money rules (README "Webhooks"):
-- * Tokens come from the catalog by price id, never from the event. A Checkout Session grants only
--   when its amount_subtotal is the catalog price times the quantity, in the catalog currency.
-- * A subscription period holds one allowance: the largest plan allowance among the period's paid
--   invoices (create, cycle, and plan changes, which only top it up). Each invoice is credited with
--   what it added, in the order Stripe created them.
-- * Refunds, disputes and invoice payments are facts about a payment, recorded whether or not the
--   grant they affect exists yet. A grant's claw-back and freeze are recomputed from all facts of
--   the payments behind it (billing_internal.stripe_targets), so events applied in any order, and any
--   number of times, end in the same balances.
-- * Tokens go to an account: a team account named by metadata.account_id (the backend sets it after
--   checking the buyer is an owner or admin; the user in the event must be one), else the user's
--   personal account; a Stripe customer and a subscription belong to one account.
-- * An event that cannot be applied yet (unknown price or user, amount mismatch) is kept with
--   status 'failed' and its error; a redelivery, a new customer link, or
--   billing.reprocess_failed_events() applies it again.
--
-- Locks: the Stripe objects an event touches (invoice, then payment; billing_internal.lock_stripe_object)
-- before the account's balance row, so an invoice and its payment, or a purchase and a refund that
-- arrive at the same time, see each other.
--
-- SQLSTATEs raised to the caller: PT400 bad signature, PT500 no secret configured, 22023 not a
-- Stripe event. PT422 marks an event that cannot be applied yet: the delivery records it as failed.

create function billing_internal.raise_unprocessable(p_message text, p_detail text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  raise exception using errcode = 'PT422', message = p_message, detail = coalesce(p_detail, ''),
    hint = 'Fix the catalog or the customer link, then billing.reprocess_failed_events() (Stripe also redelivers).';
end
$$;

-- The signing secrets to try: Supabase Vault secrets named stripe_webhook_secret or
-- stripe_webhook_secret_<suffix> (rotation), else active rows of billing.webhook_secrets.
create function billing_internal.webhook_secrets() returns text[]
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

-- Orders the states of a Stripe object: terminal statuses (>= 100) can never be left. An event is
-- newer than the state it would replace when (terminal, created, rank, event id) is greater, so
-- events of the same `created` second apply in a deterministic order, whatever order they arrive in.
create function billing_internal.stripe_status_rank(p_object text, p_status text) returns integer
language sql immutable parallel safe set search_path = pg_catalog, pg_temp as $$
  select case p_object
    when 'subscription' then case p_status
      when 'incomplete' then 0 when 'trialing' then 1 when 'active' then 2 when 'past_due' then 3
      when 'unpaid' then 4 when 'paused' then 5 when 'canceled' then 100 when 'incomplete_expired' then 101 end
    when 'refund' then case p_status
      when 'pending' then 0 when 'requires_action' then 1 when 'succeeded' then 2
      when 'failed' then 100 when 'canceled' then 101 else 3 end
    when 'dispute' then case p_status
      when 'warning_needs_response' then 0 when 'warning_under_review' then 1 when 'needs_response' then 2
      when 'under_review' then 3 when 'won' then 100 when 'warning_closed' then 101 when 'prevented' then 102
      when 'lost' then 103 else 4 end
  end
$$;

-- Resolves the account an event pays: a team account named by metadata.account_id (a user named in
-- the event must be its owner or admin), else the user named by client_reference_id or
-- metadata.user_id (their personal account), else the linked Stripe customer's account, else the
-- subscription's account.
create function billing_internal.event_account(p_event jsonb) returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_ref text := p_event ->> 'client_reference_id';
  v_meta text := p_event ->> 'metadata_user_id';
  v_user uuid;
  v_account uuid;
begin
  if v_ref is not null and v_meta is not null and v_ref <> v_meta then
    perform billing_internal.raise_unprocessable('client_reference_id and metadata.user_id disagree',
      pg_catalog.format('%s vs %s', v_ref, v_meta));
  end if;
  begin
    v_user := coalesce(v_ref, v_meta)::uuid;
    v_account := (p_event ->> 'metadata_account_id')::uuid;
  exception when invalid_text_representation then
    perform billing_internal.raise_unprocessable('a user or account id in the event is not a uuid',
      pg_catalog.format('user %s, account %s', coalesce(v_ref, v_meta), p_event ->> 'metadata_account_id'));
  end;
  if v_account is not null then
    if not exists (select 1 from billing.accounts a where a.id = v_account and a.kind = 'team') then
      perform billing_internal.raise_unprocessable('metadata.account_id is not a team account', v_account::text);
    elsif v_user is not null and not exists (select 1 from billing.account_members m where m.account_id = v_account
                                                and m.user_id = v_user and m.role in ('owner', 'admin')) then
      perform billing_internal.raise_unprocessable('the user in the event is not an owner or admin of the account',
        pg_catalog.format('user %s, account %s', v_user, v_account));
    end if;
    return v_account;
  elsif v_user is not null then
    return v_user;
  end if;
  select c.account_id into v_account from billing.stripe_customers c where c.stripe_customer_id = p_event ->> 'customer';
  if v_account is null then
    select s.account_id into v_account from billing.user_subscriptions s
     where s.stripe_subscription_id = p_event ->> 'subscription';
  end if;
  return v_account;
end
$$;

-- Links a Stripe customer to an account; an existing, different link is kept (and reported).
create function billing_internal.link_customer(p_account_id uuid, p_customer text) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_customer is null or p_account_id is null then
    return 'none';
  end if;
  insert into billing.stripe_customers (account_id, stripe_customer_id) values (p_account_id, p_customer)
  on conflict do nothing;
  if found then
    return 'linked';
  elsif exists (select 1 from billing.stripe_customers c where c.account_id = p_account_id and c.stripe_customer_id = p_customer) then
    return 'already_linked';
  end if;
  return 'conflict_kept_existing';
end
$$;

-- Serializes the deliveries that touch one Stripe object (an invoice or a payment) for the rest of
-- the transaction. Lock order: invoice, then payment, then the account's balance row.
create function billing_internal.lock_stripe_object(p_id text) returns void
language sql volatile set search_path = pg_catalog, pg_temp as $$
  select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_billing.stripe'), pg_catalog.hashtext(p_id))
   where p_id is not null
$$;

-- Records that a payment exists, in a currency; PT422 when a fact names another currency.
create function billing_internal.note_payment(p_payment_key text, p_currency text) returns void
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_currency text;
begin
  insert into billing.stripe_payments as p (payment_key, currency) values (p_payment_key, p_currency)
  on conflict (payment_key) do update set currency = coalesce(p.currency, excluded.currency), updated_at = pg_catalog.now()
  returning p.currency into v_currency;
  if p_currency is not null and v_currency <> p_currency then
    perform billing_internal.raise_unprocessable('currency does not match the payment',
      pg_catalog.format('payment %s is in %s, the event in %s', p_payment_key, v_currency, p_currency));
  end if;
end
$$;

-- {claw_back, freeze} for a Stripe-funded grant, from every fact about the payments behind it:
-- per payment, taken = refunded (the larger of the charge's amount_refunded and the refunds known,
-- less refunds that failed or were canceled) + lost disputes, open = disputes still open; shares
-- of the captured amount (billing_internal.adjustment_targets, pg_billing_core::ledger).
create function billing_internal.stripe_targets(p_account_id uuid, p_grant_id bigint) returns bigint[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  with purchases as (
    -- what each purchase added to the grant, in the order Stripe created them
    select p.purchase_id, p.amount,
           greatest(0, p.allowance - coalesce(pg_catalog.max(p.allowance) over (
             order by p.purchased_at, p.purchase_id rows between unbounded preceding and 1 preceding), 0)) as tokens
      from billing.grant_purchases p where p.account_id = p_account_id and p.grant_id = p_grant_id
  ), shares as (
    select pu.tokens, pp.amount as weight,
           greatest(pu.amount, pg_catalog.sum(pp.amount) over (partition by pu.purchase_id))::bigint as purchase_weight,
           coalesce(sp.amount_captured, (select pg_catalog.sum(x.amount) from billing.purchase_payments x
                                          where x.payment_key = pp.payment_key))::bigint as captured,
           (greatest(0, greatest(coalesce(sp.refunded_reported, 0), coalesce(rf.issued, 0)) - coalesce(rf.failed, 0))
            + coalesce(dp.lost, 0))::bigint as taken,
           coalesce(dp.open, 0)::bigint as open
      from purchases pu
      join billing.purchase_payments pp on pp.purchase_id = pu.purchase_id
      left join billing.stripe_payments sp on sp.payment_key = pp.payment_key
      left join lateral (
        select pg_catalog.sum(r.amount) as issued,
               pg_catalog.sum(r.amount) filter (where billing_internal.stripe_status_rank('refund', r.status) >= 100) as failed
          from billing.stripe_refunds r where r.payment_key = pp.payment_key) rf on true
      left join lateral (
        select pg_catalog.sum(d.amount) filter (where d.status = 'lost') as lost,
               pg_catalog.sum(d.amount) filter (where billing_internal.stripe_status_rank('dispute', d.status) < 100) as open
          from billing.stripe_disputes d where d.payment_key = pp.payment_key) dp on true
  )
  select billing_internal.adjustment_targets(g.tokens, coalesce(a.tokens, '{}'), coalesce(a.weight, '{}'),
           coalesce(a.purchase_weight, '{}'), coalesce(a.captured, '{}'), coalesce(a.taken, '{}'), coalesce(a.open, '{}'))
    from billing.token_grants g,
         (select pg_catalog.array_agg(s.tokens) as tokens, pg_catalog.array_agg(s.weight) as weight,
                 pg_catalog.array_agg(s.purchase_weight) as purchase_weight, pg_catalog.array_agg(s.captured) as captured,
                 pg_catalog.array_agg(s.taken) as taken, pg_catalog.array_agg(s.open) as open
            from shares s) a
   where g.account_id = p_account_id and g.id = p_grant_id
$$;

-- Moves a Stripe-funded grant to its targets. The caller holds the account's balance lock.
create function billing_internal.settle_stripe_grant(p_account_id uuid, p_grant_id bigint) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_targets bigint[] := billing_internal.stripe_targets(p_account_id, p_grant_id);
begin
  if v_targets is null then
    raise exception using errcode = 'XX000', message = 'pg_billing ledger inconsistency',
      detail = pg_catalog.format('grant %s: Stripe facts give no adjustment targets', p_grant_id);
  end if;
  return billing_internal.adjust_grant(p_account_id, p_grant_id, v_targets[1], v_targets[2]);
end
$$;

-- Re-settles every grant a payment paid for (after a refund, dispute or link); 'recorded_pending'
-- when none exists yet: the facts wait for the purchase.
create function billing_internal.settle_payment(p_payment_key text) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_grant record;
  v_account uuid;
  v_effects jsonb := '[]'::jsonb;
begin
  for v_grant in
    select distinct gp.account_id, gp.grant_id
      from billing.purchase_payments pp
      join billing.grant_purchases gp on gp.purchase_id = pp.purchase_id
     where pp.payment_key = p_payment_key
     order by gp.account_id, gp.grant_id
  loop
    perform billing_internal.lock_and_settle(v_grant.account_id, true);
    v_effects := v_effects || billing_internal.settle_stripe_grant(v_grant.account_id, v_grant.grant_id);
    perform billing_internal.recompute_balance(v_grant.account_id);
    v_account := v_grant.account_id;
  end loop;
  return pg_catalog.jsonb_build_object('account_id', v_account, 'payment', p_payment_key,
    'action', case when v_account is null then 'recorded_pending' else 'adjusted' end, 'grants', v_effects);
end
$$;

-- A paid Checkout Session grants its token pack: tokens from the catalog by price id, only when
-- amount_subtotal is the catalog price times the quantity; idempotent per session id, so completed
-- and async_payment_succeeded grant once.
create function billing_internal.apply_checkout(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := billing_internal.event_account(p_event);
  v_pack billing.token_packs;
  v_quantity bigint := coalesce((p_event ->> 'quantity')::bigint, 1);
  v_payment text := p_event ->> 'payment_key';
  v_session text := p_event ->> 'object_id';
  v_paid bigint := coalesce((p_event ->> 'amount_total')::bigint, 0);
  v_link text;
  v_base jsonb;
  v_ins record;
  v_tokens numeric;
  v_adjusted jsonb;
begin
  if v_account is null then
    perform billing_internal.raise_unprocessable('checkout session has no user or account', v_session);
  end if;
  v_link := billing_internal.link_customer(v_account, p_event ->> 'customer');
  v_base := pg_catalog.jsonb_build_object('account_id', v_account, 'customer', v_link)
            || case when v_link = 'linked' then pg_catalog.jsonb_build_object('linked_customer', p_event ->> 'customer')
                    else '{}'::jsonb end;
  if p_event ->> 'mode' = 'subscription' then
    return v_base || '{"action": "linked_subscription_customer"}';
  elsif p_event ->> 'type' = 'checkout.session.async_payment_failed' then
    return v_base || '{"action": "payment_failed"}';
  elsif p_event ->> 'mode' is distinct from 'payment' then
    return v_base || '{"action": "ignored_mode"}';
  elsif coalesce(p_event ->> 'payment_status', '') not in ('paid', 'no_payment_required') then
    return v_base || '{"action": "awaiting_payment"}';
  end if;

  select p.* into v_pack from billing.token_packs p where p.stripe_price_id = p_event ->> 'price_id';
  if not found then
    perform billing_internal.raise_unprocessable('price is not a token pack in billing.token_packs',
      coalesce(p_event ->> 'price_id', 'metadata.price_id missing'));
  elsif v_pack.currency is distinct from p_event ->> 'currency' then
    perform billing_internal.raise_unprocessable('currency does not match the token pack',
      pg_catalog.format('pack %s, session %s', v_pack.currency, p_event ->> 'currency'));
  elsif v_quantity < 1 or v_quantity > 1000 then
    perform billing_internal.raise_unprocessable('quantity out of range (1 to 1000)', v_quantity::text);
  elsif (p_event ->> 'amount_subtotal')::numeric is distinct from v_pack.price_amount::numeric * v_quantity then
    perform billing_internal.raise_unprocessable('amount does not match the catalog',
      pg_catalog.format('session amount_subtotal %s, catalog %s x %s = %s', coalesce(p_event ->> 'amount_subtotal', 'missing'),
                        v_pack.price_amount, v_quantity, v_pack.price_amount::numeric * v_quantity));
  end if;
  v_tokens := v_pack.tokens::numeric * v_quantity;
  if v_tokens > 9223372036854775807 then
    perform billing_internal.raise_unprocessable('token amount overflows', v_tokens::text);
  end if;

  if v_payment is not null then
    perform billing_internal.lock_stripe_object(v_payment);
    perform billing_internal.note_payment(v_payment, v_pack.currency);
  end if;
  perform billing_internal.lock_and_settle(v_account, true);
  select * into v_ins from billing_internal.insert_grant(v_account, v_tokens::bigint, v_session, 'purchase', null,
    pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'quantity', v_quantity),
    v_payment, v_pack.stripe_price_id, v_paid, v_pack.currency);
  if v_ins.inserted then
    insert into billing.grant_purchases (account_id, purchase_id, grant_id, kind, allowance, amount, currency, purchased_at)
    values (v_account, v_session, v_ins.grant_id, 'checkout_session', v_tokens::bigint, v_paid, v_pack.currency,
            pg_catalog.to_timestamp(coalesce((p_event ->> 'object_created')::bigint, (p_event ->> 'created')::bigint)));
    if v_payment is not null then
      insert into billing.purchase_payments (purchase_id, payment_key, amount) values (v_session, v_payment, v_paid)
      on conflict do nothing;
    end if;
    v_adjusted := billing_internal.settle_stripe_grant(v_account, v_ins.grant_id); -- refunds or disputes that came first
  end if;
  perform billing_internal.recompute_balance(v_account);
  return v_base || pg_catalog.jsonb_build_object('action', case when v_ins.inserted then 'granted' else 'already_granted' end,
    'grant_id', v_ins.grant_id, 'tokens', case when v_ins.inserted then v_tokens end, 'adjusted', v_adjusted);
end
$$;

-- An off-session top-up (a PaymentIntent whose metadata has pg_billing_topup, created by the
-- consumer of a topup.requested event) grants its pack when it succeeds, like a Checkout Session:
-- tokens from the catalog, only when amount_received is the catalog price times the quantity, once
-- per PaymentIntent. A failure counts against the account's auto top-up (three in a row stop it).
-- PaymentIntents without that metadata (those of Checkout Sessions and invoices) are ignored.
create function billing_internal.apply_payment_intent(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid;
  v_pack billing.token_packs;
  v_quantity bigint := coalesce((p_event ->> 'quantity')::bigint, 1);
  v_payment text := p_event ->> 'object_id';
  v_paid bigint := coalesce((p_event ->> 'amount_received')::bigint, 0);
  v_ins record;
  v_tokens numeric;
  v_adjusted jsonb;
begin
  if p_event ->> 'topup' is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'not_a_top_up');
  end if;
  v_account := billing_internal.event_account(p_event);
  if v_account is null then
    perform billing_internal.raise_unprocessable('top-up payment has no user or account', v_payment);
  end if;
  if p_event ->> 'type' = 'payment_intent.payment_failed' then
    perform billing_internal.topup_payment_outcome(v_account, false, v_payment,
      coalesce(p_event ->> 'failure_code', p_event ->> 'failure_message'));
    return pg_catalog.jsonb_build_object('account_id', v_account, 'action', 'payment_failed', 'payment', v_payment);
  end if;
  select p.* into v_pack from billing.token_packs p where p.stripe_price_id = p_event ->> 'price_id';
  if not found then
    perform billing_internal.raise_unprocessable('price is not a token pack in billing.token_packs',
      coalesce(p_event ->> 'price_id', 'metadata.price_id missing'));
  elsif v_pack.currency is distinct from p_event ->> 'currency' then
    perform billing_internal.raise_unprocessable('currency does not match the token pack',
      pg_catalog.format('pack %s, payment %s', v_pack.currency, p_event ->> 'currency'));
  elsif v_quantity < 1 or v_quantity > 1000 then
    perform billing_internal.raise_unprocessable('quantity out of range (1 to 1000)', v_quantity::text);
  elsif v_paid::numeric is distinct from v_pack.price_amount::numeric * v_quantity then
    perform billing_internal.raise_unprocessable('amount does not match the catalog',
      pg_catalog.format('payment amount_received %s, catalog %s x %s = %s', v_paid, v_pack.price_amount, v_quantity,
                        v_pack.price_amount::numeric * v_quantity));
  end if;
  v_tokens := v_pack.tokens::numeric * v_quantity;
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, v_pack.currency);
  perform billing_internal.lock_and_settle(v_account, true);
  select * into v_ins from billing_internal.insert_grant(v_account, v_tokens::bigint, v_payment, 'purchase', null,
    pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'quantity', v_quantity, 'topup', p_event ->> 'topup'),
    v_payment, v_pack.stripe_price_id, v_paid, v_pack.currency);
  if v_ins.inserted then
    insert into billing.grant_purchases (account_id, purchase_id, grant_id, kind, allowance, amount, currency, purchased_at)
    values (v_account, v_payment, v_ins.grant_id, 'payment_intent', v_tokens::bigint, v_paid, v_pack.currency,
            pg_catalog.to_timestamp(coalesce((p_event ->> 'object_created')::bigint, (p_event ->> 'created')::bigint)));
    insert into billing.purchase_payments (purchase_id, payment_key, amount) values (v_payment, v_payment, v_paid)
    on conflict do nothing;
    v_adjusted := billing_internal.settle_stripe_grant(v_account, v_ins.grant_id);
  end if;
  perform billing_internal.recompute_balance(v_account);
  perform billing_internal.topup_payment_outcome(v_account, true, v_payment, null);
  return pg_catalog.jsonb_build_object('account_id', v_account,
    'action', case when v_ins.inserted then 'granted' else 'already_granted' end,
    'grant_id', v_ins.grant_id, 'tokens', case when v_ins.inserted then v_tokens end, 'adjusted', v_adjusted);
end
$$;

-- A subscription invoice whose payment failed moves no tokens: it is recorded (payment.failed in
-- the outbox) for the account of its subscription or customer.
create function billing_internal.apply_invoice_failed(p_event jsonb) returns jsonb
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  return pg_catalog.jsonb_build_object('account_id', billing_internal.event_account(p_event), 'action', 'payment_failed',
    'invoice', p_event ->> 'object_id', 'attempt_count', p_event -> 'attempt_count');
end
$$;

-- A paid subscription invoice credits its period: the plan line (a subscription line, not a
-- proration, whose price is a plan; for a plan change without one, the new plan's positive
-- proration line) names the plan and the period. The period's grant holds the largest allowance
-- of its paid invoices; an invoice paid with nothing adds nothing unless the plan says so.
create function billing_internal.apply_invoice_paid(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_invoice text := p_event ->> 'object_id';
  v_reason text := p_event ->> 'billing_reason';
  v_sub text := p_event ->> 'subscription';
  v_paid bigint := coalesce((p_event ->> 'amount_settled')::bigint, 0);
  v_payment text := p_event ->> 'payment_key';
  v_account uuid;
  v_owner uuid;
  v_line jsonb;
  v_plan_id bigint;
  v_plan billing.plans;
  v_allowance bigint;
  v_period_end timestamptz;
  v_grant bigint;
  v_ins record;
  v_created boolean := false;
  v_added bigint;
  v_expires timestamptz;
  v_adjusted jsonb;
begin
  if v_sub is null then
    return '{"action": "ignored", "reason": "not_a_subscription_invoice"}'::jsonb;
  elsif v_reason is null or v_reason not in ('subscription_create', 'subscription_cycle', 'subscription_update', 'subscription') then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_allowance_for_billing_reason',
                                         'billing_reason', v_reason);
  end if;
  v_account := billing_internal.event_account(p_event);
  if v_account is null then
    perform billing_internal.raise_unprocessable('invoice customer is not linked to a user or account', p_event ->> 'customer');
  end if;
  select l.line, p.id into v_line, v_plan_id
    from pg_catalog.jsonb_array_elements(p_event -> 'lines') with ordinality as l(line, ord)
    join billing.plans p on p.stripe_price_id = l.line ->> 'price'
   where ((l.line ->> 'proration')::boolean is not true and l.line ->> 'line_kind' <> 'invoiceitem')
      or (v_reason = 'subscription_update' and (l.line ->> 'proration')::boolean and (l.line ->> 'amount')::bigint > 0)
   order by (l.line ->> 'proration')::boolean, (l.line ->> 'period_end')::bigint desc, p.tokens_per_period desc, l.ord
   limit 1;
  if v_line is null then
    if v_reason = 'subscription_update' and not exists (
         select 1 from pg_catalog.jsonb_array_elements(p_event -> 'lines') l(line)
          where (l.line ->> 'amount')::bigint > 0
            and not exists (select 1 from billing.plans p where p.stripe_price_id = l.line ->> 'price')) then
      return pg_catalog.jsonb_build_object('account_id', v_account, 'action', 'no_plan_line', 'invoice', v_invoice);
    end if;
    perform billing_internal.raise_unprocessable('no line of the invoice is a plan in billing.plans',
      pg_catalog.format('invoice %s prices: %s%s', v_invoice,
        (select pg_catalog.string_agg(coalesce(l.line ->> 'price', 'none'), ', ')
           from pg_catalog.jsonb_array_elements(p_event -> 'lines') l(line)),
        case when (p_event ->> 'lines_has_more')::boolean then ' (more lines than the event lists)' else '' end));
  end if;
  select p.* into v_plan from billing.plans p where p.id = v_plan_id;
  if v_plan.currency is distinct from p_event ->> 'currency' then
    perform billing_internal.raise_unprocessable('currency does not match the plan',
      pg_catalog.format('plan %s, invoice %s', v_plan.currency, p_event ->> 'currency'));
  end if;
  v_period_end := pg_catalog.to_timestamp((v_line ->> 'period_end')::bigint);
  if v_period_end is null then
    perform billing_internal.raise_unprocessable('the plan line has no period', v_invoice);
  end if;
  v_allowance := case when v_paid > 0 or v_plan.grant_on_zero_amount then v_plan.tokens_per_period else 0 end;
  if v_allowance = 0 then
    return pg_catalog.jsonb_build_object('account_id', v_account, 'action', 'zero_amount', 'invoice', v_invoice,
                                         'plan', v_plan.code);
  end if;

  perform billing_internal.lock_stripe_object(v_invoice);
  if v_payment is not null then
    perform billing_internal.lock_stripe_object(v_payment);
    perform billing_internal.note_payment(v_payment, v_plan.currency);
  end if;
  perform billing_internal.lock_and_settle(v_account, true);
  select gp.grant_id, gp.account_id into v_grant, v_owner from billing.grant_purchases gp
   where gp.stripe_subscription_id = v_sub and gp.period_end = v_period_end
   order by gp.purchased_at, gp.purchase_id limit 1;
  if v_owner is distinct from v_account and v_owner is not null then
    perform billing_internal.raise_unprocessable('the subscription period is credited to another account',
      pg_catalog.format('subscription %s, period ending %s, invoice %s for account %s', v_sub, v_period_end, v_invoice,
                        v_account));
  elsif v_grant is null then
    select * into v_ins from billing_internal.insert_grant(v_account, v_allowance,
      v_sub || '@' || extract(epoch from v_period_end)::bigint, 'subscription',
      case when v_plan.rollover then null else v_period_end end,
      pg_catalog.jsonb_build_object('stripe_event_id', p_event ->> 'id', 'subscription', v_sub, 'plan', v_plan.code,
                                    'period_end', v_period_end),
      v_payment, v_plan.stripe_price_id, v_paid, v_plan.currency);
    v_grant := v_ins.grant_id;
    v_created := v_ins.inserted;
  end if;
  insert into billing.grant_purchases (account_id, purchase_id, grant_id, kind, allowance, amount, currency, purchased_at,
                                       stripe_subscription_id, period_end, plan_id)
  values (v_account, v_invoice, v_grant, 'invoice', v_allowance, v_paid, v_plan.currency,
          pg_catalog.to_timestamp(coalesce((p_event ->> 'object_created')::bigint, (p_event ->> 'created')::bigint)),
          v_sub, v_period_end, v_plan.id)
  on conflict (account_id, purchase_id) do nothing;
  -- The period's tokens: the largest allowance among its invoices; its expiry that of the plan
  -- with the largest allowance (period end, unless that plan rolls over).
  select case when p.rollover then null else gp.period_end end into v_expires
    from billing.grant_purchases gp join billing.plans p on p.id = gp.plan_id
   where gp.account_id = v_account and gp.grant_id = v_grant
   order by gp.allowance desc, gp.purchased_at, gp.purchase_id limit 1;
  v_added := case when v_created then v_allowance else 0 end
             + billing_internal.extend_grant(v_account, v_grant,
                 (select pg_catalog.max(gp.allowance) from billing.grant_purchases gp
                   where gp.account_id = v_account and gp.grant_id = v_grant), v_expires);
  if v_payment is not null then
    insert into billing.purchase_payments (purchase_id, payment_key, amount)
    values (v_invoice, v_payment, coalesce((p_event ->> 'amount_paid')::bigint, 0))
    on conflict do nothing;
  end if;
  v_adjusted := billing_internal.settle_stripe_grant(v_account, v_grant); -- refunds or disputes that came first
  perform billing_internal.recompute_balance(v_account);
  return pg_catalog.jsonb_build_object('account_id', v_account, 'action', case when v_added > 0 then 'granted' else 'no_allowance_added' end,
    'grant_id', v_grant, 'tokens', v_added, 'plan', v_plan.code, 'allowance', v_allowance, 'period_end', v_period_end,
    'adjusted', v_adjusted);
end
$$;

-- invoice_payment.paid (basil and later) links an invoice to the payment that paid it, in either
-- arrival order: refunds and disputes of that payment then claw back the invoice's tokens.
create function billing_internal.apply_invoice_payment(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_invoice text := p_event ->> 'invoice';
  v_payment text := p_event ->> 'payment_key';
  v_grant record;
  v_adjusted jsonb;
begin
  if p_event ->> 'status' is distinct from 'paid' then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'invoice_payment_not_paid');
  elsif v_invoice is null or v_payment is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_invoice_or_payment');
  end if;
  perform billing_internal.lock_stripe_object(v_invoice);
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, p_event ->> 'currency');
  insert into billing.purchase_payments as pp (purchase_id, payment_key, amount)
  values (v_invoice, v_payment, coalesce((p_event ->> 'amount_paid')::bigint, 0))
  on conflict (purchase_id, payment_key) do update set amount = excluded.amount;
  select gp.grant_id as id, gp.account_id into v_grant
    from billing.grant_purchases gp where gp.purchase_id = v_invoice;
  if not found then
    return pg_catalog.jsonb_build_object('action', 'linked_before_invoice', 'invoice', v_invoice, 'payment', v_payment);
  end if;
  perform billing_internal.lock_and_settle(v_grant.account_id, true);
  v_adjusted := billing_internal.settle_stripe_grant(v_grant.account_id, v_grant.id);
  perform billing_internal.recompute_balance(v_grant.account_id);
  return pg_catalog.jsonb_build_object('account_id', v_grant.account_id, 'action', 'linked', 'invoice', v_invoice,
    'payment', v_payment, 'grant_id', v_grant.id, 'adjusted', v_adjusted);
end
$$;

-- Records one refund's state; false when the event is older than the state recorded.
create function billing_internal.record_refund(p_payment_key text, p_refund_id text, p_amount bigint, p_currency text,
                                       p_status text, p_event_created timestamptz, p_event_id text) returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_refund_id is null or p_amount is null or p_amount < 0 or p_status is null then
    perform billing_internal.raise_unprocessable('refund without id, amount or status', p_refund_id);
  end if;
  insert into billing.stripe_refunds as r (refund_id, payment_key, amount, currency, status, last_event_created, last_event_id)
  values (p_refund_id, p_payment_key, p_amount, p_currency, p_status, p_event_created, p_event_id)
  on conflict (refund_id) do update
     set amount = excluded.amount, currency = excluded.currency, status = excluded.status,
         last_event_created = excluded.last_event_created, last_event_id = excluded.last_event_id
   where (billing_internal.stripe_status_rank('refund', excluded.status) >= 100, excluded.last_event_created,
          billing_internal.stripe_status_rank('refund', excluded.status), excluded.last_event_id)
       > (billing_internal.stripe_status_rank('refund', r.status) >= 100, r.last_event_created,
          billing_internal.stripe_status_rank('refund', r.status), r.last_event_id);
  return found;
end
$$;

-- charge.refunded: the charge's captured amount and cumulative amount_refunded (the highest seen
-- counts: refunds only add up), and its refunds where the API version lists them. Returns the
-- payment, or NULL when the event names none.
create function billing_internal.record_charge(p_event jsonb) returns text
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_payment text := p_event ->> 'payment_key';
  v_refund jsonb;
begin
  if v_payment is null then
    return null;
  elsif p_event ->> 'amount_refunded' is null or (p_event ->> 'amount_refunded')::bigint < 0
     or (p_event ->> 'amount_captured')::bigint < 0 then
    perform billing_internal.raise_unprocessable('charge.refunded without a usable amount_refunded and amount_captured', v_payment);
  end if;
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, p_event ->> 'currency');
  update billing.stripe_payments p
     set charge_id = coalesce(p.charge_id, p_event ->> 'charge'),
         amount_captured = coalesce((p_event ->> 'amount_captured')::bigint, p.amount_captured),
         refunded_reported = greatest(p.refunded_reported, (p_event ->> 'amount_refunded')::bigint),
         updated_at = pg_catalog.now()
   where p.payment_key = v_payment;
  for v_refund in select r from pg_catalog.jsonb_array_elements(coalesce(p_event -> 'refunds', '[]')) r loop
    perform billing_internal.record_refund(v_payment, v_refund ->> 'id', (v_refund ->> 'amount')::bigint, p_event ->> 'currency',
      coalesce(v_refund ->> 'status', 'succeeded'), pg_catalog.to_timestamp((p_event ->> 'created')::bigint), p_event ->> 'id');
  end loop;
  return v_payment;
end
$$;

create function billing_internal.apply_charge(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_payment text := billing_internal.record_charge(p_event);
begin
  if v_payment is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_payment');
  end if;
  return billing_internal.settle_payment(v_payment);
end
$$;

-- refund.created / updated / failed, charge.refund.updated: one refund's state. A failed or
-- canceled refund gives back what it clawed back.
create function billing_internal.apply_refund(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_payment text := p_event ->> 'payment_key';
begin
  if v_payment is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_payment');
  end if;
  perform billing_internal.lock_stripe_object(v_payment);
  perform billing_internal.note_payment(v_payment, p_event ->> 'currency');
  if not billing_internal.record_refund(v_payment, p_event ->> 'object_id', (p_event ->> 'amount')::bigint, p_event ->> 'currency',
                                p_event ->> 'status', pg_catalog.to_timestamp((p_event ->> 'created')::bigint), p_event ->> 'id') then
    return pg_catalog.jsonb_build_object('action', 'stale', 'refund', p_event ->> 'object_id');
  end if;
  return billing_internal.settle_payment(v_payment) || pg_catalog.jsonb_build_object('refund', p_event ->> 'object_id',
                                                                              'status', p_event ->> 'status');
end
$$;

-- charge.dispute.*: one dispute's state; false when the event is older than the state recorded.
create function billing_internal.record_dispute(p_event jsonb) returns boolean
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_amount bigint := (p_event ->> 'amount')::bigint;
begin
  if p_event ->> 'object_id' is null or v_amount is null or v_amount < 0 or p_event ->> 'status' is null then
    perform billing_internal.raise_unprocessable('dispute without id, amount or status', p_event ->> 'object_id');
  end if;
  perform billing_internal.lock_stripe_object(p_event ->> 'payment_key');
  perform billing_internal.note_payment(p_event ->> 'payment_key', p_event ->> 'currency');
  insert into billing.stripe_disputes as d (dispute_id, payment_key, amount, currency, status, last_event_created, last_event_id)
  values (p_event ->> 'object_id', p_event ->> 'payment_key', v_amount, p_event ->> 'currency', p_event ->> 'status',
          pg_catalog.to_timestamp((p_event ->> 'created')::bigint), p_event ->> 'id')
  on conflict (dispute_id) do update
     set amount = excluded.amount, currency = excluded.currency, status = excluded.status,
         last_event_created = excluded.last_event_created, last_event_id = excluded.last_event_id
   where (billing_internal.stripe_status_rank('dispute', excluded.status) >= 100, excluded.last_event_created,
          billing_internal.stripe_status_rank('dispute', excluded.status), excluded.last_event_id)
       > (billing_internal.stripe_status_rank('dispute', d.status) >= 100, d.last_event_created,
          billing_internal.stripe_status_rank('dispute', d.status), d.last_event_id);
  return found;
end
$$;

-- Open, a dispute's share of the grant stays frozen; lost, that share is clawed back; won (or
-- closed as a warning), the tokens are released.
create function billing_internal.apply_dispute(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
  if p_event ->> 'payment_key' is null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', 'no_payment');
  elsif not billing_internal.record_dispute(p_event) then
    return pg_catalog.jsonb_build_object('action', 'stale', 'dispute', p_event ->> 'object_id');
  end if;
  return billing_internal.settle_payment(p_event ->> 'payment_key') || pg_catalog.jsonb_build_object(
    'dispute', p_event ->> 'object_id', 'status', p_event ->> 'status');
end
$$;

-- Upserts subscription state unless it is newer already ('stale'): see billing_internal.stripe_status_rank.
-- A canceled or incomplete_expired subscription is never reactivated.
create function billing_internal.apply_subscription(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_account uuid := billing_internal.event_account(p_event);
  v_created timestamptz := pg_catalog.to_timestamp((p_event ->> 'created')::bigint);
  v_status text := case when p_event ->> 'type' = 'customer.subscription.deleted' then 'canceled'
                        else p_event ->> 'status' end;
  v_plan_id bigint;
  v_link text;
  v_applied boolean;
begin
  if v_account is null then
    perform billing_internal.raise_unprocessable('subscription customer is not linked to a user or account', p_event ->> 'customer');
  end if;
  if billing_internal.stripe_status_rank('subscription', v_status) is null then
    perform billing_internal.raise_unprocessable('unknown subscription status', coalesce(v_status, 'NULL'));
  end if;
  select p.id into v_plan_id from billing.plans p where p.stripe_price_id = p_event ->> 'price_id';
  v_link := billing_internal.link_customer(v_account, p_event ->> 'customer');

  insert into billing.user_subscriptions as s (stripe_subscription_id, account_id, plan_id, stripe_price_id, status,
      current_period_start, current_period_end, cancel_at_period_end, canceled_at, last_event_created, last_event_id)
  values (p_event ->> 'object_id', v_account, v_plan_id, p_event ->> 'price_id', v_status,
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
   where (billing_internal.stripe_status_rank('subscription', excluded.status) >= 100, excluded.last_event_created,
          billing_internal.stripe_status_rank('subscription', excluded.status), excluded.last_event_id)
       > (billing_internal.stripe_status_rank('subscription', s.status) >= 100, s.last_event_created,
          billing_internal.stripe_status_rank('subscription', s.status), s.last_event_id)
  returning true into v_applied;
  return pg_catalog.jsonb_build_object('account_id', v_account, 'subscription', p_event ->> 'object_id',
           'action', case when v_applied then 'updated' else 'stale' end,
           'status', case when v_applied then v_status end)
         || case when v_link = 'linked' then pg_catalog.jsonb_build_object('linked_customer', p_event ->> 'customer')
                 else '{}'::jsonb end;
end
$$;

-- Why an event moves nothing, or NULL: a shape or type pg_billing does not apply, another Stripe
-- mode than billing.settings.stripe_livemode, or a connected account other than stripe_account.
create function billing_internal.ignore_reason(p_event jsonb) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_settings billing.settings;
begin
  if p_event ->> 'kind' = 'ignored' then
    return coalesce(p_event ->> 'ignore_reason', 'event_type_not_used');
  end if;
  select s.* into v_settings from billing.settings s;
  if (p_event ->> 'livemode')::boolean is distinct from coalesce(v_settings.stripe_livemode, true) then
    return 'livemode_mismatch';
  elsif p_event ->> 'account' is not null and p_event ->> 'account' is distinct from v_settings.stripe_account then
    return 'connect_account_mismatch';
  end if;
  return null;
end
$$;

create function billing_internal.apply_event(p_event jsonb) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_reason text := billing_internal.ignore_reason(p_event);
begin
  if v_reason is not null then
    return pg_catalog.jsonb_build_object('action', 'ignored', 'reason', v_reason);
  elsif p_event ->> 'kind' <> 'invoice_payment'
        and coalesce(pg_catalog.length(p_event ->> 'object_id'), 0) not between 1 and 255 then
    perform billing_internal.raise_unprocessable('the event''s object has no usable id (1 to 255 characters)', p_event ->> 'id');
  end if;
  return case p_event ->> 'kind'
    when 'checkout' then billing_internal.apply_checkout(p_event)
    when 'invoice_paid' then billing_internal.apply_invoice_paid(p_event)
    when 'invoice_payment' then billing_internal.apply_invoice_payment(p_event)
    when 'subscription' then billing_internal.apply_subscription(p_event)
    when 'charge' then billing_internal.apply_charge(p_event)
    when 'refund' then billing_internal.apply_refund(p_event)
    when 'dispute' then billing_internal.apply_dispute(p_event)
    when 'payment_intent' then billing_internal.apply_payment_intent(p_event)
    when 'invoice_failed' then billing_internal.apply_invoice_failed(p_event)
  end;
end
$$;

-- Applies a recorded event in a subtransaction and writes its outcome to the inbox. Anything but
-- a transient error (serialization, deadlock, lock or statement timeout, which roll the delivery
-- back so Stripe's retry runs it again) leaves the event 'failed' with its error, its effects
-- undone, and nothing lost. A delivery that links a new customer re-applies that customer's
-- failed events (p_retry_linked), e.g. an invoice that arrived before its Checkout Session.
create function billing_internal.process_event(p_event jsonb, p_retry_linked boolean) returns jsonb
language plpgsql set search_path = pg_catalog, pg_temp as $$
declare
  v_effect jsonb;
  v_status text;
  v_error jsonb;
  v_code text;
  v_message text;
  v_detail text;
  v_failed record;
begin
  begin
    v_effect := billing_internal.apply_event(p_event);
    v_status := case v_effect ->> 'action' when 'ignored' then 'ignored' when 'stale' then 'stale' else 'processed' end;
    if v_status = 'processed' then
      perform billing_internal.emit_stripe_events(p_event, v_effect);
    end if;
  exception
    when serialization_failure or deadlock_detected or lock_not_available or query_canceled then
      raise;
    when others then
      get stacked diagnostics v_code = returned_sqlstate, v_message = message_text, v_detail = pg_exception_detail;
      v_status := 'failed';
      v_error := pg_catalog.jsonb_build_object('code', v_code, 'message', v_message, 'detail', nullif(v_detail, ''));
  end;
  update billing.payment_transactions t
     set status = v_status, outcome = coalesce(v_effect, '{}'), error = v_error,
         account_id = coalesce((v_effect ->> 'account_id')::uuid, t.account_id),
         processed_at = pg_catalog.clock_timestamp()
   where t.stripe_event_id = p_event ->> 'id';
  if p_retry_linked and v_status = 'processed' and v_effect ? 'linked_customer' then
    for v_failed in
      select t.stripe_event_id, t.payload from billing.payment_transactions t
       where t.status = 'failed' and t.stripe_customer = v_effect ->> 'linked_customer'
       order by t.event_created, t.stripe_event_id
         for update
    loop
      update billing.payment_transactions set attempts = attempts + 1 where stripe_event_id = v_failed.stripe_event_id;
      perform billing_internal.process_event(billing_internal.decode_stripe_event(v_failed.payload::text), false);
    end loop;
  end if;
  return pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('event_id', p_event ->> 'id', 'type', p_event ->> 'type',
    'outcome', v_status, 'effect', v_effect, 'reason', case when v_status = 'ignored' then v_effect ->> 'reason' end,
    'error', v_error));
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
begin
  perform billing_internal.require_service();
  if p_secret is not null then
    v_secrets := array[p_secret];
  else
    v_secrets := billing_internal.webhook_secrets();
  end if;
  if v_secrets is null or pg_catalog.cardinality(v_secrets) = 0 then
    raise exception using errcode = 'PT500', message = 'no Stripe webhook secret configured',
      hint = 'Store it in Supabase Vault as stripe_webhook_secret, or insert it into billing.webhook_secrets.';
  end if;
  v_rejection := billing_internal.stripe_signature_check(p_payload, p_signature_header, v_secrets, 300);
  if v_rejection is not null then
    raise exception using errcode = 'PT400', message = 'invalid Stripe signature',
      detail = v_rejection || case
        when v_rejection = 'signature_mismatch'
             and exists (select 1 from pg_catalog.unnest(v_secrets) s where s <> pg_catalog.btrim(s, E' \t\r\n'))
        then ': a configured webhook secret has leading or trailing whitespace (a newline from copying it?)'
        else '' end,
      hint = 'Use the endpoint''s signing secret (whsec_...) exactly, and pass the raw request body as received.';
  end if;
  v_event := billing_internal.decode_stripe_event(p_payload);

  insert into billing.payment_transactions (stripe_event_id, event_type, event_created, livemode, api_version,
                                            status, payload, stripe_customer)
  values (v_event ->> 'id', v_event ->> 'type',
          coalesce(pg_catalog.to_timestamp((v_event ->> 'created')::bigint), pg_catalog.clock_timestamp()),
          (v_event ->> 'livemode')::boolean, v_event ->> 'api_version', 'processed', p_payload::jsonb,
          v_event ->> 'customer')
  on conflict (stripe_event_id) do nothing;
  if not found then
    select t.* into v_prior from billing.payment_transactions t where t.stripe_event_id = v_event ->> 'id' for update;
    if v_prior.status <> 'failed' then
      return pg_catalog.jsonb_build_object('event_id', v_event ->> 'id', 'type', v_event ->> 'type',
        'outcome', 'duplicate', 'first_outcome', v_prior.status);
    end if;
    update billing.payment_transactions set attempts = attempts + 1 where stripe_event_id = v_event ->> 'id';
  end if;
  return billing_internal.process_event(v_event, true);
end
$$;
comment on function billing.handle_stripe_webhook(text, text, text) is
  'Verifies, records exactly once and applies one Stripe webhook delivery; returns {event_id, type, outcome, effect}.';

-- Applies every failed event again, oldest first, in passes until a pass applies none (an event
-- can depend on one that failed after it); e.g. after fixing the catalog. Returns how many events
-- are no longer failed.
create function billing.reprocess_failed_events() returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_row record;
  v_done integer := 0;
  v_pass integer;
begin
  perform billing_internal.require_service();
  loop
    v_pass := 0;
    for v_row in
      select t.stripe_event_id, t.payload from billing.payment_transactions t
       where t.status = 'failed' order by t.event_created, t.stripe_event_id
         for update
    loop
      update billing.payment_transactions set attempts = attempts + 1 where stripe_event_id = v_row.stripe_event_id;
      if billing_internal.process_event(billing_internal.decode_stripe_event(v_row.payload::text), false) ->> 'outcome' <> 'failed' then
        v_pass := v_pass + 1;
      end if;
    end loop;
    v_done := v_done + v_pass;
    exit when v_pass = 0;
  end loop;
  return v_done;
end
$$;
comment on function billing.reprocess_failed_events() is
  'Applies every failed Stripe event again (e.g. after a catalog fix); returns how many are no longer failed.';
