//! The HTTP API against a real server on a random port with a temp data dir and a fake clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::type_complexity
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_core::key::encode_key;
use keyward_core::{EnvironmentName, KeyPrefix};
use keyward_server::ServerConfig;
use keyward_testkit::{TestApp, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

fn random_well_formed_key(n: u64) -> String {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&n.to_le_bytes());
    secret[31] = 0xA5;
    encode_key(
        &KeyPrefix::parse("kw").unwrap(),
        &EnvironmentName::parse("live").unwrap(),
        &secret,
    )
}

#[tokio::test]
async fn create_then_verify_is_valid_and_returns_the_key_details() {
    let app = spawn_app().await;
    let created = app
        .create_key("live", json!({"permissions": ["invoices:read"], "meta": {"plan": "pro"}, "purpose": "billing sync"}))
        .await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("kw_live_"));
    assert_eq!(created["start"].as_str().unwrap(), &key[..12]);
    let (status, verdict) = app
        .call(Method::POST, "/v1/verify", Some(json!({"key": key})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["code"], "VALID");
    assert_eq!(verdict["key_id"], created["id"]);
    assert_eq!(verdict["owner"], "team-test");
    assert_eq!(verdict["environment"], "live");
    assert_eq!(verdict["permissions"], json!(["invoices:read"]));
    assert_eq!(verdict["meta"], json!({"plan": "pro"}));

    // The secret is never shown again.
    let (_, shown) = app
        .call(
            Method::GET,
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(shown.get("key").is_none());
    assert!(!shown.to_string().contains(&key[12..]));
}

#[tokio::test]
async fn revoked_keys_answer_revoked_and_revocation_is_final() {
    let app = spawn_app().await;
    let created = app.create_key("live", json!({})).await;
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    assert_eq!(app.verify_code(key).await, "VALID");
    let (status, revoked) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(json!({"reason": "leaked in a log"})),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revocation_reason"], "leaked in a log");
    assert_eq!(app.verify_code(key).await, "REVOKED");

    for (method, path, body) in [
        (
            Method::POST,
            format!("/v1/keys/{id}/revoke"),
            json!({"reason": "again"}),
        ),
        (
            Method::POST,
            format!("/v1/keys/{id}/roll"),
            json!({"grace_period_s": 0}),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{id}"),
            json!({"enabled": true}),
        ),
    ] {
        let (status, err) = app.call(method, &path, Some(body)).await;
        assert_eq!(status, 409, "{path}: {err}");
        assert_eq!(err["error"]["code"], "CONFLICT");
    }
    assert_eq!(app.verify_code(key).await, "REVOKED");
}

#[tokio::test]
async fn keys_expire_by_the_clock() {
    let app = spawn_app().await;
    let by_ttl = app.create_key("live", json!({"ttl_s": 60})).await;
    let at = app.clock.now_plus(120);
    let by_time = app.create_key("live", json!({"expires_at": at})).await;
    let (ttl_key, time_key) = (
        by_ttl["key"].as_str().unwrap(),
        by_time["key"].as_str().unwrap(),
    );
    assert_eq!(app.verify_code(ttl_key).await, "VALID");
    app.clock.advance_seconds(59);
    assert_eq!(app.verify_code(ttl_key).await, "VALID");
    app.clock.advance_seconds(1);
    assert_eq!(app.verify_code(ttl_key).await, "EXPIRED");
    assert_eq!(app.verify_code(time_key).await, "VALID");
    app.clock.advance_seconds(60);
    assert_eq!(app.verify_code(time_key).await, "EXPIRED");
}

trait ClockExt {
    fn now_plus(&self, seconds: u64) -> String;
}

impl ClockExt for keyward_core::FakeClock {
    fn now_plus(&self, seconds: u64) -> String {
        use keyward_core::Clock;
        self.now().plus_seconds(seconds).to_rfc3339()
    }
}

#[tokio::test]
async fn roll_keeps_both_keys_valid_during_grace_then_expires_the_old_one() {
    let app = spawn_app().await;
    let old = app
        .create_key(
            "live",
            json!({"permissions": ["orders:*"], "meta": {"tier": 2}, "ttl_s": 86400}),
        )
        .await;
    let old_id = old["id"].as_str().unwrap();
    app.clock.advance_seconds(3600);
    let (status, rolled) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{old_id}/roll"),
            Some(json!({"grace_period_s": 300})),
        )
        .await;
    assert_eq!(status, 201, "{rolled}");
    let new_key = rolled["key"].as_str().unwrap();
    let new_id = rolled["id"].as_str().unwrap();
    assert_ne!(new_key, old["key"].as_str().unwrap());
    // Same settings, lineage both ways.
    assert_eq!(rolled["permissions"], json!(["orders:*"]));
    assert_eq!(rolled["meta"], json!({"tier": 2}));
    assert_eq!(rolled["environment"], "live");
    assert_eq!(rolled["rolled_from"], old_id);
    assert_eq!(rolled["previous"]["rolled_to"], new_id);
    let (_, old_view) = app
        .call(Method::GET, &format!("/v1/keys/{old_id}"), None)
        .await;
    assert_eq!(old_view["rolled_to"], new_id);
    // The successor gets the same lifetime, counted from the roll.
    let (_, new_view) = app
        .call(Method::GET, &format!("/v1/keys/{new_id}"), None)
        .await;
    assert_eq!(new_view["expires_at"], app.clock.now_plus(86400));

    assert_eq!(app.verify_code(old["key"].as_str().unwrap()).await, "VALID");
    assert_eq!(app.verify_code(new_key).await, "VALID");
    app.clock.advance_seconds(299);
    assert_eq!(app.verify_code(old["key"].as_str().unwrap()).await, "VALID");
    app.clock.advance_seconds(1);
    assert_eq!(
        app.verify_code(old["key"].as_str().unwrap()).await,
        "EXPIRED"
    );
    assert_eq!(app.verify_code(new_key).await, "VALID");

    let (status, again) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{old_id}/roll"),
            Some(json!({"grace_period_s": 0})),
        )
        .await;
    assert_eq!(status, 409, "{again}");
}

