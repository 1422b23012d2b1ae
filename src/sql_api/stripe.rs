//! SQL faces of Stripe signature verification and event decoding.

use pg_billing_core::{event, signature};
use pgrx::prelude::*;
use pgrx::JsonB;

/// Unix time now in microseconds (wall clock, as the Stripe libraries use).
fn now_micros() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Raises 22023 (invalid_parameter_value), the SQLSTATE for every bad argument here.
fn invalid_parameter(message: &str) -> ! {
    ereport!(ERROR, PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message);
}

/// Errors only for bad arguments the caller controls: NULL/empty secret, negative tolerance.
fn checked_arguments(secret: Option<&str>, tolerance: Option<i32>) -> (&str, u32) {
    let secret = match secret {
        Some(s) if !s.is_empty() => s,
        _ => invalid_parameter("webhook secret must not be NULL or empty"),
    };
    let tolerance = match tolerance {
        Some(t) if t >= 0 => t as u32,
        Some(_) => invalid_parameter("tolerance must be >= 0 seconds (0 disables the age check)"),
        None => invalid_parameter("tolerance must not be NULL"),
    };
    (secret, tolerance)
}

fn rejection(
    payload: Option<&[u8]>,
    header: Option<&str>,
    secret: &str,
    tolerance: u32,
) -> Option<signature::Rejection> {
    let (Some(payload), Some(header)) = (payload, header) else {
        return Some(signature::Rejection::MalformedHeader("payload or header is NULL"));
    };
    signature::verify(payload, header, secret.as_bytes(), tolerance, now_micros()).err()
}

/// Stripe's webhook signature check: true only for a header Stripe's libraries accept (strictly).
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
pub fn verify_stripe_signature(
    p_payload: Option<&str>,
    p_signature_header: Option<&str>,
    p_secret: Option<&str>,
    p_tolerance_seconds: default!(Option<i32>, 300),
) -> bool {
    let (secret, tolerance) = checked_arguments(p_secret, p_tolerance_seconds);
    rejection(p_payload.map(str::as_bytes), p_signature_header, secret, tolerance).is_none()
}

/// The same over raw bytes, for bodies that are not valid UTF-8 text.
#[pg_extern(volatile, parallel_safe, name = "verify_stripe_signature")]
#[search_path(pg_catalog, pg_temp)]
pub fn verify_stripe_signature_bytea(
    p_payload: Option<&[u8]>,
    p_signature_header: Option<&str>,
    p_secret: Option<&str>,
    p_tolerance_seconds: default!(Option<i32>, 300),
) -> bool {
    let (secret, tolerance) = checked_arguments(p_secret, p_tolerance_seconds);
    rejection(p_payload, p_signature_header, secret, tolerance).is_none()
}

/// Why a signature is rejected: NULL when valid, else `code: message` (codes in the README).
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
pub fn stripe_signature_rejection(
    p_payload: Option<&str>,
    p_signature_header: Option<&str>,
    p_secret: Option<&str>,
    p_tolerance_seconds: default!(Option<i32>, 300),
) -> Option<String> {
    let (secret, tolerance) = checked_arguments(p_secret, p_tolerance_seconds);
    rejection(p_payload.map(str::as_bytes), p_signature_header, secret, tolerance)
        .map(|r| format!("{}: {}", r.code(), r.message()))
}

/// Internal: verifies against several secrets (rotation). NULL when valid, else the rejection code.
#[pg_extern(volatile, parallel_safe, schema = "billing_internal")]
#[search_path(pg_catalog, pg_temp)]
pub fn stripe_signature_check(
    p_payload: Option<&str>,
    p_signature_header: Option<&str>,
    p_secrets: Option<Vec<Option<String>>>,
    p_tolerance_seconds: i32,
) -> Option<String> {
    let secrets: Vec<String> = p_secrets
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() {
        return Some("no_secret".into());
    }
    let (Some(payload), Some(header)) = (p_payload, p_signature_header) else {
        return Some("malformed_header".into());
    };
    let secret_bytes: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
    let tolerance = u32::try_from(p_tolerance_seconds).unwrap_or(0);
    signature::verify_any_secret(payload.as_bytes(), header, &secret_bytes, tolerance, now_micros())
        .err()
        .map(|r| r.code().to_string())
}

/// Internal: decodes a Stripe event into the flat JSON the applier reads; 22023 when it is not an event.
#[pg_extern(immutable, parallel_safe, schema = "billing_internal")]
#[search_path(pg_catalog, pg_temp)]
pub fn decode_stripe_event(p_payload: &str) -> JsonB {
    match event::decode(p_payload.as_bytes()) {
        Ok(v) => JsonB(v),
        Err(e) => invalid_parameter(&e.message()),
    }
}
