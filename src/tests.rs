use pgrx::prelude::*;

#[pg_test]
fn signature_fixed_vector() {
    let ok = Spi::get_one::<bool>(
        "select billing.verify_stripe_signature('{\"id\":\"evt_test_webhook\",\"object\":\"event\"}', \
         't=12345,v1=e7df43adcf699b3839cf5fe20429cae4712141aee3660a1671b34f77a1be9444', 'whsec_test_secret', 0)",
    );
    assert_eq!(ok, Ok(Some(true)));
}
