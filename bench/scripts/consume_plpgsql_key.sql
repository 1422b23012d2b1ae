\set n random(1, 10000)
\set k random(1, 9000000000000000000)
select bench.consume_plpgsql(bench.uid(:n), 1, :client_id || '-' || :k || '-' || :n);
