//! Rotation by policy, against the real server with a fake clock: policies and their bad
//! input, the scheduler over a simulated year, restarts in the middle of a run, the holder's
//! own rotation and its abuse, and the version history.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{HashMap, HashSet};

use keyward_testkit::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

const DAY_S: i64 = 86_400;

fn key_of(created: &Value) -> String {
    created["key"].as_str().unwrap().to_owned()
}

fn id_of(created: &Value) -> String {
    created["id"].as_str().unwrap().to_owned()
}

async fn show(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn run_scheduler(app: &TestApp) -> keyward_service::RotationRun {
    app.authority.rotation().run_due().await.unwrap()
}

/// `POST /v1/self/rotate` with `key`: status and body.
async fn rotate_self(app: &TestApp, key: &str) -> (u16, Value) {
    app.call_as(key, Method::POST, "/v1/self/rotate", None)
        .await
}

#[tokio::test]
async fn bad_policies_name_their_field_and_change_nothing() {
    let app = spawn_app().await;
    let cases = [
        (json!({"every_days": 0, "grace_hours": 0}), "every_days"),
        (json!({"every_days": 3651, "grace_hours": 0}), "every_days"),
        (json!({"every_days": -30, "grace_hours": 0}), "every_days"),
        (json!({"every_days": 1, "grace_hours": 24}), "grace_hours"),
        (
            json!({"every_days": 30, "grace_hours": 1, "notice_days": 30}),
            "notice_days",
        ),
        (
            json!({"every_days": 30, "grace_hours": 1, "notice_days": -1}),
            "notice_days",
        ),
        (json!({"every_days": 30}), "rotation"),
        (
            json!({"every_days": 30, "grace_hours": 1, "sooner": true}),
            "rotation",
        ),
    ];
    let created = app.create_key("live", json!({})).await;
    let id = id_of(&created);
    let before = show(&app, &id).await;
    let audit_before = app.audit().await.len();
    for (policy, field) in cases {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/keys",
                Some(json!({"environment": "live", "name": "n", "owner": "o", "rotation": policy})),
            )
            .await;
        assert_eq!(status, 400, "{policy}: {body}");
        assert_eq!(body["error"]["code"], "INVALID_FIELD", "{body}");
        let named = body["error"]["field"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(named.contains(field), "{policy}: {named}");
        let (status, body) = app
            .call(
                Method::PATCH,
                &format!("/v1/keys/{id}"),
                Some(json!({"rotation": policy})),
            )
            .await;
        assert_eq!(status, 400, "{policy}: {body}");
        let (status, body) = app
            .call(
                Method::PATCH,
                "/v1/environments/live",
                Some(json!({"policy": {"rotation": policy}})),
            )
            .await;
        assert_eq!(status, 400, "{policy}: {body}");
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/roles",
                Some(json!({"name": "rotated", "permissions": [], "rotation": policy})),
            )
            .await;
        assert_eq!(status, 400, "{policy}: {body}");
    }
    // Nothing changed: the key, the environment's policy, the roles, and no audit entry of a
    // change.
    assert_eq!(show(&app, &id).await, before);
    let (_, env) = app.call(Method::GET, "/v1/environments/live", None).await;
    assert!(env["policy"].get("rotation").is_none(), "{env}");
    let (_, role) = app.call(Method::GET, "/v1/roles/rotated", None).await;
    assert_eq!(role["error"]["code"], "NOT_FOUND", "{role}");
    let changes = app.audit().await[audit_before..]
        .iter()
        .filter(|e| e["action"] != "auth.failed")
        .count();
    assert_eq!(changes, 0);
}

