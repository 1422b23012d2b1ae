"""Instructions per call of consume_tokens, get_balance and their baselines, counted by valgrind
(callgrind) in a single-user backend: a count that does not move with the machine's noise, unlike the
tps ratios of bench/run.py, so it shows where a change saves work and what the rest costs.

Each workload is a PL/pgSQL loop body run N times, one transaction per iteration (as pgbench runs
one per call); the count of a run with 300 iterations is subtracted from one with 1,300, so start-up
and shutdown cancel, and the loop's own cost (the same body with nothing in it) is subtracted too.
Page pruning (heap_page_prune_opt: removing dead row versions from a page as it is read) is counted
apart and left out of the comparisons: how often a workload prunes depends on the state its table's
pages are in, not on its code. A single-user backend runs no autovacuum, so the pages of the
baselines' small, densely packed table (115 rows a page) fill up with row versions and line
pointers over the runs, and from then on every read of such a page prunes all of it: about 50,000
instructions per call. In `make bench`'s steady state, with autovacuum, the same baselines prune
rarely (bench/results/profile.md).
The cluster is a fresh one of its own with the bench's users (bench/setup.sql). Writes
bench/results/instructions.md. Usage: bench/instructions.py --dir DIR --port PORT
"""
import argparse
import os
import pathlib
import re
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PGBIN = "/usr/lib/postgresql/15/bin"
USER = "bench.uid(1 + i % 10000)"
MEMBER = "bench.uid(20001 + i % 8)"  # the team account's members (bench/setup.sql)
KEY = "'k' || i || '-' || clock_timestamp()"
# consume_tokens' fast path for a personal account without a key (sql/ledger.sql), run bare: what
# its two statements cost without the function around them.
FAST_STATEMENT = f"""
update billing.balances b
   set spendable = b.spendable - 1, head_remaining = b.head_remaining - 1,
       rate_state = billing_internal.rate_counted(b.rate_state, 1, 1, pg_catalog.now())
 where b.account_id = {USER} and b.head_remaining >= 1 and b.debt = 0
   and (b.next_event_at is null or b.next_event_at > pg_catalog.now())
returning b.spendable, array[[b.head_grant_id, 1::bigint]],
          ((b.spendable < b.alert_below or b.spendable >= b.alert_above) is true)::integer
          + 2 * (billing_internal.rate_over(b.rate_state, 1, 1) is true)::integer into r;
insert into billing.token_usage (account_id, tokens, metadata, drawn_from, balance_after)
values ({USER}, 1, '{{}}', r.array, r.spendable)
returning id, token_usage.tokens, false into r"""
B = (f"with d as (update bench.accounts set tokens = tokens - 1 where user_id = {USER} and tokens >= 1"
     " returning user_id, tokens) insert into bench.usage (user_id, tokens{k}) select user_id, 1{v} from d")
