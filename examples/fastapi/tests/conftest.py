"""The FastAPI example against the real cluster: a fresh database, a real uvicorn server on loopback."""
import os
import pathlib
import socket
import sys
import threading
import time
import urllib.parse

import httpx
import jwt
import psycopg
import pytest
import stripe
import uvicorn

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parent))
from app import create_app  # noqa: E402

HOST = os.environ.get("PG_BILLING_HOST", str(ROOT / ".cluster" / "sock"))
PORT = int(os.environ.get("PG_BILLING_PORT", "54329"))
DB = "pg_billing_fastapi"
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters"
WEBHOOK_SECRET = "whsec_fastapi_example"


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
        else:
            body = '{"id": "cs_test_recorded", "object": "checkout.session", "url": "https://checkout.stripe.com/c/pay/cs_test_recorded"}'
        return body, 200, {}

    def close(self):
        pass


def connect(**kw):
    return psycopg.connect(host=HOST, port=PORT, user="postgres", autocommit=True, **kw)


@pytest.fixture(scope="session")
def database():
    with connect(dbname="postgres") as c:
        c.execute(f"drop database if exists {DB} with (force)")
        c.execute(f"create database {DB}")
    with connect(dbname=DB) as c:
        c.execute((ROOT / "sql" / "supabase-compat.sql").read_text())
        c.execute("create extension pg_billing")
        c.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency)"
                  " values ('price_Pack1000', 1000, 999, 'usd')")
        c.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period, price_amount)"
                  " values ('pro', 'price_ProMonthly', 100000, 2000)")
        c.execute("insert into billing.settings (stripe_livemode) values (false)")  # the fixtures are test mode
        # the chat endpoint's model: 1 credit per input token, 2 per output token
        c.execute("insert into billing.model_prices (model, input_per_million, output_per_million, valid_from)"
                  " values ('echo-1', 1000000, 2000000, now() - interval '1 day')")
    return DB


@pytest.fixture(scope="session")
def stripe_http():
    return RecordingStripeHTTP()


@pytest.fixture(scope="session")
def server(database, stripe_http):
    client = stripe.StripeClient("sk_test_example", http_client=stripe_http)
    dsn = f"host={HOST} port={PORT} dbname={database} user=postgres"
    app = create_app(dsn, JWT_SECRET, client, WEBHOOK_SECRET, token_delay=0.02)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def db(database):
    with connect(dbname=database) as c:
        yield c


def token_for(user_id, **extra):
    return jwt.encode({"sub": str(user_id), "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 600,
                       **extra}, JWT_SECRET, algorithm="HS256")


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c
