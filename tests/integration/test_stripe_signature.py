"""Differential test: billing.verify_stripe_signature against the official `stripe` package.

Every generated case says whether its header is canonical (the strict form of stripe.md that all
official libraries read alike). Canonical cases must get stripe-python's verdict; all others must
be rejected; none may raise.
"""
import random
import string
import time

import stripe

SECRETS = ["whsec_test_secret", "whsec_" + "A" * 32, "whsec_ünïcode_sécret"]


def stripe_verdict(payload, header, secret, tolerance):
    try:
        return bool(stripe.WebhookSignature.verify_header(payload, header, secret, tolerance))
    except Exception:  # noqa: BLE001 - SignatureVerificationError, and TypeError/ValueError on junk
        return False


def sig(payload, secret, t):
    return stripe.WebhookSignature._compute_signature(f"{t}.{payload}", secret)


def generate_cases(rng, n_random=3000):
    now = int(time.time())
    payloads = ['{"id":"evt_1","object":"event"}', '{"emoji":"😀","ü":"ß"}', "x", "a" * 2048,
                '{"big":"' + "b" * (1024 * 1024) + '"}']
    cases = []  # (payload, header, secret, tolerance, canonical)

    def add(p, h, s, tol, canonical):
        cases.append((p, h, s, tol, canonical))

    for p in payloads:
        for s in SECRETS:
            good = sig(p, s, now)
            add(p, f"t={now},v1={good}", s, 300, True)                             # valid
            add(p + " ", f"t={now},v1={good}", s, 300, True)                       # tampered payload
            add(p, f"t={now},v1={good}", s + "x", 300, True)                       # wrong secret
            old, fut = now - 10_000, now + 10_000
            add(p, f"t={old},v1={sig(p, s, old)}", s, 300, True)                   # too old
            add(p, f"t={old},v1={sig(p, s, old)}", s, 0, True)                     # tolerance 0: no age check
            add(p, f"t={fut},v1={sig(p, s, fut)}", s, 300, True)                   # future passes
            add(p, f"t={now},v1={'0' * 64},v1={good}", s, 300, True)               # several v1
            add(p, f"t={now},v1={'0' * 64},v1={'f' * 64}", s, 300, True)           # several, none match
            add(p, f"t={now},v0={good}", s, 300, True)                             # v0 only
            add(p, f"v0=abc,t={now},v1={good},v2=zz", s, 300, True)                # other schemes ignored
            add(p, f"v1={good}", s, 300, True)                                     # missing t
            add(p, f"t={now},v1={good.upper()}", s, 300, False)                    # uppercase hex
            add(p, f"t={now},t={now},v1={good}", s, 300, False)                    # repeated t
            add(p, f"t={now}, v1={good}", s, 300, False)                           # space after comma
            add(p, f"t= {now},v1={good}", s, 300, False)                           # space in number
            add(p, f"t=+{now},v1={good}", s, 300, False)                           # sign
            add(p, f"t=0{now},v1={sig(p, s, '0' + str(now))}", s, 300, False)     # leading zero
            add(p, f"t={now},v1={good},", s, 300, False)                           # trailing comma
            add(p, f"t={now},v1={good}=junk", s, 300, False)                       # two '='
            add(p, f"t={now:_},v1={good}", s, 300, False)                          # underscore
            add(p, f"t={now},v1={good[:40]}", s, 300, True)                        # short v1
            add(p, f"t={now},v1={good}00", s, 300, True)                           # long v1
            add(p, f"t={now},v1={'é' * 32}", s, 300, False)                        # non-ASCII v1
            add(p, f"t={now},v1=", s, 300, True)                                   # empty v1
            add("", f"t={now},v1={sig('', s, now)}", s, 300, False)                # empty payload
            add(p, "", s, 300, False)                                              # empty header
            for cut in (1, 5, 20, 40):                                             # truncated
                h = f"t={now},v1={good}"
                add(p, h[:cut], s, 300, False)
    small = payloads[:4]
    alphabet = string.ascii_letters + string.digits + "=,. -_+tv01é"
    for _ in range(n_random):                                                  # junk and mutations
        p = rng.choice(small)
        s = rng.choice(SECRETS)
        good = f"t={now},v1={sig(p, s, now)}"
        kind = rng.random()
        if kind < 0.4:
            h = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
        else:
            chars = list(good)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(chars))
                chars[i] = rng.choice(alphabet)
            h = "".join(chars)
            if h == good:  # a mutation that changed nothing is the valid header, not junk
                continue
        add(p, h, s, rng.choice([0, 300]), False)
    return cases


