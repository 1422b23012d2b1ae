//! Rate-limit counters of one account, kept in its balance row (`balances.rate_state`) so that the
//! debit's UPDATE counts a call against its plan's limits without a second statement or row.
//!
//! Windows are fixed and aligned to the Unix epoch: a window of W seconds starts at every multiple
//! of W. The state is a flat bigint array of [`FIELDS`] elements per counter:
//!
//! ```text
//! limit_id, active, metric, window_seconds, max_amount, window_start, used
//! ```
//!
//! `active` is 1 for a limit of the account's current plan; 0 for one of a plan the account left,
//! kept until its window ends so that moving back to that plan within the window keeps the count.
//! `metric` is 0 for requests (calls) and 1 for tokens (credits); `window_start` is in epoch
//! seconds; `used` is what the window counted. The definitions (metric, window, maximum) are copies
//! of `billing.rate_limits`, refreshed by [`rebuild`] whenever the plan or its limits change.

/// Elements per counter in the flat state array.
pub const FIELDS: usize = 7;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Requests,
    Tokens,
}

/// A limit as defined in `billing.rate_limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub id: i64,
    pub metric: Metric,
    pub window_seconds: i64,
    pub max_amount: i64,
}

/// One limit's count in its current (or last) window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    pub limit: Limit,
    pub active: bool,
    pub window_start: i64,
    pub used: i64,
}

impl Counter {
    /// What a call of `tokens` credits (one of `requests` calls) adds to this counter.
    pub fn amount(&self, tokens: i64, requests: i64) -> i64 {
        match self.limit.metric {
            Metric::Requests => requests,
            Metric::Tokens => tokens,
        }
    }

    /// The end of the counter's window, in epoch seconds.
    pub fn window_end(&self) -> i64 {
        self.window_start.saturating_add(self.limit.window_seconds)
    }

    /// The window current at `now` and what the counter has used of it (0 when its count is of
    /// an earlier window).
    pub fn current_use(&self, now: i64) -> (i64, i64) {
        let start = window_start(now, self.limit.window_seconds);
        (start, if self.window_start == start { self.used } else { 0 })
    }
}

/// The start of the window of `window_seconds` that contains `now` (epoch seconds).
pub fn window_start(now: i64, window_seconds: i64) -> i64 {
    now.saturating_sub(now.rem_euclid(window_seconds))
}

fn metric_code(metric: Metric) -> i64 {
    match metric {
        Metric::Requests => 0,
        Metric::Tokens => 1,
    }
}

fn metric_of(code: i64) -> Option<Metric> {
    match code {
        0 => Some(Metric::Requests),
        1 => Some(Metric::Tokens),
        _ => None,
    }
}

fn limit_of(id: i64, metric: i64, window_seconds: i64, max_amount: i64) -> Option<Limit> {
    (window_seconds > 0 && max_amount >= 0).then_some(())?;
    Some(Limit {
        id,
        metric: metric_of(metric)?,
        window_seconds,
        max_amount,
    })
}

/// Reads a state array; `None` when it is not one this module wrote (length, codes, ranges, a
/// limit twice).
pub fn decode(state: &[i64]) -> Option<Vec<Counter>> {
    if !state.len().is_multiple_of(FIELDS) {
        return None;
    }
    let ids: Vec<i64> = state.chunks_exact(FIELDS).map(|c| c[0]).collect();
    if ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id)) {
        return None;
    }
    state
        .chunks_exact(FIELDS)
        .map(|c| {
            let active = match c[1] {
                0 => false,
                1 => true,
                _ => return None,
            };
            (c[6] >= 0).then_some(())?;
            Some(Counter {
                limit: limit_of(c[0], c[2], c[3], c[4])?,
                active,
                window_start: c[5],
                used: c[6],
            })
        })
        .collect()
}

/// Writes counters as a state array.
pub fn encode(counters: &[Counter]) -> Vec<i64> {
    counters
        .iter()
        .flat_map(|c| {
            [
                c.limit.id,
                i64::from(c.active),
                metric_code(c.limit.metric),
                c.limit.window_seconds,
                c.limit.max_amount,
                c.window_start,
                c.used,
            ]
        })
        .collect()
}

/// Reads limits given as a flat array of `id, metric, window_seconds, max_amount` per limit.
pub fn decode_limits(limits: &[i64]) -> Option<Vec<Limit>> {
    if !limits.len().is_multiple_of(4) {
        return None;
    }
    limits
        .chunks_exact(4)
        .map(|l| limit_of(l[0], l[1], l[2], l[3]))
        .collect()
}

/// Counts a call of `tokens` credits and `requests` calls at `now` against every active counter:
/// a counter whose window has ended starts the current one from 0. Saturates instead of
/// overflowing (a count that large is over any limit, and the call is refused).
pub fn count(counters: &mut [Counter], tokens: i64, requests: i64, now: i64) {
    for c in counters.iter_mut().filter(|c| c.active) {
        let amount = c.amount(tokens, requests);
        if amount <= 0 {
            continue;
        }
        let (start, used) = c.current_use(now);
        c.window_start = start;
        c.used = used.saturating_add(amount);
    }
}

