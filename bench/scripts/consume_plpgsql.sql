\set n random(1, 10000)
select bench.consume_plpgsql(bench.uid(:n), 1);