# (label, loop body, loop it is measured against)
WORKLOADS = [
    ("loop", "perform 1", None),
    ("loop with a key", f"perform {KEY}", None),
    ("(b) UPDATE+INSERT CTE", B.format(k="", v=""), "loop"),
    ("(b) inside a minimal PL/pgSQL function", f"perform bench.consume_cte_fn({USER}, 1)", "loop"),
    ("(c) PL/pgSQL RPC", f"perform bench.consume_plpgsql({USER}, 1)", "loop"),
    ("(c) as a Supabase RPC (definer)", f"perform bench.consume_plpgsql_definer({USER}, 1)", "loop"),
    ("consume_tokens' fast path statements, bare", FAST_STATEMENT, "loop"),
    ("pg_billing consume_tokens", f"perform balance_after from billing.consume_tokens({USER}, 1)", "loop"),
    ("(b) with a key", B.format(k=", idempotency_key", v=", " + KEY), "loop with a key"),
    ("(c) with a key", f"perform bench.consume_plpgsql({USER}, 1, {KEY})", "loop with a key"),
    ("(c) definer with a key", f"perform bench.consume_plpgsql_definer({USER}, 1, {KEY})", "loop with a key"),
    ("(c) with a key, safe for a racing retry", f"perform bench.consume_plpgsql_safe_key({USER}, 1, {KEY})",
     "loop with a key"),
    ("consume_tokens with a key", f"perform balance_after from billing.consume_tokens({USER}, 1, {KEY})",
     "loop with a key"),
    ("primary-key lookup", f"perform tokens from bench.accounts where user_id = {USER}", "loop"),
    ("primary-key lookup inside a minimal PL/pgSQL function", f"perform bench.pk_lookup_fn({USER})", "loop"),
    ("pg_billing get_balance", f"perform billing.get_balance({USER})", "loop"),
    ("hand-written team RPC", f"perform bench.consume_team_plpgsql({MEMBER}, bench.team(), 1)", "loop"),
    ("pg_billing consume_tokens for a team member",
     f"perform balance_after from billing.consume_tokens({MEMBER}, 1, null, '{{}}', bench.team())", "loop"),
    ("pg_billing reserve_tokens + commit_reservation (one transaction)",
     f"perform billing.commit_reservation(h.reservation_id, 1) from billing.reserve_tokens({USER}, 2, {KEY}) h",
     "loop with a key"),
]
RATIOS = [  # (label, numerator, denominator, target): ratios of work, so (b)/consume is consume's speed vs (b)
    ("consume vs (b), no key", "pg_billing consume_tokens", "(b) UPDATE+INSERT CTE", 0.90),
    ("consume vs (c), no key", "pg_billing consume_tokens", "(c) PL/pgSQL RPC", 1.0),
    ("consume vs (c) definer, no key", "pg_billing consume_tokens", "(c) as a Supabase RPC (definer)", 1.0),
    ("consume vs (b), key", "consume_tokens with a key", "(b) with a key", 0.90),
    ("consume vs (c), key", "consume_tokens with a key", "(c) with a key", 1.0),
    ("consume vs (c) definer, key", "consume_tokens with a key", "(c) definer with a key", 1.0),
    ("consume vs (c) safe for a racing retry, key", "consume_tokens with a key", "(c) with a key, safe for a racing retry",
     None),
    ("get_balance vs PK lookup", "pg_billing get_balance", "primary-key lookup", 0.90),
    ("team consume vs hand-written team RPC", "pg_billing consume_tokens for a team member", "hand-written team RPC",
     0.90),
    ("get_balance vs the lookup inside a minimal function: get_balance's own work", "pg_billing get_balance",
     "primary-key lookup inside a minimal PL/pgSQL function", None),
    ("the lookup inside a minimal function vs the lookup: any function API",
     "primary-key lookup inside a minimal PL/pgSQL function", "primary-key lookup", None),
    ("(b) inside a minimal function vs (b): any function API", "(b) inside a minimal PL/pgSQL function",
     "(b) UPDATE+INSERT CTE", None),
    ("consume's fast path statements vs (b): the tables and the statements", "consume_tokens' fast path statements, bare",
     "(b) UPDATE+INSERT CTE", None),
]


# The workloads taken apart by layer: pg_billing's functions and the function baselines.
LAYERED = ["(c) PL/pgSQL RPC", "(c) as a Supabase RPC (definer)", "pg_billing consume_tokens", "(c) definer with a key",
           "consume_tokens with a key", "hand-written team RPC", "pg_billing consume_tokens for a team member",
           "primary-key lookup inside a minimal PL/pgSQL function", "pg_billing get_balance"]


def as_postgres(cmd, **kw):
    return subprocess.run(["sudo", "-u", "postgres"] + cmd, **kw)


# Inclusive counts that take a function call apart (its layers: bench/results/instructions.md). Callgrind
# names a function's second level of recursion NAME'2: the loop itself runs in plpgsql_exec_function and,
# for a query (not a simple expression), in SPI_execute_plan_with_paramlist.
LAYER_SYMBOLS = ["heap_page_prune_opt", "ExecInitFunctionScan", "ExecInitTableFunctionResult", "ExecMakeTableFunctionResult",
                 "fmgr_security_definer",
                 "plpgsql_call_handler", "plpgsql_exec_function'2", "SPI_execute_plan_with_paramlist",
                 "SPI_execute_plan_with_paramlist'2"]


