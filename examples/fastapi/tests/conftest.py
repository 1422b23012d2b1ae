"""The FastAPI example against the real cluster: a fresh database, a real uvicorn server on loopback."""
import sys

import httpx
import pytest
import stripe

from support import HERE, HOST, JWT_SECRET, PORT, WEBHOOK_SECRET, RecordingStripeHTTP, connect, \
    create_example_database, serve, token_for  # noqa: F401 (token_for, WEBHOOK_SECRET: for the tests)

sys.path.insert(0, str(HERE.parent))
from app import create_app  # noqa: E402

DB = "pg_billing_fastapi"


@pytest.fixture(scope="session")
def database():
    return create_example_database(DB)


@pytest.fixture(scope="session")
def stripe_http():
    return RecordingStripeHTTP()


@pytest.fixture(scope="session")
def server(database, stripe_http):
    client = stripe.StripeClient("sk_test_example", http_client=stripe_http)
    dsn = f"host={HOST} port={PORT} dbname={database} user=postgres"
    url, stop = serve(lambda url: create_app(dsn, JWT_SECRET, client, WEBHOOK_SECRET, token_delay=0.02))
    yield url
    stop()


@pytest.fixture
def db(database):
    with connect(dbname=database) as c:
        yield c


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c
