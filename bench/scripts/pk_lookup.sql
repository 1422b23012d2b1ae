\set n random(1, 10000)
select tokens from bench.accounts where user_id = bench.uid(:n);
