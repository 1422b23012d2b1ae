-- Row-level security as each role sees it (Supabase's testing pattern: set local role + claims).
begin;
select plan(17);

insert into auth.users (id) values ('00000000-0000-4000-8000-0000000000a1'), ('00000000-0000-4000-8000-0000000000b2');
select billing.grant_purchase('00000000-0000-4000-8000-0000000000a1', 100, 'pgtap-a');
select billing.grant_purchase('00000000-0000-4000-8000-0000000000b2', 200, 'pgtap-b');
select billing.consume_tokens('00000000-0000-4000-8000-0000000000b2', 5);
insert into billing.plans (code, stripe_price_id, tokens_per_period) values ('pgtap', 'price_pgtap', 1);

set local role authenticated;
select set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-8000-0000000000a1","role":"authenticated"}', true);
select results_eq('select user_id::text from billing.balances', $$values ('00000000-0000-4000-8000-0000000000a1')$$,
  'a user sees only their balance');
select is_empty('select * from billing.token_grants where user_id <> billing_internal.auth_uid()', 'no one else''s grants');
select is_empty('select * from billing.token_usage', 'no one else''s usage');
select isnt_empty('select * from billing.plans', 'the catalog is readable');
select throws_ok($$insert into billing.token_grants (user_id, kind, reference, tokens, remaining)
                   values (billing_internal.auth_uid(), 'admin', 'x', 1, 1)$$, '42501', null, 'cannot insert grants');
select throws_ok('update billing.balances set spendable = 10000 where true', '42501', null, 'cannot update balances');
select throws_ok('delete from billing.token_usage where true', '42501', null, 'cannot delete usage');
select throws_ok($$select billing.grant_purchase(billing_internal.auth_uid(), 1000, 'mint')$$, '42501', null, 'cannot grant');
select throws_ok($$select billing.get_balance('00000000-0000-4000-8000-0000000000b2')$$, '42501', null,
  'cannot read another balance');
select throws_ok($$select billing.consume_tokens('00000000-0000-4000-8000-0000000000b2', 1)$$, '42501', null,
  'cannot spend for another user');
select is((select billing.get_balance(billing_internal.auth_uid())), 100::bigint, 'reads own balance');
select throws_ok('select * from billing.webhook_secrets', '42501', null, 'secrets unreadable');

select set_config('request.jwt.claims',
  '{"sub":"00000000-0000-4000-8000-0000000000a1","role":"authenticated","app_metadata":{"billing_admin":true}}', true);
select is((select count(*)::int from billing.balances where user_id in ('00000000-0000-4000-8000-0000000000a1',
  '00000000-0000-4000-8000-0000000000b2')), 2, 'an admin JWT reads every balance');

reset role;
set local role anon;
select set_config('request.jwt.claims', '{"role":"anon"}', true);
select isnt_empty('select * from billing.plans', 'anon reads the catalog');
select throws_ok('select * from billing.balances', '42501', null, 'anon reads no balances');
select throws_ok($$select billing.consume_tokens('00000000-0000-4000-8000-0000000000a1', 1)$$, '42501', null,
  'anon calls nothing');

reset role;
set local role service_role;
select is((select count(*)::int from billing.balances where user_id in ('00000000-0000-4000-8000-0000000000a1',
  '00000000-0000-4000-8000-0000000000b2')), 2, 'service_role reads every balance');

select * from finish();
rollback;
