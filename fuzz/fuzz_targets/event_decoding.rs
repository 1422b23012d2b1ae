//! Stripe event decoding: never panics; a decoded event always has id, type and kind, and an
//! applied one a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_billing_core::event;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = event::decode(data) {
        assert!(v["id"].as_str().is_some_and(|s| !s.is_empty() && s.len() <= 255));
        assert!(v["type"].is_string());
        assert!(v["kind"].is_string());
        // an event pg_billing applies always has a usable time; ignored ones may not
        assert!(v["kind"] == "ignored" || v["created"].as_i64().is_some_and(|c| c >= 0));
    }
});
