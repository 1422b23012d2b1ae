\set n random(1, 1)
select bench.consume_plpgsql_definer(bench.uid(:n), 1);