#[tokio::test]
async fn unknown_and_malformed_keys_never_reach_the_store() {
    let app = spawn_app().await;
    let mut typo = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.store.lookups();
    for n in 0..200 {
        assert_eq!(
            app.verify_code(&random_well_formed_key(n)).await,
            "NOT_FOUND"
        );
    }
    for garbage in [
        "",
        "kw_live_",
        "kw_live_abc",
        &"x".repeat(5000),
        "kw_live_💥",
    ] {
        assert_eq!(app.verify_code(garbage).await, "MALFORMED", "{garbage:.20}");
    }
    typo.replace_range(20..21, if &typo[20..21] == "a" { "b" } else { "a" });
    assert_eq!(app.verify_code(&typo).await, "MALFORMED");
    assert_eq!(
        app.store.lookups(),
        before,
        "a verification of an unknown key hit the store"
    );
}

#[tokio::test]
async fn valid_keys_are_read_from_the_store_once_then_cached() {
    let mut app = spawn_app().await;
    let key = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    app.restart().await; // empty cache
    for _ in 0..20 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    // One lookup for the key; the root key verifying the caller is the other.
    assert_eq!(app.store.lookups(), 2);
}

#[tokio::test]
async fn environment_mismatch_both_ways() {
    let app = spawn_app().await;
    let live = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let test = app.create_key("test", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(test.starts_with("kw_test_"));
    for (key, expect, code) in [
        (&live, "test", "ENVIRONMENT_MISMATCH"),
        (&test, "live", "ENVIRONMENT_MISMATCH"),
        (&live, "live", "VALID"),
        (&test, "test", "VALID"),
    ] {
        let (_, verdict) = app
            .call(
                Method::POST,
                "/v1/verify",
                Some(json!({"key": key, "environment": expect})),
            )
            .await;
        assert_eq!(verdict["code"], code, "{key:.12} in {expect}");
    }
    // A live key re-labelled as test is another key (and fails its checksum).
    let relabelled = live.replacen("kw_live_", "kw_test_", 1);
    assert_eq!(app.verify_code(&relabelled).await, "MALFORMED");
}

#[tokio::test]
async fn disable_and_enable() {
    let app = spawn_app().await;
    let created = app.create_key("live", json!({})).await;
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap(),
    );
    let (status, updated) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"enabled": false, "name": "paused", "purpose": null})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "disabled");
    assert_eq!(updated["name"], "paused");
    assert_eq!(updated["purpose"], Value::Null);
    assert_eq!(app.verify_code(key).await, "DISABLED");
    app.call(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(app.verify_code(key).await, "VALID");
    let (_, updated) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"permissions": ["a:b"], "expires_at": app.clock.now_plus(10)})),
        )
        .await;
    assert_eq!(updated["permissions"], json!(["a:b"]));
    let (_, verdict) = app
        .call(Method::POST, "/v1/verify", Some(json!({"key": key})))
        .await;
    assert_eq!(
        verdict["permissions"],
        json!(["a:b"]),
        "update must reach the cache"
    );
    app.clock.advance_seconds(10);
    assert_eq!(app.verify_code(key).await, "EXPIRED");
}

