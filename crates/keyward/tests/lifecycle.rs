//! Key lifecycle governance: emergency revocation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyward_core::key::encode_key;
use keyward_core::{EnvironmentName, ServiceName, Timestamp};
use keyward_store::{Changes, Store};
use keyward_testkit::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

/// Writes `count` keys of `owner` in `environment` straight to the store, tagged as the service
/// tags them, and returns their plaintexts. (Creating ten thousand keys one call at a time
/// would be a test of fsync.)
async fn import_keys(app: &TestApp, environment: &str, owner: &str, count: u32) -> Vec<String> {
    let env = EnvironmentName::parse(environment).unwrap();
    let prefix = ServiceName::Default.prefix();
    let ids = keyward_crypto::KeyIds::default();
    let now = Timestamp::from_unix_ms(app.clock.now_ms());
    let keys = app.authority.keys();
    let mut plaintexts = Vec::new();
    let mut records = Vec::new();
    for i in 0..count {
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(&i.to_le_bytes());
        secret[4..4 + owner.len().min(28)]
            .copy_from_slice(&owner.as_bytes()[..owner.len().min(28)]);
        let key = encode_key(&prefix, &env, &secret);
        let record = keys
            .record_for_import(ids.next(now).unwrap(), &key, owner, now)
            .unwrap();
        records.push(record);
        plaintexts.push(key);
    }
    for chunk in records.chunks(5_000) {
        app.store
            .apply(Changes {
                insert_keys: chunk.to_vec(),
                ..Changes::default()
            })
            .await
            .unwrap();
    }
    plaintexts
}

async fn revoke(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    app.call_as(token, Method::POST, "/v1/keys/revoke", Some(body))
        .await
}

