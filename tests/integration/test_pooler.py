"""pg_billing behind PgBouncer in transaction-pooling mode (as Supabase's pooler on port 6543):
no session state, no server-side prepared statements, identity set per transaction."""
import json
import os
import pathlib
import shutil
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import DBNAME, HOST, PORT, run_threads

POOL_PORT = PORT + 1


@pytest.fixture(scope="module")
def pooler(db, tmp_path_factory):
    if not shutil.which("pgbouncer"):
        pytest.fail("pgbouncer is not installed (make setup installs it)")
    cluster_dir = pathlib.Path(HOST).parent
    work = cluster_dir / "pgbouncer"
    work.mkdir(exist_ok=True)
    (work / "userlist.txt").write_text('"postgres" ""\n"authenticator" ""\n')
    (work / "pgbouncer.ini").write_text(f"""
[databases]
{DBNAME} = host={HOST} port={PORT} dbname={DBNAME}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {POOL_PORT}
unix_socket_dir = {work}
auth_type = trust
auth_file = {work}/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {work}/pgbouncer.log
pidfile = {work}/pgbouncer.pid
""")
    pidfile = work / "pgbouncer.pid"
    if pidfile.exists():  # a pooler left over from an interrupted run
        try:
            os.kill(int(pidfile.read_text()), 15)
            time.sleep(0.5)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["chown", "-R", "postgres", str(work)], check=True)
    subprocess.run(["sudo", "-u", "postgres", "pgbouncer", "-d", str(work / "pgbouncer.ini")], check=True)
    for _ in range(50):
        try:
            psycopg.connect(host="127.0.0.1", port=POOL_PORT, user="postgres", dbname=DBNAME).close()
            break
        except psycopg.OperationalError:
            time.sleep(0.1)
    yield lambda user="postgres": psycopg.connect(host="127.0.0.1", port=POOL_PORT, user=user, dbname=DBNAME,
                                                  autocommit=True, prepare_threshold=None)
    pid = int((work / "pgbouncer.pid").read_text())
    os.kill(pid, 15)


def test_backend_race_through_the_pooler(db, pooler):
    user = db.user()
    db.grant(user, 300)
    ok, lock = [0], threading.Lock()

    def worker(_):
        with pooler() as c:
            for _ in range(50):
                try:
                    c.execute("select * from billing.consume_tokens(%s, 1)", (user,))
                    with lock:
                        ok[0] += 1
                except psycopg.Error as e:
                    assert e.sqlstate == "PT402"

    run_threads(12, worker)
    assert ok[0] == 300 and db.balance(user) == 0
    assert db.ledger_problems() == []


def test_identity_never_leaks_between_pooled_transactions(db, pooler):
    """24 clients on 2 server connections: each transaction acts as its own user only."""
    users = [db.user() for _ in range(24)]
    for u in users:
        db.grant(u, 10)
    seen, errors, lock = [], [], threading.Lock()

    def worker(u):
        with pooler("authenticator") as c:
            for _ in range(5):
                with c.transaction():
                    c.execute("select set_config('role', 'authenticated', true),"
                              " set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": str(u), "role": "authenticated"}),))
                    me = c.execute("select billing_internal.auth_uid(), (select count(*) from billing.balances)").fetchone()
                    c.execute("select * from billing.consume_tokens(%s, 1)", (u,))
                # after commit nothing of that identity survives on the shared server connection
                leftover = c.execute("select current_setting('request.jwt.claims', true), current_user").fetchone()
                with lock:
                    seen.append((u, me))
                    if leftover[0] not in (None, "") or leftover[1] != "authenticator":
                        errors.append(leftover)

    run_threads(len(users), lambda i: worker(users[i]))
    assert errors == []
    assert all(me == (u, 1) for u, me in seen)
    assert all(db.balance(u) == 5 for u in users)


def test_rpc_protocol_through_the_pooler(db, pooler):
    from postgrest import call
    u = db.user()
    db.grant(u, 4)
    assert call(lambda: pooler("authenticator"), "consume_tokens", {"p_user_id": str(u), "p_amount": 3}, sub=u)[0] == 200
    status, body = call(lambda: pooler("authenticator"), "consume_tokens", {"p_user_id": str(u), "p_amount": 3}, sub=u)
    assert (status, body["details"]) == (402, "requested 3, available 1")
    assert call(lambda: pooler("authenticator"), "get_billing_summary", sub=u, method="GET")[1]["balance"] == 1


def test_webhook_exactly_once_through_the_pooler(db, pooler):
    import hashlib
    import hmac
    import uuid
    evt = f"evt_pool_{uuid.uuid4().hex}"
    payload = json.dumps({"id": evt, "object": "event", "type": "customer.created", "created": 1700000000,
                          "data": {"object": {"id": "cus_x"}}})
    t = int(time.time())
    header = f"t={t},v1=" + hmac.new(b"whsec_pool", f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    outcomes, lock = [], threading.Lock()

    def worker(_):
        with pooler() as c:
            r = c.execute("select billing.handle_stripe_webhook(%s, %s, 'whsec_pool')", (payload, header)).fetchone()[0]
            with lock:
                outcomes.append(r["outcome"])

    run_threads(8, worker)
    assert sorted(outcomes) == ["duplicate"] * 7 + ["ignored"]
