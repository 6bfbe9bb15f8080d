//! Rate limits through verify, under the fake clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyward_testkit::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

async fn key_with(app: &TestApp, limits: Value) -> (String, String) {
    let created = app.create_key("live", json!({"ratelimits": limits})).await;
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

/// Verifies and returns the JSON verdict and the rate-limit headers.
async fn verify(app: &TestApp, body: Value) -> (Value, reqwest::header::HeaderMap) {
    let resp = app
        .client
        .post(app.url("/v1/verify"))
        .bearer_auth(&app.root_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    (resp.json().await.unwrap(), headers)
}

async fn code(app: &TestApp, body: Value) -> String {
    verify(app, body).await.0["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn burst_then_steady_state_exactly_as_configured() {
    let app = spawn_app().await;
    let (key, _) = key_with(&app, json!([{"name": "burst", "limit": 5, "period_s": 1}])).await;
    for expected_remaining in (0..5).rev() {
        let (v, _) = verify(&app, json!({"key": key})).await;
        assert_eq!(v["code"], "VALID", "{v}");
        assert_eq!(v["ratelimits"][0]["remaining"], expected_remaining, "{v}");
    }
    let (v, headers) = verify(&app, json!({"key": key})).await;
    assert_eq!(v["code"], "RATE_LIMITED");
    assert_eq!(v["valid"], false);
    assert_eq!(v["retry_after_s"], 1);
    assert_eq!(headers["retry-after"], "1");
    // One request every 200 ms after the burst.
    app.clock.advance_ms(199);
    assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
    app.clock.advance_ms(1);
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
    app.clock.advance_ms(200);
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    // After a quiet period the whole burst is back.
    app.clock.advance_seconds(1);
    for _ in 0..5 {
        assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    }
    assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
}

#[tokio::test]
async fn a_rejected_request_consumes_nothing_from_any_limit() {
    let app = spawn_app().await;
    let (key, id) = key_with(
        &app,
        json!([{"name": "burst", "limit": 100, "period_s": 1}, {"name": "hourly", "limit": 3, "period_s": 3600}]),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    }
    for _ in 0..5 {
        let (v, _) = verify(&app, json!({"key": key})).await;
        assert_eq!(v["code"], "RATE_LIMITED");
        assert_eq!(v["ratelimits"][0]["name"], "burst");
        assert_eq!(
            v["ratelimits"][0]["remaining"], 97,
            "the burst limit was charged: {v}"
        );
        assert_eq!(v["ratelimits"][1]["remaining"], 0);
    }
    // Refused requests are not usage either.
    let mut app = app;
    app.restart().await;
    let (_, shown) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown["uses"], 3);
}

#[tokio::test]
async fn the_sliding_window_refills_as_the_period_passes() {
    let app = spawn_app().await;
    let (key, _) = key_with(
        &app,
        json!([{"name": "hourly", "limit": 2, "period_s": 3600}]),
    )
    .await;
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    let (v, _) = verify(&app, json!({"key": key})).await;
    assert_eq!(v["code"], "RATE_LIMITED");
    assert!(v["retry_after_s"].as_u64().unwrap() <= 3600);
    app.clock.advance_seconds(2 * 3600);
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
}

#[tokio::test]
async fn endpoint_limits_and_costs() {
    let app = spawn_app().await;
    let (key, _) = key_with(
        &app,
        json!([
            {"name": "all", "limit": 10, "period_s": 60},
            {"name": "export", "limit": 1, "period_s": 60, "rule": "POST /v1/export/**"}
        ]),
    )
    .await;
    let export = json!({"key": key, "method": "POST", "path": "/v1/export/all"});
    let (v, _) = verify(&app, export.clone()).await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["ratelimits"].as_array().unwrap().len(), 2);
    assert_eq!(code(&app, export.clone()).await, "RATE_LIMITED");
    let (v, _) = verify(
        &app,
        json!({"key": key, "method": "GET", "path": "/v1/items"}),
    )
    .await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(
        v["ratelimits"].as_array().unwrap().len(),
        1,
        "only the general limit counts: {v}"
    );
    assert_eq!(v["ratelimits"][0]["remaining"], 8);
    // Costs count in full; cost 0 only reads.
    let (v, _) = verify(&app, json!({"key": key, "cost": 5})).await;
    assert_eq!(v["ratelimits"][0]["remaining"], 3);
    let (v, _) = verify(&app, json!({"key": key, "cost": 0})).await;
    assert_eq!(
        (v["code"].as_str(), v["ratelimits"][0]["remaining"].as_u64()),
        (Some("VALID"), Some(3))
    );
    assert_eq!(
        code(&app, json!({"key": key, "cost": 4})).await,
        "RATE_LIMITED"
    );
    assert_eq!(code(&app, json!({"key": key, "cost": 3})).await, "VALID");
}

#[tokio::test]
async fn headers_match_the_json() {
    let app = spawn_app().await;
    let (key, _) = key_with(
        &app,
        json!([{"name": "burst", "limit": 100, "period_s": 1}, {"name": "daily", "limit": 1000, "period_s": 86400}]),
    )
    .await;
    let (v, headers) = verify(&app, json!({"key": key})).await;
    let limits = v["ratelimits"].as_array().unwrap();
    let policy: Vec<String> = limits
        .iter()
        .map(|l| {
            format!(
                "\"{}\";q={};w={}",
                l["name"].as_str().unwrap(),
                l["limit"],
                l["period_s"]
            )
        })
        .collect();
    let state: Vec<String> = limits
        .iter()
        .map(|l| {
            format!(
                "\"{}\";r={};t={}",
                l["name"].as_str().unwrap(),
                l["remaining"],
                l["reset_s"]
            )
        })
        .collect();
    assert_eq!(headers["ratelimit-policy"], policy.join(", ").as_str());
    assert_eq!(headers["ratelimit"], state.join(", ").as_str());
    assert_eq!(
        headers["ratelimit-policy"],
        "\"burst\";q=100;w=1, \"daily\";q=1000;w=86400"
    );
    assert!(headers.get("retry-after").is_none());
    // Keys without limits get no rate-limit fields.
    let plain = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (v, headers) = verify(&app, json!({"key": plain})).await;
    assert!(v.get("ratelimits").is_none() && headers.get("ratelimit").is_none());
}

#[tokio::test]
async fn changing_limits_starts_afresh() {
    let app = spawn_app().await;
    let (key, id) = key_with(&app, json!([{"name": "burst", "limit": 1, "period_s": 10}])).await;
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
    let (status, updated) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"ratelimits": [{"name": "burst", "limit": 3, "period_s": 10}]})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["ratelimits"][0]["limit"], 3);
    for _ in 0..3 {
        assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    }
    assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
}

