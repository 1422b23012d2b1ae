//! Pure logic of pg_billing, free of pgrx so it is unit-tested with `cargo test` and fuzzed
//! with `cargo fuzz`: Stripe signature verification, Stripe event decoding, the ledger's
//! burn-down and claw-back arithmetic, LLM usage pricing, rate-limit counters, and which
//! consume_tokens calls may skip their checks.

pub mod call;
pub mod event;
pub mod ledger;
pub mod pricing;
pub mod rate;
pub mod signature;
