//! The conformance suite: what every [`Store`] backend must do, checked against a real instance.
//!
//! A backend's tests instantiate [`conformance_tests!`](crate::conformance_tests) (one test per
//! clause) or call [`run`] on a fresh, empty store. Each check names the clause of the
//! [`Store`] contract it pins.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use keyward_core::audit::{AuditEntry, GENESIS_HASH};
use keyward_core::{
    Cidr, EnvironmentName, EnvironmentPolicy, Grant, KeyAccess, KeyHash, KeyId, KeyRecord,
    KeyStatus, PathRule, Permission, PlanName, PlanRecord, RoleName, RoleRecord, ServiceName,
    Timestamp,
};
use uuid::Uuid;

use crate::vault::{
    LeaseKind, RewrapProgress, Rewrapped, SealedValue, SecretMeta, SecretVersion, StoredKeyring,
    VaultLease, VaultRecord,
};
use crate::{Changes, EnvironmentRecord, Handover, KeyQuery, KeyUsage, Store, StoreError};

fn env(name: &str) -> EnvironmentName {
    EnvironmentName::parse(name).unwrap()
}

/// A key record with id and hash derived from `n`.
pub fn sample_key(n: u8, environment: &str) -> KeyRecord {
    KeyRecord {
        id: KeyId(Uuid::from_bytes([
            0, 0, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, n,
        ])),
        service: ServiceName::Default,
        environment: env(environment),
        hash: KeyHash([n; 32]),
        start: format!("kw_{environment}_abcd"),
        name: format!("key {n}"),
        owner: if n.is_multiple_of(2) {
            "alice".into()
        } else {
            "bob".into()
        },
        purpose: Some("tests".into()),
        permissions: vec![Permission::parse("invoices:read").unwrap()],
        meta: serde_json::json!({"n": n}).as_object().cloned().unwrap(),
        created_at: Timestamp::from_unix_ms(1_000 + i64::from(n)),
        updated_at: Timestamp::from_unix_ms(1_000 + i64::from(n)),
        expires_at: None,
        status: KeyStatus::Active,
        revoked_at: None,
        revocation_reason: None,
        rolled_from: None,
        rolled_to: None,
        last_used_at: None,
        uses: 0,
        access: KeyAccess::default(),
        lifecycle: keyward_core::KeyLifecycle::default(),
        mac: Some(keyward_core::RecordMac([n; 32])),
    }
}

/// An audit entry continuing `prev` (the store checks linkage, not the hash's content).
pub fn sample_entry(seq: u64, prev_hash: &str) -> AuditEntry {
    AuditEntry {
        seq,
        ts: Timestamp::from_unix_ms(5_000 + i64::try_from(seq).unwrap()),
        actor: "system".into(),
        action: "test.entry".into(),
        target: None,
        details: serde_json::json!({"seq": seq}),
        prev_hash: prev_hash.to_owned(),
        hash: format!("{seq:064x}"),
    }
}

/// The change feed: each committed apply reaches every live listener once, in commit order,
/// before `apply` returns; a refused apply reaches none; a dropped listener is forgotten.
pub async fn change_feed(store: &dyn Store) {
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<Vec<KeyId>>>);
    impl crate::ChangeListener for Heard {
        fn applied(&self, changes: &Changes) {
            self.0
                .lock()
                .unwrap()
                .push(changes.insert_keys.iter().map(|k| k.id).collect());
        }
    }
    let heard = std::sync::Arc::new(Heard::default());
    let listener: std::sync::Arc<dyn crate::ChangeListener> = heard.clone();
    store.subscribe(std::sync::Arc::downgrade(&listener));
    let (a, b) = (sample_key(201, "live"), sample_key(202, "live"));
    for key in [&a, &b] {
        store
            .apply(Changes {
                insert_keys: vec![key.clone()],
                ..Changes::default()
            })
            .await
            .unwrap();
        // Heard before apply returned.
        assert_eq!(heard.0.lock().unwrap().last(), Some(&vec![key.id]));
    }
    // A refused write (a duplicate id) is not heard.
    assert!(
        store
            .apply(Changes {
                insert_keys: vec![a.clone()],
                ..Changes::default()
            })
            .await
            .is_err()
    );
    assert_eq!(*heard.0.lock().unwrap(), vec![vec![a.id], vec![b.id]]);
    drop(listener);
    drop(heard);
    store
        .apply(Changes {
            insert_keys: vec![sample_key(203, "live")],
            ..Changes::default()
        })
        .await
        .unwrap();
}

/// One `#[tokio::test]` per clause of the contract for a backend, so a failure names the
/// clause: `$make` makes a fresh, empty store, or a value that derefs to one (to keep a temp dir
/// alive beside it). Clauses build on the state the ones before them leave (keys made by one are
/// updated by the next), so each test runs the clauses before its own first.
#[macro_export]
macro_rules! conformance_tests {
    ($($clause:ident),* $(,)?; $make:expr) => {
        $(
            #[tokio::test]
            async fn $clause() {
                let held = $make;
                let store: &dyn $crate::Store = &*held;
                $crate::conformance::run_through(store, stringify!($clause)).await;
            }
        )*
    };
}

/// The clauses in the order they build on each other.
pub const CLAUSES: &[&str] = &[
    "environments",
    "keys_round_trip",
    "writes_are_atomic",
    "updates",
    "audit_chain",
    "usage",
    "listing",
    "access_and_roles",
    "plans",
    "quotas",
    "events",
    "vault",
    "rotation",
    "webhooks",
    "change_feed",
];

