#!/usr/bin/env python3
"""Regenerates the generated parts of an upgrade script, sql/pg_billing--FROM--TO.sql. The file is
hand-written around two regions this script owns:

    <hand-written: new tables and columns, drops whose replacement differs, `-- @rust name ...`>
    -- @generated functions
    ... the Rust functions named on `-- @rust` lines (copied from the install script pgrx generated:
        run `make install` first), then every SQL function of sql/*.sql that is new or whose
        definition differs from release FROM, with `create or replace` (a function whose result
        type changed is dropped first) ...
    -- @end
    <hand-written: backfills that need the new functions>
    -- @generated privileges
    ... the statements after the last function of sql/privileges.sql (grants and policies for every
        function), then drops of the SQL functions FROM had and TO does not (last: a policy may
        have used one until then) ...
    -- @end

Release FROM's functions are read with git at its last commit: the parent of the commit that changed
Cargo.toml's version away from FROM (or --base). A new file gets both regions appended.

    python3 scripts/gen-upgrade.py 0.3.0 0.4.0            # rewrites the generated regions
    python3 scripts/gen-upgrade.py 0.3.0 0.4.0 --check    # fails if they are out of date (make lint)

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
INSTALL_ORDER = ["schema.sql", "ledger.sql", "accounts.sql", "limits.sql", "outbox.sql", "stripe.sql", "verify.sql", "frontend.sql", "privileges.sql"]
FUNCTION = re.compile(r"^create (?:or replace )?function (billing(?:_internal)?\.\w+)\(", re.M)
REGION = re.compile(r"^-- @generated (\w+)\n.*?^-- @end\n", re.M | re.S)


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


def functions(files):
    """{signature: (header, block)} of every function, with the `comment on function` after it."""
    out = {}
    order = sorted(files, key=lambda n: (INSTALL_ORDER.index(n) if n in INSTALL_ORDER else len(INSTALL_ORDER), n))
    for text in (files[n] for n in order):
        for m in FUNCTION.finditer(text):
            args, after_args = balanced_args(text, m.end() - 1)
            body_open = re.compile(r"\$(\w*)\$").search(text, after_args)
            statement_end = text.index(";", after_args)
            if body_open is None or statement_end < body_open.start():
                # no body: a C function, `as 'MODULE_PATHNAME', 'symbol';`
                header_end = re.compile(r"\s+as\s+'MODULE_PATHNAME'", re.I).search(text, after_args, statement_end).start()
                end = statement_end + 1
            else:
                header_end = body_open.start()
                body_close = text.index(body_open.group(0), body_open.end())
                end = text.index(";", body_close) + 1
            comment = re.compile(r"\s*comment on function " + re.escape(m.group(1)) + r"\(.*?';\n", re.S).match(text, end)
            if comment:
                end = comment.end()
            arg_types = ", ".join(re.sub(r"\s+default\s+.*$", "", a.strip(), flags=re.S | re.I)
                                  for a in split_args(args) if not a.strip().lower().startswith("out "))
            header = " ".join(text[m.start():header_end].split())
            out[f"{m.group(1)}({arg_types})"] = (header, text[m.start():end].rstrip())
    return out


def normalized(block):
    return " ".join(block.split())


def release_commit(version):
    """The last commit whose Cargo.toml has `version = "<version>"`."""
    bumps = subprocess.run(["git", "log", "--format=%H", "-S", f'version = "{version}"', "--", "Cargo.toml"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    if not bumps:
        sys.exit(f"no commit in this clone's history has version {version} in Cargo.toml (a shallow clone?)")
    return f"{bumps[0]}^"


def generated(old, new, base, rust):
    """{region name: text} of the two generated regions."""
    before, after = functions(sql_files_at(base)), functions(sql_files_at(None))
    changed, result_changed = [], []
    for sig, (header, block) in after.items():
        if sig in before and normalized(before[sig][1]) == normalized(block):
            continue
        if sig in before and before[sig][0].split(" language ")[0] != header.split(" language ")[0]:
            result_changed.append(f"drop function {sig}; -- its result changed")
        changed.append(re.sub(r"^create function ", "create or replace function ", block))
    removed = [f"drop function {sig};" for sig in before if sig not in after]

    parts = []
    if result_changed:
        parts.append("-- functions whose result changed\n" + "\n".join(result_changed))
    if rust:
        sharedir = subprocess.run(["pg_config", "--sharedir"], capture_output=True, text=True, check=True).stdout.strip()
        install = pathlib.Path(sharedir, "extension", f"pg_billing--{new}.sql").read_text()
        parts.append(f"-- Rust functions new or changed in {new} (as generated by pgrx)")
        for name in rust:
            m = re.search(r"/\* <begin connected objects> \*/\n-- [^\n]+\n-- [^\n]*::" + re.escape(name)
                          + r"\n(.*?)/\* </end connected objects> \*/", install, re.S)
            if not m:
                sys.exit(f"{name} not found in the generated install script")
            parts.append(m.group(1).strip())
    parts.append(f"-- SQL functions new or changed in {new} ({len(changed)} of {len(after)})")
    parts.extend(changed)

    privileges = (ROOT / "sql" / "privileges.sql").read_text()
    last_function_end = privileges.rindex("$$;") + len("$$;")
    comment = re.compile(r"\s*comment on function .*?';\n", re.S).match(privileges, last_function_end)
    tail = [privileges[comment.end() if comment else last_function_end:].strip()]
    if removed:
        tail.append(f"-- SQL functions {old} had and {new} does not\n" + "\n".join(removed))
    return {"functions": "\n\n".join(parts), "privileges": "\n\n".join(tail)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--base", help="git commit of the last OLD sources (default: found from Cargo.toml's history)")
    ap.add_argument("--check", action="store_true", help="fail if the generated regions are out of date")
    a = ap.parse_args()

    path = ROOT / "sql" / f"pg_billing--{a.old}--{a.new}.sql"
    current = path.read_text() if path.exists() else (
        f"-- pg_billing {a.old} -> {a.new}\n\n-- @generated functions\n-- @end\n\n-- @generated privileges\n-- @end\n")
    rust = [n for line in re.findall(r"^-- @rust (.*)$", current, re.M) for n in line.split()]
    regions = generated(a.old, a.new, a.base or release_commit(a.old), rust)
    found = {m.group(1) for m in REGION.finditer(current)}
    if found != set(regions):
        sys.exit(f"{path.relative_to(ROOT)} needs the regions -- @generated functions / privileges ... -- @end")
    text = REGION.sub(lambda m: f"-- @generated {m.group(1)}\n{regions[m.group(1)]}\n-- @end\n", current)
    if a.check:
        if text != current:
            sys.exit(f"{path.relative_to(ROOT)} is out of date: run python3 scripts/gen-upgrade.py {a.old} {a.new}")
        print(f"{path.relative_to(ROOT)} is up to date")
        return
    path.write_text(text)
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
