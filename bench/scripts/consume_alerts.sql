\set n random(40001, 50000)
select balance_after from billing.consume_tokens(bench.uid(:n), 1);
