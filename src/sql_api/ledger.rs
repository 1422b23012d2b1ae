//! SQL faces of the ledger arithmetic in `pg_billing_core::ledger` (burn-down and claw-back), so
//! the numbers PL/pgSQL writes come from the code that is unit-tested and fuzzed. Internal helpers:
//! owner-only (no EXECUTE for any API role). They never raise: input that a consistent ledger
//! cannot hold gives NULL, and the PL/pgSQL caller raises XX000 "ledger inconsistency".

use pg_billing_core::ledger;
use pgrx::prelude::*;

/// Tokens to take from each grant, in the order given (soonest expiry first), to pay p_amount;
/// NULL when the grants hold too little, or for a non-positive amount or a NULL/negative element.
#[pg_extern(immutable, parallel_safe, strict, name = "_burn_allocation")]
#[search_path(pg_catalog, pg_temp)]
pub fn burn_allocation(p_remaining: Array<i64>, p_amount: i64) -> Option<Vec<i64>> {
    let remaining: Option<Vec<i64>> = p_remaining.iter().collect();
    ledger::burn_allocation(&remaining?, p_amount)
}

/// floor(p_grant_tokens * p_refunded / p_amount): the share of a grant a (cumulative) refund claws
/// back; NULL for a non-positive amount or a refund outside 0..=amount.
#[pg_extern(immutable, parallel_safe, strict, name = "_refund_share")]
#[search_path(pg_catalog, pg_temp)]
pub fn refund_share(p_grant_tokens: i64, p_amount: i64, p_refunded: i64) -> Option<i64> {
    ledger::refund_share(p_grant_tokens, p_amount, p_refunded)
}

/// {from_remaining, from_frozen, debt} that bring a grant's clawed-back total up to p_target;
/// NULL for counters no consistent grant has.
#[pg_extern(immutable, parallel_safe, strict, name = "_claw_back_split")]
#[search_path(pg_catalog, pg_temp)]
pub fn claw_back_split(
    p_tokens: i64,
    p_remaining: i64,
    p_frozen: i64,
    p_clawed_back: i64,
    p_debt_incurred: i64,
    p_target: i64,
) -> Option<Vec<i64>> {
    let grant = ledger::GrantCounters {
        tokens: p_tokens,
        remaining: p_remaining,
        frozen: p_frozen,
        clawed_back: p_clawed_back,
        debt_incurred: p_debt_incurred,
    };
    ledger::claw_back(&grant, p_target).map(|c| vec![c.from_remaining, c.from_frozen, c.debt])
}
