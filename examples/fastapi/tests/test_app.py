"""The example backend end to end: HTTP in, pg_billing in the database, real PostgreSQL."""
import concurrent.futures
import json
import time
import uuid

import httpx

from support import post_webhook, story_event, token_for


def new_user(db):
    u = uuid.uuid4()
    db.execute("insert into auth.users (id, email) values (%s, %s)", (u, f"{u}@example.com"))
    return u


def balance(db, u):
    return db.execute("select billing.get_balance(%s)", (u,)).fetchone()[0]


def auth(u):
    return {"Authorization": f"Bearer {token_for(u)}"}


def test_fixture_story_through_http(http, db):
    u = new_user(db)
    ids = {"id": f"evt_{uuid.uuid4().hex}", "data.object.id": f"cs_{uuid.uuid4().hex}",
           "data.object.payment_intent": f"pi_{uuid.uuid4().hex}"}
    checkout = story_event("01", u, **ids)
    r = post_webhook(http, checkout)
    assert r.status_code == 200 and r.json()["outcome"] == "processed"
    assert post_webhook(http, checkout).json()["outcome"] == "duplicate"
    assert balance(db, u) == 1000
    sub_id = f"sub_{uuid.uuid4().hex}"
    for prefix in ["04", "05"]:
        r = post_webhook(http, story_event(prefix, u, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.id":
                                                          sub_id if prefix == "05" else f"cs_{uuid.uuid4().hex}"}))
        assert r.status_code == 200, r.text
    r = post_webhook(http, story_event("06", u, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.id": f"in_{uuid.uuid4().hex}"}))
    assert r.json()["effect"]["action"] == "granted"
    assert balance(db, u) == 101000
    refund = story_event("12", u, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.payment_intent":
                                     ids["data.object.payment_intent"]})
    assert post_webhook(http, refund).json()["effect"]["grants"][0]["clawed_back"] == 500
    assert balance(db, u) == 100500
    summary = http.get("/api/billing/subscription", headers=auth(u)).json()
    assert summary["balance"] == 100500 and summary["subscription"]["plan"] == "pro"
    assert summary["subscription"]["status"] == "active"


def test_bad_signature_is_400_and_records_nothing(http, db):
    payload = story_event("17", **{"id": f"evt_{uuid.uuid4().hex}"})
    r = post_webhook(http, payload, secret="whsec_wrong")
    assert r.status_code == 400
    r = http.post("/api/payments/webhook", content=payload.encode(), headers={"Stripe-Signature": "t=1,v1=00"})
    assert r.status_code == 400
    assert http.post("/api/payments/webhook", content=b"\xff\xfe", headers={"Stripe-Signature": "t=1"}).status_code == 400
    evt = json.loads(payload)["id"]
    assert db.execute("select count(*) from billing.payment_transactions where stripe_event_id = %s", (evt,)).fetchone()[0] == 0


def test_failed_event_is_5xx_so_stripe_retries_and_the_retry_applies_it(http, db):
    u = new_user(db)
    price = f"price_late_{uuid.uuid4().hex[:8]}"
    payload = story_event("01", u, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.id": f"cs_{uuid.uuid4().hex}",
                                      "data.object.metadata.price_id": price})
    r = post_webhook(http, payload)
    assert r.status_code == 503 and r.json()["outcome"] == "failed" and r.json()["error"]["code"] == "PT422"
    evt = json.loads(payload)["id"]
    assert db.execute("select status from billing.payment_transactions where stripe_event_id = %s", (evt,)).fetchone() \
        == ("failed",)  # kept, not lost
    db.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency)"
               " values (%s, 50, 999, 'usd')", (price,))
    r = post_webhook(http, payload)
    assert r.status_code == 200 and r.json()["outcome"] == "processed"
    assert balance(db, u) == 50


