//! The vault through the HTTP API: the barrier at rest, seal and unseal, rotation, secrets and
//! leases.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use keyward_testkit::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

async fn write(app: &TestApp, path: &str, data: Value) -> (u16, Value) {
    app.call(
        Method::PUT,
        &format!("/v1/secrets/{path}"),
        Some(json!({ "data": data })),
    )
    .await
}

async fn read(app: &TestApp, path: &str) -> (u16, Value) {
    app.call(Method::GET, &format!("/v1/secrets/{path}"), None)
        .await
}

async fn unseal(app: &TestApp, body: Value) -> (u16, Value) {
    let resp = app
        .client
        .post(app.url("/v1/sys/unseal"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn seal(app: &TestApp) {
    let (status, body) = app.call(Method::POST, "/v1/sys/seal", None).await;
    assert_eq!(status, 200, "{body}");
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn the_data_dir_reveals_no_secret_and_no_key() {
    let mut app = spawn_app().await;
    let values = [
        "sk_live_51HxQpStripeSecretValue0001",
        "correct horse battery staple 0002",
        "postgres://app:Pa55w0rd-0003@db/app",
    ];
    for (i, value) in values.iter().enumerate() {
        let (status, body) = write(&app, &format!("live/app/s{i}"), json!({ "v": value })).await;
        assert_eq!(status, 200, "{body}");
    }
    let key = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Rotate so that values exist under two terms, and let the rewrap finish.
    assert_eq!(app.call(Method::POST, "/v1/sys/rotate", None).await.0, 200);
    write(&app, "live/app/late", json!({ "v": "late-value-0004" })).await;
    app.shutdown().await;
    let mut needles: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    needles.push("late-value-0004".into());
    needles.push(key.clone());
    needles.push(app.root_key.clone());
    needles.push(app.unseal_key.clone());
    needles.extend(app.shares.iter().cloned());
    // The unseal key's hex without its prefix, and the keys' secret parts alone.
    needles.push(app.unseal_key["kwunseal1-".len()..].to_owned());
    needles.push(key[key.len() - 30..].to_owned());
    let files = files_under(&app.data_dir());
    assert!(!files.is_empty());
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} holds a secret ({}…)",
                file.display(),
                &needle[..6]
            );
        }
    }
}

#[tokio::test]
async fn swapped_ciphertexts_fail_their_integrity_check() {
    let app = spawn_app().await;
    write(&app, "live/a", json!({ "v": "alpha" })).await;
    write(&app, "live/b", json!({ "v": "bravo" })).await;
    let db = app.data_dir().join("keyward.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "UPDATE secret_versions SET ciphertext = (SELECT ciphertext FROM secret_versions WHERE path = 'b') WHERE path = 'a';",
    )
    .unwrap();
    let (status, body) = read(&app, "live/a").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "INTEGRITY");
    assert!(!body.to_string().contains("bravo"));
    // A flipped byte: the same.
    conn.execute_batch(
        "UPDATE secret_versions SET ciphertext = CAST(zeroblob(60) AS BLOB) WHERE path = 'b';",
    )
    .unwrap();
    let (status, body) = read(&app, "live/b").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "INTEGRITY");
}

