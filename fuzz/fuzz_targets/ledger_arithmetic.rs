//! Burn-down and claw-back arithmetic: random grants, consumes, refunds and disputes; every token
//! stays accounted for, nothing panics or overflows (pg_billing_core::ledger::check_scenario).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pg_billing_core::ledger::check_scenario(data);
});
