//! Webhooks against the real server with a fake clock and a receiver on loopback: bad input,
//! signed deliveries that survive an hour of the receiver being down, in order per key and
//! checked against an independent implementation of the Standard Webhooks specification
//! (the `standardwebhooks` package from PyPI), 410 Gone, redelivery, test sends, secret
//! rotation, and notices sent once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{HashMap, HashSet};

use keyward_testkit::{Received, Receiver, TestApp, python_with, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

const DAY_S: i64 = 86_400;

async fn register(app: &TestApp, url: &str, extra: Value) -> Value {
    let mut body = json!({ "url": url });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, created) = app.call(Method::POST, "/v1/webhooks", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn deliver(app: &TestApp) -> keyward_service::DeliveryRun {
    app.authority.webhooks().run_deliveries().await.unwrap()
}

/// Checks every message's signature with the `standardwebhooks` package: for each secret, the
/// signature it computes must be one of those sent.
fn verify_with_the_reference_implementation(secrets: &[&str], messages: &[Received]) {
    let python = python_with(&["standardwebhooks==1.1.0"]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("messages.json");
    let list: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "id": m.header("webhook-id"),
                "timestamp": m.header("webhook-timestamp"),
                "signature": m.header("webhook-signature"),
                "body": String::from_utf8(m.body.clone()).unwrap(),
            })
        })
        .collect();
    std::fs::write(&input, serde_json::to_vec(&list).unwrap()).unwrap();
    let script = r#"
import json, sys
from datetime import datetime, timezone
from standardwebhooks.webhooks import Webhook
secrets = json.loads(sys.argv[2])
checked = 0
for m in json.load(open(sys.argv[1])):
    sent = m["signature"].split(" ")
    ts = datetime.fromtimestamp(int(m["timestamp"]), tz=timezone.utc)
    for secret in secrets:
        expected = Webhook(secret).sign(m["id"], ts, m["body"])
        if expected not in sent:
            sys.exit("signature mismatch for " + m["id"])
    checked += 1
print(checked)
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&input)
        .arg(serde_json::to_string(secrets).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(checked, messages.len());
}

#[tokio::test]
async fn bad_endpoints_are_refused_with_the_field_named_and_nothing_is_made() {
    let app = spawn_app().await;
    let cases = [
        (json!({"url": "ftp://hooks.example.com/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "http://127.0.0.2:9/x"}), "url"),
        (json!({"url": "http://[::1]:9/x"}), "url"),
        (json!({"url": "http://10.1.2.3/x"}), "url"),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
            "url",
        ),
        (json!({"url": "http://192.168.1.1/x"}), "url"),
        (json!({"url": "http://[::ffff:10.0.0.1]/x"}), "url"),
        (json!({"url": "http://me:pw@hooks.example.com/x"}), "url"),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": ["key.exploded"]}),
            "event_types",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "event_types": ["webhook.test"]}),
            "event_types",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "environment": "NOPE!"}),
            "environment",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "owner": ""}),
            "owner",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "environment": "nowhere"}),
            "environment",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "secret": "whsec_mine"}),
            "",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app
            .call(Method::POST, "/v1/webhooks", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(
            answer["error"]["field"].as_str().unwrap_or(""),
            field,
            "{body}: {answer}"
        );
        let text = answer.to_string();
        assert!(
            !text.contains("hooks.example.com") && !text.contains("169.254"),
            "{text}"
        );
    }
    let (_, list) = app.call(Method::GET, "/v1/webhooks", None).await;
    assert_eq!(list["webhooks"], json!([]));

    // The secret is shown once, at creation; never by GET, the list or the audit log.
    let created = register(&app, "https://hooks.example.com/ok", json!({})).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = created["id"].as_str().unwrap();
    let (_, shown) = app
        .call(Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert!(shown.get("secret").is_none(), "{shown}");
    assert_eq!(shown["signing_secrets"], 1);
    let audit = serde_json::to_string(&app.audit().await).unwrap();
    assert!(!audit.contains(&secret[6..]));
    assert!(
        !audit.contains("/ok"),
        "the URL's path stays out of the audit log"
    );

    // Webhooks are shared by every environment: a scoped admin key may not touch them.
    let (_, scoped) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "admin", "service": "keyward", "name": "ops", "owner": "ops",
                "permissions": ["webhooks:read", "webhooks:manage"], "admin_environments": ["test"]})),
        )
        .await;
    let scoped = scoped["key"].as_str().unwrap();
    let (status, _) = app.call_as(scoped, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(status, 403);
    let (status, _) = app
        .call_as(
            scoped,
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/x"})),
        )
        .await;
    assert_eq!(status, 403);
    // An endpoint receives what happens to every key: whoever sets one up must be able to
    // read keys and events.
    let (_, narrow) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "admin", "service": "keyward", "name": "hooks", "owner": "ops",
                "permissions": ["webhooks:read", "webhooks:manage"]})),
        )
        .await;
    let (status, body) = app
        .call_as(
            narrow["key"].as_str().unwrap(),
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": "https://hooks.example.com/x"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Nor take over an existing endpoint's secret, or send through it.
    let narrow = narrow["key"].as_str().unwrap();
    for path in [
        format!("/v1/webhooks/{id}/rotate-secret"),
        format!("/v1/webhooks/{id}/test"),
    ] {
        let (status, body) = app
            .call_as(narrow, Method::POST, &path, Some(json!({})))
            .await;
        assert_eq!(status, 403, "{path}: {body}");
    }
}

