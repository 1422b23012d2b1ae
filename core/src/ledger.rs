//! Burn-down and Stripe-adjustment arithmetic of the ledger. The SQL functions
//! `billing_internal.burn_allocation`, `adjustment_targets`, `adjusted_grant` and `given_back_grant`
//! are thin wrappers over these, so the arithmetic that moves tokens is the code `cargo fuzz`
//! exercises (target `ledger_arithmetic`).
//!
//! Every function takes untrusted numbers (whatever is in the tables) and never panics or
//! overflows: intermediate values are i128, and inputs that cannot come from a consistent ledger
//! give `None` so the SQL caller raises an error instead of writing a wrong number.

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

/// One payment behind one purchase of a grant (a Checkout Session or a subscription invoice), with
/// what Stripe says happened to that payment since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentShare {
    /// Tokens the purchase credited to the grant.
    pub tokens: i64,
    /// This payment's part of what the purchase cost, and the purchase's total over its payments
    /// (1 and 1 for the usual purchase paid by one payment).
    pub weight: i64,
    pub purchase_weight: i64,
    /// The payment's captured amount: refund and dispute shares are fractions of it.
    pub captured: i64,
    /// Taken back for good: refunded (less failed refunds) plus lost disputes.
    pub taken: i64,
    /// Under open disputes.
    pub open: i64,
}

/// What a grant's Stripe adjustments come to: tokens to claw back for good and tokens to keep
/// frozen while disputes are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    pub claw_back: i64,
    pub freeze: i64,
}

/// `floor(floor(tokens * min(captured, amount) / captured) * weight / purchase_weight)`: the
/// tokens of a purchase that `amount` of one of its payments stands for, rounded down (in the
/// customer's favour). Exactly `floor(tokens * amount / captured)` for a purchase paid by one payment.
fn share(p: &PaymentShare, amount: i128) -> i128 {
    if p.captured <= 0 || p.purchase_weight <= 0 {
        return 0; // a payment of nothing cannot be refunded or disputed
    }
    let part = p.tokens as i128 * amount.clamp(0, p.captured as i128) / p.captured as i128;
    part * p.weight as i128 / p.purchase_weight as i128
}

/// The claw-back and freeze targets of a grant of `grant_tokens` from its payments' shares. Each
/// is a pure function of the facts (cumulative refunds, dispute states), so Stripe events applied
/// in any order, and any number of times, reach the same targets. `None` for negative inputs or a
/// weight above its purchase's total.
pub fn adjustment_targets(grant_tokens: i64, shares: &[PaymentShare]) -> Option<Targets> {
    if grant_tokens < 0 {
        return None;
    }
    let (mut claw, mut held) = (0i128, 0i128);
    for p in shares {
        let fields = [p.tokens, p.weight, p.purchase_weight, p.captured, p.taken, p.open];
        if fields.iter().any(|&v| v < 0) || p.weight > p.purchase_weight {
            return None;
        }
        let gone = share(p, p.taken as i128);
        claw += gone;
        held += share(p, p.taken as i128 + p.open as i128) - gone;
    }
    let claw = claw.min(grant_tokens as i128);
    let freeze = held.min(grant_tokens as i128 - claw);
    Some(Targets {
        claw_back: claw as i64,
        freeze: freeze as i64,
    })
}

/// A grant's counters (see sql/schema.sql for the invariant they keep). `live` is false once the
/// grant has expired: its tokens can no longer be spent, so what comes back to it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub tokens: i64,
    pub remaining: i64,
    pub frozen: i64,
    pub expired: i64,
    pub clawed_back: i64,
    pub debt_incurred: i64,
    pub debt_repaid: i64,
    pub live: bool,
}

/// A grant's counters after `adjust`, and how much of its debt was forgiven (the caller gives the
/// user back tokens that already repaid forgiven debt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjusted {
    pub remaining: i64,
    pub frozen: i64,
    pub expired: i64,
    pub clawed_back: i64,
    pub debt_incurred: i64,
    pub debt_forgiven: i64,
}

