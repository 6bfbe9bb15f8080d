//! The vault in process: reading a secret (sealed at rest, opened per read, the read audited
//! through the group commit), writing one, and unsealing with 3 of 5 shares.
//!
//! Run: `cargo bench -p keyward-service --bench vault`. The store lives in a temp dir: put
//! TMPDIR on the disk you will deploy on, since every audited call waits for an fsync.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::{Arc, OnceLock};

use keyward_core::{EnvironmentName, SystemClock};
use keyward_crypto::barrier::{Context, Keyring};
use keyward_service::{Actor, Authority, AuthorityConfig, Node, SecretWrite, initialize};
use keyward_store_sqlite::SqliteStore;

fn main() {
    divan::main();
}

struct Fixture {
    authority: Arc<Authority>,
    actor: Actor,
    live: EnvironmentName,
    node: Arc<Node>,
    shares: Vec<String>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
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
        let (authority, actor, node, shares) = runtime.block_on(async {
            let store = Arc::new(SqliteStore::open(&dir.path().join("keyward.db")).unwrap());
            let init = initialize(store.as_ref(), &SystemClock, 5, 3)
                .await
                .unwrap();
            let authority = Authority::open_with_key(
                store.clone(),
                Arc::new(SystemClock),
                &init.vault.unseal_key,
                AuthorityConfig::default(),
            )
            .await
            .unwrap();
            let actor = authority
                .verifier()
                .authenticate_for(
                    Some(init.root_key.expose()),
                    keyward_service::Operation::SecretRead,
                    Some("payments/stripe"),
                    None,
                )
                .await
                .unwrap();
            let mut data = serde_json::Map::new();
            data.insert(
                "api_key".into(),
                "sk_live_0123456789abcdefghijklmnopqrstuv".into(),
            );
            data.insert("webhook_secret".into(), "whsec_0123456789abcdef".into());
            authority
                .secrets()
                .write_secret(
                    &actor,
                    &live,
                    "payments/stripe",
                    SecretWrite { data, cas: None },
                )
                .await
                .unwrap();
            // A second node over another store, for unseal timings.
            let other = tempfile::tempdir().unwrap().keep();
            let other_store = Arc::new(SqliteStore::open(&other.join("keyward.db")).unwrap());
            let other_init = initialize(other_store.as_ref(), &SystemClock, 5, 3)
                .await
                .unwrap();
            let node = Node::open(
                other_store,
                Arc::new(SystemClock),
                AuthorityConfig::default(),
            )
            .await
            .unwrap();
            let shares = other_init
                .vault
                .shares
                .iter()
                .map(|s| s.to_text().to_string())
                .collect();
            (authority, actor, node, shares)
        });
        Fixture {
            authority,
            actor,
            live,
            node,
            shares,
            runtime,
            _dir: dir,
        }
    })
}

/// A secret read as the API does it: lookup, open under the environment's keyring, audit.
#[divan::bench]
fn read_secret(bencher: divan::Bencher) {
    let f = fixture();
    bencher.bench(|| {
        f.runtime.block_on(async {
            f.authority
                .secrets()
                .read_secret(&f.actor, &f.live, "payments/stripe", None, None)
                .await
                .unwrap()
        })
    });
}

/// 16 concurrent reads: the group commit shares one audit write among them.
#[divan::bench]
fn read_secret_16_concurrent(bencher: divan::Bencher) {
    let f = fixture();
    bencher
        .counter(divan::counter::ItemsCount::new(16usize))
        .bench(|| {
            f.runtime.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..16 {
                    let (authority, actor, live) =
                        (f.authority.clone(), f.actor.clone(), f.live.clone());
                    set.spawn(async move {
                        authority
                            .secrets()
                            .read_secret(&actor, &live, "payments/stripe", None, None)
                            .await
                            .unwrap()
                    });
                }
                while let Some(done) = set.join_next().await {
                    done.unwrap();
                }
            })
        });
}

/// Only the barrier: open one sealed 100-byte value (HKDF, then AES-256-GCM).
#[divan::bench]
fn open_sealed_value(bencher: divan::Bencher) {
    let ring = Keyring::generate(0).unwrap();
    let ctx = Context {
        table: "secret",
        id: "live/payments/stripe#1",
        field: "data",
    };
    let sealed = ring.seal(&ctx, &[7u8; 100]).unwrap();
    bencher.bench(|| ring.open(&ctx, divan::black_box(&sealed)).unwrap());
}

/// Unseal with 3 of 5 shares: parse, combine, open the root key and keyrings, open the HMAC
/// secrets and load the authority (an empty store), then seal again outside the timing.
#[divan::bench(sample_count = 30, sample_size = 1)]
fn unseal_three_shares(bencher: divan::Bencher) {
    let f = fixture();
    bencher
        .with_inputs(|| f.runtime.block_on(f.node.shutdown()))
        .bench_values(|()| {
            f.runtime.block_on(async {
                for share in &f.shares[..3] {
                    f.node.submit_share(share).await.unwrap();
                }
                assert!(!f.node.is_sealed());
            })
        });
}
