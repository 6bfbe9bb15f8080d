//! Stored security state is authenticated: edits of the SQLite file made without the unseal key
//! (an un-revoked key, a widened permission, a loosened role or policy, a truncated or rehashed
//! audit log) fail closed and are reported on /readyz and in the metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyward_testkit::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

/// An audit row as stored: seq, ts, actor, action, target, details, prev_hash.
type Row = (i64, i64, String, String, Option<String>, String, String);

/// Runs `statements` on the store file as an attacker with the file would, guard triggers
/// dropped first.
fn tamper(app: &TestApp, statements: &str) {
    let conn = rusqlite::Connection::open(app.data_dir().join("keyward.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;",
    )
    .unwrap();
    conn.execute_batch(statements).unwrap();
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let resp = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn verify(app: &TestApp, key: &str, permissions: Option<&str>) -> String {
    let mut body = json!({ "key": key });
    if let Some(p) = permissions {
        body["permissions"] = json!(p);
    }
    let (status, verdict) = app.call(Method::POST, "/v1/verify", Some(body)).await;
    assert_eq!(status, 200, "{verdict}");
    verdict["code"].as_str().unwrap().to_owned()
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn keys_edited_offline_fail_closed() {
    let mut app = spawn_app().await;
    let revoked = app.create_key("live", json!({})).await;
    let narrow = app
        .create_key("live", json!({"permissions": ["invoices:read"]}))
        .await;
    let untouched = app.create_key("live", json!({})).await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/revoke", revoked["id"].as_str().unwrap()),
            Some(json!({"reason": "leaked"})),
        )
        .await;
    assert_eq!(status, 200);
    app.shutdown().await;
    tamper(
        &app,
        &format!(
            "UPDATE keys SET status = 'active', revoked_at = NULL, revocation_reason = NULL WHERE id = '{}';
             UPDATE keys SET permissions = '[\"*\"]' WHERE id = '{}';",
            revoked["id"].as_str().unwrap(),
            narrow["id"].as_str().unwrap()
        ),
    );
    app.start().await;
    // Every key's tag is checked after unseal: the node reports the tampering before anyone
    // presents a tampered key.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while readyz(&app).await.0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "tampering not reported"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The un-revoked key and the widened one are no keys at all; the untouched one works.
    assert_eq!(
        verify(&app, revoked["key"].as_str().unwrap(), None).await,
        "NOT_FOUND"
    );
    assert_eq!(
        verify(&app, narrow["key"].as_str().unwrap(), Some("admin:write")).await,
        "NOT_FOUND"
    );
    assert_eq!(
        verify(&app, untouched["key"].as_str().unwrap(), None).await,
        "VALID"
    );
    // An admin read is an INTEGRITY error; the record is never written back.
    let (status, err) = app
        .call(
            Method::GET,
            &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 500, "{err}");
    assert_eq!(err["error"]["code"], "INTEGRITY");
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{}", narrow["id"].as_str().unwrap()),
            Some(json!({"name": "launder"})),
        )
        .await;
    assert_eq!(status, 500);
    let (status, health) = readyz(&app).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "integrity");
    assert!(metric(&app, "keyward_integrity_failures").await >= 2.0);
}

#[tokio::test]
async fn roles_and_policies_edited_offline_fail_closed() {
    let mut app = spawn_app().await;
    app.call(
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "reader", "permissions": ["invoices:read"]})),
    )
    .await;
    let holder = app.create_key("test", json!({"roles": ["reader"]})).await;
    app.call(
        Method::PATCH,
        "/v1/environments/live",
        Some(json!({"policy": {"allowed_cidrs": ["10.0.0.0/8"]}})),
    )
    .await;
    let live = app.create_key("live", json!({})).await;
    app.shutdown().await;
    tamper(
        &app,
        "UPDATE roles SET permissions = '[\"*\"]' WHERE name = 'reader';
         UPDATE environments SET policy = '{}' WHERE name = 'live';",
    );
    app.start().await;
    // The role is gone rather than widened: its holder holds nothing through it.
    assert_eq!(
        verify(&app, holder["key"].as_str().unwrap(), Some("admin:write")).await,
        "INSUFFICIENT_PERMISSIONS"
    );
    assert_eq!(
        verify(&app, holder["key"].as_str().unwrap(), Some("invoices:read")).await,
        "INSUFFICIENT_PERMISSIONS"
    );
    // An environment whose policy was loosened serves no key at all.
    assert_eq!(
        verify(&app, live["key"].as_str().unwrap(), None).await,
        "NOT_FOUND"
    );
    let (status, health) = readyz(&app).await;
    assert_eq!(status, 503, "{health}");
    // The tampered role cannot be made anew under its name: keys still hold it, and creating
    // it would hand them new permissions past the check that changing a held role gets.
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/roles",
            Some(json!({"name": "reader", "permissions": ["*"]})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("CONFLICT"))
    );
}

