"""Maintenance on a real pg_cron (Debian's postgresql-15-cron, preloaded by scripts/cluster.sh, jobs
run from database postgres): the scheduler itself releases an expired hold and expires grants."""
import time
import uuid

from conftest import Db, connect, create_database


def test_pg_cron_runs_maintenance_and_releases_an_expired_hold():
    d = Db("pg_billing_cron")
    create_database(d.name)
    user = d.user()
    d.grant(user, 100)
    with d.service() as c:
        rid = c.execute("select reservation_id from billing.reserve_tokens(%s, 40, 'cron', interval '1 second')",
                        (user,)).fetchone()[0]
    job = f"pg_billing_maintenance_{uuid.uuid4().hex[:8]}"
    with connect("postgres") as c:
        c.execute("create extension if not exists pg_cron")
        job_id = c.execute("select cron.schedule_in_database(%s, '* * * * *', 'select billing.run_maintenance()', %s)",
                           (job, d.name)).fetchone()[0]
    try:
        # pg_cron 1.4 schedules by the minute: the job runs at the start of the next one
        deadline = time.time() + 75
        while time.time() < deadline:
            status = d.one("select status from billing.token_reservations where id = %s", (rid,))[0]
            if status != "held":
                break
            time.sleep(1)
        assert status == "expired"  # released by the scheduler's run_maintenance, not by a write of ours
        with connect("postgres") as c:
            runs = c.execute("select status, return_message from cron.job_run_details where jobid = %s", (job_id,)).fetchall()
        assert ("succeeded", "SELECT 1") in runs
        assert d.one("select held, spendable from billing.balances where account_id = %s", (user,)) == (0, 100)
        assert d.ledger_problems() == []
    finally:
        with connect("postgres") as c:
            c.execute("select cron.unschedule(%s)", (job_id,))
