//! Permissions, roles, grants, environments and their policies, network rules and scoped admin
//! keys, against the real server with a fake clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyward_server::ServerConfig;
use keyward_testkit::{TestApp, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

async fn verify(app: &TestApp, body: Value) -> Value {
    let (status, verdict) = app.call(Method::POST, "/v1/verify", Some(body)).await;
    assert_eq!(status, 200, "{verdict}");
    verdict
}

async fn code(app: &TestApp, body: Value) -> String {
    verify(app, body).await["code"].as_str().unwrap().to_owned()
}

fn key_of(created: &Value) -> String {
    created["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn permission_queries_in_verify() {
    let app = spawn_app().await;
    let key = key_of(
        &app.create_key(
            "live",
            json!({"permissions": ["invoices:read", "orders:*"]}),
        )
        .await,
    );
    let cases = [
        ("invoices:read", "VALID"),
        ("invoices:read AND orders:write", "VALID"),
        ("invoices:write", "INSUFFICIENT_PERMISSIONS"),
        ("invoices:write OR orders:delete", "VALID"),
        ("invoices:read AND (admin:read OR orders:read)", "VALID"),
        (
            "invoices:read AND NOT orders:delete",
            "INSUFFICIENT_PERMISSIONS",
        ),
        ("NOT admin:read", "VALID"),
        ("orders:*", "VALID"),
        ("invoices:*", "INSUFFICIENT_PERMISSIONS"),
    ];
    for (query, expected) in cases {
        let verdict = verify(&app, json!({"key": key, "permissions": query})).await;
        assert_eq!(verdict["code"], expected, "{query}: {verdict}");
        assert_eq!(verdict["valid"], expected == "VALID");
    }
    let verdict = verify(
        &app,
        json!({"key": key, "permissions": "invoices:read AND invoices:write"}),
    )
    .await;
    assert_eq!(verdict["detail"], "missing permission invoices:write");
    let verdict = verify(
        &app,
        json!({"key": key, "permissions": "NOT orders:delete"}),
    )
    .await;
    assert_eq!(verdict["detail"], "holds excluded permission orders:delete");

    // A malformed query is the caller's error: 400 with the position.
    for (query, position) in [
        ("invoices:read AND", "17"),
        ("(a:b", "4"),
        ("a:b & c:d", "4"),
        ("Invoices:read", "0"),
    ] {
        let (status, err) = app
            .call(
                Method::POST,
                "/v1/verify",
                Some(json!({"key": key, "permissions": query})),
            )
            .await;
        assert_eq!(status, 400, "{query}: {err}");
        assert_eq!(err["error"]["field"], "permissions");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("character {position}")),
            "{query}: {err}"
        );
    }
}

#[tokio::test]
async fn path_rules_in_verify() {
    let app = spawn_app().await;
    let key = key_of(
        &app.create_key(
            "live",
            json!({"path_rules": ["GET /v1/users/*/profile", "POST /v1/invoices/**"]}),
        )
        .await,
    );
    let other = key_of(&app.create_key("live", json!({})).await);
    for (method, path, expected) in [
        ("GET", "/v1/users/42/profile", "VALID"),
        ("GET", "/v1/users/42/profile?fields=name", "VALID"),
        ("POST", "/v1/users/42/profile", "INSUFFICIENT_PERMISSIONS"),
        ("GET", "/v1/users/42/settings", "INSUFFICIENT_PERMISSIONS"),
        ("POST", "/v1/invoices", "VALID"),
        ("POST", "/v1/invoices/7/lines/1", "VALID"),
        ("POST", "/v1/invoices/../admin", "INSUFFICIENT_PERMISSIONS"),
    ] {
        let verdict = verify(&app, json!({"key": key, "method": method, "path": path})).await;
        assert_eq!(verdict["code"], expected, "{method} {path}: {verdict}");
        // A key without path rules may make any request.
        assert_eq!(
            code(&app, json!({"key": other, "method": method, "path": path})).await,
            "VALID"
        );
    }
    // Path rules fail closed when the request is not described.
    assert_eq!(
        code(&app, json!({"key": key})).await,
        "INSUFFICIENT_PERMISSIONS"
    );
    for bad in [
        json!({"key": key, "method": "get", "path": "/x"}),
        json!({"key": key, "method": "GET"}),
        json!({"key": key, "method": "GET", "path": "x"}),
    ] {
        let (status, err) = app
            .call(Method::POST, "/v1/verify", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
    let (status, err) = app
        .call(Method::POST, "/v1/keys", Some(json!({"environment": "live", "name": "n", "owner": "o", "path_rules": ["GET /ok", "GET /a/../b"]})))
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["field"], "path_rules");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("entry 1"),
        "{err}"
    );
}