#[tokio::test]
async fn admin_keys_are_not_api_keys() {
    let app = spawn_app().await;
    assert_eq!(app.verify_code(&app.root_key).await, "NOT_FOUND");
}

#[tokio::test]
async fn scoped_admin_keys_are_limited_and_cannot_escalate() {
    let app = spawn_app().await;
    let reader = app
        .create_key(
            "admin",
            json!({"service": "keyward", "permissions": ["keys:read", "keys:verify"]}),
        )
        .await;
    let token = reader["key"].as_str().unwrap();
    assert!(token.starts_with("keyward_admin_"));
    let (status, _) = app.call_as(token, Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200);
    let (status, err) = app
        .call_as(
            token,
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "live", "name": "x", "owner": "y"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "FORBIDDEN");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("keys:create")
    );

    // A creator cannot mint an admin key with more than it holds.
    let creator = app
        .create_key(
            "admin",
            json!({"service": "keyward", "permissions": ["keys:create"]}),
        )
        .await;
    let (status, err) = app
        .call_as(
            creator["key"].as_str().unwrap(),
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "admin", "service": "keyward", "name": "x", "owner": "y", "permissions": ["*"]})),
        )
        .await;
    assert_eq!(status, 403, "{err}");

    // Admin keys belong to the admin environment and API keys never do.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "admin", "name": "x", "owner": "y"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "live", "service": "keyward", "name": "x", "owner": "y"})),
        )
        .await;
    assert_eq!(status, 400);

    // Revoking an admin key locks it out at once.
    let id = reader["id"].as_str().unwrap();
    app.call(
        Method::POST,
        &format!("/v1/keys/{id}/revoke"),
        Some(json!({"reason": "offboarded"})),
    )
    .await;
    let (status, _) = app.call_as(token, Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_admin_key_cannot_lock_itself_out() {
    let app = spawn_app().await;
    let (_, page) = app
        .call(Method::GET, "/v1/keys?service=keyward", None)
        .await;
    let root_id = page["keys"][0]["id"].as_str().unwrap().to_owned();
    for (method, path, body) in [
        (
            Method::POST,
            format!("/v1/keys/{root_id}/revoke"),
            json!({"reason": "oops"}),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{root_id}"),
            json!({"enabled": false}),
        ),
    ] {
        let (status, err) = app.call(method, &path, Some(body)).await;
        assert_eq!(status, 409, "{err}");
    }
    let (status, _) = app.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200);
    // A weaker admin key may not revoke it; another one as strong may.
    let weaker = app
        .create_key(
            "admin",
            json!({"service": "keyward", "permissions": ["keys:revoke"]}),
        )
        .await;
    let (status, err) = app
        .call_as(
            weaker["key"].as_str().unwrap(),
            Method::POST,
            &format!("/v1/keys/{root_id}/revoke"),
            Some(json!({"reason": "takeover"})),
        )
        .await;
    assert_eq!(status, 403, "{err}");
    let other = app
        .create_key("admin", json!({"service": "keyward", "permissions": ["*"]}))
        .await;
    let (status, _) = app
        .call_as(
            other["key"].as_str().unwrap(),
            Method::POST,
            &format!("/v1/keys/{root_id}/revoke"),
            Some(json!({"reason": "rotated"})),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let env = if i % 2 == 0 { "live" } else { "test" };
        ids.push(
            app.create_key(env, json!({"owner": format!("owner-{}", i % 3)}))
                .await["id"]
                .clone(),
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?service=default&limit=3&cursor={c}"),
            None => "/v1/keys?service=default&limit=3".to_owned(),
        };
        let (status, page) = app.call(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].clone()),
        );
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let (_, live) = app
        .call(Method::GET, "/v1/keys?environment=live", None)
        .await;
    assert_eq!(live["keys"].as_array().unwrap().len(), 4);
    let (_, owner) = app
        .call(Method::GET, "/v1/keys?owner=owner-1&status=active", None)
        .await;
    assert_eq!(owner["keys"].as_array().unwrap().len(), 2);

    // A leaked key is found by what was seen of it: its start.
    let (_, first) = app
        .call(
            Method::GET,
            &format!("/v1/keys/{}", ids[2].as_str().unwrap()),
            None,
        )
        .await;
    let start = first["start"].as_str().unwrap();
    let (status, found) = app
        .call(Method::GET, &format!("/v1/keys?start={start}"), None)
        .await;
    assert_eq!(status, 200, "{found}");
    let found: Vec<&Value> = found["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["id"])
        .collect();
    assert!(found.contains(&&ids[2]), "{found:?}");
    let (_, live) = app.call(Method::GET, "/v1/keys?start=kw_live_", None).await;
    assert_eq!(live["keys"].as_array().unwrap().len(), 4);
    // Created before a time: none before the first key, all before now.
    let (_, none) = app
        .call(
            Method::GET,
            "/v1/keys?service=default&created_before=2000-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(none["keys"].as_array().unwrap().len(), 0);
    let later =
        (keyward_core::Timestamp::from_unix_ms(app.clock.now_ms()).plus_seconds(60)).to_rfc3339();
    let (_, all) = app
        .call(
            Method::GET,
            &format!("/v1/keys?service=default&created_before={later}"),
            None,
        )
        .await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 7);
    for bad in [
        "start=",
        "start=kw_live_%25",
        "start=kw%20live",
        "created_before=yesterday",
    ] {
        let (status, body) = app
            .call(Method::GET, &format!("/v1/keys?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_FIELD", "{bad}");
    }
}

#[tokio::test]
async fn usage_is_batched_and_flushed() {
    let mut app = spawn_app().await;
    let created = app.create_key("live", json!({})).await;
    let (key, id) = (
        created["key"].as_str().unwrap(),
        created["id"].as_str().unwrap().to_owned(),
    );
    for _ in 0..5 {
        app.verify_code(key).await;
    }
    // Graceful shutdown flushes what the interval has not yet written.
    app.restart().await;
    let (_, shown) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown["uses"], 5, "{shown}");
    assert_eq!(
        shown["last_used_at"],
        keyward_testkit::START
            .replace("00Z", "00.000Z")
            .replace(":00.000Z", ":00Z")
    );
}

