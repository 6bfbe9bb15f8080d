use super::*;
use keyward_store::prelude::*;

/// Each clause of the contract, on a fresh store of its own.
mod clause {
    use super::*;

    struct Fresh {
        store: SqliteStore,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Fresh {
        type Target = SqliteStore;
        fn deref(&self) -> &SqliteStore {
            &self.store
        }
    }

    fn fresh() -> Fresh {
        let dir = tempfile::tempdir().unwrap();
        Fresh {
            store: SqliteStore::open(&dir.path().join("keyward.db")).unwrap(),
            _dir: dir,
        }
    }

    keyward_store::conformance_tests!(
        environments, keys_round_trip, writes_are_atomic, updates, audit_chain, usage, listing,
        access_and_roles, plans, quotas, events, vault, rotation, webhooks, change_feed;
        fresh()
    );
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .apply(Changes {
                environments: vec![EnvironmentRecord {
                    name: EnvironmentName::parse("live").unwrap(),
                    created_at: Timestamp::from_unix_ms(1),
                    policy: keyward_core::EnvironmentPolicy::default(),
                    mac: None,
                }],
                insert_keys: vec![keyward_store::conformance::sample_key(1, "live")],
                ..Changes::default()
            })
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert!(
        store
            .key(keyward_store::conformance::sample_key(1, "live").id)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn audit_rows_cannot_be_changed_through_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .apply(Changes {
            audit: vec![keyward_store::conformance::sample_entry(1, GENESIS_HASH)],
            ..Changes::default()
        })
        .await
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    assert!(
        conn.execute("UPDATE audit_log SET actor = 'x'", [])
            .is_err()
    );
    assert!(conn.execute("DELETE FROM audit_log", []).is_err());
}

#[tokio::test]
async fn a_version_1_store_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO environments (name, created_at) VALUES ('live', 1);
             INSERT INTO keys (id, service, environment, hash, start, name, owner, permissions, meta,
                               created_at, updated_at, status)
             VALUES ('01a22198-ed00-7000-8000-000000000001', 'default', 'live', zeroblob(32),
                     'kw_live_abcd', 'old', 'team', '[\"a:b\"]', '{}', 1, 1, 'active');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let key = store
        .key("01a22198-ed00-7000-8000-000000000001".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.name, "old");
    assert_eq!(key.access, keyward_core::KeyAccess::default());
    let envs = store.environments().await.unwrap();
    assert_eq!(envs[0].policy, keyward_core::EnvironmentPolicy::default());
}
