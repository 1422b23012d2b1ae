//! Stripe event decoding: never panics; a decoded event always has id, type and kind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_billing_core::event;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = event::decode(data) {
        assert!(v["id"].as_str().is_some_and(|s| s.starts_with("evt_")));
        assert!(v["type"].is_string());
        assert!(v["kind"].is_string());
        assert!(v["created"].as_i64().is_some_and(|c| c >= 0));
    }
});
