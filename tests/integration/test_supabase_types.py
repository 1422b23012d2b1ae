"""What a supabase-js user sees: Supabase's own type generator (`@supabase/postgres-meta`, the code
behind `supabase gen types typescript`, installed in tools/typegen by `make setup`) run against the
database. Schema billing shows the tables and the public API, and nothing of billing_internal."""
import os
import pathlib
import re
import subprocess

from conftest import DBNAME, PORT

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "tools" / "typegen" / "node_modules" / "@supabase" / "postgres-meta" / "dist" / "server" / "server.js"
PUBLIC_FUNCTIONS = {"consume_tokens", "get_balance", "reserve_tokens", "commit_reservation", "release_reservation",
                    "grant_purchase", "get_billing_summary", "get_usage_history", "get_grant_history",
                    "get_payment_history", "redeem_promo_code", "handle_stripe_webhook", "reprocess_failed_events",
                    "run_maintenance", "verify_ledger", "verify_stripe_signature", "stripe_signature_rejection",
                    "get_accounts", "create_team_account", "add_account_member", "remove_account_member",
                    "llm_cost", "record_llm_usage", "reserve_llm_usage", "commit_llm_usage", "claim_outbox", "ack_outbox",
                    "nack_outbox"}


def generated_types(db, schemas="billing"):
    env = dict(os.environ, PG_META_DB_URL=f"postgresql://postgres@127.0.0.1:{PORT}/{DBNAME}",
               PG_META_GENERATE_TYPES="typescript", PG_META_GENERATE_TYPES_INCLUDED_SCHEMAS=schemas)
    out = subprocess.run(["node", str(GENERATOR)], env=env, capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def section(types, name, until):
    start = types.index(f"    {name}: {{")
    return types[start:types.index(f"    {until}:", start)]


def test_the_exposed_schema_shows_only_the_public_api(db):
    types = generated_types(db)
    functions = set(re.findall(r"^      (\w+):", section(types, "Functions", "Enums"), re.M))
    assert functions == PUBLIC_FUNCTIONS
    tables = set(re.findall(r"^      (\w+): \{", section(types, "Tables", "Views"), re.M))
    assert "token_grants" in tables and "payment_transactions" in tables
    assert "billing_internal" not in types
    # arguments are typed by name, as supabase.rpc passes them
    assert re.search(r"consume_tokens: \{\s+Args: \{[^}]*p_amount: number[^}]*p_user_id: string", types)


def test_committed_types_are_those_of_the_installed_extension(db):
    """types/database.ts is what a supabase-js app compiles against: a change of the public API must
    come with regenerated types (make types), never by accident."""
    committed = (ROOT / "types" / "database.ts").read_text()
    assert generated_types(db) == committed, "the public API changed: run make types and review the diff"
