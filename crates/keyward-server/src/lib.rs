//! keyward's HTTP API.
//!
//! An axum application over an [`Authority`]: the routes of the v1 contract, the error-code
//! table, request ids, body-size and time limits, Prometheus metrics and the OpenAPI document
//! generated from the route definitions. [`run`] takes the listener and the shutdown signal from
//! its caller, so tests bind port 0 and the binary decides on signals. It knows no storage
//! backend: whatever store the authority was opened over is the one in use.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyward_service::{Node, Session};
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `Debug` for request and response types that carry a secret (a key, a share, a secret's
/// value): the type's name and `[redacted]`, never a field.
#[macro_export]
#[doc(hidden)]
macro_rules! redacted_debug {
    ($($ty:ty),* $(,)?) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($ty), "([redacted])"))
            }
        }
    )*};
}

mod connections;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod routes;

use error::{ApiError, ErrorCode};

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Larger request bodies are refused with 413 before they are read in full.
    pub body_limit_bytes: usize,
    /// A request that takes longer is answered 408.
    pub request_timeout: Duration,
    /// Lets anyone who can reach the server call `/v1/verify` without a bearer key. Only for a
    /// server reachable solely from a trusted network.
    pub insecure_unauthenticated_verify: bool,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers name the client. Headers from any
    /// other peer are ignored.
    pub trusted_proxies: keyward_core::CidrSet,
    /// A client that has not sent a whole request header by then is disconnected, so slow
    /// clients cannot hold connections open.
    pub header_read_timeout: Duration,
    /// Connections served at once; past it, new connections are closed at once (counted).
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight before it closes their connections.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            body_limit_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            insecure_unauthenticated_verify: false,
            trusted_proxies: keyward_core::CidrSet::default(),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 8192,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What every handler shares, behind one `Arc`: the router clones the state for each request
/// at several levels, and one reference count costs less than one per field.
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppShared>);

#[derive(Debug)]
pub struct AppShared {
    pub node: Arc<Node>,
    pub metrics: Arc<metrics::Metrics>,
    pub config: Arc<ServerConfig>,
    pub openapi: Arc<String>,
    request_ids: RequestIds,
}

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

impl AppState {
    /// The unsealed authority for this request; 503 SEALED while the vault is sealed.
    pub fn authority(&self) -> Result<Session, ApiError> {
        Ok(self.node.session()?)
    }
}