/// Checks a grant's counters and returns them widened; `None` for counters no consistent grant has.
fn widened(g: &Grant) -> Option<[i128; 7]> {
    let counters = [
        g.tokens,
        g.remaining,
        g.frozen,
        g.expired,
        g.clawed_back,
        g.debt_incurred,
        g.debt_repaid,
    ];
    if counters.iter().any(|&v| v < 0) {
        return None;
    }
    let [tokens, remaining, frozen, expired, clawed_back, debt_incurred, debt_repaid] = counters.map(i128::from);
    if remaining + frozen + expired + clawed_back + debt_repaid > tokens || clawed_back + debt_incurred > tokens {
        return None;
    }
    Some([
        tokens,
        remaining,
        frozen,
        expired,
        clawed_back,
        debt_incurred,
        debt_repaid,
    ])
}

/// Splits a grant's unspent tokens (`pool`) into frozen (up to `freeze_target`) and the rest:
/// spendable while the grant lives, expired after.
fn settle_pool(
    live: bool,
    pool: i128,
    expired: i128,
    clawed_back: i128,
    debt: i128,
    forgiven: i128,
    freeze_target: i64,
) -> Option<Adjusted> {
    let frozen = pool.min(freeze_target.max(0) as i128);
    let (remaining, expired) = if live {
        (pool - frozen, expired)
    } else {
        (0, expired + pool - frozen)
    };
    let fit = |v: i128| i64::try_from(v).ok();
    Some(Adjusted {
        remaining: fit(remaining)?,
        frozen: fit(frozen)?,
        expired: fit(expired)?,
        clawed_back: fit(clawed_back)?,
        debt_incurred: fit(debt)?,
        debt_forgiven: fit(forgiven)?,
    })
}

/// Moves a grant to its targets: `clawed_back + debt_incurred == claw_target` (capped at the
/// grant), and `frozen == min(freeze_target, what is left unspent)`.
///
/// Clawing back takes unspent tokens first (remaining and frozen), then expired ones (they cost the
/// customer nothing), and records what was spent as debt. A lower target (a refund that failed, a
/// dispute won after all) forgives debt first and then returns tokens: spendable while the grant
/// lives, expired after. Idempotent: adjusting to the same targets again changes nothing.
/// `None` for counters no consistent grant has.
pub fn adjust(g: &Grant, claw_target: i64, freeze_target: i64) -> Option<Adjusted> {
    let [tokens, remaining, frozen, expired, clawed_back, debt_incurred, _] = widened(g)?;
    if claw_target < 0 || freeze_target < 0 {
        return None;
    }
    let target = (claw_target as i128).min(tokens);
    let (mut pool, mut expired, mut clawed_back, mut debt) = (remaining + frozen, expired, clawed_back, debt_incurred);
    let taken = clawed_back + debt;
    let mut forgiven = 0;
    if target > taken {
        let mut need = target - taken;
        let from_pool = need.min(pool);
        pool -= from_pool;
        need -= from_pool;
        let from_expired = need.min(expired);
        expired -= from_expired;
        need -= from_expired;
        clawed_back += from_pool + from_expired;
        debt += need;
    } else if target < taken {
        let give = taken - target;
        forgiven = give.min(debt);
        debt -= forgiven;
        let back = give - forgiven; // <= clawed_back, since target >= 0
        clawed_back -= back;
        if g.live {
            pool += back;
        } else {
            expired += back;
        }
    }
    settle_pool(g.live, pool, expired, clawed_back, debt, forgiven, freeze_target)
}