#[tokio::test]
async fn roles_are_templates_and_changes_reach_verify_at_once() {
    let app = spawn_app().await;
    let (_, roles) = app.call(Method::GET, "/v1/roles", None).await;
    let names: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["full-access", "read-only"]);

    let (status, role) = app
        .call(Method::POST, "/v1/roles", Some(json!({"name": "support", "description": "first line", "permissions": ["tickets:read"]})))
        .await;
    assert_eq!(status, 201, "{role}");
    let created = app
        .create_key("live", json!({"roles": ["support", "read-only"]}))
        .await;
    let key = key_of(&created);
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "tickets:read"})).await,
        "VALID"
    );
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "orders:read"})).await,
        "VALID",
        "read-only is *:read"
    );
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "tickets:write"})).await,
        "INSUFFICIENT_PERMISSIONS"
    );

    let (status, _) = app
        .call(
            Method::PUT,
            "/v1/roles/support",
            Some(json!({"permissions": ["tickets:read", "tickets:write"]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "tickets:write"})).await,
        "VALID"
    );
    let verdict = verify(&app, json!({"key": key})).await;
    assert_eq!(
        verdict["permissions"],
        json!(["*:read", "tickets:read", "tickets:write"])
    );

    let (status, err) = app.call(Method::DELETE, "/v1/roles/support", None).await;
    assert_eq!(status, 409, "{err}");
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/roles",
            Some(json!({"name": "support", "permissions": []})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "live", "name": "n", "owner": "o", "roles": ["nobody"]})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("roles")),
        "{err}"
    );
    // Once no key holds it, it can go.
    let id = created["id"].as_str().unwrap();
    app.call(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"roles": ["read-only"]})),
    )
    .await;
    let (status, _) = app.call(Method::DELETE, "/v1/roles/support", None).await;
    assert_eq!(status, 204);
    let (status, _) = app.call(Method::GET, "/v1/roles/support", None).await;
    assert_eq!(status, 404);
    let actions: Vec<String> = app
        .audit()
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for action in ["role.create", "role.update", "role.delete"] {
        assert!(
            actions.contains(&action.to_owned()),
            "{action} not audited: {actions:?}"
        );
    }
    for (body, field) in [
        (json!({"name": "Bad Name", "permissions": []}), "name"),
        (
            json!({"name": "x", "permissions": ["nope"]}),
            "permissions[0]",
        ),
        (json!({"name": "x"}), ""),
    ] {
        let (status, err) = app
            .call(Method::POST, "/v1/roles", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {err}");
        if !field.is_empty() {
            assert_eq!(err["error"]["field"], field, "{err}");
        }
    }
}