/// Request ids: a random per-process prefix and a counter, so making one costs no syscall.
#[derive(Debug)]
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.prefix)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyward",
        description = "Self-hosted API key security: issue, verify, revoke, expire and roll API keys, with a hash-chained audit log.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    tags(
        (name = "keys", description = "Issue and manage keys"),
        (name = "verify", description = "Verify keys presented to your API"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "environments", description = "Environments, their secrets and policies"),
        (name = "roles", description = "Reusable permission sets"),
        (name = "plans", description = "Tiers: named sets of rate limits"),
        (name = "system", description = "Health, readiness and metrics"),
        (name = "vault", description = "Seal, unseal, keyring rotation and rekeying"),
        (name = "secrets", description = "Versioned secrets per environment, sealed at rest"),
        (name = "leases", description = "Dynamic short-lived keys and leased secret reads"),
        (name = "webhooks", description = "Signed event deliveries (Standard Webhooks)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and their OpenAPI description, from one definition.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::system::healthz))
        .routes(routes!(routes::system::readyz))
        .routes(routes!(routes::system::metrics))
        .routes(routes!(routes::keys::create_key, routes::keys::list_keys))
        .routes(routes!(routes::keys::show_key, routes::keys::update_key))
        .routes(routes!(routes::keys::revoke_key))
        .routes(routes!(routes::keys::revoke_keys))
        .routes(routes!(routes::keys::transfer_owner))
        .routes(routes!(routes::keys::roll_key))
        .routes(routes!(routes::keys::add_grant))
        .routes(routes!(routes::keys::explain_key))
        .routes(routes!(routes::rotation::key_versions))
        .routes(routes!(routes::rotation::show_self))
        .routes(routes!(routes::rotation::rotate_self))
        .routes(routes!(
            routes::environments::list_environments,
            routes::environments::create_environment
        ))
        .routes(routes!(
            routes::environments::show_environment,
            routes::environments::update_environment
        ))
        .routes(routes!(
            routes::roles::list_roles,
            routes::roles::create_role
        ))
        .routes(routes!(
            routes::roles::show_role,
            routes::roles::replace_role,
            routes::roles::delete_role
        ))
        .routes(routes!(
            routes::plans::list_plans,
            routes::plans::create_plan
        ))
        .routes(routes!(
            routes::plans::show_plan,
            routes::plans::replace_plan,
            routes::plans::delete_plan
        ))
        .routes(routes!(routes::verify::verify))
        .routes(routes!(routes::verify::release_lease))
        .routes(routes!(routes::audit::list_audit))
        .routes(routes!(routes::audit::list_events))
        .routes(routes!(routes::sys::seal_status))
        .routes(routes!(routes::sys::unseal))
        .routes(routes!(routes::sys::seal))
        .routes(routes!(routes::sys::rotate))
        .routes(routes!(routes::sys::keyring))
        .routes(routes!(routes::sys::rekey))
        .routes(routes!(routes::secrets::list_secrets))
        // Secret paths hold slashes: axum needs a catch-all, which the OpenAPI document writes as
        // a plain `{path}` parameter (see `SecretPaths`).
        .route(
            "/v1/secrets/{environment}/{*path}",
            get(routes::secrets::read_secret)
                .put(routes::secrets::write_secret)
                .delete(routes::secrets::delete_secret_version),
        )
        .route(
            "/v1/secret-metadata/{environment}/{*path}",
            get(routes::secrets::read_metadata)
                .patch(routes::secrets::update_metadata)
                .delete(routes::secrets::delete_metadata),
        )
        .route(
            "/v1/secret-undelete/{environment}/{*path}",
            post(routes::secrets::undelete),
        )
        .route(
            "/v1/secret-destroy/{environment}/{*path}",
            post(routes::secrets::destroy),
        )
        .routes(routes!(routes::leases::create_key_lease))
        .routes(routes!(routes::leases::list_leases))
        .routes(routes!(routes::leases::show_lease))
        .routes(routes!(routes::leases::renew_lease))
        .routes(routes!(routes::leases::revoke_lease))
        .routes(routes!(routes::leases::revoke_prefix))
        .routes(routes!(
            routes::webhooks::create_webhook,
            routes::webhooks::list_webhooks
        ))
        .routes(routes!(
            routes::webhooks::show_webhook,
            routes::webhooks::update_webhook,
            routes::webhooks::delete_webhook
        ))
        .routes(routes!(routes::webhooks::rotate_webhook_secret))
        .routes(routes!(routes::webhooks::list_deliveries))
        .routes(routes!(routes::webhooks::redeliver))
        .routes(routes!(routes::webhooks::test_webhook))
        .split_for_parts();
    doc.merge(SecretPaths::openapi());
    (router, doc)
}

/// The secret routes, whose axum paths are catch-alls.
#[derive(OpenApi)]
#[openapi(paths(
    routes::secrets::read_secret,
    routes::secrets::write_secret,
    routes::secrets::delete_secret_version,
    routes::secrets::read_metadata,
    routes::secrets::update_metadata,
    routes::secrets::delete_metadata,
    routes::secrets::undelete,
    routes::secrets::destroy,
))]
struct SecretPaths;

/// The OpenAPI document of this server, as served at `/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api().1
}

/// Builds the application around a node (sealed or not).
pub fn app(
    node: Arc<Node>,
    config: ServerConfig,
) -> Result<Router, keyward_crypto::RandomUnavailable> {
    let (router, openapi) = api();
    let openapi = openapi.to_json().unwrap_or_else(|_| "{}".to_owned());
    let state = AppState(Arc::new(AppShared {
        node,
        metrics: Arc::new(metrics::Metrics::new()),
        openapi: Arc::new(openapi),
        request_ids: RequestIds {
            prefix: keyward_crypto::new_request_id()?.chars().take(12).collect(),
            next: AtomicU64::new(1),
        },
        config: Arc::new(config.clone()),
    }));
    Ok(router
        .route("/openapi.json", axum::routing::get(routes::system::openapi))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state))
}