async fn admin_key(app: &TestApp, permissions: &[&str], extra: Value) -> Value {
    let mut body = json!({"service": "keyward", "permissions": permissions});
    if let (Some(obj), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
    app.create_key("admin", body).await
}

fn entries_of<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test]
async fn ten_thousand_keys_revoked_in_one_call_are_refused_before_it_returns() {
    let app = spawn_app().await;
    let leaked = import_keys(&app, "live", "leaky-team", 10_000).await;
    let bystander = app
        .create_key("live", json!({"owner": "careful-team"}))
        .await;
    let bystander = bystander["key"].as_str().unwrap().to_owned();
    // Cached as valid first: the revocation must reach the cache, not only the store.
    let sample: Vec<&String> = leaked.iter().step_by(97).collect();
    for key in &sample {
        assert_eq!(app.verify_code(key).await, "VALID");
    }

    let (status, dry) = revoke(
        &app,
        &app.root_key,
        json!({"owner": "leaky-team", "reason": "pasted in a public repo", "dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["revoked"], 10_000);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        app.verify_code(sample[0]).await,
        "VALID",
        "a dry run revokes nothing"
    );

    let (status, done) = revoke(
        &app,
        &app.root_key,
        json!({"owner": "leaky-team", "reason": "pasted in a public repo"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["revoked"], 10_000);
    assert_eq!(done["more"], false);
    for key in &sample {
        assert_eq!(app.verify_code(key).await, "REVOKED");
    }
    assert_eq!(app.verify_code(&bystander).await, "VALID");

    // One audit entry, naming every key, with the reason and the count.
    let entries = app.audit().await;
    let bulk = entries_of(&entries, "key.revoke_bulk");
    assert_eq!(bulk.len(), 1);
    let details = &bulk[0]["details"];
    assert_eq!(details["count"], 10_000);
    assert_eq!(details["ids"].as_array().unwrap().len(), 10_000);
    assert_eq!(details["reason"], "pasted in a public repo");
    assert_eq!(details["selector"]["owner"], "leaky-team");

    // Again: nothing left to revoke, and revoked keys are not counted twice.
    let (_, again) = revoke(
        &app,
        &app.root_key,
        json!({"owner": "leaky-team", "reason": "again"}),
    )
    .await;
    assert_eq!(again["revoked"], 0);
}

#[tokio::test]
async fn selectors_combine_and_a_key_never_revokes_itself() {
    let app = spawn_app().await;
    let live = app.create_key("live", json!({"owner": "a"})).await;
    let test = app.create_key("test", json!({"owner": "a"})).await;
    let other = app.create_key("live", json!({"owner": "b"})).await;
    let code = |k: &Value| k["key"].as_str().unwrap().to_owned();

    // owner AND environment
    let (status, done) = revoke(
        &app,
        &app.root_key,
        json!({"owner": "a", "environment": "live", "reason": "r"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["revoked"], 1);
    assert_eq!(app.verify_code(&code(&live)).await, "REVOKED");
    assert_eq!(app.verify_code(&code(&test)).await, "VALID");

    // By start: the leaked key as someone saw it.
    let start = {
        let (_, shown) = app
            .call(
                Method::GET,
                &format!("/v1/keys/{}", test["id"].as_str().unwrap()),
                None,
            )
            .await;
        shown["start"].as_str().unwrap().to_owned()
    };
    let (_, done) = revoke(&app, &app.root_key, json!({"start": start, "reason": "r"})).await;
    assert_eq!(done["revoked"], 1, "{done}");
    assert_eq!(app.verify_code(&code(&test)).await, "REVOKED");

    // By ids: one key named several ways is one key.
    let id = other["id"].as_str().unwrap();
    let (_, done) = revoke(
        &app,
        &app.root_key,
        json!({"ids": [id, id, id.to_uppercase(), id.replace('-', "")], "reason": "r"}),
    )
    .await;
    assert_eq!(done["revoked"], 1, "{done}");

    // Everything created before a time: every other key, never the caller itself.
    let admin = admin_key(&app, &["keys:read"], json!({})).await;
    let later = Timestamp::from_unix_ms(app.clock.now_ms())
        .plus_seconds(3600)
        .to_rfc3339();
    let (_, done) = revoke(
        &app,
        &app.root_key,
        json!({"created_before": later, "reason": "incident 42"}),
    )
    .await;
    assert_eq!(
        done["revoked"], 1,
        "only the weaker admin key was left: {done}"
    );
    assert_eq!(done["skipped_self"], true);
    let (status, _) = app
        .call_as(
            admin["key"].as_str().unwrap(),
            Method::GET,
            "/v1/keys",
            None,
        )
        .await;
    assert_eq!(status, 401, "the revoked admin key no longer authenticates");
    let (status, _) = app.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200, "the root key still works");
}

#[tokio::test]
async fn bad_selectors_and_callers_are_refused_with_nothing_changed() {
    let app = spawn_app().await;
    let victim = app.create_key("live", json!({"owner": "victim"})).await;
    let victim_key = victim["key"].as_str().unwrap().to_owned();
    let root = app.root_key.clone();
    let cases = [
        (json!({"reason": "no selector"}), 400, "INVALID_FIELD"),
        (
            json!({"ids": [], "reason": "empty ids"}),
            400,
            "INVALID_FIELD",
        ),
        (json!({"owner": "victim"}), 400, "INVALID_FIELD"),
        (
            json!({"owner": "victim", "reason": " "}),
            400,
            "INVALID_FIELD",
        ),
        (json!({"owner": "", "reason": "r"}), 400, "INVALID_FIELD"),
        (
            json!({"owner": "victim", "reason": "r", "teem": "x"}),
            400,
            "INVALID_FIELD",
        ),
        (
            json!({"ids": ["not-an-id"], "reason": "r"}),
            400,
            "INVALID_FIELD",
        ),
        (
            json!({"start": "kw_live_%", "reason": "r"}),
            400,
            "INVALID_FIELD",
        ),
        (
            json!({"environment": "LIVE!", "reason": "r"}),
            400,
            "INVALID_FIELD",
        ),
        (
            json!({"created_before": "yesterday", "reason": "r"}),
            400,
            "INVALID_FIELD",
        ),
        (
            json!({"ids": ["0190f5d2-7a4e-7000-8000-000000000000"], "reason": "r"}),
            404,
            "NOT_FOUND",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = revoke(&app, &root, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert!(
            !answer.to_string().contains("not-an-id") && !answer.to_string().contains("LIVE!"),
            "the error never echoes the input: {answer}"
        );
    }
    let too_many: Vec<String> = (0..1_001)
        .map(|_| "0190f5d2-7a4e-7000-8000-000000000000".to_owned())
        .collect();
    let (status, answer) = revoke(&app, &root, json!({"ids": too_many, "reason": "r"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(app.verify_code(&victim_key).await, "VALID");

    // Without keys:revoke.
    let reader = admin_key(&app, &["keys:read"], json!({})).await;
    let reader = reader["key"].as_str().unwrap();
    let (status, _) = revoke(&app, reader, json!({"owner": "victim", "reason": "r"})).await;
    assert_eq!(status, 403);

    // A scoped admin reaches only its environments: naming another is refused, and without an
    // environment its selector is bounded by its scope.
    let scoped = admin_key(
        &app,
        &["keys:revoke", "keys:read"],
        json!({"admin_environments": ["test"]}),
    )
    .await;
    let scoped = scoped["key"].as_str().unwrap();
    let (status, answer) = revoke(
        &app,
        scoped,
        json!({"environment": "live", "owner": "victim", "reason": "r"}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = revoke(&app, scoped, json!({"owner": "victim", "reason": "r"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["revoked"], 0, "the live key is beyond its reach");
    let (status, _) = revoke(&app, scoped, json!({"ids": [victim["id"]], "reason": "r"})).await;
    assert_eq!(status, 404, "as if it did not exist");
    assert_eq!(app.verify_code(&victim_key).await, "VALID");

    // A weaker admin whose selector matches a stronger admin key revokes nothing at all.
    let strong = admin_key(
        &app,
        &["keys:revoke", "keys:create", "roles:write"],
        json!({}),
    )
    .await;
    let weak = admin_key(&app, &["keys:revoke"], json!({})).await;
    let weak = weak["key"].as_str().unwrap();
    let later = Timestamp::from_unix_ms(app.clock.now_ms())
        .plus_seconds(3600)
        .to_rfc3339();
    for dry_run in [true, false] {
        let (status, answer) = revoke(
            &app,
            weak,
            json!({"created_before": later, "reason": "overreach", "dry_run": dry_run}),
        )
        .await;
        assert_eq!(status, 403, "dry run {dry_run}: {answer}");
    }
    assert_eq!(
        app.verify_code(&victim_key).await,
        "VALID",
        "nothing half-applied"
    );
    let (status, _) = app
        .call_as(
            strong["key"].as_str().unwrap(),
            Method::GET,
            "/v1/keys",
            None,
        )
        .await;
    assert_eq!(
        status, 403,
        "the stronger key still authenticates (it lacks keys:read)"
    );

    // Every refusal of an authenticated caller is audited; nothing was revoked.
    let entries = app.audit().await;
    assert!(entries_of(&entries, "key.revoke_bulk").is_empty());
    let refused: Vec<&Value> = entries_of(&entries, "auth.forbidden")
        .into_iter()
        .filter(|e| e["details"]["operation"] == "key.revoke")
        .collect();
    assert!(refused.len() >= 3, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|e| e["target"].as_str().unwrap_or("").contains("matching keys")),
        "{refused:?}"
    );
}

async fn transfer(app: &TestApp, token: &str, owner: &str, body: Value) -> (u16, Value) {
    app.call_as(
        token,
        Method::POST,
        &format!("/v1/owners/{owner}/transfer"),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn an_owners_keys_move_to_another_owner_at_once_with_one_audit_entry() {
    let app = spawn_app().await;
    let mut keys = Vec::new();
    for env in ["live", "test", "live"] {
        keys.push(app.create_key(env, json!({"owner": "alice"})).await);
    }
    let revoked = app.create_key("live", json!({"owner": "alice"})).await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/revoke", revoked["id"].as_str().unwrap()),
            Some(json!({"reason": "old"})),
        )
        .await;
    assert_eq!(status, 200);
    let bob = app.create_key("live", json!({"owner": "bob"})).await;

    let (status, done) = transfer(
        &app,
        &app.root_key,
        "alice",
        json!({"to": "carol", "reason": "alice left the company"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["moved"], 3, "revoked keys stay as they are");
    for key in &keys {
        let (_, shown) = app
            .call(
                Method::GET,
                &format!("/v1/keys/{}", key["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(shown["owner"], "carol");
        // verify names the new owner at once (the cache learned of the change).
        let (_, verdict) = app
            .call(Method::POST, "/v1/verify", Some(json!({"key": key["key"]})))
            .await;
        assert_eq!(verdict["code"], "VALID");
        assert_eq!(verdict["owner"], "carol");
    }
    let (_, shown) = app
        .call(
            Method::GET,
            &format!("/v1/keys/{}", bob["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(shown["owner"], "bob");
    let entries = app.audit().await;
    let moved = entries_of(&entries, "key.owner_transfer");
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0]["details"]["count"], 3);
    assert_eq!(moved[0]["details"]["to"], "carol");
    assert_eq!(moved[0]["details"]["ids"].as_array().unwrap().len(), 3);

    // Nothing of alice's is left to move; to oneself is no transfer.
    let (status, body) = transfer(
        &app,
        &app.root_key,
        "alice",
        json!({"to": "dave", "reason": "r"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = transfer(
        &app,
        &app.root_key,
        "carol",
        json!({"to": "carol", "reason": "r"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_FIELD");
    for bad in [
        json!({"to": "", "reason": "r"}),
        json!({"to": "x", "reason": ""}),
        json!({"to": "x"}),
        json!({"to": "x", "reason": "r", "cc": "y"}),
        json!({"to": 7, "reason": "r"}),
    ] {
        let (status, body) = transfer(&app, &app.root_key, "carol", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn a_transfer_never_reaches_past_the_callers_scope_or_strength() {
    let app = spawn_app().await;
    let live = app.create_key("live", json!({"owner": "alice"})).await;
    let test = app.create_key("test", json!({"owner": "alice"})).await;
    let owner_of = |key: &Value| {
        let id = key["id"].as_str().unwrap().to_owned();
        let app = &app;
        async move {
            let (_, shown) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
            shown["owner"].as_str().unwrap().to_owned()
        }
    };

    // Without keys:update.
    let reader = admin_key(&app, &["keys:read"], json!({})).await;
    let (status, _) = transfer(
        &app,
        reader["key"].as_str().unwrap(),
        "alice",
        json!({"to": "mallory", "reason": "r"}),
    )
    .await;
    assert_eq!(status, 403);

    // A scoped admin moves only the keys of its environment.
    let scoped = admin_key(
        &app,
        &["keys:update", "keys:read"],
        json!({"admin_environments": ["test"]}),
    )
    .await;
    let (status, done) = transfer(
        &app,
        scoped["key"].as_str().unwrap(),
        "alice",
        json!({"to": "mallory", "reason": "r"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["moved"], 1);
    assert_eq!(owner_of(&test).await, "mallory");
    assert_eq!(owner_of(&live).await, "alice");

    // A weaker admin cannot take a stronger admin key's ownership with the rest: nothing moves.
    let strong = admin_key(
        &app,
        &["keys:update", "keys:revoke", "roles:write"],
        json!({"owner": "alice"}),
    )
    .await;
    let weak = admin_key(&app, &["keys:update"], json!({})).await;
    let (status, body) = transfer(
        &app,
        weak["key"].as_str().unwrap(),
        "alice",
        json!({"to": "mallory", "reason": "r"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(owner_of(&live).await, "alice", "nothing half-applied");
    assert_eq!(owner_of(&strong).await, "alice");
    let refused = entries_of(&app.audit().await, "auth.forbidden")
        .into_iter()
        .filter(|e| e["details"]["operation"] == "key.update")
        .count();
    assert!(refused >= 2, "the refusals are audited");
}
