\set n random(1, 10000)
select bench.consume_cte_fn(bench.uid(:n), 1);
