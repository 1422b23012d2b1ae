"""`make bench-profile`: where a consume's server time goes. For each workload, the server CPU per
transaction (all PostgreSQL processes: backends, including those that exited, plus WAL writer and
the rest), pgbench at 8 clients; then `perf` profiles of consume_tokens and of (c), compared by
symbol. Runs on the bench database `make bench` left (release build). Output:
bench/results/profile.md.
"""
import argparse
import os
import pathlib
import platform
import pwd
import re
import subprocess
import time

import psycopg

from proc_cpu import cpu_seconds

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "bench" / "scripts"
WORKLOADS = [  # (label, script)
    ("(b) UPDATE+INSERT CTE", "consume_cte.sql"),
    ("(b) inside a minimal PL/pgSQL function", "consume_cte_fn.sql"),
    ("(c) PL/pgSQL RPC", "consume_plpgsql.sql"),
    ("pg_billing consume_tokens", "consume_ours.sql"),
    ("pg_billing consume_tokens, idempotency key", "consume_ours_key.sql"),
    ("primary-key lookup", "pk_lookup.sql"),
    ("pg_billing get_balance", "get_balance.sql"),
]
# perf symbols by what they do, first match wins (kernel symbols are reported as [k])
GROUPS = [
    ("kernel: network, scheduling, WAL fsync", lambda s, k: k),
    ("function call layer: fmgr, SECURITY DEFINER, GUC save/restore (search_path)",
     lambda s, k: re.search(r"fmgr_security_definer|set_config_option|AtEOXact_GUC|NewGUCNestLevel|guc|"
                            r"fmgr_info|FunctionCall|ExecMakeFunctionResultSet|ExecEvalFunc", s)),
    ("PL/pgSQL interpreter", lambda s, k: re.search(r"plpgsql|exec_stmt|exec_eval|exec_assign|exec_move", s)),
    ("SPI and cached-plan checks", lambda s, k: re.search(r"SPI|_SPI_|GetCachedPlan|CheckCachedPlan|RevalidateCachedQuery|"
                                                         r"AcquireExecutorLocks|plancache", s)),
    ("result set (tuplestore)", lambda s, k: re.search(r"tuplestore", s)),
    ("WAL records and commit", lambda s, k: re.search(r"XLog|CommitTransaction|RecordTransactionCommit|"
                                                      r"StartTransaction|AtEOXact|ProcArray", s)),
    ("the statement: executor, heap, indexes, locks, buffers", lambda s, k: re.search(
        r"Exec|heap_|_bt|btree|index_|Index|LockBuffer|ReadBuffer|Buffer|LWLock|LockRelation|Lock|hash_|"
        r"slot_|tts_|toast|datum|uuid|int8|numeric|array|jsonb|Heap|visibility|PageAdd|ExecInsert|ExecUpdate", s)),
    ("parse, analyse, plan", lambda s, k: re.search(r"parse|raw_|transform|planner|plan|query_tree|pg_analyze", s)),
    ("memory, protocol, other", lambda s, k: True),
]


