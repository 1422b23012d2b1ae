"""A user's billing story in a real browser: sign in with a JWT, buy a pack through Checkout (the
webhook signed and delivered to the backend while the page waits), chat until out of tokens, hit a
rate limit, redeem promo codes, subscribe, read history and invoices, open the Customer Portal, and
do it with labelled controls and the keyboard."""
import json
import re
import uuid

import httpx
from playwright.sync_api import Page, expect

from web_support import DB, OUTPUT
from support import connect, post_webhook, story_event, token_for  # noqa: I001 (web_support sets the path)


def new_user():
    u = uuid.uuid4()
    with connect(dbname=DB) as c:
        c.execute("insert into auth.users (id, email) values (%s, %s)", (u, f"{u}@example.com"))
    return u


def sql(query, args=()):
    with connect(dbname=DB) as c:
        cur = c.execute(query, args)
        return cur.fetchall() if cur.description else None


def stripe_pages(page: Page):
    """Stripe's hosted pages, answered locally: the test only needs to see the app go there."""
    page.route(re.compile(r"https://(checkout|billing|invoice|pay)\.stripe\.com/.*"),
               lambda route: route.fulfill(status=200, content_type="text/html",
                                           body="<title>Stripe (test)</title><h1>Stripe</h1>"))


def sign_in(page: Page, site, user):
    page.goto(site + "/")
    field = page.get_by_label("Access token")
    field.fill(token_for(user))
    field.press("Tab")  # keyboard: the next control is the submit button
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("sidebar-balance")).to_have_text("0")


def send(page: Page, text):
    """Sends a chat message; returns "reply" once the streamed reply is complete, or "alert"."""
    replies = page.locator("li.assistant")
    before = replies.count()
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")  # Enter sends, as in any chat
    expect(replies.nth(before).or_(page.get_by_role("alert")).first).to_be_visible(timeout=15000)
    expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=15000)
    return "alert" if page.get_by_role("alert").count() else "reply"


def assert_labelled(page: Page):
    """Every form control has a label and every button and image a name a screen reader can read."""
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, textarea, select')]
        .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")
    assert unlabelled == []
    nameless = page.evaluate("""() => [...document.querySelectorAll('button, a, [role=img]')]
        .filter(e => !(e.innerText || e.getAttribute('aria-label') || '').trim()).map(e => e.outerHTML)""")
    assert nameless == []


