\set n random(1, 10000)
update bench.accounts set tokens = tokens - 1 where user_id = bench.uid(:n) and tokens >= 1;