#[tokio::test]
async fn a_temporary_grant_lapses_exactly_at_its_expiry() {
    let app = spawn_app().await;
    let created = app
        .create_key("live", json!({"permissions": ["invoices:read"]}))
        .await;
    let (key, id) = (key_of(&created), created["id"].as_str().unwrap().to_owned());
    let (status, granted) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/grants"),
            Some(json!({"permission": "invoices:refund", "ttl_s": 600})),
        )
        .await;
    assert_eq!(status, 201, "{granted}");
    assert_eq!(granted["grants"][0]["permission"], "invoices:refund");
    let (status, _) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/grants"),
            Some(json!({"role": "read-only", "ttl_s": 300})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        code(
            &app,
            json!({"key": key, "permissions": "invoices:refund AND orders:read"})
        )
        .await,
        "VALID"
    );
    app.clock.advance_seconds(299);
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "orders:read"})).await,
        "VALID"
    );
    app.clock.advance_seconds(1);
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "orders:read"})).await,
        "INSUFFICIENT_PERMISSIONS"
    );
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "invoices:refund"})).await,
        "VALID"
    );
    app.clock.advance_seconds(299);
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "invoices:refund"})).await,
        "VALID"
    );
    app.clock.advance_seconds(1);
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "invoices:refund"})).await,
        "INSUFFICIENT_PERMISSIONS"
    );
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "invoices:read"})).await,
        "VALID"
    );

    // The lapse is recorded: grants are removed and each lapse audited.
    assert_eq!(
        app.authority.access().sweep_lapsed_grants().await.unwrap(),
        2
    );
    let (_, shown) = app.call(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown["grants"], json!([]));
    let actions: Vec<String> = app
        .audit()
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions.iter().filter(|a| *a == "grant.add").count(), 2);
    assert_eq!(actions.iter().filter(|a| *a == "grant.lapse").count(), 2);

    for bad in [
        json!({"permission": "a:b"}),
        json!({"permission": "a:b", "role": "read-only", "ttl_s": 5}),
        json!({"permission": "a:b", "ttl_s": 0}),
        json!({"permission": "a:b", "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"role": "nobody", "ttl_s": 5}),
        json!({"permission": "nope", "ttl_s": 5}),
    ] {
        let (status, err) = app
            .call(
                Method::POST,
                &format!("/v1/keys/{id}/grants"),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
}

#[tokio::test]
async fn environments_have_their_own_prefix_secret_and_policy() {
    let mut app = spawn_app().await;
    let (status, env) = app
        .call(
            Method::POST,
            "/v1/environments",
            Some(json!({"name": "staging", "policy": {"max_ttl_s": 3600, "forbidden_permissions": ["admin:*"], "permission_ceiling": ["invoices:*", "admin:*"]}})),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    assert_eq!(env["policy"]["max_ttl_s"], 3600);
    let created = app
        .create_key(
            "staging",
            json!({"ttl_s": 600, "permissions": ["invoices:read"]}),
        )
        .await;
    let key = key_of(&created);
    assert!(key.starts_with("kw_staging_"), "{key}");
    assert_eq!(code(&app, json!({"key": key})).await, "VALID");
    assert_eq!(
        code(&app, json!({"key": key, "environment": "live"})).await,
        "ENVIRONMENT_MISMATCH"
    );
    let live = key_of(&app.create_key("live", json!({})).await);
    assert_eq!(
        code(&app, json!({"key": live, "environment": "staging"})).await,
        "ENVIRONMENT_MISMATCH"
    );

    // Each rule refuses create and update, naming itself.
    for (body, rule) in [
        (json!({"ttl_s": 7200}), "max_ttl_s"),
        (json!({}), "max_ttl_s"),
        (
            json!({"ttl_s": 60, "permissions": ["admin:read"]}),
            "forbidden_permissions",
        ),
        (
            json!({"ttl_s": 60, "permissions": ["orders:read"]}),
            "permission_ceiling",
        ),
        (
            json!({"ttl_s": 60, "roles": ["full-access"]}),
            "forbidden_permissions",
        ),
    ] {
        let mut full = json!({"environment": "staging", "name": "n", "owner": "o"});
        full.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, err) = app.call(Method::POST, "/v1/keys", Some(full)).await;
        assert_eq!(status, 422, "{body}: {err}");
        assert_eq!(err["error"]["code"], "POLICY_VIOLATION");
        assert_eq!(err["error"]["field"], rule, "{err}");
    }
    let id = created["id"].as_str().unwrap();
    let (status, err) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"permissions": ["orders:read"]})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("permission_ceiling")),
        "{err}"
    );
    let (status, err) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"expires_at": null})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("max_ttl_s")),
        "{err}"
    );

    // A policy change applies to verification at once: now the key needs an allowlist to be
    // created, and must be used from the environment's network.
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/staging",
            Some(
                json!({"policy": {"require_ip_allowlist": true, "allowed_cidrs": ["10.0.0.0/8"]}}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        code(&app, json!({"key": key, "ip": "10.1.2.3"})).await,
        "VALID"
    );
    assert_eq!(
        code(&app, json!({"key": key, "ip": "192.0.2.1"})).await,
        "IP_DENIED"
    );
    assert_eq!(code(&app, json!({"key": key})).await, "IP_DENIED");
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/keys",
            Some(json!({"environment": "staging", "name": "n", "owner": "o"})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("require_ip_allowlist")),
        "{err}"
    );

    // The new environment and its secret survive a restart.
    app.restart().await;
    assert_eq!(
        code(&app, json!({"key": key, "ip": "10.1.2.3"})).await,
        "VALID"
    );
    let (_, envs) = app.call(Method::GET, "/v1/environments", None).await;
    let names: Vec<&str> = envs["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "live", "staging", "test"]);

    for (body, field) in [
        (json!({"name": "Prod!"}), "name"),
        (json!({"name": "live"}), ""),
        (
            json!({"name": "qa", "policy": {"allowed_cidrs": ["10.0.0.1/8"]}}),
            "policy.allowed_cidrs",
        ),
        (
            json!({"name": "qa", "policy": {"forbidden_permissions": ["bad"]}}),
            "policy.forbidden_permissions[0]",
        ),
        (json!({"name": "qa", "policy": {"colour": "red"}}), "policy"),
    ] {
        let (status, err) = app
            .call(Method::POST, "/v1/environments", Some(body.clone()))
            .await;
        assert!(status == 400 || status == 409, "{body}: {status} {err}");
        if !field.is_empty() {
            assert_eq!(err["error"]["field"], field, "{body}: {err}");
        }
    }
    let actions: Vec<String> = app
        .audit()
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(actions.contains(&"environment.update".to_owned()));
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "environment.create")
            .count(),
        4
    );
}

