\set n random(1, 10000)
with d as (update bench.accounts set tokens = tokens - 1 where user_id = bench.uid(:n) and tokens >= 1 returning user_id, tokens)
insert into bench.usage (user_id, tokens) select user_id, 1 from d;
