//! `pg_billing_core::pricing::llm_cost` on any six integers (three prices, three token counts):
//! never panics, and equals the cost computed in u128 by the formula's definition, or is `None`
//! exactly when that cost does not fit an i64 or the input is invalid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_billing_core::pricing::{llm_cost, Prices};

fn reference(v: [i64; 6]) -> Option<i64> {
    let [ip, op, cp, input, output, cached] = v;
    if v.iter().any(|x| *x < 0) || cached > input {
        return None;
    }
    let micro = ((input - cached) as u128) * ip as u128 + (cached as u128) * cp as u128 + (output as u128) * op as u128;
    i64::try_from(micro.div_ceil(1_000_000)).ok()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 48 {
        return;
    }
    let mut v = [0i64; 6];
    for (i, chunk) in data[..48].chunks_exact(8).enumerate() {
        v[i] = i64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    let prices = Prices {
        input_per_million: v[0],
        output_per_million: v[1],
        cached_input_per_million: v[2],
    };
    assert_eq!(llm_cost(prices, v[3], v[4], v[5]), reference(v), "{v:?}");
});
