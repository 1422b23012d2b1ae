//! SQL face of LLM pricing in `pg_billing_core::pricing`. Internal (owner-only); it never raises:
//! NULL for invalid counts or prices and for a cost above 2^63-1 credits, and the PL/pgSQL caller
//! (billing_internal.priced) raises 22023 or 22003.

use pg_billing_core::pricing::{self, Prices};
use pgrx::prelude::*;

/// Credits an LLM call costs: ceil of (uncached input × input price + cached input × cached price
/// + output × output price) / 1,000,000, prices in credits per million tokens.
#[pg_extern(immutable, parallel_safe, strict, schema = "billing_internal", name = "llm_cost_of")]
#[search_path(pg_catalog, pg_temp)]
pub fn llm_cost_of(
    p_input_per_million: i64,
    p_output_per_million: i64,
    p_cached_input_per_million: i64,
    p_input_tokens: i64,
    p_output_tokens: i64,
    p_cached_input_tokens: i64,
) -> Option<i64> {
    let prices = Prices {
        input_per_million: p_input_per_million,
        output_per_million: p_output_per_million,
        cached_input_per_million: p_cached_input_per_million,
    };
    pricing::llm_cost(prices, p_input_tokens, p_output_tokens, p_cached_input_tokens)
}