#[tokio::test]
async fn bad_limits_and_costs_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let many: Vec<Value> = (0..17)
        .map(|i| json!({"name": format!("l{i}"), "limit": 1, "period_s": 1}))
        .collect();
    for (limits, mention) in [
        (
            json!([{"name": "a", "limit": 0, "period_s": 1}]),
            "ratelimits[0].limit",
        ),
        (
            json!([{"name": "a", "limit": -1, "period_s": 1}]),
            "ratelimits[0].limit",
        ),
        (
            json!([{"name": "a", "limit": 1, "period_s": 0}]),
            "ratelimits[0].period_s",
        ),
        (
            json!([{"name": "a", "limit": 1, "period_s": 999_999_999}]),
            "ratelimits[0].period_s",
        ),
        (
            json!([{"name": "a", "limit": 1, "period_s": 3600, "burst": 5}]),
            "ratelimits[0].burst",
        ),
        (
            json!([{"name": "A B", "limit": 1, "period_s": 1}]),
            "ratelimits[0].name",
        ),
        (
            json!([{"name": "a", "limit": 1, "period_s": 1}, {"name": "a", "limit": 2, "period_s": 2}]),
            "ratelimits[1].name",
        ),
        (
            json!([{"name": "a", "limit": 1, "period_s": 1, "rule": "GET nowhere"}]),
            "ratelimits[0].rule",
        ),
        (json!([{"name": "a", "limit": 1}]), "ratelimits[0]"),
        (json!(many), "at most 16"),
    ] {
        let (status, err) = app
            .call(
                Method::POST,
                "/v1/keys",
                Some(
                    json!({"environment": "live", "name": "n", "owner": "o", "ratelimits": limits}),
                ),
            )
            .await;
        assert_eq!(status, 400, "{limits}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(mention)
                || err["error"]["field"]
                    .as_str()
                    .unwrap_or("")
                    .contains(mention),
            "{limits}: {err}"
        );
    }
    let (key, _) = key_with(&app, json!([{"name": "a", "limit": 5, "period_s": 1}])).await;
    for cost in [json!(-1), json!(2_000_000_000u64), json!(1.5), json!("1")] {
        let (status, err) = app
            .call(
                Method::POST,
                "/v1/verify",
                Some(json!({"key": key, "cost": cost})),
            )
            .await;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (400, Some("cost")),
            "{cost}: {err}"
        );
    }
}

