"""Integration tests against a real PostgreSQL 15 cluster (scripts/cluster.sh), over real connections.

`make test-integration` starts the cluster and installs the extension; this module creates a fresh
database with sql/supabase-compat.sql and `CREATE EXTENSION pg_billing` once per test session.
Each test uses its own random user ids and catalog rows, so tests do not see each other's data.
"""
import json
import threading
import time
import os
import pathlib
import uuid
from contextlib import contextmanager

import psycopg
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOST = os.environ.get("PG_BILLING_HOST", str(ROOT / ".cluster" / "sock"))
PORT = int(os.environ.get("PG_BILLING_PORT", "54329"))
DBNAME = os.environ.get("PG_BILLING_TEST_DB", "pg_billing_it")


def connect(dbname=DBNAME, user="postgres", autocommit=True, **kw):
    return psycopg.connect(host=HOST, port=PORT, user=user, dbname=dbname, autocommit=autocommit,
                           password="authenticator" if user == "authenticator" else None, **kw)


def create_database(name, extension=True):
    with connect("postgres") as c:
        c.execute(f'drop database if exists "{name}" with (force)')
        c.execute(f'create database "{name}"')
    with connect(name) as c:
        c.execute((ROOT / "sql" / "supabase-compat.sql").read_text())
        if extension:
            c.execute("create extension pg_billing")


def wait_for_a_lock_wait(db, fragment):
    """Returns once another session running a statement containing `fragment` waits for a lock."""
    deadline = time.time() + 10
    while time.time() < deadline:
        if db.one("select count(*) from pg_stat_activity where datname = current_database()"
                  " and wait_event_type = 'Lock' and query like %s", (f"%{fragment}%",))[0]:
            return
        time.sleep(0.02)
    raise AssertionError(f"no session waited for a lock in {fragment}")


class Db:
    """Connections to the test database in the roles pg_billing's callers use."""

    def __init__(self, name):
        self.name = name

    def service(self, **kw):
        """The backend: the postgres role, no SET ROLE (as a FastAPI backend connects)."""
        return connect(self.name, **kw)

    def one(self, sql, params=None):
        with self.service() as c:
            return c.execute(sql, params).fetchone()

    def all(self, sql, params=None):
        with self.service() as c:
            return c.execute(sql, params).fetchall()

    @contextmanager
    def as_role(self, role, sub=None, claims=None, read_only=False):
        """A transaction exactly as PostgREST opens one for a request (PostgREST's Query.hs setPgLocals)."""
        claims = dict(claims or {})
        claims.setdefault("role", role)
        if sub is not None:
            claims.setdefault("sub", str(sub))
            claims.setdefault("aud", "authenticated")
        conn = connect(self.name, user="authenticator", autocommit=True)
        try:
            conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED " + ("READ ONLY" if read_only else "READ WRITE"))
            conn.execute(
                "select set_config('search_path', '\"public\", \"public\", \"extensions\"', true),"
                " set_config('role', %s, true), set_config('request.jwt.claims', %s, true),"
                " set_config('request.method', 'POST', true)",
                (role, json.dumps(claims)))
            yield conn
            conn.execute("COMMIT")
        except Exception:
            if not conn.closed:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def user(self):
        """A fresh user in auth.users."""
        uid = uuid.uuid4()
        with self.service() as c:
            c.execute("insert into auth.users (id, email) values (%s, %s)", (uid, f"{uid}@example.com"))
        return uid

    def grant(self, user, tokens, reference=None, kind="purchase", expires_at=None):
        return self.one("select * from billing.grant_purchase(%s, %s, %s, %s, %s)",
                        (user, tokens, reference or f"ref_{uuid.uuid4()}", kind, expires_at))

    def balance(self, user):
        return self.one("select billing.get_balance(%s)", (user,))[0]

    def ledger_problems(self):
        return self.all("select * from billing.verify_ledger()")


@pytest.fixture(scope="session")
def db():
    create_database(DBNAME)
    return Db(DBNAME)


def sqlstate(excinfo):
    return excinfo.value.sqlstate


def run_threads(n, target):
    """Runs target(i) in n threads (each opens its own connection) and re-raises the first error, so an
    assertion that fails inside a worker fails the test."""
    errors = []

    def wrap(i):
        try:
            target(i)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
