"""Bad input sweep over every public function: each argument in turn gets NULL, zero, negative,
extreme, huge, malformed or unicode values while the others stay valid. Every call either succeeds
or fails with a documented SQLSTATE; the server never restarts; the ledger stays consistent."""
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid

import psycopg
import pytest

# The README's error table (plus 22P02 for values PostgreSQL cannot parse, e.g. a non-uuid).
DOCUMENTED = {"22023", "22003", "22P02", "42501", "PT402", "PT409", "PT404", "PT410", "PT400", "PT422", "PT500"}

I64_MAX = 2**63 - 1
BIG_TEXT = "x" * (10 * 1024 * 1024)
SQLISH = "'); drop table billing.balances; --"
UNICODE = "ключ🔑\u202e\u0000".replace("\u0000", "")

VALUES = {
    "uuid": [None, "00000000-0000-0000-0000-000000000000", "not-a-uuid"],
    "bigint": [None, 0, -1, 1, I64_MAX, -I64_MAX - 1],
    "integer": [None, 0, -1, 2**31 - 1, -2**31],
    "text": [None, "", "x", BIG_TEXT, UNICODE, SQLISH, "{", "[1,2]", '{"id":"evt_x"}'],
    "jsonb": [None, "{}", "[1]", '"str"', json.dumps({UNICODE: SQLISH, "n": {"a": [1, None]}}),
              json.dumps({"k": "v" * (1024 * 1024)})],
    "interval": [None, "0", "-1 second", "1 second", "100 years"],
    "timestamptz": [None, "-infinity", "infinity", "1970-01-01", "2999-01-01"],
}


def baseline(db, user, reservation):
    now = int(time.time())
    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "customer.created",
                       "created": now, "data": {"object": {"id": "cus_x"}}})
    sig = hmac.new(b"whsec_sweep", f"{now}.{body}".encode(), hashlib.sha256).hexdigest()
    u = str(user)
    return {
        "consume_tokens": [("uuid", u), ("bigint", 1), ("text", None), ("jsonb", "{}")],
        "get_balance": [("uuid", u)],
        "reserve_tokens": [("uuid", u), ("bigint", 1), ("text", None), ("interval", "1 minute")],
        "commit_reservation": [("uuid", str(reservation)), ("bigint", 0)],
        "release_reservation": [("uuid", str(reservation))],
        "grant_purchase": [("uuid", u), ("bigint", 1), ("text", f"sweep-{uuid.uuid4()}"), ("text", "admin"),
                           ("timestamptz", None), ("jsonb", "{}")],
        "verify_stripe_signature": [("text", body), ("text", f"t={now},v1={sig}"), ("text", "whsec_sweep"),
                                    ("integer", 300)],
        "stripe_signature_rejection": [("text", body), ("text", f"t={now},v1={sig}"), ("text", "whsec_sweep"),
                                       ("integer", 300)],
        "handle_stripe_webhook": [("text", body), ("text", f"t={now},v1={sig}"), ("text", "whsec_sweep")],
        "run_maintenance": [("integer", 100)],
        "get_usage_history": [("timestamptz", None), ("timestamptz", None), ("text", "day"), ("text", None)],
        "get_grant_history": [("integer", 10), ("integer", 0)],
        "get_payment_history": [("integer", 10), ("integer", 0)],
        "redeem_promo_code": [("text", "SWEEPCODE")],
    }


def cases(db, user, reservation):
    for fn, args in baseline(db, user, reservation).items():
        yield fn, [v for _, v in args], [t for t, _ in args]
        for i, (typ, _) in enumerate(args):
            for bad in VALUES[typ]:
                vals = [v for _, v in args]
                vals[i] = bad
                yield fn, vals, [t for t, _ in args]


def test_every_public_function_survives_bad_input(db):
    user = db.user()
    db.grant(user, 1000)
    reservation = db.one("select reservation_id from billing.reserve_tokens(%s, 10, 'sweep')", (user,))[0]
    with db.service() as c:
        c.execute("insert into billing.promo_codes (code, tokens) values ('SWEEPCODE', 5) on conflict do nothing")
    started = db.one("select pg_postmaster_start_time()")[0]
    undocumented, calls = [], 0
    claims = json.dumps({"sub": str(user), "role": "authenticated"})
    with db.service() as c:
        for fn, vals, types in cases(db, user, reservation):
            placeholders = ", ".join(f"%s::{t}" for t in types)
            # frontend functions act for the JWT's user; run them as PostgREST would
            frontend = fn in ("get_usage_history", "get_grant_history", "get_payment_history", "redeem_promo_code")
            calls += 1
            try:
                with c.transaction():
                    if frontend:
                        c.execute("select set_config('role', 'authenticated', true),"
                                  " set_config('request.jwt.claims', %s, true)", (claims,))
                    c.execute(f"select * from billing.{fn}({placeholders})", vals)
            except psycopg.Error as e:
                if e.sqlstate not in DOCUMENTED:
                    shown = [v if not isinstance(v, str) or len(v) < 60 else f"<{len(v)} chars>" for v in vals]
                    undocumented.append((fn, shown, e.sqlstate, e.diag.message_primary))
    assert calls > 200
    assert undocumented == []
    assert db.one("select pg_postmaster_start_time()")[0] == started, "the server restarted"
    assert db.ledger_problems() == []


