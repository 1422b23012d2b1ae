//! Stripe-Signature parsing and verification: never panics; whatever is accepted is strict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_billing_core::signature::{self, Rejection};

const SECRET: &[u8] = b"whsec_fuzz";

fuzz_target!(|data: &[u8]| {
    // First byte picks the tolerance; the rest splits at the first NUL into header and payload.
    let Some((&tol, rest)) = data.split_first() else { return };
    let (header, payload) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let Ok(header) = std::str::from_utf8(header) else { return };
    let now = 1_700_000_000_000_000i64;
    let verdict = signature::verify(payload, header, SECRET, tol as u32, now);
    if verdict.is_ok() {
        // Accepted headers are strict: items are key=value, exactly one canonical t.
        let ts: Vec<&str> = header.split(',').filter(|i| i.starts_with("t=")).collect();
        assert_eq!(ts.len(), 1);
        assert!(header.split(',').all(|i| i.matches('=').count() == 1));
    }
    if let Ok(parsed) = signature::parse_header(header) {
        assert!(!parsed.timestamp.is_empty() && parsed.timestamp.bytes().all(|b| b.is_ascii_digit()));
    }
    // Round trip: what we sign for this payload always verifies (tolerance 0: no age check).
    if !payload.is_empty() {
        let t = (tol as i64) * 1_000_003;
        let good = signature::sign(payload, SECRET, t);
        assert_eq!(signature::verify(payload, &good, SECRET, 0, now), Ok(()));
        let other = signature::verify(payload, &good, b"whsec_other", 0, now);
        assert_eq!(other, Err(Rejection::SignatureMismatch));
    }
});
