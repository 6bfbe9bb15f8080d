use super::*;

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("keyward.db")).unwrap();
    crate::conformance::run(&store).await;
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
                }],
                insert_keys: vec![crate::conformance::sample_key(1, "live")],
                ..Changes::default()
            })
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert!(
        store
            .key(crate::conformance::sample_key(1, "live").id)
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
            audit: vec![crate::conformance::sample_entry(1, GENESIS_HASH)],
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
