//! Liveness, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready`, `sealed`, `unavailable` or `integrity`.
    pub status: &'static str,
    /// With `integrity`: how many integrity check failures were found since unseal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity_failures: Option<u64>,
}

#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        integrity_failures: None,
    })
}

#[utoipa::path(
    get, path = "/readyz", tag = "system",
    responses((status = 200, body = Health), (status = 503, description = "Sealed (`sealed`), the store is unreachable (`unavailable`), or stored security state failed its integrity check (`integrity`; what failed is in the log)", body = Health))
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let Ok(authority) = state.node.session() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "sealed",
                integrity_failures: None,
            }),
        );
    };
    let failures = authority.integrity_failures();
    if failures > 0 {
        // Stored security state was edited outside keyward: the node serves (failing closed on
        // what was touched), but it is not healthy. What failed is in the log.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "integrity",
                integrity_failures: Some(failures),
            }),
        );
    }
    if authority.ready().await {
        (
            StatusCode::OK,
            Json(Health {
                status: "ready",
                integrity_failures: None,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
                integrity_failures: None,
            }),
        )
    }
}

#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let session = state.node.session().ok();
    let authority = session.as_ref().map(|s| &**s.authority());
    let backlog = match authority {
        Some(authority) => authority.webhooks().backlog().await.ok(),
        None => None,
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(authority, backlog),
    )
}

pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.as_str().to_owned(),
    )
}
