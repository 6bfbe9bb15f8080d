//! `/v1/keys`: create, read, list, update, revoke and roll keys.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::permission::admin;
use keyward_core::{
    EnvironmentName, KeyId, KeyRecord, KeyStatus, Permission, ServiceName, Timestamp,
};
use keyward_service::KeyQuery;
use keyward_service::{KeyUpdate, NewKey};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Bearer, JsonBody, QueryParams};

/// A key as the API shows it: never the secret, never the hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    #[schema(value_type = String, format = Uuid)]
    pub id: KeyId,
    /// `default` for API keys, `keyward` for admin keys.
    #[schema(value_type = String)]
    pub service: ServiceName,
    #[schema(value_type = String, example = "live")]
    pub environment: EnvironmentName,
    /// Prefix, environment and the first four secret characters, to recognise the key by.
    #[schema(example = "kw_live_3xQ9")]
    pub start: String,
    pub name: String,
    pub owner: String,
    pub purpose: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub permissions: Vec<Permission>,
    #[schema(value_type = Object)]
    pub meta: Map<String, Value>,
    /// `active`, `disabled` or `revoked`.
    #[schema(value_type = String, example = "active")]
    pub status: KeyStatus,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
    pub revocation_reason: Option<String>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub rolled_from: Option<KeyId>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub rolled_to: Option<KeyId>,
    /// Written in batches: may trail the last verification by about a second.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// Successful verifications, counted in batches like `last_used_at`.
    pub uses: u64,
}

impl From<KeyRecord> for KeyView {
    fn from(k: KeyRecord) -> Self {
        KeyView {
            id: k.id,
            service: k.service,
            environment: k.environment,
            start: k.start,
            name: k.name,
            owner: k.owner,
            purpose: k.purpose,
            permissions: k.permissions,
            meta: k.meta,
            status: k.status,
            created_at: k.created_at,
            updated_at: k.updated_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            revocation_reason: k.revocation_reason,
            rolled_from: k.rolled_from,
            rolled_to: k.rolled_to,
            last_used_at: k.last_used_at,
            uses: k.uses,
        }
    }
}

/// A newly issued key, with its plaintext: shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The API key. Store it now: keyward keeps only its HMAC.
    #[schema(example = "kw_live_3xQ9…")]
    pub key: String,
    #[serde(flatten)]
    pub record: KeyView,
}

/// A permission: `*`, `resource:*` or `resource:action`.
#[derive(Debug, ToSchema)]
#[schema(
    pattern = "^(\\*|[a-z0-9_.-]{1,64}:(\\*|[a-z0-9_.-]{1,64}))$",
    example = "invoices:read"
)]
pub struct PermissionText(pub String);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The environment the key belongs to, e.g. `live` or `test`. Never changes.
    #[schema(pattern = "^[a-z0-9]{1,8}$", example = "live")]
    pub environment: String,
    /// Printable text with at least one non-space character.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Who is responsible for the key: a team, a person or a service account.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub owner: String,
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub purpose: Option<String>,
    /// `resource:action` strings; `*` and `resource:*` are wildcards.
    #[serde(default)]
    #[schema(value_type = Vec<PermissionText>, max_items = 256)]
    pub permissions: Vec<String>,
    /// RFC 3339 expiry, in the future; exclusive with `ttl_s`.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Seconds until expiry; exclusive with `expires_at`.
    #[schema(minimum = 1, maximum = 3_153_600_000_u64)]
    pub ttl_s: Option<u64>,
    /// Any JSON object up to 8 KiB; returned by verify.
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Map<String, Value>>,
    /// `default` (API keys, the default) or `keyward` (admin keys, in the `admin` environment).
    #[schema(pattern = "^(default|keyward)$")]
    pub service: Option<String>,
}

fn parse_environment(text: &str) -> Result<EnvironmentName, ApiError> {
    EnvironmentName::parse(text).map_err(|e| ApiError::field("environment", e.to_string()))
}

fn parse_permissions(list: &[String]) -> Result<Vec<Permission>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            Permission::parse(p)
                .map_err(|e| ApiError::field(format!("permissions[{i}]"), e.to_string()))
        })
        .collect()
}

fn parse_time(field: &str, text: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse_rfc3339(text).map_err(|e| ApiError::field(field, e.to_string()))
}

fn parse_id(text: &str) -> Result<KeyId, ApiError> {
    text.parse().map_err(|_| ApiError::not_found("key"))
}

#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, shown once", body = CreatedKey),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    Bearer(bearer): Bearer,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let actor = state
        .authority
        .authenticate(bearer.as_deref(), admin::KEYS_CREATE)
        .await?;
    let service = match body.service.as_deref() {
        None => ServiceName::Default,
        Some(text) => ServiceName::parse(text)
            .ok_or_else(|| ApiError::field("service", "must be 'default' or 'keyward'"))?,
    };
    let new = NewKey {
        service,
        environment: parse_environment(&body.environment)?,
        name: body.name,
        owner: body.owner,
        purpose: body.purpose,
        permissions: parse_permissions(&body.permissions)?,
        expires_at: body
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t))
            .transpose()?,
        ttl_s: body.ttl_s,
        meta: body.meta.unwrap_or_default(),
    };
    let (record, key) = state.authority.create_key(&actor, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: key.expose().to_owned(),
            record: record.into(),
        }),
    ))
}

