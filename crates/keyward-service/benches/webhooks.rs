//! Webhook delivery: how many signed deliveries a second the dispatcher makes to a receiver on
//! loopback that answers at once, from outbox rows to recorded outcomes (fan-out, signing,
//! HTTP, and the writes of every delivery's state).
//!
//! Run: `cargo bench -p keyward-service --bench webhooks`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use keyward_core::{EventType, OutboxEvent, SystemClock, Timestamp};
use keyward_service::{Authority, AuthorityConfig, EndpointSpec, WebhookConfig, initialize};
use keyward_store::{Changes, Store};
use keyward_store_sqlite::SqliteStore;

fn main() {
    divan::main();
}

const EVENTS: usize = 2_000;

/// A receiver that answers every request `204` on kept-alive connections.
async fn receiver() -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let header = line.trim_end().to_ascii_lowercase();
                        if header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                    if stream.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: Arc<SqliteStore>,
    authority: Arc<Authority>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("keyward.db")).unwrap());
    let authority = runtime.block_on(async {
        let init = initialize(store.as_ref(), &SystemClock, 1, 1)
            .await
            .unwrap();
        let authority = Authority::open_with_key(
            store.clone(),
            Arc::new(SystemClock),
            &init.vault.unseal_key,
            AuthorityConfig {
                webhooks: WebhookConfig {
                    allowed_cidrs: keyward_core::CidrSet::parse(&["127.0.0.1/32"]).unwrap(),
                    ..WebhookConfig::default()
                },
                ..AuthorityConfig::default()
            },
        )
        .await
        .unwrap();
        let admin = authority
            .verifier()
            .authenticate(
                Some(init.root_key.expose()),
                keyward_service::Operation::WebhookWrite,
                None,
            )
            .await
            .unwrap();
        let url = receiver().await;
        authority
            .webhooks()
            .create(
                &admin,
                EndpointSpec {
                    url: Some(url),
                    ..EndpointSpec::default()
                },
            )
            .await
            .unwrap();
        authority
    });
    Fixture {
        runtime,
        store,
        authority,
        _dir: dir,
    }
}

/// Delivers 2,000 events (each of a key of its own, so none waits behind another).
#[divan::bench(sample_count = 5, sample_size = 1)]
fn deliver_2000(bencher: divan::Bencher) {
    let f = fixture();
    let mut n = 0u64;
    bencher
        .counter(divan::counter::ItemsCount::new(EVENTS))
        .with_inputs(|| {
            let outbox = (0..EVENTS)
                .map(|_| {
                    n += 1;
                    OutboxEvent {
                        seq: 0,
                        id: format!("msg_bench_{n}"),
                        kind: EventType::KeyRevoked,
                        ts: Timestamp::from_unix_ms(1_795_860_000_000),
                        key_id: None,
                        environment: None,
                        owner: None,
                        data: serde_json::json!({ "n": n }),
                        only: None,
                        mac: None,
                    }
                })
                .collect();
            f.runtime
                .block_on(f.store.apply(Changes {
                    outbox,
                    ..Changes::default()
                }))
                .unwrap();
        })
        .bench_local_values(|()| {
            let run = f
                .runtime
                .block_on(f.authority.webhooks().run_deliveries())
                .unwrap();
            assert_eq!(run.delivered, EVENTS as u64, "{run:?}");
            run
        });
}