#[tokio::test]
async fn any_three_of_five_shares_unseal_and_two_do_not() {
    let app = spawn_app().await;
    let key = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for picked in [[0, 1, 2], [2, 3, 4], [0, 2, 4], [4, 1, 3]] {
        seal(&app).await;
        let (status, body) = app.call(Method::GET, "/v1/keys", None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("SEALED"))
        );
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        for (n, i) in picked.iter().enumerate() {
            let (status, body) = unseal(&app, json!({ "share": app.shares[*i] })).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["sealed"], n < 2, "{picked:?} after {}", n + 1);
            assert_eq!(body["progress"], if n < 2 { n + 1 } else { 0 });
        }
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    // Two shares, then a reset: still sealed, no progress.
    seal(&app).await;
    unseal(&app, json!({ "share": app.shares[0] })).await;
    let (status, body) = unseal(&app, json!({ "share": app.shares[0] })).await;
    assert_eq!(status, 400, "a duplicate share: {body}");
    unseal(&app, json!({ "share": app.shares[1] })).await;
    let (_, body) = unseal(&app, json!({ "reset": true })).await;
    assert_eq!(
        (body["sealed"].as_bool(), body["progress"].as_u64()),
        (Some(true), Some(0))
    );
    // A share of another vault is refused on sight.
    let other = spawn_app().await;
    let (status, body) = unseal(&app, json!({ "share": other.shares[0] })).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another keyward vault")
    );
    // A well-formed share of this vault that is wrong: the combination fails, without saying
    // which share was wrong, and progress starts over.
    let record = app.store.inner_vault().await;
    let wrong = keyward_crypto::barrier::split(
        &keyward_crypto::barrier::UnsealKey::generate().unwrap(),
        5,
        3,
        &record.tag,
    )
    .unwrap()[4]
        .to_text()
        .to_string();
    unseal(&app, json!({ "share": app.shares[0] })).await;
    unseal(&app, json!({ "share": app.shares[1] })).await;
    let (status, body) = unseal(&app, json!({ "share": wrong })).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("do not unseal")
    );
    let (_, status) = app.call(Method::GET, "/v1/sys/seal-status", None).await;
    assert_eq!(
        (status["sealed"].as_bool(), status["progress"].as_u64()),
        (Some(true), Some(0))
    );
    // The whole key unseals too; a wrong key does not.
    let (status, _) = unseal(&app, json!({ "key": other.unseal_key })).await;
    assert_eq!(status, 400);
    let (status, body) = unseal(&app, json!({ "key": app.unseal_key })).await;
    assert_eq!((status, body["sealed"].as_bool()), (200, Some(false)));
    // Unseal and seal are audited, never with a share.
    let audit = serde_json::to_string(&app.audit().await).unwrap();
    assert!(audit.contains("vault.seal") && audit.contains("vault.unseal"));
    for share in &app.shares {
        assert!(!audit.contains(&share[15..50]));
    }
}

#[tokio::test]
async fn unseal_of_three_shares_takes_well_under_100_ms() {
    let app = spawn_app().await;
    seal(&app).await;
    unseal(&app, json!({ "share": app.shares[0] })).await;
    unseal(&app, json!({ "share": app.shares[1] })).await;
    let started = Instant::now();
    let (status, _) = unseal(&app, json!({ "share": app.shares[2] })).await;
    assert_eq!(status, 200);
    // Not a performance target (benches hold those), only a sanity bound on a debug build.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn no_request_is_served_after_seal_returns() {
    let app = spawn_app().await;
    let key = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let sealed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, root, key, sealed_at) = (
            app.client.clone(),
            app.url("/v1/verify"),
            app.root_key.clone(),
            key.clone(),
            sealed_at.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut after_seal = 0;
            for _ in 0..400 {
                let sent = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(&root)
                    .json(&json!({ "key": key }))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let seal_done = *sealed_at.lock().unwrap();
                if let Some(done) = seal_done
                    && sent > done
                {
                    assert_eq!(status, 503, "a request sent after the seal was served");
                    after_seal += 1;
                }
                assert!(status == 200 || status == 503, "{status}");
            }
            after_seal
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    seal(&app).await;
    *sealed_at.lock().unwrap() = Some(Instant::now());
    let mut refused = 0;
    for w in workers {
        refused += w.await.unwrap();
    }
    assert!(refused > 0, "the load ended before the seal");
}