def test_a_users_billing_story_in_the_browser(site, browser, stripe_http):
    user = new_user()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    stripe_pages(page)
    sign_in(page, site, user)
    page.evaluate("window.__same_page = true")  # gone if anything reloads the page

    # Buy a pack: the backend creates the Checkout Session, the browser goes to Stripe
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    assert_labelled(page)
    page.get_by_role("button", name="Buy 1,000 tokens for $9.99").click()
    page.wait_for_url("https://checkout.stripe.com/**")
    method, url, params = stripe_http.requests[-1]
    assert url.endswith("/v1/checkout/sessions") and params["client_reference_id"] == str(user)
    assert params["success_url"] == f"{site}/billing?checkout=success"
    # Stripe sends the customer back before (or after) it delivers the webhook
    page.goto(params["success_url"])
    expect(page.get_by_role("status")).to_contain_text("Payment received")
    page.evaluate("window.__same_page = true")
    checkout = story_event("01", user, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.id": f"cs_{uuid.uuid4().hex}",
                                          "data.object.payment_intent": f"pi_{uuid.uuid4().hex}"})
    with httpx.Client(base_url=site) as http:
        assert post_webhook(http, checkout).json()["outcome"] == "processed"
    expect(page.get_by_test_id("sidebar-balance")).to_have_text("1,000", timeout=15000)
    expect(page.get_by_role("status")).to_contain_text("your tokens are in your balance")
    assert page.evaluate("window.__same_page") is True

    # Chat: replies stream and are charged; the sidebar follows; out of tokens is said in words
    page.get_by_role("link", name="Chat").click()
    prompt = " ".join(["word"] * 200)  # 200 input tokens + up to 64 output at 2 credits: ~330 a message
    seen = []
    for _ in range(6):
        if send(page, prompt) == "alert":
            break
        expect(page.get_by_role("list", name="Conversation").locator("li.assistant").last).to_contain_text("echo: word")
        expect(page.get_by_test_id("sidebar-balance")).not_to_have_text(seen[-1] if seen else "1,000")
        seen.append(page.get_by_test_id("sidebar-balance").inner_text())
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("You're out of tokens")
    expect(alert.get_by_role("button", name="Buy tokens")).to_be_visible()
    assert len(seen) == 3 and page.evaluate("window.__same_page") is True
    left = int(seen[-1].replace(",", ""))
    assert left == sql("select billing.get_balance(%s)", (user,))[0][0] and 0 <= left < 330

    # Promo codes, by keyboard: each refusal in words
    code = f"WELCOME{uuid.uuid4().hex[:6].upper()}"
    sql("insert into billing.promo_codes (code, tokens) values (%s, 5000)", (code,))
    page.get_by_role("link", name="Billing").first.click()
    promo = page.get_by_label("Promo code", exact=True)
    promo.fill(code.lower())
    promo.press("Enter")
    expect(page.get_by_role("status").filter(has_text="Added")).to_have_text("Added 5,000 tokens.")
    expect(page.get_by_test_id("sidebar-balance")).to_have_text(f"{left + 5000:,}")
    for typed, words in [(code, "already redeemed"), ("NO-SUCH-CODE", "does not exist")]:
        promo.fill(typed)
        promo.press("Enter")
        expect(page.get_by_role("region", name="Redeem a promo code").get_by_role("alert")).to_contain_text(words)

    # A rate limit of one request an hour (accounts without a plan): the second message is refused,
    # and the chat says when to try again
    sql("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount) values (null, 'requests', 3600, 1)")
    try:
        page.get_by_role("link", name="Chat").click()
        assert send(page, "hello") == "reply"
        assert send(page, "hello again") == "alert"
        expect(page.get_by_role("alert")).to_contain_text(re.compile(r"Try again in \d+ seconds"))
    finally:
        sql("delete from billing.rate_limits")

    # Subscribe (the subscription's events arrive), then the plan, history and invoices show
    sub = f"sub_{uuid.uuid4().hex}"
    with httpx.Client(base_url=site) as http:
        for prefix, obj in [("04", f"cs_{uuid.uuid4().hex}"), ("05", sub), ("06", f"in_{uuid.uuid4().hex}")]:
            event = story_event(prefix, user, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.id": obj})
            r = post_webhook(http, event.replace("sub_TestProA", sub))
            assert r.status_code == 200, r.text
    for n in range(11):  # enough grants for a second page of "Tokens received"
        sql("select billing.grant_purchase(%s, 10, %s, 'bonus')", (user, f"bonus-{user}-{n}"))
    page.get_by_role("link", name="Billing").first.click()
    expect(page.get_by_role("region", name="Plan")).to_contain_text(re.compile(r"Pro — active, renews on \w+ \d+, \d{4}"))
    payments = page.get_by_role("region", name="Payments")
    invoice = payments.get_by_role("link", name="View invoice")
    expect(invoice).to_have_attribute("href", re.compile(r"^https://invoice\.stripe\.com/"))
    expect(payments.get_by_role("link", name="PDF")).to_have_attribute("href", re.compile(r"^https://pay\.stripe\.com/"))
    expect(payments).to_contain_text("$9.99")
    expect(payments).to_contain_text("$20.00")
    received = page.get_by_role("region", name="Tokens received")
    expect(received.locator("tbody tr")).to_have_count(10)
    received.get_by_role("button", name="Next").click()
    expect(received).to_contain_text("Page 2")
    expect(received.locator("tbody tr")).to_have_count(sql("select count(*) - 10 from billing.token_grants where account_id = %s", (user,))[0][0])
    expect(received.get_by_role("button", name="Next")).to_be_disabled()
    received.get_by_role("button", name="Previous").click()
    expect(received.locator("tbody tr")).to_have_count(10)

    # The usage chart: the chat's model, per day; named for screen readers
    chart = page.get_by_role("img", name=re.compile("Tokens used per day"))
    expect(chart).to_be_visible()
    expect(page.get_by_role("region", name="Usage, last 30 days")).to_contain_text("echo-1")
    assert chart.locator("rect").count() >= 1
    expect(page.get_by_role("region", name="Balance")).to_contain_text("What expires when")
    assert_labelled(page)
    page.screenshot(path=str(OUTPUT / "billing-page.png"), full_page=True)

    # Manage billing: Stripe's Customer Portal for this user's customer
    page.get_by_role("button", name="Manage billing").click()
    page.wait_for_url("https://billing.stripe.com/**")
    method, url, params = stripe_http.requests[-1]
    assert url.endswith("/v1/billing_portal/sessions") and params["customer"] == f"cus_{user.hex[:12]}"
    assert params["return_url"] == f"{site}/billing"


def test_keyboard_alone_reaches_every_control_of_the_billing_page(site, browser):
    user = new_user()
    page = browser.new_page()
    sign_in(page, site, user)
    page.goto(site + "/billing")
    expect(page.get_by_role("button", name=re.compile("Buy 1,000 tokens"))).to_be_visible()
    wanted = {"Buy 1,000 tokens for $9.99", "Promo code", "Redeem", "Manage billing"}
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("""() => { const e = document.activeElement;
            return (e.labels && e.labels[0] ? e.labels[0].innerText : e.innerText || '').trim() }"""))
    assert wanted <= reached, wanted - reached


def test_an_expired_session_asks_to_sign_in_again(site, browser):
    page = browser.new_page()
    page.goto(site + "/")
    page.evaluate("localStorage.setItem('pg_billing.token', %s)" % json.dumps("not-a-jwt"))
    page.goto(site + "/billing")
    expect(page.get_by_role("alert").first).to_contain_text("Sign in again")
    page.get_by_role("button", name="Sign in again").first.click()
    expect(page.get_by_label("Access token")).to_be_visible()
