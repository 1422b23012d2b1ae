select bench.consume_team_plpgsql(bench.uid(20001 + :client_id), bench.team(), 1);
