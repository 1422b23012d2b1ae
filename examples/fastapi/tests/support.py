"""What the example's tests and the web app's browser test share: a database with the extension and
a catalog, the backend served by a real uvicorn on loopback, Stripe's HTTP recorded, signed
webhooks and test JWTs."""
import json
import os
import pathlib
import socket
import threading
import time
import urllib.parse

import jwt
import psycopg
import stripe
import uvicorn

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
HOST = os.environ.get("PG_BILLING_HOST", str(ROOT / ".cluster" / "sock"))
PORT = int(os.environ.get("PG_BILLING_PORT", "54329"))
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters"
WEBHOOK_SECRET = "whsec_fastapi_example"
FIXTURES = ROOT / "tests" / "fixtures" / "stripe" / "events" / "2025-10-29.clover"
SHIFT = int(time.time()) - 86400 - 1763900000  # the story, moved so it began a day ago


class RecordingStripeHTTP(stripe.HTTPClient):
    """Replaces only Stripe's HTTP call: records the request, answers like the API would."""
    name = "recording"

    def __init__(self):
        super().__init__()
        self.requests = []
        self.headers = []

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        params = urllib.parse.parse_qs(post_data.decode() if isinstance(post_data, bytes) else (post_data or ""))
        self.requests.append((method, url, {k: v[0] for k, v in params.items()}))
        self.headers.append(dict(headers))
        if url.endswith("/v1/payment_intents"):
            body = f'{{"id": "pi_recorded_{len(self.requests)}", "object": "payment_intent", "status": "succeeded"}}'
        elif url.endswith("/v1/billing_portal/sessions"):
            body = ('{"id": "bps_recorded", "object": "billing_portal.session",'
                    ' "url": "https://billing.stripe.com/p/session/test_recorded"}')
        else:
            body = '{"id": "cs_test_recorded", "object": "checkout.session", "url": "https://checkout.stripe.com/c/pay/cs_test_recorded"}'
        return body, 200, {}

    def close(self):
        pass


def connect(**kw):
    return psycopg.connect(host=HOST, port=PORT, user="postgres", autocommit=True, **kw)


def create_example_database(name):
    """A fresh database with the Supabase stand-ins, pg_billing, a pack, a plan and the chat's model."""
    with connect(dbname="postgres") as c:
        c.execute(f"drop database if exists {name} with (force)")
        c.execute(f"create database {name}")
    with connect(dbname=name) as c:
        c.execute((ROOT / "sql" / "supabase-compat.sql").read_text())
        c.execute("create extension pg_billing")
        c.execute("insert into billing.token_packs (stripe_price_id, name, tokens, price_amount, currency)"
                  " values ('price_Pack1000', '1,000 tokens', 1000, 999, 'usd')")
        c.execute("insert into billing.plans (code, name, stripe_price_id, tokens_per_period, price_amount)"
                  " values ('pro', 'Pro', 'price_ProMonthly', 100000, 2000)")
        c.execute("insert into billing.settings (stripe_livemode) values (false)")  # the fixtures are test mode
        # the chat endpoint's model: 1 credit per input token, 2 per output token
        c.execute("insert into billing.model_prices (model, input_per_million, output_per_million, valid_from)"
                  " values ('echo-1', 1000000, 2000000, now() - interval '1 day')")
    return name


def serve(make_app):
    """Starts make_app(base_url) on a free loopback port; returns (base_url, stop)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    srv = uvicorn.Server(uvicorn.Config(make_app(url), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "the backend did not start"

    def stop():
        srv.should_exit = True
        thread.join(timeout=10)
    return url, stop


def token_for(user_id, **extra):
    return jwt.encode({"sub": str(user_id), "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 600,
                       **extra}, JWT_SECRET, algorithm="HS256")


def story_event(prefix, user=None, **overrides):
    """A fixture event of the Stripe story (tests/fixtures), for `user`, moved in time, with overrides
    given as dotted paths."""
    def shift(v):
        if isinstance(v, dict):
            return {k: shift(x) for k, x in v.items()}
        if isinstance(v, list):
            return [shift(x) for x in v]
        if isinstance(v, int) and not isinstance(v, bool) and 1_700_000_000 <= v <= 1_800_000_000:
            return v + SHIFT
        return v
    text = next(FIXTURES.glob(f"{prefix}_*.json")).read_text()
    if user:
        text = text.replace("5a1b2c3d-0000-4000-8000-00000000000a", str(user)).replace("cus_TestUserA", f"cus_{user.hex[:12]}")
    event = shift(json.loads(text))
    for path, value in overrides.items():
        target = event
        *parents, last = path.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return json.dumps(event)


def post_webhook(http, payload, secret=WEBHOOK_SECRET):
    header = stripe.WebhookSignature.generate_signature_header(payload, secret)
    return http.post("/api/payments/webhook", content=payload.encode(),
                     headers={"Stripe-Signature": header, "Content-Type": "application/json"})