#[tokio::test]
async fn data_survives_a_restart() {
    let mut app = spawn_app().await;
    let live = app.create_key("live", json!({})).await;
    let revoked = app.create_key("live", json!({})).await;
    app.call(
        Method::POST,
        &format!("/v1/keys/{}/revoke", revoked["id"].as_str().unwrap()),
        Some(json!({"reason": "r"})),
    )
    .await;
    app.restart().await;
    assert_eq!(
        app.verify_code(live["key"].as_str().unwrap()).await,
        "VALID"
    );
    assert_eq!(
        app.verify_code(revoked["key"].as_str().unwrap()).await,
        "REVOKED"
    );
}

/// Many verifications race a revocation: none that started after the revoke call returned may
/// answer VALID.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_valid_answer_starts_after_revoke_returns() {
    let app = Arc::new(spawn_app().await);
    let created = app.create_key("live", json!({})).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let epoch = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (app, key) = (app.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                let started = epoch.elapsed();
                let code = app.verify_code(&key).await;
                answers.push((started, code));
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(json!({"reason": "race"})),
        )
        .await;
    let revoked_at = epoch.elapsed();
    assert_eq!(status, 200);
    let mut after = 0;
    let mut valid_before = 0;
    for task in tasks {
        for (started, code) in task.await.unwrap() {
            if started > revoked_at {
                after += 1;
                assert_eq!(
                    code,
                    "REVOKED",
                    "a verification started {:?} after the revoke returned answered {code}",
                    started - revoked_at
                );
            } else if code == "VALID" {
                valid_before += 1;
            }
        }
    }
    assert!(after > 50, "only {after} verifications after the revoke");
    assert!(
        valid_before > 50,
        "only {valid_before} valid verifications before the revoke"
    );
}

