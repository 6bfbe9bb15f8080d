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
    // B's writer does not know A's audit head until the chain check tells it; one retry.
    if b.revoke_key(&root, staged_id, "from b".into())
        .await
        .is_err()
    {
        b.revoke_key(&root, staged_id, "from b".into())
            .await
            .unwrap();
    }
    assert_eq!(
        app.verify_code(staged["key"].as_str().unwrap()).await,
        "REVOKED"
    );
    b.shutdown().await;
}
