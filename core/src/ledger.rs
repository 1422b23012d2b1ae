//! Burn-down and claw-back arithmetic of the ledger. The SQL functions `billing._burn_allocation`,
//! `billing._refund_share` and `billing._claw_back_split` are thin wrappers over these, so the
//! arithmetic that moves tokens is the code `cargo fuzz` exercises (target `ledger_arithmetic`).
//!
//! Every function takes untrusted numbers (whatever is in the tables) and never panics or
//! overflows: intermediate sums are i128, and inputs that cannot come from a consistent ledger give
//! `None` so the SQL caller raises an error instead of writing a wrong number.

/// How many tokens to take from each grant, in burn order (the caller orders the grants soonest
/// expiry first), to pay `amount`. `None` when `amount` is not positive, any remaining count is
/// negative, or the grants together hold less than `amount`.
pub fn burn_allocation(remaining: &[i64], amount: i64) -> Option<Vec<i64>> {
    if amount <= 0 || remaining.iter().any(|&r| r < 0) {
        return None;
    }
    let total: i128 = remaining.iter().map(|&r| r as i128).sum();
    if total < amount as i128 {
        return None;
    }
    let mut left = amount;
    Some(
        remaining
            .iter()
            .map(|&r| {
                let take = r.min(left);
                left -= take;
                take
            })
            .collect(),
    )
}

/// The tokens a refund claws back from one grant that the payment bought: the refunded share of
/// the grant, cumulative over partial refunds (`refunded` is the charge's total `amount_refunded`),
/// rounded down in the customer's favour. `None` for a non-positive `amount`, a negative grant or
/// refund, or a refund larger than the charge.
pub fn refund_share(grant_tokens: i64, amount: i64, refunded: i64) -> Option<i64> {
    if amount <= 0 || grant_tokens < 0 || refunded < 0 || refunded > amount {
        return None;
    }
    // floor(grant_tokens * refunded / amount) <= grant_tokens, so it fits in i64.
    Some((grant_tokens as i128 * refunded as i128 / amount as i128) as i64)
}

/// The counters of a grant that a claw-back reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCounters {
    pub tokens: i64,
    pub remaining: i64,
    pub frozen: i64,
    pub clawed_back: i64,
    pub debt_incurred: i64,
}

/// Where the tokens of a claw-back come from: unspent tokens first, then frozen (disputed) ones;
/// whatever was already spent becomes debt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClawBack {
    pub from_remaining: i64,
    pub from_frozen: i64,
    pub debt: i64,
}

impl ClawBack {
    pub fn total(&self) -> i128 {
        self.from_remaining as i128 + self.from_frozen as i128 + self.debt as i128
    }
}

/// Brings a grant's clawed-back total (clawed_back + debt_incurred) up to `target` tokens (capped
/// at the grant's size). Idempotent: a target already reached claws back nothing, so a repeated or
/// smaller refund changes nothing. `None` when the counters are negative or already exceed the
/// grant (an inconsistent ledger).
pub fn claw_back(g: &GrantCounters, target: i64) -> Option<ClawBack> {
    let GrantCounters { tokens, remaining, frozen, clawed_back, debt_incurred } = *g;
    if [tokens, remaining, frozen, clawed_back, debt_incurred].iter().any(|&v| v < 0) {
        return None;
    }
    let already = clawed_back as i128 + debt_incurred as i128;
    if already > tokens as i128 {
        return None;
    }
    let delta = target.min(tokens) as i128 - already;
    if delta <= 0 {
        return Some(ClawBack::default());
    }
    // 0 < delta <= tokens, so every part below fits in i64.
    let from_remaining = delta.min(remaining as i128);
    let from_frozen = (delta - from_remaining).min(frozen as i128);
    let debt = delta - from_remaining - from_frozen;
    Some(ClawBack { from_remaining: from_remaining as i64, from_frozen: from_frozen as i64, debt: debt as i64 })
}