async fn clause(store: &dyn Store, name: &str) {
    match name {
        "environments" => environments(store).await,
        "keys_round_trip" => keys_round_trip(store).await,
        "writes_are_atomic" => writes_are_atomic(store).await,
        "updates" => updates(store).await,
        "audit_chain" => audit_chain(store).await,
        "usage" => usage(store).await,
        "listing" => listing(store).await,
        "access_and_roles" => access_and_roles(store).await,
        "plans" => plans(store).await,
        "quotas" => quotas(store).await,
        "events" => events(store).await,
        "vault" => vault(store).await,
        "rotation" => rotation(store).await,
        "webhooks" => webhooks(store).await,
        "change_feed" => change_feed(store).await,
        other => panic!("no conformance clause named {other}"),
    }
}

/// Runs the clauses up to and including `last`, in order, on an empty store.
pub async fn run_through(store: &dyn Store, last: &str) {
    assert!(
        CLAUSES.contains(&last),
        "no conformance clause named {last}"
    );
    for name in CLAUSES {
        clause(store, name).await;
        if *name == last {
            break;
        }
    }
    store.ping().await.unwrap();
}

/// Runs every clause on an empty store.
pub async fn run(store: &dyn Store) {
    run_through(store, "change_feed").await;
}

pub async fn environments(store: &dyn Store) {
    let envs = ["live", "test"].map(|name| EnvironmentRecord {
        name: env(name),
        created_at: Timestamp::from_unix_ms(1),
        policy: EnvironmentPolicy::default(),
        mac: Some(keyward_core::RecordMac([name.len() as u8; 32])),
    });
    store
        .apply(Changes {
            environments: envs.to_vec(),
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.environments().await.unwrap(), envs.to_vec());
    let again = store
        .apply(Changes {
            environments: vec![envs[0].clone()],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "duplicate environment: {again:?}"
    );
}

pub async fn keys_round_trip(store: &dyn Store) {
    let mut key = sample_key(1, "live");
    key.expires_at = Some(Timestamp::from_unix_ms(99_000));
    key.rolled_from = Some(sample_key(200, "live").id);
    store
        .apply(Changes {
            insert_keys: vec![key.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.key(key.id).await.unwrap(), Some(key.clone()));
    assert_eq!(
        store.key_by_hash(key.hash).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.key(sample_key(2, "live").id).await.unwrap(), None);
    assert_eq!(store.key_by_hash(KeyHash([2; 32])).await.unwrap(), None);
    assert!(store.key_hashes().await.unwrap().contains(&key.hash));
}

pub async fn writes_are_atomic(store: &dyn Store) {
    // Key 3 is new, but key 1's hash is taken: nothing of the batch may be written.
    let mut duplicate = sample_key(4, "live");
    duplicate.hash = sample_key(1, "live").hash;
    let result = store
        .apply(Changes {
            insert_keys: vec![sample_key(3, "live"), duplicate],
            ..Changes::default()
        })
        .await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(store.key(sample_key(3, "live").id).await.unwrap(), None);

    // A key whose environment does not exist is refused.
    let result = store
        .apply(Changes {
            insert_keys: vec![sample_key(5, "nowhere")],
            ..Changes::default()
        })
        .await;
    assert!(result.is_err(), "unknown environment accepted");
}

pub async fn updates(store: &dyn Store) {
    let mut key = store.key(sample_key(1, "live").id).await.unwrap().unwrap();
    store
        .record_usage(vec![KeyUsage {
            id: key.id,
            last_used_at: Timestamp::from_unix_ms(7_000),
            uses: 3,
        }])
        .await
        .unwrap();
    key.status = KeyStatus::Revoked;
    key.revoked_at = Some(Timestamp::from_unix_ms(8_000));
    key.revocation_reason = Some("leaked".into());
    key.name = "renamed".into();
    key.updated_at = Timestamp::from_unix_ms(8_000);
    key.uses = 0; // stale in-memory usage must not overwrite the stored counters
    key.last_used_at = None;
    store
        .apply(Changes {
            update_keys: vec![key.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    let stored = store.key(key.id).await.unwrap().unwrap();
    assert_eq!(stored.status, KeyStatus::Revoked);
    assert_eq!(stored.revocation_reason.as_deref(), Some("leaked"));
    assert_eq!(stored.name, "renamed");
    assert_eq!(stored.uses, 3);
    assert_eq!(stored.last_used_at, Some(Timestamp::from_unix_ms(7_000)));

    let missing = store
        .apply(Changes {
            update_keys: vec![sample_key(9, "live")],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn audit_chain(store: &dyn Store) {
    assert_eq!(store.audit_head().await.unwrap(), None);
    let first = sample_entry(1, GENESIS_HASH);
    let second = sample_entry(2, &first.hash);
    store
        .apply(Changes {
            audit: vec![first.clone(), second.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    let head = store.audit_head().await.unwrap().unwrap();
    assert_eq!((head.seq, head.hash.as_str()), (2, second.hash.as_str()));

    // A writer that read an old head cannot fork the chain, and its key change is not written.
    for stale in [
        sample_entry(2, &first.hash),
        sample_entry(3, "f00"),
        sample_entry(4, &second.hash),
    ] {
        let result = store
            .apply(Changes {
                insert_keys: vec![sample_key(6, "live")],
                audit: vec![stale],
                ..Changes::default()
            })
            .await;
        assert!(
            matches!(result, Err(StoreError::AuditConflict)),
            "{result:?}"
        );
        assert_eq!(store.key(sample_key(6, "live").id).await.unwrap(), None);
    }

    let third = sample_entry(3, &second.hash);
    store
        .apply(Changes {
            audit: vec![third.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.audit_entries(0, 10).await.unwrap(),
        vec![first, second.clone(), third.clone()]
    );
    assert_eq!(store.audit_entries(1, 1).await.unwrap(), vec![second]);
    assert_eq!(store.audit_entries(3, 10).await.unwrap(), vec![]);
    // The checkpoint is written with the entries it covers, and read back whole.
    assert_eq!(store.audit_checkpoint().await.unwrap(), None);
    let head = store.audit_head().await.unwrap().unwrap();
    let checkpoint = crate::AuditCheckpoint {
        seq: head.seq,
        hash: head.hash.clone(),
        revoked: 2,
        mac: keyward_core::RecordMac([5; 32]),
    };
    let next = sample_entry(head.seq + 1, &head.hash);
    store
        .apply(Changes {
            audit: vec![next.clone()],
            audit_checkpoint: Some(crate::AuditCheckpoint {
                seq: next.seq,
                hash: next.hash.clone(),
                revoked: 3,
                mac: keyward_core::RecordMac([6; 32]),
            }),
            ..Changes::default()
        })
        .await
        .unwrap();
    let stored = store.audit_checkpoint().await.unwrap().unwrap();
    assert_eq!(stored.seq, next.seq);
    assert_eq!(stored.mac, keyward_core::RecordMac([6; 32]));
    assert_eq!(stored.revoked, 3);
    // A refused write leaves the checkpoint as it was.
    let refused = store
        .apply(Changes {
            audit: vec![sample_entry(head.seq + 1, &head.hash)],
            audit_checkpoint: Some(checkpoint),
            ..Changes::default()
        })
        .await;
    assert!(matches!(refused, Err(StoreError::AuditConflict)));
    assert_eq!(store.audit_checkpoint().await.unwrap().unwrap(), stored);
}

pub async fn usage(store: &dyn Store) {
    let key = sample_key(10, "test");
    store
        .apply(Changes {
            insert_keys: vec![key.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    let at = |ms| Timestamp::from_unix_ms(ms);
    store
        .record_usage(vec![
            KeyUsage {
                id: key.id,
                last_used_at: at(20_000),
                uses: 5,
            },
            KeyUsage {
                id: sample_key(99, "test").id,
                last_used_at: at(1),
                uses: 1,
            },
        ])
        .await
        .unwrap();
    store
        .record_usage(vec![KeyUsage {
            id: key.id,
            last_used_at: at(10_000),
            uses: 2,
        }])
        .await
        .unwrap();
    let stored = store.key(key.id).await.unwrap().unwrap();
    assert_eq!(stored.uses, 7);
    assert_eq!(
        stored.last_used_at,
        Some(at(20_000)),
        "last_used_at never moves back"
    );
}

pub async fn listing(store: &dyn Store) {
    for n in 20..30 {
        store
            .apply(Changes {
                insert_keys: vec![sample_key(n, "test")],
                ..Changes::default()
            })
            .await
            .unwrap();
    }
    let all_test = store
        .list_keys(KeyQuery {
            environment: Some(env("test")),
            limit: 100,
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all_test.len(), 11);
    assert!(
        all_test.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first"
    );

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_keys(KeyQuery {
                environment: Some(env("test")),
                after,
                limit: 4,
                ..KeyQuery::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|k| k.id);
        pages.extend(page);
    }
    assert_eq!(pages, all_test);

    let alice = store
        .list_keys(KeyQuery {
            owner: Some("alice".into()),
            limit: 100,
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert!(!alice.is_empty() && alice.iter().all(|k| k.owner == "alice"));
    let revoked = store
        .list_keys(KeyQuery {
            status: Some(KeyStatus::Revoked),
            limit: 100,
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(revoked.len(), 1);

    // By what was seen of a key (its start), taken literally: no pattern characters.
    let mut leaked = sample_key(31, "test");
    leaked.start = "kw_test_xJ4l".into();
    let mut wild = sample_key(32, "test");
    wild.start = "kw_test_%_ab".into();
    store
        .apply(Changes {
            insert_keys: vec![leaked.clone(), wild.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    let by_start = |prefix: &str| {
        store.list_keys(KeyQuery {
            start_prefix: Some(prefix.into()),
            limit: 100,
            ..KeyQuery::default()
        })
    };
    let ids = |keys: Vec<KeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(ids(by_start("kw_test_xJ4").await.unwrap()), [leaked.id]);
    assert_eq!(ids(by_start("kw_test_xJ4l").await.unwrap()), [leaked.id]);
    assert_eq!(
        ids(by_start("kw_test_xj4").await.unwrap()),
        [],
        "case counts"
    );
    assert_eq!(ids(by_start("kw_test_%").await.unwrap()), [wild.id]);
    assert_eq!(
        by_start("kw_test_").await.unwrap().len(),
        all_test.len() + 2
    );

    // Created before an instant (sample key n was created at 1000 + n ms).
    let before = store
        .list_keys(KeyQuery {
            environment: Some(env("test")),
            created_before: Some(Timestamp::from_unix_ms(1_025)),
            limit: 100,
            ..KeyQuery::default()
        })
        .await
        .unwrap();
    let expected: Vec<KeyId> = all_test
        .iter()
        .filter(|k| k.created_at.unix_ms() < 1_025)
        .map(|k| k.id)
        .collect();
    assert!(expected.len() >= 5);
    assert_eq!(ids(before), expected);
}

pub async fn access_and_roles(store: &dyn Store) {
    // A key's access rules round-trip, and lapsed grants are found by time.
    let mut key = sample_key(40, "live");
    let grant = |p: &str, at: i64| Grant {
        permission: Some(Permission::parse(p).unwrap()),
        role: None,
        expires_at: Timestamp::from_unix_ms(at),
        granted_at: Timestamp::from_unix_ms(1),
        granted_by: "admin".into(),
    };
    key.access = KeyAccess {
        roles: vec![RoleName::parse("support").unwrap()],
        grants: vec![
            grant("orders:write", 50_000),
            grant("orders:delete", 40_000),
        ],
        path_rules: vec![PathRule::parse("GET /v1/orders/**").unwrap()],
        allowed_cidrs: vec![Cidr::parse("10.0.0.0/8").unwrap()],
        denied_cidrs: vec![Cidr::parse("2001:db8::/32").unwrap()],
        admin_environments: Some(vec![env("test")]),
        ratelimits: vec![keyward_core::RateLimit {
            name: "burst".into(),
            limit: 100,
            period_s: 1,
            burst: Some(10),
            rule: Some(PathRule::parse("POST /v1/export/**").unwrap()),
        }],
        plan: None,
        concurrency: Some(keyward_core::ConcurrencyLimit {
            limit: 3,
            lease_timeout_s: 30,
        }),
        quota: Some(keyward_core::QuotaConfig {
            refill: Some(keyward_core::QuotaRefill {
                amount: 1000,
                interval: keyward_core::RefillInterval::Monthly,
            }),
        }),
    };
    store
        .apply(Changes {
            insert_keys: vec![key.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.key(key.id).await.unwrap(), Some(key.clone()));
    let at = |ms| Timestamp::from_unix_ms(ms);
    assert!(
        store
            .keys_with_lapsed_grants(at(39_999), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = store.keys_with_lapsed_grants(at(40_000), 10).await.unwrap();
    assert_eq!(due.iter().map(|k| k.id).collect::<Vec<_>>(), vec![key.id]);
    key.access.grants.retain(|g| g.expires_at > at(40_000));
    store
        .apply(Changes {
            update_keys: vec![key.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert!(
        store
            .keys_with_lapsed_grants(at(45_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .keys_with_lapsed_grants(at(50_000), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    assert_eq!(
        store
            .count_keys_with_role(RoleName::parse("support").unwrap())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .count_keys_with_role(RoleName::parse("other").unwrap())
            .await
            .unwrap(),
        0
    );

    // Roles: create, replace, delete; deleting a missing role is NotFound.
    let role = RoleRecord {
        name: RoleName::parse("support").unwrap(),
        description: Some("first line".into()),
        permissions: vec![Permission::parse("tickets:*").unwrap()],
        builtin: false,
        rotation: None,
        created_at: at(1),
        updated_at: at(1),
        mac: Some(keyward_core::RecordMac([7; 32])),
    };
    store
        .apply(Changes {
            upsert_roles: vec![role.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    let mut changed = role.clone();
    changed
        .permissions
        .push(Permission::parse("orders:read").unwrap());
    changed.updated_at = at(2);
    store
        .apply(Changes {
            upsert_roles: vec![changed.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.roles().await.unwrap(), vec![changed]);
    store
        .apply(Changes {
            delete_roles: vec![role.name.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert!(store.roles().await.unwrap().is_empty());
    let missing = store
        .apply(Changes {
            delete_roles: vec![role.name.clone()],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    // Environment policies are stored and replaced.
    let mut live = store
        .environments()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.name.as_str() == "live")
        .unwrap();
    live.policy.require_expiry = true;
    live.policy.forbidden_permissions = vec![Permission::parse("admin:*").unwrap()];
    store
        .apply(Changes {
            update_environments: vec![live.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    let stored = store
        .environments()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.name.as_str() == "live")
        .unwrap();
    assert_eq!(stored, live);
}

pub async fn plans(store: &dyn Store) {
    let at = |ms| Timestamp::from_unix_ms(ms);
    let plan = PlanRecord {
        name: PlanName::parse("pro").unwrap(),
        description: Some("paying customers".into()),
        ratelimits: vec![keyward_core::RateLimit {
            name: "burst".into(),
            limit: 100,
            period_s: 1,
            burst: None,
            rule: None,
        }],
        graduated: Some(keyward_core::Graduated {
            warning_percent: 90,
            block: Some(keyward_core::BlockRule {
                violations: 3,
                within_s: 60,
                block_s: 300,
                disable_after_blocks: Some(2),
            }),
        }),
        quota: Some(keyward_core::QuotaRefill {
            amount: 10_000,
            interval: keyward_core::RefillInterval::Monthly,
        }),
        created_at: at(1),
        updated_at: at(1),
        mac: Some(keyward_core::RecordMac([8; 32])),
    };
    store
        .apply(Changes {
            upsert_plans: vec![plan.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    let mut changed = plan.clone();
    changed.ratelimits[0].limit = 200;
    changed.updated_at = at(2);
    store
        .apply(Changes {
            upsert_plans: vec![changed.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.plans().await.unwrap(), vec![changed]);

    let mut key = sample_key(60, "live");
    key.access.plan = Some(plan.name.clone());
    store
        .apply(Changes {
            insert_keys: vec![key.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.count_keys_with_plan(plan.name.clone()).await.unwrap(),
        1
    );
    assert_eq!(
        store
            .count_keys_with_plan(PlanName::parse("free").unwrap())
            .await
            .unwrap(),
        0
    );
    key.status = KeyStatus::Revoked;
    store
        .apply(Changes {
            update_keys: vec![key],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.count_keys_with_plan(plan.name.clone()).await.unwrap(),
        0
    );

    store
        .apply(Changes {
            delete_plans: vec![plan.name.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert!(store.plans().await.unwrap().is_empty());
    let missing = store
        .apply(Changes {
            delete_plans: vec![plan.name],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn quotas(store: &dyn Store) {
    let at = |ms| Timestamp::from_unix_ms(ms);
    let key = sample_key(70, "live");
    store
        .apply(Changes {
            insert_keys: vec![key.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.quota_state(key.id).await.unwrap(), None);
    // Spending writes the count (a key on a plan's quota gets its first count this way).
    let first = keyward_core::QuotaState {
        remaining: 5,
        period_start: at(1),
    };
    let spend = |state, spent| crate::QuotaSpend {
        id: key.id,
        state,
        spent,
    };
    let stored = store.spend_quotas(vec![spend(first, 0)]).await.unwrap();
    assert_eq!(stored, vec![(key.id, first)]);
    assert_eq!(store.quota_state(key.id).await.unwrap(), Some(first));
    let granted = keyward_core::QuotaState {
        remaining: 100,
        period_start: at(1_000),
    };
    store
        .apply(Changes {
            set_quotas: vec![(key.id, Some(granted))],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.quota_state(key.id).await.unwrap(), Some(granted));
    // Two nodes spend from the same count: both spends are subtracted, whatever each believed
    // remained.
    let node_a = keyward_core::QuotaState {
        remaining: 97,
        period_start: at(1_000),
    };
    let node_b = keyward_core::QuotaState {
        remaining: 95,
        period_start: at(1_000),
    };
    store.spend_quotas(vec![spend(node_a, 3)]).await.unwrap();
    let stored = store.spend_quotas(vec![spend(node_b, 5)]).await.unwrap();
    let both = keyward_core::QuotaState {
        remaining: 92,
        period_start: at(1_000),
    };
    assert_eq!(stored, vec![(key.id, both)]);
    assert_eq!(store.quota_state(key.id).await.unwrap(), Some(both));
    // Never below zero.
    let stored = store.spend_quotas(vec![spend(node_a, 500)]).await.unwrap();
    assert_eq!(stored[0].1.remaining, 0);
    // A node that refilled into a newer period sets the count; spending in the older one is
    // dropped.
    let refilled = keyward_core::QuotaState {
        remaining: 99,
        period_start: at(2_000),
    };
    store.spend_quotas(vec![spend(refilled, 1)]).await.unwrap();
    let stored = store.spend_quotas(vec![spend(node_a, 7)]).await.unwrap();
    assert_eq!(stored, vec![(key.id, refilled)]);
    store
        .apply(Changes {
            set_quotas: vec![(key.id, None)],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.quota_state(key.id).await.unwrap(), None);
    let missing = store
        .apply(Changes {
            set_quotas: vec![(sample_key(71, "live").id, Some(granted))],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn events(store: &dyn Store) {
    let event = |n: u64| keyward_core::Event {
        seq: 0,
        ts: Timestamp::from_unix_ms(i64::try_from(n).unwrap()),
        kind: "ratelimit.warning".into(),
        key_id: n.is_multiple_of(2).then(|| sample_key(1, "live").id),
        details: serde_json::json!({"n": n}),
    };
    store
        .append_events((1..=5).map(event).collect())
        .await
        .unwrap();
    let all = store.events(0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "seq increases");
    assert_eq!(all[1].key_id, Some(sample_key(1, "live").id));
    assert_eq!(all[0].details, serde_json::json!({"n": 1}));
    assert_eq!(
        store.events(all[2].seq, 100).await.unwrap(),
        all[3..].to_vec()
    );
    assert_eq!(store.events(0, 2).await.unwrap(), all[..2].to_vec());
}

/// A stand-in ciphertext with the barrier's header (format byte, then the term big-endian).
fn sealed(term: u32, fill: u8) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&term.to_be_bytes());
    out.extend_from_slice(&[fill; 40]);
    out
}

fn meta(environment: &str, path: &str, current_version: u64) -> SecretMeta {
    SecretMeta {
        environment: env(environment),
        path: path.into(),
        owner: Some("payments".into()),
        purpose: None,
        max_versions: 10,
        cas_required: false,
        custom: serde_json::json!({"ticket": "SEC-1"})
            .as_object()
            .cloned()
            .unwrap(),
        current_version,
        created_at: Timestamp::from_unix_ms(5),
        updated_at: Timestamp::from_unix_ms(6),
        incarnation: Some(format!("inc-{path}")),
    }
}

fn version(environment: &str, path: &str, n: u64, term: u32) -> SecretVersion {
    SecretVersion {
        environment: env(environment),
        path: path.into(),
        version: n,
        ciphertext: Some(sealed(term, n as u8)),
        created_at: Timestamp::from_unix_ms(10 + n as i64),
        deleted_at: None,
        destroyed: false,
    }
}

/// Vault records, keyrings, sealed environment secrets, versioned secrets, leases and rewrap.
pub async fn vault(store: &dyn Store) {
    assert_eq!(store.vault().await.unwrap(), None);
    let mut record = VaultRecord {
        tag: [1, 2, 3, 4],
        shares: 5,
        threshold: 3,
        sealed_root: vec![9; 60],
        term: 1,
        created_at: Timestamp::from_unix_ms(1),
        rewrap: None,
        mac: Some(keyward_core::RecordMac([3; 32])),
    };
    store
        .apply(Changes {
            vault: Some(record.clone()),
            keyrings: vec![StoredKeyring {
                scope: "env:live".into(),
                sealed: vec![1; 50],
            }],
            environment_secrets: vec![(env("live"), sealed(1, 7)), (env("test"), sealed(1, 8))],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.vault().await.unwrap(), Some(record.clone()));
    assert_eq!(store.keyrings().await.unwrap().len(), 1);
    assert_eq!(
        store.environment_secrets().await.unwrap(),
        vec![(env("live"), sealed(1, 7)), (env("test"), sealed(1, 8))]
    );
    let missing = store
        .apply(Changes {
            environment_secrets: vec![(env("nope"), sealed(1, 1))],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );

    // Secrets and versions; a prefix matches literally (no LIKE wildcards).
    store
        .apply(Changes {
            upsert_secrets: vec![
                meta("live", "a_b/x", 2),
                meta("live", "axb/y", 1),
                meta("test", "a_b/z", 1),
            ],
            upsert_secret_versions: vec![
                version("live", "a_b/x", 1, 1),
                version("live", "a_b/x", 2, 1),
                version("live", "axb/y", 1, 1),
            ],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.secret(env("live"), "a_b/x".into()).await.unwrap(),
        Some(meta("live", "a_b/x", 2))
    );
    let versions = store
        .secret_versions(env("live"), "a_b/x".into())
        .await
        .unwrap();
    assert_eq!(
        versions,
        vec![
            version("live", "a_b/x", 1, 1),
            version("live", "a_b/x", 2, 1)
        ]
    );
    assert_eq!(
        store
            .secret_version(env("live"), "a_b/x".into(), 2)
            .await
            .unwrap(),
        Some(version("live", "a_b/x", 2, 1))
    );
    let listed = store
        .list_secrets(env("live"), "a_b".into(), None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(),
        ["a_b/x"]
    );
    let all = store
        .list_secrets(env("live"), String::new(), Some("a_b/x".into()), 10)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(),
        ["axb/y"]
    );

    // Stale values, and a rewrap that writes only where the stored value is still the old one.
    assert_eq!(store.count_stale_sealed(2).await.unwrap(), 2 + 3);
    let stale = store.stale_sealed(2, 100).await.unwrap();
    assert_eq!(stale.len(), 5);
    assert!(stale.iter().all(|v| v.ciphertext()[4] == 1));
    let progress = RewrapProgress {
        term: 2,
        started_at: Timestamp::from_unix_ms(20),
        total: 5,
        done: 2,
        finished_at: None,
    };
    let written = store
        .rewrap(
            vec![
                Rewrapped {
                    value: SealedValue::EnvironmentSecret {
                        environment: env("live"),
                        ciphertext: sealed(2, 7),
                    },
                    old: sealed(1, 7),
                    term: 2,
                },
                Rewrapped {
                    value: SealedValue::SecretVersion {
                        environment: env("live"),
                        path: "a_b/x".into(),
                        version: 1,
                        ciphertext: sealed(2, 1),
                    },
                    old: sealed(1, 99), // not what is stored: left alone
                    term: 2,
                },
            ],
            progress,
        )
        .await
        .unwrap();
    assert_eq!(written, 1);
    assert_eq!(store.count_stale_sealed(2).await.unwrap(), 4);
    record.rewrap = Some(progress);
    assert_eq!(store.vault().await.unwrap(), Some(record));

    // Destroying a value drops it from the stale set; deleting a secret drops its versions.
    let mut destroyed = version("live", "a_b/x", 1, 1);
    destroyed.ciphertext = None;
    destroyed.destroyed = true;
    store
        .apply(Changes {
            upsert_secret_versions: vec![destroyed.clone()],
            delete_secret_versions: vec![(env("live"), "a_b/x".into(), 2)],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .secret_versions(env("live"), "a_b/x".into())
            .await
            .unwrap(),
        vec![destroyed]
    );
    assert_eq!(store.count_stale_sealed(2).await.unwrap(), 2);
    store
        .apply(Changes {
            delete_secrets: vec![(env("live"), "axb/y".into())],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.secret(env("live"), "axb/y".into()).await.unwrap(),
        None
    );
    assert!(
        store
            .secret_versions(env("live"), "axb/y".into())
            .await
            .unwrap()
            .is_empty()
    );

    // Leases: by id, by prefix, open ones, lapsed ones.
    let lease = |id: &str, path: &str, expires: i64| VaultLease {
        id: id.into(),
        kind: LeaseKind::Key,
        path: path.into(),
        environment: env("live"),
        key_id: Some(sample_key(1, "live").id),
        secret_version: None,
        actor: "admin".into(),
        issued_at: Timestamp::from_unix_ms(0),
        expires_at: Timestamp::from_unix_ms(expires),
        max_expires_at: Timestamp::from_unix_ms(expires * 2),
        ended_at: None,
        end_reason: None,
        mac: Some(keyward_core::RecordMac([7; 32])),
    };
    let mut ended = lease("l3", "keys/live/web", 50);
    ended.ended_at = Some(Timestamp::from_unix_ms(40));
    ended.end_reason = Some("revoked".into());
    store
        .apply(Changes {
            upsert_leases: vec![
                lease("l1", "keys/live/ci-a", 100),
                lease("l2", "keys/live/ci-b", 300),
                ended.clone(),
            ],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.lease("l3".into()).await.unwrap(), Some(ended));
    let ci = store
        .leases("keys/live/ci-".into(), true, None, 10)
        .await
        .unwrap();
    assert_eq!(
        ci.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["l1", "l2"]
    );
    assert_eq!(
        store
            .leases(String::new(), true, None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .leases(String::new(), false, None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    let lapsed = store
        .lapsed_leases(Timestamp::from_unix_ms(200), 10)
        .await
        .unwrap();
    assert_eq!(
        lapsed.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["l1"]
    );

    // A relaxed write is readable at once; sync makes it durable.
    let head = store.audit_head().await.unwrap();
    let (seq, prev) = head.map_or((0, GENESIS_HASH.to_owned()), |h| (h.seq, h.hash));
    store
        .apply(Changes {
            audit: vec![sample_entry(seq + 1, &prev)],
            relaxed: true,
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.audit_head().await.unwrap().unwrap().seq, seq + 1);
    store.sync().await.unwrap();
}

/// Rotation: a key's lifecycle and a role's policy round-trip; the scheduler's scan sees every
/// key that may still be rotated, in id order, and no other; a handover is collected once.
pub async fn rotation(store: &dyn Store) {
    let policy = keyward_core::RotationPolicy {
        every_days: 30,
        grace_hours: 48,
        notice_days: 7,
        delivery_cap_hours: None,
    };
    let mut keys: Vec<KeyRecord> = (150..156).map(|n| sample_key(n, "live")).collect();
    keys[0].lifecycle.rotation = Some(policy);
    keys[1].status = KeyStatus::Revoked;
    keys[2].rolled_to = Some(keys[3].id);
    keys[2].lifecycle.rolled_by = Some(keyward_core::RollCause::Schedule);
    keys[3].rolled_from = Some(keys[2].id);
    keys[4].status = KeyStatus::Disabled;
    keys[5].access.roles = vec![RoleName::parse("rotated").unwrap()];
    keys[5].access.grants = vec![keyward_core::Grant {
        permission: None,
        role: Some(RoleName::parse("rotated").unwrap()),
        expires_at: Timestamp::from_unix_ms(90_000),
        granted_at: Timestamp::from_unix_ms(1),
        granted_by: "admin".into(),
    }];
    keys[5].expires_at = Some(Timestamp::from_unix_ms(80_000));
    let role = RoleRecord {
        name: RoleName::parse("rotated").unwrap(),
        description: None,
        permissions: vec![Permission::parse("invoices:read").unwrap()],
        builtin: false,
        rotation: Some(policy),
        created_at: Timestamp::from_unix_ms(1),
        updated_at: Timestamp::from_unix_ms(1),
        mac: None,
    };
    store
        .apply(Changes {
            insert_keys: keys.clone(),
            upsert_roles: vec![role.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.key(keys[0].id).await.unwrap().as_ref(),
        Some(&keys[0])
    );
    assert_eq!(
        store.key(keys[2].id).await.unwrap().as_ref(),
        Some(&keys[2])
    );
    let stored = store.roles().await.unwrap();
    assert_eq!(stored.iter().find(|r| r.name == role.name), Some(&role));

    // The scan, two at a time: neither the revoked key nor the rolled one, each as the summary
    // of its record.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.rotation_candidates(after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        assert!(page.len() <= 2);
        seen.extend(
            page.into_iter()
                .filter(|found| keys.iter().any(|k| k.id == found.id)),
        );
    }
    let expected: Vec<_> = [0, 3, 4, 5].map(|i| keys[i].summary()).into();
    assert_eq!(seen, expected);

    let handover = Handover {
        predecessor: keys[2].id,
        successor: keys[3].id,
        environment: env("live"),
        sealed: vec![7; 40],
        expires_at: Timestamp::from_unix_ms(50_000),
        attempts: 0,
        next_attempt_at: Some(Timestamp::from_unix_ms(40_000)),
        last_error: None,
    };
    store
        .apply(Changes {
            insert_handovers: vec![handover.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.handover(keys[2].id).await.unwrap(),
        Some(handover.clone())
    );
    assert_eq!(store.handover(keys[3].id).await.unwrap(), None);
    assert_eq!(
        store
            .lapsed_handovers(Timestamp::from_unix_ms(49_999), 10)
            .await
            .unwrap(),
        Vec::<KeyId>::new()
    );
    assert_eq!(
        store
            .lapsed_handovers(Timestamp::from_unix_ms(50_000), 10)
            .await
            .unwrap(),
        vec![keys[2].id]
    );
    // A second handover for the same predecessor is a conflict.
    let twice = store
        .apply(Changes {
            insert_handovers: vec![handover.clone()],
            ..Changes::default()
        })
        .await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    // Its delivery state moves; due ones are found by time.
    let none: Vec<Handover> = Vec::new();
    assert_eq!(
        store
            .due_handovers(Timestamp::from_unix_ms(39_999), 10)
            .await
            .unwrap(),
        none
    );
    assert_eq!(
        store
            .due_handovers(Timestamp::from_unix_ms(40_000), 10)
            .await
            .unwrap(),
        vec![handover.clone()]
    );
    let retried = Handover {
        attempts: 2,
        next_attempt_at: Some(Timestamp::from_unix_ms(45_000)),
        last_error: Some("refused".into()),
        ..handover.clone()
    };
    store
        .apply(Changes {
            update_handovers: vec![retried.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.handover(keys[2].id).await.unwrap(), Some(retried));
    let missing = store
        .apply(Changes {
            update_handovers: vec![Handover {
                predecessor: keys[5].id,
                ..handover.clone()
            }],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    // Collected once: the second collection fails, and the write with it.
    let collect = |name: &str| Changes {
        delete_handovers: vec![keys[2].id],
        audit: Vec::new(),
        update_keys: vec![KeyRecord {
            name: name.to_owned(),
            ..keys[5].clone()
        }],
        ..Changes::default()
    };
    store.apply(collect("collected")).await.unwrap();
    assert_eq!(store.handover(keys[2].id).await.unwrap(), None);
    let again = store.apply(collect("collected twice")).await;
    assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
    assert_eq!(
        store.key(keys[5].id).await.unwrap().unwrap().name,
        "collected"
    );
}

/// The outbox and webhooks: events keep their order and are written once by id; an endpoint
/// and its deliveries round-trip; a delivery's state moves, and the backlog counts the pending.
pub async fn webhooks(store: &dyn Store) {
    use keyward_core::{
        DeliveryState, EventType, OutboxEvent, SealedSigningSecret, WebhookDelivery,
        WebhookEndpoint,
    };
    assert_eq!(store.outbox_head().await.unwrap(), 0);
    let event = |id: &str, n: i64| OutboxEvent {
        seq: 0,
        id: id.to_owned(),
        kind: EventType::KeyRevoked,
        ts: Timestamp::from_unix_ms(10_000 + n),
        key_id: Some(sample_key(1, "live").id),
        environment: Some(env("live")),
        owner: Some("alice".into()),
        data: serde_json::json!({"n": n}),
        only: None,
        mac: None,
    };
    store
        .apply(Changes {
            outbox: vec![event("msg_a", 1), event("msg_b", 2)],
            ..Changes::default()
        })
        .await
        .unwrap();
    // A second write of an id already there is left out; the rest of the write goes in.
    store
        .apply(Changes {
            outbox: vec![event("msg_b", 99), event("msg_c", 3)],
            ..Changes::default()
        })
        .await
        .unwrap();
    let all = store.outbox_after(0, 10).await.unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["msg_a", "msg_b", "msg_c"]);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all[1].data, serde_json::json!({"n": 2}));
    assert_eq!(store.outbox_head().await.unwrap(), all[2].seq);
    assert_eq!(
        store.outbox_after(all[0].seq, 1).await.unwrap()[0].id,
        "msg_b"
    );
    assert_eq!(
        store.outbox_event(all[2].seq).await.unwrap(),
        Some(all[2].clone())
    );
    let mut has = store
        .outbox_has(vec!["msg_c".into(), "msg_z".into(), "msg_a".into()])
        .await
        .unwrap();
    has.sort();
    assert_eq!(has, ["msg_a", "msg_c"]);

    let endpoint = WebhookEndpoint {
        id: "wh_1".into(),
        url: "https://hooks.example.com/keyward".into(),
        description: Some("ops".into()),
        event_types: vec![EventType::KeyRevoked],
        environment: Some(env("live")),
        owner: None,
        secrets: vec![SealedSigningSecret {
            sealed: "00ff".into(),
            created_at: Timestamp::from_unix_ms(1),
            expires_at: None,
        }],
        enabled: true,
        disabled_reason: None,
        cursor: all[0].seq,
        created_at: Timestamp::from_unix_ms(1),
        updated_at: Timestamp::from_unix_ms(1),
        mac: Some(keyward_core::RecordMac([9; 32])),
    };
    let delivery = |seq: u64, state: DeliveryState| WebhookDelivery {
        endpoint: "wh_1".into(),
        seq,
        event_id: format!("msg_{seq}"),
        kind: EventType::KeyRevoked,
        key_id: None,
        state,
        attempts: 0,
        next_attempt_at: Timestamp::from_unix_ms(20_000),
        last_status: None,
        last_error: None,
        delivered_at: None,
        created_at: Timestamp::from_unix_ms(20_000 + i64::try_from(seq).unwrap()),
    };
    store
        .apply(Changes {
            upsert_webhooks: vec![endpoint.clone()],
            upsert_deliveries: vec![
                delivery(all[1].seq, DeliveryState::Pending),
                delivery(all[2].seq, DeliveryState::Pending),
            ],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(store.webhooks().await.unwrap(), vec![endpoint.clone()]);
    let pending = store.pending_deliveries("wh_1".into(), 10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].seq, all[1].seq);
    let (count, oldest) = store.delivery_backlog().await.unwrap();
    assert_eq!(count, 2);
    assert_eq!(oldest, Some(pending[0].created_at));

    let mut done = pending[0].clone();
    done.state = DeliveryState::Delivered;
    done.attempts = 1;
    done.last_status = Some(204);
    store
        .apply(Changes {
            upsert_deliveries: vec![done.clone()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.delivery("wh_1".into(), done.seq).await.unwrap(),
        Some(done.clone())
    );
    assert_eq!(
        store
            .pending_deliveries("wh_1".into(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let log = store.deliveries("wh_1".into(), None, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|d| d.seq).collect::<Vec<_>>(),
        [all[2].seq, all[1].seq]
    );
    let older = store
        .deliveries("wh_1".into(), Some(all[2].seq), 10)
        .await
        .unwrap();
    assert_eq!(older, vec![done]);
    assert_eq!(store.delivery_backlog().await.unwrap().0, 1);

    // Removing an endpoint removes its deliveries; removing one that is not there fails.
    store
        .apply(Changes {
            delete_webhooks: vec!["wh_1".into()],
            ..Changes::default()
        })
        .await
        .unwrap();
    assert!(store.webhooks().await.unwrap().is_empty());
    assert!(
        store
            .deliveries("wh_1".into(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let missing = store
        .apply(Changes {
            delete_webhooks: vec!["wh_1".into()],
            ..Changes::default()
        })
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}
