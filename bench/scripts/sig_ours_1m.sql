select billing.verify_stripe_signature(payload, header, 'whsec_bench', 0) from bench.payloads where name = '1m';
