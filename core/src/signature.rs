//! Stripe webhook signature verification (`Stripe-Signature` header), no pgrx.
//!
//! The scheme: `v1` = lowercase hex of HMAC-SHA256(secret, "{t}.{payload}"). Where the official
//! libraries disagree on a header's form we reject (see README, "Stripe signatures"): every item
//! must be `key=value` with exactly one `=`, exactly one `t` in canonical decimal, keys compared
//! exactly, non-empty payload. Nothing in here panics on any input.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a signature was rejected. The order of checks follows stripe-python.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The payload is empty (stripe-node: "No webhook payload was provided.").
    EmptyPayload,
    /// The header is not a strict `key=value,...` list or its `t` is not canonical.
    MalformedHeader(&'static str),
    /// No `v1` item.
    NoV1Signature,
    /// No `v1` item equals the expected signature.
    SignatureMismatch,
    /// `t` is older than `now - tolerance`.
    TimestampOutsideTolerance,
}

impl Rejection {
    /// A stable, machine-readable code (returned by `billing.stripe_signature_rejection`).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::EmptyPayload => "empty_payload",
            Rejection::MalformedHeader(_) => "malformed_header",
            Rejection::NoV1Signature => "no_v1_signature",
            Rejection::SignatureMismatch => "signature_mismatch",
            Rejection::TimestampOutsideTolerance => "timestamp_outside_tolerance",
        }
    }

    /// Human-readable reason, worded like stripe-python where it has a message.
    pub fn message(&self) -> String {
        match self {
            Rejection::EmptyPayload => "No webhook payload was provided".into(),
            Rejection::MalformedHeader(why) => {
                format!("Unable to extract timestamp and signatures from header: {why}")
            }
            Rejection::NoV1Signature => "No signatures found with expected scheme v1".into(),
            Rejection::SignatureMismatch => "No signatures found matching the expected signature for payload".into(),
            Rejection::TimestampOutsideTolerance => "Timestamp outside the tolerance zone".into(),
        }
    }
}

/// A parsed header: the timestamp as its canonical digit string, and every `v1` value.
#[derive(Debug, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    pub timestamp: &'a str,
    pub v1: Vec<&'a str>,
}

/// Parses a `Stripe-Signature` header strictly.
pub fn parse_header(header: &str) -> Result<SignatureHeader<'_>, Rejection> {
    let mut timestamp: Option<&str> = None;
    let mut v1 = Vec::new();
    if header.is_empty() {
        return Err(Rejection::MalformedHeader("empty header"));
    }
    for item in header.split(',') {
        let mut parts = item.split('=');
        let (key, value) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(v), None) => (k, v),
            _ => return Err(Rejection::MalformedHeader("item is not key=value")),
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(Rejection::MalformedHeader("more than one t"));
                }
                if !is_canonical_decimal(value) {
                    return Err(Rejection::MalformedHeader("t is not canonical decimal"));
                }
                timestamp = Some(value);
            }
            "v1" => v1.push(value),
            _ => {} // v0 and unknown schemes are ignored, as every library does
        }
    }
    let timestamp = timestamp.ok_or(Rejection::MalformedHeader("no t"))?;
    Ok(SignatureHeader { timestamp, v1 })
}

/// Digits only, no sign, no leading zero (a lone "0" is canonical).
fn is_canonical_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s.len() == 1 || !s.starts_with('0'))
}

/// Lowercase hex of HMAC-SHA256(secret, "{timestamp}.{payload}").
pub fn compute_signature(secret: &[u8], timestamp: &str, payload: &[u8]) -> String {
    // new_from_slice accepts keys of any length for HMAC; the error arm is unreachable.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(payload);
    to_lower_hex(&mac.finalize().into_bytes())
}

fn to_lower_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

/// True when `t < now - tolerance`, computed exactly in microseconds (stripe-python compares
/// against the float `time.time()`). `tolerance_seconds == 0` disables the check.
fn is_too_old(timestamp: &str, tolerance_seconds: u32, now_micros: i64) -> bool {
    if tolerance_seconds == 0 {
        return false;
    }
    // A canonical timestamp longer than u64 is far in the future: never too old.
    let t: u64 = match timestamp.parse() {
        Ok(t) => t,
        Err(_) => return false,
    };
    let t_micros = t as i128 * 1_000_000;
    t_micros < now_micros as i128 - tolerance_seconds as i128 * 1_000_000
}

/// Verifies a Stripe webhook signature. `now_micros` is Unix time in microseconds.
pub fn verify(
    payload: &[u8],
    header: &str,
    secret: &[u8],
    tolerance_seconds: u32,
    now_micros: i64,
) -> Result<(), Rejection> {
    verify_any_secret(payload, header, &[secret], tolerance_seconds, now_micros)
}

/// Like [`verify`], accepting the header if any `v1` matches any of `secrets` (rotation).
pub fn verify_any_secret(
    payload: &[u8],
    header: &str,
    secrets: &[&[u8]],
    tolerance_seconds: u32,
    now_micros: i64,
) -> Result<(), Rejection> {
    if payload.is_empty() {
        return Err(Rejection::EmptyPayload);
    }
    let parsed = parse_header(header)?;
    if parsed.v1.is_empty() {
        return Err(Rejection::NoV1Signature);
    }
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = compute_signature(secret, parsed.timestamp, payload);
        for candidate in &parsed.v1 {
            // Length is public (always 64 for a real signature); contents compare in constant time.
            if candidate.len() == expected.len() {
                matched |= candidate.as_bytes().ct_eq(expected.as_bytes());
            }
        }
    }
    if !bool::from(matched) {
        return Err(Rejection::SignatureMismatch);
    }
    if is_too_old(parsed.timestamp, tolerance_seconds, now_micros) {
        return Err(Rejection::TimestampOutsideTolerance);
    }
    Ok(())
}

