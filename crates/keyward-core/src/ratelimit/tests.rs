use proptest::prelude::*;

use super::*;

const S: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;

fn limit(limit: u64, period_s: u64, burst: Option<u64>) -> RateLimit {
    RateLimit {
        name: "l".into(),
        limit,
        period_s,
        burst,
        rule: None,
    }
}

fn run(l: &RateLimit, state: &mut LimitState, now: i64) -> LimitOutcome {
    let (outcome, next) = check(l, *state, now, 1);
    if outcome.admitted {
        *state = next;
    }
    outcome
}

#[test]
fn gcra_burst_then_steady_state() {
    let l = limit(10, 1, None);
    let mut state = LimitState::Fresh;
    let t0 = 1_000 * S;
    // The whole burst at once…
    for i in 0..10 {
        let o = run(&l, &mut state, t0);
        assert!(o.admitted, "request {i}");
        assert_eq!(o.remaining, 9 - i);
    }
    let refused = run(&l, &mut state, t0);
    assert!(!refused.admitted);
    assert_eq!(refused.retry_after_ns, 100 * MS);
    // …then one every 100 ms, exactly.
    assert!(!run(&l, &mut state, t0 + 99 * MS).admitted);
    assert!(run(&l, &mut state, t0 + 100 * MS).admitted);
    assert!(!run(&l, &mut state, t0 + 150 * MS).admitted);
    assert!(run(&l, &mut state, t0 + 200 * MS).admitted);
    // After a full period of quiet, the burst is back.
    let later = t0 + 2 * S;
    for _ in 0..10 {
        assert!(run(&l, &mut state, later).admitted);
    }
    assert!(!run(&l, &mut state, later).admitted);
}

#[test]
fn gcra_burst_smaller_than_limit_spreads_requests() {
    let l = limit(100, 1, Some(5));
    let mut state = LimitState::Fresh;
    let t0 = 10 * S;
    let admitted = (0..20).filter(|_| run(&l, &mut state, t0).admitted).count();
    assert_eq!(admitted, 5);
    assert!(run(&l, &mut state, t0 + 10 * MS).admitted);
}

#[test]
fn sliding_window_counts_the_trailing_period() {
    let l = limit(100, 3600, None);
    let mut state = LimitState::Fresh;
    let hour = 3600 * S;
    let t0 = 500_000 * hour; // a window boundary
    for _ in 0..100 {
        assert!(run(&l, &mut state, t0 + 10 * S).admitted);
    }
    assert!(!run(&l, &mut state, t0 + 20 * S).admitted);
    // Half way through the next window, half of the previous one still counts: 50 free.
    let mid = t0 + hour + hour / 2;
    let admitted = (0..100)
        .filter(|_| run(&l, &mut state, mid).admitted)
        .count();
    assert_eq!(admitted, 50);
    // Two windows later, the slate is clean.
    let o = run(&l, &mut state, t0 + 3 * hour);
    assert!(o.admitted);
    assert_eq!(o.remaining, 99);
}

#[test]
fn refill_at_period_boundaries() {
    let l = limit(3, 7200, None);
    let mut state = LimitState::Fresh;
    let period = 7200 * S;
    let t0 = 1_000 * period;
    for _ in 0..3 {
        assert!(run(&l, &mut state, t0).admitted);
    }
    let refused = run(&l, &mut state, t0 + period - 1);
    assert!(!refused.admitted);
    // Everything counted has slid out one full period after this window ends.
    assert_eq!(refused.reset_ns, period + 1);
    // At the boundary the previous window still weighs fully; it slides out over the period.
    assert!(!run(&l, &mut state, t0 + period).admitted);
    assert!(run(&l, &mut state, t0 + period + period / 3 + 1).admitted);
}

#[test]
fn a_rejection_consumes_nothing_from_any_limit() {
    let limits = [limit(100, 1, None), limit(3, 3600, None)];
    let mut states = [LimitState::Fresh; 2];
    let t0 = 42 * 3600 * S;
    for _ in 0..3 {
        assert!(
            check_all(&limits, &mut states, t0, 1)
                .iter()
                .all(|o| o.admitted)
        );
    }
    let before = states;
    let outcomes = check_all(&limits, &mut states, t0, 1);
    assert!(outcomes[0].admitted && !outcomes[1].admitted);
    assert_eq!(
        states, before,
        "the burst limit was charged for a rejected request"
    );
    assert_eq!(outcomes[0].remaining, 97);
    // A cost the second limit cannot take leaves the first untouched too.
    let mut fresh = [LimitState::Fresh; 2];
    let outcomes = check_all(&limits, &mut fresh, t0, 5);
    assert!(!outcomes[1].admitted);
    assert_eq!(fresh, [LimitState::Fresh; 2]);
}