#[tokio::test]
async fn plans_change_every_key_on_them_at_once() {
    let app = spawn_app().await;
    let (status, plan) = app
        .call(Method::POST, "/v1/plans", Some(json!({"name": "free", "description": "tier 0", "ratelimits": [{"name": "burst", "limit": 3, "period_s": 10}]})))
        .await;
    assert_eq!(status, 201, "{plan}");
    let a = app.create_key("live", json!({"plan": "free"})).await;
    let b = app
        .create_key(
            "live",
            json!({"plan": "free", "ratelimits": [{"name": "burst", "limit": 1, "period_s": 10}]}),
        )
        .await;
    let (ka, kb) = (
        a["key"].as_str().unwrap().to_owned(),
        b["key"].as_str().unwrap().to_owned(),
    );
    assert_eq!(a["plan"], "free");
    for _ in 0..3 {
        assert_eq!(code(&app, json!({"key": ka})).await, "VALID");
    }
    assert_eq!(code(&app, json!({"key": ka})).await, "RATE_LIMITED");
    // A key's own limit replaces the plan's of the same name.
    assert_eq!(code(&app, json!({"key": kb})).await, "VALID");
    assert_eq!(code(&app, json!({"key": kb})).await, "RATE_LIMITED");

    let (status, _) = app
        .call(Method::PUT, "/v1/plans/free", Some(json!({"ratelimits": [{"name": "burst", "limit": 5, "period_s": 10}, {"name": "daily", "limit": 1000, "period_s": 86400}]})))
        .await;
    assert_eq!(status, 200);
    let (v, _) = verify(&app, json!({"key": ka})).await;
    assert_eq!(v["code"], "VALID", "the new plan applies at once: {v}");
    assert_eq!(v["ratelimits"].as_array().unwrap().len(), 2);
    assert_eq!(v["ratelimits"][0]["limit"], 5);

    for (method, path, body, expected) in [
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "live", "name": "n", "owner": "o", "plan": "gold"})),
            400,
        ),
        (
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "free", "ratelimits": []})),
            409,
        ),
        (
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "x", "ratelimits": [{"name": "a", "limit": 0, "period_s": 1}]})),
            400,
        ),
        (Method::DELETE, "/v1/plans/free", None, 409),
        (Method::GET, "/v1/plans/gold", None, 404),
    ] {
        let (status, err) = app.call(method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {err}");
    }
    for key in [&a, &b] {
        let id = key["id"].as_str().unwrap();
        let (status, updated) = app
            .call(
                Method::PATCH,
                &format!("/v1/keys/{id}"),
                Some(json!({"plan": null})),
            )
            .await;
        assert_eq!(status, 200);
        assert!(updated.get("plan").is_none(), "{updated}");
    }
    let (v, _) = verify(&app, json!({"key": ka})).await;
    assert!(
        v.get("ratelimits").is_none(),
        "off the plan, no limits: {v}"
    );
    let (status, _) = app.call(Method::DELETE, "/v1/plans/free", None).await;
    assert_eq!(status, 204);
    let actions: Vec<String> = app
        .audit()
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in ["plan.create", "plan.update", "plan.delete"] {
        assert!(actions.contains(&action.to_owned()), "{action} not audited");
    }
}