#[tokio::test]
async fn the_most_specific_policy_applies_and_get_shows_the_next_rotation() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"rotation": {"every_days": 90, "grace_hours": 48, "notice_days": 14}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/roles",
            Some(json!({"name": "billing", "permissions": ["invoices:read"],
                "rotation": {"every_days": 60, "grace_hours": 24, "notice_days": 7}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["rotation"]["every_days"], 60);

    let by_env = app.create_key("live", json!({})).await;
    let by_role = app.create_key("live", json!({"roles": ["billing"]})).await;
    let by_key = app
        .create_key(
            "live",
            json!({"roles": ["billing"], "rotation": {"every_days": 30, "grace_hours": 12, "notice_days": 3}}),
        )
        .await;
    let none = app.create_key("test", json!({})).await;
    let created_at = by_env["created_at"].as_str().unwrap().to_owned();
    let at = |days: i64| {
        let start = keyward_core::Timestamp::parse_rfc3339(&created_at).unwrap();
        keyward_core::Timestamp::from_unix_ms(start.unix_ms() + days * DAY_S * 1000).to_rfc3339()
    };
    let effective = show(&app, &id_of(&by_env)).await["effective_rotation"].clone();
    assert_eq!(effective["source"], "environment");
    assert_eq!(effective["source_name"], "live");
    assert_eq!(effective["next_rotation_at"], at(90));
    assert_eq!(effective["notice_at"], at(76));
    let effective = show(&app, &id_of(&by_role)).await["effective_rotation"].clone();
    assert_eq!(effective["source"], "role");
    assert_eq!(effective["source_name"], "billing");
    assert_eq!(effective["next_rotation_at"], at(60));
    let shown = show(&app, &id_of(&by_key)).await;
    assert_eq!(shown["rotation"]["every_days"], 30);
    assert_eq!(shown["effective_rotation"]["source"], "key");
    assert_eq!(shown["effective_rotation"]["next_rotation_at"], at(30));
    assert!(
        show(&app, &id_of(&none))
            .await
            .get("effective_rotation")
            .is_none()
    );

    // Removing the key's own policy falls back to its role's.
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&by_key)),
            Some(json!({"rotation": null})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effective_rotation"]["source"], "role");
    assert!(body.get("rotation").is_none(), "{body}");
    // The holder sees the same through /v1/self, and nothing of other keys.
    let (status, me) = app
        .call_as(&key_of(&by_role), Method::GET, "/v1/self", None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], by_role["id"]);
    assert_eq!(me["rotation"]["next_rotation_at"], at(60));
    assert_eq!(me["rotate_now"], false);
}

/// One key's holder in the simulation: the key it uses now, and whether it follows the
/// documented protocol (check `/v1/self` daily, rotate when told).
struct Holder {
    key: String,
    id: String,
    follows_protocol: bool,
    every_days: i64,
}

