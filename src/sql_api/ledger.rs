//! SQL faces of the ledger arithmetic in `pg_billing_core::ledger` (burn-down, Stripe adjustment
//! targets, moving a grant's counters), so the numbers PL/pgSQL writes come from the code that is
//! unit-tested and fuzzed. Internal helpers: owner-only (no EXECUTE for any API role). They never
//! raise: input that a consistent ledger cannot hold gives NULL, and the PL/pgSQL caller raises
//! XX000 "ledger inconsistency".

use pg_billing_core::ledger;
use pgrx::prelude::*;

/// Tokens to take from each grant, in the order given (soonest expiry first), to pay p_amount;
/// NULL when the grants hold too little, or for a non-positive amount or a NULL/negative element.
#[pg_extern(
    immutable,
    parallel_safe,
    strict,
    schema = "billing_internal",
    name = "burn_allocation"
)]
#[search_path(pg_catalog, pg_temp)]
pub fn burn_allocation(p_remaining: Array<i64>, p_amount: i64) -> Option<Vec<i64>> {
    let remaining: Option<Vec<i64>> = p_remaining.iter().collect();
    ledger::burn_allocation(&remaining?, p_amount)
}

/// {claw_back, freeze} of a grant of p_grant_tokens from its payments' shares (one element per
/// payment of each purchase); NULL for NULL or negative elements, arrays of different lengths, or
/// a weight above its purchase's.
#[pg_extern(
    immutable,
    parallel_safe,
    strict,
    schema = "billing_internal",
    name = "adjustment_targets"
)]
#[search_path(pg_catalog, pg_temp)]
pub fn adjustment_targets(
    p_grant_tokens: i64,
    p_tokens: Array<i64>,
    p_weight: Array<i64>,
    p_purchase_weight: Array<i64>,
    p_captured: Array<i64>,
    p_taken: Array<i64>,
    p_open: Array<i64>,
) -> Option<Vec<i64>> {
    let column = |a: &Array<i64>| -> Option<Vec<i64>> { a.iter().collect() };
    let columns = [&p_tokens, &p_weight, &p_purchase_weight, &p_captured, &p_taken, &p_open]
        .map(column)
        .into_iter()
        .collect::<Option<Vec<_>>>()?;
    let n = columns[0].len();
    if columns.iter().any(|c| c.len() != n) {
        return None;
    }
    let shares: Vec<ledger::PaymentShare> = (0..n)
        .map(|i| ledger::PaymentShare {
            tokens: columns[0][i],
            weight: columns[1][i],
            purchase_weight: columns[2][i],
            captured: columns[3][i],
            taken: columns[4][i],
            open: columns[5][i],
        })
        .collect();
    ledger::adjustment_targets(p_grant_tokens, &shares).map(|t| vec![t.claw_back, t.freeze])
}

fn counters(a: ledger::Adjusted) -> Vec<i64> {
    vec![
        a.remaining,
        a.frozen,
        a.expired,
        a.clawed_back,
        a.debt_incurred,
        a.debt_forgiven,
    ]
}

/// A grant's counters moved to its targets: {remaining, frozen, expired, clawed_back,
/// debt_incurred, debt_forgiven}; NULL for counters no consistent grant has.
#[allow(clippy::too_many_arguments)]
#[pg_extern(
    immutable,
    parallel_safe,
    strict,
    schema = "billing_internal",
    name = "adjusted_grant"
)]
#[search_path(pg_catalog, pg_temp)]
pub fn adjusted_grant(
    p_tokens: i64,
    p_remaining: i64,
    p_frozen: i64,
    p_expired: i64,
    p_clawed_back: i64,
    p_debt_incurred: i64,
    p_debt_repaid: i64,
    p_live: bool,
    p_claw_target: i64,
    p_freeze_target: i64,
) -> Option<Vec<i64>> {
    let g = ledger::Grant {
        tokens: p_tokens,
        remaining: p_remaining,
        frozen: p_frozen,
        expired: p_expired,
        clawed_back: p_clawed_back,
        debt_incurred: p_debt_incurred,
        debt_repaid: p_debt_repaid,
        live: p_live,
    };
    ledger::adjust(&g, p_claw_target, p_freeze_target).map(counters)
}

/// A grant's counters after p_back held tokens come back to it (same shape as _adjusted_grant).
#[allow(clippy::too_many_arguments)]
#[pg_extern(
    immutable,
    parallel_safe,
    strict,
    schema = "billing_internal",
    name = "given_back_grant"
)]
#[search_path(pg_catalog, pg_temp)]
pub fn given_back_grant(
    p_tokens: i64,
    p_remaining: i64,
    p_frozen: i64,
    p_expired: i64,
    p_clawed_back: i64,
    p_debt_incurred: i64,
    p_debt_repaid: i64,
    p_live: bool,
    p_back: i64,
    p_freeze_target: i64,
) -> Option<Vec<i64>> {
    let g = ledger::Grant {
        tokens: p_tokens,
        remaining: p_remaining,
        frozen: p_frozen,
        expired: p_expired,
        clawed_back: p_clawed_back,
        debt_incurred: p_debt_incurred,
        debt_repaid: p_debt_repaid,
        live: p_live,
    };
    ledger::give_back(&g, p_back, p_freeze_target).map(counters)
}