#[tokio::test]
async fn key_guessing_from_one_address_is_cut_off_and_audited() {
    let app = spawn_app().await;
    let good = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let guess = |n: u32| format!("kw_live_{n:0>49}");
    for n in 0..100 {
        assert_ne!(
            code(&app, json!({"key": guess(n), "ip": "203.0.113.9"})).await,
            "RATE_LIMITED"
        );
    }
    // The address is now refused before any lookup, even with a good key…
    let (v, headers) = verify(&app, json!({"key": good, "ip": "203.0.113.9"})).await;
    assert_eq!(v["code"], "RATE_LIMITED", "{v}");
    assert!(
        !v["detail"].as_str().unwrap().contains("203.0.113.9"),
        "no echo: {v}"
    );
    assert!(v["retry_after_s"].as_u64().unwrap() >= 1);
    assert!(headers.get("ratelimit").is_none());
    // …while other addresses, and calls without an address, go on.
    assert_eq!(
        code(&app, json!({"key": good, "ip": "203.0.113.10"})).await,
        "VALID"
    );
    assert_eq!(code(&app, json!({"key": good})).await, "VALID");
    // The allowance refills: 100 a minute.
    app.clock.advance_seconds(1);
    assert_eq!(
        code(&app, json!({"key": good, "ip": "203.0.113.9"})).await,
        "VALID"
    );
    let blocks: Vec<Value> = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "guard.block")
        .collect();
    assert_eq!(blocks.len(), 1, "a block is audited once");
    assert_eq!(blocks[0]["target"], "203.0.113.9");
    assert_eq!(blocks[0]["details"]["guard"], "failed_verifications");
}

#[tokio::test]
async fn admin_brute_force_gets_429_until_the_allowance_refills() {
    let app = spawn_app().await;
    for _ in 0..20 {
        let (status, _) = app
            .call_as("keyward_admin_nope", Method::GET, "/v1/keys", None)
            .await;
        assert_eq!(status, 401);
    }
    let resp = app
        .client
        .get(app.url("/v1/keys"))
        .bearer_auth("keyward_admin_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(
        resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "RATE_LIMITED");
    // The address is blocked for everyone until it refills (one failure every 3 s).
    let (status, _) = app.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 429);
    app.clock.advance_seconds(3);
    let (status, _) = app.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200);
    let actions: Vec<String> = app
        .audit()
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "auth.failed").count(),
        20,
        "refused attempts past the block are not written"
    );
    assert_eq!(actions.iter().filter(|a| *a == "guard.block").count(), 1);
}

#[tokio::test]
async fn concurrency_leases_limit_requests_in_flight_and_lapse() {
    let app = spawn_app().await;
    let created = app
        .create_key(
            "live",
            json!({"concurrency": {"limit": 2, "lease_timeout_s": 30}}),
        )
        .await;
    assert_eq!(
        created["concurrency"],
        json!({"limit": 2, "lease_timeout_s": 30})
    );
    let key = created["key"].as_str().unwrap().to_owned();
    let take = || verify(&app, json!({"key": key, "lease": true}));
    let (first, _) = take().await;
    let (second, _) = take().await;
    assert_eq!(
        (first["code"].as_str(), second["code"].as_str()),
        (Some("VALID"), Some("VALID"))
    );
    let first_id = first["lease"]["id"].as_str().unwrap().to_owned();
    assert_ne!(Some(first_id.as_str()), second["lease"]["id"].as_str());
    let (third, _) = take().await;
    assert_eq!(third["code"], "RATE_LIMITED", "{third}");
    assert!(third["detail"].as_str().unwrap().contains("in flight"));
    assert_eq!(third["retry_after_s"], 30);
    // Releasing frees a slot; a lease is released once.
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{first_id}/release"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{first_id}/release"),
            None,
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    assert_eq!(take().await.0["code"], "VALID");
    assert_eq!(take().await.0["code"], "RATE_LIMITED");
    // A crashed caller cannot lock the key out: leases lapse.
    app.clock.advance_seconds(30);
    assert_eq!(take().await.0["code"], "VALID");
    // Without `lease`, the limit does not apply.
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    // Keys without a concurrency limit get no lease.
    let plain = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (v, _) = verify(&app, json!({"key": plain, "lease": true})).await;
    assert!(v.get("lease").is_none(), "{v}");
}

