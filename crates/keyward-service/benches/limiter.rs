//! The in-process limiter: one check for a key with 3 limits, single-threaded and with two
//! threads on one hot key; and the memory an active key's state takes.
//!
//! Run: `cargo bench -p keyward-service --bench limiter`. Two-thread throughput is
//! 2 / (median time per check).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use keyward_core::KeyId;
use keyward_core::ratelimit::RateLimit;
use keyward_service::limiter::{LimitRequest, LocalLimiter, fingerprint};

fn main() {
    report_memory();
    divan::main();
}

fn limits() -> [RateLimit; 3] {
    let l = |name: &str, limit, period_s| RateLimit {
        name: name.into(),
        limit,
        period_s,
        burst: None,
        rule: None,
    };
    // Large enough that the timed loop keeps being admitted, as for a busy, well-behaved client.
    [
        l("burst", 1_000_000_000, 1),
        l("minute", 1_000_000_000, 60),
        l("daily", 1_000_000_000, 86_400),
    ]
}

const APPLIES: [bool; 3] = [true, true, true];

fn shared() -> &'static (LocalLimiter, [RateLimit; 3]) {
    static SHARED: OnceLock<(LocalLimiter, [RateLimit; 3])> = OnceLock::new();
    SHARED.get_or_init(|| (LocalLimiter::new(), limits()))
}

/// A clock that moves 1 µs per reading, so GCRA state advances as under real traffic.
static NOW: AtomicI64 = AtomicI64::new(1_795_860_000_000_000_000);

fn now() -> i64 {
    NOW.fetch_add(1_000, Ordering::Relaxed)
}

/// One key with three limits (GCRA, GCRA, sliding window), single thread.
#[divan::bench(sample_count = 300, sample_size = 1000)]
fn check_three_limits(bencher: divan::Bencher) {
    let (limiter, limits) = shared();
    let key = KeyId(uuid::Uuid::from_bytes([1; 16]));
    bencher.bench(|| {
        limiter.check_now(LimitRequest {
            key,
            limits,
            applies: &APPLIES,
            cost: 1,
            now: now(),
            fingerprint: 3,
        })
    });
}

/// The same key from two threads at once.
#[divan::bench(threads = [2], sample_count = 300, sample_size = 1000)]
fn check_three_limits_two_threads_one_key(bencher: divan::Bencher) {
    let (limiter, limits) = shared();
    let key = KeyId(uuid::Uuid::from_bytes([2; 16]));
    bencher.bench(|| {
        limiter.check_now(LimitRequest {
            key,
            limits,
            applies: &APPLIES,
            cost: 1,
            now: now(),
            fingerprint: 3,
        })
    });
}

fn rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb * 1024.0)
}

/// Resident memory per active key with three limits, over 1,000,000 keys.
fn report_memory() {
    let limiter = LocalLimiter::new();
    let limits = limits();
    let before = rss_bytes();
    let n = 1_000_000u32;
    for i in 0..n {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        bytes[15] = (i % 251) as u8;
        let key = KeyId(uuid::Uuid::from_bytes(bytes));
        limiter.check_now(LimitRequest {
            key,
            limits: &limits,
            applies: &APPLIES,
            cost: 1,
            now: now(),
            fingerprint: fingerprint(&limits),
        });
    }
    let after = rss_bytes();
    eprintln!(
        "limiter state: {} active keys with 3 limits each, {:.0} bytes resident per key",
        limiter.len(),
        (after - before) / f64::from(n)
    );
}
