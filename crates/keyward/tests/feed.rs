//! The change feed: two service instances over one store. Whatever one of them changes, the
//! other's verification cache and catalogs learn from the store before the change returns.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use keyward_crypto::barrier::UnsealKey;
use keyward_service::{Authority, AuthorityConfig, VerifyRequest};
use keyward_testkit::spawn_app;
use reqwest::Method;
use serde_json::json;

async fn code(other: &Authority, key: &str, request: &VerifyRequest<'_>) -> String {
    other
        .verifier()
        .verify(key, request)
        .await
        .unwrap()
        .code
        .as_str()
        .to_owned()
}

#[tokio::test]
async fn a_second_instance_sees_every_change_the_first_makes() {
    let app = spawn_app().await;
    let early = app.create_key("live", json!({})).await;
    // B: another authority over the same store, as a second node would be.
    let b = Authority::open_with_key(
        app.store.clone(),
        Arc::new(app.clock.clone()),
        &UnsealKey::from_text(&app.unseal_key).unwrap(),
        AuthorityConfig::default(),
    )
    .await
    .unwrap();
    let plain = VerifyRequest::default();
    let early_key = early["key"].as_str().unwrap();
    assert_eq!(code(&b, early_key, &plain).await, "VALID");
    // A key made on A after B opened verifies on B at once: its known-hash filter learned it.
    let late = app.create_key("live", json!({})).await;
    let late_key = late["key"].as_str().unwrap();
    assert_eq!(code(&b, late_key, &plain).await, "VALID");
    // A revoke on A is honoured by B's (warm) cache before A's call has returned.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/revoke", early["id"].as_str().unwrap()),
            Some(json!({"reason": "leaked"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(code(&b, early_key, &plain).await, "REVOKED");
    // Role edits reach B's catalog.
    app.call(
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "reader", "permissions": ["invoices:read"]})),
    )
    .await;
    let holder = app.create_key("live", json!({"roles": ["reader"]})).await;
    let holder_key = holder["key"].as_str().unwrap();
    let query = keyward_core::PermissionQuery::parse("invoices:read").unwrap();
    let wants = VerifyRequest {
        permissions: Some(&query),
        ..VerifyRequest::default()
    };
    assert_eq!(code(&b, holder_key, &wants).await, "VALID");
    let (status, _) = app
        .call(
            Method::PUT,
            "/v1/roles/reader",
            Some(json!({"permissions": ["orders:read"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        code(&b, holder_key, &wants).await,
        "INSUFFICIENT_PERMISSIONS"
    );
    // Policy changes too.
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"allowed_cidrs": ["10.0.0.0/8"]}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(code(&b, late_key, &plain).await, "IP_DENIED");
    // A new environment made on A: B learns its keyring and secret from the feed.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/environments",
            Some(json!({"name": "stage"})),
        )
        .await;
    assert_eq!(status, 201);
    let staged = app.create_key("stage", json!({})).await;
    assert_eq!(
        code(&b, staged["key"].as_str().unwrap(), &plain).await,
        "VALID"
    );
    // And the other way round: a revoke made through B is seen by A.
    let staged_id: keyward_core::KeyId = staged["id"].as_str().unwrap().parse().unwrap();
    let root = b
        .verifier()
        .authenticate(
            Some(&app.root_key),
            keyward_service::Operation::KeyRevoke,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        app.verify_code(staged["key"].as_str().unwrap()).await,
        "VALID"
    );
    // B's writer does not know A's audit head until the chain check tells it: the revoke loses
    // that race, re-reads the head and the key, and runs again by itself.
    let revoked = b
        .keys()
        .revoke_key(&root, staged_id, "from b".into())
        .await
        .expect("a revoke that lost the race for the audit head is retried, not refused");
    assert_eq!(revoked.status, keyward_core::KeyStatus::Revoked);
    assert_eq!(
        app.verify_code(staged["key"].as_str().unwrap()).await,
        "REVOKED"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_secret_changed_on_one_instance_is_read_afresh_on_the_other() {
    let app = spawn_app().await;
    let b = Authority::open_with_key(
        app.store.clone(),
        Arc::new(app.clock.clone()),
        &UnsealKey::from_text(&app.unseal_key).unwrap(),
        AuthorityConfig::default(),
    )
    .await
    .unwrap();
    let put = |value: &'static str| {
        app.call(
            Method::PUT,
            "/v1/secrets/live/payments/stripe",
            Some(json!({ "data": { "token": value } })),
        )
    };
    assert_eq!(put("first").await.0, 200);
    let env = keyward_core::EnvironmentName::parse("live").unwrap();
    let actor = b
        .verifier()
        .authenticate_for(
            Some(&app.root_key),
            keyward_service::Operation::SecretRead,
            Some("payments/stripe"),
            None,
        )
        .await
        .unwrap();
    let read = || async {
        let read = b
            .secrets()
            .read_secret(&actor, &env, "payments/stripe", None, None)
            .await
            .unwrap();
        (read.version, read.data["token"].clone())
    };
    // B reads it once: it is in B's secret cache now.
    assert_eq!(read().await, (1, json!("first")));
    // A new version written through A reaches B's cache through the feed, as does a delete.
    assert_eq!(put("second").await.0, 200);
    assert_eq!(read().await, (2, json!("second")));
    let (status, _) = app
        .call(Method::DELETE, "/v1/secrets/live/payments/stripe", None)
        .await;
    assert_eq!(status, 200);
    let gone = b
        .secrets()
        .read_secret(&actor, &env, "payments/stripe", None, None)
        .await;
    assert!(
        matches!(gone, Err(keyward_service::ServiceError::NotFound { .. })),
        "a deleted secret is not served from the other instance's cache: {gone:?}"
    );
    b.shutdown().await;
}
