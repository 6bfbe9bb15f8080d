//! Emergency revocation: one call revoking 100,000 keys of one owner, among 1,000,000, while
//! other keys are verified beside it; and inventory searches over the same keys.
//!
//! Run: `cargo bench -p keyward-service --bench lifecycle`. Each sample revokes a fresh owner's
//! keys; the verifications of bystander keys made meanwhile are timed, and their median and p99
//! are printed next to the same figures measured with nothing else running.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use keyward_core::key::encode_key;
use keyward_core::{EnvironmentName, ServiceName, SystemClock, Timestamp, VerifyCode};
use keyward_crypto::KeyIds;
use keyward_service::{
    Authority, AuthorityConfig, Operation, RevokeSelector, VerifyRequest, initialize,
};
use keyward_store::{Changes, Store};
use keyward_store_sqlite::SqliteStore;

fn main() {
    divan::main();
}

/// Owners whose keys are revoked, one per sample, and the bystanders verified meanwhile (the
/// rest of the 1,000,000 keys).
const OWNERS: usize = 3;
const PER_OWNER: u64 = 100_000;
const BYSTANDERS: u64 = 700_000;

struct Fixture {
    authority: Arc<Authority>,
    root: String,
    bystanders: Vec<String>,
    next_owner: AtomicUsize,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn secret_for(owner: u64, i: u64) -> [u8; 32] {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&i.to_le_bytes());
    secret[8..16].copy_from_slice(&owner.to_le_bytes());
    secret[16] = 0x5a;
    secret
}

fn owner_name(owner: u64) -> String {
    if owner == OWNERS as u64 {
        "bystanders".into()
    } else {
        format!("owner-{owner}")
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let live = EnvironmentName::parse("live").unwrap();
        let prefix = ServiceName::Default.prefix();
        let store = Arc::new(SqliteStore::open(&dir.path().join("keyward.db")).unwrap());
        let started = Instant::now();
        let (unseal_key, root) = runtime.block_on(async {
            let init = initialize(store.as_ref(), &SystemClock, 1, 1)
                .await
                .unwrap();
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
            for owner in 0..=OWNERS as u64 {
                let count = if owner == OWNERS as u64 {
                    BYSTANDERS
                } else {
                    PER_OWNER
                };
                let mut batch = Vec::new();
                for i in 0..count {
                    let key = encode_key(&prefix, &live, &secret_for(owner, i));
                    let record = hasher
                        .keys()
                        .record_for_import(ids.next(now).unwrap(), &key, &owner_name(owner), now)
                        .unwrap();
                    batch.push(record);
                    if batch.len() == 50_000 {
                        let insert_keys = std::mem::take(&mut batch);
                        store
                            .apply(Changes {
                                insert_keys,
                                ..Changes::default()
                            })
                            .await
                            .unwrap();
                    }
                }
                if !batch.is_empty() {
                    store
                        .apply(Changes {
                            insert_keys: batch,
                            ..Changes::default()
                        })
                        .await
                        .unwrap();
                }
            }
            hasher.shutdown().await;
            (init.vault.unseal_key, init.root_key.expose().to_owned())
        });
        let authority = runtime.block_on(async {
            Authority::open_with_key(
                store,
                Arc::new(SystemClock),
                &unseal_key,
                AuthorityConfig::default(),
            )
            .await
            .unwrap()
        });
        let bystanders: Vec<String> = (0..BYSTANDERS)
            .map(|i| encode_key(&prefix, &live, &secret_for(OWNERS as u64, i)))
            .collect();
        // Warm the cache with the bystanders and every key to be revoked, as a busy node has.
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for owner in 0..=OWNERS as u64 {
                let (authority, prefix, live) =
                    (Arc::clone(&authority), prefix.clone(), live.clone());
                tasks.spawn(async move {
                    let count = if owner == OWNERS as u64 {
                        BYSTANDERS
                    } else {
                        PER_OWNER
                    };
                    for i in 0..count {
                        let key = encode_key(&prefix, &live, &secret_for(owner, i));
                        let verdict = authority
                            .verifier()
                            .verify(&key, &VerifyRequest::default())
                            .await
                            .unwrap();
                        assert_eq!(verdict.code, VerifyCode::Valid);
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
        });
        eprintln!(
            "setup: {} keys stored and cached in {:.1?}",
            OWNERS as u64 * PER_OWNER + BYSTANDERS,
            started.elapsed()
        );
        Fixture {
            authority,
            root,
            bystanders,
            next_owner: AtomicUsize::new(0),
            runtime,
            _dir: dir,
        }
    })
}

/// Verifies bystander keys one after another until `stop`, and returns each verification's time.
async fn verify_until(
    authority: Arc<Authority>,
    keys: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = &keys[i % keys.len()];
        i += 1;
        let started = Instant::now();
        let verdict = authority
            .verifier()
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap();
        times.push(started.elapsed());
        assert_eq!(verdict.code, VerifyCode::Valid);
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    times
}

fn quantiles(mut times: Vec<Duration>) -> (Duration, Duration, usize) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99), times.len())
}