def instructions(data, body, n):
    """(all instructions, {symbol: inclusive instructions} for LAYER_SYMBOLS) of a run of n iterations."""
    sql = (f"set synchronous_commit = off;\n\n"
           f"do $$ declare r record; begin for i in 1..{n} loop {body}; commit; end loop; end $$;\n\n")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)
        script, profile = pathlib.Path(tmp, "run.sql"), pathlib.Path(tmp, "callgrind.out")
        script.write_text(sql)
        script.chmod(0o644)
        with open(script) as stdin:
            out = as_postgres(["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", f"{PGBIN}/postgres",
                               "--single", "-j", "-D", data, "pg_billing_instructions"],
                              stdin=stdin, capture_output=True, text=True)
        text = out.stdout + out.stderr
        if "ERROR" in text or out.returncode != 0:
            raise RuntimeError(f"single-user run failed:\n{text[-3000:]}")
        inclusive = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(profile)],
                                   capture_output=True, text=True, check=True).stdout
    symbols = {}
    for symbol in LAYER_SYMBOLS:
        found = re.search(r"^\s*([\d,]+) \([^)]*\)\s+(?:\?\?\?:)?" + re.escape(symbol) + r" ", inclusive, re.M)
        symbols[symbol] = int(found.group(1).replace(",", "")) if found else 0
    return int(re.search(r"Collected : (\d+)", text).group(1)), symbols


def per_call(data, body):
    """(instructions per call without page pruning, {symbol: inclusive instructions per call})"""
    (a, a_sym), (b, b_sym) = instructions(data, body, 300), instructions(data, body, 1300)
    symbols = {k: (b_sym[k] - a_sym[k]) / 1000 for k in LAYER_SYMBOLS}
    return (b - a) / 1000 - symbols["heap_page_prune_opt"], symbols