/// The counter that refuses a call just counted (of `tokens` credits and `requests` calls): among
/// the active counters the call added to and that are now over their maximum, the one whose window
/// ends last (a retry must wait for it), then the lowest limit id. `None`: the call is within
/// every limit.
pub fn refusal(counters: &[Counter], tokens: i64, requests: i64) -> Option<&Counter> {
    counters
        .iter()
        .filter(|c| c.active && c.amount(tokens, requests) > 0 && c.used > c.limit.max_amount)
        .max_by_key(|c| (c.window_end(), std::cmp::Reverse(c.limit.id)))
}

/// The windows a call was counted in, as (limit id, window start) pairs: what a reservation keeps
/// to give its count back later.
pub fn windows(counters: &[Counter], tokens: i64, requests: i64) -> Vec<(i64, i64)> {
    counters
        .iter()
        .filter(|c| c.active && c.amount(tokens, requests) > 0)
        .map(|c| (c.limit.id, c.window_start))
        .collect()
}

/// Gives back `tokens` credits and `requests` calls counted in `windows` (pairs from [`windows`]),
/// to each counter still in that window (a window that has ended counts nothing any more), never
/// below 0. Counters of limits the account left keep the give-back too (`active` or not).
pub fn give_back(counters: &mut [Counter], windows: &[(i64, i64)], tokens: i64, requests: i64) {
    for c in counters.iter_mut() {
        if windows
            .iter()
            .any(|&(id, start)| id == c.limit.id && start == c.window_start)
        {
            let amount = c.amount(tokens, requests).max(0);
            c.used = c.used.saturating_sub(amount).max(0);
        }
    }
}

