\set n random(1, 10000)
select bench.consume_plpgsql_definer(bench.uid(:n), 1);
