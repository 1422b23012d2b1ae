"""Crash safety: under concurrent consume / grant / webhook load from several connections, kill -9 one
backend (PostgreSQL then restarts every backend), and separately stop the postmaster in immediate
mode and start it again. Every operation the client saw commit is there afterwards, none that failed
is, verify_ledger() is empty, and the load resumes.

Runs on a cluster of its own (.cluster-crash/, port 54350) so the other tests are not disturbed."""
import hashlib
import hmac
import json
import os
import pathlib
import signal
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PORT = 54350
ENV = dict(os.environ, PG_BILLING_PORT=str(PORT), PG_BILLING_CLUSTER_DIR=str(ROOT / ".cluster-crash"))
SECRET = "whsec_crash"


def cluster(cmd):
    out = subprocess.run(["bash", str(ROOT / "scripts" / "cluster.sh"), cmd], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def crashdb():
    cluster("start")
    host = str(pathlib.Path(cluster("dir")) / "sock")

    def connect(dbname="pg_billing_crash", **kw):
        return psycopg.connect(host=host, port=PORT, user="postgres", dbname=dbname, autocommit=True, **kw)

    with connect("postgres") as c:
        c.execute("drop database if exists pg_billing_crash with (force)")
        c.execute("create database pg_billing_crash")
    with connect() as c:
        c.execute((ROOT / "sql" / "supabase-compat.sql").read_text())
        c.execute("create extension pg_billing")
        c.execute("insert into billing.token_packs (stripe_price_id, tokens, price_amount, currency)"
                  " values ('price_crash', 10, 100, 'usd')")
        c.execute("insert into billing.settings (stripe_livemode) values (false)")
    yield connect
    cluster("stop")


class Load:
    """Workers doing money operations; each records what it saw: committed, failed, or unknown."""

    def __init__(self, connect, users):
        self.connect, self.users = connect, users
        self.committed = {"consume": set(), "grant": set(), "event": set()}
        self.failed = {"consume": set(), "grant": set(), "event": set()}
        self.stop = threading.Event()
        self.run_id = uuid.uuid4().hex[:8]  # identifiers unique across runs on the same database
        self.lock = threading.Lock()
        self.ok_after = 0

    def op(self, c, i, n):
        user = self.users[(i + n) % len(self.users)]
        kind = n % 4
        if kind in (0, 1):
            key = f"c-{self.run_id}-{i}-{n}"
            amount = 10**9 if n % 20 == 1 else 1  # now and then more than anyone has: PT402
            return "consume", key, ("select billing.consume_tokens(%s, %s, %s)", (user, amount, key))
        if kind == 2:
            ref = f"g-{self.run_id}-{i}-{n}"
            return "grant", ref, ("select billing.grant_purchase(%s, 5, %s)", (user, ref))
        evt = f"evt_crash_{self.run_id}_{i}_{n}"
        t = int(time.time())
        body = json.dumps({"id": evt, "object": "event", "type": "checkout.session.completed", "created": t,
                           "livemode": False,
                           "data": {"object": {"id": f"cs_{evt}", "mode": "payment", "payment_status": "paid",
                                               "amount_subtotal": 100, "amount_total": 100,
                                               "currency": "usd", "client_reference_id": str(user),
                                               "payment_intent": f"pi_{evt}",
                                               "metadata": {"price_id": "price_crash", "quantity": "1"}}}})
        sig = hmac.new(SECRET.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
        return "event", evt, ("select billing.handle_stripe_webhook(%s, %s, %s)", (body, f"t={t},v1={sig}", SECRET))

    def worker(self, i):
        n = 0
        c = None
        while not self.stop.is_set():
            try:
                if c is None or c.closed:
                    c = self.connect(application_name="crash-load")
                kind, ident, (sql, args) = self.op(c, i, n)
                n += 1
                try:
                    c.execute(sql, args)
                    with self.lock:
                        self.committed[kind].add(ident)
                        self.ok_after += 1
                except psycopg.OperationalError:
                    c = None  # connection lost mid-call: outcome unknown, either way is fine
                except psycopg.Error as e:
                    if e.sqlstate and e.sqlstate.startswith(("08", "57")):
                        c = None
                    else:
                        with self.lock:
                            self.failed[kind].add(ident)
            except psycopg.OperationalError:
                c = None
                time.sleep(0.1)  # server restarting
        if c is not None:
            c.close()

    def run(self, threads, crash, before=2.0, after=3.0):
        ts = [threading.Thread(target=self.worker, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        time.sleep(before)
        crash()
        with self.lock:
            self.ok_after = 0
        time.sleep(after)
        self.stop.set()
        for t in ts:
            t.join(timeout=30)


def check(connect, load):
    with connect() as c:
        keys = {r[0] for r in c.execute("select idempotency_key from billing.token_usage").fetchall()}
        refs = {r[0] for r in c.execute("select reference from billing.token_grants where kind = 'purchase'").fetchall()}
        events = {r[0] for r in c.execute("select stripe_event_id from billing.payment_transactions").fetchall()}
        problems = c.execute("select * from billing.verify_ledger()").fetchall()
    assert load.committed["consume"] and load.committed["grant"] and load.committed["event"]
    assert load.committed["consume"] <= keys, "a consume the client saw commit is missing"
    assert load.committed["grant"] <= refs, "a grant the client saw commit is missing"
    assert load.committed["event"] <= events, "a webhook the client saw commit is missing"
    assert {f"cs_{e}" for e in load.committed["event"]} <= refs, "a purchase the client saw commit granted nothing"
    assert load.failed["consume"], "the load should include refused consumes"
    assert not (load.failed["consume"] & keys), "a consume that failed was recorded"
    assert not (load.failed["grant"] & refs) and not (load.failed["event"] & events)
    assert problems == []
    assert load.ok_after > 20, "the load did not resume after the crash"


def setup_users(connect, n=20):
    users = [uuid.uuid4() for _ in range(n)]
    with connect() as c:
        for u in users:
            c.execute("select billing.grant_purchase(%s, 1000000, %s)", (u, f"seed-{u}"))
    return users


def test_kill_minus_nine_of_one_backend(crashdb):
    load = Load(crashdb, setup_users(crashdb))

    def crash():
        with crashdb() as c:
            pids = [r[0] for r in c.execute("select pid from pg_stat_activity where application_name = 'crash-load'"
                                            " and state = 'active'").fetchall()] or \
                   [r[0] for r in c.execute("select pid from pg_stat_activity where application_name = 'crash-load'").fetchall()]
        assert pids
        os.kill(pids[0], signal.SIGKILL)

    load.run(8, crash)
    check(crashdb, load)


def test_immediate_shutdown_and_restart(crashdb):
    load = Load(crashdb, setup_users(crashdb))

    def crash():
        data = pathlib.Path(cluster("dir")) / "data"
        subprocess.run(["sudo", "-u", "postgres", "/usr/lib/postgresql/15/bin/pg_ctl", "-D", str(data),
                        "-m", "immediate", "stop"], check=True, capture_output=True)
        time.sleep(0.5)
        cluster("start")

    load.run(8, crash)
    check(crashdb, load)