#[tokio::test]
async fn rotation_rewraps_every_value_and_old_terms_still_read() {
    let app = spawn_app().await;
    for i in 0..30 {
        write(&app, &format!("test/bulk/{i}"), json!({ "n": i })).await;
    }
    let (status, body) = app.call(Method::POST, "/v1/sys/rotate", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["term"], 2);
    assert_eq!(
        body["rewrap"]["total"],
        30 + 3,
        "30 secrets and 3 HMAC secrets"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = app.call(Method::GET, "/v1/sys/keyring", None).await;
        if !status["rewrap"]["finished_at"].is_null() {
            assert_eq!(status["rewrap"]["done"], 33);
            break;
        }
        assert!(Instant::now() < deadline, "rewrap did not finish: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.store.count_stale(2).await, 0);
    for i in 0..30 {
        let (status, body) = read(&app, &format!("test/bulk/{i}")).await;
        assert_eq!((status, body["data"]["n"].as_i64()), (200, Some(i)));
    }
    let key = app.create_key("test", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.verify_code(&key).await, "VALID");
    let audit = serde_json::to_string(&app.audit().await).unwrap();
    assert!(audit.contains("vault.rotate") && audit.contains("vault.rewrap.finish"));
}

#[tokio::test]
async fn rekey_replaces_the_shares() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/sys/rekey",
            Some(json!({ "shares": app.shares[1..4], "new_shares": 3, "new_threshold": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new: Vec<String> = serde_json::from_value(body["shares"].clone()).unwrap();
    assert_eq!(new.len(), 3);
    // Two current shares are not a quorum.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/sys/rekey",
            Some(json!({ "shares": new[..1], "new_shares": 3, "new_threshold": 2 })),
        )
        .await;
    assert_eq!(status, 400);
    seal(&app).await;
    let (status, _) = unseal(&app, json!({ "share": app.shares[0] })).await;
    assert_eq!(status, 400, "an old share still counted");
    unseal(&app, json!({ "share": new[2] })).await;
    let (_, body) = unseal(&app, json!({ "share": new[0] })).await;
    assert_eq!(body["sealed"], false);
    // Audited with the new split, never with a share.
    let audit = app.audit().await;
    let rekey = audit.iter().find(|e| e["action"] == "vault.rekey").unwrap();
    assert_eq!(rekey["details"]["shares"], 3);
    assert_eq!(rekey["details"]["threshold"], 2);
    assert_eq!(rekey["details"]["new_root_key"], true);
    let text = serde_json::to_string(&audit).unwrap();
    for share in app.shares.iter().chain(&new) {
        assert!(!text.contains(&share[15..50]));
    }
}

#[tokio::test]
async fn retired_shares_and_a_backup_of_the_old_vault_record_open_nothing_after_a_rekey() {
    let mut app = spawn_app().await;
    write(&app, "live/db", json!({ "password": "p1" })).await;
    let db = app.data_dir().join("keyward.db");
    let backup: (Vec<u8>, Vec<u8>, Option<Vec<u8>>) = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT sealed_root, tag, mac FROM vault", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap()
    };
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/sys/rekey",
            Some(json!({ "shares": app.shares[0..3], "new_shares": 3, "new_threshold": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.shutdown().await;
    // The attacker holds the retired key (a quorum of retired shares) and restores the vault
    // record from before the rekey: the keyrings are sealed under the new root key now.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "UPDATE vault SET sealed_root = ?1, tag = ?2, mac = ?3",
            rusqlite::params![backup.0, backup.1, backup.2],
        )
        .unwrap();
    }
    let store: std::sync::Arc<dyn keyward_store::Store> =
        std::sync::Arc::new(keyward_store_sqlite::SqliteStore::open(&db).unwrap());
    let node = keyward_service::Node::open(
        store,
        std::sync::Arc::new(app.clock.clone()),
        keyward_service::AuthorityConfig::default(),
    )
    .await
    .unwrap();
    let retired = keyward_crypto::barrier::UnsealKey::from_text(&app.unseal_key).unwrap();
    assert!(node.unseal_with_key(&retired, "key").await.is_err());
    assert!(node.is_sealed());
}

#[tokio::test]
async fn an_unreadable_value_is_quarantined_instead_of_stalling_the_rewrap() {
    let app = spawn_app().await;
    for i in 0..10 {
        write(&app, &format!("test/q/{i}"), json!({ "n": i })).await;
    }
    {
        let conn = rusqlite::Connection::open(app.data_dir().join("keyward.db")).unwrap();
        let mut blob: Vec<u8> = conn
            .query_row(
                "SELECT ciphertext FROM secret_versions WHERE path = 'q/3'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        conn.execute(
            "UPDATE secret_versions SET ciphertext = ?1 WHERE path = 'q/3'",
            [blob],
        )
        .unwrap();
    }
    let (status, _) = app.call(Method::POST, "/v1/sys/rotate", None).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = app.call(Method::GET, "/v1/sys/keyring", None).await;
        if !status["rewrap"]["finished_at"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "rewrap stalled: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.store.count_stale(2).await, 0);
    let audit = app.audit().await;
    let entry = audit
        .iter()
        .find(|e| e["action"] == "vault.rewrap.quarantine")
        .expect("the quarantine is audited");
    assert_eq!(
        entry["details"]["values"],
        json!(["secret test/q/3 version 1"])
    );
    for i in [0, 1, 2, 4, 9] {
        let (status, body) = read(&app, &format!("test/q/{i}")).await;
        assert_eq!((status, body["data"]["n"].as_i64()), (200, Some(i)));
    }
    let (status, _) = read(&app, "test/q/3").await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn a_secret_made_again_cannot_be_handed_its_old_ciphertext() {
    let app = spawn_app().await;
    write(&app, "live/api", json!({ "token": "old-and-revoked" })).await;
    let db = app.data_dir().join("keyward.db");
    let old: Vec<u8> = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT ciphertext FROM secret_versions WHERE path = 'api' AND version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (status, _) = app
        .call(Method::DELETE, "/v1/secret-metadata/live/api", None)
        .await;
    assert_eq!(status, 204);
    write(&app, "live/api", json!({ "token": "new" })).await;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE secret_versions SET ciphertext = ?1 WHERE path = 'api' AND version = 1",
            [old],
        )
        .unwrap();
    let (status, body) = read(&app, "live/api").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "INTEGRITY");
    assert!(!body.to_string().contains("old-and-revoked"));
}

#[tokio::test]
async fn an_emergency_seal_seals_even_when_it_cannot_be_audited() {
    let app = spawn_app().await;
    app.store.fail_writes(true);
    let (status, body) = app.call(Method::POST, "/v1/sys/seal", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(app.node.is_sealed());
    let (status, _) = app.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 503);
    // The entry follows at the next unseal.
    app.store.fail_writes(false);
    for share in &app.shares[..3] {
        unseal(&app, json!({ "share": share })).await;
    }
    let audit = app.audit().await;
    let seal = audit
        .iter()
        .find(|e| e["action"] == "vault.seal")
        .expect("the seal was audited");
    assert_eq!(seal["details"]["audited_late"], true);
}

#[tokio::test]
async fn secrets_versions_cas_delete_undelete_destroy_and_metadata() {
    let app = spawn_app().await;
    let (status, body) = write(&app, "live/payments/stripe", json!({ "api_key": "v1" })).await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(1)));
    write(&app, "live/payments/stripe", json!({ "api_key": "v2" })).await;
    let (status, body) = read(&app, "live/payments/stripe").await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["data"]["api_key"].as_str(), body["version"].as_u64()),
        (Some("v2"), Some(2))
    );
    let (_, body) = read(&app, "live/payments/stripe?version=1").await;
    assert_eq!(body["data"]["api_key"], "v1");
    // Check-and-set.
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/secrets/live/payments/stripe",
            Some(json!({ "data": {"api_key": "x"}, "cas": 1 })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("CONFLICT"))
    );
    let (status, _) = app
        .call(
            Method::PUT,
            "/v1/secrets/live/payments/stripe",
            Some(json!({ "data": {"api_key": "v3"}, "cas": 2 })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call(
            Method::PUT,
            "/v1/secrets/live/new",
            Some(json!({ "data": {"a": "b"}, "cas": 0 })),
        )
        .await;
    assert_eq!(status, 200);
    // Soft delete, undelete, destroy.
    let (status, body) = app
        .call(Method::DELETE, "/v1/secrets/live/payments/stripe", None)
        .await;
    assert_eq!((status, body["versions"].clone()), (200, json!([3])));
    assert_eq!(read(&app, "live/payments/stripe").await.0, 404);
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/secret-undelete/live/payments/stripe",
            Some(json!({ "versions": [3] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        read(&app, "live/payments/stripe").await.1["data"]["api_key"],
        "v3"
    );
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/secret-destroy/live/payments/stripe",
            Some(json!({ "versions": [1] })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(read(&app, "live/payments/stripe?version=1").await.0, 404);
    let (_, body) = app
        .call(
            Method::POST,
            "/v1/secret-undelete/live/payments/stripe",
            Some(json!({ "versions": [1] })),
        )
        .await;
    assert_eq!(
        body["versions"],
        json!([]),
        "a destroyed version cannot come back"
    );
    let stored: Option<Vec<u8>> = rusqlite::Connection::open(app.data_dir().join("keyward.db"))
        .unwrap()
        .query_row(
            "SELECT ciphertext FROM secret_versions WHERE path = 'payments/stripe' AND version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored.is_none(), "destroy left the ciphertext");
    // Metadata: owner, purpose, custom fields, max versions.
    let (status, meta) = app
        .call(
            Method::PATCH,
            "/v1/secret-metadata/live/payments/stripe",
            Some(json!({ "owner": "payments", "purpose": "charges", "max_versions": 2, "custom": {"ticket": "SEC-1"} })),
        )
        .await;
    assert_eq!(status, 200, "{meta}");
    let (_, meta) = app
        .call(
            Method::GET,
            "/v1/secret-metadata/live/payments/stripe",
            None,
        )
        .await;
    assert_eq!(meta["metadata"]["owner"], "payments");
    assert_eq!(meta["metadata"]["custom"]["ticket"], "SEC-1");
    let versions: Vec<u64> = meta["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3], "max_versions 2 keeps the newest two");
    assert!(!meta.to_string().contains("v3"), "metadata shows no value");
    // List.
    let (_, list) = app
        .call(Method::GET, "/v1/secrets/live?prefix=payments/", None)
        .await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1);
    // Delete everything.
    assert_eq!(
        app.call(
            Method::DELETE,
            "/v1/secret-metadata/live/payments/stripe",
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(read(&app, "live/payments/stripe").await.0, 404);
    // Every access is audited, never the value.
    let audit = app.audit().await;
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "secret.write",
        "secret.read",
        "secret.delete",
        "secret.undelete",
        "secret.destroy",
        "secret.metadata.update",
        "secret.metadata.delete",
    ] {
        assert!(actions.contains(&action), "{action} not audited");
    }
    let read_entry = audit.iter().find(|e| e["action"] == "secret.read").unwrap();
    assert_eq!(read_entry["details"]["path"], "payments/stripe");
    assert!(read_entry["details"]["version"].is_u64());
    let text = serde_json::to_string(&audit).unwrap();
    for value in ["\"v1\"", "\"v2\"", "\"v3\""] {
        assert!(!text.contains(value));
    }
}

#[tokio::test]
async fn bad_secret_input_gets_clear_errors() {
    let app = spawn_app().await;
    assert_eq!(read(&app, "live/nothing/here").await.0, 404);
    assert_eq!(read(&app, "nope/x").await.0, 404);
    for (path, body) in [
        ("live/a//b", json!({ "data": {} })),
        ("live/../etc", json!({ "data": {} })),
        ("live/a", json!({ "data": [1] })),
        ("live/a", json!({ "data": "text" })),
        ("live/a", json!({ "value": {} })),
        ("UPPER/a", json!({ "data": {} })),
    ] {
        let (status, answer) = app
            .call(Method::PUT, &format!("/v1/secrets/{path}"), Some(body))
            .await;
        assert!((400..500).contains(&status), "{path}: {status} {answer}");
    }
    let big = "x".repeat(50 * 1024);
    let (status, answer) = write(&app, "live/big", json!({ "v": big })).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
    let huge = "x".repeat(70 * 1024);
    let (status, _) = write(&app, "live/big", json!({ "v": huge })).await;
    assert_eq!(status, 413);
    assert_eq!(read(&app, "live/big").await.0, 404, "nothing was stored");
    let (status, _) = read(&app, "live/a?version=abc").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn secret_permissions_are_scoped_by_path_glob() {
    let app = spawn_app().await;
    write(&app, "live/payments/stripe", json!({ "k": "1" })).await;
    write(&app, "live/billing/db", json!({ "k": "2" })).await;
    let reader = app
        .create_key("admin", json!({ "service": "keyward", "permissions": ["secrets:read:payments/*", "secrets:list:payments/*"] }))
        .await;
    let token = reader["key"].as_str().unwrap();
    let (status, _) = app
        .call_as(token, Method::GET, "/v1/secrets/live/payments/stripe", None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .call_as(token, Method::GET, "/v1/secrets/live/billing/db", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    let (status, _) = app
        .call_as(
            token,
            Method::PUT,
            "/v1/secrets/live/payments/stripe",
            Some(json!({ "data": {} })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, list) = app
        .call_as(
            token,
            Method::GET,
            "/v1/secrets/live?prefix=payments/",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1);
    let (status, _) = app
        .call_as(token, Method::GET, "/v1/secrets/live", None)
        .await;
    assert_eq!(status, 403, "listing the whole tree needs secrets:list");
}

#[tokio::test]
async fn renewing_a_lease_does_not_bring_back_its_rolled_key() {
    let app = spawn_app().await;
    let (status, issued) = app
        .call(
            Method::POST,
            "/v1/leases/keys",
            Some(json!({ "environment": "live", "name": "ci-job", "owner": "ci", "ttl_s": 60, "max_ttl_s": 86400 })),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let key_id = issued["key_id"]
        .as_str()
        .or_else(|| issued["lease"]["key_id"].as_str())
        .unwrap()
        .to_owned();
    let lease_id = issued["lease"]["lease_id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{key_id}/roll"),
            Some(json!({ "grace_period_s": 1 })),
        )
        .await;
    assert_eq!(status, 201);
    app.clock.advance_seconds(2);
    assert_eq!(app.verify_code(&key).await, "EXPIRED");
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{lease_id}/renew"),
            Some(json!({ "increment_s": 86000 })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("CONFLICT"))
    );
    assert_eq!(app.verify_code(&key).await, "EXPIRED", "the roll stands");
}

#[tokio::test]
async fn leased_keys_stop_verifying_when_the_lease_ends() {
    let app = spawn_app().await;
    let (status, issued) = app
        .call(
            Method::POST,
            "/v1/leases/keys",
            Some(json!({ "environment": "live", "name": "ci-job", "owner": "ci", "permissions": ["deploy:run"], "ttl_s": 60, "max_ttl_s": 120 })),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let lease_id = issued["lease"]["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(issued["lease"]["path"], "keys/live/ci-job");
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.clock.advance_seconds(50);
    // Renew: 60 s from now would pass the 120 s maximum; it is capped there.
    let (status, lease) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{lease_id}/renew"),
            Some(json!({ "increment_s": 100 })),
        )
        .await;
    assert_eq!(status, 200, "{lease}");
    assert_eq!(lease["expires_at"], lease["max_expires_at"]);
    app.clock.advance_seconds(60);
    assert_eq!(
        app.verify_code(&key).await,
        "VALID",
        "the renewal moved the key's expiry"
    );
    app.clock.advance_seconds(11);
    assert_eq!(app.verify_code(&key).await, "EXPIRED", "no call was needed");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{lease_id}/renew"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409, "an ended lease cannot be renewed");

    // Revoke by id and by prefix.
    let mut keys = Vec::new();
    for name in ["batch-a", "batch-b", "web"] {
        let (_, issued) = app
            .call(
                Method::POST,
                "/v1/leases/keys",
                Some(json!({ "environment": "live", "name": name, "owner": "ci", "ttl_s": 600 })),
            )
            .await;
        keys.push((
            issued["key"].as_str().unwrap().to_owned(),
            issued["lease"]["lease_id"].as_str().unwrap().to_owned(),
        ));
    }
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/leases/revoke-prefix",
            Some(json!({ "prefix": "keys/live/batch-" })),
        )
        .await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(2)));
    assert_eq!(app.verify_code(&keys[0].0).await, "REVOKED");
    assert_eq!(app.verify_code(&keys[1].0).await, "REVOKED");
    assert_eq!(app.verify_code(&keys[2].0).await, "VALID");
    let (status, lease) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{}/revoke", keys[2].1),
            None,
        )
        .await;
    assert_eq!(
        (status, lease["end_reason"].as_str()),
        (200, Some("revoked"))
    );
    assert_eq!(app.verify_code(&keys[2].0).await, "REVOKED");

    // Listing, the expiry sweep and the audit.
    app.authority
        .leases()
        .sweep_vault_leases_now()
        .await
        .unwrap();
    let (_, all) = app.call(Method::GET, "/v1/leases?all=true", None).await;
    assert_eq!(all["leases"].as_array().unwrap().len(), 4);
    let (_, open) = app.call(Method::GET, "/v1/leases", None).await;
    assert_eq!(open["leases"].as_array().unwrap().len(), 0);
    let (_, first) = app
        .call(Method::GET, &format!("/v1/leases/{lease_id}"), None)
        .await;
    assert_eq!(first["end_reason"], "expired");
    let actions: Vec<String> = app
        .audit()
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in [
        "lease.create",
        "lease.renew",
        "lease.revoke",
        "lease.expire",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action} not audited");
    }
    // Bad input.
    for body in [
        json!({ "environment": "live", "name": "x", "owner": "o", "ttl_s": 0 }),
        json!({ "environment": "live", "name": "x", "owner": "o", "ttl_s": 60, "max_ttl_s": 30 }),
        json!({ "environment": "live", "name": "x", "owner": "o" }),
    ] {
        let (status, answer) = app.call(Method::POST, "/v1/leases/keys", Some(body)).await;
        assert_eq!(status, 400, "{answer}");
    }
    assert_eq!(app.call(Method::GET, "/v1/leases/nope", None).await.0, 404);
}

#[tokio::test]
async fn leased_secret_reads_are_listed() {
    let app = spawn_app().await;
    write(&app, "live/db", json!({ "password": "p" })).await;
    let (status, body) = read(&app, "live/db?lease_ttl_s=30").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lease"]["kind"], "secret");
    assert_eq!(body["lease"]["path"], "secrets/live/db");
    let (_, open) = app
        .call(Method::GET, "/v1/leases?prefix=secrets/", None)
        .await;
    assert_eq!(open["leases"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn reads_cancelled_mid_way_never_stall_later_reads() {
    let app = spawn_app().await;
    write(&app, "live/x", json!({ "v": "1" })).await;
    let env = keyward_core::EnvironmentName::parse("live").unwrap();
    let actor = app
        .authority
        .verifier()
        .authenticate_for(
            Some(&app.root_key),
            keyward_service::Operation::SecretRead,
            Some("x"),
            None,
        )
        .await
        .unwrap();
    let read = || {
        let (authority, actor, env) = (app.authority.clone(), actor.clone(), env.clone());
        async move {
            authority
                .secrets()
                .read_secret(&actor, &env, "x", None, None)
                .await
        }
    };
    read().await.unwrap();
    // Clients that go away mid-request: their handlers are dropped at an await point, here
    // while leading the commit of the audit queue for everyone (this runtime has one thread,
    // so each yield lets the spawned read run exactly to its next await).
    for yields in 1..=6 {
        let task = tokio::spawn(read());
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
    }
    let later = tokio::time::timeout(Duration::from_secs(5), read())
        .await
        .expect("a read stalled after a cancelled one");
    assert_eq!(later.unwrap().data["v"], "1");
}

#[tokio::test]
async fn a_wrong_unseal_key_is_refused_even_when_unsealed() {
    let app = spawn_app().await;
    let other = spawn_app().await;
    let (status, body) = unseal(&app, json!({ "key": other.unseal_key })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = unseal(&app, json!({ "key": app.unseal_key })).await;
    assert_eq!((status, body["sealed"].as_bool()), (200, Some(false)));
}

#[tokio::test]
async fn revoking_by_prefix_stays_within_an_admin_keys_scope() {
    let app = spawn_app().await;
    let mut keys = Vec::new();
    for env in ["live", "test"] {
        let (status, issued) = app
            .call(
                Method::POST,
                "/v1/leases/keys",
                Some(json!({ "environment": env, "name": "job", "owner": "ci", "ttl_s": 600 })),
            )
            .await;
        assert_eq!(status, 201, "{issued}");
        keys.push(issued["key"].as_str().unwrap().to_owned());
    }
    let scoped = app
        .create_key(
            "admin",
            json!({ "service": "keyward", "permissions": ["leases:revoke"], "admin_environments": ["test"] }),
        )
        .await;
    let (status, body) = app
        .call_as(
            scoped["key"].as_str().unwrap(),
            Method::POST,
            "/v1/leases/revoke-prefix",
            Some(json!({ "prefix": "keys/" })),
        )
        .await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(app.verify_code(&keys[0]).await, "VALID");
    assert_eq!(app.verify_code(&keys[1]).await, "REVOKED");
}
