\set n random(1, 1)
select balance_after from billing.consume_tokens(bench.uid(:n), 1);