def test_ignored_events_are_2xx(http, db):
    for prefix in ["17", "40"]:  # a type pg_billing does not use; a thin (v2) event
        r = post_webhook(http, story_event(prefix, **{"id": f"evt_{uuid.uuid4().hex}"}))
        assert (r.status_code, r.json()["outcome"]) == (200, "ignored"), prefix


def test_concurrent_duplicate_webhook_posts_grant_once(server, db):
    u = new_user(db)
    payload = story_event("01", u, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.id": f"cs_{uuid.uuid4().hex}",
                                      "data.object.payment_intent": f"pi_{uuid.uuid4().hex}"})

    def send(_):
        with httpx.Client(base_url=server, timeout=30) as c:
            return post_webhook(c, payload)

    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        responses = list(ex.map(send, range(10)))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["outcome"] for r in responses) == ["duplicate"] * 9 + ["processed"]
    assert balance(db, u) == 1000


def test_create_checkout_sends_exact_parameters(http, db, stripe_http):
    u = new_user(db)
    stripe_http.requests.clear()
    r = http.post("/api/payments/create-checkout", json={"price_id": "price_Pack1000", "quantity": 3}, headers=auth(u))
    assert r.status_code == 200 and r.json()["id"] == "cs_test_recorded"
    method, url, params = stripe_http.requests[-1]
    assert (method, url) == ("post", "https://api.stripe.com/v1/checkout/sessions")
    assert params == {
        "mode": "payment",
        "line_items[0][price]": "price_Pack1000",
        "line_items[0][quantity]": "3",
        "client_reference_id": str(u),
        "metadata[user_id]": str(u),
        "metadata[price_id]": "price_Pack1000",
        "metadata[quantity]": "3",
        "success_url": "http://localhost:3000/billing?checkout=success",
        "cancel_url": "http://localhost:3000/billing?checkout=cancel",
    }
    r = http.post("/api/payments/create-checkout", json={"price_id": "price_ProMonthly", "quantity": 5}, headers=auth(u))
    params = stripe_http.requests[-1][2]
    assert params["mode"] == "subscription" and params["line_items[0][quantity]"] == "1"
    assert params["subscription_data[metadata][user_id]"] == str(u)
    n = len(stripe_http.requests)
    assert http.post("/api/payments/create-checkout", json={"price_id": "price_nope"}, headers=auth(u)).status_code == 400
    assert http.post("/api/payments/create-checkout", json={"price_id": "price_Pack1000"}).status_code == 401
    assert len(stripe_http.requests) == n  # nothing sent to Stripe for refused requests


def test_metered_chat_charges_what_was_streamed(http, db):
    """echo-1 costs 1 credit per input token and 2 per output token (conftest)."""
    u = new_user(db)
    db.execute("select billing.grant_purchase(%s, 200, %s)", (u, f"chat-{u}"))
    r = http.post("/api/chat", json={"prompt": "hello there", "max_tokens": 50}, headers=auth(u))
    assert r.status_code == 200
    produced = len(r.text.split())
    assert 0 < produced <= 50
    cost = 2 + 2 * produced
    rid = r.headers["X-Reservation-Id"]
    assert db.execute("select status, tokens, committed_tokens from billing.token_reservations where id = %s",
                      (rid,)).fetchone() == ("committed", 2 + 2 * 50, cost)  # held: the prompt and 50 output tokens
    assert db.execute("select metadata from billing.token_usage where reservation_id = %s", (rid,)).fetchone()[0] == \
        {"model": "echo-1", "input_tokens": 2, "output_tokens": produced, "cached_input_tokens": 0}
    assert balance(db, u) == 200 - cost
    rows = http.get("/api/billing/usage", params={"group_by": "model"}, headers=auth(u)).json()
    assert [(r["group"], r["tokens"], r["input_tokens"], r["output_tokens"]) for r in rows] == \
        [("echo-1", cost, 2, produced)]


