//! Which calls of consume_tokens, reserve_tokens and get_balance may skip their checks: the decision
//! their hot paths make first, in one function call instead of a PL/pgSQL expression per rule (PL/pgSQL sets
//! every expression up again in each transaction). The rules themselves, and their errors, stay in
//! sql/ledger.sql.

/// What a consume_tokens or reserve_tokens call looks like before it runs.
pub struct SpendCall<'a> {
    pub user_id_given: bool,
    pub amount: Option<i64>,
    /// The idempotency key's length in bytes; None without a key.
    pub key_bytes: Option<usize>,
    /// Whether p_metadata is a JSON object; None for NULL (reserve_tokens, without metadata, passes '{}').
    pub metadata_is_object: Option<bool>,
    /// The session's `role` setting (`current_setting('role')`).
    pub role: &'a str,
}

/// The roles PostgREST sets for a browser's request: they act only for the signed-in user (or not
/// at all), which the checks decide.
pub fn is_browser_role(role: &str) -> bool {
    role == "authenticated" || role == "anon"
}

/// True unless the call is one the checks would pass unchanged: a user id, a positive amount, an
/// object as metadata, no key or one of 1 to 255 bytes (at most 255 bytes is at most 255
/// characters; the checks count characters), and a caller that is not a browser.
pub fn spend_needs_checks(call: &SpendCall) -> bool {
    !call.user_id_given
        || !matches!(call.amount, Some(amount) if amount > 0)
        || call.metadata_is_object != Some(true)
        || matches!(call.key_bytes, Some(bytes) if !(1..=255).contains(&bytes))
        || is_browser_role(call.role)
}

/// get_balance's test: true unless a caller that is not a browser asks about a user's personal
/// account (a NULL user or a team account needs the checks).
pub fn read_needs_checks(user_id_given: bool, account_given: bool, role: &str) -> bool {
    !user_id_given || account_given || is_browser_role(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> SpendCall<'static> {
        SpendCall {
            user_id_given: true,
            amount: Some(1),
            key_bytes: None,
            metadata_is_object: Some(true),
            role: "none",
        }
    }

    #[test]
    fn a_backend_call_with_valid_arguments_needs_no_checks() {
        assert!(!spend_needs_checks(&plain()));
        assert!(!spend_needs_checks(&SpendCall {
            key_bytes: Some(1),
            ..plain()
        }));
        assert!(!spend_needs_checks(&SpendCall {
            key_bytes: Some(255),
            ..plain()
        }));
        assert!(!spend_needs_checks(&SpendCall {
            amount: Some(i64::MAX),
            ..plain()
        }));
        for role in [
            "none",
            "service_role",
            "postgres",
            "authenticator",
            "Authenticated",
            "anon ",
        ] {
            assert!(!spend_needs_checks(&SpendCall { role, ..plain() }), "{role}");
        }
    }

    #[test]
    fn every_argument_a_check_refuses_or_changes_needs_the_checks() {
        assert!(spend_needs_checks(&SpendCall {
            user_id_given: false,
            ..plain()
        }));
        for amount in [None, Some(0), Some(-1), Some(i64::MIN)] {
            assert!(spend_needs_checks(&SpendCall { amount, ..plain() }), "{amount:?}");
        }
        for key_bytes in [Some(0), Some(256), Some(usize::MAX)] {
            assert!(spend_needs_checks(&SpendCall { key_bytes, ..plain() }), "{key_bytes:?}");
        }
        for metadata_is_object in [None, Some(false)] {
            assert!(spend_needs_checks(&SpendCall {
                metadata_is_object,
                ..plain()
            }));
        }
    }

    #[test]
    fn a_read_needs_checks_for_a_null_user_a_team_account_or_a_browser() {
        assert!(!read_needs_checks(true, false, "none"));
        assert!(!read_needs_checks(true, false, "service_role"));
        assert!(read_needs_checks(false, false, "none"));
        assert!(read_needs_checks(true, true, "none"));
        assert!(read_needs_checks(true, false, "authenticated"));
        assert!(read_needs_checks(true, false, "anon"));
    }

    #[test]
    fn browser_callers_need_the_checks() {
        assert!(spend_needs_checks(&SpendCall {
            role: "authenticated",
            ..plain()
        }));
        assert!(spend_needs_checks(&SpendCall {
            role: "anon",
            ..plain()
        }));
    }
}