/// The fuzz target's property check, shared with `cargo test` (tests/fuzz_corpus.rs replays the
/// corpus through it). Reads a scenario from raw bytes: grants, then a sequence of operations.
/// Panics when an invariant breaks.
pub fn check_scenario(data: &[u8]) {
    let mut r = Reader(data);
    let n = (r.u8() % 8) as usize;
    let mut grants = Vec::with_capacity(n);
    let mut charge_amount = Vec::with_capacity(n); // the Stripe charge that bought grant i
    for _ in 0..n {
        let tokens = r.tokens().max(1);
        grants.push(GrantCounters { tokens, remaining: tokens, frozen: 0, clawed_back: 0, debt_incurred: 0 });
        charge_amount.push(r.tokens().max(1));
    }
    let mut spent = vec![0i128; n];
    let mut refunded_so_far = vec![0i64; n];
    while let Some(op) = r.next_u8() {
        match op % 4 {
            0 => {
                // consume: burn across grants in order
                let amount = r.tokens();
                let remaining: Vec<i64> = grants.iter().map(|g| g.remaining).collect();
                let total: i128 = remaining.iter().map(|&x| x as i128).sum();
                match burn_allocation(&remaining, amount) {
                    None => assert!(amount <= 0 || total < amount as i128),
                    Some(take) => {
                        assert_eq!(take.len(), n);
                        assert_eq!(take.iter().map(|&t| t as i128).sum::<i128>(), amount as i128);
                        for (i, &t) in take.iter().enumerate() {
                            assert!(t >= 0 && t <= grants[i].remaining);
                            // burn order: a grant is touched only once every earlier one is empty
                            if t > 0 {
                                assert!(take[..i].iter().zip(&remaining[..i]).all(|(tt, r)| tt == r));
                            }
                            grants[i].remaining -= t;
                            spent[i] += t as i128;
                        }
                    }
                }
            }
            1 | 2 => {
                // refund (cumulative, never decreasing) or lost dispute (whole grant)
                let i = r.u8() as usize;
                if n == 0 {
                    continue;
                }
                let i = i % n;
                let g = grants[i];
                let target = if op % 4 == 1 {
                    let amount = charge_amount[i];
                    let refunded = refunded_so_far[i].saturating_add(r.tokens().rem_euclid(amount)).min(amount);
                    refunded_so_far[i] = refunded;
                    let share = refund_share(g.tokens, amount, refunded).expect("valid refund");
                    assert!(share >= 0 && share <= g.tokens);
                    share
                } else {
                    g.tokens
                };
                let c = claw_back(&g, target).expect("consistent grant");
                assert!(c.from_remaining >= 0 && c.from_remaining <= g.remaining);
                assert!(c.from_frozen >= 0 && c.from_frozen <= g.frozen);
                assert!(c.debt >= 0);
                assert!(c.total() <= g.tokens as i128);
                grants[i] = GrantCounters {
                    remaining: g.remaining - c.from_remaining,
                    frozen: g.frozen - c.from_frozen,
                    clawed_back: g.clawed_back + c.from_remaining + c.from_frozen,
                    debt_incurred: g.debt_incurred + c.debt,
                    ..g
                };
                // a second application of the same target changes nothing
                assert_eq!(claw_back(&grants[i], target), Some(ClawBack::default()));
            }
            _ => {
                // dispute opened: what is left is frozen
                if n == 0 {
                    continue;
                }
                let i = r.u8() as usize % n;
                grants[i].frozen += grants[i].remaining;
                grants[i].remaining = 0;
            }
        }
        // conservation: every token of every grant is in exactly one place
        for (g, &s) in grants.iter().zip(&spent) {
            assert_eq!(
                g.tokens as i128,
                g.remaining as i128 + g.frozen as i128 + g.clawed_back as i128 + s,
                "grant {g:?}, spent {s}"
            );
            assert!(g.debt_incurred as i128 <= s, "debt only for spent tokens: {g:?}, spent {s}");
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn next_u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u8(&mut self) -> u8 {
        self.next_u8().unwrap_or(0)
    }
    /// A token count: mostly small, sometimes near i64::MAX, sometimes zero or negative.
    fn tokens(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in b.iter_mut() {
            *x = self.u8();
        }
        let v = i64::from_le_bytes(b);
        match b[7] >> 5 {
            0 => i64::MAX - (v & 0xff),
            1 => -(v & 0xff),
            _ => v & 0xffff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_takes_in_order_and_exactly() {
        assert_eq!(burn_allocation(&[5, 10, 3], 12), Some(vec![5, 7, 0]));
        assert_eq!(burn_allocation(&[5, 10, 3], 18), Some(vec![5, 10, 3]));
        assert_eq!(burn_allocation(&[0, 4], 4), Some(vec![0, 4]));
        assert_eq!(burn_allocation(&[5, 10, 3], 19), None);
        assert_eq!(burn_allocation(&[5], 0), None);
        assert_eq!(burn_allocation(&[5, -1], 1), None);
        assert_eq!(burn_allocation(&[], 1), None);
        assert_eq!(burn_allocation(&[i64::MAX, i64::MAX], i64::MAX), Some(vec![i64::MAX, 0]));
    }

    #[test]
    fn refund_share_rounds_down_and_never_exceeds_the_grant() {
        assert_eq!(refund_share(1000, 2000, 500), Some(250));
        assert_eq!(refund_share(1000, 3, 1), Some(333));
        assert_eq!(refund_share(1000, 3, 3), Some(1000));
        assert_eq!(refund_share(i64::MAX, i64::MAX, i64::MAX - 1), Some(i64::MAX - 1));
        assert_eq!(refund_share(1000, 0, 0), None);
        assert_eq!(refund_share(1000, 10, 11), None);
        assert_eq!(refund_share(1000, 10, -1), None);
    }

    #[test]
    fn claw_back_takes_unspent_then_frozen_then_records_debt() {
        let g = GrantCounters { tokens: 100, remaining: 30, frozen: 20, clawed_back: 0, debt_incurred: 0 };
        assert_eq!(claw_back(&g, 100), Some(ClawBack { from_remaining: 30, from_frozen: 20, debt: 50 }));
        assert_eq!(claw_back(&g, 40), Some(ClawBack { from_remaining: 30, from_frozen: 10, debt: 0 }));
        let done = GrantCounters { clawed_back: 60, debt_incurred: 0, ..g };
        assert_eq!(claw_back(&done, 50), Some(ClawBack::default()));
        assert_eq!(claw_back(&done, 70).map(|c| c.total()), Some(10));
        assert_eq!(claw_back(&GrantCounters { remaining: -1, ..g }, 10), None);
        assert_eq!(claw_back(&GrantCounters { clawed_back: 101, ..g }, 10), None);
        let big = GrantCounters { tokens: i64::MAX, remaining: i64::MAX, frozen: i64::MAX, clawed_back: 0, debt_incurred: 0 };
        assert_eq!(claw_back(&big, i64::MAX).map(|c| c.total()), Some(i64::MAX as i128));
    }

    #[test]
    fn scenarios_from_small_inputs_hold_every_invariant() {
        // exhaustive over short inputs, plus a deterministic pseudo-random sweep of longer ones
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 3, 7, 64, 255] {
                check_scenario(&[a, b, a, b, a]);
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..(len % 97))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            check_scenario(&bytes);
        }
    }
}
