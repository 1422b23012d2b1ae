//! `#[pg_extern]` functions: check arguments, call the pure core, map errors to SQLSTATEs.

pub mod ledger;
mod removed;
pub mod stripe;
