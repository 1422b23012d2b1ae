select billing.handle_stripe_webhook(body, header, 'whsec_bench') from bench.events where id = 1;