#[tokio::test]
async fn a_rate_limited_request_gives_its_lease_back() {
    let app = spawn_app().await;
    let key = app
        .create_key("live", json!({"concurrency": {"limit": 1}, "ratelimits": [{"name": "slow", "limit": 1, "period_s": 10}]}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (v, _) = verify(&app, json!({"key": key, "lease": true})).await;
    app.call(
        Method::POST,
        &format!("/v1/leases/{}/release", v["lease"]["id"].as_str().unwrap()),
        None,
    )
    .await;
    let (v, _) = verify(&app, json!({"key": key, "lease": true})).await;
    assert_eq!(v["code"], "RATE_LIMITED");
    assert!(v.get("lease").is_none());
    app.clock.advance_seconds(10);
    // Had the refused request kept its lease, the key would still be at its concurrency limit.
    assert_eq!(
        verify(&app, json!({"key": key, "lease": true})).await.0["code"],
        "VALID"
    );
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 1, "lease_timeout_s": 0}),
        json!({"limit": 1, "lease_timeout_s": 100000}),
    ] {
        let (status, err) = app
            .call(
                Method::POST,
                "/v1/keys",
                Some(json!({"environment": "live", "name": "n", "owner": "o", "concurrency": bad})),
            )
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["error"]["field"]
                .as_str()
                .unwrap()
                .starts_with("concurrency"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn quotas_spend_credits_refill_and_survive_a_restart() {
    let mut app = spawn_app().await;
    // A one-time grant: no refill unless asked.
    let once = app
        .create_key("live", json!({"quota": {"remaining": 3}}))
        .await;
    assert_eq!(once["quota"], json!({"remaining": 3}));
    let (once_key, once_id) = (
        once["key"].as_str().unwrap().to_owned(),
        once["id"].as_str().unwrap().to_owned(),
    );
    let (v, _) = verify(&app, json!({"key": once_key, "cost": 2})).await;
    assert_eq!(
        (v["code"].as_str(), v["quota_remaining"].as_u64()),
        (Some("VALID"), Some(1))
    );
    let (v, _) = verify(&app, json!({"key": once_key, "cost": 2})).await;
    assert_eq!(v["code"], "USAGE_EXCEEDED", "{v}");
    assert_eq!(v["quota_remaining"], 1, "a refused request spends nothing");
    assert!(v["detail"].as_str().unwrap().contains("1 left"));
    assert_eq!(code(&app, json!({"key": once_key})).await, "VALID");
    app.clock.advance_seconds(400 * 86_400);
    assert_eq!(
        code(&app, json!({"key": once_key})).await,
        "USAGE_EXCEEDED",
        "a one-time grant never refills"
    );
    // An admin grants more.
    let (status, granted) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{once_id}"),
            Some(json!({"quota": {"remaining": 10}})),
        )
        .await;
    assert_eq!(status, 200, "{granted}");
    assert_eq!(granted["quota"]["remaining"], 10);
    assert_eq!(code(&app, json!({"key": once_key})).await, "VALID");

    // A daily refill resets to the amount at 00:00 UTC; it does not add up.
    let daily = app
        .create_key(
            "live",
            json!({"quota": {"refill": {"amount": 5, "interval": "daily"}}}),
        )
        .await;
    let daily_key = daily["key"].as_str().unwrap().to_owned();
    assert_eq!(daily["quota"]["remaining"], 5);
    assert_eq!(
        verify(&app, json!({"key": daily_key, "cost": 5})).await.0["quota_remaining"],
        0
    );
    assert_eq!(
        code(&app, json!({"key": daily_key})).await,
        "USAGE_EXCEEDED"
    );
    let now = app.clock.now_ms();
    app.clock
        .advance_ms(86_400_000 - now.rem_euclid(86_400_000) - 1);
    assert_eq!(
        code(&app, json!({"key": daily_key})).await,
        "USAGE_EXCEEDED",
        "still the same day"
    );
    app.clock.advance_ms(1);
    let (v, _) = verify(&app, json!({"key": daily_key})).await;
    assert_eq!(
        (v["code"].as_str(), v["quota_remaining"].as_u64()),
        (Some("VALID"), Some(4))
    );

    // Spending is written at shutdown and survives a restart.
    app.restart().await;
    let (_, shown) = app
        .call(
            Method::GET,
            &format!("/v1/keys/{}", daily["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(shown["quota"]["remaining"], 4, "{shown}");
    assert_eq!(
        verify(&app, json!({"key": daily_key})).await.0["quota_remaining"],
        3
    );
}

#[tokio::test]
async fn rate_limited_requests_spend_no_credits_and_a_roll_keeps_them() {
    let app = spawn_app().await;
    let created = app
        .create_key("live", json!({"quota": {"remaining": 5}, "ratelimits": [{"name": "slow", "limit": 1, "period_s": 10}]}))
        .await;
    let (key, id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        verify(&app, json!({"key": key})).await.0["quota_remaining"],
        4
    );
    let (v, _) = verify(&app, json!({"key": key})).await;
    assert_eq!(v["code"], "RATE_LIMITED");
    assert_eq!(v["quota_remaining"], 4, "{v}");
    let (_, rolled) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/roll"),
            Some(json!({"grace_period_s": 60})),
        )
        .await;
    assert_eq!(rolled["quota"]["remaining"], 4, "{rolled}");
    for (quota, field) in [
        (json!({}), "quota.remaining"),
        (
            json!({"refill": {"amount": 0, "interval": "daily"}}),
            "quota.refill.amount",
        ),
        (
            json!({"refill": {"amount": 5, "interval": "weekly"}}),
            "quota.refill.interval",
        ),
        (json!({"remaining": -1}), "quota.remaining"),
        (json!({"remaining": 5, "extra": 1}), "quota"),
    ] {
        let (status, err) = app
            .call(
                Method::POST,
                "/v1/keys",
                Some(json!({"environment": "live", "name": "n", "owner": "o", "quota": quota})),
            )
            .await;
        assert_eq!(status, 400, "{quota}: {err}");
        assert!(
            err["error"]["field"]
                .as_str()
                .unwrap()
                .starts_with(field.split('.').next().unwrap()),
            "{quota}: {err}"
        );
    }
}

#[tokio::test]
async fn warnings_and_refusals_become_events_once_per_window() {
    let mut app = spawn_app().await;
    let created = app
        .create_key(
            "live",
            json!({"ratelimits": [{"name": "burst", "limit": 10, "period_s": 60}]}),
        )
        .await;
    let (key, id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    for i in 1..=10 {
        let (v, _) = verify(&app, json!({"key": key})).await;
        // Past 80 % of the allowance: the 8th request on.
        assert_eq!(v.get("warning").is_some(), i >= 8, "request {i}: {v}");
    }
    for _ in 0..3 {
        assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
    }
    // Events are written in batches; a restart flushes them.
    app.restart().await;
    let (status, page) = app.call(Method::GET, "/v1/events", None).await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ratelimit.warning", "ratelimit.exceeded"],
        "one of each per window"
    );
    assert_eq!(events[0]["key_id"], id.as_str());
    assert_eq!(events[0]["details"]["limit"], "burst");
    assert!(events[1]["details"]["retry_after_s"].as_u64().unwrap() >= 1);
    // Paging by cursor.
    let (_, first) = app.call(Method::GET, "/v1/events?limit=1", None).await;
    let cursor = first["next_cursor"].as_u64().unwrap();
    let (_, rest) = app
        .call(Method::GET, &format!("/v1/events?cursor={cursor}"), None)
        .await;
    assert_eq!(rest["events"][0]["kind"], "ratelimit.exceeded");
    // A new window warns again.
    app.clock.advance_seconds(60);
    for _ in 0..9 {
        verify(&app, json!({"key": key})).await;
    }
    app.restart().await;
    let (_, page) = app.call(Method::GET, "/v1/events", None).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3, "{page}");
}

#[tokio::test]
async fn graduated_response_warns_blocks_then_disables() {
    let app = spawn_app().await;
    let (status, plan) = app
        .call(
            Method::POST,
            "/v1/plans",
            Some(json!({
                "name": "strict",
                "ratelimits": [{"name": "minute", "limit": 4, "period_s": 60}],
                "graduated": {"warning_percent": 50, "block": {"violations": 3, "within_s": 60, "block_s": 300, "disable_after_blocks": 2}}
            })),
        )
        .await;
    assert_eq!(status, 201, "{plan}");
    let created = app.create_key("live", json!({"plan": "strict"})).await;
    let (key, id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    // Warning past 50 %: from the second request of four.
    let warnings: Vec<bool> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(
                verify(&app, json!({"key": key}))
                    .await
                    .0
                    .get("warning")
                    .is_some(),
            );
        }
        out
    };
    assert_eq!(warnings, [false, true, true, true]);
    // Three refusals within a minute: blocked for 300 s, answered with the block's end.
    for _ in 0..3 {
        assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
    }
    app.clock.advance_seconds(60);
    let (v, _) = verify(&app, json!({"key": key})).await;
    assert_eq!(
        v["code"], "RATE_LIMITED",
        "the limit has refilled, but the key is blocked: {v}"
    );
    assert_eq!(v["blocked_until"], "2026-11-28T10:05:00Z");
    assert_eq!(v["retry_after_s"], 240);
    app.clock.advance_seconds(240);
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    // A second block disables the key, with an audit entry an admin can see.
    for _ in 0..3 {
        verify(&app, json!({"key": key})).await;
    }
    for _ in 0..3 {
        assert_eq!(code(&app, json!({"key": key})).await, "RATE_LIMITED");
    }
    let (_, shown) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown["status"], "disabled", "{shown}");
    app.clock.advance_seconds(1000);
    assert_eq!(code(&app, json!({"key": key})).await, "DISABLED");
    let disabled = app
        .audit()
        .await
        .into_iter()
        .rfind(|e| e["action"] == "key.update")
        .unwrap();
    assert_eq!(disabled["actor"], "system");
    assert_eq!(
        disabled["details"]["reason"],
        "repeated rate-limit violations"
    );
    // Every step is an event.
    let mut app = app;
    app.restart().await;
    let (_, page) = app.call(Method::GET, "/v1/events?limit=1000", None).await;
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "ratelimit.warning",
        "ratelimit.exceeded",
        "ratelimit.block",
        "key.disabled",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "ratelimit.block").count(), 2);
    // Bad settings are refused naming the field.
    for (graduated, field) in [
        (json!({"warning_percent": 0}), "graduated.warning_percent"),
        (
            json!({"block": {"violations": 0, "within_s": 60, "block_s": 60}}),
            "graduated.block.violations",
        ),
        (
            json!({"block": {"violations": 1, "within_s": 60, "block_s": 0}}),
            "graduated.block.block_s",
        ),
        (json!({"block": {"violations": 1}}), "graduated"),
    ] {
        let (status, err) = app
            .call(
                Method::POST,
                "/v1/plans",
                Some(json!({"name": "x", "ratelimits": [], "graduated": graduated})),
            )
            .await;
        assert_eq!(status, 400, "{graduated}: {err}");
        assert!(
            err["error"]["field"].as_str().unwrap().starts_with(field),
            "{graduated}: {err}"
        );
    }
}

