#!/usr/bin/env python3
"""Writes sql/pg_billing--FROM--TO.sql, an upgrade script that holds only what changed:

  1. sql/upgrades/FROM--TO.sql up to its line `-- @functions` (hand-written: new tables and columns,
     drops of removed functions whose replacement differs, ...);
  2. the Rust functions new or changed in TO, named on a `-- @rust name ...` line of that file
     (copied from the install script pgrx generated: run `make install` first);
  3. every SQL function of sql/*.sql that is new or whose definition differs from the release FROM
     (read with git at the last commit of FROM: the parent of the commit that changed Cargo.toml's
     version away from FROM, or --base), with `create or replace`; a
     function whose result type changed is dropped first; a function FROM had and TO does not is
     dropped;
  4. the rest of sql/upgrades/FROM--TO.sql (backfills that need the new functions);
  5. sql/grants.sql (what CREATE EXTENSION runs last: grants and policies for every function);
  6. drops of the SQL functions FROM had and TO does not (last: a policy may have used one until
     step 5 recreated it).

    python3 scripts/gen-upgrade.py 0.3.0 0.4.0            # writes sql/pg_billing--0.3.0--0.4.0.sql
    python3 scripts/gen-upgrade.py 0.3.0 0.4.0 --check    # fails if the committed script differs (make lint)

tests/integration/test_upgrade.py proves the result equals a fresh install and keeps the data."""
import argparse
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP = {"supabase-compat.sql"}  # not part of the extension
# The order CREATE EXTENSION runs the files in (src/lib.rs): SQL-language bodies are checked when
# they are created, so a function comes after those it calls.
INSTALL_ORDER = ["schema.sql", "ledger.sql", "stripe.sql", "verify.sql", "frontend.sql", "policies.sql", "grants.sql"]
FUNCTION = re.compile(r"^create (?:or replace )?function (billing(?:_internal)?\.\w+)\(", re.M)


def sql_files_at(ref):
    """{file name: text} of sql/*.sql at a git ref (or in the working tree for ref None)."""
    if ref is None:
        return {p.name: p.read_text() for p in sorted((ROOT / "sql").glob("*.sql"))
                if p.name not in SKIP and "--" not in p.name}
    names = subprocess.run(["git", "ls-tree", "--name-only", ref, "sql/"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return {pathlib.Path(n).name: subprocess.run(["git", "show", f"{ref}:{n}"], cwd=ROOT, capture_output=True,
                                                 text=True, check=True).stdout
            for n in names if n.endswith(".sql") and pathlib.Path(n).name not in SKIP and "--" not in n}


def balanced_args(text, start):
    """The argument list of a function header starting at the '(' at `start`, and where it ends."""
    depth, i = 0, start
    while True:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
        if depth == 0:
            return text[start + 1:i - 1], i


def functions(files):
    """{signature: (header, block)} of every function, with the `comment on function` after it."""
    out = {}
    order = sorted(files, key=lambda n: (INSTALL_ORDER.index(n) if n in INSTALL_ORDER else len(INSTALL_ORDER), n))
    for text in (files[n] for n in order):
        for m in FUNCTION.finditer(text):
            args, after_args = balanced_args(text, m.end() - 1)
            body_open = re.compile(r"\$(\w*)\$").search(text, after_args)
            tag = body_open.group(0)
            body_close = text.index(tag, body_open.end())
            end = text.index(";", body_close) + 1
            comment = re.compile(r"\s*comment on function " + re.escape(m.group(1)) + r"\(.*?';\n", re.S).match(text, end)
            if comment:
                end = comment.end()
            arg_types = ", ".join(re.sub(r"\s+default\s+.*$", "", a.strip(), flags=re.S | re.I)
                                  for a in split_args(args) if not a.strip().lower().startswith("out "))
            signature = f"{m.group(1)}({arg_types})"
            header = " ".join(text[m.start():body_open.start()].split())
            out[signature] = (header, text[m.start():end].rstrip())
    return out


def split_args(args):
    parts, depth, cur = [], 0, ""
    for ch in args:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + ([cur] if cur.strip() else [])


def release_commit(version):
    """The last commit whose Cargo.toml has `version = "<version>"`."""
    bumps = subprocess.run(["git", "log", "--format=%H", "-S", f'version = "{version}"', "--", "Cargo.toml"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    if not bumps:
        sys.exit(f"no commit in this clone's history has version {version} in Cargo.toml (a shallow clone?)")
    return f"{bumps[0]}^"


def normalized(block):
    return " ".join(block.split())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--base", help="git commit of the last OLD sources (default: found from Cargo.toml's history)")
    ap.add_argument("--check", action="store_true", help="compare with the committed script instead of writing it")
    a = ap.parse_args()

    hand = (ROOT / "sql" / "upgrades" / f"{a.old}--{a.new}.sql").read_text()
    rust = [n for line in re.findall(r"^-- @rust (.*)$", hand, re.M) for n in line.split()]
    before, after = functions(sql_files_at(a.base or release_commit(a.old))), functions(sql_files_at(None))
    changed, dropped = [], []
    for sig, (header, block) in after.items():
        if sig not in before:
            changed.append(re.sub(r"^create function ", "create or replace function ", block))
        elif normalized(before[sig][1]) != normalized(block):
            if before[sig][0].split(" language ")[0] != header.split(" language ")[0]:
                dropped.append(f"drop function {sig}; -- its result changed")
            changed.append(re.sub(r"^create function ", "create or replace function ", block))
    removed = [f"drop function {sig};" for sig in before if sig not in after]

    head, _, tail = hand.partition("-- @functions\n")
    parts = [head.rstrip()]
    if dropped:
        parts.append("-- ===== functions whose result changed =====\n" + "\n".join(dropped))
    if rust:
        sharedir = subprocess.run(["pg_config", "--sharedir"], capture_output=True, text=True, check=True).stdout.strip()
        generated = pathlib.Path(sharedir, "extension", f"pg_billing--{a.new}.sql").read_text()
        parts.append(f"-- ===== Rust functions new or changed in {a.new} (as generated by pgrx) =====")
        for name in rust:
            m = re.search(r"/\* <begin connected objects> \*/\n-- [^\n]+\n-- [^\n]*::" + re.escape(name)
                          + r"\n(.*?)/\* </end connected objects> \*/", generated, re.S)
            if not m:
                sys.exit(f"{name} not found in the generated install script")
            parts.append(m.group(1).strip())
    parts.append(f"-- ===== SQL functions new or changed in {a.new} ({len(changed)} of {len(after)}) =====")
    parts.extend(changed)
    if tail.strip():
        parts.append(tail.strip())
    parts.append("-- ===== sql/grants.sql: privileges and policies for every function =====\n"
                 + (ROOT / "sql" / "grants.sql").read_text().strip())
    if removed:
        parts.append(f"-- ===== SQL functions {a.old} had and {a.new} does not =====\n" + "\n".join(removed))
    out = ROOT / "sql" / f"pg_billing--{a.old}--{a.new}.sql"
    text = "\n\n".join(parts) + "\n"
    if a.check:
        if out.read_text() != text:
            sys.exit(f"{out.relative_to(ROOT)} is out of date: run python3 scripts/gen-upgrade.py {a.old} {a.new}")
        print(f"{out.relative_to(ROOT)} is up to date")
        return
    out.write_text(text)
    print(f"wrote {out.relative_to(ROOT)}: {len(changed)} functions created or replaced, "
          f"{len(dropped) + len(removed)} dropped")


if __name__ == "__main__":
    main()