def test_metered_chat_without_enough_tokens_is_402(http, db):
    u = new_user(db)
    db.execute("select billing.grant_purchase(%s, 10, %s)", (u, f"chat-{u}"))
    r = http.post("/api/chat", json={"prompt": "hi", "max_tokens": 50}, headers=auth(u))
    assert r.status_code == 402
    assert r.json()["details"] == "requested 101, available 10"  # 1 input + 50 output at 2 credits
    assert balance(db, u) == 10
    r = http.post("/api/chat", json={"prompt": "hi", "model": "nobody-priced-this"}, headers=auth(u))
    assert r.status_code == 400 and r.json()["message"] == "unknown model: no price in force"


def test_chat_over_the_plans_rate_limit_is_429_with_retry_after(http, db):
    u = new_user(db)
    db.execute("select billing.grant_purchase(%s, 1000, %s)", (u, f"chat-{u}"))
    db.execute("insert into billing.plans (code, stripe_price_id, tokens_per_period) values ('limited', 'price_limited', 1)"
               " on conflict do nothing")
    db.execute("insert into billing.rate_limits (plan_code, metric, window_seconds, max_amount)"
               " values ('limited', 'requests', 3600, 2) on conflict do nothing")
    db.execute("insert into billing.user_subscriptions (stripe_subscription_id, account_id, plan_id, status,"
               " last_event_created, last_event_id) select %s, %s, id, 'active', now(), 'evt_limited'"
               " from billing.plans where code = 'limited'", (f"sub_{u.hex}", u))
    for _ in range(2):
        assert http.post("/api/chat", json={"prompt": "hi", "max_tokens": 5}, headers=auth(u)).status_code == 200
    r = http.post("/api/chat", json={"prompt": "hi", "max_tokens": 5}, headers=auth(u))
    assert r.status_code == 429
    assert r.json()["details"].startswith("limit requests per 3600s: used 2 of 2; retry after ")
    assert 1 <= int(r.headers["Retry-After"]) <= 3600


def test_client_disconnect_mid_stream_releases_the_hold(server, db):
    u = new_user(db)
    db.execute("select billing.grant_purchase(%s, 1000, %s)", (u, f"chat-{u}"))
    with httpx.Client(base_url=server, timeout=30) as c:
        with c.stream("POST", "/api/chat", json={"prompt": "a long question " * 20, "max_tokens": 300},
                      headers=auth(u)) as r:
            rid = r.headers["X-Reservation-Id"]
            next(r.iter_raw())  # first words arrive, then the client goes away
            assert balance(db, u) == 1000 - (60 + 2 * 300)
    for _ in range(100):
        status = db.execute("select status from billing.token_reservations where id = %s", (rid,)).fetchone()[0]
        if status != "held":
            break
        time.sleep(0.05)
    assert status == "released"
    assert balance(db, u) == 1000
    assert db.execute("select count(*) from billing.verify_ledger()").fetchone()[0] == 0


