//! The limiter: where rate-limit state lives.
//!
//! [`Limiter`] is the seam between verification and the state. [`LocalLimiter`] keeps it in
//! this process, exact on one node: each key's state sits in one of 64 mutex-guarded shards, so
//! all of a key's limits are judged and updated together under one lock (a request admitted by
//! one limit and refused by another consumes nothing). A cluster-wide implementation (Redis,
//! with the same algorithms in a script) can be added behind the same trait without touching
//! callers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use async_trait::async_trait;
use keyward_core::KeyId;
use keyward_core::ratelimit::{LimitOutcome, LimitState, RateLimit, check};

const SHARDS: usize = 64;

/// One request to judge: the key's limits, which of them apply to this request, and its cost.
#[derive(Debug, Clone, Copy)]
pub struct LimitRequest<'a> {
    pub key: KeyId,
    /// All of the key's limits, in a stable order: state is kept per position.
    pub limits: &'a [RateLimit],
    /// For each limit, whether it counts this request (endpoint limits may not).
    pub applies: &'a [bool],
    pub cost: u64,
    /// Nanoseconds since the epoch.
    pub now: i64,
    /// [`fingerprint`] of `limits`, computed once by the caller (it is cached with the key).
    pub fingerprint: u64,
}

/// The most limits one key may have of its own; a plan may have as many again.
pub const MAX_OWN_LIMITS: usize = 16;
/// The most limits judged for one key: its own and its plan's.
pub const MAX_LIMITS: usize = 2 * MAX_OWN_LIMITS;

#[async_trait]
pub trait Limiter: Send + Sync + std::fmt::Debug + 'static {
    /// Judges the request against every applicable limit; consumes from all of them if all admit
    /// it, from none otherwise. Returns one outcome per applicable limit, in order.
    async fn check(&self, request: LimitRequest<'_>) -> Vec<LimitOutcome>;

    /// The same judgement without waiting, for implementations that need no I/O to give it.
    /// Verification tries this first and awaits [`Limiter::check`] only on `None`, so an
    /// in-process limiter costs no future allocation per request.
    fn check_without_waiting(&self, request: LimitRequest<'_>) -> Option<Vec<LimitOutcome>> {
        let _ = request;
        None
    }

    /// Forgets state that no longer limits anything (every limit back to full) as of `now`.
    fn sweep(&self, now: i64);
}

/// A key's limiter state, and a fingerprint of the limits it was made for: if the key's limits
/// change, its state starts afresh.
/// Key ids are server-made UUIDv7s whose low 64 bits are random: folding the halves is a
/// well-spread hash no client can steer.
#[derive(Default)]
struct KeyIdHasher(u64);

impl Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, value: u128) {
        let folded = (value as u64) ^ ((value >> 64) as u64);
        self.0 = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shard = Mutex<HashMap<u128, Entry, std::hash::BuildHasherDefault<KeyIdHasher>>>;

struct Entry {
    fingerprint: u64,
    states: Box<[LimitState]>,
}

/// Exact, in-process limits for one node.
pub struct LocalLimiter {
    shards: [Shard; SHARDS],
}

impl Default for LocalLimiter {
    fn default() -> Self {
        LocalLimiter {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::default())),
        }
    }
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("keys", &self.len())
            .finish()
    }
}

/// Identifies a set of limits: state made for one set is not reused for another.
pub fn fingerprint(limits: &[RateLimit]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for l in limits {
        (l.limit, l.period_s, l.burst, &l.name).hash(&mut hasher);
    }
    hasher.finish()
}

impl LocalLimiter {
    pub fn new() -> Self {
        LocalLimiter::default()
    }

    fn shard(&self, key: &KeyId) -> &Shard {
        let [.., last] = key.0.into_bytes();
        let index = usize::from(last) % SHARDS;
        match self.shards.get(index) {
            Some(shard) => shard,
            None => unreachable_shard(),
        }
    }