/// Gives `back` tokens that a hold drew from a grant back to it (a released, expired or partly
/// committed reservation). If a claw-back counted them as debt while they were held, they settle
/// that debt (the claw-back takes them now); the rest is unspent again: frozen up to
/// `freeze_target` while a dispute is open, else spendable, or expired once the grant has expired.
pub fn give_back(g: &Grant, back: i64, freeze_target: i64) -> Option<Adjusted> {
    let [tokens, remaining, frozen, expired, clawed_back, debt_incurred, debt_repaid] = widened(g)?;
    if back < 0 || freeze_target < 0 || remaining + frozen + expired + clawed_back + debt_repaid + back as i128 > tokens
    {
        return None;
    }
    let settled = (back as i128).min(debt_incurred);
    let rest = back as i128 - settled;
    let (pool, expired) = if g.live {
        (remaining + frozen + rest, expired)
    } else {
        (remaining + frozen, expired + rest)
    };
    if g.live {
        settle_pool(
            true,
            pool,
            expired,
            clawed_back + settled,
            debt_incurred - settled,
            settled,
            freeze_target,
        )
    } else {
        // An expired grant keeps its frozen tokens frozen until the dispute ends.
        let fit = |v: i128| i64::try_from(v).ok();
        Some(Adjusted {
            remaining: fit(remaining)?,
            frozen: fit(frozen)?,
            expired: fit(expired)?,
            clawed_back: fit(clawed_back + settled)?,
            debt_incurred: fit(debt_incurred - settled)?,
            debt_forgiven: fit(settled)?,
        })
    }
}