def test_usage_and_subscription_are_read_as_the_user(http, db):
    a, b = new_user(db), new_user(db)
    for u, model in [(a, "small"), (b, "large")]:
        db.execute("select billing.grant_purchase(%s, 100, %s)", (u, f"use-{u}"))
        db.execute("select billing.consume_tokens(%s, 7, null, %s)", (u, json.dumps({"model": model})))
    rows = http.get("/api/billing/usage", params={"group_by": "model"}, headers=auth(a)).json()
    assert [(r["group"], r["tokens"]) for r in rows] == [("small", 7)]
    assert http.get("/api/billing/usage", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/api/billing/usage", params={"bucket": "week"}, headers=auth(a)).status_code == 400
    assert http.get("/api/billing/subscription", headers=auth(a)).json()["balance"] == 93


def paid_story(http, u):
    """A pack bought with Checkout, then the Pro plan subscribed and its first invoice paid."""
    new = {"id": lambda: f"evt_{uuid.uuid4().hex}"}
    events = [story_event("01", u, **{"id": new["id"](), "data.object.id": f"cs_{uuid.uuid4().hex}",
                                      "data.object.payment_intent": f"pi_{uuid.uuid4().hex}"})]
    sub_id = f"sub_{uuid.uuid4().hex}"
    events += [story_event(prefix, u, **{"id": new["id"](), "data.object.id": obj}).replace("sub_TestProA", sub_id)
               for prefix, obj in [("04", f"cs_{uuid.uuid4().hex}"), ("05", sub_id), ("06", f"in_{uuid.uuid4().hex}")]]
    for e in events:
        r = post_webhook(http, e)
        assert r.status_code == 200, r.text


def test_the_billing_page_reads_catalog_history_with_invoices_and_pages(http, db):
    u = new_user(db)
    paid_story(http, u)
    db.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, active)"
               " values ('price_inactive', 5, 5, false) on conflict do nothing")
    catalog = http.get("/api/billing/catalog", headers=auth(u)).json()
    assert {"price_id": "price_Pack1000", "name": "1,000 tokens", "tokens": 1000, "price_amount": 999,
            "currency": "usd"} in catalog["packs"]
    assert "pro" in [p["code"] for p in catalog["plans"]]
    assert all(p["price_id"] != "price_inactive" for p in catalog["packs"])
    first, second = (http.get("/api/billing/payments", params={"limit": 2, "offset": o}, headers=auth(u)).json()
                     for o in (0, 2))
    assert len(first) == 2 and len(second) == 2
    assert not {p["event_id"] for p in first} & {p["event_id"] for p in second}
    invoice = next(p for p in first + second if p["event_type"] == "invoice.paid")
    assert invoice["hosted_invoice_url"].startswith("https://invoice.stripe.com/")
    assert invoice["invoice_pdf"].startswith("https://pay.stripe.com/") and invoice["amount"] == 2000
    checkout = next(p for p in first + second if p["event_type"] == "checkout.session.completed"
                    and p["action"] == "granted")
    assert (checkout["amount"], checkout["currency"], checkout["hosted_invoice_url"]) == (999, "usd", None)
    grants = [http.get("/api/billing/grants", params={"limit": 1, "offset": o}, headers=auth(u)).json() for o in (0, 1, 2)]
    assert [len(g) for g in grants] == [1, 1, 0]
    assert sorted(g[0]["tokens"] for g in grants[:2]) == [1000, 100000]
    assert http.get("/api/billing/grants", params={"limit": 501}, headers=auth(u)).status_code == 422
    other = new_user(db)
    assert http.get("/api/billing/payments", headers=auth(other)).json() == []  # nobody else's payments


def test_promo_codes_are_redeemed_once_with_each_refusal_as_its_status(http, db):
    u = new_user(db)
    code = f"WELCOME{uuid.uuid4().hex[:8].upper()}"
    db.execute("insert into billing.promo_codes (code, tokens) values (%s, 50)", (code,))
    db.execute("insert into billing.promo_codes (code, tokens, valid_until) values (%s, 50, now() - interval '1 day')",
               (code + "OLD",))
    r = http.post("/api/billing/promo", json={"code": code.lower()}, headers=auth(u))
    assert r.status_code == 200 and r.json()["tokens"] == 50 and r.json()["balance_after"] == 50
    again = http.post("/api/billing/promo", json={"code": code}, headers=auth(u))
    assert (again.status_code, again.json()["code"]) == (409, "PT409")
    unknown = http.post("/api/billing/promo", json={"code": "NOPE"}, headers=auth(u))
    assert (unknown.status_code, unknown.json()["code"]) == (404, "PT404")
    expired = http.post("/api/billing/promo", json={"code": code + "OLD"}, headers=auth(u))
    assert (expired.status_code, expired.json()["code"]) == (410, "PT410")
    assert balance(db, u) == 50