#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, body = KeyView),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn show_key(
    State(state): State<AppState>,
    Bearer(bearer): Bearer,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    state
        .authority
        .authenticate(bearer.as_deref(), admin::KEYS_READ)
        .await?;
    let id = parse_id(&id)?;
    Ok(Json(state.authority.key(id).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys of this environment.
    #[param(pattern = "^[a-z0-9]{1,8}$")]
    pub environment: Option<String>,
    /// `active`, `disabled` or `revoked`.
    #[param(pattern = "^(active|disabled|revoked)$")]
    pub status: Option<String>,
    pub owner: Option<String>,
    /// `default` or `keyward`.
    #[param(pattern = "^(default|keyward)$")]
    pub service: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    params(ListParams),
    responses((status = 200, body = KeyList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Bearer(bearer): Bearer,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<KeyList>, ApiError> {
    state
        .authority
        .authenticate(bearer.as_deref(), admin::KEYS_READ)
        .await?;
    let query = KeyQuery {
        service: params
            .service
            .as_deref()
            .map(|s| {
                ServiceName::parse(s)
                    .ok_or_else(|| ApiError::field("service", "must be 'default' or 'keyward'"))
            })
            .transpose()?,
        environment: params
            .environment
            .as_deref()
            .map(parse_environment)
            .transpose()?,
        status: params
            .status
            .as_deref()
            .map(|s| {
                KeyStatus::parse(s)
                    .ok_or_else(|| ApiError::field("status", "must be active, disabled or revoked"))
            })
            .transpose()?,
        owner: params.owner,
        after: params
            .cursor
            .as_deref()
            .map(|c| {
                c.parse()
                    .map_err(|_| ApiError::field("cursor", "not a cursor from a previous page"))
            })
            .transpose()?,
        limit: match params.limit {
            Some(0) => return Err(ApiError::field("limit", "must be between 1 and 1000")),
            Some(n) if n > 1000 => {
                return Err(ApiError::field("limit", "must be between 1 and 1000"));
            }
            Some(n) => n,
            None => 0,
        },
    };
    let page = state.authority.list_keys(query).await?;
    Ok(Json(KeyList {
        keys: page.keys.into_iter().map(KeyView::from).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// Distinguishes a field set to `null` (clear it) from a field left out (keep it).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub owner: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 1000, pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$")]
    pub purpose: Option<Option<String>>,
    /// Replaces the key's permissions.
    #[schema(value_type = Option<Vec<PermissionText>>, max_items = 256)]
    pub permissions: Option<Vec<String>>,
    /// Replaces the key's metadata.
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Map<String, Value>>,
    /// RFC 3339, in the future; `null` removes the expiry.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// `false` disables the key (verify answers DISABLED); `true` enables it again.
    pub enabled: Option<bool>,
}

#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, body = KeyView),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn update_key(
    State(state): State<AppState>,
    Bearer(bearer): Bearer,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let actor = state
        .authority
        .authenticate(bearer.as_deref(), admin::KEYS_UPDATE)
        .await?;
    let id = parse_id(&id)?;
    let update = KeyUpdate {
        name: body.name,
        owner: body.owner,
        purpose: body.purpose,
        permissions: body
            .permissions
            .as_deref()
            .map(parse_permissions)
            .transpose()?,
        meta: body.meta,
        expires_at: body
            .expires_at
            .map(|at| {
                at.as_deref()
                    .map(|t| parse_time("expires_at", t))
                    .transpose()
            })
            .transpose()?,
        enabled: body.enabled,
    };
    Ok(Json(
        state.authority.update_key(&actor, id, update).await?.into(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why the key is revoked; kept in the key and the audit log.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: String,
}

#[utoipa::path(
    post, path = "/v1/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "Revoked: every later verify answers REVOKED", body = KeyView),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Bearer(bearer): Bearer,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RevokeRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let actor = state
        .authority
        .authenticate(bearer.as_deref(), admin::KEYS_REVOKE)
        .await?;
    let id = parse_id(&id)?;
    Ok(Json(
        state
            .authority
            .revoke_key(&actor, id, body.reason)
            .await?
            .into(),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollRequest {
    /// How long the old key keeps working, in seconds (0-31536000).
    #[schema(maximum = 31_536_000)]
    pub grace_period_s: u64,
}

/// The successor of a rolled key (shown once) and when the old one stops working.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolledKey {
    #[serde(flatten)]
    pub successor: CreatedKey,
    /// The old key as updated: `expires_at` is the end of its grace period.
    pub previous: KeyView,
}

#[utoipa::path(
    post, path = "/v1/keys/{id}/roll", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = RollRequest,
    responses(
        (status = 201, description = "The successor, shown once", body = RolledKey),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn roll_key(
    State(state): State<AppState>,
    Bearer(bearer): Bearer,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RollRequest>,
) -> Result<(StatusCode, Json<RolledKey>), ApiError> {
    let actor = state
        .authority
        .authenticate(bearer.as_deref(), admin::KEYS_ROLL)
        .await?;
    let id = parse_id(&id)?;
    let (old, new, key) = state
        .authority
        .roll_key(&actor, id, body.grace_period_s)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RolledKey {
            successor: CreatedKey {
                key: key.expose().to_owned(),
                record: new.into(),
            },
            previous: old.into(),
        }),
    ))
}
