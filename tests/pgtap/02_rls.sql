-- Row-level security as each role sees it (Supabase's testing pattern: set local role + claims).
begin;
select plan(30);

insert into auth.users (id) values ('00000000-0000-4000-8000-0000000000a1'), ('00000000-0000-4000-8000-0000000000b2');
select billing.grant_purchase('00000000-0000-4000-8000-0000000000a1', 100, 'pgtap-a');
select billing.grant_purchase('00000000-0000-4000-8000-0000000000b2', 200, 'pgtap-b');
select billing.consume_tokens('00000000-0000-4000-8000-0000000000b2', 5);
insert into billing.plans (code, stripe_price_id, tokens_per_period) values ('pgtap', 'price_pgtap', 1);

set local role authenticated;
select set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-8000-0000000000a1","role":"authenticated"}', true);
select results_eq('select account_id::text from billing.balances', $$values ('00000000-0000-4000-8000-0000000000a1')$$,
  'a user sees only their balance');
select is_empty('select * from billing.token_grants where account_id <> billing_internal.auth_uid()', 'no one else''s grants');
select is_empty('select * from billing.token_usage', 'no one else''s usage');
select isnt_empty('select * from billing.plans', 'the catalog is readable');
select throws_ok($$insert into billing.token_grants (account_id, kind, reference, tokens, remaining)
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
select is((select count(*)::int from billing.balances where account_id in ('00000000-0000-4000-8000-0000000000a1',
  '00000000-0000-4000-8000-0000000000b2')), 2, 'an admin JWT reads every balance');

reset role;
set local role anon;
select set_config('request.jwt.claims', '{"role":"anon"}', true);
select isnt_empty('select * from billing.plans', 'anon reads the catalog');
select throws_ok('select * from billing.balances', '42501', null, 'anon reads no balances');
select throws_ok($$select billing.consume_tokens('00000000-0000-4000-8000-0000000000a1', 1)$$, '42501', null,
  'anon calls nothing');

-- A team account: a1 owns it, b2 is a member with a daily limit of 50, c3 is not a member.
reset role;
insert into auth.users (id) values ('00000000-0000-4000-8000-0000000000c3');
insert into billing.accounts (id, name) values ('00000000-0000-4000-8000-0000000000f1', 'pgtap team');
insert into billing.account_members (account_id, user_id, role)
values ('00000000-0000-4000-8000-0000000000f1', '00000000-0000-4000-8000-0000000000a1', 'owner');
select billing.add_account_member('00000000-0000-4000-8000-0000000000f1', '00000000-0000-4000-8000-0000000000b2',
  'member', 50, 'day');
select billing.grant_purchase(null, 300, 'pgtap-team', p_account_id => '00000000-0000-4000-8000-0000000000f1');
select billing.consume_tokens('00000000-0000-4000-8000-0000000000b2', 7, p_account_id => '00000000-0000-4000-8000-0000000000f1');
select billing.consume_tokens('00000000-0000-4000-8000-0000000000a1', 3, p_account_id => '00000000-0000-4000-8000-0000000000f1');

set local role authenticated;
select set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-8000-0000000000a1","role":"authenticated"}', true);
select results_eq($$select u.user_id::text, u.tokens from billing.token_usage u
                    where u.account_id = '00000000-0000-4000-8000-0000000000f1' order by u.tokens$$,
  $$values ('00000000-0000-4000-8000-0000000000a1', 3::bigint), ('00000000-0000-4000-8000-0000000000b2', 7::bigint)$$,
  'an owner reads every member''s usage of the team');
select is((select count(*)::int from billing.account_members where account_id = '00000000-0000-4000-8000-0000000000f1'),
  2, 'an owner reads every membership');

select set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-8000-0000000000b2","role":"authenticated"}', true);
select results_eq('select account_id::text, spendable::bigint from billing.balances order by spendable',
  $$values ('00000000-0000-4000-8000-0000000000b2', 195::bigint), ('00000000-0000-4000-8000-0000000000f1', 290::bigint)$$,
  'a member reads their own balance and the team''s');
select results_eq('select user_id::text, tokens from billing.token_usage where account_id = ''00000000-0000-4000-8000-0000000000f1''',
  $$values ('00000000-0000-4000-8000-0000000000b2', 7::bigint)$$, 'a member reads only their own usage of the team');
select results_eq('select user_id::text, spend_limit::bigint from billing.account_members',
  $$values ('00000000-0000-4000-8000-0000000000b2', 50::bigint)$$, 'a member reads only their own membership');
select is((select billing.get_balance('00000000-0000-4000-8000-0000000000b2', '00000000-0000-4000-8000-0000000000f1')),
  290::bigint, 'a member reads the team balance');
select throws_ok($$select billing.consume_tokens('00000000-0000-4000-8000-0000000000b2', 44,
                     p_account_id => '00000000-0000-4000-8000-0000000000f1')$$, 'PT402', 'member spend limit reached',
  'a member cannot spend past their limit');
select throws_ok($$select billing.add_account_member('00000000-0000-4000-8000-0000000000f1',
                     '00000000-0000-4000-8000-0000000000c3')$$, '42501', null, 'a member cannot add members');

select set_config('request.jwt.claims', '{"sub":"00000000-0000-4000-8000-0000000000c3","role":"authenticated"}', true);
select is_empty($$select * from billing.balances where account_id = '00000000-0000-4000-8000-0000000000f1'$$,
  'a non-member reads nothing of the team');
select is_empty('select * from billing.accounts', 'a non-member does not see the team account');
select throws_ok($$select billing.consume_tokens('00000000-0000-4000-8000-0000000000c3', 1,
                     p_account_id => '00000000-0000-4000-8000-0000000000f1')$$, '42501', null,
  'a non-member cannot spend from the team');
select throws_ok($$select billing.get_balance('00000000-0000-4000-8000-0000000000c3',
                     '00000000-0000-4000-8000-0000000000f1')$$, '42501', null, 'a non-member cannot read the team balance');
select throws_ok($$select billing.consume_tokens('00000000-0000-4000-8000-0000000000b2', 1,
                     p_account_id => '00000000-0000-4000-8000-0000000000f1')$$, '42501', null,
  'nor spend as a member');

reset role;
set local role service_role;
select is((select count(*)::int from billing.balances where account_id in ('00000000-0000-4000-8000-0000000000a1',
  '00000000-0000-4000-8000-0000000000b2')), 2, 'service_role reads every balance');

select * from finish();
rollback;