#[tokio::test]
async fn network_rules_matrix() {
    let app = spawn_app().await;
    let key = key_of(
        &app.create_key(
            "live",
            json!({"allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"], "denied_cidrs": ["10.66.0.0/16", "2001:db8:bad::/48"]}),
        )
        .await,
    );
    let deny_only = key_of(
        &app.create_key("live", json!({"denied_cidrs": ["192.0.2.0/24"]}))
            .await,
    );
    for (ip, expected) in [
        ("10.1.2.3", "VALID"),
        ("10.66.1.1", "IP_DENIED"),
        ("11.0.0.1", "IP_DENIED"),
        ("2001:db8::1", "VALID"),
        ("2001:db8:bad::1", "IP_DENIED"),
        ("2001:db9::1", "IP_DENIED"),
        ("::ffff:10.1.2.3", "VALID"),
    ] {
        let verdict = verify(&app, json!({"key": key, "ip": ip})).await;
        assert_eq!(verdict["code"], expected, "{ip}: {verdict}");
    }
    assert_eq!(
        code(&app, json!({"key": key})).await,
        "IP_DENIED",
        "an allowlist fails closed without an ip"
    );
    assert_eq!(
        code(&app, json!({"key": deny_only, "ip": "198.51.100.1"})).await,
        "VALID"
    );
    assert_eq!(
        code(&app, json!({"key": deny_only, "ip": "192.0.2.9"})).await,
        "IP_DENIED"
    );
    let (status, err) = app
        .call(Method::POST, "/v1/keys", Some(json!({"environment": "live", "name": "n", "owner": "o", "allowed_cidrs": ["10.0.0.1/8"]})))
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10.0.0.0/8"),
        "{err}"
    );
}

