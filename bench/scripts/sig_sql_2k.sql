select bench.verify_stripe_signature_sql(payload, header, 'whsec_bench', 0) from bench.payloads where name = '2k';