#[tokio::test]
async fn events_survive_an_hour_of_the_receiver_down_and_arrive_signed_and_in_order() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let created = register(&app, &receiver.url, json!({"environment": "live"})).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    receiver.answer(503);

    // Changes on several keys while the receiver is down; one in another environment.
    let mut expected: HashMap<String, Vec<&str>> = HashMap::new();
    for n in 0..6 {
        let key = app.create_key("live", json!({})).await;
        let id = key["id"].as_str().unwrap().to_owned();
        let (status, rolled) = app
            .call(
                Method::POST,
                &format!("/v1/keys/{id}/roll"),
                Some(json!({"grace_period_s": 60})),
            )
            .await;
        assert_eq!(status, 201);
        let successor = rolled["id"].as_str().unwrap().to_owned();
        if n % 2 == 0 {
            let (status, _) = app
                .call(
                    Method::PATCH,
                    &format!("/v1/keys/{successor}"),
                    Some(json!({"enabled": false})),
                )
                .await;
            assert_eq!(status, 200);
            expected
                .entry(successor.clone())
                .or_default()
                .push("key.disabled");
        }
        let (status, _) = app
            .call(
                Method::POST,
                &format!("/v1/keys/{successor}/revoke"),
                Some(json!({"reason": "test"})),
            )
            .await;
        assert_eq!(status, 200);
        expected.entry(id).or_default().push("key.rotated");
        expected.entry(successor).or_default().push("key.revoked");
    }
    let other = app.create_key("test", json!({})).await;
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/revoke", other["id"].as_str().unwrap()),
            Some(json!({"reason": "test"})),
        )
        .await;
    assert_eq!(status, 200);

    // An hour of failures, one scheduler tick every five minutes.
    for _ in 0..12 {
        let run = deliver(&app).await;
        assert_eq!(run.delivered, 0, "{run:?}");
        app.clock.advance_seconds(300);
    }
    let (_, log) = app
        .call(
            Method::GET,
            &format!(
                "/v1/webhooks/{}/deliveries",
                created["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(log["deliveries"].as_array().unwrap().len(), total, "{log}");
    let deliveries = log["deliveries"].as_array().unwrap();
    assert!(deliveries.iter().all(|d| d["state"] == "pending"), "{log}");
    // The first event of each key was tried again and again; the later ones wait behind it.
    assert!(
        deliveries
            .iter()
            .any(|d| d["attempts"].as_u64().unwrap() >= 2 && d["last_status"] == 503),
        "{log}"
    );
    assert!(deliveries.iter().any(|d| d["attempts"] == 0), "{log}");

    // Up again: once the retries fall due, everything arrives, once.
    receiver.answer(200);
    for _ in 0..8 {
        app.clock.advance_seconds(1800);
        deliver(&app).await;
    }
    let delivered: Vec<Received> = receiver
        .received()
        .into_iter()
        .filter(|m| m.json()["type"] != "webhook.test")
        .collect();
    // The receiver also saw the failed attempts (answered 503); the last copy of each id is
    // the one it accepted.
    let mut accepted: HashMap<String, Received> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for m in &delivered {
        let id = m.header("webhook-id").to_owned();
        if !accepted.contains_key(&id) {
            order.push(id.clone());
        }
        accepted.insert(id, m.clone());
    }
    assert_eq!(accepted.len(), total);
    // In order per key, as the changes were made.
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut last_accepted_index: HashMap<String, usize> = HashMap::new();
    for (i, m) in delivered.iter().enumerate() {
        last_accepted_index.insert(m.header("webhook-id").to_owned(), i);
    }
    let mut by_arrival: Vec<(&usize, &String)> =
        last_accepted_index.iter().map(|(k, v)| (v, k)).collect();
    by_arrival.sort();
    for (_, id) in by_arrival {
        let body = accepted[id].json();
        let key = body["data"]["key_id"].as_str().unwrap().to_owned();
        assert_eq!(body["data"]["environment"], "live", "the filter holds");
        seen.entry(key)
            .or_default()
            .push(body["type"].as_str().unwrap().to_owned());
    }
    for (key, types) in &expected {
        let got: Vec<&str> = seen[key].iter().map(String::as_str).collect();
        assert_eq!(&got, types, "events of {key} out of order");
    }
    // Signed as the specification says, by an independent implementation.
    let messages: Vec<Received> = accepted.values().cloned().collect();
    verify_with_the_reference_implementation(&[&secret], &messages);
    // Nothing is left pending, and nothing was sent twice after it was accepted.
    let run = deliver(&app).await;
    assert_eq!(run, keyward_service::DeliveryRun::default());
}

#[tokio::test]
async fn gone_disables_and_redelivery_test_sends_and_secret_rotation_work() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let other = Receiver::start().await;
    let created = register(&app, &receiver.url, json!({"event_types": ["key.revoked"]})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    register(&app, &other.url, json!({"event_types": ["key.revoked"]})).await;
    let first_secret = created["secret"].as_str().unwrap().to_owned();

    // 410: the endpoint is disabled, the delivery failed.
    receiver.answer(410);
    let key = app.create_key("live", json!({})).await;
    let key_id = key["id"].as_str().unwrap();
    app.call(
        Method::POST,
        &format!("/v1/keys/{key_id}/revoke"),
        Some(json!({"reason": "x"})),
    )
    .await;
    deliver(&app).await;
    let (_, shown) = app
        .call(Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(shown["enabled"], false, "{shown}");
    assert!(shown["disabled_reason"].as_str().unwrap().contains("410"));
    let (_, log) = app
        .call(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None)
        .await;
    let delivery = log["deliveries"][0].clone();
    assert_eq!(delivery["state"], "failed");
    assert_eq!(delivery["last_status"], 410);
    assert_eq!(
        other.received().len(),
        1,
        "the other endpoint is unaffected"
    );

    // Enabled again and redelivered: the same webhook-id.
    receiver.answer(200);
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let seq = delivery["seq"].as_u64().unwrap();
    let (status, again) = app
        .call(
            Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/{seq}/redeliver"),
            None,
        )
        .await;
    assert_eq!(status, 202, "{again}");
    deliver(&app).await;
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[1].json()["type"], "key.revoked");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/99999/redeliver"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A test send reaches this endpoint only.
    let (status, sent) = app
        .call(Method::POST, &format!("/v1/webhooks/{id}/test"), None)
        .await;
    assert_eq!(status, 202, "{sent}");
    deliver(&app).await;
    let last = receiver.received().pop().unwrap();
    assert_eq!(last.json()["type"], "webhook.test");
    assert_eq!(
        last.header("webhook-id"),
        sent["event_id"].as_str().unwrap()
    );
    assert_eq!(other.received().len(), 1);

    // A rotated secret: both sign during the overlap, then only the new one.
    let (status, rotated) = app
        .call(
            Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            Some(json!({"overlap_s": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, first_secret);
    assert_eq!(rotated["signing_secrets"], 2);
    app.call(Method::POST, &format!("/v1/webhooks/{id}/test"), None)
        .await;
    deliver(&app).await;
    let during = receiver.received().pop().unwrap();
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    verify_with_the_reference_implementation(&[&first_secret, &new_secret], &[during]);
    app.clock.advance_seconds(3601);
    app.call(Method::POST, &format!("/v1/webhooks/{id}/test"), None)
        .await;
    deliver(&app).await;
    let after = receiver.received().pop().unwrap();
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    verify_with_the_reference_implementation(&[&new_secret], &[after]);

    // Deleting the endpoint ends its log.
    let (status, _) = app
        .call(Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn expiry_and_rotation_notices_are_sent_once_each() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    register(
        &app,
        &receiver.url,
        json!({"event_types": ["key.expiring", "key.expired", "key.rotated"]}),
    )
    .await;
    let expiring = app.create_key("live", json!({"ttl_s": 20 * DAY_S})).await;
    let rotating = app
        .create_key(
            "live",
            json!({"rotation": {"every_days": 10, "grace_hours": 24, "notice_days": 3}}),
        )
        .await;
    for _ in 0..24 {
        app.clock.advance_seconds(DAY_S);
        // Twice a day: a notice found due again is not sent again.
        app.authority.rotation().run_due().await.unwrap();
        app.authority.rotation().run_due().await.unwrap();
        deliver(&app).await;
    }
    let got = receiver.received();
    let ids: HashSet<&str> = got.iter().map(|m| m.header("webhook-id")).collect();
    assert_eq!(ids.len(), got.len(), "no event delivered twice");
    let of = |key: &Value| -> Vec<(String, String)> {
        got.iter()
            .map(Received::json)
            .filter(|b| b["data"]["key_id"] == key["id"])
            .map(|b| {
                let what = b["data"]["reason"]
                    .as_str()
                    .map(|r| format!("{r}:{}", b["data"]["days"]))
                    .unwrap_or_default();
                (b["type"].as_str().unwrap().to_owned(), what)
            })
            .collect()
    };
    let expiry: Vec<(String, String)> = of(&expiring);
    let names: Vec<(&str, &str)> = expiry
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("key.expiring", "expiry:14"),
            ("key.expiring", "expiry:7"),
            ("key.expiring", "expiry:1"),
            ("key.expired", ""),
        ]
    );
    // The rotating key: told once before each rotation, then rotated.
    let rotation: Vec<String> = of(&rotating).into_iter().map(|(t, _)| t).collect();
    assert_eq!(rotation, ["key.expiring", "key.rotated"]);
}
