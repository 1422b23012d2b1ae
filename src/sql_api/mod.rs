//! `#[pg_extern]` functions: check arguments, call the pure core, map errors to SQLSTATEs.

pub mod ledger;
pub mod pricing;
mod removed;
pub mod stripe;