#[tokio::test]
async fn a_simulated_year_rotates_every_key_on_schedule_and_protocol_clients_never_lack_a_key() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/roles",
            Some(json!({"name": "bimonthly", "permissions": [],
                "rotation": {"every_days": 60, "grace_hours": 48, "notice_days": 7}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"rotation": {"every_days": 90, "grace_hours": 48, "notice_days": 7}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut holders = Vec::new();
    for n in 0..54 {
        let (extra, every_days) = match n % 3 {
            0 => (
                json!({"rotation": {"every_days": 30, "grace_hours": 48, "notice_days": 7}}),
                30,
            ),
            1 => (json!({"roles": ["bimonthly"]}), 60),
            _ => (json!({}), 90),
        };
        let created = app.create_key("live", extra).await;
        holders.push(Holder {
            key: key_of(&created),
            id: id_of(&created),
            follows_protocol: n % 2 == 0,
            every_days,
        });
        // Keys born on different days.
        app.clock.advance_seconds(3 * 3600);
    }
    let start = app.clock.now_ms();
    // Every notice goes to a subscriber.
    let receiver = keyward_testkit::Receiver::start().await;
    let (status, hook) = app
        .call(
            Method::POST,
            "/v1/webhooks",
            Some(json!({"url": receiver.url, "event_types": ["key.expiring", "key.rotated"]})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    // Old keys and when their grace ends, to check none verifies past it.
    let mut retired: Vec<(String, i64)> = Vec::new();
    for _day in 0..365 {
        app.clock.advance_seconds(DAY_S);
        run_scheduler(&app).await;
        app.authority.webhooks().run_deliveries().await.unwrap();
        let now = app.clock.now_ms();
        for holder in &mut holders {
            if holder.follows_protocol {
                let (status, me) = app
                    .call_as(&holder.key, Method::GET, "/v1/self", None)
                    .await;
                assert_eq!(status, 200, "{me}");
                if me["rotate_now"] == true {
                    let (status, rotated) = rotate_self(&app, &holder.key).await;
                    assert_eq!(status, 201, "{rotated}");
                    let grace_end = rotated["previous"]["expires_at"].as_str().unwrap();
                    let grace_end = keyward_core::Timestamp::parse_rfc3339(grace_end).unwrap();
                    retired.push((holder.key.clone(), grace_end.unix_ms()));
                    holder.key = key_of(&rotated["successor"]);
                    holder.id = rotated["successor_id"].as_str().unwrap().to_owned();
                }
                // A client following the protocol always holds a key that verifies.
                assert_eq!(app.verify_code(&holder.key).await, "VALID");
            } else {
                // The others are rolled by the scheduler: pick up the successor during grace.
                let shown = show(&app, &holder.id).await;
                if let Some(successor) = shown["rolled_to"].as_str() {
                    assert_eq!(shown["rolled_by"], "schedule", "{shown}");
                    let (status, rotated) = rotate_self(&app, &holder.key).await;
                    assert_eq!(status, 201, "{rotated}");
                    assert_eq!(rotated["successor_id"], successor);
                    let grace_end = shown["expires_at"].as_str().unwrap();
                    let grace_end = keyward_core::Timestamp::parse_rfc3339(grace_end).unwrap();
                    retired.push((holder.key.clone(), grace_end.unix_ms()));
                    holder.key = key_of(&rotated["successor"]);
                    holder.id = successor.to_owned();
                    assert_eq!(app.verify_code(&holder.key).await, "VALID");
                }
            }
        }
        // No retired key verifies past its grace.
        for (key, grace_end) in &retired {
            if *grace_end <= now {
                assert_eq!(app.verify_code(key).await, "EXPIRED");
            }
        }
        retired.retain(|(_, end)| *end > now - DAY_S);
    }
    // Every holder's history: one generation per period, never longer than the period.
    for holder in &holders {
        let (status, history) = app
            .call(
                Method::GET,
                &format!("/v1/keys/{}/versions", holder.id),
                None,
            )
            .await;
        assert_eq!(status, 200, "{history}");
        let versions = history["versions"].as_array().unwrap();
        // Rolled at the period by the schedule; at the notice (7 days early) by the client.
        let rolls = versions.len() as i64 - 1;
        let expected = if holder.follows_protocol {
            365 / holder.every_days..=365 / (holder.every_days - 7) + 1
        } else {
            365 / holder.every_days - 1..=365 / holder.every_days
        };
        assert!(
            expected.contains(&rolls),
            "{rolls} rolls in a year for every {} days (protocol: {})",
            holder.every_days,
            holder.follows_protocol
        );
        for pair in versions.windows(2) {
            let (newer, older) = (&pair[0], &pair[1]);
            let born = |v: &Value| {
                keyward_core::Timestamp::parse_rfc3339(v["created_at"].as_str().unwrap())
                    .unwrap()
                    .unix_ms()
            };
            let lived = born(newer) - born(older);
            // The scheduler runs once a (simulated) day here.
            assert!(
                lived <= (holder.every_days + 1) * DAY_S * 1000,
                "a generation outlived its period: {older} {newer}"
            );
            let ended = older["ended"].as_str().unwrap();
            if holder.follows_protocol {
                assert_eq!(ended, "rolled_by_client");
            } else {
                assert_eq!(ended, "rolled_by_schedule");
            }
        }
        assert!(versions[0].get("ended").is_none(), "{}", versions[0]);
    }
    assert!(app.clock.now_ms() - start >= 365 * DAY_S * 1000);
    // Each notice reached the subscriber once: one per generation that came within its notice
    // window, and one key.rotated per roll.
    app.authority.webhooks().run_deliveries().await.unwrap();
    let got = receiver.received();
    let ids: HashSet<&str> = got.iter().map(|m| m.header("webhook-id")).collect();
    assert_eq!(ids.len(), got.len(), "a notice or event delivered twice");
    let mut notices: HashMap<String, usize> = HashMap::new();
    let mut rolls = 0;
    for m in &got {
        let body = m.json();
        match body["type"].as_str().unwrap() {
            "key.expiring" => {
                assert_eq!(body["data"]["reason"], "rotation", "{body}");
                *notices
                    .entry(body["data"]["key_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            "key.rotated" => rolls += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        notices.values().all(|n| *n == 1),
        "one notice per generation"
    );
    // Every rolled generation was told first.
    assert_eq!(notices.len(), rolls);
}

#[tokio::test]
async fn a_run_cut_short_and_a_restart_rotate_each_due_key_exactly_once() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let created = app
            .create_key(
                "live",
                json!({"rotation": {"every_days": 30, "grace_hours": 48}}),
            )
            .await;
        ids.push(id_of(&created));
    }
    app.clock.advance_seconds(31 * DAY_S);
    // A run cut short at some point of its work (as a crash would), then a restart.
    let rotation = app.authority.clone();
    let run = tokio::spawn(async move { rotation.rotation().run_due().await });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    run.abort();
    let _ = run.await;
    app.restart().await;
    let second = run_scheduler(&app).await;
    let third = run_scheduler(&app).await;
    assert_eq!(third.rotated, 0, "{third:?}");
    assert!(second.rotated <= 40, "{second:?}");
    // Each key was rolled once: one successor each, named by the key and naming it back.
    let mut successors = HashSet::new();
    for id in &ids {
        let shown = show(&app, id).await;
        let successor = shown["rolled_to"].as_str().expect("rolled").to_owned();
        assert_eq!(shown["rolled_by"], "schedule");
        let next = show(&app, &successor).await;
        assert_eq!(next["rolled_from"].as_str(), Some(id.as_str()));
        assert!(next.get("rolled_to").is_none_or(Value::is_null), "{next}");
        assert!(successors.insert(successor));
    }
    let rolls: Vec<Value> = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "key.roll")
        .collect();
    assert_eq!(rolls.len(), 40);
    let targets: HashSet<&str> = rolls
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets.len(), 40);
    for entry in &rolls {
        assert_eq!(entry["actor"], "system");
        assert_eq!(entry["details"]["cause"], "schedule");
        assert_eq!(entry["details"]["policy"]["every_days"], 30);
        assert_eq!(entry["details"]["source"]["kind"], "key");
    }
}

#[tokio::test]
async fn self_rotation_hands_out_a_successor_once_and_refuses_everything_else() {
    let app = spawn_app().await;
    let policy = json!({"every_days": 30, "grace_hours": 24, "notice_days": 5});
    let unscheduled = app.create_key("live", json!({})).await;
    let early = app.create_key("live", json!({"rotation": policy})).await;
    let windowed = app.create_key("live", json!({"rotation": policy})).await;
    let revoked = app.create_key("live", json!({"rotation": policy})).await;
    let disabled = app.create_key("live", json!({"rotation": policy})).await;
    let audit_before = app.audit().await.len();

    // No policy, or before the notice window: refused with the rule named, nothing changed.
    let (status, body) = rotate_self(&app, &key_of(&unscheduled)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "POLICY_VIOLATION");
    let (status, body) = rotate_self(&app, &key_of(&early)).await;
    assert_eq!(status, 422, "{body}");
    assert!(show(&app, &id_of(&early)).await["rolled_to"].is_null());

    // Revoked, disabled, malformed, unknown, missing: 401, audited, never echoed.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/revoke", id_of(&revoked)),
            Some(json!({"reason": "leaked"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&disabled)),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    app.clock.advance_seconds(26 * DAY_S);
    let revoked_key = key_of(&revoked);
    let mut unknown = key_of(&windowed);
    unknown.replace_range(10..14, "AAAA");
    for bad in [
        revoked_key.as_str(),
        &key_of(&disabled),
        "kw_live_nope",
        &unknown,
    ] {
        let (status, body) = rotate_self(&app, bad).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        assert!(!body.to_string().contains(bad), "{body}");
        let (status, _) = app.call_as(bad, Method::GET, "/v1/self", None).await;
        assert_eq!(status, 401);
    }
    let resp = app
        .client
        .post(app.url("/v1/self/rotate"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let refusals = app.audit().await[audit_before..]
        .iter()
        .filter(|e| e["action"] == "auth.failed" && e["details"]["call"] == "self")
        .count();
    assert!(refusals >= 9, "{refusals}");

    // Inside the window: the successor once, its id ever after.
    let old = key_of(&windowed);
    let (status, first) = rotate_self(&app, &old).await;
    assert_eq!(status, 201, "{first}");
    let new = key_of(&first["successor"]);
    assert_ne!(new, old);
    assert_eq!(first["previous"]["rolled_by"], "client");
    let (status, again) = rotate_self(&app, &old).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["successor_id"], first["successor_id"]);
    assert!(again.get("successor").is_none(), "{again}");
    assert!(!again.to_string().contains(&new));
    // Both work during the grace; the old one stops after it.
    assert_eq!(app.verify_code(&old).await, "VALID");
    assert_eq!(app.verify_code(&new).await, "VALID");
    // The successor, just made, is outside its own window.
    let (status, _) = rotate_self(&app, &new).await;
    assert_eq!(status, 422);
    app.clock.advance_seconds(DAY_S + 1);
    assert_eq!(app.verify_code(&old).await, "EXPIRED");
    assert_eq!(app.verify_code(&new).await, "VALID");
    let (status, _) = rotate_self(&app, &old).await;
    assert_eq!(status, 401);

    // No key's text in the audit log.
    let log = serde_json::to_string(&app.audit().await).unwrap();
    for key in [&old, &new, &revoked_key] {
        assert!(!log.contains(key.as_str()));
    }
}

#[tokio::test]
async fn a_scheduled_successor_waits_for_its_holder_until_the_grace_ends() {
    let app = spawn_app().await;
    let policy = json!({"every_days": 10, "grace_hours": 48});
    let collected = app.create_key("live", json!({"rotation": policy})).await;
    let forgotten = app.create_key("live", json!({"rotation": policy})).await;
    app.clock.advance_seconds(10 * DAY_S);
    let run = run_scheduler(&app).await;
    assert_eq!(run.rotated, 2, "{run:?}");
    assert_eq!(run_scheduler(&app).await.rotated, 0);

    let (status, me) = app
        .call_as(&key_of(&collected), Method::GET, "/v1/self", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["rotate_now"], true);
    assert!(me["rolled_to"].is_string());
    let (status, got) = rotate_self(&app, &key_of(&collected)).await;
    assert_eq!(status, 201, "{got}");
    let successor = key_of(&got["successor"]);
    assert_eq!(app.verify_code(&successor).await, "VALID");
    let (status, again) = rotate_self(&app, &key_of(&collected)).await;
    assert_eq!(status, 200);
    assert!(again.get("successor").is_none());

    // Nobody collects the other: after the grace the handover lapses, audited.
    app.clock.advance_seconds(2 * DAY_S);
    let run = run_scheduler(&app).await;
    assert_eq!(run.lapsed, 1, "{run:?}");
    let (status, _) = rotate_self(&app, &key_of(&forgotten)).await;
    assert_eq!(status, 401);
    let audit = app.audit().await;
    let actions: HashMap<&str, usize> = audit.iter().fold(HashMap::new(), |mut m, e| {
        *m.entry(e["action"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(actions.get("key.handover"), Some(&1));
    assert_eq!(actions.get("key.handover_lapse"), Some(&1));
    assert!(!serde_json::to_string(&audit).unwrap().contains(&successor));
}

#[tokio::test]
async fn versions_list_every_generation_and_how_it_ended() {
    let app = spawn_app().await;
    let policy = json!({"every_days": 10, "grace_hours": 1, "notice_days": 2});
    let first = app.create_key("live", json!({"rotation": policy})).await;
    // By hand.
    let (status, rolled) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&first)),
            Some(json!({"grace_period_s": 60})),
        )
        .await;
    assert_eq!(status, 201, "{rolled}");
    let second = key_of(&rolled);
    // By the client, in its window.
    app.clock.advance_seconds(9 * DAY_S);
    let (status, by_client) = rotate_self(&app, &second).await;
    assert_eq!(status, 201, "{by_client}");
    let third_id = by_client["successor_id"].as_str().unwrap().to_owned();
    // By the schedule.
    app.clock.advance_seconds(11 * DAY_S);
    assert_eq!(run_scheduler(&app).await.rotated, 1);
    let fourth_id = show(&app, &third_id).await["rolled_to"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{fourth_id}/revoke"),
            Some(json!({"reason": "done"})),
        )
        .await;
    assert_eq!(status, 200);

    for from in [id_of(&first), third_id.clone(), fourth_id.clone()] {
        let (status, history) = app
            .call(Method::GET, &format!("/v1/keys/{from}/versions"), None)
            .await;
        assert_eq!(status, 200, "{history}");
        let ended: Vec<&str> = history["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["ended"].as_str().unwrap())
            .collect();
        assert_eq!(
            ended,
            [
                "revoked",
                "rolled_by_schedule",
                "rolled_by_client",
                "rolled_by_hand"
            ]
        );
        assert_eq!(history["versions"][0]["id"], fourth_id.as_str());
        assert!(!history.to_string().contains(&second));
    }

    // A key scoped to another environment cannot read it; an API key is no admin key.
    let (_, scoped) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"environment": "admin", "service": "keyward", "name": "ops", "owner": "ops",
                "permissions": ["keys:read"], "admin_environments": ["test"]}),
            ),
        )
        .await;
    let (status, body) = app
        .call_as(
            &key_of(&scoped),
            Method::GET,
            &format!("/v1/keys/{}/versions", id_of(&first)),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = app
        .call_as(
            &second,
            Method::GET,
            &format!("/v1/keys/{}/versions", id_of(&first)),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = app
        .call(Method::GET, "/v1/keys/not-an-id/versions", None)
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_handover_edited_offline_to_name_another_key_is_refused() {
    let mut app = spawn_app().await;
    let policy = json!({"every_days": 10, "grace_hours": 48, "notice_days": 2});
    let victim = app.create_key("live", json!({"rotation": policy})).await;
    let thief = app.create_key("live", json!({"rotation": policy})).await;
    app.clock.advance_seconds(10 * DAY_S);
    assert_eq!(run_scheduler(&app).await.rotated, 2);
    // The thief collects its own, then points the victim's waiting successor at its key.
    let (status, _) = rotate_self(&app, &key_of(&thief)).await;
    assert_eq!(status, 201);
    app.shutdown().await;
    let conn = rusqlite::Connection::open(app.data_dir().join("keyward.db")).unwrap();
    let changed = conn
        .execute(
            "UPDATE key_handovers SET predecessor = ?1 WHERE predecessor = ?2",
            [id_of(&thief), id_of(&victim)],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    app.start().await;
    let (status, body) = rotate_self(&app, &key_of(&thief)).await;
    assert_ne!(status, 201, "{body}");
    assert!(body.get("successor").is_none(), "{body}");
    // Nothing was handed out, and the victim's successor is still waiting... for nobody it
    // can be matched to; the victim's own call finds no handover of its own.
    let (status, body) = rotate_self(&app, &key_of(&victim)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("successor").is_none(), "{body}");
}

#[tokio::test]
async fn rotation_renews_the_secret_never_the_lifetime_and_keys_cannot_loosen_their_environment() {
    let app = spawn_app().await;
    let (status, body) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"rotation": {"every_days": 30, "grace_hours": 24, "notice_days": 5}}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A key asking for a longer period gets the environment's.
    let lax = app
        .create_key(
            "live",
            json!({"ttl_s": 40 * DAY_S, "rotation": {"every_days": 3650, "grace_hours": 1000, "notice_days": 10}}),
        )
        .await;
    let scheduled = app.create_key("live", json!({"ttl_s": 40 * DAY_S})).await;
    let shown = show(&app, &id_of(&lax)).await;
    assert_eq!(shown["effective_rotation"]["policy"]["every_days"], 30);
    assert_eq!(shown["effective_rotation"]["policy"]["grace_hours"], 24);
    let ends = |v: &Value| v["expires_at"].as_str().unwrap().to_owned();
    // Rotated by its holder, or by the schedule: the successor ends when the key would have.
    app.clock.advance_seconds(26 * DAY_S);
    let (status, rotated) = rotate_self(&app, &key_of(&lax)).await;
    assert_eq!(status, 201, "{rotated}");
    assert_eq!(ends(&rotated["successor"]), ends(&lax));
    app.clock.advance_seconds(5 * DAY_S);
    assert_eq!(run_scheduler(&app).await.rotated, 1);
    let successor = show(&app, &id_of(&scheduled)).await["rolled_to"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(ends(&show(&app, &successor).await), ends(&scheduled));
}

#[tokio::test]
async fn successors_reach_keywards_vault_and_openbao_before_the_grace_starts() {
    use keyward_testkit::services::OpenBao;
    let app = spawn_app().await;
    let mut bao = OpenBao::start().expect("openbao");
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/secrets/live/bao-token",
            Some(json!({"data": {"token": bao.token()}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let policy = json!({"every_days": 10, "grace_hours": 24});
    let to_vault = app
        .create_key(
            "live",
            json!({"rotation": policy, "delivery": {"kind": "vault", "path": "apps/billing/key"}}),
        )
        .await;
    let kv2 = |path: &str| {
        json!({"kind": "kv2", "address": bao.address(), "path": path, "field": "api_key",
            "token_path": "bao-token"})
    };
    let to_bao = app
        .create_key(
            "live",
            json!({"rotation": policy, "delivery": kv2("apps/billing")}),
        )
        .await;
    let (bao_address, bao_token) = (bao.address(), bao.token().to_owned());
    let bao_read = |path: String| {
        let (address, token) = (bao_address.clone(), bao_token.clone());
        async move {
            let resp = reqwest::Client::new()
                .get(format!("{address}/v1/secret/data/{path}"))
                .header("X-Vault-Token", token)
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    app.clock.advance_seconds(10 * DAY_S);
    let run = run_scheduler(&app).await;
    assert_eq!((run.rotated, run.delivered), (2, 2), "{run:?}");
    let now = app.clock.now_ms();
    // In keyward's own vault, in the key's environment.
    let (status, secret) = app
        .call(Method::GET, "/v1/secrets/live/apps/billing/key", None)
        .await;
    assert_eq!(status, 200, "{secret}");
    let delivered = secret["data"]["key"].as_str().unwrap().to_owned();
    assert_eq!(app.verify_code(&delivered).await, "VALID");
    let old = show(&app, &id_of(&to_vault)).await;
    assert_eq!(secret["data"]["key_id"], old["rolled_to"]);
    // The grace started at the delivery.
    let ends = keyward_core::Timestamp::parse_rfc3339(old["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        (ends.unix_ms() - now - 24 * 3600 * 1000).abs() < 5_000,
        "{old}"
    );
    // On OpenBao, as KV v2.
    let (status, stored) = bao_read("apps/billing".into()).await;
    assert_eq!(status, 200, "{stored}");
    let delivered = stored["data"]["data"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.verify_code(&delivered).await, "VALID");
    assert_eq!(app.verify_code(&key_of(&to_bao)).await, "VALID");

    // OpenBao down at the rotation: the old key keeps working, the failure is audited and
    // announced, and once OpenBao is back the successor arrives and the grace starts.
    let late = app
        .create_key(
            "live",
            json!({"rotation": policy, "delivery": kv2("apps/late")}),
        )
        .await;
    bao.stop();
    app.clock.advance_seconds(10 * DAY_S);
    let run = run_scheduler(&app).await;
    assert!(run.rotated >= 1, "{run:?}");
    let old = show(&app, &id_of(&late)).await;
    let rolled_at = app.clock.now_ms();
    let ends = keyward_core::Timestamp::parse_rfc3339(old["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        ends.unix_ms() - rolled_at >= 95 * 3600 * 1000,
        "capped at grace + 72 h: {old}"
    );
    let audit = app.audit().await;
    let failed: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "key.delivery_failed" && e["target"] == late["id"])
        .collect();
    assert_eq!(failed.len(), 1, "audited once");
    assert!(!serde_json::to_string(&audit).unwrap().contains(bao.token()));
    app.clock.advance_seconds(3600);
    assert_eq!(app.verify_code(&key_of(&late)).await, "VALID");
    bao.restart().unwrap();
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/secrets/live/bao-token",
            Some(json!({"data": {"token": bao.token()}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut stored = Value::Null;
    for _ in 0..24 {
        app.clock.advance_seconds(3600);
        run_scheduler(&app).await;
        let (status, found) = bao_read("apps/late".into()).await;
        if status == 200 {
            stored = found;
            break;
        }
    }
    let successor = stored["data"]["data"]["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.verify_code(&successor).await, "VALID");
    let old = show(&app, &id_of(&late)).await;
    let ends = keyward_core::Timestamp::parse_rfc3339(old["expires_at"].as_str().unwrap()).unwrap();
    let now = app.clock.now_ms();
    assert!(
        (ends.unix_ms() - now - 24 * 3600 * 1000).abs() < 5_000,
        "{old}"
    );
}

#[tokio::test]
async fn bad_delivery_targets_are_refused_and_a_target_cannot_reach_more_than_its_setter() {
    let app = spawn_app().await;
    let policy = json!({"every_days": 10, "grace_hours": 24});
    let cases = [
        (
            json!({"kind": "vault", "path": "a/b", "environment": "test"}),
            "delivery.environment",
        ),
        (json!({"kind": "vault", "path": "../x"}), "delivery.path"),
        (
            json!({"kind": "vault", "path": "a", "address": "https://vault.example.com"}),
            "delivery.address",
        ),
        (
            json!({"kind": "kv2", "path": "a", "token_path": "t"}),
            "delivery.address",
        ),
        (
            json!({"kind": "kv2", "path": "a", "address": "ftp://x", "token_path": "t"}),
            "delivery.address",
        ),
        (
            json!({"kind": "kv2", "path": "a", "address": "https://u:p@vault.example.com", "token_path": "t"}),
            "delivery.address",
        ),
        (
            json!({"kind": "kv2", "path": "a", "address": "https://vault.example.com"}),
            "delivery.token_path",
        ),
        (
            json!({"kind": "vault", "path": "a", "field": ""}),
            "delivery.field",
        ),
        (json!({"kind": "s3", "path": "a"}), "delivery.kind"),
        (
            json!({"kind": "vault", "path": "a", "field": "key_id"}),
            "delivery.field",
        ),
        (
            json!({"kind": "kv2", "path": "a", "address": "http://vault.example.com", "token_path": "t"}),
            "delivery.address",
        ),
        (
            json!({"kind": "kv2", "path": "a", "address": "https://vault.example.com/v1/x", "token_path": "t"}),
            "delivery.address",
        ),
    ];
    for (target, field) in cases {
        let (status, body) = app
            .call(
                Method::POST,
                "/v1/keys",
                Some(json!({"environment": "live", "name": "n", "owner": "o",
                    "rotation": policy, "delivery": target})),
            )
            .await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(body["error"]["field"], field, "{target}: {body}");
        assert!(!body.to_string().contains("vault.example.com"));
    }
    // An admin that may update keys but not read the token secret cannot point a target at it:
    // the target would hand that secret to a server of the admin's choosing.
    let (_, limited) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"environment": "admin", "service": "keyward", "name": "ops", "owner": "ops",
                "permissions": ["keys:create", "keys:update", "keys:read", "keys:roll",
                    "secrets:read:public/*"]}),
            ),
        )
        .await;
    let limited = key_of(&limited);
    let target = json!({"kind": "kv2", "address": "https://vault.example.com", "path": "a",
        "token_path": "payments/stripe"});
    let (status, body) = app
        .call_as(
            &limited,
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "live", "name": "n", "owner": "o", "delivery": target})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let created = app.create_key("live", json!({})).await;
    let (status, _) = app
        .call_as(
            &limited,
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&created)),
            Some(json!({"delivery": {"kind": "vault", "path": "payments/stripe"}})),
        )
        .await;
    assert_eq!(status, 403);
    let refusals = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.forbidden")
        .count();
    assert!(refusals >= 2);
    // A target receives every successor: only one who could roll the key may set one.
    let (_, updater) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"environment": "admin", "service": "keyward", "name": "up", "owner": "ops",
                "permissions": ["keys:update", "keys:read", "secrets:read:*", "secrets:write:*"]}),
            ),
        )
        .await;
    let (status, body) = app
        .call_as(
            &key_of(&updater),
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&created)),
            Some(json!({"delivery": {"kind": "vault", "path": "anything"}})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Removing a target needs as much.
    let (status, _) = app
        .call_as(
            &key_of(&updater),
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&created)),
            Some(json!({"delivery": null})),
        )
        .await;
    assert_eq!(status, 403);
    // Admin keys are never delivered anywhere.
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&updater)),
            Some(json!({"delivery": {"kind": "vault", "path": "anything"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "delivery");
    // With the right, it is set and shown.
    let allowed = json!({"kind": "kv2", "address": "https://vault.example.com", "path": "a",
        "token_path": "public/token"});
    let (status, body) = app
        .call_as(
            &limited,
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&created)),
            Some(json!({"delivery": allowed})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivery"]["token_path"], "public/token");
    let (status, body) = app
        .call_as(
            &key_of(&updater),
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&created)),
            Some(json!({"delivery": null})),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // A key's own delivery cap cannot outlast its environment's rotation.
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/test",
            Some(json!({"policy": {"rotation": {"every_days": 2, "grace_hours": 1}}})),
        )
        .await;
    assert_eq!(status, 200);
    let lax = app
        .create_key(
            "test",
            json!({"rotation": {"every_days": 100, "grace_hours": 10, "delivery_cap_hours": 2000}}),
        )
        .await;
    let shown = show(&app, &id_of(&lax)).await;
    let effective = &shown["effective_rotation"]["policy"];
    assert_eq!(effective["every_days"], 2);
    assert!(
        effective["delivery_cap_hours"].as_u64().unwrap() <= 73,
        "{effective}"
    );
}
