\set n random(1, 1)
select bench.consume_plpgsql(bench.uid(:n), 1);
