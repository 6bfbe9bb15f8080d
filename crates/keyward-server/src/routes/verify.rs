//! `POST /v1/verify`: the hot path, called by the APIs that keyward protects.

use std::borrow::Cow;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use keyward_service::Operation;
use std::net::IpAddr;

use keyward_core::{EnvironmentName, KeyId, Permission, PermissionQuery, Timestamp, VerifyCode};
use keyward_crypto::PlaintextKey;
use keyward_service::VerifyRequest as Checks;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The API key presented to your API.
    #[serde(deserialize_with = "presented_key")]
    #[schema(value_type = String)]
    pub key: PlaintextKey,
    /// The environment your API expects the key to belong to; a key of another environment
    /// answers ENVIRONMENT_MISMATCH.
    #[schema(pattern = "^[a-z0-9]{1,8}$", example = "live")]
    pub environment: Option<String>,
    /// The permissions the request needs: `resource:action` combined with AND, OR, NOT and
    /// parentheses, e.g. `invoices:read AND (orders:read OR admin:*)`.
    #[schema(max_length = 1000, example = "invoices:read")]
    pub permissions: Option<String>,
    /// The request's method, checked with `path` against the key's path rules.
    #[schema(pattern = "^[A-Z]{1,16}$", example = "GET")]
    pub method: Option<String>,
    /// The request's path (a query string is ignored).
    #[schema(pattern = "^/", max_length = 2048, example = "/v1/invoices/42")]
    pub path: Option<String>,
    /// The client's address, checked against the key's and the environment's network rules.
    #[schema(example = "203.0.113.7")]
    pub ip: Option<String>,
    /// What the request costs against the key's rate limits (default 1; 0 only reads them).
    #[schema(minimum = 0, maximum = 1_000_000_000_u64)]
    pub cost: Option<u64>,
    /// Take a concurrency lease when the key has a concurrency limit; release it with
    /// `POST /v1/leases/{id}/release` when the request ends.
    #[serde(default)]
    pub lease: bool,
}

/// A concurrency lease: one of the key's requests in flight until released or `expires_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseView {
    pub id: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

/// Where the key stands against one rate limit after this request.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitState {
    pub name: String,
    pub limit: u64,
    /// The limit's period, in seconds.
    pub period_s: u64,
    pub remaining: u64,
    /// Seconds until the limit is back at its full allowance.
    pub reset_s: u64,
}

/// A key's metadata as the verdict shows it: lent from the cache, `{}` when it has none.
#[derive(Debug)]
pub struct Meta<'a>(Option<&'a Map<String, Value>>);

impl Serialize for Meta<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(map) => map.serialize(s),
            None => serde::ser::SerializeMap::end(s.serialize_map(Some(0))?),
        }
    }
}

fn presented_key<'de, D: Deserializer<'de>>(d: D) -> Result<PlaintextKey, D::Error> {
    String::deserialize(d).map(PlaintextKey::from_presented)
}

/// The verdict. `valid` is true exactly when `code` is `VALID`; details of the key are given
/// whenever the presented key matched one.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse<'a> {
    pub valid: bool,
    /// VALID, MALFORMED, NOT_FOUND, EXPIRED, REVOKED, DISABLED, ENVIRONMENT_MISMATCH, …
    #[schema(value_type = String, example = "VALID")]
    pub code: VerifyCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub key_id: Option<KeyId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub environment: Option<&'a EnvironmentName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub permissions: Option<Cow<'a, [Permission]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// With INSUFFICIENT_PERMISSIONS or IP_DENIED: what was missing or refused, e.g.
    /// `missing permission invoices:write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The key's rate limits that counted this request, after it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratelimits: Vec<RateLimitState>,
    /// With RATE_LIMITED: seconds until a request of the same cost would be admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
    /// The lease taken, when asked for with `lease: true` and the key has a concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseView>,
    /// For a key with a quota: the credits left after this request (USAGE_EXCEEDED when a
    /// request costs more than remain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_remaining: Option<u64>,
    /// Admitted, but a rate limit is past 80 % of its allowance (a `ratelimit.warning` event
    /// is sent once per window).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    /// With RATE_LIMITED for a key blocked after repeated violations: until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub blocked_until: Option<Timestamp>,
}

