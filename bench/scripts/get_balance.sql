\set n random(1, 10000)
select billing.get_balance(bench.uid(:n));