    /// Keys with state held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The synchronous check behind [`Limiter::check`].
    pub fn check_now(&self, request: LimitRequest<'_>) -> Vec<LimitOutcome> {
        self.judge(request, true)
    }

    /// What [`LocalLimiter::check_now`] would answer, without consuming anything.
    pub fn peek(&self, request: LimitRequest<'_>) -> Vec<LimitOutcome> {
        self.judge(request, false)
    }

    fn judge(&self, request: LimitRequest<'_>, consume: bool) -> Vec<LimitOutcome> {
        let LimitRequest {
            key,
            limits,
            applies,
            cost,
            now,
            fingerprint: print,
        } = request;
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.entry(key.0.as_u128()).or_insert_with(|| Entry {
            fingerprint: print,
            states: vec![LimitState::Fresh; limits.len()].into_boxed_slice(),
        });
        if entry.fingerprint != print || entry.states.len() != limits.len() {
            *entry = Entry {
                fingerprint: print,
                states: vec![LimitState::Fresh; limits.len()].into_boxed_slice(),
            };
        }
        let mut outcomes = Vec::with_capacity(limits.len());
        // New states wait here until every limit has admitted the request.
        let mut next = [LimitState::Fresh; MAX_LIMITS];
        let judged = limits
            .iter()
            .zip(entry.states.iter())
            .zip(applies)
            .filter(|(_, a)| **a)
            .take(MAX_LIMITS);
        for (((limit, state), _), slot) in judged.zip(next.iter_mut()) {
            let (outcome, new_state) = check(limit, *state, now, cost);
            outcomes.push(outcome);
            *slot = new_state;
        }
        if consume && outcomes.iter().all(|o| o.admitted) {
            let applicable = entry
                .states
                .iter_mut()
                .zip(applies)
                .filter(|(_, a)| **a)
                .map(|(s, _)| s);
            for (state, new_state) in applicable.zip(next) {
                *state = new_state;
            }
        } else {
            // Nothing consumed: report the unchanged allowance of the limits that admitted.
            let applicable = limits
                .iter()
                .zip(entry.states.iter())
                .zip(applies)
                .filter(|(_, a)| **a);
            for (outcome, ((limit, state), _)) in outcomes.iter_mut().zip(applicable) {
                if outcome.admitted {
                    let (peek, _) = check(limit, *state, now, 0);
                    outcome.remaining = peek.remaining;
                    outcome.reset_ns = peek.reset_ns;
                }
            }
        }
        outcomes
    }
}

/// Whether a state no longer restricts anything at `now`.
fn is_spent(state: &LimitState, now: i64) -> bool {
    match *state {
        LimitState::Fresh => true,
        LimitState::Gcra { tat } => tat <= now,
        // Two windows old: both counters would be discarded on the next check. The period is not
        // known here, so a year (the longest) is assumed.
        LimitState::Window { start, .. } => {
            start.saturating_add(
                2 * i64::try_from(keyward_core::ratelimit::MAX_PERIOD_S).unwrap_or(i64::MAX / 4)
                    * 1_000_000_000,
            ) <= now
        }
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn check(&self, request: LimitRequest<'_>) -> Vec<LimitOutcome> {
        self.check_now(request)
    }

    fn check_without_waiting(&self, request: LimitRequest<'_>) -> Option<Vec<LimitOutcome>> {
        Some(self.check_now(request))
    }

    fn sweep(&self, now: i64) {
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, entry| !entry.states.iter().all(|s| is_spent(s, now)));
        }
    }
}