#[tokio::test]
async fn admin_network_rules_use_the_socket_or_a_trusted_proxy() {
    // Without trusted proxies, X-Forwarded-For is ignored: the peer (127.0.0.1) is the client.
    let app = spawn_app().await;
    let local = app.create_key("admin", json!({"service": "keyward", "permissions": ["keys:read"], "allowed_cidrs": ["127.0.0.0/8"]})).await;
    let remote = app.create_key("admin", json!({"service": "keyward", "permissions": ["keys:read"], "allowed_cidrs": ["203.0.113.0/24"]})).await;
    let get = |token: String, forwarded: Option<&'static str>| {
        let app = &app;
        async move {
            let mut req = app.client.get(app.url("/v1/keys")).bearer_auth(token);
            if let Some(f) = forwarded {
                req = req.header("x-forwarded-for", f);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get(key_of(&local), None).await, 200);
    assert_eq!(get(key_of(&remote), None).await, 401);
    assert_eq!(
        get(key_of(&remote), Some("203.0.113.5")).await,
        401,
        "untrusted peer's header believed"
    );

    // Behind a trusted proxy, the forwarded client counts.
    let app2 = spawn_app_with(ServerConfig {
        trusted_proxies: keyward_core::CidrSet::parse(&["127.0.0.1/32"]).unwrap(),
        ..ServerConfig::default()
    })
    .await;
    let remote2 = app2.create_key("admin", json!({"service": "keyward", "permissions": ["keys:read"], "allowed_cidrs": ["203.0.113.0/24"]})).await;
    let status = |forwarded: &'static str| {
        let app2 = &app2;
        let token = key_of(&remote2);
        async move {
            app2.client
                .get(app2.url("/v1/keys"))
                .bearer_auth(token)
                .header("x-forwarded-for", forwarded)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("203.0.113.5").await, 200);
    assert_eq!(status("198.51.100.1").await, 401);
    let refused = app2
        .audit()
        .await
        .into_iter()
        .rfind(|e| e["action"] == "auth.failed")
        .unwrap();
    assert_eq!(refused["details"]["reason"], "ip_denied");
    assert_eq!(refused["details"]["ip"], "198.51.100.1");
}

#[tokio::test]
async fn an_admin_key_scoped_to_test_cannot_touch_live_keys() {
    let app = spawn_app().await;
    let scoped = app
        .create_key(
            "admin",
            json!({"service": "keyward", "permissions": ["keys:*"], "admin_environments": ["test"]}),
        )
        .await;
    let token = key_of(&scoped);
    let live = app.create_key("live", json!({})).await;
    let test = app.create_key("test", json!({})).await;
    let live_id = live["id"].as_str().unwrap();
    let test_id = test["id"].as_str().unwrap();
    let create = |env: &str| json!({"environment": env, "name": "n", "owner": "o"});
    let cases = [
        (
            Method::POST,
            "/v1/keys".to_owned(),
            Some(create("live")),
            403,
        ),
        (
            Method::POST,
            "/v1/keys".to_owned(),
            Some(create("test")),
            201,
        ),
        (Method::GET, format!("/v1/keys/{live_id}"), None, 403),
        (Method::GET, format!("/v1/keys/{test_id}"), None, 200),
        (
            Method::POST,
            format!("/v1/keys/{live_id}/revoke"),
            Some(json!({"reason": "x"})),
            403,
        ),
        (
            Method::POST,
            format!("/v1/keys/{live_id}/roll"),
            Some(json!({"grace_period_s": 1})),
            403,
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{live_id}"),
            Some(json!({"name": "x"})),
            403,
        ),
        (
            Method::GET,
            "/v1/keys?environment=live".to_owned(),
            None,
            403,
        ),
        (
            Method::POST,
            format!("/v1/keys/{test_id}/revoke"),
            Some(json!({"reason": "x"})),
            200,
        ),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = app.call_as(&token, method.clone(), &path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }
    // Listing without a filter shows only its environment.
    let (_, page) = app.call_as(&token, Method::GET, "/v1/keys", None).await;
    assert!(
        page["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["environment"] == "test"),
        "{page}"
    );
    assert_eq!(app.verify_code(&key_of(&live)).await, "VALID");
    // It cannot mint an unscoped admin key either.
    let (status, _) = app
        .call_as(&token, Method::POST, "/v1/keys", Some(json!({"environment": "admin", "service": "keyward", "name": "n", "owner": "o", "permissions": ["keys:read"]})))
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn explain_lists_sources_and_what_policy_removed() {
    let app = spawn_app().await;
    app.call(
        Method::POST,
        "/v1/roles",
        Some(json!({"name": "ops", "permissions": ["servers:restart", "admin:read"]})),
    )
    .await;
    let created = app
        .create_key(
            "live",
            json!({"permissions": ["invoices:read"], "roles": ["ops"]}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    app.call(
        Method::POST,
        &format!("/v1/keys/{id}/grants"),
        Some(json!({"permission": "invoices:refund", "ttl_s": 60})),
    )
    .await;
    app.call(
        Method::PATCH,
        "/v1/environments/live",
        Some(json!({"policy": {"forbidden_permissions": ["admin:*"]}})),
    )
    .await;
    let (status, explained) = app
        .call(
            Method::GET,
            &format!("/v1/keys/{id}/effective-permissions"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{explained}");
    let lines = explained["permissions"].as_array().unwrap();
    let find = |p: &str| {
        lines
            .iter()
            .find(|l| l["permission"] == p)
            .unwrap_or_else(|| panic!("{p} missing: {explained}"))
    };
    assert_eq!(find("invoices:read")["source"], "direct");
    assert_eq!(find("servers:restart")["source"], "role");
    assert_eq!(find("servers:restart")["role"], "ops");
    assert_eq!(find("invoices:refund")["source"], "grant");
    assert!(find("invoices:refund")["expires_at"].is_string());
    assert!(
        find("admin:read")["removed_by_policy"]
            .as_str()
            .unwrap()
            .contains("admin:*")
    );
    assert!(find("invoices:read").get("removed_by_policy").is_none());
    // And verify agrees: the forbidden permission is not usable.
    let key = key_of(&created);
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "admin:read"})).await,
        "INSUFFICIENT_PERMISSIONS"
    );
    assert_eq!(
        code(&app, json!({"key": key, "permissions": "servers:restart"})).await,
        "VALID"
    );
    let verdict = verify(&app, json!({"key": key})).await;
    assert_eq!(
        verdict["permissions"],
        json!(["invoices:read", "invoices:refund", "servers:restart"])
    );
}

#[tokio::test]
async fn network_rules_cannot_lock_out_the_admin_making_them() {
    let app = spawn_app().await;
    // Rules for the admin environment that would deny this caller (127.0.0.1) are refused.
    let (status, err) = app
        .call(
            Method::PATCH,
            "/v1/environments/admin",
            Some(json!({"policy": {"allowed_cidrs": ["192.0.2.0/24"]}})),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/admin",
            Some(json!({"policy": {"denied_cidrs": ["127.0.0.0/8"]}})),
        )
        .await;
    assert_eq!(status, 409);
    // Rules that keep it in are accepted, and apply to every admin key.
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/admin",
            Some(json!({"policy": {"allowed_cidrs": ["127.0.0.0/8", "10.0.0.0/8"]}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200);
    // Same for an admin key's own rules.
    let (_, page) = app
        .call(Method::GET, "/v1/keys?service=keyward", None)
        .await;
    let root_id = page["keys"][0]["id"].as_str().unwrap().to_owned();
    let (status, err) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{root_id}"),
            Some(json!({"allowed_cidrs": ["192.0.2.0/24"]})),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{root_id}"),
            Some(json!({"allowed_cidrs": ["127.0.0.1/32"]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.call(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, 200);
    let (status, err) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"max_ttl_s": 9223372036854775808u64}})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("policy.max_ttl_s")),
        "{err}"
    );
}
