// In-database tests (`cargo pgrx test`), included into `mod tests` in lib.rs. They run where
// Supabase's roles and `auth` schema are absent, inside a rolled-back transaction; races, commits
// and SQLSTATEs are tested from outside (tests/integration).

use pgrx::prelude::*;

const USER: &str = "'5a1b2c3d-0000-4000-8000-00000000000a'::uuid";

#[pg_test]
fn installs_without_supabase_roles_or_auth_schema() {
    assert_eq!(Spi::get_one::<bool>("select to_regnamespace('auth') is null"), Ok(Some(true)));
    let rls_tables = Spi::get_one::<i64>(
        "select count(*) from pg_class where relnamespace = 'billing'::regnamespace and relkind = 'r' and relrowsecurity",
    );
    let all_tables = Spi::get_one::<i64>(
        "select count(*) from pg_class where relnamespace = 'billing'::regnamespace and relkind = 'r'",
    );
    assert_eq!(rls_tables, all_tables);
    assert!(matches!(all_tables, Ok(Some(n)) if n >= 10));
}

#[pg_test]
fn identity_is_read_from_jwt_claims_like_auth_uid() {
    Spi::run("select set_config('request.jwt.claims', '{\"sub\":\"5a1b2c3d-0000-4000-8000-00000000000a\",\"role\":\"authenticated\"}', true)")
        .expect("set claims");
    assert_eq!(
        Spi::get_one::<bool>(&format!("select billing_internal.auth_uid() = {USER}")),
        Ok(Some(true))
    );
    // the legacy per-claim setting wins, as in Supabase's auth.uid()
    Spi::run("select set_config('request.jwt.claim.sub', '00000000-0000-4000-8000-000000000001', true)").expect("set");
    assert_eq!(
        Spi::get_one::<String>("select billing_internal.auth_uid()::text"),
        Ok(Some("00000000-0000-4000-8000-000000000001".into()))
    );
}

#[pg_test]
fn superuser_is_a_service_caller() {
    assert_eq!(Spi::get_one::<String>("select billing_internal.caller_kind()"), Ok(Some("service".into())));
}

#[pg_test]
fn grant_consume_and_ledger_check() {
    Spi::run(&format!("select billing.grant_purchase({USER}, 100, 'pg_test_ref')")).expect("grant");
    let after = Spi::get_one::<i64>(&format!(
        "select balance_after from billing.consume_tokens({USER}, 30, 'k1', '{{\"model\":\"m\"}}')"
    ));
    assert_eq!(after, Ok(Some(70)));
    let replay = Spi::get_one::<bool>(&format!("select replayed from billing.consume_tokens({USER}, 30, 'k1')"));
    assert_eq!(replay, Ok(Some(true)));
    assert_eq!(Spi::get_one::<i64>(&format!("select billing.get_balance({USER})")), Ok(Some(70)));
    assert_eq!(Spi::get_one::<i64>("select count(*) from billing.verify_ledger()"), Ok(Some(0)));
}

#[pg_test]
fn a_consume_spanning_grants_burns_soonest_expiry_first() {
    // three grants; the Rust allocation (billing_internal.burn_allocation) decides how much each gives
    Spi::run(&format!(
        "select billing.grant_purchase({USER}, 10, 'later', 'promo', now() + interval '2 days'); \
         select billing.grant_purchase({USER}, 5, 'soon', 'promo', now() + interval '1 day'); \
         select billing.grant_purchase({USER}, 100, 'never')"
    ))
    .expect("grants");
    Spi::run(&format!("select billing.consume_tokens({USER}, 12)")).expect("consume");
    let drawn = Spi::get_one::<String>(&format!(
        "select string_agg(g.reference || '=' || d.t, ',' order by d.ord) \
           from billing.token_usage u, \
                lateral (select u.drawn_from[i][1] as gid, u.drawn_from[i][2] as t, i as ord \
                           from generate_subscripts(u.drawn_from, 1) i) d \
           join billing.token_grants g on g.id = d.gid \
          where u.account_id = {USER}"
    ));
    assert_eq!(drawn, Ok(Some("soon=5,later=7".into())));
    assert_eq!(Spi::get_one::<i64>(&format!("select billing.get_balance({USER})")), Ok(Some(103)));
    assert_eq!(Spi::get_one::<i64>("select count(*) from billing.verify_ledger()"), Ok(Some(0)));
}

