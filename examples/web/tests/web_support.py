"""Where the browser test's backend, database and output are (a module name of its own: both
example test directories have a conftest)."""
import pathlib
import sys

WEB = pathlib.Path(__file__).resolve().parents[1]
DB = "pg_billing_web"
OUTPUT = WEB / "test-output"
sys.path.insert(0, str(WEB.parent / "fastapi"))
sys.path.insert(0, str(WEB.parent / "fastapi" / "tests"))
