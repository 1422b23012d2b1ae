#!/usr/bin/env python3
"""Fails when README.md, docs/*.md or a README under tests/ or examples/ names a file or folder of
this repository that does not exist (paths inside backticks or markdown links; build output under
target/ is not checked)."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("tests/**/README.md")),
        *sorted(ROOT.glob("examples/**/README.md"))]
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
if missing:
    print("\n".join(missing))
    sys.exit(1)
print(f"   {len(DOCS)} documents, every named path exists")