/// The first page (100 keys) of an inventory search, as `GET /v1/keys` makes it.
fn search(bencher: divan::Bencher, query: fn() -> keyward_store::KeyQuery) {
    let f = fixture();
    let actor = f
        .runtime
        .block_on(
            f.authority
                .verifier()
                .authenticate(Some(&f.root), Operation::KeyRead, None),
        )
        .unwrap();
    bencher.bench_local(|| {
        let page = f
            .runtime
            .block_on(f.authority.keys().list_keys(&actor, query()))
            .unwrap();
        assert!(!page.keys.is_empty());
        page
    });
}

/// Keys of one owner among four.
#[divan::bench(sample_count = 20, sample_size = 5)]
fn search_by_owner(bencher: divan::Bencher) {
    search(bencher, || keyward_store::KeyQuery {
        owner: Some("bystanders".into()),
        limit: 100,
        ..keyward_store::KeyQuery::default()
    });
}

/// Keys whose start begins with what was seen of one of them (six characters of its secret).
#[divan::bench(sample_count = 20, sample_size = 5)]
fn search_by_start(bencher: divan::Bencher) {
    search(bencher, || {
        let live = EnvironmentName::parse("live").unwrap();
        let key = encode_key(
            &ServiceName::Default.prefix(),
            &live,
            &secret_for(OWNERS as u64, 4242),
        );
        let start = keyward_core::ParsedKey::parse(&key)
            .unwrap()
            .start()
            .to_owned();
        keyward_store::KeyQuery {
            start_prefix: Some(start),
            limit: 100,
            ..keyward_store::KeyQuery::default()
        }
    });
}

/// One call revoking 100,000 keys of one owner (a fresh owner each sample), with bystander
/// keys verified meanwhile.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn revoke_100000_keys(bencher: divan::Bencher) {
    let f = fixture();
    let keys = Arc::new(f.bystanders.clone());
    // Bystander verifications with nothing else running, for comparison.
    let alone = {
        let stop = Arc::new(AtomicBool::new(false));
        let task = f.runtime.spawn(verify_until(
            Arc::clone(&f.authority),
            Arc::clone(&keys),
            Arc::clone(&stop),
        ));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        quantiles(f.runtime.block_on(task).unwrap())
    };
    let actor = f
        .runtime
        .block_on(
            f.authority
                .verifier()
                .authenticate(Some(&f.root), Operation::KeyRevoke, None),
        )
        .unwrap();
    bencher.bench_local(|| {
        let owner = f.next_owner.fetch_add(1, Ordering::Relaxed) as u64;
        assert!(owner < OWNERS as u64, "one owner per sample: raise OWNERS");
        let stop = Arc::new(AtomicBool::new(false));
        let beside = f.runtime.spawn(verify_until(Arc::clone(&f.authority), Arc::clone(&keys), Arc::clone(&stop)));
        let selector = RevokeSelector { owner: Some(owner_name(owner)), ..RevokeSelector::default() };
        let started = Instant::now();
        let done = f
            .runtime
            .block_on(f.authority.keys().revoke_matching(&actor, selector, "bench".into(), false))
            .unwrap();
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let during = quantiles(f.runtime.block_on(beside).unwrap());
        assert_eq!(done.revoked, PER_OWNER);
        // The revoked keys are refused at once.
        let live = EnvironmentName::parse("live").unwrap();
        let revoked = encode_key(&ServiceName::Default.prefix(), &live, &secret_for(owner, 7));
        let verdict = f.runtime.block_on(f.authority.verifier().verify(&revoked, &VerifyRequest::default())).unwrap();
        assert_eq!(verdict.code, VerifyCode::Revoked);
        eprintln!(
            "revoked {} keys in {took:.2?}; bystander verify p50/p99 {:.2?}/{:.2?} over {} calls meanwhile, {:.2?}/{:.2?} over {} alone",
            done.revoked, during.0, during.1, during.2, alone.0, alone.1, alone.2
        );
    });
}
