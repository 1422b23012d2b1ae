"""The web app in headless Chromium (Debian's, driven by Playwright; nothing downloads a browser),
served by the FastAPI example against a fresh database on the real cluster."""
import pathlib
import shutil
import sys

import pytest
import stripe

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from web_support import DB, OUTPUT, WEB  # noqa: E402  (also puts the backend and its test support on the path)
from app import create_app  # noqa: E402
from support import HOST, JWT_SECRET, PORT, WEBHOOK_SECRET, RecordingStripeHTTP, create_example_database, serve  # noqa: E402


def chromium_path():
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("chromium is not installed (make setup installs Debian's chromium)")


@pytest.fixture(scope="module")
def stripe_http():
    return RecordingStripeHTTP()


@pytest.fixture(scope="module")
def site(stripe_http):
    assert (WEB / "dist" / "index.html").exists(), "build the app first (make test-web does)"
    create_example_database(DB)
    client = stripe.StripeClient("sk_test_example", http_client=stripe_http)
    dsn = f"host={HOST} port={PORT} dbname={DB} user=postgres"
    url, stop = serve(lambda url: create_app(dsn, JWT_SECRET, client, WEBHOOK_SECRET, site_url=url,
                                             token_delay=0.005, web_dir=WEB / "dist"))
    yield url
    stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])  # root: no sandbox
        yield b
        b.close()
