//! SQL face of the rate-limit counters in `pg_billing_core::rate` (`balances.rate_state`).
//! Internal (owner-only). A state this module did not write is XX000, never "no limits": a limit
//! must not stop applying because its counters were damaged.
//!
//! No `SET search_path`: these functions run no SQL, and the clause would cost a GUC save/restore
//! on every call of the debit that counts a limit (tests/integration/test_linter.py: UNPINNED).

use pg_billing_core::rate::{self, Counter};
use pgrx::prelude::*;

const EPOCH_2000: i64 = 946_684_800; // PostgreSQL timestamps count microseconds from 2000-01-01

fn counters(state: &Array<i64>) -> Vec<Counter> {
    let values: Option<Vec<i64>> = state.iter().collect();
    match values.as_deref().and_then(rate::decode) {
        Some(counters) => counters,
        None => error!("pg_billing: ledger inconsistency: malformed balances.rate_state"),
    }
}

fn epoch_seconds(at: TimestampWithTimeZone) -> i64 {
    if !at.is_finite() {
        error!("pg_billing: a rate limit is counted at a finite time");
    }
    at.into_inner().div_euclid(1_000_000) + EPOCH_2000
}

fn requests(p_requests: i32) -> i64 {
    i64::from(p_requests)
}

/// The state after a call of p_tokens credits and p_requests calls at p_now is counted.
#[pg_extern(immutable, parallel_safe, strict, schema = "billing_internal", name = "rate_counted")]
pub fn rate_counted(p_state: Array<i64>, p_tokens: i64, p_requests: i32, p_now: TimestampWithTimeZone) -> Vec<i64> {
    let mut c = counters(&p_state);
    rate::count(&mut c, p_tokens, requests(p_requests), epoch_seconds(p_now));
    rate::encode(&c)
}

/// Whether the call just counted in p_state went over a limit.
#[pg_extern(immutable, parallel_safe, strict, schema = "billing_internal", name = "rate_over")]
pub fn rate_over(p_state: Array<i64>, p_tokens: i64, p_requests: i32) -> bool {
    rate::refusal(&counters(&p_state), p_tokens, requests(p_requests)).is_some()
}

/// The limit that refuses the call just counted: {limit_id, metric (0 requests, 1 tokens),
/// window_seconds, max_amount, used (this call included), amount (this call's), window_start
/// (epoch s)}; NULL when it is within every limit.
#[pg_extern(immutable, parallel_safe, strict, schema = "billing_internal", name = "rate_refusal")]
pub fn rate_refusal(p_state: Array<i64>, p_tokens: i64, p_requests: i32) -> Option<Vec<i64>> {
    let c = counters(&p_state);
    let r = rate::refusal(&c, p_tokens, requests(p_requests))?;
    Some(vec![
        r.limit.id,
        i64::from(r.limit.metric == rate::Metric::Tokens),
        r.limit.window_seconds,
        r.limit.max_amount,
        r.used,
        r.amount(p_tokens, requests(p_requests)),
        r.window_start,
    ])
}

/// The windows the call just counted went into: {limit_id, window_start, ...} pairs.
#[pg_extern(immutable, parallel_safe, strict, schema = "billing_internal", name = "rate_windows")]
pub fn rate_windows(p_state: Array<i64>, p_tokens: i64, p_requests: i32) -> Vec<i64> {
    rate::windows(&counters(&p_state), p_tokens, requests(p_requests))
        .into_iter()
        .flat_map(|(id, start)| [id, start])
        .collect()
}

/// The state after p_tokens credits and p_requests calls counted in p_windows (from rate_windows)
/// are given back.
#[pg_extern(
    immutable,
    parallel_safe,
    strict,
    schema = "billing_internal",
    name = "rate_given_back"
)]
pub fn rate_given_back(p_state: Array<i64>, p_windows: Array<i64>, p_tokens: i64, p_requests: i32) -> Vec<i64> {
    let mut c = counters(&p_state);
    let flat: Option<Vec<i64>> = p_windows.iter().collect();
    let windows: Vec<(i64, i64)> = match flat {
        Some(f) if f.len() % 2 == 0 => f.chunks_exact(2).map(|w| (w[0], w[1])).collect(),
        _ => error!("pg_billing: ledger inconsistency: malformed token_reservations.rate_windows"),
    };
    rate::give_back(&mut c, &windows, p_tokens, requests(p_requests));
    rate::encode(&c)
}

/// The use of each limit of the account's plan in the window current at p_now (a count of an
/// earlier window is 0): what billing.rate_limit_usage shows. Runs with the reader's rights.
#[pg_extern(immutable, parallel_safe, strict, schema = "billing_internal", name = "rate_usage")]
pub fn rate_usage(
    p_state: Array<i64>,
    p_now: TimestampWithTimeZone,
) -> TableIterator<'static, (name!(limit_id, i64), name!(window_start, i64), name!(used, i64))> {
    let now = epoch_seconds(p_now);
    let rows: Vec<(i64, i64, i64)> = counters(&p_state)
        .iter()
        .filter(|c| c.active)
        .map(|c| {
            let (start, used) = c.current_use(now);
            (c.limit.id, start, used)
        })
        .collect();
    TableIterator::new(rows)
}

/// The state of an account whose plan has p_limits ({id, metric (0 requests, 1 tokens),
/// window_seconds, max_amount, ...}; NULL or empty: none), from its state p_state (NULL: none);
/// NULL when nothing is left to count.
#[pg_extern(immutable, parallel_safe, schema = "billing_internal", name = "rate_rebuilt")]
pub fn rate_rebuilt(
    p_state: Option<Array<i64>>,
    p_limits: Option<Array<i64>>,
    p_now: Option<TimestampWithTimeZone>,
) -> Option<Vec<i64>> {
    let old = p_state.as_ref().map(counters).unwrap_or_default();
    let flat: Option<Vec<i64>> = match &p_limits {
        Some(l) => l.iter().collect(),
        None => Some(Vec::new()),
    };
    let limits = match flat.as_deref().and_then(rate::decode_limits) {
        Some(limits) => limits,
        None => error!("pg_billing: malformed rate limits"),
    };
    let now = match p_now {
        Some(now) => epoch_seconds(now),
        None => error!("pg_billing: a rate limit is counted at a finite time"),
    };
    let c = rate::rebuild(&old, &limits, now);
    (!c.is_empty()).then(|| rate::encode(&c))
}
