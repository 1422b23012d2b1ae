//! Pure logic of pg_billing, free of pgrx so it is unit-tested with `cargo test` and fuzzed
//! with `cargo fuzz`: Stripe signature verification, Stripe event decoding, and the ledger's
//! burn-down and claw-back arithmetic.

pub mod event;
pub mod ledger;
pub mod signature;