#[cold]
fn unreachable_shard() -> ! {
    #[allow(clippy::panic)]
    {
        panic!("shard index is reduced modulo the shard count")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    const S: i64 = 1_000_000_000;

    fn limit(name: &str, limit: u64, period_s: u64) -> RateLimit {
        RateLimit {
            name: name.into(),
            limit,
            period_s,
            burst: None,
            rule: None,
        }
    }

    fn key(n: u8) -> KeyId {
        KeyId(uuid::Uuid::from_bytes([n; 16]))
    }

    #[test]
    fn endpoint_limits_count_only_their_requests() {
        let limiter = LocalLimiter::new();
        let limits = [limit("all", 100, 1), limit("export", 2, 1)];
        let check = |applies: &[bool]| {
            limiter.check_now(LimitRequest {
                key: key(1),
                limits: &limits,
                applies,
                cost: 1,
                now: 5 * S,
                fingerprint: fingerprint(&limits),
            })
        };
        for _ in 0..2 {
            assert!(check(&[true, true]).iter().all(|o| o.admitted));
        }
        let refused = check(&[true, true]);
        assert!(!refused[1].admitted);
        assert_eq!(
            refused[0].remaining, 98,
            "the general limit was charged for a refused request"
        );
        // Other endpoints go on.
        let other = check(&[true, false]);
        assert_eq!(other.len(), 1);
        assert!(other[0].admitted);
        assert_eq!(other[0].remaining, 97);
    }

    #[test]
    fn changed_limits_start_afresh() {
        let limiter = LocalLimiter::new();
        let small = [limit("a", 1, 1)];
        let now = 9 * S;
        assert!(
            limiter.check_now(LimitRequest {
                key: key(2),
                limits: &small,
                applies: &[true],
                cost: 1,
                now,
                fingerprint: fingerprint(&small)
            })[0]
                .admitted
        );
        assert!(
            !limiter.check_now(LimitRequest {
                key: key(2),
                limits: &small,
                applies: &[true],
                cost: 1,
                now,
                fingerprint: fingerprint(&small)
            })[0]
                .admitted
        );
        let bigger = [limit("a", 5, 1)];
        assert!(
            limiter.check_now(LimitRequest {
                key: key(2),
                limits: &bigger,
                applies: &[true],
                cost: 1,
                now,
                fingerprint: fingerprint(&bigger)
            })[0]
                .admitted
        );
    }

    #[test]
    fn sweep_forgets_spent_state_only() {
        let limiter = LocalLimiter::new();
        let limits = [limit("a", 10, 1)];
        limiter.check_now(LimitRequest {
            key: key(3),
            limits: &limits,
            applies: &[true],
            cost: 1,
            now: 100 * S,
            fingerprint: 1,
        });
        limiter.sweep(100 * S);
        assert_eq!(limiter.len(), 1);
        limiter.sweep(101 * S);
        assert_eq!(limiter.len(), 0);
    }

    /// Many threads hammer one key with real time: the admitted count never exceeds what GCRA
    /// allows (burst + elapsed / interval) and comes within 1 % of it, over 10 windows.
    #[test]
    fn exact_under_real_concurrency() {
        let limiter = Arc::new(LocalLimiter::new());
        let limits = Arc::new([limit("burst", 2000, 1)]);
        let admitted = Arc::new(AtomicU64::new(0));
        let clock = keyward_core::SystemClock;
        let start = std::time::Instant::now();
        let start_ns = keyward_core::Clock::now(&clock).unix_ms() * 1_000_000;
        let windows = std::time::Duration::from_secs(10);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limiter, limits, admitted) = (
                    Arc::clone(&limiter),
                    Arc::clone(&limits),
                    Arc::clone(&admitted),
                );
                std::thread::spawn(move || {
                    while start.elapsed() < windows {
                        let now = start_ns + i64::try_from(start.elapsed().as_nanos()).unwrap();
                        let out = limiter.check_now(LimitRequest {
                            key: key(7),
                            limits: &limits[..],
                            applies: &[true],
                            cost: 1,
                            now,
                            fingerprint: 7,
                        });
                        if out[0].admitted {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let admitted = admitted.load(Ordering::Relaxed);
        let allowed = 2000 + 2000 * 10; // the burst, then 2000 a second for 10 s
        assert!(
            admitted <= allowed,
            "{admitted} admitted, more than {allowed}"
        );
        assert!(
            admitted * 100 >= allowed * 99,
            "{admitted} admitted, less than 99 % of {allowed}"
        );
    }
}