def layers(net, sym):
    """A call of a PL/pgSQL function taken apart, per call: the statements it runs, its PL/pgSQL
    interpretation, the call, SECURITY DEFINER with its SET search_path, a row result (the function scan
    of a set-returning function), and the rest (the calling query or expression, the transaction)."""
    spi = sym["SPI_execute_plan_with_paramlist'2"] or sym["SPI_execute_plan_with_paramlist"]
    # page pruning is left out of the counts (see the docstring), and it happens inside the statements
    statements = spi - sym["heap_page_prune_opt"]
    entry = sym["fmgr_security_definer"] or sym["plpgsql_call_handler"]
    # the function scan's own set-up (its result type, slots) and its call around the function; the
    # arguments' expressions and the function's lookup (ExecInitTableFunctionResult) are the calling
    # query's, as they are in a scalar call's expression
    row = (sym["ExecInitFunctionScan"] - sym["ExecInitTableFunctionResult"]
           + (sym["ExecMakeTableFunctionResult"] - entry if sym["ExecMakeTableFunctionResult"] else 0))
    parts = {"statements": statements,
             "PL/pgSQL interpretation of the body": sym["plpgsql_exec_function'2"] - spi,
             "PL/pgSQL call": sym["plpgsql_call_handler"] - sym["plpgsql_exec_function'2"],
             "SECURITY DEFINER and SET search_path": entry - sym["plpgsql_call_handler"],
             "row result (function scan)": row}
    parts["the rest: calling query or expression, transaction"] = net - sum(parts.values())
    return parts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    env = dict(os.environ, PG_BILLING_PORT=str(a.port), PG_BILLING_CLUSTER_DIR=a.dir)
    cluster = ["bash", str(ROOT / "scripts" / "cluster.sh")]
    subprocess.run(cluster + ["start"], env=env, check=True)
    psql = ["psql", "-h", f"{a.dir}/sock", "-p", str(a.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-X", "-q"]
    quiet = dict(env=dict(os.environ, PGOPTIONS="--client-min-messages=warning"), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(psql + ["-d", "postgres", "-c", "drop database if exists pg_billing_instructions",
                           "-c", "create database pg_billing_instructions"], **quiet)
    subprocess.run(psql + ["-d", "pg_billing_instructions", "-f", str(ROOT / "sql" / "supabase-compat.sql"),
                           "-c", "create extension pg_billing", "-f", str(ROOT / "bench" / "setup.sql")], **quiet)
    subprocess.run(cluster + ["stop"], env=env, check=True)
    data = f"{a.dir}/data"
    counts, symbols = {}, {}
    for label, body, base in WORKLOADS:
        counts[label], symbols[label] = per_call(data, body)
    pruning = {label: symbols[label]["heap_page_prune_opt"] for label in symbols}
    for label, body, base in WORKLOADS:
        print(f"{counts[label]:10,.0f}  {label} (page pruning {pruning[label]:,.0f})", flush=True)
    net = {label: counts[label] - (counts[base] if base else 0) for label, _, base in WORKLOADS}
    lines = ["# Instructions per call", "",
             "Counted by valgrind (callgrind) in a single-user PostgreSQL 15 backend: N calls in a PL/pgSQL loop, "
             "one transaction each, synchronous_commit off; the count at N = 300 subtracted from N = 1,300, and the "
             "loop's own count subtracted. Written by `make bench-instructions` (bench/instructions.py). Fewer is "
             "better; a ratio is the baseline's count over pg_billing's, so ≥ 1 means pg_billing does no more work "
             "per call. Server work only: the protocol, the client and waiting are not in it (bench/results/latest.md "
             "measures those).", "",
             "Page pruning (removing dead row versions from a page as it is read) is shown apart and not in the "
             "counts: it depends on the state of a table's pages, not on the code. Without autovacuum (a single-user "
             "backend) the pages of the baselines' densely packed table fill up over the runs, and then every read "
             "of one prunes all of it; in `make bench`'s steady state the baselines rarely prune "
             "(bench/results/profile.md).", "",
             "| workload | instructions per call | page pruning per call (not counted) |", "|---|---|---|"]
    lines += [f"| {label} | {net[label]:,.0f} | {pruning[label]:,.0f} |" for label, _, base in WORKLOADS if base]
    lines += ["", "| ratio | value | target (tps) |", "|---|---|---|"]
    for label, num, den, target in RATIOS:
        lines.append(f"| {label} | {net[den] / net[num]:.2f} | {'' if target is None else f'≥ {target:.2f}'} |")
    taken_apart = [label for label in LAYERED if label in net]
    lines += ["", "## A call taken apart", "",
              "Where each function's instructions per call go, from callgrind's inclusive counts: the statements "
              "it runs (executor start, run and end of each, through SPI), PL/pgSQL's own work in the body (its "
              "tests and assignments: each simple expression is set up again in every transaction), the call "
              "into PL/pgSQL, SECURITY DEFINER with the function's SET search_path (saving, setting and restoring "
              "the setting), the set-returning function's row result (the calling query's function scan: its "
              "result type read from pg_proc, its tuplestore), and the rest (the calling query or expression, "
              "the transaction and its commit). With a key, the row result also holds the evaluation of the key's expression, which the function scan evaluates as the call's argument (about 3k; the loop's own evaluation of it is subtracted from the whole call).", "",
              "| layer | " + " | ".join(taken_apart) + " |", "|---" * (len(taken_apart) + 1) + "|"]
    parts = {label: layers(net[label], symbols[label]) for label in taken_apart}
    for layer in parts[taken_apart[0]]:
        lines.append(f"| {layer} | " + " | ".join(f"{parts[label][layer]:,.0f}" for label in taken_apart) + " |")
    lines.append("| whole call | " + " | ".join(f"{net[label]:,.0f}" for label in taken_apart) + " |")
    (ROOT / "bench" / "results" / "instructions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
