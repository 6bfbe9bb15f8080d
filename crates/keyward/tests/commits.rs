//! Commits cannot half-happen: a revoke whose client resets the connection, or whose request
//! timeout fires, either never reached the store or is honoured by every later verification,
//! and no later write is refused because of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyward_store::prelude::*;
use std::time::Duration;

use keyward_server::ServerConfig;
use keyward_service::VerifyRequest;
use keyward_testkit::{TestApp, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::json;

/// A small deterministic generator: the test needs spread, not secrecy.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn keys(app: &TestApp, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let created = app.create_key("live", json!({})).await;
        out.push((
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

/// Waits until no write has landed for half a second: revokes already begun finish on their own
/// tasks after their clients went away.
async fn settle(app: &TestApp) {
    let head = || async { app.store.audit_head().await.unwrap().map_or(0, |h| h.seq) };
    let mut last = head().await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = head().await;
        if now == last {
            return;
        }
        last = now;
    }
}

/// Every key revoked in the store answers REVOKED, every other one VALID; then a write and a
/// read of the audit log both succeed.
async fn check(app: &TestApp, keys: &[(String, String)]) -> usize {
    let mut revoked = 0;
    for (id, key) in keys {
        let (status, shown) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
        assert_eq!(status, 200, "{shown}");
        let verdict = app
            .authority
            .verifier()
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap();
        let stored = shown["status"].as_str().unwrap();
        let expected = if stored == "revoked" {
            revoked += 1;
            "REVOKED"
        } else {
            "VALID"
        };
        assert_eq!(
            verdict.code.as_str(),
            expected,
            "key {id} is {stored} in the store"
        );
    }
    // The next writes see a true audit head: no 409, no 500.
    for _ in 0..5 {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/keys",
                Some(json!({"environment": "live", "name": "after", "owner": "o"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = app.call(Method::GET, "/v1/audit?limit=10", None).await;
    assert_eq!(status, 200, "{body}");
    revoked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_whose_connections_are_reset_mid_way_are_whole_or_absent() {
    let app = spawn_app().await;
    let keys = keys(&app, 1000).await;
    // Warm the verification cache, so a revoke must invalidate it to be seen.
    for (_, key) in &keys {
        let verdict = app
            .authority
            .verifier()
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap();
        assert_eq!(verdict.code.as_str(), "VALID");
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut batch = tokio::task::JoinSet::new();
    for (i, (id, _)) in keys.iter().enumerate() {
        let body = json!({"reason": "reset test"}).to_string();
        let request = format!(
            "POST /v1/keys/{id}/revoke HTTP/1.1\r\nhost: keyward\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            app.root_key,
            body.len()
        );
        // Resets land anywhere from before the request is read to after it was answered.
        let wait_us = rng.next() % 4000;
        let addr = app.addr;
        batch.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            // A few hundred bytes: one write on a fresh socket takes them all.
            stream.writable().await.unwrap();
            assert_eq!(stream.try_write(request.as_bytes()).unwrap(), request.len());
            tokio::time::sleep(Duration::from_micros(wait_us)).await;
            stream.set_zero_linger().unwrap();
            drop(stream);
        });
        if i % 50 == 49 {
            while batch.join_next().await.is_some() {}
        }
    }
    while batch.join_next().await.is_some() {}
    settle(&app).await;
    let revoked = check(&app, &keys).await;
    // The resets must have hit both sides of the commit for the test to mean anything.
    assert!(
        revoked > 0 && revoked < keys.len(),
        "{revoked} of {} revoked",
        keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_cut_off_by_the_request_timeout_are_whole_or_absent() {
    let app = spawn_app_with(ServerConfig {
        request_timeout: Duration::from_micros(1500),
        ..ServerConfig::default()
    })
    .await;
    let mut keys = Vec::new();
    for _ in 0..300 {
        let (record, key) = app
            .authority
            .keys()
            .create_key(
                &app.authority
                    .verifier()
                    .authenticate(
                        Some(&app.root_key),
                        keyward_service::Operation::KeyCreate,
                        None,
                    )
                    .await
                    .unwrap(),
                keyward_service::NewKey {
                    service: keyward_core::ServiceName::Default,
                    environment: keyward_core::EnvironmentName::parse("live").unwrap(),
                    name: "n".into(),
                    owner: "o".into(),
                    purpose: None,
                    permissions: Vec::new(),
                    expires_at: None,
                    ttl_s: None,
                    meta: serde_json::Map::new(),
                    access: keyward_core::KeyAccess::default(),
                    quota_remaining: None,
                    rotation: None,
                    delivery: None,
                },
            )
            .await
            .unwrap();
        keys.push((record.id.to_string(), key.expose().to_owned()));
    }
    let mut answers = vec![0u16; keys.len()];
    let mut batch = tokio::task::JoinSet::new();
    for (i, (id, _)) in keys.iter().enumerate() {
        let (client, url, token) = (
            app.client.clone(),
            app.url(&format!("/v1/keys/{id}/revoke")),
            app.root_key.clone(),
        );
        batch.spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"reason": "timeout test"}))
                .send()
                .await
                .unwrap();
            (i, resp.status().as_u16())
        });
        if i % 30 == 29 || i + 1 == keys.len() {
            while let Some(answer) = batch.join_next().await {
                let (i, status) = answer.unwrap();
                assert!(status == 200 || status == 408, "{status}");
                answers[i] = status;
            }
        }
    }
    let timed_out = answers.iter().filter(|s| **s == 408).count();
    assert!(
        timed_out > 0,
        "no request timed out; the test proves nothing"
    );
    settle(&app).await;
    // Checking over HTTP would time out too: read the store and verify in process.
    let mut landed_after_timeout = 0;
    for ((id, key), answer) in keys.iter().zip(&answers) {
        let stored = app.authority.keys().key(id.parse().unwrap()).await.unwrap();
        let verdict = app
            .authority
            .verifier()
            .verify(key, &VerifyRequest::default())
            .await
            .unwrap();
        let revoked = stored.status == keyward_core::KeyStatus::Revoked;
        // Whole or absent: the store and verify agree, and every 200 is a revoke.
        assert_eq!(
            verdict.code.as_str(),
            if revoked { "REVOKED" } else { "VALID" },
            "key {id}"
        );
        if *answer == 200 {
            assert!(revoked, "key {id} answered 200 but is not revoked");
        }
        landed_after_timeout += usize::from(*answer == 408 && revoked);
    }
    // Revokes whose timeout fired once they had begun still ran to the end.
    assert!(
        landed_after_timeout > 0,
        "{timed_out} timed out, none landed"
    );
}
