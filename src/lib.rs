//! pg_billing: wiring only. The ledger, policies and grants are SQL files under `sql/` (readable by a
//! DBA, with PL/pgSQL where a custom SQLSTATE such as PT402 must be raised); Stripe signature
//! verification, event decoding, the ledger's burn-down/claw-back arithmetic and LLM pricing are pure
//! Rust in `pg_billing_core`, exposed by `sql_api`.

use pgrx::prelude::*;

mod sql_api;

pgrx::pg_module_magic!(name, version);

// The schema of the helpers (created first by sql/schema.sql; declared here so Rust functions can
// name it with `schema = "billing_internal"`).
#[pg_schema]
mod billing_internal {}

// Order matters: tables and helpers first, then the Rust functions (generated), then the
// PL/pgSQL functions that call them, then grants that name every function.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/ledger.sql",
    name = "ledger",
    requires = [
        "schema",
        sql_api::ledger::burn_allocation,
        sql_api::ledger::adjusted_grant,
        sql_api::ledger::given_back_grant,
        sql_api::rate::rate_counted,
        sql_api::rate::rate_over,
        sql_api::rate::rate_refusal,
        sql_api::rate::rate_windows,
        sql_api::rate::rate_given_back,
        sql_api::rate::rate_rebuilt
    ]
);
extension_sql_file!("../sql/accounts.sql", name = "accounts", requires = ["ledger"]);
extension_sql_file!(
    "../sql/limits.sql",
    name = "limits",
    requires = ["accounts", sql_api::pricing::llm_cost_of, sql_api::rate::rate_usage]
);
extension_sql_file!("../sql/outbox.sql", name = "outbox", requires = ["limits"]);
extension_sql_file!(
    "../sql/stripe.sql",
    name = "stripe",
    requires = [
        "outbox",
        sql_api::ledger::adjustment_targets,
        sql_api::stripe::stripe_signature_check,
        sql_api::stripe::decode_stripe_event
    ]
);
extension_sql_file!("../sql/verify.sql", name = "verify", requires = ["stripe"]);
extension_sql_file!("../sql/frontend.sql", name = "frontend", requires = ["verify"]);
extension_sql_file!("../sql/privileges.sql", name = "privileges", finalize);

// In-database tests, in schema `tests` where cargo pgrx test calls them; only in `pg_test` builds.
#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
