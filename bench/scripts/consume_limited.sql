\set n random(30001, 40000)
select balance_after from billing.consume_tokens(bench.uid(:n), 1);