#[test]
fn costs_count_in_full() {
    let l = limit(10, 1, None);
    let mut state = LimitState::Fresh;
    let (o, next) = check(&l, state, 5 * S, 4);
    assert!(o.admitted);
    assert_eq!(o.remaining, 6);
    state = next;
    let (o, _) = check(&l, state, 5 * S, 7);
    assert!(!o.admitted);
}

#[test]
fn validation_names_the_field() {
    let cases = [
        (
            RateLimit {
                name: "".into(),
                ..limit(1, 1, None)
            },
            "name",
        ),
        (
            RateLimit {
                name: "Burst".into(),
                ..limit(1, 1, None)
            },
            "name",
        ),
        (limit(0, 1, None), "limit"),
        (limit(1, 0, None), "period_s"),
        (limit(1, MAX_PERIOD_S + 1, None), "period_s"),
        (limit(1, 1, Some(0)), "burst"),
        (limit(1, 3600, Some(5)), "burst"),
        (limit(MAX_LIMIT + 1, 1, None), "limit"),
    ];
    for (l, field) in cases {
        assert_eq!(l.validate().unwrap_err().field, field, "{l:?}");
    }
    assert!(limit(100, 1, Some(10)).validate().is_ok());
}

proptest! {
    /// Over any run of requests, GCRA never admits more than burst + elapsed / interval.
    #[test]
    fn gcra_never_exceeds_its_rate(
        lim in 1u64..200,
        period in 1u64..=60,
        gaps in proptest::collection::vec(0i64..50_000_000, 1..400),
    ) {
        let l = limit(lim, period, None);
        let mut state = LimitState::Fresh;
        let start = 7 * S;
        let mut now = start;
        let mut admitted = 0u64;
        for gap in gaps {
            now += gap;
            if run(&l, &mut state, now).admitted {
                admitted += 1;
            }
        }
        let interval = (i64::try_from(period).unwrap() * S / i64::try_from(lim).unwrap()).max(1);
        let bound = lim + u64::try_from((now - start) / interval).unwrap();
        prop_assert!(admitted <= bound, "{admitted} > {bound}");
    }

    /// The sliding window never lets a trailing period hold more than the limit, counting the
    /// previous window as evenly spread.
    #[test]
    fn sliding_window_estimate_stays_within_limit(
        lim in 1u64..50,
        gaps in proptest::collection::vec(0i64..400 * S, 1..300),
    ) {
        let l = limit(lim, 3600, None);
        let mut state = LimitState::Fresh;
        let mut now = 1_000 * 3600 * S;
        for gap in gaps {
            now += gap;
            run(&l, &mut state, now);
            let (peek, _) = check(&l, state, now, 0);
            prop_assert!(peek.remaining <= lim);
        }
    }

    #[test]
    fn never_panics(lim in 1u64..=MAX_LIMIT, period in 1u64..=MAX_PERIOD_S, now in any::<i64>(), cost in any::<u64>(), tat in any::<i64>()) {
        let l = limit(lim, period, None);
        let _ = check(&l, LimitState::Gcra { tat }, now, cost);
        let _ = check(&l, LimitState::Window { start: tat, previous: cost, current: lim }, now, cost);
    }
}

#[test]
fn extreme_inputs_do_not_panic() {
    let extremes = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
    for l in [
        limit(1, 1, None),
        limit(MAX_LIMIT, 60, Some(MAX_LIMIT)),
        limit(1, MAX_PERIOD_S, None),
        limit(MAX_LIMIT, MAX_PERIOD_S, None),
    ] {
        for &now in &extremes {
            for &t in &extremes {
                for cost in [0, 1, u64::MAX] {
                    let _ = check(&l, LimitState::Gcra { tat: t }, now, cost);
                    let _ = check(
                        &l,
                        LimitState::Window {
                            start: t,
                            previous: u64::MAX,
                            current: u64::MAX,
                        },
                        now,
                        cost,
                    );
                    let _ = check(&l, LimitState::Fresh, now, cost);
                }
            }
        }
    }
}
