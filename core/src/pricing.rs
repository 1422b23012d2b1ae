//! LLM usage priced per model: prices are credits per million tokens, and a call's cost is
//!
//! ```text
//! ceil(((input − cached) × input_price + cached × cached_input_price + output × output_price) / 1,000,000)
//! ```
//!
//! where `input` counts every input token, cached ones included (OpenAI's `prompt_tokens`), and
//! `cached` those read from the provider's cache. Integer arithmetic only (i128, checked): the result
//! is exact, rounded up once, and `None` when it does not fit a bigint.

/// Credits per million tokens of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prices {
    pub input_per_million: i64,
    pub output_per_million: i64,
    pub cached_input_per_million: i64,
}

/// Why counts cannot be priced (the SQL layer raises 22023 for these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountError {
    Negative,
    CachedAboveInput,
}

const MILLION: i128 = 1_000_000;

/// Checks token counts: none negative, cached within input.
pub fn check_counts(input: i64, output: i64, cached: i64) -> Result<(), CountError> {
    if input < 0 || output < 0 || cached < 0 {
        Err(CountError::Negative)
    } else if cached > input {
        Err(CountError::CachedAboveInput)
    } else {
        Ok(())
    }
}

/// The cost in credits, or `None` when a count or price is invalid (negative, cached above input)
/// or the cost does not fit an i64.
pub fn llm_cost(prices: Prices, input: i64, output: i64, cached: i64) -> Option<i64> {
    check_counts(input, output, cached).ok()?;
    let Prices {
        input_per_million,
        output_per_million,
        cached_input_per_million,
    } = prices;
    if input_per_million < 0 || output_per_million < 0 || cached_input_per_million < 0 {
        return None;
    }
    let micro = i128::from(input - cached)
        .checked_mul(i128::from(input_per_million))?
        .checked_add(i128::from(cached).checked_mul(i128::from(cached_input_per_million))?)?
        .checked_add(i128::from(output).checked_mul(i128::from(output_per_million))?)?;
    // micro >= 0: the ceiling is the quotient, plus one when there is a remainder.
    let credits = micro / MILLION + i128::from(micro % MILLION != 0);
    i64::try_from(credits).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPT: Prices = Prices {
        input_per_million: 2_500_000,
        output_per_million: 10_000_000,
        cached_input_per_million: 1_250_000,
    };

    /// The reference: the same formula on arbitrary-precision decimals written out by hand.
    fn reference(p: Prices, input: i64, output: i64, cached: i64) -> Option<i64> {
        let parts = [
            (input - cached) as u128 * p.input_per_million as u128,
            cached as u128 * p.cached_input_per_million as u128,
            output as u128 * p.output_per_million as u128,
        ];
        let mut total: u128 = 0;
        for part in parts {
            total = total.checked_add(part)?;
        }
        let credits = total.div_ceil(1_000_000);
        i64::try_from(credits).ok()
    }

    #[test]
    fn rounds_up_once_over_the_whole_call() {
        // 2,500,000 credits per million input tokens: 2.5 credits per token
        assert_eq!(llm_cost(GPT, 1, 0, 0), Some(3));
        assert_eq!(llm_cost(GPT, 2, 0, 0), Some(5));
        assert_eq!(llm_cost(GPT, 1_000_000, 0, 0), Some(2_500_000));
        // 1,000 in (400 of them cached) + 500 out: 600 × 2.5 + 400 × 1.25 + 500 × 10 = 7,000
        assert_eq!(llm_cost(GPT, 1_000, 500, 400), Some(7_000));
        assert_eq!(llm_cost(GPT, 0, 0, 0), Some(0));
        // one credit per million tokens: any use at all costs a credit, and rounding happens once
        let tiny = Prices {
            input_per_million: 1,
            output_per_million: 1,
            cached_input_per_million: 1,
        };
        assert_eq!(llm_cost(tiny, 1, 0, 0), Some(1));
        assert_eq!(llm_cost(tiny, 600_000, 400_000, 0), Some(1));
        assert_eq!(llm_cost(tiny, 600_000, 400_001, 0), Some(2));
    }

    #[test]
    fn cached_tokens_are_part_of_input_and_priced_apart() {
        let cheap_cache = Prices {
            input_per_million: 1_000_000,
            output_per_million: 0,
            cached_input_per_million: 0,
        };
        assert_eq!(llm_cost(cheap_cache, 3_000_000, 0, 1_000_000), Some(2_000_000));
        assert_eq!(llm_cost(cheap_cache, 1, 0, 2), None); // more cached than input
        assert_eq!(check_counts(1, 0, 2), Err(CountError::CachedAboveInput));
        assert_eq!(check_counts(-1, 0, 0), Err(CountError::Negative));
    }

    #[test]
    fn huge_counts_do_not_overflow_and_out_of_range_is_none() {
        let max = i64::MAX;
        let p = Prices {
            input_per_million: max,
            output_per_million: max,
            cached_input_per_million: max,
        };
        assert_eq!(llm_cost(p, max, max, 0), None); // ~1.7e32 credits
        let one = Prices {
            input_per_million: 1_000_000,
            output_per_million: 0,
            cached_input_per_million: 0,
        };
        assert_eq!(llm_cost(one, max, 0, 0), Some(max)); // exactly i64::MAX credits
        let two = Prices {
            input_per_million: 2_000_000,
            ..one
        };
        assert_eq!(llm_cost(two, max, 0, 0), None);
        assert_eq!(llm_cost(one, max, max, max), Some(0)); // all cached at price 0
    }

    #[test]
    fn agrees_with_the_reference_on_a_grid_of_values() {
        let values = [
            0i64,
            1,
            2,
            7,
            999_999,
            1_000_000,
            1_000_001,
            123_456_789,
            i64::MAX / 3,
            i64::MAX,
        ];
        for &ip in &values {
            for &op in &values {
                for &cp in &[0, 1, 500_000, ip] {
                    let p = Prices {
                        input_per_million: ip,
                        output_per_million: op,
                        cached_input_per_million: cp,
                    };
                    for &input in &values {
                        for &output in &values {
                            for cached in [0, input / 2, input] {
                                assert_eq!(
                                    llm_cost(p, input, output, cached),
                                    reference(p, input, output, cached),
                                    "{p:?} {input} {output} {cached}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