def our_verdicts(db, cases):
    with db.service() as c:
        rows = c.execute(
            "select billing.verify_stripe_signature(p, h, s, tol) from"
            " unnest(%s::text[], %s::text[], %s::text[], %s::int[]) with ordinality as x(p, h, s, tol, i) order by i",
            ([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases], [c[3] for c in cases]),
        ).fetchall()
    return [r[0] for r in rows]


def test_matches_official_library_on_canonical_headers_and_rejects_the_rest(db):
    cases = generate_cases(random.Random(20261124))
    ours = our_verdicts(db, cases)
    assert len(ours) == len(cases) > 3000
    canonical_disagreements, accepted_noncanonical = [], []
    for (p, h, s, tol, canonical), v in zip(cases, ours):
        if canonical:
            if v != stripe_verdict(p, h, s, tol):
                canonical_disagreements.append((p[:40], h, s, tol, v))
        elif v:
            accepted_noncanonical.append((p[:40], h, s, tol))
    assert canonical_disagreements == []
    assert accepted_noncanonical == []
    # the oracle is not vacuous: valid cases exist and both sides accept them
    accepted = sum(1 for (c, v) in zip(cases, ours) if c[4] and v)
    assert accepted >= 5 * len(SECRETS) * 2


def test_official_library_accepts_what_we_reject_only_where_libraries_disagree(db):
    """Documents the deliberate differences: stripe-python accepts these, pg_billing does not."""
    now = int(time.time())
    p, s = '{"id":"evt_1"}', "whsec_test_secret"
    good = sig(p, s, now)
    lenient = [f"t={now},v1={good}=junk", f"t=+{now},v1={good}",
               f"t={now},t={now},v1={good}"]
    for h in lenient:
        assert stripe_verdict(p, h, s, 300) is True, h
    assert our_verdicts(db, [(p, h, s, 300, False) for h in lenient]) == [False] * len(lenient)


def test_rejection_reasons(db):
    now = int(time.time())
    p, s = '{"id":"evt_1"}', "whsec_test_secret"
    good = sig(p, s, now)
    expected = {
        f"t={now},v1={good}": None,
        "garbage": "malformed_header",
        f"t={now},v0=abc": "no_v1_signature",
        f"t={now},v1={'0' * 64}": "signature_mismatch",
        f"t={now - 1000},v1={sig(p, s, now - 1000)}": "timestamp_outside_tolerance",
    }
    with db.service() as c:
        for h, code in expected.items():
            reason = c.execute("select billing.stripe_signature_rejection(%s, %s, %s)", (p, h, s)).fetchone()[0]
            assert (reason.split(":")[0] if reason else None) == code, h


def test_argument_errors_are_22023(db):
    import psycopg
    import pytest
    for args in [("{}", "t=1,v1=0", None, 300), ("{}", "t=1,v1=0", "", 300), ("{}", "t=1,v1=0", "s", -1)]:
        with pytest.raises(psycopg.Error) as e:
            db.one("select billing.verify_stripe_signature(%s, %s, %s, %s)", args)
        assert e.value.sqlstate == "22023"


def test_bytea_overload_verifies_raw_bytes(db):
    now = int(time.time())
    body = '{"id":"evt_1","name":"Zoë"}'
    h = f"t={now},v1={sig(body, 'whsec_x', now)}"
    assert db.one("select billing.verify_stripe_signature(%s::bytea, %s, 'whsec_x')", (body.encode(), h))[0] is True
    assert db.one("select billing.verify_stripe_signature(%s::bytea, %s, 'whsec_x')", (b"\xff\xfe", h))[0] is False