/// The counters of an account whose plan now has `limits`: one active counter per limit, keeping
/// the count of a counter of the same limit id (active or kept); the other counters are kept
/// inactive while their window lasts at `now`, and dropped after.
pub fn rebuild(old: &[Counter], limits: &[Limit], now: i64) -> Vec<Counter> {
    let mut counters: Vec<Counter> = limits
        .iter()
        .map(|&limit| match old.iter().find(|c| c.limit.id == limit.id) {
            Some(c) => Counter {
                limit,
                active: true,
                window_start: c.window_start,
                used: c.used,
            },
            None => Counter {
                limit,
                active: true,
                window_start: window_start(now, limit.window_seconds),
                used: 0,
            },
        })
        .collect();
    counters.extend(
        old.iter()
            .filter(|c| !limits.iter().any(|l| l.id == c.limit.id) && c.used > 0 && c.window_end() > now)
            .map(|c| Counter { active: false, ..*c }),
    );
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    fn limit(id: i64, metric: Metric, window_seconds: i64, max_amount: i64) -> Limit {
        Limit {
            id,
            metric,
            window_seconds,
            max_amount,
        }
    }

    fn fresh(limits: &[Limit], now: i64) -> Vec<Counter> {
        rebuild(&[], limits, now)
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(window_start(7199, HOUR), 3600);
        assert_eq!(window_start(7200, HOUR), 7200);
        assert_eq!(window_start(-1, HOUR), -3600);
        assert_eq!(window_start(59, 60), 0);
    }

    #[test]
    fn a_call_counts_its_metric_and_the_limit_refuses_only_past_the_maximum() {
        let mut c = fresh(
            &[limit(1, Metric::Tokens, HOUR, 100), limit(2, Metric::Requests, 60, 3)],
            10,
        );
        for _ in 0..3 {
            count(&mut c, 25, 1, 10);
            assert_eq!(refusal(&c, 25, 1), None);
        }
        assert_eq!((c[0].used, c[1].used), (75, 3));
        count(&mut c, 25, 1, 10); // the fourth request in the minute: requests over, tokens exactly 100
        let r = refusal(&c, 25, 1).expect("refused");
        assert_eq!((r.limit.id, r.used), (2, 4));
    }

    #[test]
    fn exactly_the_maximum_is_accepted_and_one_more_refused() {
        let mut c = fresh(&[limit(1, Metric::Tokens, HOUR, 100)], 0);
        for _ in 0..20 {
            count(&mut c, 5, 1, 0);
            assert_eq!(refusal(&c, 5, 1), None);
        }
        count(&mut c, 5, 1, 0);
        assert!(refusal(&c, 5, 1).is_some());
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let mut c = fresh(&[limit(1, Metric::Tokens, HOUR, 100)], 0);
        count(&mut c, 100, 1, HOUR - 1);
        assert_eq!(c[0].current_use(HOUR), (HOUR, 0), "the new window has used nothing yet");
        count(&mut c, 30, 1, HOUR);
        assert_eq!((c[0].window_start, c[0].used), (HOUR, 30));
        assert_eq!(c[0].current_use(HOUR + 5), (HOUR, 30));
    }

    #[test]
    fn the_refusal_names_the_limit_that_frees_up_last() {
        let mut c = fresh(
            &[limit(1, Metric::Requests, 60, 1), limit(2, Metric::Requests, HOUR, 1)],
            0,
        );
        count(&mut c, 1, 1, 5);
        count(&mut c, 1, 1, 5);
        assert_eq!(refusal(&c, 1, 1).map(|r| r.limit.id), Some(2));
    }

    #[test]
    fn a_call_that_adds_nothing_to_a_metric_is_not_refused_by_it() {
        let mut c = fresh(&[limit(1, Metric::Requests, HOUR, 0)], 0);
        count(&mut c, 50, 0, 1);
        assert_eq!(refusal(&c, 50, 0), None);
        assert_eq!(c[0].used, 0);
    }

    #[test]
    fn give_back_only_in_the_window_counted_and_never_below_zero() {
        let mut c = fresh(
            &[
                limit(1, Metric::Tokens, HOUR, 100),
                limit(2, Metric::Requests, HOUR, 10),
            ],
            0,
        );
        count(&mut c, 40, 1, 100);
        let w = windows(&c, 40, 1);
        assert_eq!(w, vec![(1, 0), (2, 0)]);
        give_back(&mut c, &w, 30, 0); // a commit of 10 of 40: 30 tokens back, the request stays
        assert_eq!((c[0].used, c[1].used), (10, 1));
        give_back(&mut c, &w, 30, 1);
        assert_eq!((c[0].used, c[1].used), (0, 0));
        count(&mut c, 40, 1, HOUR + 1); // a new window: an old reservation gives nothing back to it
        give_back(&mut c, &w, 40, 1);
        assert_eq!((c[0].used, c[1].used), (40, 1));
    }

    #[test]
    fn rebuild_keeps_counts_across_plan_moves_within_the_window() {
        let pro = [limit(1, Metric::Tokens, HOUR, 100)];
        let mut c = fresh(&pro, 0);
        count(&mut c, 60, 1, 10);
        let free = rebuild(&c, &[], 20); // a plan without limits: the count is kept, inactive
        assert_eq!(free.len(), 1);
        assert!(!free[0].active);
        let mut inactive = free.clone();
        count(&mut inactive, 1000, 1, 30);
        assert_eq!(inactive[0].used, 60, "an inactive counter counts nothing");
        let back = rebuild(&free, &pro, 30);
        assert_eq!((back[0].active, back[0].used), (true, 60));
        assert!(rebuild(&free, &[], HOUR).is_empty(), "dropped once its window ended");
    }

    #[test]
    fn rebuild_takes_new_definitions_and_keeps_the_count() {
        let mut c = fresh(&[limit(1, Metric::Tokens, HOUR, 100)], 0);
        count(&mut c, 60, 1, 10);
        let raised = rebuild(&c, &[limit(1, Metric::Tokens, HOUR, 50)], 20);
        assert_eq!((raised[0].limit.max_amount, raised[0].used), (50, 60));
        let mut raised = raised;
        count(&mut raised, 1, 1, 30);
        assert!(refusal(&raised, 1, 1).is_some(), "a lowered maximum applies at once");
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let mut c = fresh(&[limit(1, Metric::Tokens, HOUR, i64::MAX)], 0);
        count(&mut c, i64::MAX, 1, 0);
        count(&mut c, i64::MAX, 1, 0);
        assert_eq!(c[0].used, i64::MAX);
    }

    #[test]
    fn encode_and_decode_round_trip_and_reject_what_they_did_not_write() {
        let mut c = fresh(
            &[limit(7, Metric::Tokens, HOUR, 100), limit(9, Metric::Requests, 60, 5)],
            0,
        );
        count(&mut c, 3, 1, 5);
        c.push(Counter {
            active: false,
            limit: Limit { id: 8, ..c[0].limit },
            ..c[0]
        });
        assert_eq!(decode(&encode(&c)), Some(c.clone()));
        let state = encode(&c);
        assert_eq!(decode(&state[..FIELDS + 1]), None);
        assert_eq!(
            decode(&[&state[..FIELDS], &state[..FIELDS]].concat()),
            None,
            "a limit twice"
        );
        for (field, bad) in [(1, 2), (2, 5), (3, 0), (4, -1), (6, -1)] {
            let mut s = state.clone();
            s[field] = bad;
            assert_eq!(decode(&s), None, "field {field} = {bad}");
        }
        assert_eq!(decode_limits(&[1, 1, 60, 5, 2]), None);
        assert_eq!(
            decode_limits(&[1, 1, 60, 5]),
            Some(vec![limit(1, Metric::Tokens, 60, 5)])
        );
    }
}
