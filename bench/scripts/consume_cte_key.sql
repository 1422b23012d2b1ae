\set n random(1, 10000)
\set k random(1, 9000000000000000000)
with d as (update bench.accounts set tokens = tokens - 1 where user_id = bench.uid(:n) and tokens >= 1 returning user_id, tokens)
insert into bench.usage (user_id, tokens, idempotency_key) select user_id, 1, :client_id || '-' || :k || '-' || :n from d;