#[tokio::test]
async fn a_plan_tampered_offline_cannot_be_made_anew_under_its_name() {
    let mut app = spawn_app().await;
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/plans",
            Some(
                json!({"name": "gold", "ratelimits": [{"name": "rps", "limit": 5, "period_s": 1}]}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    app.create_key("live", json!({"plan": "gold"})).await;
    app.shutdown().await;
    tamper(
        &app,
        "UPDATE plans SET description = 'x' WHERE name = 'gold';",
    );
    app.start().await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "gold", "ratelimits": []})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("CONFLICT"))
    );
}

#[tokio::test]
async fn a_truncated_audit_log_is_reported() {
    let mut app = spawn_app().await;
    for _ in 0..3 {
        app.create_key("live", json!({})).await;
    }
    app.shutdown().await;
    tamper(
        &app,
        "DELETE FROM audit_log WHERE seq > (SELECT max(seq) - 2 FROM audit_log);",
    );
    app.start().await;
    let (status, health) = readyz(&app).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "integrity");
    // It still serves: a write after the break is chained on and audited.
    app.create_key("live", json!({})).await;
}

#[tokio::test]
async fn a_rewritten_and_rehashed_audit_log_is_reported() {
    let mut app = spawn_app().await;
    let created = app.create_key("live", json!({})).await;
    app.call(
        Method::POST,
        &format!("/v1/keys/{}/revoke", created["id"].as_str().unwrap()),
        Some(json!({"reason": "incident 42"})),
    )
    .await;
    app.shutdown().await;
    // Rewrite the revoke's reason and recompute every hash after it: the chain is consistent
    // again, as SHA-256 alone cannot prevent; only the tagged checkpoint can tell.
    let conn = rusqlite::Connection::open(app.data_dir().join("keyward.db")).unwrap();
    conn.execute_batch("DROP TRIGGER IF EXISTS audit_log_no_update;")
        .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT seq, ts, actor, action, target, details, prev_hash FROM audit_log ORDER BY seq",
        )
        .unwrap();
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(stmt);
    let mut prev = rows[0].6.clone();
    for (seq, ts, actor, action, target, details, _) in rows {
        let mut details: Value = serde_json::from_str(&details).unwrap();
        if action == "key.revoke" {
            details["reason"] = json!("routine");
        }
        let bytes = keyward_core::audit::canonical_bytes(
            u64::try_from(seq).unwrap(),
            keyward_core::Timestamp::from_unix_ms(ts),
            &actor,
            &action,
            target.as_deref(),
            &details,
        );
        let hash = keyward_crypto::audit_hash(&prev, &bytes);
        conn.execute(
            "UPDATE audit_log SET details = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
            rusqlite::params![seq, details.to_string(), prev, hash],
        )
        .unwrap();
        prev = hash;
    }
    drop(conn);
    app.start().await;
    let (status, health) = readyz(&app).await;
    assert_eq!(status, 503, "{health}");
}

