//! `#[pg_extern]` functions: check arguments, call the pure core, map errors to SQLSTATEs.

pub mod call;
pub mod ledger;
pub mod pricing;
pub mod rate;
mod removed;
pub mod stripe;
