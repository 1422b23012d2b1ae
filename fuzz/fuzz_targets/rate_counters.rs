//! `pg_billing_core::rate` on any state array and call: decoding never panics and round-trips what
//! it accepts; counting keeps every count non-negative and touches only active counters; a call
//! given back in the windows it was counted in leaves the counts as they were (when no count
//! saturated and no window changed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_billing_core::rate::{self, FIELDS};

fuzz_target!(|data: &[u8]| {
    let words: Vec<i64> =
        data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    if words.len() < 3 {
        return;
    }
    let (call, state) = words.split_at(3);
    let (tokens, requests, now) = (call[0], call[1].rem_euclid(3), call[2]);
    let Some(before) = rate::decode(state) else {
        return;
    };
    assert_eq!(rate::encode(&before), state);
    let mut after = before.clone();
    rate::count(&mut after, tokens, requests, now);
    assert!(after.iter().all(|c| c.used >= 0));
    for (b, a) in before.iter().zip(&after) {
        if !b.active {
            assert_eq!(a, b);
        }
    }
    let _ = rate::refusal(&after, tokens, requests);
    let windows = rate::windows(&after, tokens, requests);
    let mut back = after.clone();
    rate::give_back(&mut back, &windows, tokens, requests);
    let unchanged_windows = before.iter().zip(&after).all(|(b, a)| b.window_start == a.window_start);
    let saturated = after.iter().any(|c| c.used == i64::MAX);
    if unchanged_windows && !saturated {
        assert_eq!(back, before);
    }
});