#[tokio::test]
async fn every_admin_action_is_audited_and_no_secret_is() {
    let app = spawn_app().await;
    let created = app.create_key("live", json!({"meta": {"k": "v"}})).await;
    let id = created["id"].as_str().unwrap();
    app.call(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"name": "n2"})),
    )
    .await;
    let (_, rolled) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/roll"),
            Some(json!({"grace_period_s": 10})),
        )
        .await;
    app.call(
        Method::POST,
        &format!("/v1/keys/{}/revoke", rolled["id"].as_str().unwrap()),
        Some(json!({"reason": "done"})),
    )
    .await;
    app.call_as("kw_live_not-a-key", Method::GET, "/v1/keys", None)
        .await;
    app.call_as(&random_well_formed_key(1), Method::GET, "/v1/keys", None)
        .await;
    let reader = app
        .create_key(
            "admin",
            json!({"service": "keyward", "permissions": ["keys:read"]}),
        )
        .await;
    app.call_as(
        reader["key"].as_str().unwrap(),
        Method::POST,
        "/v1/keys/x/revoke",
        Some(json!({"reason": "r"})),
    )
    .await;

    let entries = app.audit().await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "system.init",
            "environment.create",
            "environment.create",
            "environment.create",
            "key.create",
            "role.create",
            "role.create",
            "vault.unseal",
            "key.create",
            "key.update",
            "key.roll",
            "key.revoke",
            "auth.failed",
            "auth.failed",
            "key.create",
            "auth.forbidden",
        ]
    );
    let text = serde_json::to_string(&entries).unwrap();
    for secret in [
        &app.root_key,
        created["key"].as_str().unwrap(),
        rolled["key"].as_str().unwrap(),
        reader["key"].as_str().unwrap(),
    ] {
        assert!(
            !text.contains(&secret[secret.len() - 40..]),
            "a secret reached the audit log"
        );
    }
    assert_eq!(entries[12]["details"]["reason"], "malformed");
    assert_eq!(entries[13]["details"]["reason"], "unknown_key");
    assert_eq!(entries[15]["actor"], reader["id"]);
    // The chain links.
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
}

#[tokio::test]
async fn metrics_and_openapi() {
    let app = spawn_app().await;
    let key = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    app.verify_code(&key).await;
    app.verify_code("nope").await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"keyward_verifications_total{code="VALID"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"keyward_verifications_total{code="MALFORMED"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("keyward_verify_duration_seconds_bucket"),
        "{text}"
    );

    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/keys", "post"),
        ("/v1/keys", "get"),
        ("/v1/keys/{id}", "get"),
        ("/v1/keys/{id}", "patch"),
        ("/v1/keys/{id}/revoke", "post"),
        ("/v1/keys/{id}/roll", "post"),
        ("/v1/verify", "post"),
        ("/v1/audit", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/roles", "post"),
        ("/v1/roles/{name}", "put"),
        ("/v1/plans", "post"),
        ("/v1/plans/{name}", "delete"),
        ("/v1/environments", "post"),
        ("/v1/environments/{name}", "patch"),
        ("/v1/keys/{id}/grants", "post"),
        ("/v1/keys/{id}/effective-permissions", "get"),
        ("/v1/leases/{id}/release", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    // Every reference in the document resolves.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "unresolved $ref {name}"
        );
    }
    let (status, ready) = app.call(Method::GET, "/readyz", None).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
}

