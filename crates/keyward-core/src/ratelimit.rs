//! Rate-limit algorithms as pure functions over a small state.
//!
//! Two algorithms, chosen per limit by its period:
//!
//! * **GCRA** (generic cell rate algorithm, a token bucket kept as one timestamp) for periods up
//!   to a minute. It spreads admissions evenly at `limit / period` and allows a burst of
//!   `burst` (default: `limit`) at once. Its state is one number, it is exact, and it answers
//!   "how many now, and when the next" precisely, which short windows need: 100/s should not
//!   admit 100 in the first millisecond and then nothing for a second… unless the burst says so.
//! * **Sliding window** (the previous fixed window's count weighted by how much of it still
//!   overlaps, plus the current window's count) for longer periods. A token bucket with an hour's
//!   period would refill only every `3600 / limit` seconds and let a client who waited an hour
//!   spend the whole budget at once; the sliding window instead bounds what any trailing
//!   `period` holds, with two counters, and never resets abruptly at a boundary. It is an
//!   estimate (it assumes the previous window's requests were evenly spread), which is the
//!   accepted trade for O(1) state.
//!
//! [`check_all`] admits a request only if every limit admits it, and only then changes any
//! state: a rejected request consumes nothing from any limit.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::PathRule;

/// Limits with a period up to this use GCRA; longer ones a sliding window.
pub const GCRA_MAX_PERIOD_S: u64 = 60;
/// The longest period a limit may have: a year.
pub const MAX_PERIOD_S: u64 = 365 * 24 * 3600;
/// The largest `limit` (and burst): a billion.
pub const MAX_LIMIT: u64 = 1_000_000_000;

const NS_PER_S: i64 = 1_000_000_000;

/// A named limit: at most `limit` requests per `period_s`, optionally only for requests that
/// match `rule` (a method and path pattern).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    pub period_s: u64,
    /// For GCRA limits: how many may come at once (default `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// If set, the limit counts only requests matching this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<PathRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidLimit {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidLimit {
    InvalidLimit {
        field,
        message: message.into(),
    }
}

impl RateLimit {
    /// Checks the values a client gave.
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        let name_ok = (1..=32).contains(&self.name.len())
            && self.name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !name_ok {
            return Err(invalid("name", "1-32 characters of [a-z0-9_.-]"));
        }
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return Err(invalid(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if !(1..=MAX_PERIOD_S).contains(&self.period_s) {
            return Err(invalid(
                "period_s",
                format!("must be between 1 and {MAX_PERIOD_S} (a year)"),
            ));
        }
        if let Some(burst) = self.burst {
            if !(1..=MAX_LIMIT).contains(&burst) {
                return Err(invalid(
                    "burst",
                    format!("must be between 1 and {MAX_LIMIT}"),
                ));
            }
            if self.algorithm() == Algorithm::SlidingWindow {
                return Err(invalid(
                    "burst",
                    "only limits with a period up to 60 s take a burst",
                ));
            }
        }
        Ok(())
    }

    pub fn algorithm(&self) -> Algorithm {
        if self.period_s <= GCRA_MAX_PERIOD_S {
            Algorithm::Gcra
        } else {
            Algorithm::SlidingWindow
        }
    }

    /// Whether this limit counts a request with `method` and `path`.
    pub fn applies(&self, method: Option<&str>, path: Option<&str>) -> bool {
        match (&self.rule, method, path) {
            (None, _, _) => true,
            (Some(rule), Some(m), Some(p)) => rule.matches(m, p),
            _ => false,
        }
    }

    fn period_ns(&self) -> i64 {
        i64::try_from(self.period_s)
            .unwrap_or(i64::MAX / NS_PER_S)
            .saturating_mul(NS_PER_S)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Gcra,
    SlidingWindow,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingWindow => "sliding_window",
        })
    }
}

/// The state of one limit for one key: 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitState {
    /// Nothing counted yet.
    #[default]
    Fresh,
    /// GCRA: the theoretical arrival time of the next request, in ns since the epoch.
    Gcra { tat: i64 },
    /// Sliding window: the current fixed window's start, and the counts of it and the one before.
    Window {
        start: i64,
        previous: u64,
        current: u64,
    },
}

/// What one limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOutcome {
    pub admitted: bool,
    /// Requests still admissible right after this one (0 when rejected).
    pub remaining: u64,
    /// Nanoseconds until the limit is back at its full allowance.
    pub reset_ns: i64,
    /// When rejected: nanoseconds until a request of the same cost would be admitted.
    pub retry_after_ns: i64,
}