/// The fuzz target's property check, shared with `cargo test` (core/tests/fuzz_corpus.rs replays the
/// corpus through it). Reads a scenario from raw bytes: grants, each bought by one payment, then a
/// sequence of operations (consume, hold and release, refund up and down, disputes opened and
/// closed, expiry), re-adjusting every grant to its targets after each. Panics when an invariant
/// breaks.
pub fn check_scenario(data: &[u8]) {
    #[derive(Clone, Copy)]
    struct Model {
        g: Grant,
        captured: i64,
        taken: i64,
        open: i64,
        spent: i128,
        held: i64,
    }
    let mut r = Reader(data);
    let n = (r.u8() % 8) as usize;
    let mut m: Vec<Model> = (0..n)
        .map(|_| {
            let tokens = r.tokens().max(1);
            let g = Grant {
                tokens,
                remaining: tokens,
                frozen: 0,
                expired: 0,
                clawed_back: 0,
                debt_incurred: 0,
                debt_repaid: 0,
                live: true,
            };
            Model {
                g,
                captured: r.tokens().max(0),
                taken: 0,
                open: 0,
                spent: 0,
                held: 0,
            }
        })
        .collect();
    while let Some(op) = r.next_u8() {
        let i = if n == 0 { continue } else { r.u8() as usize % n };
        match op % 6 {
            0 => {
                // consume: burn across live grants in order
                let amount = r.tokens();
                let remaining: Vec<i64> = m.iter().map(|x| if x.g.live { x.g.remaining } else { 0 }).collect();
                let total: i128 = remaining.iter().map(|&x| x as i128).sum();
                match burn_allocation(&remaining, amount) {
                    None => assert!(amount <= 0 || total < amount as i128),
                    Some(take) => {
                        assert_eq!(take.iter().map(|&t| t as i128).sum::<i128>(), amount as i128);
                        for (j, &t) in take.iter().enumerate() {
                            assert!(t >= 0 && t <= remaining[j]);
                            if t > 0 {
                                assert!(
                                    take[..j].iter().zip(&remaining[..j]).all(|(tt, rr)| tt == rr),
                                    "burn order"
                                );
                            }
                            m[j].g.remaining -= t;
                            m[j].spent += t as i128;
                        }
                    }
                }
            }
            1 => {
                // hold part of one grant, or give a hold back (billing_internal.return_to_grants)
                let x = &mut m[i];
                if x.held > 0 {
                    let back = x.held;
                    let share = PaymentShare {
                        tokens: x.g.tokens,
                        weight: 1,
                        purchase_weight: 1,
                        captured: x.captured,
                        taken: x.taken,
                        open: x.open,
                    };
                    let freeze = adjustment_targets(x.g.tokens, &[share]).expect("valid shares").freeze;
                    let a = give_back(&x.g, back, freeze).expect("consistent grant");
                    assert_eq!(
                        a.debt_forgiven as i128 + (a.remaining + a.frozen + a.expired) as i128
                            - (x.g.remaining + x.g.frozen + x.g.expired) as i128,
                        back as i128
                    );
                    x.g = Grant {
                        remaining: a.remaining,
                        frozen: a.frozen,
                        expired: a.expired,
                        clawed_back: a.clawed_back,
                        debt_incurred: a.debt_incurred,
                        ..x.g
                    };
                    x.held = 0;
                    x.spent -= back as i128;
                } else if x.g.live {
                    let h = (r.tokens().rem_euclid(x.g.remaining.saturating_add(1))).min(x.g.remaining);
                    x.g.remaining -= h;
                    x.held = h;
                    x.spent += h as i128;
                }
            }
            2 => {
                // refunded total moves (refunds, and refunds that failed)
                let x = &mut m[i];
                x.taken = r.tokens().rem_euclid(x.captured.saturating_add(1).max(1));
            }
            3 => {
                // a dispute opens or is won (open moves) or is lost (open becomes taken)
                let x = &mut m[i];
                let amount = r.tokens().rem_euclid(x.captured.saturating_add(1).max(1));
                if r.u8() % 2 == 0 {
                    x.open = amount;
                } else {
                    x.taken = x.taken.saturating_add(x.open);
                    x.open = 0;
                }
            }
            4 => {
                // the grant expires: what is left unspent expires, frozen stays frozen
                let x = &mut m[i];
                if x.g.live {
                    x.g.live = false;
                    x.g.expired += x.g.remaining;
                    x.g.remaining = 0;
                }
            }
            _ => {}
        }
        for x in m.iter_mut() {
            let share = PaymentShare {
                tokens: x.g.tokens,
                weight: 1,
                purchase_weight: 1,
                captured: x.captured,
                taken: x.taken,
                open: x.open,
            };
            let t = adjustment_targets(x.g.tokens, &[share]).expect("valid shares");
            assert!(t.claw_back >= 0 && t.freeze >= 0 && t.claw_back as i128 + t.freeze as i128 <= x.g.tokens as i128);
            if x.captured > 0 {
                let exact = x.g.tokens as i128 * (x.taken as i128).min(x.captured as i128) / x.captured as i128;
                assert_eq!(
                    t.claw_back as i128, exact,
                    "claw-back is floor(tokens * taken / captured)"
                );
            }
            let before = x.g;
            let a = adjust(&x.g, t.claw_back, t.freeze).expect("consistent grant");
            assert!(a.debt_forgiven <= before.debt_incurred);
            x.g = Grant {
                remaining: a.remaining,
                frozen: a.frozen,
                expired: a.expired,
                clawed_back: a.clawed_back,
                debt_incurred: a.debt_incurred,
                ..x.g
            };
            assert_eq!(
                x.g.clawed_back as i128 + x.g.debt_incurred as i128,
                t.claw_back as i128,
                "target reached"
            );
            assert!(x.g.frozen <= t.freeze);
            assert!(x.g.live || x.g.remaining == 0, "an expired grant has nothing spendable");
            // adjusting again to the same targets changes nothing
            let again = adjust(&x.g, t.claw_back, t.freeze).expect("consistent grant");
            assert_eq!(
                (
                    again.remaining,
                    again.frozen,
                    again.expired,
                    again.clawed_back,
                    again.debt_incurred,
                    again.debt_forgiven
                ),
                (
                    x.g.remaining,
                    x.g.frozen,
                    x.g.expired,
                    x.g.clawed_back,
                    x.g.debt_incurred,
                    0
                )
            );
            // conservation: every token of the grant is in exactly one place
            let g = x.g;
            assert_eq!(
                g.tokens as i128,
                g.remaining as i128 + g.frozen as i128 + g.expired as i128 + g.clawed_back as i128 + x.spent,
                "grant {g:?}, spent {}",
                x.spent
            );
            assert!(
                g.debt_incurred as i128 <= x.spent,
                "debt only for spent tokens: {g:?}, spent {}",
                x.spent
            );
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
        assert_eq!(
            burn_allocation(&[i64::MAX, i64::MAX], i64::MAX),
            Some(vec![i64::MAX, 0])
        );
    }

    fn one(tokens: i64, captured: i64, taken: i64, open: i64) -> PaymentShare {
        PaymentShare {
            tokens,
            weight: 1,
            purchase_weight: 1,
            captured,
            taken,
            open,
        }
    }

    #[test]
    fn targets_are_shares_of_the_captured_amount_rounded_down() {
        assert_eq!(
            adjustment_targets(1000, &[one(1000, 999, 500, 0)]),
            Some(Targets {
                claw_back: 500,
                freeze: 0
            })
        );
        assert_eq!(
            adjustment_targets(1000, &[one(1000, 3, 1, 0)]),
            Some(Targets {
                claw_back: 333,
                freeze: 0
            })
        );
        // a partial dispute freezes (and, lost, claws back) its share, not the whole grant
        assert_eq!(
            adjustment_targets(1000, &[one(1000, 1000, 0, 250)]),
            Some(Targets {
                claw_back: 0,
                freeze: 250
            })
        );
        assert_eq!(
            adjustment_targets(1000, &[one(1000, 1000, 300, 250)]),
            Some(Targets {
                claw_back: 300,
                freeze: 250
            })
        );
        // refunded plus disputed never exceeds the payment
        assert_eq!(
            adjustment_targets(1000, &[one(1000, 1000, 900, 900)]),
            Some(Targets {
                claw_back: 900,
                freeze: 100
            })
        );
        assert_eq!(
            adjustment_targets(1000, &[one(1000, 1000, 5000, 0)]),
            Some(Targets {
                claw_back: 1000,
                freeze: 0
            })
        );
        // a $0 payment moves nothing
        assert_eq!(
            adjustment_targets(1000, &[one(1000, 0, 0, 0)]),
            Some(Targets::default())
        );
        // a purchase paid by two payments: each stands for its weight
        let half = |taken| PaymentShare {
            tokens: 1000,
            weight: 50,
            purchase_weight: 100,
            captured: 50,
            taken,
            open: 0,
        };
        assert_eq!(
            adjustment_targets(1000, &[half(50), half(0)]),
            Some(Targets {
                claw_back: 500,
                freeze: 0
            })
        );
        // two purchases (a period's subscription invoice and its upgrade)
        assert_eq!(
            adjustment_targets(100_000, &[one(30_000, 1000, 1000, 0), one(70_000, 1450, 0, 0)]),
            Some(Targets {
                claw_back: 30_000,
                freeze: 0
            })
        );
        assert_eq!(
            adjustment_targets(i64::MAX, &[one(i64::MAX, i64::MAX, i64::MAX - 1, 0)]),
            Some(Targets {
                claw_back: i64::MAX - 1,
                freeze: 0
            })
        );
        assert_eq!(adjustment_targets(10, &[one(10, 10, -1, 0)]), None);
        assert_eq!(
            adjustment_targets(
                10,
                &[PaymentShare {
                    weight: 2,
                    purchase_weight: 1,
                    ..one(10, 10, 0, 0)
                }]
            ),
            None
        );
    }

    fn grant(tokens: i64, remaining: i64, frozen: i64) -> Grant {
        Grant {
            tokens,
            remaining,
            frozen,
            expired: 0,
            clawed_back: 0,
            debt_incurred: 0,
            debt_repaid: 0,
            live: true,
        }
    }

    #[test]
    fn claw_back_takes_unspent_then_expired_then_records_debt() {
        let g = grant(100, 30, 20);
        let a = adjust(&g, 100, 0).expect("ok");
        assert_eq!((a.remaining, a.frozen, a.clawed_back, a.debt_incurred), (0, 0, 50, 50));
        let a = adjust(&g, 40, 0).expect("ok");
        assert_eq!((a.remaining, a.frozen, a.clawed_back, a.debt_incurred), (10, 0, 40, 0));
        // expired tokens are taken back before anything becomes debt
        let expired = Grant {
            remaining: 0,
            frozen: 0,
            expired: 60,
            live: false,
            ..g
        };
        let a = adjust(&expired, 100, 0).expect("ok");
        assert_eq!((a.expired, a.clawed_back, a.debt_incurred), (0, 60, 40));
    }

    #[test]
    fn a_lower_target_forgives_debt_then_returns_tokens() {
        let g = Grant {
            remaining: 0,
            clawed_back: 20,
            debt_incurred: 30,
            ..grant(100, 0, 0)
        };
        let a = adjust(&g, 0, 0).expect("ok");
        assert_eq!(
            (a.remaining, a.clawed_back, a.debt_incurred, a.debt_forgiven),
            (20, 0, 0, 30)
        );
        let a = adjust(&g, 40, 0).expect("ok");
        assert_eq!(
            (a.remaining, a.clawed_back, a.debt_incurred, a.debt_forgiven),
            (0, 20, 20, 10)
        );
        // returned to an expired grant, tokens expire
        let a = adjust(&Grant { live: false, ..g }, 0, 0).expect("ok");
        assert_eq!((a.remaining, a.expired, a.debt_forgiven), (0, 20, 30));
    }

    #[test]
    fn freezing_keeps_what_is_unspent_up_to_the_target() {
        let a = adjust(&grant(100, 70, 0), 0, 50).expect("ok");
        assert_eq!((a.remaining, a.frozen), (20, 50));
        let a = adjust(&grant(100, 30, 0), 0, 50).expect("ok");
        assert_eq!((a.remaining, a.frozen), (0, 30));
        // released: frozen tokens become spendable again, or expire on an expired grant
        let a = adjust(&grant(100, 20, 50), 0, 0).expect("ok");
        assert_eq!((a.remaining, a.frozen), (70, 0));
        let a = adjust(
            &Grant {
                live: false,
                expired: 30,
                ..grant(100, 0, 50)
            },
            0,
            0,
        )
        .expect("ok");
        assert_eq!((a.remaining, a.frozen, a.expired), (0, 0, 80));
    }

    #[test]
    fn tokens_given_back_settle_debt_the_claw_back_recorded_for_them() {
        // 600 held when a full refund came: 400 clawed back, 600 recorded as debt
        let g = Grant {
            remaining: 0,
            clawed_back: 400,
            debt_incurred: 600,
            ..grant(1000, 0, 0)
        };
        for live in [true, false] {
            let a = give_back(&Grant { live, ..g }, 600, 0).expect("ok");
            assert_eq!(
                (a.remaining, a.expired, a.clawed_back, a.debt_incurred, a.debt_forgiven),
                (0, 0, 1000, 0, 600)
            );
        }
        // without debt: spendable again, frozen first while disputed, expired after expiry
        let a = give_back(&grant(100, 20, 30), 50, 60).expect("ok");
        assert_eq!((a.remaining, a.frozen), (40, 60));
        let a = give_back(
            &Grant {
                live: false,
                ..grant(100, 0, 30)
            },
            50,
            60,
        )
        .expect("ok");
        assert_eq!((a.remaining, a.frozen, a.expired), (0, 30, 50));
        // more than the grant could have held is refused
        assert_eq!(give_back(&grant(100, 80, 0), 30, 0), None);
    }

    #[test]
    fn inconsistent_counters_are_refused() {
        assert_eq!(adjust(&grant(100, -1, 0), 0, 0), None);
        assert_eq!(adjust(&grant(100, 80, 30), 0, 0), None);
        assert_eq!(
            adjust(
                &Grant {
                    clawed_back: 60,
                    debt_incurred: 50,
                    ..grant(100, 0, 0)
                },
                0,
                0
            ),
            None
        );
        assert_eq!(adjust(&grant(100, 10, 0), -1, 0), None);
        let big = Grant {
            tokens: i64::MAX,
            remaining: i64::MAX,
            ..grant(0, 0, 0)
        };
        assert_eq!(adjust(&big, i64::MAX, i64::MAX).map(|a| a.clawed_back), Some(i64::MAX));
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
        for len in 0..4000usize {
            let bytes: Vec<u8> = (0..(len % 131))
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
