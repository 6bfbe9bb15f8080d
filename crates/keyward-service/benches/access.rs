//! The cost of access checks on the verification path: a permission query against a key with 50
//! permissions, and a CIDR check against 10,000 blocks.
//!
//! Run: `cargo bench -p keyward-service --bench access`. `verify_with_query` minus
//! `verify_without_query` is what the query adds to an in-process verification.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use keyward_core::{
    Cidr, CidrSet, EnvironmentName, FakeClock, Permission, PermissionQuery, PermissionSet,
    Timestamp, VerifyCode,
};
use keyward_service::{Authority, AuthorityConfig, NewKey, VerifyRequest, initialize};
use keyward_store_sqlite::SqliteStore;

fn main() {
    divan::main();
}

const QUERY: &str = "res7:read AND (res3:write OR res9:read) AND NOT res11:delete AND res40:list";

fn fifty_permissions() -> Vec<Permission> {
    (0..50)
        .map(|i| {
            let action = ["read", "write", "list", "delete", "*"][i % 5];
            Permission::parse(&format!("res{i}:{action}")).unwrap()
        })
        .collect()
}

struct Fixture {
    authority: Arc<Authority>,
    key: String,
    limited_key: String,
    query: PermissionQuery,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clock = FakeClock::new(Timestamp::from_unix_ms(1_795_860_000_000));
        let (authority, key, limited_key) = runtime.block_on(async {
            let store = SqliteStore::open(&dir.path().join("keyward.db")).unwrap();
            let init = initialize(&store, &clock, 1, 1).await.unwrap();
            let root = init.root_key;
            let authority = Authority::open_with_key(
                Arc::new(store),
                Arc::new(clock.clone()),
                &init.vault.unseal_key,
                AuthorityConfig::default(),
            )
            .await
            .unwrap();
            let admin = authority
                .verifier()
                .authenticate(
                    Some(root.expose()),
                    keyward_service::Operation::KeyCreate,
                    None,
                )
                .await
                .unwrap();
            let (_, key) = authority
                .keys()
                .create_key(
                    &admin,
                    NewKey {
                        service: keyward_core::ServiceName::Default,
                        environment: EnvironmentName::parse("live").unwrap(),
                        name: "bench".into(),
                        owner: "bench".into(),
                        purpose: None,
                        permissions: fifty_permissions(),
                        expires_at: None,
                        ttl_s: None,
                        meta: serde_json::Map::new(),
                        access: keyward_core::KeyAccess::default(),
                        quota_remaining: None,
                        rotation: None,
                        delivery: None,
                    },
                )
                .await
                .unwrap();
            let big = |name: &str, period_s| keyward_core::RateLimit {
                name: name.into(),
                limit: 1_000_000_000,
                period_s,
                burst: None,
                rule: None,
            };
            let (_, limited) = authority
                .keys()
                .create_key(
                    &admin,
                    NewKey {
                        service: keyward_core::ServiceName::Default,
                        environment: EnvironmentName::parse("live").unwrap(),
                        name: "limited".into(),
                        owner: "bench".into(),
                        purpose: None,
                        permissions: fifty_permissions(),
                        expires_at: None,
                        ttl_s: None,
                        meta: serde_json::Map::new(),
                        access: keyward_core::KeyAccess {
                            ratelimits: vec![
                                big("burst", 1),
                                big("minute", 60),
                                big("daily", 86_400),
                            ],
                            ..keyward_core::KeyAccess::default()
                        },
                        quota_remaining: None,
                        rotation: None,
                        delivery: None,
                    },
                )
                .await
                .unwrap();
            // Warm the cache: the timed loops measure cached verification.
            for k in [&key, &limited] {
                authority
                    .verifier()
                    .verify(k.expose(), &VerifyRequest::default())
                    .await
                    .unwrap();
            }
            (
                authority,
                key.expose().to_owned(),
                limited.expose().to_owned(),
            )
        });
        Fixture {
            authority,
            key,
            limited_key,
            query: PermissionQuery::parse(QUERY).unwrap(),
            runtime,
            _dir: dir,
        }
    })
}

fn now_or_block<F: std::future::Future>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => rt.block_on(fut),
    }
}

/// In-process verify of a cached key with 50 permissions, no query.
#[divan::bench(sample_count = 300, sample_size = 300)]
fn verify_without_query(bencher: divan::Bencher) {
    let f = fixture();
    bencher.bench_local(|| {
        let v = now_or_block(
            &f.runtime,
            f.authority
                .verifier()
                .verify(&f.key, &VerifyRequest::default()),
        )
        .unwrap();
        debug_assert_eq!(v.code, VerifyCode::Valid);
        v
    });
}

/// The same with a 5-term permission query.
#[divan::bench(sample_count = 300, sample_size = 300)]
fn verify_with_query(bencher: divan::Bencher) {
    let f = fixture();
    let request = VerifyRequest {
        permissions: Some(&f.query),
        ..VerifyRequest::default()
    };
    bencher.bench_local(|| {
        let v = now_or_block(&f.runtime, f.authority.verifier().verify(&f.key, &request)).unwrap();
        debug_assert_eq!(v.code, VerifyCode::Valid);
        v
    });
}

/// The same key shape with three rate limits (GCRA, GCRA, sliding window), no query.
#[divan::bench(sample_count = 300, sample_size = 300)]
fn verify_with_three_limits(bencher: divan::Bencher) {
    let f = fixture();
    bencher.bench_local(|| {
        let v = now_or_block(
            &f.runtime,
            f.authority
                .verifier()
                .verify(&f.limited_key, &VerifyRequest::default()),
        )
        .unwrap();
        debug_assert_eq!(v.code, VerifyCode::Valid);
        v
    });
}

/// The query alone against a compiled set of 50 permissions.
#[divan::bench(sample_count = 300, sample_size = 1000)]
fn query_against_50_permissions(bencher: divan::Bencher) {
    let set = PermissionSet::new(&fifty_permissions());
    let query = PermissionQuery::parse(QUERY).unwrap();
    bencher.bench_local(|| query.evaluate(&|w| set.grants(w)).is_ok());
}

/// Membership of one address in a set of 10,000 IPv4 blocks.
#[divan::bench(sample_count = 300, sample_size = 1000)]
fn cidr_check_10000_blocks(bencher: divan::Bencher) {
    let blocks: Vec<Cidr> = (0..10_000u32)
        .map(|i| {
            Cidr::parse(&format!(
                "{}/24",
                Ipv4Addr::from((i * 7919 % 65_536) << 8 | 0x0a00_0000)
            ))
            .unwrap()
        })
        .collect();
    let set = CidrSet::new(blocks).unwrap();
    let probes: Vec<IpAddr> = (0..1024u32)
        .map(|i| {
            IpAddr::from(Ipv4Addr::from(
                0x0a00_0000 | i.wrapping_mul(2_654_435_761) >> 8,
            ))
        })
        .collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % probes.len();
        set.contains(probes[i])
    });
}
