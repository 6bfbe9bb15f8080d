//! `/v1/leases`: dynamic short-lived keys, and the leases of keys and secret reads.
//!
//! (`POST /v1/leases/{id}/release`, in the verify module, ends a *concurrency* lease taken by a
//! verification; those are a different thing with their own ids.)

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::{KeyAccess, RoleName, ServiceName, Timestamp};
use keyward_service::Operation;
use keyward_service::VaultLease;
use keyward_service::{NewKey, NewKeyLease};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody, QueryParams};
use crate::routes::keys::{PermissionText, parse_environment, parse_permissions};

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseView {
    pub lease_id: String,
    /// `key` or `secret`.
    pub kind: String,
    /// `keys/<env>/<name>` or `secrets/<env>/<path>`: what revoke-prefix matches.
    pub path: String,
    pub environment: String,
    pub key_id: Option<String>,
    pub secret_version: Option<u64>,
    #[schema(value_type = String, format = DateTime)]
    pub issued_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    /// Renewals never extend the lease past this.
    #[schema(value_type = String, format = DateTime)]
    pub max_expires_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// `revoked` or `expired`.
    pub end_reason: Option<String>,
}

impl From<VaultLease> for LeaseView {
    fn from(l: VaultLease) -> Self {
        LeaseView {
            lease_id: l.id,
            kind: l.kind.as_str().to_owned(),
            path: l.path,
            environment: l.environment.to_string(),
            key_id: l.key_id.map(|id| id.to_string()),
            secret_version: l.secret_version,
            issued_at: l.issued_at,
            expires_at: l.expires_at,
            max_expires_at: l.max_expires_at,
            ended_at: l.ended_at,
            end_reason: l.end_reason,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLeaseRequest {
    #[schema(pattern = "^[a-z0-9]{1,8}$", example = "live")]
    pub environment: String,
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(min_length = 1, max_length = 200)]
    pub owner: String,
    pub purpose: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<PermissionText>)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[schema(value_type = Option<Object>)]
    #[serde(default, deserialize_with = "crate::extract::optional_object")]
    pub meta: Option<Map<String, Value>>,
    /// The lease, and the key with it, lasts this long (seconds, up to 30 days).
    #[schema(minimum = 1, maximum = 2592000)]
    pub ttl_s: u64,
    /// Renewals may extend the lease up to this long after issue (default: `ttl_s`).
    #[schema(minimum = 1, maximum = 2592000)]
    pub max_ttl_s: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyLeaseView {
    /// The API key, shown once. It stops verifying when the lease ends.
    pub key: String,
    pub lease: LeaseView,
}

#[utoipa::path(post, path = "/v1/leases/keys", tag = "leases", request_body = KeyLeaseRequest,
    responses((status = 201, body = KeyLeaseView), ErrorResponses), security(("bearer" = [])))]
