//! The authorization rule, tried as an attacker would: no escalation through any door, no
//! acting on a stronger key, restrictions inherited, environment scope everywhere, and every
//! refusal audited and harmless.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use keyward_testkit::{TestApp, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

fn key_of(created: &Value) -> String {
    created["key"].as_str().unwrap().to_owned()
}

fn id_of(created: &Value) -> String {
    created["id"].as_str().unwrap().to_owned()
}

/// An admin key holding exactly `permissions` (and `extra` settings).
async fn admin_key(app: &TestApp, permissions: &[&str], extra: Value) -> Value {
    let mut body = json!({"service": "keyward", "permissions": permissions});
    if let (Some(obj), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        obj.extend(extra.clone());
    }
    app.create_key("admin", body).await
}

async fn root_id(app: &TestApp) -> String {
    let (_, page) = app
        .call(Method::GET, "/v1/keys?service=keyward", None)
        .await;
    page["keys"][0]["id"].as_str().unwrap().to_owned()
}

/// Audit entries of refusals, newest last.
async fn refusals(app: &TestApp) -> Vec<Value> {
    app.audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "auth.forbidden")
        .collect()
}

/// A key's effective permissions, sorted, as the root key sees them.
async fn effective(app: &TestApp, id: &str) -> Vec<String> {
    let (status, explained) = app
        .call(
            Method::GET,
            &format!("/v1/keys/{id}/effective-permissions"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{explained}");
    let mut held: Vec<String> = explained["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["permission"].as_str().unwrap().to_owned())
        .collect();
    held.sort();
    held
}

#[tokio::test]
async fn no_escalation_through_any_door() {
    let app = spawn_app().await;
    let creator = admin_key(&app, &["keys:create"], json!({})).await;
    let updater = admin_key(&app, &["keys:update", "keys:read"], json!({})).await;
    let role_admin = admin_key(&app, &["roles:manage"], json!({})).await;
    let admin = |permissions: Value, roles: Value| {
        json!({"environment": "admin", "service": "keyward", "name": "n", "owner": "o",
               "permissions": permissions, "roles": roles})
    };

    // keys:create alone: neither `*` directly nor through a role.
    for body in [
        admin(json!(["*"]), json!([])),
        admin(json!(["keys:*"]), json!([])),
        admin(json!([]), json!(["full-access"])),
        admin(json!([]), json!(["read-only"])),
    ] {
        let (status, err) = app
            .call_as(
                &key_of(&creator),
                Method::POST,
                "/v1/keys",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 403, "{body}: {err}");
        assert_eq!(err["error"]["code"], "FORBIDDEN");
    }
    // What it holds, it may hand on.
    let (status, made) = app
        .call_as(
            &key_of(&creator),
            Method::POST,
            "/v1/keys",
            Some(admin(json!(["keys:create"]), json!([]))),
        )
        .await;
    assert_eq!(status, 201, "{made}");

    // keys:update alone: not on itself, not on a weaker key, not by roles or grants.
    let weak = admin_key(&app, &["keys:read"], json!({})).await;
    for (target, body) in [
        (id_of(&updater), json!({"permissions": ["*"]})),
        (id_of(&updater), json!({"roles": ["full-access"]})),
        (
            id_of(&weak),
            json!({"permissions": ["keys:read", "audit:read"]}),
        ),
        (id_of(&weak), json!({"roles": ["full-access"]})),
    ] {
        let (status, err) = app
            .call_as(
                &key_of(&updater),
                Method::PATCH,
                &format!("/v1/keys/{target}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 403, "{body}: {err}");
    }
    for grant in [
        json!({"permission": "*", "ttl_s": 60}),
        json!({"role": "full-access", "ttl_s": 60}),
    ] {
        let (status, err) = app
            .call_as(
                &key_of(&updater),
                Method::POST,
                &format!("/v1/keys/{}/grants", id_of(&updater)),
                Some(grant.clone()),
            )
            .await;
        assert_eq!(status, 403, "{grant}: {err}");
    }

    // A custom role plus roles:manage: editing the role it holds into `*` is refused, and so is
    // editing a built-in role.
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/roles",
            Some(json!({"name": "ops", "permissions": ["keys:read"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&role_admin)),
            Some(json!({"roles": ["ops"]})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, err) = app
        .call_as(
            &key_of(&role_admin),
            Method::PUT,
            "/v1/roles/ops",
            Some(json!({"permissions": ["*"]})),
        )
        .await;
    assert_eq!(status, 403, "{err}");
    for (method, body) in [
        (Method::PUT, Some(json!({"permissions": ["keys:read"]}))),
        (Method::DELETE, None),
    ] {
        let (status, err) = app.call(method, "/v1/roles/full-access", body).await;
        assert_eq!(
            status, 409,
            "built-in roles are immutable even for root: {err}"
        );
    }
    // A role no admin key holds may be edited freely; assigning it later is checked then.
    let (status, _) = app
        .call_as(
            &key_of(&role_admin),
            Method::POST,
            "/v1/roles",
            Some(json!({"name": "everything", "permissions": ["*"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .call_as(
            &key_of(&updater),
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&updater)),
            Some(json!({"roles": ["everything"]})),
        )
        .await;
    assert_eq!(status, 403);

    // Lease keys are API keys: they cannot be born admin keys.
    let leaser = admin_key(&app, &["leases:create"], json!({})).await;
    let (status, err) = app
        .call_as(
            &key_of(&leaser),
            Method::POST,
            "/v1/leases/keys",
            Some(json!({"environment": "admin", "name": "n", "owner": "o", "ttl_s": 60, "roles": ["full-access"]})),
        )
        .await;
    assert_eq!(status, 400, "{err}");

    // Nothing changed: each key still holds only what it held.
    assert_eq!(effective(&app, &id_of(&creator)).await, ["keys:create"]);
    assert_eq!(
        effective(&app, &id_of(&updater)).await,
        ["keys:read", "keys:update"]
    );
    assert_eq!(effective(&app, &id_of(&weak)).await, ["keys:read"]);
    assert_eq!(
        effective(&app, &id_of(&role_admin)).await,
        ["keys:read", "roles:manage"]
    );
    // Every refusal is in the audit log, with its reason.
    let refused = refusals(&app).await;
    assert!(refused.len() >= 12, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|e| e["details"]["reason"] == "escalation"
                && e["details"]["operation"] == "key.create"),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|e| e["details"]["reason"] == "stronger_target"
                && e["details"]["operation"] == "role.write"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn no_acting_on_a_stronger_key() {
    let app = spawn_app().await;
    let root = root_id(&app).await;
    let roller = admin_key(&app, &["keys:roll", "keys:read"], json!({})).await;
    let revoker = admin_key(&app, &["keys:revoke", "keys:update"], json!({})).await;
    let cases = [
        (
            &roller,
            Method::POST,
            format!("/v1/keys/{root}/roll"),
            json!({"grace_period_s": 0}),
        ),
        (
            &revoker,
            Method::POST,
            format!("/v1/keys/{root}/revoke"),
            json!({"reason": "x"}),
        ),
        (
            &revoker,
            Method::PATCH,
            format!("/v1/keys/{root}"),
            json!({"enabled": false}),
        ),
        (
            &revoker,
            Method::PATCH,
            format!("/v1/keys/{root}"),
            json!({"name": "mine now"}),
        ),
        (
            &revoker,
            Method::POST,
            format!("/v1/keys/{root}/grants"),
            json!({"permission": "keys:update", "ttl_s": 60}),
        ),
        // A sibling that holds something the caller lacks is stronger too.
        (
            &revoker,
            Method::PATCH,
            format!("/v1/keys/{}", id_of(&roller)),
            json!({"name": "x"}),
        ),
        (
            &revoker,
            Method::POST,
            format!("/v1/keys/{}/revoke", id_of(&roller)),
            json!({"reason": "x"}),
        ),
    ];
    for (who, method, path, body) in cases {
        let (status, err) = app
            .call_as(&key_of(who), method.clone(), &path, Some(body))
            .await;
        assert_eq!(status, 403, "{method} {path}: {err}");
        assert_eq!(err["error"]["code"], "FORBIDDEN");
        assert!(!err.to_string().contains("kw_"), "{err}");
    }
    // The root key is untouched and still works.
    let (status, shown) = app
        .call(Method::GET, &format!("/v1/keys/{root}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["status"], "active");
    assert!(shown["rolled_to"].is_null());
    assert_eq!(shown["name"], "root");
    // A key may roll itself, and still not revoke or disable itself.
    let (status, rolled) = app
        .call_as(
            &key_of(&roller),
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&roller)),
            Some(json!({"grace_period_s": 0})),
        )
        .await;
    assert_eq!(status, 201, "{rolled}");
    for (method, path, body) in [
        (
            Method::POST,
            format!("/v1/keys/{}/revoke", id_of(&revoker)),
            json!({"reason": "x"}),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{}", id_of(&revoker)),
            json!({"enabled": false}),
        ),
    ] {
        let (status, _) = app
            .call_as(&key_of(&revoker), method, &path, Some(body))
            .await;
        assert_eq!(status, 409);
    }
    // An equally strong key may act.
    let peer = admin_key(
        &app,
        &["keys:revoke", "keys:update", "keys:roll", "keys:read"],
        json!({}),
    )
    .await;
    let (status, _) = app
        .call_as(
            &key_of(&peer),
            Method::POST,
            &format!("/v1/keys/{}/revoke", id_of(&roller)),
            Some(json!({"reason": "rotated"})),
        )
        .await;
    assert_eq!(status, 200);
    let refused = refusals(&app).await;
    assert_eq!(
        refused
            .iter()
            .filter(|e| e["details"]["reason"] == "stronger_target")
            .count(),
        7,
        "{refused:?}"
    );
}

#[tokio::test]
async fn restrictions_are_inherited() {
    let app = spawn_app().await;
    let restricted = admin_key(
        &app,
        &["keys:*"],
        json!({"allowed_cidrs": ["127.0.0.0/8"], "denied_cidrs": ["127.9.9.0/24"], "ttl_s": 3600}),
    )
    .await;
    let token = key_of(&restricted);
    let limit = restricted["expires_at"].as_str().unwrap().to_owned();
    let new_admin = |extra: Value| {
        let mut body = json!({"environment": "admin", "service": "keyward", "name": "n",
                              "owner": "o", "permissions": ["keys:read"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // Unset restrictions are inherited.
    let (status, child) = app
        .call_as(&token, Method::POST, "/v1/keys", Some(new_admin(json!({}))))
        .await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(child["allowed_cidrs"], json!(["127.0.0.0/8"]));
    assert_eq!(child["denied_cidrs"], json!(["127.9.9.0/24"]));
    assert_eq!(child["expires_at"].as_str().unwrap(), limit);
    // Narrower ones are kept.
    let (status, child) = app
        .call_as(
            &token,
            Method::POST,
            "/v1/keys",
            Some(new_admin(
                json!({"allowed_cidrs": ["127.0.0.1/32"], "ttl_s": 60}),
            )),
        )
        .await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(child["allowed_cidrs"], json!(["127.0.0.1/32"]));
    // Wider ones are refused, on create and on update.
    for extra in [
        json!({"allowed_cidrs": ["0.0.0.0/0"]}),
        json!({"allowed_cidrs": ["127.0.0.1/32", "10.0.0.0/8"]}),
        json!({"ttl_s": 7200}),
        json!({"expires_at": "2099-01-01T00:00:00Z"}),
    ] {
        let (status, err) = app
            .call_as(
                &token,
                Method::POST,
                "/v1/keys",
                Some(new_admin(extra.clone())),
            )
            .await;
        assert_eq!(status, 403, "{extra}: {err}");
    }
    for patch in [
        json!({"allowed_cidrs": []}),
        json!({"allowed_cidrs": ["0.0.0.0/0"]}),
        json!({"expires_at": "2099-01-01T00:00:00Z"}),
    ] {
        let (status, err) = app
            .call_as(
                &token,
                Method::PATCH,
                &format!("/v1/keys/{}", id_of(&child)),
                Some(patch.clone()),
            )
            .await;
        assert!(
            status == 403 || (status == 200 && err["allowed_cidrs"] == json!(["127.0.0.0/8"])),
            "{patch}: {status} {err}"
        );
    }
    // Scope: a key scoped to admin and test makes keys scoped within those.
    let scoped = admin_key(
        &app,
        &["keys:*"],
        json!({"admin_environments": ["admin", "test"]}),
    )
    .await;
    let (status, child) = app
        .call_as(
            &key_of(&scoped),
            Method::POST,
            "/v1/keys",
            Some(new_admin(json!({}))),
        )
        .await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(child["admin_environments"], json!(["admin", "test"]));
    let (status, _) = app
        .call_as(
            &key_of(&scoped),
            Method::POST,
            "/v1/keys",
            Some(new_admin(json!({"admin_environments": ["live"]}))),
        )
        .await;
    assert_eq!(status, 403);
    let refused = refusals(&app).await;
    assert!(
        refused
            .iter()
            .filter(|e| e["details"]["reason"] == "less_restricted")
            .count()
            >= 5,
        "{refused:?}"
    );
}

#[tokio::test]
async fn environment_scope_reaches_verify_policies_and_shared_objects() {
    let app = spawn_app().await;
    let scoped = admin_key(
        &app,
        &[
            "keys:verify",
            "environments:manage",
            "roles:manage",
            "plans:manage",
            "audit:read",
            "events:read",
        ],
        json!({"admin_environments": ["test"]}),
    )
    .await;
    let token = key_of(&scoped);
    let live = app
        .create_key(
            "live",
            json!({"meta": {"plan": "gold"}, "permissions": ["invoices:read"]}),
        )
        .await;
    let test = app.create_key("test", json!({})).await;
    // Verify: a key of another environment is as unknown; nothing of it is revealed.
    let (status, verdict) = app
        .call_as(
            &token,
            Method::POST,
            "/v1/verify",
            Some(json!({"key": key_of(&live)})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(verdict, json!({"valid": false, "code": "NOT_FOUND"}));
    let (_, verdict) = app
        .call_as(
            &token,
            Method::POST,
            "/v1/verify",
            Some(json!({"key": key_of(&test)})),
        )
        .await;
    assert_eq!(verdict["code"], "VALID");
    // Policies of other environments, and objects every environment shares.
    let cases = [
        (
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"require_expiry": true}})),
            403,
        ),
        (
            Method::PATCH,
            "/v1/environments/test",
            Some(json!({"policy": {"require_expiry": true}})),
            200,
        ),
        (
            Method::POST,
            "/v1/environments",
            Some(json!({"name": "stage"})),
            403,
        ),
        (
            Method::POST,
            "/v1/roles",
            Some(json!({"name": "r", "permissions": ["a:b"]})),
            403,
        ),
        (
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "p", "ratelimits": []})),
            403,
        ),
        (Method::GET, "/v1/audit", None, 403),
        (Method::GET, "/v1/events", None, 403),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = app.call_as(&token, method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }
    let (_, env) = app.call(Method::GET, "/v1/environments/live", None).await;
    assert_eq!(env["policy"]["require_expiry"], false);
    let refused = refusals(&app).await;
    assert!(
        refused
            .iter()
            .filter(|e| e["actor"] == id_of(&scoped))
            .count()
            >= 6,
        "{refused:?}"
    );
}

#[tokio::test]
async fn unapproved_issuance_and_lifetimes_beyond_the_policy_are_refused() {
    let app = spawn_app().await;
    let old = app.create_key("live", json!({"ttl_s": 3600})).await;
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"require_approval": true}})),
        )
        .await;
    assert_eq!(status, 200);
    for (path, body) in [
        (
            "/v1/keys".to_owned(),
            json!({"environment": "live", "name": "n", "owner": "o"}),
        ),
        (
            format!("/v1/keys/{}/roll", id_of(&old)),
            json!({"grace_period_s": 60}),
        ),
        (
            "/v1/leases/keys".to_owned(),
            json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": 60}),
        ),
    ] {
        let (status, err) = app.call(Method::POST, &path, Some(body)).await;
        assert_eq!(status, 422, "{path}: {err}");
        assert_eq!(err["error"]["code"], "POLICY_VIOLATION");
        assert_eq!(err["error"]["field"], "require_approval");
    }
    // max_ttl_s as it is now binds rolls, lease keys and their renewals.
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"max_ttl_s": 600}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, err) = app
        .call(
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&old)),
            Some(json!({"grace_period_s": 60})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "max_ttl_s");
    let (status, err) = app
        .call(
            Method::POST,
            "/v1/leases/keys",
            Some(json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": 60, "max_ttl_s": 3600})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let (status, lease) = app
        .call(
            Method::POST,
            "/v1/leases/keys",
            Some(json!({"environment": "live", "name": "n", "owner": "o", "ttl_s": 300, "max_ttl_s": 600})),
        )
        .await;
    assert_eq!(status, 201, "{lease}");
    let lease_id = lease["lease"]["lease_id"].as_str().unwrap().to_owned();
    // The policy tightens; a renewal cannot carry the key past it.
    let (status, _) = app
        .call(
            Method::PATCH,
            "/v1/environments/live",
            Some(json!({"policy": {"max_ttl_s": 400}})),
        )
        .await;
    assert_eq!(status, 200);
    app.clock.advance_ms(200_000);
    let (status, renewed) = app
        .call(
            Method::POST,
            &format!("/v1/leases/{lease_id}/renew"),
            Some(json!({"increment_s": 300})),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let issued =
        keyward_core::Timestamp::parse_rfc3339(renewed["issued_at"].as_str().unwrap()).unwrap();
    let until =
        keyward_core::Timestamp::parse_rfc3339(renewed["expires_at"].as_str().unwrap()).unwrap();
    assert!(until.unix_ms() - issued.unix_ms() <= 400_000, "{renewed}");
}

#[tokio::test]
async fn error_bodies_never_echo_what_the_client_sent() {
    let app = spawn_app().await;
    let marker = "kw_live_0123456789ABCDEFGHIJabcdefghij0123456789ABCDEFG";
    let cases = [
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", marker: 1}),
        ),
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", "service": marker}),
        ),
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", "permissions": [marker]}),
        ),
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", "roles": [marker]}),
        ),
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", "plan": marker}),
        ),
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", "allowed_cidrs": [marker]}),
        ),
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", "path_rules": [marker]}),
        ),
        (
            "/v1/keys",
            json!({"environment": "live", "name": "n", "owner": "o", "quota": {"refill": {"amount": 1, "interval": marker}}}),
        ),
        ("/v1/verify", json!({"key": "x", "ip": marker})),
        ("/v1/verify", json!({"key": "x", marker: true})),
        ("/v1/roles", json!({"name": marker, "permissions": []})),
    ];
    for (path, body) in cases {
        let (status, err) = app.call(Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(!err.to_string().contains(marker), "{path} echoed: {err}");
        assert!(
            !err.to_string().contains("0123456789ABCDEF"),
            "{path} echoed: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_edit_racing_its_conferral_never_yields_a_stronger_key() {
    let app = spawn_app().await;
    let attacker = admin_key(&app, &["roles:manage", "keys:create"], json!({})).await;
    let token = key_of(&attacker);
    for round in 0..20 {
        let role = format!("race{round}");
        let (status, _) = app
            .call_as(
                &token,
                Method::POST,
                "/v1/roles",
                Some(json!({"name": role, "permissions": ["keys:create"]})),
            )
            .await;
        assert_eq!(status, 201);
        let create = app.call_as(
            &token,
            Method::POST,
            "/v1/keys",
            Some(
                json!({"environment": "admin", "service": "keyward", "name": "t", "owner": "o",
                        "permissions": [], "roles": [role]}),
            ),
        );
        let role_path = format!("/v1/roles/{role}");
        let widen = app.call_as(
            &token,
            Method::PUT,
            &role_path,
            Some(json!({"permissions": ["*"]})),
        );
        let ((created_status, created), (widened, _)) = tokio::join!(create, widen);
        // Whichever came first, the other is refused: never both.
        assert!(
            !(created_status == 201 && widened == 200),
            "round {round}: the key got a role that became *"
        );
        if created_status == 201 {
            let held = effective(&app, &id_of(&created)).await;
            assert!(!held.contains(&"*".to_owned()), "{held:?}");
        }
    }
}

#[tokio::test]
async fn rolls_grants_and_updates_keep_the_callers_restrictions() {
    let app = spawn_app().await;
    let restricted = admin_key(
        &app,
        &["keys:roll", "keys:read", "keys:update", "secrets:read"],
        json!({"allowed_cidrs": ["127.0.0.1/32"], "ttl_s": 3600}),
    )
    .await;
    let token = key_of(&restricted);
    let limit = restricted["expires_at"].as_str().unwrap().to_owned();
    let open = admin_key(&app, &["secrets:read", "keys:read"], json!({})).await;
    // A roll by a restricted key gives a successor as restricted as the caller.
    let (status, rolled) = app
        .call_as(
            &token,
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&open)),
            Some(json!({"grace_period_s": 0})),
        )
        .await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(rolled["allowed_cidrs"], json!(["127.0.0.1/32"]));
    assert_eq!(rolled["expires_at"].as_str().unwrap(), limit);
    // Its own roll never outlives its bound either.
    let (status, own) = app
        .call_as(
            &token,
            Method::POST,
            &format!("/v1/keys/{}/roll", id_of(&restricted)),
            Some(json!({"grace_period_s": 0})),
        )
        .await;
    assert_eq!(status, 201, "{own}");
    assert!(own["expires_at"].as_str().unwrap() <= limit.as_str());
    // Powers are not handed to an unrestricted key, by PATCH or grant.
    let unrestricted = admin_key(&app, &["keys:read"], json!({})).await;
    let (status, _) = app
        .call_as(
            &key_of(&own),
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&unrestricted)),
            Some(json!({"permissions": ["keys:read", "secrets:read"]})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .call_as(
            &key_of(&own),
            Method::POST,
            &format!("/v1/keys/{}/grants", id_of(&unrestricted)),
            Some(json!({"permission": "secrets:read", "ttl_s": 60})),
        )
        .await;
    assert_eq!(status, 403);
    // A permission held only through a grant cannot be made permanent, nor outlive the grant.
    let temp = admin_key(&app, &["keys:update", "keys:read"], json!({})).await;
    app.call(
        Method::POST,
        &format!("/v1/keys/{}/grants", id_of(&temp)),
        Some(json!({"permission": "audit:read", "ttl_s": 30})),
    )
    .await;
    let (status, _) = app
        .call_as(
            &key_of(&temp),
            Method::POST,
            &format!("/v1/keys/{}/grants", id_of(&temp)),
            Some(json!({"permission": "audit:read", "ttl_s": 3_153_600_000u64})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .call_as(
            &key_of(&temp),
            Method::PATCH,
            &format!("/v1/keys/{}", id_of(&temp)),
            Some(json!({"permissions": ["keys:update", "keys:read", "audit:read"]})),
        )
        .await;
    assert_eq!(status, 403);
}

/// A concurrency lease is ended only by a caller that could verify its key: a key scoped to
/// other environments can neither free a slot of a key it cannot reach nor learn that the lease
/// exists.
#[tokio::test]
async fn a_scoped_key_cannot_release_a_lease_of_another_environment() {
    let app = spawn_app().await;
    let scoped = admin_key(
        &app,
        &["keys:verify"],
        json!({"admin_environments": ["test"]}),
    )
    .await;
    let token = key_of(&scoped);
    let limited = app
        .create_key(
            "live",
            json!({"concurrency": {"limit": 1, "lease_timeout_s": 60}}),
        )
        .await;
    let (status, verdict) = app
        .call(
            Method::POST,
            "/v1/verify",
            Some(json!({"key": key_of(&limited), "lease": true})),
        )
        .await;
    assert_eq!((status, verdict["code"].as_str()), (200, Some("VALID")));
    let lease = verdict["lease"]["id"].as_str().unwrap().to_owned();
    let release = format!("/v1/leases/{lease}/release");
    let (status, body) = app.call_as(&token, Method::POST, &release, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "answered as for an unknown lease"
    );
    // The slot is still taken: the lease was not ended.
    let (_, again) = app
        .call(
            Method::POST,
            "/v1/verify",
            Some(json!({"key": key_of(&limited), "lease": true})),
        )
        .await;
    assert_eq!(again["code"], "RATE_LIMITED");
    // The refusal is audited, naming the lease.
    let refused = app.audit().await;
    assert!(
        refused.iter().any(|e| e["action"] == "auth.forbidden"
            && e["target"] == lease.as_str()
            && e["details"]["reason"] == "out_of_scope"),
        "the refused release is audited"
    );
    // A key that reaches live ends it.
    let (status, _) = app.call(Method::POST, &release, None).await;
    assert_eq!(status, 204);
}
