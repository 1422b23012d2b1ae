//! Pure logic of pg_billing, free of pgrx so it is unit-tested with `cargo test` and fuzzed
//! with `cargo fuzz`: Stripe signature verification and Stripe event decoding.

pub mod event;
pub mod signature;
