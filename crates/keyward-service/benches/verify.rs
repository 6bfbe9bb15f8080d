//! In-process verification, the hot path of keyward, with 1,000,000 keys in the SQLite store.
//!
//! Run: `cargo bench -p keyward-service --bench verify` (set KEYWARD_BENCH_KEYS to change the
//! key count). Setup prints the resident memory before and after caching every key. Every key
//! is on a 90-day rotation schedule, none due, for the rotation scan's benchmarks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use keyward_core::key::encode_key;
use keyward_core::{
    EnvironmentName, KeyAccess, KeyRecord, KeyStatus, ParsedKey, Permission, ServiceName,
    SystemClock, Timestamp, VerifyCode,
};
use keyward_crypto::KeyIds;
use keyward_service::{Authority, AuthorityConfig, VerifyRequest, initialize};
use keyward_store::{Changes, Store};
use keyward_store_sqlite::SqliteStore;

fn main() {
    divan::main();
}

/// Keys cycled through by the timed loops: spread over the whole store.
const SAMPLE: usize = 100_000;

struct Fixture {
    authority: Arc<Authority>,
    valid: Vec<String>,
    unknown: Vec<String>,
    malformed: Vec<String>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn secret_for(i: u64, salt: u8) -> [u8; 32] {
    let mut secret = [salt; 32];
    secret[..8].copy_from_slice(&i.to_le_bytes());
    secret
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs a future that is expected to finish without waiting (a cached verification).
fn now_or_block<F: std::future::Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => rt.block_on(fut),
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let count: u64 = std::env::var("KEYWARD_BENCH_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let live = EnvironmentName::parse("live").unwrap();
        let prefix = ServiceName::Default.prefix();
        let store = Arc::new(SqliteStore::open(&dir.path().join("keyward.db")).unwrap());
        let started = std::time::Instant::now();
        let unseal_key = runtime.block_on(async {
            let init = initialize(store.as_ref(), &SystemClock, 1, 1).await.unwrap();
            let hasher = Authority::open_with_key(
                store.clone(),
                Arc::new(SystemClock),
                &init.vault.unseal_key,
                AuthorityConfig::default(),
            )
            .await
            .unwrap();
            let ids = KeyIds::default();
            let now = Timestamp::from_unix_ms(1_795_860_000_000);
            let mut batch = Vec::new();
            for i in 0..count {
                let key = encode_key(&prefix, &live, &secret_for(i, 7));
                let start = ParsedKey::parse(&key).unwrap().start().to_owned();
                batch.push(KeyRecord {
                    id: ids.next(now).unwrap(),
                    service: ServiceName::Default,
                    environment: live.clone(),
                    hash: hasher.keys().key_hash(&key).unwrap(),
                    start,
                    name: format!("bench key {i}"),
                    owner: "bench-team".into(),
                    purpose: None,
                    permissions: vec![Permission::parse("invoices:read").unwrap()],
                    meta: serde_json::Map::new(),
                    created_at: now,
                    updated_at: now,
                    expires_at: None,
                    status: KeyStatus::Active,
                    revoked_at: None,
                    revocation_reason: None,
                    rolled_from: None,
                    rolled_to: None,
                    last_used_at: None,
                    uses: 0,
                    access: KeyAccess::default(),
                    // Every key on a 90-day schedule, none due: the rotation scan reads them all.
                    lifecycle: keyward_core::KeyLifecycle {
                        rotation: Some(keyward_core::RotationPolicy {
                            every_days: 90,
                            grace_hours: 48,
                            notice_days: 7,
                            delivery_cap_hours: None,
                        }),
                        rolled_by: None,
                        delivery: None,
                    },
                    mac: None,
                });
                if let Some(record) = batch.last_mut() {
                    hasher.keys().tag_for_import(record);
                }
                if batch.len() == 50_000 || i + 1 == count {
                    let insert_keys = std::mem::take(&mut batch);
                    store.apply(Changes { insert_keys, ..Changes::default() }).await.unwrap();
                }
            }
            hasher.shutdown().await;
            init.vault.unseal_key
        });
        eprintln!("setup: {count} keys stored in {:.1?}", started.elapsed());
        let authority = runtime.block_on(async {
            Authority::open_with_key(store, Arc::new(SystemClock), &unseal_key, AuthorityConfig::default())
                .await
                .unwrap()
        });
        let before = rss_mib();
        let started = std::time::Instant::now();
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            let workers = 8;
            for w in 0..workers {
                let (authority, prefix, live) = (Arc::clone(&authority), prefix.clone(), live.clone());
                tasks.spawn(async move {
                    for i in (w..count).step_by(workers as usize) {
                        let key = encode_key(&prefix, &live, &secret_for(i, 7));
                        let verdict = authority.verifier().verify(&key, &VerifyRequest::default()).await.unwrap();
                        assert_eq!(verdict.code, VerifyCode::Valid);
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        });
        // Let the usage batcher write the warm-up's usage, as it would between bursts.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let after = rss_mib();
        eprintln!(
            "setup: {count} keys cached in {:.1?}; resident memory {before:.0} MiB before, {after:.0} MiB after ({:.0} bytes per cached key)",
            started.elapsed(),
            (after - before) * 1024.0 * 1024.0 / count as f64,
        );
        let step = (count as usize / SAMPLE).max(1) as u64;
        let valid = (0..count).step_by(step as usize).take(SAMPLE).map(|i| encode_key(&prefix, &live, &secret_for(i, 7))).collect();
        let unknown = (0..SAMPLE as u64).map(|i| encode_key(&prefix, &live, &secret_for(i, 9))).collect();
        let malformed = (0..SAMPLE as u64)
            .map(|i| {
                let mut key = encode_key(&prefix, &live, &secret_for(i, 11));
                // A typo in the checksum: the most expensive malformed key to reject.
                let last = if key.ends_with('0') { "1" } else { "0" };
                key.replace_range(key.len() - 1.., last);
                key
            })
            .collect();
        Fixture { authority, valid, unknown, malformed, _runtime: runtime, _dir: dir }
    })
}

fn run(bencher: divan::Bencher, keys: fn(&Fixture) -> &[String], expect: VerifyCode) {
    let f = fixture();
    let keys = keys(f);
    let next = AtomicUsize::new(0);
    bencher
        .with_inputs(|| &keys[next.fetch_add(1, Ordering::Relaxed) % keys.len()])
        .bench_local_refs(|key| {
            let verdict = now_or_block(
                &f._runtime,
                f.authority
                    .verifier()
                    .verify(key, &VerifyRequest::default()),
            )
            .unwrap();
            debug_assert_eq!(verdict.code, expect);
            verdict
        });
}

/// A valid key already in the cache: parse, HMAC, cache hit, checks, usage event.
#[divan::bench(sample_count = 300, sample_size = 300)]
fn valid_cached(bencher: divan::Bencher) {
    run(bencher, |f| &f.valid, VerifyCode::Valid);
}

/// A well-formed key that matches nothing: answered by the known-hash filter, no store lookup.
#[divan::bench(sample_count = 300, sample_size = 300)]
fn unknown_key(bencher: divan::Bencher) {
    run(bencher, |f| &f.unknown, VerifyCode::NotFound);
}

/// A key with a wrong checksum: rejected by the parser before any hashing.
#[divan::bench(sample_count = 300, sample_size = 300)]
fn malformed_key(bencher: divan::Bencher) {
    run(bencher, |f| &f.malformed, VerifyCode::Malformed);
}

/// The rotation scheduler's whole scan of every key for due work (none is due).
#[divan::bench(sample_count = 5, sample_size = 1)]
fn rotation_scan(bencher: divan::Bencher) {
    let f = fixture();
    bencher.bench_local(|| {
        let run = f
            ._runtime
            .block_on(f.authority.rotation().run_due())
            .unwrap();
        assert_eq!(run.rotated, 0);
        run
    });
}

/// A valid cached key, verified while the rotation scan runs again and again on the runtime.
#[divan::bench(sample_count = 300, sample_size = 300)]
fn valid_cached_during_rotation_scan(bencher: divan::Bencher) {
    let f = fixture();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanning = {
        let (authority, stop) = (Arc::clone(&f.authority), Arc::clone(&stop));
        f._runtime.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                authority.rotation().run_due().await.unwrap();
            }
        })
    };
    run(bencher, |f| &f.valid, VerifyCode::Valid);
    stop.store(true, Ordering::Relaxed);
    f._runtime.block_on(scanning).unwrap();
}