def test_manage_billing_opens_the_customer_portal_of_the_callers_customer(http, db, stripe_http):
    u = new_user(db)
    assert http.post("/api/payments/portal", json={}, headers=auth(u)).status_code == 404  # no customer yet
    paid_story(http, u)
    r = http.post("/api/payments/portal", json={}, headers=auth(u))
    assert r.status_code == 200 and r.json()["url"] == "https://billing.stripe.com/p/session/test_recorded"
    method, url, params = stripe_http.requests[-1]
    assert (method, url) == ("post", "https://api.stripe.com/v1/billing_portal/sessions")
    assert params == {"customer": f"cus_{u.hex[:12]}", "return_url": "http://localhost:3000/billing"}
    team = http.post("/api/accounts", json={"name": "t"}, headers=auth(new_user(db))).json()["account_id"]
    assert http.post("/api/payments/portal", json={"account_id": team}, headers=auth(u)).status_code == 403


def test_a_team_buys_once_and_its_members_spend_within_their_limits(http, db, stripe_http):
    owner, member, outsider = new_user(db), new_user(db), new_user(db)
    r = http.post("/api/accounts", json={"name": "Acme"}, headers=auth(owner))
    assert r.status_code == 200
    team = r.json()["account_id"]
    r = http.put(f"/api/accounts/{team}/members", json={"user_id": str(member), "spend_limit": 200,
                                                        "spend_limit_period": "day"}, headers=auth(owner))
    assert r.status_code == 200 and r.json()["spend_limit"] == 200
    assert http.put(f"/api/accounts/{team}/members", json={"user_id": str(outsider)},
                    headers=auth(member)).status_code == 403  # members manage no one

    # the owner buys for the team; a member cannot, and nothing reaches Stripe for the refusal
    r = http.post("/api/payments/create-checkout", json={"price_id": "price_Pack1000", "account_id": team},
                  headers=auth(owner))
    assert r.status_code == 200 and stripe_http.requests[-1][2]["metadata[account_id]"] == team
    n = len(stripe_http.requests)
    assert http.post("/api/payments/create-checkout", json={"price_id": "price_Pack1000", "account_id": team},
                     headers=auth(member)).status_code == 403
    assert len(stripe_http.requests) == n
    checkout = story_event("01", owner, **{"id": f"evt_{uuid.uuid4().hex}", "data.object.id": f"cs_{uuid.uuid4().hex}",
                                          "data.object.payment_intent": f"pi_{uuid.uuid4().hex}",
                                          "data.object.metadata.account_id": team})
    assert post_webhook(http, checkout).json()["effect"]["account_id"] == team
    assert balance(db, owner) == 0

    # the member spends from the team until their daily limit; an outsider cannot spend from it
    r = http.post("/api/chat", json={"prompt": "hi", "max_tokens": 50, "account_id": team}, headers=auth(member))
    assert r.status_code == 200
    spent = 1 + 2 * len(r.text.split())  # the hold was 101; what was not used went back to the member's limit
    r = http.post("/api/chat", json={"prompt": "hi", "max_tokens": (200 - spent) // 2 + 1, "account_id": team},
                  headers=auth(member))
    assert r.status_code == 402 and r.json()["details"].startswith("member limit")
    assert http.post("/api/chat", json={"prompt": "hi", "max_tokens": 5, "account_id": team},
                     headers=auth(outsider)).status_code == 403
    accounts = http.get("/api/accounts", headers=auth(member)).json()
    assert [(a["kind"], a["balance"], a["spent_this_period"]) for a in accounts] == \
        [("personal", 0, None), ("team", 1000 - spent, spent)]
    assert http.get("/api/billing/subscription", params={"account_id": team}, headers=auth(member)).json()["balance"] \
        == 1000 - spent

    # removed, the member spends nothing more
    assert http.delete(f"/api/accounts/{team}/members/{member}", headers=auth(owner)).json() == {"removed": True}
    assert http.post("/api/chat", json={"prompt": "hi", "max_tokens": 5, "account_id": team},
                     headers=auth(member)).status_code == 403
    assert db.execute("select count(*) from billing.verify_ledger()").fetchone()[0] == 0
