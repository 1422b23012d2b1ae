#!/usr/bin/env python3
"""Writes the scripts that install an earlier pg_billing release into an extension directory, read
from this repository's git history (the upgrade test installs the previous release this way):

  * the release's own install script, if one was ever committed (sql/releases/pg_billing--V.sql);
  * else, recursively, the scripts of the release it upgrades from plus the upgrade script
    sql/pg_billing--PREV--V.sql as it was at V's last commit.

PostgreSQL then installs V from the oldest install script through the chain. The shared library
must still export every C symbol those scripts name (src/sql_api/removed.rs keeps removed ones).

    python3 scripts/old-release.py 0.3.0 /usr/share/postgresql/15/extension   # prints the files written
"""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def release_commit(version):
    """The last commit whose Cargo.toml has `version = "<version>"`."""
    changes = git("log", "--format=%H", "-S", f'version = "{version}"', "--", "Cargo.toml").split()
    if not changes:
        sys.exit(f"no commit in this clone's history has version {version} in Cargo.toml (a shallow clone?)")
    head_version = re.search(r'^version = "(.*)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    return "HEAD" if head_version == version else f"{changes[0]}^"


def scripts(version):
    """{file name: text} that install `version`."""
    frozen = f"sql/releases/pg_billing--{version}.sql"
    added = git("log", "--diff-filter=A", "--format=%H", "--", frozen).split()
    if added:
        return {pathlib.Path(frozen).name: git("show", f"{added[-1]}:{frozen}")}
    commit = release_commit(version)
    upgrades = [p for p in git("ls-tree", "--name-only", commit, "sql/").split()
                if re.fullmatch(rf"sql/pg_billing--[\d.]+--{re.escape(version)}\.sql", p)]
    if not upgrades:
        sys.exit(f"release {version}: neither an install script nor an upgrade script into it in git")
    previous = pathlib.Path(upgrades[0]).name.split("--")[1]
    return scripts(previous) | {pathlib.Path(upgrades[0]).name: git("show", f"{commit}:{upgrades[0]}")}


def main(version, directory):
    for name, text in scripts(version).items():
        (pathlib.Path(directory) / name).write_text(text)
        print(name)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