def test_sql_looking_keys_and_metadata_are_stored_verbatim(db):
    user = db.user()
    db.grant(user, 10)
    meta = {SQLISH: UNICODE, "model": "gpt'; --"}
    db.one("select * from billing.consume_tokens(%s, 1, %s, %s)", (user, SQLISH, json.dumps(meta)))
    assert db.one("select idempotency_key, metadata from billing.token_usage where account_id = %s", (user,)) == (SQLISH, meta)
    assert db.one("select count(*) from billing.balances")[0] > 0


def test_sums_that_would_overflow_are_refused(db):
    user = db.user()
    db.grant(user, I64_MAX - 5)
    for extra in [6, I64_MAX]:
        with pytest.raises(psycopg.Error) as e:
            db.grant(user, extra)
        assert e.value.sqlstate == "22003"
    assert db.balance(user) == I64_MAX - 5
    with pytest.raises(psycopg.Error) as e:
        db.one("select * from billing.consume_tokens(%s, %s)", (user, I64_MAX))
    assert e.value.sqlstate == "PT402"
    assert db.ledger_problems() == []


def test_unknown_api_version_and_wrong_types_in_a_signed_event(db):
    now = int(time.time())

    def deliver(obj):
        body = json.dumps(obj)
        sig = hmac.new(b"whsec_sweep", f"{now}.{body}".encode(), hashlib.sha256).hexdigest()
        return db.one("select billing.handle_stripe_webhook(%s, %s, 'whsec_sweep')", (body, f"t={now},v1={sig}"))[0]

    # an API version from the future with a type pg_billing does not use: recorded, ignored
    r = deliver({"id": f"evt_{uuid.uuid4().hex}", "type": "thing.happened", "created": now, "api_version": "2099-01-01",
                 "data": {"object": {}}})
    assert r["outcome"] == "ignored"
    # a used type whose fields have the wrong types: kept as failed with PT422, nothing moves
    evt = f"evt_{uuid.uuid4().hex}"
    r = deliver({"id": evt, "type": "charge.refunded", "created": now, "livemode": True,
                 "data": {"object": {"id": "ch_x", "payment_intent": "pi_x", "amount": "lots", "amount_refunded": [1]}}})
    assert (r["outcome"], r["error"]["code"]) == ("failed", "PT422")
    assert db.one("select status from billing.payment_transactions where stripe_event_id = %s", (evt,))[0] == "failed"
    assert db.one("select count(*) from billing.stripe_payments where payment_key = 'pi_x'")[0] == 0
    # a refund that names no payment moves nothing: recorded as ignored
    r = deliver({"id": f"evt_{uuid.uuid4().hex}", "type": "refund.updated", "created": now, "livemode": True,
                 "data": {"object": {"id": "re_x", "payment_intent": 5, "charge": None, "amount": 1, "status": "succeeded"}}})
    assert (r["outcome"], r["reason"]) == ("ignored", "no_payment")
    # an object without an id is data Stripe never sends: kept as failed
    r = deliver({"id": f"evt_{uuid.uuid4().hex}", "type": "charge.refunded", "created": now, "livemode": True,
                 "data": {"object": {"payment_intent": "pi_y", "amount_refunded": 1}}})
    assert (r["outcome"], r["error"]["code"]) == ("failed", "PT422")


def test_mutated_stripe_events_are_applied_ignored_or_kept_as_failed():
    """Every fixture event with leaves swapped for values of other types, signed: the call never
    errors except 22023 for a payload without a string id and type, every recorded event ends
    processed, ignored, stale or failed, and the ledger stays consistent."""
    import random
    from stripe_story import CLOVER, LEGACY, event_json, fresh_story_db, names

    d = fresh_story_db("pg_billing_mutated_events")
    rng = random.Random(7)
    odd = [None, True, -1, 0, 2**63, -(2**63), 1.5, "", "x" * 300, "9" * 30, [], {}, ["a", 1], {"id": 5}, "2025-13-45T99:99:99Z"]

    def mutate(v, depth=0):
        if isinstance(v, dict):
            return {k: (rng.choice(odd) if rng.random() < 0.15 else mutate(x, depth + 1)) for k, x in v.items()}
        if isinstance(v, list):
            return [mutate(x, depth + 1) for x in v]
        return v

    errors = []
    for version in [CLOVER, LEGACY]:
        for name in names(version):
            for attempt in range(6):
                body = mutate(event_json(version, name.split("_")[0]))
                if isinstance(body.get("id"), str):
                    body["id"] = f"{body['id']}-{version}-{attempt}"
                try:
                    r = d.deliver(body)
                    assert r["outcome"] in ("processed", "ignored", "stale", "failed", "duplicate"), r
                except psycopg.Error as e:
                    valid_id = isinstance(body.get("id"), str) and 0 < len(body["id"]) <= 255
                    valid_type = isinstance(body.get("type"), str) and 0 < len(body["type"]) <= 255
                    if e.sqlstate != "22023" or (valid_id and valid_type):
                        errors.append((name, e.sqlstate, e.diag.message_primary))
    assert errors == []
    assert d.one("select count(*) from billing.payment_transactions where status not in"
                 " ('processed', 'ignored', 'stale', 'failed')")[0] == 0
    # every failure is the documented "cannot be applied" code, with a message saying why
    assert d.all("select distinct error ->> 'code' from billing.payment_transactions where status = 'failed'") == [("PT422",)]
    assert d.ledger_problems() == []