async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

/// Every route answers bad input with a 4xx JSON error with a stable code: never a 500.
#[tokio::test]
async fn bad_input_table() {
    let app = spawn_app_with(ServerConfig {
        body_limit_bytes: 4096,
        ..ServerConfig::default()
    })
    .await;
    let root = app.root_key.clone();
    let id = app.create_key("live", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let huge = json!({"environment": "live", "name": "x".repeat(5000), "owner": "o"})
        .to_string()
        .into_bytes();
    let long_name = json!({"environment": "live", "name": "x".repeat(300), "owner": "o"})
        .to_string()
        .into_bytes();
    let mut non_utf8 = br#"{"environment":"live","name":""#.to_vec();
    non_utf8.extend([0xff, 0xfe]);
    non_utf8.extend(br#"","owner":"o"}"#);
    let keys = "/v1/keys".to_owned();
    let one = format!("/v1/keys/{id}");
    let revoke = format!("/v1/keys/{id}/revoke");
    let roll = format!("/v1/keys/{id}/roll");
    let b = |v: Value| v.to_string().into_bytes();
    let cases: Vec<(Method, &str, Option<&str>, Vec<u8>, u16, &str)> = vec![
        (
            Method::POST,
            &keys,
            Some(&root),
            b"{".to_vec(),
            400,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b"[]".to_vec(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o"}))
                .into_iter()
                .chain(*b" x")
                .collect(),
            400,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            Vec::new(),
            400,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            non_utf8,
            400,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            huge,
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            long_name,
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": 5, "owner": "o"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "colour": "red"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "LIVE!", "name": "n", "owner": "o"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "prod", "name": "n", "owner": "o"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": " ", "owner": "o"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "a\u{0}b", "owner": "o"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "permissions": ["bad"]})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": 0})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": -1})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": u64::MAX})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(
                json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": 5, "expires_at": "2030-01-01T00:00:00Z"}),
            ),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(
                json!({"environment": "live", "name": "n", "owner": "o", "expires_at": "2001-01-01T00:00:00Z"}),
            ),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(
                json!({"environment": "live", "name": "n", "owner": "o", "expires_at": "9999-12-31T00:00:00Z"}),
            ),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "expires_at": "tomorrow"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "meta": [1]})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            Some(&root),
            b(json!({"environment": "live", "name": "n", "owner": "o", "service": "other"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &keys,
            None,
            b(json!({"environment": "live", "name": "n", "owner": "o"})),
            401,
            "UNAUTHORIZED",
        ),
        (
            Method::POST,
            &keys,
            Some("Basic abc"),
            b(json!({"environment": "live", "name": "n", "owner": "o"})),
            401,
            "UNAUTHORIZED",
        ),
        (
            Method::GET,
            "/v1/keys?limit=0",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/keys?limit=abc",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/keys?status=zombie",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/keys?cursor=zzz",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/keys?sort=name",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/keys",
            None,
            Vec::new(),
            401,
            "UNAUTHORIZED",
        ),
        (
            Method::GET,
            "/v1/keys/not-an-id",
            Some(&root),
            Vec::new(),
            404,
            "NOT_FOUND",
        ),
        (
            Method::GET,
            "/v1/keys/01a2211c-1c6d-7f55-b849-76819c743f7a",
            Some(&root),
            Vec::new(),
            404,
            "NOT_FOUND",
        ),
        (Method::GET, &one, None, Vec::new(), 401, "UNAUTHORIZED"),
        (
            Method::PATCH,
            &one,
            Some(&root),
            b(json!({"enabled": "yes"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::PATCH,
            &one,
            Some(&root),
            b(json!({"status": "revoked"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::PATCH,
            &one,
            Some(&root),
            b(json!({"expires_at": "2000-01-01T00:00:00Z"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::PATCH,
            &one,
            Some(&root),
            b(json!({"meta": "not an object", "name": "y"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::PATCH,
            "/v1/keys/01a2211c-1c6d-7f55-b849-76819c743f7a",
            Some(&root),
            b(json!({"name": "x"})),
            404,
            "NOT_FOUND",
        ),
        (
            Method::POST,
            &revoke,
            Some(&root),
            b(json!({})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &revoke,
            Some(&root),
            b(json!({"reason": ""})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &revoke,
            Some(&root),
            b"reason=x".to_vec(),
            400,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            &roll,
            Some(&root),
            b(json!({"grace_period_s": -5})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &roll,
            Some(&root),
            b(json!({"grace_period_s": 999_999_999})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            &roll,
            Some(&root),
            b(json!({"grace_period_s": 1.5})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/verify",
            Some(&root),
            b(json!({"key": ["a"]})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/verify",
            Some(&root),
            b(json!({"key": "k", "environment": "Prod!"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/verify",
            Some(&root),
            b(json!({"key": "k", "ip": "1.2.3"})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/verify",
            Some(&root),
            b(json!({})),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/verify",
            None,
            b(json!({"key": "k"})),
            401,
            "UNAUTHORIZED",
        ),
        (
            Method::POST,
            "/v1/verify",
            Some("kw_live_x"),
            b(json!({"key": "k"})),
            401,
            "UNAUTHORIZED",
        ),
        (
            Method::GET,
            "/v1/audit?cursor=-1",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/audit?limit=5000",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/audit",
            None,
            Vec::new(),
            401,
            "UNAUTHORIZED",
        ),
        (
            Method::DELETE,
            "/v1/verify",
            Some(&root),
            Vec::new(),
            405,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::GET,
            "/v2/anything",
            Some(&root),
            Vec::new(),
            404,
            "NOT_FOUND",
        ),
        (
            Method::GET,
            "/v1/audit?cursor=9223372036854775808",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/v1/keys/%FF%FE",
            Some(&root),
            Vec::new(),
            400,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            "/v1/keys/%C3%28/revoke",
            Some(&root),
            b(json!({"reason": "r"})),
            400,
            "INVALID_FIELD",
        ),
    ];
    for (method, path, token, body, status, code) in cases {
        let label = format!("{method} {path} {:.60}", String::from_utf8_lossy(&body));
        let (got, err) = raw(&app, method, path, token, body).await;
        assert_eq!(got, status, "{label}: {err}");
        assert_eq!(err["error"]["code"], code, "{label}: {err}");
        assert!(
            !err["error"]["message"].as_str().unwrap().is_empty(),
            "{label}"
        );
        assert!(
            !err["error"]["request_id"].as_str().unwrap().is_empty(),
            "{label}"
        );
    }
    // A field error names the field.
    let (_, err) = raw(
        &app,
        Method::POST,
        "/v1/keys",
        Some(&root),
        b(json!({"environment": "live", "name": 5, "owner": "o"})),
    )
    .await;
    assert_eq!(err["error"]["field"], "name");
    // A garbage key is not an error: verify answers MALFORMED.
    let (status, verdict) = raw(
        &app,
        Method::POST,
        "/v1/verify",
        Some(&root),
        b(json!({"key": "\u{0}\u{ffff}"})),
    )
    .await;
    assert_eq!((status, verdict["code"].as_str()), (200, Some("MALFORMED")));
    // Nothing was lost or changed by the refused requests: the key is still valid.
    let (_, shown) = app.call(Method::GET, &one, None).await;
    assert_eq!(shown["status"], "active");
}

#[tokio::test]
async fn metadata_is_bounded() {
    let app = spawn_app().await;
    let big = json!({"big": "x".repeat(9000)});
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "live", "name": "n", "owner": "o", "meta": big})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("meta")),
        "{err}"
    );
}

#[tokio::test]
async fn error_messages_never_echo_a_presented_key() {
    let app = spawn_app().await;
    let key = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, err) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": key})),
        )
        .await;
    assert!(!err.to_string().contains(&key[10..]), "{err}");
    let (_, err) = app.call_as(&key, Method::GET, "/v1/keys", None).await;
    assert!(!err.to_string().contains(&key[10..]), "{err}");
}
