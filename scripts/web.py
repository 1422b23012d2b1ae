"""`make web`: the billing web app (examples/web) against the demo database, served by the FastAPI
example on http://127.0.0.1:8000, signed in as the demo's user.

The demo database (`make run`) has the user, the catalog and a history. The chat's model gets a
price here. Buying needs a Stripe test key (STRIPE_API_KEY=sk_test_...; without one the buy and
portal buttons show an error) and Stripe's webhooks forwarded to /api/payments/webhook
(`stripe listen --forward-to 127.0.0.1:8000/api/payments/webhook`, STRIPE_WEBHOOK_SECRET=whsec_...).
"""
import argparse
import os
import pathlib
import sys
import time

import jwt
import psycopg
import stripe
import uvicorn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "fastapi"))
from app import create_app  # noqa: E402
from demo import USER  # noqa: E402  (the demo's user; this script's folder is on the path)

JWT_SECRET = os.environ.get("SUPABASE_JWT_SECRET", "local-demo-jwt-secret-with-at-least-32-characters")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dbname", required=True)
    ap.add_argument("--listen", type=int, default=8000)
    a = ap.parse_args()
    with psycopg.connect(host=a.host, port=a.port, dbname=a.dbname, user="postgres", autocommit=True) as c:
        c.execute("insert into billing.model_prices (model, input_per_million, output_per_million, valid_from)"
                  " select 'echo-1', 1000000, 2000000, now() - interval '1 day'"
                  " where not exists (select 1 from billing.model_prices where model = 'echo-1')")
    dsn = f"host={a.host} port={a.port} dbname={a.dbname} user=postgres"
    site = f"http://127.0.0.1:{a.listen}"
    app = create_app(dsn, JWT_SECRET, stripe.StripeClient(os.environ.get("STRIPE_API_KEY", "sk_test_not_configured")),
                     os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_demo_secret"), site_url=site,
                     web_dir=ROOT / "examples" / "web" / "dist")
    token = jwt.encode({"sub": USER, "aud": "authenticated", "role": "authenticated",
                        "exp": int(time.time()) + 8 * 3600}, JWT_SECRET, algorithm="HS256")
    print(f"\nOpen {site}/billing#token={token}\n(signed in as the demo user for 8 hours; Ctrl-C stops)\n", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=a.listen, log_level="warning")


if __name__ == "__main__":
    main()