def server_cpu(postmaster_pid, uid):
    """CPU seconds of every process of the server so far: live ones, plus the exited children the
    postmaster has reaped (its cutime/cstime)."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            total += cpu_seconds(pid, reaped_children=int(pid) == postmaster_pid)
        except OSError:  # the process ended meanwhile
            continue
    return total


def pgbench(a, script, seconds, dbname=None):
    cmd = ["pgbench", "-n", "-M", "prepared", "-h", a.host, "-p", str(a.port), "-U", "postgres", "-c", "8", "-j", "2",
           "-T", str(seconds), "-f", str(SCRIPTS / script), dbname or a.dbname]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(re.search(r"number of transactions actually processed: (\d+)", out).group(1)), \
        float(re.search(r"tps = ([\d.]+)", out).group(1))


def io_per_transaction(a, dbname, script, seconds):
    """WAL records, full-page images and bytes, and blocks PostgreSQL had to read into shared_buffers
    (from the OS), per transaction of one pgbench run that starts right after a checkpoint, as the
    growth runs of `make bench` do."""
    wal = "select wal_records, wal_fpi, wal_bytes from pg_stat_wal"
    blocks = "select blks_read, blks_hit from pg_stat_database where datname = current_database()"
    with psycopg.connect(host=a.host, port=a.port, dbname=dbname, user="postgres", autocommit=True) as c:
        c.execute("checkpoint")
        w0, b0 = c.execute(wal).fetchone(), c.execute(blocks).fetchone()
    n, tps = pgbench(a, script, seconds, dbname)
    time.sleep(1.5)  # backends flush their statistics when they exit
    with psycopg.connect(host=a.host, port=a.port, dbname=dbname, user="postgres", autocommit=True) as c:
        w1, b1 = c.execute(wal).fetchone(), c.execute(blocks).fetchone()
        usage_rows, heap, pk = c.execute(
            "select count(*), pg_relation_size('billing.token_usage'), pg_relation_size('billing.token_usage_pkey')"
            " from billing.token_usage").fetchone()
    return {"tps": tps, "records": (w1[0] - w0[0]) / n, "fpi": (w1[1] - w0[1]) / n, "wal_bytes": float(w1[2] - w0[2]) / n,
            "read": (b1[0] - b0[0]) / n, "hit": (b1[1] - b0[1]) / n, "rows": usage_rows, "heap": heap, "pk": pk}


def growth_evidence(a):
    """The growth ratio of `make bench` (consume with +10M usage rows vs before), taken apart: the
    same consume in a fresh database of the same 10,000 funded users and in the bench database."""
    small = "pg_billing_profile_small"
    with psycopg.connect(host=a.host, port=a.port, dbname="postgres", user="postgres", autocommit=True) as c:
        c.execute(f"drop database if exists {small} with (force)")
        c.execute(f"create database {small}")
        shared_buffers = c.execute("show shared_buffers").fetchone()[0]
    with psycopg.connect(host=a.host, port=a.port, dbname=small, user="postgres", autocommit=True) as c:
        c.execute("set client_min_messages = warning")
        c.execute((ROOT / "sql" / "supabase-compat.sql").read_text())
        c.execute("create extension pg_billing")
        c.execute((ROOT / "bench" / "setup.sql").read_text())
        c.execute("vacuum analyze")
    runs = []
    for _ in range(2):  # interleaved
        for dbname in (small, a.dbname):
            pgbench(a, "consume_ours.sql", 2, dbname)
            runs.append((dbname, io_per_transaction(a, dbname, "consume_ours.sql", a.seconds)))
    lines = ["## Growth: the same consume in a small and in a large database", "",
             f"`consume_tokens` (10,000 users, no key) right after a checkpoint, in a fresh database of the bench's "
             f"users ({small}) and in the `make bench` database, interleaved; shared_buffers {shared_buffers}. "
             "Per transaction: WAL records, full-page images (FPI) and WAL bytes; blocks read into shared buffers "
             "from the OS and blocks found there.", "",
             "| database | usage rows | token_usage heap / primary key | tps | WAL records | FPI | WAL bytes | blocks read | blocks hit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dbname, r in runs:
        lines.append(f"| {dbname} | {r['rows']:,} | {r['heap'] / 2**20:,.0f} MB / {r['pk'] / 2**20:,.0f} MB | {r['tps']:,.0f} | "
                     f"{r['records']:.2f} | {r['fpi']:.2f} | {r['wal_bytes']:,.0f} | {r['read']:.2f} | {r['hit']:.1f} |")
    small_r = [r for d, r in runs if d == small][-1]
    lines += ["", "Bytes per usage row in the small database, where every row is a consume's: heap "
              f"{small_r['heap'] / small_r['rows']:.0f}, primary key {small_r['pk'] / small_r['rows']:.0f} "
              f"({small_r['rows']:,} rows).", ""]
    return lines


PROFILED = [("(c) PL/pgSQL RPC", "consume_plpgsql.sql"), ("pg_billing consume_tokens", "consume_ours.sql")]


def perf_profile(a, script):
    """Self time of the postgres processes by symbol during one pgbench run, in µs per transaction:
    {(symbol, is_kernel): µs}. The software clock event on all CPUs, then the postgres processes'
    samples (this VM has no hardware counters, and `perf record -u postgres` caught a few dozen)."""
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-e", "cpu-clock", "-a", "-o", "/tmp/pg_billing.perf",
                             "--", "sleep", str(a.seconds + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n, _ = pgbench(a, script, a.seconds)
    perf.wait()
    report = subprocess.run(["perf", "report", "-i", "/tmp/pg_billing.perf", "--comm", "postgres", "--no-children",
                             "--sort", "sym", "--stdio", "-F", "sample,sym"], capture_output=True, text=True).stdout
    per_tx = {}
    for line in report.splitlines():
        m = re.match(r"\s*(\d+)\s+\[([k.])\]\s+(\S+)", line)
        if m:
            key = (m.group(3), m.group(2) == "k")
            per_tx[key] = per_tx.get(key, 0) + int(m.group(1)) / 999 / n * 1e6
    return per_tx


def grouped(per_tx):
    groups = {}
    for (sym, kernel), us in per_tx.items():
        name = next(g for g, match in GROUPS if match(sym, kernel))
        groups[name] = groups.get(name, 0) + us
    return groups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dbname", default="pg_billing_bench")
    ap.add_argument("--datadir", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    uid = pwd.getpwnam("postgres").pw_uid
    postmaster = int(open(pathlib.Path(a.datadir) / "postmaster.pid").readline())
    rows = []
    for label, script in WORKLOADS:
        pgbench(a, script, 2)  # warm the caches and the connection's plans
        before = server_cpu(postmaster, uid)
        n, tps = pgbench(a, script, a.seconds)
        rows.append((label, tps, (server_cpu(postmaster, uid) - before) / n * 1e6))
    base = {label: us for label, _, us in rows}

    profiles = {label: perf_profile(a, script) for label, script in PROFILED}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    lines = ["# Where a consume's server time goes", "",
             f"Machine: {machine}; PostgreSQL 15, release build; pgbench 8 clients, {a.seconds} s per workload, "
             "the `make bench` database (10M+ usage rows). Written by `make bench-profile` (bench/profile.py).", "",
             "## Server CPU per transaction", "",
             "All PostgreSQL processes (backends, WAL writer, ...) over the run, divided by the transactions.", "",
             "| workload | tps | server CPU µs / transaction | vs (b) |", "|---|---|---|---|"]
    for label, tps, us in rows:
        lines.append(f"| {label} | {tps:,.0f} | {us:,.1f} | {us / base['(b) UPDATE+INSERT CTE']:.2f}× |")
    b, fn, ours = base["(b) UPDATE+INSERT CTE"], base["(b) inside a minimal PL/pgSQL function"], base["pg_billing consume_tokens"]
    lines += ["", f"Of a consume's server CPU, {b / ours:.0%} is what (b), the bare statement pair, costs; "
              f"{(fn - b) / ours:.0%} is what wrapping (b) in the smallest PL/pgSQL function adds; "
              f"the remaining {(ours - fn) / ours:.0%} is pg_billing's own work on top "
              "(SECURITY DEFINER and the pinned search_path, the argument and role checks, the wider usage row "
              "with its drawn_from and balance_after, the set-returning result).", "",
             "## perf profile: consume_tokens against (c)", "",
             "`perf record -e cpu-clock -a` (999 Hz) during one pgbench run of each, 8 clients; the postgres "
             "processes' samples by symbol, as CPU µs per transaction (samples / 999 / transactions). Grouped "
             "by symbol name, roughly: Debian's postgres binary is stripped, so static functions are bare "
             "addresses and land in the last group. The sampling clock is 1 ms, so a symbol below about "
             "0.5 µs per transaction is noise. Kernel samples are placed unreliably on this VM (a clock tick "
             "that arrives while interrupts are off, as in the virtio disk driver, is counted where they "
             "come back on, so one run can put tens of µs more than the next in a few kernel symbols): "
             "compare the user-space rows, and take the total from the server CPU table above.", "",
             "| group | (c) µs / tx | consume_tokens µs / tx | difference |", "|---|---|---|---|"]
    c_label, ours_label = PROFILED[0][0], PROFILED[1][0]
    c_groups, ours_groups = grouped(profiles[c_label]), grouped(profiles[ours_label])
    for name, _ in GROUPS:
        if name in c_groups or name in ours_groups:
            c_us, ours_us = c_groups.get(name, 0), ours_groups.get(name, 0)
            lines.append(f"| {name} | {c_us:.1f} | {ours_us:.1f} | {ours_us - c_us:+.1f} |")
    c_total, ours_total = sum(c_groups.values()), sum(ours_groups.values())
    lines.append(f"| all postgres processes | {c_total:.1f} | {ours_total:.1f} | {ours_total - c_total:+.1f} |")
    user_space = [k for k in set(profiles[c_label]) | set(profiles[ours_label]) if not k[1]]
    c_user, ours_user = (sum(profiles[label].get(k, 0) for k in user_space) for label in (c_label, ours_label))
    lines.append(f"| user space only | {c_user:.1f} | {ours_user:.1f} | {ours_user - c_user:+.1f} |")
    diffs = sorted(user_space, key=lambda k: -abs(profiles[ours_label].get(k, 0) - profiles[c_label].get(k, 0)))
    lines += ["", "The user-space symbols that differ most (µs per transaction):", "",
              "| symbol | (c) | consume_tokens | difference |", "|---|---|---|---|"]
    for sym, kernel in diffs[:25]:
        c_us, ours_us = profiles[c_label].get((sym, kernel), 0), profiles[ours_label].get((sym, kernel), 0)
        lines.append(f"| {'[k] ' if kernel else ''}`{sym}` | {c_us:.2f} | {ours_us:.2f} | {ours_us - c_us:+.2f} |")
    lines += [""] + growth_evidence(a)
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
