#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use keyward_core::KeyStatus;
use keyward_store::prelude::*;
use keyward_testkit::services::Postgres;

/// A store on a PostgreSQL server of its own, for one test.
pub(crate) struct Fresh {
    store: PostgresStore,
    pub(crate) server: Postgres,
}

impl std::ops::Deref for Fresh {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

pub(crate) async fn fresh() -> Fresh {
    let server = Postgres::start().expect("PostgreSQL starts (apt-get install postgresql)");
    let store = PostgresStore::connect(&server.url(), Options::default())
        .await
        .unwrap();
    Fresh { store, server }
}

/// Each clause of the contract, on a fresh server of its own.
mod clause {
    use super::*;

    keyward_store::conformance_tests!(
        environments, keys_round_trip, writes_are_atomic, updates, audit_chain, usage, listing,
        access_and_roles, plans, quotas, events, vault, rotation, webhooks, change_feed;
        fresh().await
    );
}

#[test]
fn migrations_match_the_embedded_stores_by_name() {
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let ours = names(&format!("{root}/migrations/postgres"));
    let theirs = names(&format!("{root}/../keyward-store-sqlite/migrations/sqlite"));
    assert_eq!(ours, theirs);
    let listed: Vec<String> = MIGRATIONS.iter().map(|(n, _)| format!("{n}.sql")).collect();
    assert_eq!(listed, ours, "every file is run, in order");
}

/// What a listener heard, in order.
#[derive(Default)]
struct Heard(std::sync::Mutex<Vec<String>>);

impl ChangeListener for Heard {
    fn applied(&self, changes: &Changes) {
        let mut heard = self.0.lock().unwrap();
        for key in changes.insert_keys.iter().chain(&changes.update_keys) {
            heard.push(format!("{} {}", key.id, key.status.as_str()));
        }
    }
    fn interrupted(&self) {
        self.0.lock().unwrap().push("interrupted".to_owned());
    }
    fn resumed(&self) {
        self.0.lock().unwrap().push("resumed".to_owned());
    }
}

impl Heard {
    fn saw(&self, what: &str) -> bool {
        self.0.lock().unwrap().iter().any(|h| h == what)
    }

