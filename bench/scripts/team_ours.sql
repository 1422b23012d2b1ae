select balance_after from billing.consume_tokens(bench.uid(20001 + :client_id), 1, null, '{}', bench.team());