/// Builds a header the way Stripe does (`t=…,v1=…`), for tests, demos and benchmarks.
pub fn sign(payload: &[u8], secret: &[u8], timestamp: i64) -> String {
    let t = timestamp.to_string();
    format!("t={t},v1={}", compute_signature(secret, &t, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    const FIXED: &str = "e7df43adcf699b3839cf5fe20429cae4712141aee3660a1671b34f77a1be9444";
    const NOW: i64 = 12_345 * 1_000_000;

    #[test]
    fn fixed_vector_from_stripe_docs() {
        assert_eq!(compute_signature(SECRET, "12345", BODY), FIXED);
        assert_eq!(verify(BODY, &format!("t=12345,v1={FIXED}"), SECRET, 300, NOW), Ok(()));
        assert_eq!(sign(BODY, SECRET, 12345), format!("t=12345,v1={FIXED}"));
    }

    #[test]
    fn any_v1_may_match_and_v0_is_ignored() {
        let h = format!("t=12345,v0=abc,v1={},v1={FIXED}", "0".repeat(64));
        assert_eq!(verify(BODY, &h, SECRET, 300, NOW), Ok(()));
    }

    #[test]
    fn rotation_accepts_either_secret() {
        let h = format!("t=12345,v1={FIXED}");
        assert_eq!(verify_any_secret(BODY, &h, &[b"old", SECRET], 300, NOW), Ok(()));
        assert_eq!(
            verify_any_secret(BODY, &h, &[b"old", b"other"], 300, NOW),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn tampered_payload_or_wrong_secret_fails() {
        let h = format!("t=12345,v1={FIXED}");
        assert_eq!(verify(b"{}", &h, SECRET, 300, NOW), Err(Rejection::SignatureMismatch));
        assert_eq!(
            verify(BODY, &h, b"whsec_other", 300, NOW),
            Err(Rejection::SignatureMismatch)
        );
    }

    #[test]
    fn uppercase_short_long_or_non_ascii_v1_simply_do_not_match() {
        for v1 in [
            FIXED.to_uppercase(),
            FIXED[..10].into(),
            format!("{FIXED}00"),
            "é".repeat(32),
            String::new(),
        ] {
            assert_eq!(
                verify(BODY, &format!("t=12345,v1={v1}"), SECRET, 300, NOW),
                Err(Rejection::SignatureMismatch),
                "{v1}"
            );
        }
    }

    #[test]
    fn non_strict_headers_are_rejected() {
        for h in [
            String::new(),
            format!("t=12345,v1={FIXED},"),
            format!("t=12345,v1={FIXED}=junk"),
            format!("t=12345,t=12345,v1={FIXED}"),
            format!("t=012345,v1={FIXED}"),
            format!("t=+12345,v1={FIXED}"),
            format!("t= 12345,v1={FIXED}"),
            format!("t=12_345,v1={FIXED}"),
            format!("t=12345abc,v1={FIXED}"),
            format!("T=12345,v1={FIXED}"),
            format!("v1={FIXED}"),
            "garbage".into(),
        ] {
            assert!(
                matches!(verify(BODY, &h, SECRET, 0, NOW), Err(Rejection::MalformedHeader(_))),
                "{h:?}"
            );
        }
    }

    #[test]
    fn no_v1_is_its_own_reason() {
        assert_eq!(
            verify(BODY, "t=12345,v0=abc", SECRET, 0, NOW),
            Err(Rejection::NoV1Signature)
        );
        // " v1" is an unknown key (keys compare exactly), so there is no v1 at all
        assert_eq!(
            verify(BODY, &format!("t=12345, v1={FIXED}"), SECRET, 0, NOW),
            Err(Rejection::NoV1Signature)
        );
    }

    #[test]
    fn empty_payload_is_rejected() {
        assert_eq!(verify(b"", "t=1,v1=00", SECRET, 0, NOW), Err(Rejection::EmptyPayload));
    }

    #[test]
    fn tolerance_rules() {
        let h = format!("t=12345,v1={FIXED}");
        // exactly at the edge passes (t >= now - tolerance)
        assert_eq!(verify(BODY, &h, SECRET, 300, (12_345 + 300) * 1_000_000), Ok(()));
        assert_eq!(
            verify(BODY, &h, SECRET, 300, (12_345 + 300) * 1_000_000 + 1),
            Err(Rejection::TimestampOutsideTolerance)
        );
        // future timestamps pass; tolerance 0 disables the age check
        assert_eq!(verify(BODY, &h, SECRET, 300, 0), Ok(()));
        assert_eq!(verify(BODY, &h, SECRET, 0, i64::MAX), Ok(()));
    }

    #[test]
    fn huge_canonical_timestamp_is_far_future_not_an_error() {
        let t = "99999999999999999999999";
        let h = format!("t={t},v1={}", compute_signature(SECRET, t, BODY));
        assert_eq!(verify(BODY, &h, SECRET, 300, NOW), Ok(()));
    }
}