#[tokio::test]
async fn a_store_from_before_integrity_tags_is_adopted_once_and_then_held_to_them() {
    let mut app = spawn_app().await;
    let key = app.create_key("live", json!({})).await;
    app.shutdown().await;
    // Turn the store back into one from before integrity tags: legacy root, no tags at all.
    let unseal = keyward_crypto::barrier::UnsealKey::from_text(&app.unseal_key).unwrap();
    let conn = rusqlite::Connection::open(app.data_dir().join("keyward.db")).unwrap();
    let sealed: Vec<u8> = conn
        .query_row("SELECT sealed_root FROM vault", [], |r| r.get(0))
        .unwrap();
    let root = unseal.open_root(&sealed).unwrap();
    conn.execute(
        "UPDATE vault SET sealed_root = ?1, mac = NULL",
        [unseal.seal_root_legacy(&root).unwrap()],
    )
    .unwrap();
    conn.execute_batch(
        "DELETE FROM keyrings WHERE scope = 'integrity';
         UPDATE keys SET mac = NULL; UPDATE environments SET mac = NULL;
         UPDATE roles SET mac = NULL; UPDATE plans SET mac = NULL;
         DELETE FROM audit_checkpoint;",
    )
    .unwrap();
    drop(conn);
    app.start().await;
    assert_eq!(readyz(&app).await.0, 200);
    assert_eq!(
        verify(&app, key["key"].as_str().unwrap(), None).await,
        "VALID"
    );
    assert!(
        app.audit()
            .await
            .iter()
            .any(|e| e["action"] == "vault.integrity_adopt")
    );
    // From now on the vault says it has an integrity key: dropping the tags is tampering, not
    // an old store, and nothing is adopted again.
    app.shutdown().await;
    tamper(
        &app,
        "UPDATE keys SET mac = NULL, permissions = '[\"*\"]' WHERE service = 'default';",
    );
    app.start().await;
    assert_eq!(
        verify(&app, key["key"].as_str().unwrap(), None).await,
        "NOT_FOUND"
    );
    assert_eq!(readyz(&app).await.0, 503);
    let adoptions = app
        .audit()
        .await
        .iter()
        .filter(|e| e["action"] == "vault.integrity_adopt")
        .count();
    assert_eq!(adoptions, 1);
}

#[tokio::test]
async fn a_plan_deleted_offline_does_not_lift_its_keys_limits() {
    let mut app = spawn_app().await;
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "strict", "ratelimits": [{"name": "hour", "limit": 1, "period_s": 3600}]})),
        )
        .await;
    assert_eq!(status, 201);
    let key = app.create_key("live", json!({"plan": "strict"})).await;
    let key = key["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(&app, &key, None).await, "VALID");
    assert_eq!(verify(&app, &key, None).await, "RATE_LIMITED");
    app.shutdown().await;
    tamper(&app, "DELETE FROM plans WHERE name = 'strict';");
    app.start().await;
    for _ in 0..3 {
        assert_eq!(verify(&app, &key, None).await, "NOT_FOUND");
    }
    assert_eq!(readyz(&app).await.0, 503);
}

#[tokio::test]
async fn a_key_row_restored_from_before_its_revocation_is_caught() {
    let mut app = spawn_app().await;
    let victim = app.create_key("live", json!({})).await;
    let id = victim["id"].as_str().unwrap().to_owned();
    app.shutdown().await;
    // The attacker keeps a copy of the row while the key is active…
    let db = app.data_dir().join("keyward.db");
    let saved: Vec<(String, rusqlite::types::Value)> = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut stmt = conn.prepare("SELECT * FROM keys WHERE id = ?1").unwrap();
        let names: Vec<String> = stmt
            .column_names()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        stmt.query_row([&id], |r| {
            Ok(names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), r.get::<_, rusqlite::types::Value>(i).unwrap()))
                .collect())
        })
        .unwrap()
    };
    app.start().await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(json!({"reason": "leaked"})),
        )
        .await;
    assert_eq!(status, 200);
    app.shutdown().await;
    // …and puts it back after the revoke: a row with a valid tag, from an earlier time.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("DELETE FROM keys WHERE id = ?1", [&id])
            .unwrap();
        let columns: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
        let marks: Vec<String> = (1..=saved.len()).map(|i| format!("?{i}")).collect();
        conn.execute(
            &format!(
                "INSERT INTO keys ({}) VALUES ({})",
                columns.join(", "),
                marks.join(", ")
            ),
            rusqlite::params_from_iter(saved.iter().map(|(_, v)| v.clone())),
        )
        .unwrap();
    }
    app.start().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, body) = readyz(&app).await;
        let findings = app.authority.integrity_findings();
        if status == 503
            && findings
                .iter()
                .any(|f| f.contains(&id) && f.contains("restored"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the undone revocation was not reported with the key: {body} {findings:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The key is pinpointed: the audit log names it revoked, so its restored row is no key.
    let key = victim["key"].as_str().unwrap();
    assert_ne!(app.verify_code(key).await, "VALID");
    let (status, body) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("INTEGRITY"))
    );
    // keyward audit verify with the key says so too (offline), naming the key.
    app.shutdown().await;
    let unseal = keyward_crypto::barrier::UnsealKey::from_text(&app.unseal_key).unwrap();
    let store = keyward_store_sqlite::SqliteStore::open(&db).unwrap();
    let failed = keyward_service::verify_stored_state(&store, &unseal)
        .await
        .unwrap();
    assert!(
        failed.iter().any(|f| f.contains("revocations undone")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|f| f.contains(&id) && f.contains("revoked in the audit log")),
        "{failed:?}"
    );
}

