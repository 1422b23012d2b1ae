//! Symbols of Rust functions earlier releases had. The shared library is not versioned, so the
//! install and upgrade scripts of those releases (run when a database upgrades through them, or
//! installs an old version) still create functions that point at these symbols. No SQL is generated
//! for them, and after `ALTER EXTENSION pg_billing UPDATE` nothing calls them; a database still on
//! the old version that calls one gets this error instead of "could not find function".

use pgrx::prelude::*;

fn removed(name: &str, version: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("billing.{name} was removed in pg_billing {version}"),
        "Run ALTER EXTENSION pg_billing UPDATE after installing a new pg_billing library."
    );
}

/// 0.3.0's billing._refund_share.
#[pg_extern(sql = false)]
fn refund_share(_grant_tokens: i64, _amount: i64, _refunded: i64) -> Option<i64> {
    removed("_refund_share", "0.4.0")
}

/// 0.3.0's billing._claw_back_split.
#[pg_extern(sql = false)]
fn claw_back_split(
    _tokens: i64,
    _remaining: i64,
    _frozen: i64,
    _clawed: i64,
    _debt: i64,
    _target: i64,
) -> Option<Vec<i64>> {
    removed("_claw_back_split", "0.4.0")
}
