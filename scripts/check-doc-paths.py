#!/usr/bin/env python3
"""Fails when documentation or a code comment names a file or folder of this repository that does not
exist: paths inside backticks or markdown links in README.md, docs/*.md and READMEs under tests/ and
examples/, and repository paths (docs/..., sql/..., tests/..., ...) in the comments of SQL, Rust,
Python and shell files. Build output under target/ is not checked."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("tests/**/README.md")),
        *sorted(p for p in ROOT.glob("examples/**/README.md") if "node_modules" not in p.parts)]
# a repository path: starts with a top-level folder or file of this repo and has no placeholders
TOP = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")} | {".ci"}
CANDIDATE = re.compile(r"`([^`\s]+)`|\]\(([^)\s#]+)\)")
PLACEHOLDER = re.compile(r"[<>*{}]|\bA--B\b|FROM|\bX\b|\.\.\.")

missing = []
for doc in DOCS:
    for m in CANDIDATE.finditer(doc.read_text()):
        path = (m.group(1) or m.group(2)).rstrip("/.,:")
        if path.startswith(("http", "/", "$", "target/")) or PLACEHOLDER.search(path) or " " in path:
            continue
        first = path.split("/")[0]
        for base in (ROOT, doc.parent):
            if (base / path).exists():
                break
        else:
            # only report what looks like a path of this repository
            if "/" in path and (first in TOP or (doc.parent / first).exists()):
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
# comments in code: a path that starts with a top-level folder of the repository
CODE = [p for p in ROOT.rglob("*") if p.suffix in {".sql", ".rs", ".py", ".sh", ".ts", ".tsx"} and p.is_file()
        and not any(part in {"target", "node_modules", ".venv", ".git", "corpus", "fixtures"} for part in p.parts)
        and not p.name.startswith("pg_billing--")]
FOLDERS = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
COMMENT = re.compile(r"(?:--|//|#)(.*)$", re.M)
IN_COMMENT = re.compile(r"(?<![\w./-])((?:" + "|".join(sorted(FOLDERS)) + r")/[\w./-]*[\w/])")
for f in CODE:
    for comment in COMMENT.findall(f.read_text(errors="replace")):
        for path in IN_COMMENT.findall(comment):
            path = path.rstrip("/.")
            if not PLACEHOLDER.search(path) and not path.startswith("target/") and not (ROOT / path).exists():
                missing.append(f"{f.relative_to(ROOT)}: {path}")
if missing:
    print("\n".join(missing))
    sys.exit(1)
print(f"   {len(DOCS)} documents and {len(CODE)} code files, every named path exists")