/// A lease names the key it renews and revokes and how far it may be renewed: edited offline, it
/// acts on nothing (the attack: point a lease at another key, then renew it past its expiry, or
/// revoke an admin key through it).
#[tokio::test]
async fn leases_edited_offline_act_on_no_key() {
    let mut app = spawn_app().await;
    let lease_of = |name: &'static str| {
        app.call(
            Method::POST,
            "/v1/leases/keys",
            Some(json!({"environment": "live", "name": name, "owner": "ci", "ttl_s": 600, "max_ttl_s": 3600})),
        )
    };
    let (status, first) = lease_of("ci-1").await;
    assert_eq!(status, 201, "{first}");
    let (_, second) = lease_of("ci-2").await;
    let (_, untagged) = lease_of("ci-3").await;
    let expiring = app.create_key("live", json!({"ttl_s": 5})).await;
    let admin = app
        .create_key(
            "admin",
            json!({"service": "keyward", "permissions": ["keys:read"]}),
        )
        .await;
    let lease_id = |v: &Value| v["lease"]["lease_id"].as_str().unwrap().to_owned();
    let (first, second, untagged) = (lease_id(&first), lease_id(&second), lease_id(&untagged));
    app.shutdown().await;
    tamper(
        &app,
        &format!(
            "UPDATE vault_leases SET key_id = '{}', max_expires_at = 4102444800000 WHERE id = '{first}';
             UPDATE vault_leases SET key_id = '{}' WHERE id = '{second}';
             UPDATE vault_leases SET mac = NULL WHERE id = '{untagged}';",
            expiring["id"].as_str().unwrap(),
            admin["id"].as_str().unwrap(),
        ),
    );
    app.start().await;
    app.clock.advance_seconds(10);
    let expiring_key = expiring["key"].as_str().unwrap();
    assert_eq!(app.verify_code(expiring_key).await, "EXPIRED");
    // Renewing the redirected lease does not bring the expired key back.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{first}/renew"),
            Some(json!({"increment_s": 2_592_000})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("INTEGRITY"))
    );
    assert_eq!(app.verify_code(expiring_key).await, "EXPIRED");
    // Revoking the other does not revoke the admin key it was pointed at.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{second}/revoke"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("INTEGRITY"))
    );
    let (status, _) = app
        .call_as(
            admin["key"].as_str().unwrap(),
            Method::GET,
            &format!("/v1/keys/{}", admin["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "the admin key still works");
    // Revoking by prefix passes over both too.
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/leases/revoke-prefix",
            Some(json!({"prefix": "keys/live/ci-"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app
        .call_as(
            admin["key"].as_str().unwrap(),
            Method::GET,
            &format!("/v1/keys/{}", admin["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "the admin key still works after revoke-prefix");
    // A lease stripped of its tag acts on nothing either, and says why.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{untagged}/renew"),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("CONFLICT"))
    );
    // The edits are reported, on /readyz and offline.
    let (status, _) = readyz(&app).await;
    assert_eq!(status, 503);
    app.shutdown().await;
    let unseal = keyward_crypto::barrier::UnsealKey::from_text(&app.unseal_key).unwrap();
    let store =
        keyward_store_sqlite::SqliteStore::open(&app.data_dir().join("keyward.db")).unwrap();
    let failed = keyward_service::verify_stored_state(&store, &unseal)
        .await
        .unwrap();
    for id in [&first, &second] {
        assert!(
            failed.iter().any(|f| f == &format!("lease {id}")),
            "{failed:?}"
        );
    }
}