    async fn wait_for(&self, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.saw(what) {
            assert!(
                std::time::Instant::now() < deadline,
                "never heard {what:?}: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn live() -> EnvironmentRecord {
    EnvironmentRecord {
        name: EnvironmentName::parse("live").unwrap(),
        created_at: Timestamp::from_unix_ms(1),
        policy: keyward_core::EnvironmentPolicy::default(),
        mac: None,
    }
}

/// A store on a fresh server, a second node's store on it whose listener records what it
/// hears, and a key the first wrote and the second heard of.
async fn two_nodes_and_a_key() -> (Fresh, PostgresStore, Arc<Heard>, KeyRecord) {
    let a = fresh().await;
    let b = PostgresStore::connect(&a.server.url(), Options::default())
        .await
        .unwrap();
    let heard = Arc::new(Heard::default());
    let listener: Arc<dyn ChangeListener> = heard.clone();
    b.subscribe(Arc::downgrade(&listener));
    // (The store holds it weakly; `heard`, returned, keeps it alive.)
    let key = keyward_store::conformance::sample_key(1, "live");
    a.apply(Changes {
        environments: vec![live()],
        insert_keys: vec![key.clone()],
        ..Changes::default()
    })
    .await
    .unwrap();
    heard.wait_for(&format!("{} active", key.id)).await;
    (a, b, heard, key)
}

#[tokio::test]
async fn a_change_on_one_node_reaches_the_others_as_stored() {
    let (a, _node_b, heard, key) = two_nodes_and_a_key().await;
    let mut revoked = key.clone();
    revoked.status = KeyStatus::Revoked;
    revoked.revoked_at = Some(Timestamp::from_unix_ms(5));
    let sent = std::time::Instant::now();
    a.apply(Changes {
        update_keys: vec![revoked.clone()],
        ..Changes::default()
    })
    .await
    .unwrap();
    heard.wait_for(&format!("{} revoked", key.id)).await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn two_nodes_never_fork_the_audit_chain() {
    use keyward_store::conformance::sample_entry;
    let a = fresh().await;
    let b = PostgresStore::connect(&a.server.url(), Options::default())
        .await
        .unwrap();
    let genesis = keyward_core::audit::GENESIS_HASH;
    // Both read the same (empty) head and write the next entry at once.
    let (one, two) = tokio::join!(
        a.apply(Changes {
            audit: vec![sample_entry(1, genesis)],
            ..Changes::default()
        }),
        b.apply(Changes {
            audit: vec![sample_entry(1, genesis)],
            ..Changes::default()
        }),
    );
    let outcomes = [one.is_ok(), two.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "{one:?} {two:?}"
    );
    let lost = if one.is_ok() { two } else { one };
    assert!(matches!(lost, Err(StoreError::AuditConflict)), "{lost:?}");
    assert_eq!(b.audit_head().await.unwrap().unwrap().seq, 1);
}

#[tokio::test]
async fn after_a_restart_a_node_vouches_again_only_once_it_has_caught_up() {
    let (mut a, b, heard, key) = two_nodes_and_a_key().await;
    heard.0.lock().unwrap().clear();

    a.server.restart().unwrap();
    // A write on the other node as soon as the server is back: whether or not this node's
    // listening connection is back yet, it hears of it, and before it vouches again.
    let mut revoked = key.clone();
    revoked.status = KeyStatus::Revoked;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match a
            .apply(Changes {
                update_keys: vec![revoked.clone()],
                ..Changes::default()
            })
            .await
        {
            Ok(()) => break,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    heard.wait_for("interrupted").await;
    heard.wait_for(&format!("{} revoked", key.id)).await;
    // (The feed may still have been resuming from its first connection when the list was
    // cleared: the resume that counts is the one after the interruption.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (interrupted, resumed, revoked) = loop {
        let order = heard.0.lock().unwrap().clone();
        let interrupted = order.iter().position(|h| h == "interrupted").unwrap();
        let resumed = order[interrupted..].iter().position(|h| h == "resumed");
        let revoked = order
            .iter()
            .position(|h| *h == format!("{} revoked", key.id));
        if let (Some(resumed), Some(revoked)) = (resumed, revoked) {
            break (interrupted, interrupted + resumed, revoked);
        }
        assert!(std::time::Instant::now() < deadline, "{order:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let order = heard.0.lock().unwrap().clone();
    assert!(interrupted < revoked && revoked < resumed, "{order:?}");
    // Reads work again without a new store.
    assert_eq!(
        b.key(key.id).await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
}

#[tokio::test]
async fn a_wrong_url_password_or_server_is_one_clear_error() {
    let server = Postgres::start().unwrap();
    let quick = Options {
        connect_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let error = PostgresStore::connect("postgres://[nonsense", quick.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a valid postgres://"), "{error}");
    let nobody = format!(
        "postgres://nobody:hunter2@127.0.0.1:{}/postgres",
        server.port()
    );
    let error = PostgresStore::connect(&nobody, quick.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("nobody"), "names the refused role: {error}");
    assert!(!error.contains("hunter2"), "never the password: {error}");
    let port = server.port();
    drop(server);
    let error = PostgresStore::connect(
        &format!("postgres://keyward@127.0.0.1:{port}/postgres"),
        quick,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(&format!("127.0.0.1:{port}/postgres")),
        "{error}"
    );
}

#[tokio::test]
async fn one_node_leads_and_another_takes_over_when_it_is_gone() {
    let Fresh { store: a, server } = fresh().await;
    let b = PostgresStore::connect(&server.url(), Options::default())
        .await
        .unwrap();
    let c = PostgresStore::connect(&server.url(), Options::default())
        .await
        .unwrap();
    let leaders = |stores: &[&PostgresStore]| stores.iter().filter(|s| s.leads()).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while leaders(&[&a, &b, &c]) == 0 {
        assert!(std::time::Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Never two at once, for a few ticks.
    for _ in 0..20 {
        assert_eq!(leaders(&[&a, &b, &c]), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, rest): (Vec<PostgresStore>, Vec<PostgresStore>) =
        [a, b, c].into_iter().partition(|s| s.leads());
    drop(leader);
    // The leader's store is gone (its connection with it): another takes over within the
    // lease time.
    let gone = std::time::Instant::now();
    while leaders(&rest.iter().collect::<Vec<_>>()) == 0 {
        assert!(gone.elapsed() < leader::LEASE, "no one took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(leaders(&rest.iter().collect::<Vec<_>>()), 1);
}

#[tokio::test]
async fn a_nul_in_a_filter_finds_nothing_rather_than_failing() {
    let store = fresh().await;
    let found = store
        .list_keys(KeyQuery {
            owner: Some("a\0b".into()),
            limit: 10,
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert!(found.is_empty());
    assert_eq!(store.lease("x\0".into()).await.unwrap(), None);
}