pub async fn create_key_lease(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<KeyLeaseRequest>,
) -> Result<(StatusCode, Json<KeyLeaseView>), ApiError> {
    let actor = caller.authenticate(&state, Operation::LeaseCreate).await?;
    let roles = body
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            RoleName::parse(r).map_err(|e| ApiError::field(format!("roles[{i}]"), e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let new = NewKeyLease {
        key: NewKey {
            service: ServiceName::Default,
            environment: parse_environment(&body.environment)?,
            name: body.name,
            owner: body.owner,
            purpose: body.purpose,
            permissions: parse_permissions(&body.permissions)?,
            expires_at: None,
            ttl_s: None,
            meta: body.meta.unwrap_or_default(),
            access: KeyAccess {
                roles,
                ..KeyAccess::default()
            },
            quota_remaining: None,
            rotation: None,
            delivery: None,
        },
        ttl_s: body.ttl_s,
        max_ttl_s: body.max_ttl_s,
    };
    let issued = state
        .authority()?
        .leases()
        .create_key_lease(&actor, new)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyLeaseView {
            key: issued.key.expose().to_owned(),
            lease: issued.lease.into(),
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaseListParams {
    /// Only leases whose path starts with this, e.g. `keys/live/`.
    pub prefix: Option<String>,
    /// Include ended leases (default: only open ones).
    pub all: Option<bool>,
    /// The `next_cursor` of the previous page (a lease id).
    pub cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseList {
    pub leases: Vec<LeaseView>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/leases", tag = "leases", params(LeaseListParams),
    responses((status = 200, body = LeaseList), ErrorResponses), security(("bearer" = [])))]
pub async fn list_leases(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<LeaseListParams>,
) -> Result<Json<LeaseList>, ApiError> {
    let actor = caller.authenticate(&state, Operation::LeaseRead).await?;
    let limit = match params.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(_) => return Err(ApiError::field("limit", "must be between 1 and 1000")),
    };
    let prefix = params.prefix.unwrap_or_default();
    if prefix.len() > 512 {
        return Err(ApiError::field("prefix", "at most 512 characters"));
    }
    let leases = state
        .authority()?
        .leases()
        .list_leases(
            &actor,
            &prefix,
            !params.all.unwrap_or(false),
            params.cursor,
            limit,
        )
        .await?;
    let next_cursor = (leases.len() == limit as usize)
        .then(|| leases.last().map(|l| l.id.clone()))
        .flatten();
    Ok(Json(LeaseList {
        leases: leases.into_iter().map(LeaseView::from).collect(),
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "The lease id")),
    responses((status = 200, body = LeaseView), ErrorResponses), security(("bearer" = [])))]
pub async fn show_lease(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<LeaseView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::LeaseRead).await?;
    Ok(Json(
        state.authority()?.leases().lease(&actor, &id).await?.into(),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RenewRequest {
    /// Extend to this many seconds from now (default: the lease's original TTL), capped at
    /// the lease's maximum.
    #[schema(minimum = 1, maximum = 2592000)]
    pub increment_s: Option<u64>,
}

#[utoipa::path(post, path = "/v1/leases/{id}/renew", tag = "leases",
    params(("id" = String, Path, description = "The lease id")), request_body = RenewRequest,
    responses((status = 200, body = LeaseView), ErrorResponses), security(("bearer" = [])))]
pub async fn renew_lease(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RenewRequest>,
) -> Result<Json<LeaseView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::LeaseRenew).await?;
    Ok(Json(
        state
            .authority()?
            .leases()
            .renew_lease(&actor, &id, body.increment_s)
            .await?
            .into(),
    ))
}

#[utoipa::path(post, path = "/v1/leases/{id}/revoke", tag = "leases",
    params(("id" = String, Path, description = "The lease id")),
    responses((status = 200, body = LeaseView), ErrorResponses), security(("bearer" = [])))]
pub async fn revoke_lease(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<LeaseView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::LeaseRevoke).await?;
    Ok(Json(
        state
            .authority()?
            .leases()
            .revoke_lease(&actor, &id)
            .await?
            .into(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokePrefixRequest {
    /// Every open lease whose path starts with this ends, e.g. `keys/live/ci-`.
    #[schema(min_length = 1, max_length = 512)]
    pub prefix: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedCount {
    pub revoked: usize,
}

#[utoipa::path(post, path = "/v1/leases/revoke-prefix", tag = "leases",
    request_body = RevokePrefixRequest,
    responses((status = 200, body = RevokedCount), ErrorResponses), security(("bearer" = [])))]
pub async fn revoke_prefix(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<RevokePrefixRequest>,
) -> Result<Json<RevokedCount>, ApiError> {
    let actor = caller.authenticate(&state, Operation::LeaseRevoke).await?;
    let revoked = state
        .authority()?
        .leases()
        .revoke_lease_prefix(&actor, &body.prefix)
        .await?;
    Ok(Json(RevokedCount { revoked }))
}

crate::redacted_debug!(KeyLeaseView);
