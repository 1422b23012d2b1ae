"""The A/B half of `make bench-ab`: the same workloads against two builds of pg_billing installed in two
databases of one cluster (pg_billing_ab_base, pg_billing_ab_head), runs interleaved (base, head, base,
...), so both see the same machine, load and time. Reports head/base per workload: the median of the
per-pair ratios, with their min and max as the noise."""
import argparse
import os
import pathlib
import platform
import re
import statistics
import subprocess

import psycopg

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "bench" / "scripts"
SETUP = """
create schema bench;
create function bench.uid(n int) returns uuid language sql immutable parallel safe
  as $$ select ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
select count(*) from (select billing.grant_purchase(bench.uid(n), 1000000000000, 'bench-' || n)
                        from generate_series(1, 10000) n) g;
"""
# the workloads every release has: personal accounts, no limits configured
WORKLOADS = [("consume, 10k users, no key", "consume_ours.sql"),
             ("consume, 10k users, idempotency key", "consume_ours_key.sql"),
             ("consume, one hot user", "hot_ours.sql"),
             ("get_balance, 10k users", "get_balance.sql")]


def pgbench(host, port, dbname, script, seconds, clients=8):
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-h", host, "-p", str(port), "-U", "postgres",
                          "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(SCRIPTS / script), dbname],
                         capture_output=True, text=True)
    if out.returncode != 0 or "number of failed transactions: 0" not in out.stdout:
        raise RuntimeError(f"pgbench {script} on {dbname} failed:\n{out.stdout}\n{out.stderr}")
    return float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--base", required=True, help="what the base is, for the report")
    ap.add_argument("--head", default="this tree", help="what the head is, for the report")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=5)
    a = ap.parse_args()
    dbs = {"base": "pg_billing_ab_base", "head": "pg_billing_ab_head"}
    versions = {}
    for side, db in dbs.items():
        with psycopg.connect(host=a.host, port=a.port, dbname=db, user="postgres", autocommit=True) as c:
            c.execute(SETUP)
            c.execute("vacuum analyze")
            versions[side] = c.execute("select extversion from pg_extension where extname like 'pg_billing%'").fetchone()[0]

    rows = []
    for label, script in WORKLOADS:
        tps = {"base": [], "head": []}
        for i in range(a.pairs):
            order = ["base", "head"] if i % 2 == 0 else ["head", "base"]  # neither side always goes first
            for side in order:
                tps[side].append(pgbench(a.host, a.port, dbs[side], script, a.seconds))
        pair_ratios = [h / b for h, b in zip(tps["head"], tps["base"])]
        rows.append((label, tps, pair_ratios))

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    lines = ["# pg_billing A/B benchmark", "",
             f"Base: {a.base}, version {versions['base']}; head: {a.head}, version {versions['head']}. "
             f"Machine: {machine}; PostgreSQL 15, release builds, one cluster, 8 clients, {a.seconds} s per run, "
             f"{a.pairs} interleaved pairs (the order alternates).", "",
             "| workload | base tps (median) | head tps (median) | head / base: median of pairs | min | max |",
             "|---|---|---|---|---|---|"]
    for label, tps, r in rows:
        lines.append(f"| {label} | {statistics.median(tps['base']):,.0f} | {statistics.median(tps['head']):,.0f} | "
                     f"{statistics.median(r):.3f} | {min(r):.3f} | {max(r):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "ab-latest.md").write_text(text)


if __name__ == "__main__":
    main()
