//! billing_internal.spend_needs_checks and read_needs_checks: the first test of the hot paths of
//! consume_tokens and reserve_tokens, and of get_balance; the rules in `pg_billing_core::call`.
//! Written against fcinfo and declared in sql/ledger.sql (not #[pg_extern]), because pgrx would
//! convert p_metadata into a serde value on every call; this reads only the jsonb's root header, the
//! key's length and the role setting. They never raise (the PL/pgSQL callers raise the checks' own
//! SQLSTATEs).

use pg_billing_core::call::{read_needs_checks as read_rules, spend_needs_checks as spend_rules, SpendCall};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_spend_needs_checks() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// spend_needs_checks(p_user_id uuid, p_amount bigint, p_idempotency_key text, p_metadata jsonb)
/// returns boolean, not strict: true unless a backend's call with valid arguments.
///
/// # Safety
/// Called by PostgreSQL's function manager with the four arguments sql/ledger.sql declares.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn spend_needs_checks(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        if (*fcinfo).nargs != 4 {
            error!("billing_internal.spend_needs_checks takes 4 arguments");
        }
        let args = (*fcinfo).args.as_slice(4);
        with_session_role(|role| {
            let call = SpendCall {
                user_id_given: !args[0].isnull,
                amount: (!args[1].isnull).then(|| args[1].value.value() as i64),
                // octet_length's count: the raw size, also of a compressed or out-of-line value
                key_bytes: (!args[2].isnull)
                    .then(|| pg_sys::toast_raw_datum_size(args[2].value).saturating_sub(pg_sys::VARHDRSZ)),
                metadata_is_object: (!args[3].isnull).then(|| jsonb_is_object(args[3].value)),
                role,
            };
            pg_sys::Datum::from(spend_rules(&call))
        })
    }
}

/// jsonb_typeof(value) = 'object': the root container's header has JB_FOBJECT (a scalar is stored
/// as a one-element array, so it does not).
unsafe fn jsonb_is_object(value: pg_sys::Datum) -> bool {
    unsafe {
        let jsonb = pg_sys::pg_detoast_datum_packed(value.cast_mut_ptr());
        if pgrx::varlena::varsize_any_exhdr(jsonb) < 4 {
            return false;
        }
        let header = std::ptr::read_unaligned(pgrx::varlena::vardata_any(jsonb) as *const u32);
        header & pg_sys::JB_FOBJECT != 0
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_read_needs_checks() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// read_needs_checks(p_user_id uuid, p_account_id uuid) returns boolean, not strict: true unless a
/// caller that is not a browser asks about a user's personal account.
///
/// # Safety
/// Called by PostgreSQL's function manager with the two arguments sql/ledger.sql declares.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn read_needs_checks(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        if (*fcinfo).nargs != 2 {
            error!("billing_internal.read_needs_checks takes 2 arguments");
        }
        let args = (*fcinfo).args.as_slice(2);
        with_session_role(|role| pg_sys::Datum::from(read_rules(!args[0].isnull, !args[1].isnull, role)))
    }
}

/// f(current_setting('role')): "none" without SET ROLE, else the role PostgREST (or anyone) set. The
/// name is read in the copy current_setting's own function makes (in the call's memory context),
/// not copied again into a Rust String.
unsafe fn with_session_role<R>(f: impl FnOnce(&str) -> R) -> R {
    unsafe {
        let role = pg_sys::GetConfigOptionByName(c"role".as_ptr(), std::ptr::null_mut(), false);
        f(if role.is_null() {
            ""
        } else {
            CStr::from_ptr(role).to_str().unwrap_or("")
        })
    }
}