#[utoipa::path(
    post, path = "/v1/verify", tag = "verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict, for valid and invalid keys alike. With rate limits: RateLimit-Policy and RateLimit fields, and Retry-After when RATE_LIMITED", body = VerifyResponse),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<VerifyRequest>,
) -> Result<axum::response::Response, ApiError> {
    let started = Instant::now();
    // One session for the whole request: the hot path takes the node's lock once.
    let authority = state.authority()?;
    let actor = if state.config.insecure_unauthenticated_verify {
        None
    } else {
        Some(
            caller
                .authenticate_with(&authority, Operation::KeyVerify)
                .await?,
        )
    };
    let environment = body
        .environment
        .as_deref()
        .map(|e| {
            EnvironmentName::parse(e).map_err(|err| ApiError::field("environment", err.to_string()))
        })
        .transpose()?;
    let query = body
        .permissions
        .as_deref()
        .map(|q| {
            PermissionQuery::parse(q).map_err(|e| ApiError::field("permissions", e.to_string()))
        })
        .transpose()?;
    if body
        .method
        .as_ref()
        .is_some_and(|m| m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(ApiError::field(
            "method",
            "an HTTP method in capitals, e.g. GET",
        ));
    }
    if body
        .path
        .as_ref()
        .is_some_and(|p| !p.starts_with('/') || p.len() > 2048)
    {
        return Err(ApiError::field(
            "path",
            "a path starting with '/', at most 2048 characters",
        ));
    }
    if body.method.is_some() != body.path.is_some() {
        return Err(ApiError::field("method", "give method and path together"));
    }
    let ip = body
        .ip
        .as_deref()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| ApiError::field("ip", "not an IPv4 or IPv6 address"))
        })
        .transpose()?;
    let cost = body.cost.unwrap_or(1);
    if cost > keyward_core::ratelimit::MAX_LIMIT {
        return Err(ApiError::field("cost", "must be between 0 and 1000000000"));
    }
    let request = Checks {
        cost,
        lease: body.lease,
        environment: environment.as_ref(),
        permissions: query.as_ref(),
        method: body.method.as_deref(),
        path: body.path.as_deref(),
        ip,
        scope: actor.as_ref().and_then(keyward_service::Actor::scope),
    };
    let verdict = authority
        .verifier()
        .verify(body.key.expose(), &request)
        .await?;
    state.metrics.verified(verdict.code, started.elapsed());
    let key = verdict.key.as_deref();
    let response = VerifyResponse {
        valid: verdict.code == VerifyCode::Valid,
        code: verdict.code,
        key_id: key.map(|k| k.id),
        owner: key.map(|k| &*k.owner),
        environment: key.map(|k| k.environment()),
        permissions: key.map(|k| {
            authority
                .verifier()
                .effective_permissions(k, authority.now())
        }),
        meta: key.map(|k| Meta(k.meta.as_deref())),
        expires_at: key.and_then(|k| k.expires_at),
        detail: verdict.unmet,
        ratelimits: verdict
            .ratelimits
            .into_iter()
            .map(|r| RateLimitState {
                name: r.name.to_string(),
                limit: r.limit,
                period_s: r.period_s,
                remaining: r.remaining,
                reset_s: r.reset_s,
            })
            .collect(),
        retry_after_s: verdict.retry_after_s,
        lease: verdict.lease.map(|l| LeaseView {
            id: l.id,
            expires_at: l.expires_at,
        }),
        quota_remaining: verdict.quota_remaining,
        warning: verdict.warning,
        blocked_until: verdict.blocked_until,
    };
    Ok((ratelimit_headers(&response), Json(response)).into_response())
}

/// The IETF rate-limit fields (draft-ietf-httpapi-ratelimit-headers, structured-field syntax)
/// for the limits that counted the request, and `Retry-After` when it was refused.
fn ratelimit_headers(response: &VerifyResponse) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if response.ratelimits.is_empty() {
        return headers;
    }
    let policy = response
        .ratelimits
        .iter()
        .map(|r| format!("\"{}\";q={};w={}", r.name, r.limit, r.period_s))
        .collect::<Vec<_>>()
        .join(", ");
    let state = response
        .ratelimits
        .iter()
        .map(|r| format!("\"{}\";r={};t={}", r.name, r.remaining, r.reset_s))
        .collect::<Vec<_>>()
        .join(", ");
    // Limit names are [a-z0-9_.-], so both values are valid header text.
    if let (Ok(policy), Ok(state)) = (
        HeaderValue::from_str(&policy),
        HeaderValue::from_str(&state),
    ) {
        headers.insert("ratelimit-policy", policy);
        headers.insert("ratelimit", state);
    }
    if let Some(retry) = response.retry_after_s {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
    }
    headers
}

#[utoipa::path(
    post, path = "/v1/leases/{id}/release", tag = "verify",
    params(("id" = String, Path, description = "The lease id verify returned")),
    responses(
        (status = 204, description = "Released: the slot is free for another request"),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn release_lease(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    // A scoped admin key ends only leases of keys it could verify.
    let actor = if state.config.insecure_unauthenticated_verify {
        None
    } else {
        Some(caller.authenticate(&state, Operation::KeyVerify).await?)
    };
    if state
        .authority()?
        .verifier()
        .release_lease(&id, actor.as_ref())
        .await
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "lease (released already, lapsed, or never taken)",
        ))
    }
}