/// Gives every request an id, bounds it by the request timeout, and renders every error as the
/// JSON envelope with that id.
///
/// Admin writes (every method but GET, HEAD and OPTIONS, on every route but verify) run on a
/// task of their own, which the timeout only stops waiting for: once a handler has begun,
/// neither a client that goes away nor the timeout can stop it between its store write and
/// what goes with it. Reads and verify, which change nothing, run inline. Doing both here
/// rather than in two more layers keeps the verify path short.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| state.request_ids.next());
    // Kept for the log line of a failed request only; the common success path copies nothing.
    let method = req.method().clone();
    let uri = req.uri().clone();
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let detach = !matches!(
        method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) && uri.path() != "/v1/verify";
    let timeout = state.config.request_timeout;
    let timed_out =
        || ApiError::new(ErrorCode::RequestTimeout, "the request timed out").into_response();
    let mut response = if detach {
        match tokio::time::timeout(timeout, tokio::spawn(next.run(req))).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "an admin request's task failed");
                ApiError::new(ErrorCode::Internal, "internal error").into_response()
            }
            Err(_) => timed_out(),
        }
    } else {
        tokio::time::timeout(timeout, next.run(req))
            .await
            .unwrap_or_else(|_| timed_out())
    };
    let status = response.status();
    let error = response.extensions_mut().remove::<ApiError>().or_else(|| {
        // Errors made below the handlers (router, extractor rejections, timeouts) come as
        // plain text or empty bodies; they get the same JSON envelope as every other error.
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let bare = (status.is_client_error() || status.is_server_error()) && !is_json;
        bare.then(|| {
            let code = ErrorCode::for_status(status);
            ApiError::new(code, status.canonical_reason().unwrap_or("error"))
        })
    });
    if let Some(error) = error {
        if status.is_server_error() {
            tracing::warn!(%request_id, %method, path = uri.path(), status = status.as_u16(), code = error.code.name(), "request failed");
        } else {
            tracing::debug!(%request_id, %method, path = uri.path(), status = status.as_u16(), code = error.code.name(), "request refused");
        }
        response = render_error(error, &request_id);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The id of the request being served.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn render_error(error: ApiError, request_id: &str) -> Response {
    let mut body = serde_json::json!({
        "error": {
            "code": error.code.name(),
            "message": error.message,
            "request_id": request_id,
        }
    });
    if let (Some(field), Some(obj)) = (
        error.field,
        body.get_mut("error").and_then(|e| e.as_object_mut()),
    ) {
        obj.insert("field".into(), field.into());
    }
    let mut response = (
        error.code.status(),
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.to_string()),
    )
        .into_response();
    if let Some(retry) = error.retry_after_s {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    }
    if error.code == ErrorCode::Unauthorized {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Serves until `shutdown` resolves, then drains in-flight requests, flushes batched usage and
/// seals the node.
///
/// Each connection is served by hyper with a header-read timeout, and at most
/// `max_connections` are served at once: a connection past the limit is closed on accept, so a
/// flood of idle or slow clients costs a bounded amount of memory and never starves the
/// accept loop.
pub async fn run(
    listener: TcpListener,
    node: Arc<Node>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let app = app(Arc::clone(&node), config.clone()).map_err(std::io::Error::other)?;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let connections = connections::Table::new(config.max_connections);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let refused = AtomicU64::new(0);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a moment
                    // rather than spin, then go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At the limit, the oldest connection with no request in flight makes way; only when
        // every connection is serving a request is the new one closed.
        let Some((slot, standing)) = connections.admit().await else {
            if refused.fetch_add(1, Ordering::Relaxed).is_power_of_two() {
                tracing::warn!(%peer, limit = config.max_connections, "connection limit reached with every connection serving; closing new connections");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = app.clone();
        let service = hyper::service::service_fn({
            let standing = Arc::clone(&standing);
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let serving = standing.serving();
                let response = router.clone().oneshot(req.map(Body::new));
                async move {
                    let response = response.await;
                    drop(serving);
                    response
                }
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            tokio::select! {
                outcome = connection => {
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                () = standing.evicted() => {
                    tracing::debug!(%peer, "connection closed to make way for a newer one at the connection limit");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the shutdown grace period; closing them");
    }
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod debug_tests {
    #![allow(clippy::unwrap_used)]

    use crate::routes::{secrets, sys};

    #[test]
    fn types_carrying_secrets_never_debug_print_them() {
        let share = "kws1-0a0b0c0d-01ffeeddccbbaa-12345678".to_owned();
        let value = "sk_live_value_that_must_not_print".to_owned();
        let printed = [
            format!(
                "{:?}",
                sys::UnsealRequest {
                    share: Some(share.clone()),
                    key: Some(value.clone()),
                    reset: false,
                }
            ),
            format!(
                "{:?}",
                sys::RekeyRequest {
                    shares: vec![share.clone()],
                    key: Some(value.clone()),
                    new_shares: 3,
                    new_threshold: 2,
                }
            ),
            format!(
                "{:?}",
                sys::RekeyView {
                    shares: vec![share.clone()],
                    threshold: 2,
                    key: value.clone(),
                }
            ),
            format!(
                "{:?}",
                secrets::WriteSecretRequest {
                    data: serde_json::json!({ "k": value })
                        .as_object()
                        .cloned()
                        .unwrap(),
                    cas: None,
                }
            ),
        ];
        for text in printed {
            assert!(text.contains("[redacted]"), "{text}");
            assert!(!text.contains(&share) && !text.contains(&value), "{text}");
        }
    }
}