#[tokio::test]
async fn plan_quotas_apply_to_keys_without_their_own() {
    let mut app = spawn_app().await;
    let (status, plan) = app
        .call(Method::POST, "/v1/plans", Some(json!({"name": "free", "ratelimits": [], "quota": {"amount": 3, "interval": "monthly"}})))
        .await;
    assert_eq!(status, 201, "{plan}");
    assert_eq!(plan["quota"], json!({"amount": 3, "interval": "monthly"}));
    let on_plan = app.create_key("live", json!({"plan": "free"})).await;
    let own = app
        .create_key("live", json!({"plan": "free", "quota": {"remaining": 1}}))
        .await;
    let (k1, k2) = (
        on_plan["key"].as_str().unwrap().to_owned(),
        own["key"].as_str().unwrap().to_owned(),
    );
    for expected in [2, 1, 0] {
        assert_eq!(
            verify(&app, json!({"key": k1})).await.0["quota_remaining"],
            expected
        );
    }
    assert_eq!(code(&app, json!({"key": k1})).await, "USAGE_EXCEEDED");
    assert_eq!(code(&app, json!({"key": k2})).await, "VALID");
    assert_eq!(
        code(&app, json!({"key": k2})).await,
        "USAGE_EXCEEDED",
        "its own quota wins over the plan's"
    );
    // The count survives a restart and refills at the start of the next month.
    app.restart().await;
    assert_eq!(code(&app, json!({"key": k1})).await, "USAGE_EXCEEDED");
    app.clock
        .set(keyward_core::Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").unwrap());
    assert_eq!(
        verify(&app, json!({"key": k1})).await.0["quota_remaining"],
        2
    );
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/plans",
            Some(
                json!({"name": "x", "ratelimits": [], "quota": {"amount": 0, "interval": "daily"}}),
            ),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("quota.amount")),
        "{err}"
    );
}