#[pg_test]
fn ledger_arithmetic_helpers_return_null_for_impossible_input() {
    assert_eq!(
        Spi::get_one::<String>("select billing_internal.adjustment_targets(1000, '{1000}', '{1}', '{1}', '{3}', '{1}', '{0}')::text"),
        Ok(Some("{333,0}".into()))
    );
    assert_eq!(
        Spi::get_one::<bool>("select billing_internal.adjustment_targets(1000, '{1000}', '{2}', '{1}', '{3}', '{1}', '{0}') is null"),
        Ok(Some(true))
    );
    assert_eq!(
        Spi::get_one::<bool>("select billing_internal.adjustment_targets(1000, '{1000,1}', '{1}', '{1}', '{3}', '{1}', '{0}') is null"),
        Ok(Some(true))
    );
    assert_eq!(Spi::get_one::<bool>("select billing_internal.burn_allocation('{5,null}', 1) is null"), Ok(Some(true)));
    assert_eq!(Spi::get_one::<bool>("select billing_internal.burn_allocation('{5,3}', 9) is null"), Ok(Some(true)));
    // grant of 100: 30 unspent, 20 frozen; claw back everything: 50 taken, 50 spent become debt
    assert_eq!(
        Spi::get_one::<String>("select billing_internal.adjusted_grant(100, 30, 20, 0, 0, 0, 0, true, 100, 0)::text"),
        Ok(Some("{0,0,0,50,50,0}".into()))
    );
    assert_eq!(
        Spi::get_one::<bool>("select billing_internal.adjusted_grant(100, 80, 30, 0, 0, 0, 0, true, 0, 0) is null"),
        Ok(Some(true))
    );
    // 600 held tokens coming back settle the 600 of debt a claw-back recorded for them
    assert_eq!(
        Spi::get_one::<String>("select billing_internal.given_back_grant(1000, 0, 0, 0, 400, 600, 0, false, 600, 0)::text"),
        Ok(Some("{0,0,0,1000,0,600}".into()))
    );
}

#[pg_test(error = "insufficient tokens")]
fn consuming_more_than_the_balance_fails() {
    Spi::run(&format!("select billing.grant_purchase({USER}, 5, 'pg_test_small')")).expect("grant");
    Spi::run(&format!("select billing.consume_tokens({USER}, 6)")).expect("raises");
}

#[pg_test]
fn signature_fixed_vector() {
    let ok = Spi::get_one::<bool>(
        "select billing.verify_stripe_signature('{\"id\":\"evt_test_webhook\",\"object\":\"event\"}', \
         't=12345,v1=e7df43adcf699b3839cf5fe20429cae4712141aee3660a1671b34f77a1be9444', 'whsec_test_secret', 0)",
    );
    assert_eq!(ok, Ok(Some(true)));
    let reason = Spi::get_one::<String>(
        "select billing.stripe_signature_rejection('{}', 't=12345,v1=00', 'whsec_test_secret', 0)",
    );
    assert_eq!(reason, Ok(Some("signature_mismatch: No signatures found matching the expected signature for payload".into())));
}

#[pg_test]
fn malformed_headers_are_false_not_errors() {
    for header in ["", "garbage", "t=,v1=", "t=1,t=1,v1=ab", "v1=ab", "t=01,v1=ab", "\u{00e9}=\u{00e9}"] {
        let sql = format!("select billing.verify_stripe_signature('{{}}', '{header}', 'whsec_x')");
        assert_eq!(Spi::get_one::<bool>(&sql), Ok(Some(false)), "{header}");
    }
    assert_eq!(
        Spi::get_one::<bool>("select billing.verify_stripe_signature(null::text, null, 'whsec_x')"),
        Ok(Some(false))
    );
}

#[pg_test(error = "webhook secret must not be NULL or empty")]
fn empty_secret_is_an_error() {
    Spi::run("select billing.verify_stripe_signature('{}', 't=1,v1=00', '')").expect("raises");
}

#[pg_test]
fn decodes_a_stripe_event() {
    let kind = Spi::get_one::<String>(&format!(
        "select billing_internal.decode_stripe_event({}) ->> 'kind'",
        pgrx::spi::quote_literal(include_str!("../tests/fixtures/stripe/events/2025-10-29.clover/06_invoice_paid_first.json"))
    ));
    assert_eq!(kind, Ok(Some("invoice_paid".into())));
}