/// Judges one request of `cost` against one limit; returns the outcome and the state to keep
/// if the request is admitted.
pub fn check(
    limit: &RateLimit,
    state: LimitState,
    now: i64,
    cost: u64,
) -> (LimitOutcome, LimitState) {
    match limit.algorithm() {
        Algorithm::Gcra => {
            // i128 throughout: no input, however extreme, can overflow.
            let now_w = i128::from(now);
            let period = i128::from(limit.period_ns());
            // Emission interval: the time one request "costs".
            let t = (period / i128::from(limit.limit)).max(1);
            let burst = i128::from(limit.burst.unwrap_or(limit.limit));
            let window = t * burst; // how far ahead of now the bucket may run
            let tat = match state {
                LimitState::Gcra { tat } => i128::from(tat).max(now_w),
                _ => now_w,
            };
            let new_tat = tat + t * i128::from(cost);
            let admitted = new_tat - now_w <= window;
            let kept_tat = if admitted { new_tat } else { tat };
            let narrow =
                |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
            let remaining = if admitted {
                u64::try_from((now_w + window - kept_tat).max(0) / t).unwrap_or(u64::MAX)
            } else {
                0
            };
            let outcome = LimitOutcome {
                admitted,
                remaining,
                reset_ns: narrow((kept_tat - now_w).max(0)),
                retry_after_ns: if admitted {
                    0
                } else {
                    narrow(new_tat - window - now_w)
                },
            };
            (
                outcome,
                LimitState::Gcra {
                    tat: narrow(kept_tat),
                },
            )
        }
        Algorithm::SlidingWindow => {
            // i128 throughout, as for GCRA: no input can overflow.
            let narrow =
                |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
            let period = i128::from(limit.period_ns());
            let now_w = i128::from(now);
            let window_start = now_w - now_w.rem_euclid(period);
            let (previous, current) = match state {
                LimitState::Window {
                    start,
                    previous,
                    current,
                } if i128::from(start) == window_start => (previous, current),
                LimitState::Window { start, current, .. }
                    if i128::from(start) + period == window_start =>
                {
                    (current, 0)
                }
                _ => (0, 0),
            };
            let elapsed = now_w - window_start;
            // The part of the previous window that still lies within the trailing period.
            let weight = |at: i128| i128::from(previous) * (period - at) / period;
            let estimate = weight(elapsed) + i128::from(current);
            let limit_n = i128::from(limit.limit);
            let admitted = estimate + i128::from(cost) <= limit_n;
            let new_current = if admitted {
                current.saturating_add(cost)
            } else {
                current
            };
            let used = weight(elapsed) + i128::from(new_current);
            let to_next = period - elapsed;
            let retry_after_ns = if admitted {
                0
            } else {
                // Wait until enough of the previous window has slid out, or for the next window.
                let room = limit_n - i128::from(current) - i128::from(cost);
                if previous > 0 && room >= 0 {
                    let needed_elapsed = period - room * period / i128::from(previous);
                    (needed_elapsed - elapsed).clamp(1, to_next)
                } else {
                    to_next
                }
            };
            // Back at full allowance once everything counted has slid out: what the current
            // window holds leaves at the end of the next window.
            let reset_ns = if new_current > 0 {
                period + to_next
            } else if previous > 0 {
                to_next
            } else {
                0
            };
            let outcome = LimitOutcome {
                admitted,
                remaining: u64::try_from((limit_n - used).max(0)).unwrap_or(0),
                reset_ns: narrow(reset_ns),
                retry_after_ns: narrow(retry_after_ns),
            };
            (
                outcome,
                LimitState::Window {
                    start: narrow(window_start),
                    previous,
                    current: new_current,
                },
            )
        }
    }
}

/// Judges a request against every limit. If all admit it, every state advances; if any
/// rejects it, no state changes. Returns each limit's outcome, in order.
pub fn check_all(
    limits: &[RateLimit],
    states: &mut [LimitState],
    now: i64,
    cost: u64,
) -> Vec<LimitOutcome> {
    let mut outcomes = Vec::with_capacity(limits.len());
    let mut next = Vec::with_capacity(limits.len());
    for (limit, state) in limits.iter().zip(states.iter()) {
        let (outcome, new_state) = check(limit, *state, now, cost);
        outcomes.push(outcome);
        next.push(new_state);
    }
    if outcomes.iter().all(|o| o.admitted) {
        for (state, new_state) in states.iter_mut().zip(next) {
            *state = new_state;
        }
    } else {
        // Nothing was consumed: report what each limit has left, unchanged.
        for (outcome, (limit, state)) in outcomes.iter_mut().zip(limits.iter().zip(states.iter())) {
            if outcome.admitted {
                let (peek, _) = check(limit, *state, now, 0);
                outcome.remaining = peek.remaining;
                outcome.reset_ns = peek.reset_ns;
            }
        }
    }
    outcomes
}

#[cfg(test)]
mod tests;
