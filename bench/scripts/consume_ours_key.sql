\set n random(1, 10000)
\set k random(1, 9000000000000000000)
select balance_after from billing.consume_tokens(bench.uid(:n), 1, :client_id || '-' || :k || '-' || :n);
