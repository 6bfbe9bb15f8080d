//! Versioned secrets per environment.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/secrets/{env}?prefix=` | list paths |
//! | `GET /v1/secrets/{env}/{path}[?version=N&lease_ttl_s=S]` | read the latest (or a) version |
//! | `PUT /v1/secrets/{env}/{path}` `{data, cas?}` | write a new version |
//! | `DELETE /v1/secrets/{env}/{path}[?versions=1,2]` | soft-delete versions (default latest) |
//! | `POST /v1/secret-undelete/{env}/{path}` `{versions}` | undo soft deletes |
//! | `POST /v1/secret-destroy/{env}/{path}` `{versions?}` | destroy values for good |
//! | `GET/PATCH/DELETE /v1/secret-metadata/{env}/{path}` | metadata; DELETE removes everything |
//!
//! `{path}` may hold slashes (`payments/stripe`). Permissions are scoped by path:
//! `secrets:read:payments/*`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::Timestamp;
use keyward_service::Operation;
use keyward_service::{SecretMeta, SecretVersion};
use keyward_service::{SecretMetaUpdate, SecretWrite, VersionChange, check_secret_path};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody, QueryParams};
use crate::routes::keys::parse_environment;
use crate::routes::leases::LeaseView;

/// Authenticates the caller for `action` on `path`. Authentication comes first, so a caller
/// without a valid key gets 401 whatever it sent; a bad path is then a 400.
async fn admit(
    state: &AppState,
    caller: &Caller,
    op: Operation,
    path: &str,
) -> Result<keyward_service::Actor, ApiError> {
    if let Err(e) = check_secret_path(path) {
        caller.authenticate(state, op).await?;
        return Err(e.into());
    }
    caller.authenticate_for(state, op, path).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretMetaView {
    #[schema(value_type = String)]
    pub environment: String,
    pub path: String,
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub max_versions: u32,
    pub cas_required: bool,
    #[schema(value_type = Object)]
    pub custom: Map<String, Value>,
    /// The newest version written.
    pub current_version: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<SecretMeta> for SecretMetaView {
    fn from(m: SecretMeta) -> Self {
        SecretMetaView {
            environment: m.environment.to_string(),
            path: m.path,
            owner: m.owner,
            purpose: m.purpose,
            max_versions: m.max_versions,
            cas_required: m.cas_required,
            custom: m.custom,
            current_version: m.current_version,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SecretView {
    /// The value: a JSON object.
    #[schema(value_type = Object)]
    pub data: Map<String, Value>,
    pub version: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub metadata: SecretMetaView,
    /// With `lease_ttl_s`: the lease this read was recorded as.
    pub lease: Option<LeaseView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// A version to read instead of the latest.
    #[param(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    pub version: Option<u64>,
    /// Record this read as a lease lasting this long (seconds, up to a day).
    #[param(minimum = 1, maximum = 86400)]
    pub lease_ttl_s: Option<u64>,
}

#[utoipa::path(get, path = "/v1/secrets/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'"), ReadParams),
    responses((status = 200, body = SecretView), ErrorResponses), security(("bearer" = [])))]
pub async fn read_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
    QueryParams(params): QueryParams<ReadParams>,
) -> Result<Json<SecretView>, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretRead, &path).await?;
    let env = parse_environment(&environment)?;
    let read = state
        .authority()?
        .secrets()
        .read_secret(&actor, &env, &path, params.version, params.lease_ttl_s)
        .await?;
    Ok(Json(SecretView {
        data: read.data,
        version: read.version,
        created_at: read.created_at,
        metadata: read.meta.into(),
        lease: read.lease.map(LeaseView::from),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteSecretRequest {
    /// The value: a JSON object (at most 48 KiB as JSON).
    #[schema(value_type = Object)]
    #[serde(deserialize_with = "crate::extract::object")]
    pub data: Map<String, Value>,
    /// Check-and-set: the version this write replaces (0: the secret must not exist yet).
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    pub cas: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenView {
    pub version: u64,
    pub metadata: SecretMetaView,
}

#[utoipa::path(put, path = "/v1/secrets/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'")),
    request_body = WriteSecretRequest,
    responses((status = 200, body = WrittenView), ErrorResponses), security(("bearer" = [])))]
pub async fn write_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
    JsonBody(body): JsonBody<WriteSecretRequest>,
) -> Result<Json<WrittenView>, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretWrite, &path).await?;
    let env = parse_environment(&environment)?;
    let (meta, version) = state
        .authority()?
        .secrets()
        .write_secret(
            &actor,
            &env,
            &path,
            SecretWrite {
                data: body.data,
                cas: body.cas,
            },
        )
        .await?;
    Ok(Json(WrittenView {
        version,
        metadata: meta.into(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Comma-separated versions to soft-delete (default: the latest).
    pub versions: Option<String>,
}

fn parse_versions(text: &str) -> Result<Vec<u64>, ApiError> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=i64::MAX as u64).contains(n))
                .ok_or_else(|| ApiError::field("versions", "comma-separated version numbers"))
        })
        .collect()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChangedView {
    /// The versions whose state changed.
    pub versions: Vec<u64>,
}

#[utoipa::path(delete, path = "/v1/secrets/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'"), DeleteParams),
    responses((status = 200, body = ChangedView), ErrorResponses), security(("bearer" = [])))]
pub async fn delete_secret_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
    QueryParams(params): QueryParams<DeleteParams>,
) -> Result<Json<ChangedView>, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretDelete, &path).await?;
    let versions = params.versions.as_deref().map(parse_versions).transpose()?;
    change_versions(
        state,
        actor,
        environment,
        path,
        versions,
        VersionChange::Delete,
    )
    .await
}

async fn change_versions(
    state: AppState,
    actor: keyward_service::Actor,
    environment: String,
    path: String,
    versions: Option<Vec<u64>>,
    change: VersionChange,
) -> Result<Json<ChangedView>, ApiError> {
    let env = parse_environment(&environment)?;
    let versions = state
        .authority()?
        .secrets()
        .change_secret_versions(&actor, &env, &path, versions, change)
        .await?;
    Ok(Json(ChangedView { versions }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VersionsRequest {
    /// Versions to change (default: the latest).
    pub versions: Option<Vec<u64>>,
}

#[utoipa::path(post, path = "/v1/secret-undelete/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'")),
    request_body = VersionsRequest,
    responses((status = 200, body = ChangedView), ErrorResponses), security(("bearer" = [])))]
pub async fn undelete(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
    JsonBody(body): JsonBody<VersionsRequest>,
) -> Result<Json<ChangedView>, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretDelete, &path).await?;
    change_versions(
        state,
        actor,
        environment,
        path,
        body.versions,
        VersionChange::Undelete,
    )
    .await
}

#[utoipa::path(post, path = "/v1/secret-destroy/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'")),
    request_body = VersionsRequest,
    responses((status = 200, body = ChangedView), ErrorResponses), security(("bearer" = [])))]
pub async fn destroy(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
    JsonBody(body): JsonBody<VersionsRequest>,
) -> Result<Json<ChangedView>, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretDestroy, &path).await?;
    change_versions(
        state,
        actor,
        environment,
        path,
        body.versions,
        VersionChange::Destroy,
    )
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    pub version: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<Timestamp>,
    pub destroyed: bool,
}

impl From<SecretVersion> for VersionView {
    fn from(v: SecretVersion) -> Self {
        VersionView {
            version: v.version,
            created_at: v.created_at,
            deleted_at: v.deleted_at,
            destroyed: v.destroyed,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetadataView {
    pub metadata: SecretMetaView,
    pub versions: Vec<VersionView>,
}

#[utoipa::path(get, path = "/v1/secret-metadata/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'")),
    responses((status = 200, body = MetadataView), ErrorResponses), security(("bearer" = [])))]
pub async fn read_metadata(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
) -> Result<Json<MetadataView>, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretRead, &path).await?;
    let env = parse_environment(&environment)?;
    let (meta, versions) = state
        .authority()?
        .secrets()
        .secret_metadata(&actor, &env, &path)
        .await?;
    Ok(Json(MetadataView {
        metadata: meta.into(),
        versions: versions.into_iter().map(VersionView::from).collect(),
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataRequest {
    pub owner: Option<String>,
    pub purpose: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_versions: Option<u32>,
    pub cas_required: Option<bool>,
    /// String values only; never put a secret here.
    #[schema(value_type = Option<Object>)]
    #[serde(deserialize_with = "crate::extract::optional_object")]
    pub custom: Option<Map<String, Value>>,
}

#[utoipa::path(patch, path = "/v1/secret-metadata/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'")),
    request_body = MetadataRequest,
    responses((status = 200, body = SecretMetaView), ErrorResponses), security(("bearer" = [])))]
pub async fn update_metadata(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
    JsonBody(body): JsonBody<MetadataRequest>,
) -> Result<Json<SecretMetaView>, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretWrite, &path).await?;
    let env = parse_environment(&environment)?;
    let meta = state
        .authority()?
        .secrets()
        .update_secret_metadata(
            &actor,
            &env,
            &path,
            SecretMetaUpdate {
                owner: body.owner,
                purpose: body.purpose,
                max_versions: body.max_versions,
                cas_required: body.cas_required,
                custom: body.custom,
            },
        )
        .await?;
    Ok(Json(meta.into()))
}

#[utoipa::path(delete, path = "/v1/secret-metadata/{environment}/{path}", tag = "secrets",
    params(("environment" = String, Path), ("path" = String, Path, description = "may contain '/'")),
    responses((status = 204, description = "The secret and every version are gone"), ErrorResponses),
    security(("bearer" = [])))]
pub async fn delete_metadata(
    State(state): State<AppState>,
    caller: Caller,
    Path((environment, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let actor = admit(&state, &caller, Operation::SecretDestroy, &path).await?;
    let env = parse_environment(&environment)?;
    state
        .authority()?
        .secrets()
        .delete_secret(&actor, &env, &path)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only paths starting with this.
    pub prefix: Option<String>,
    /// The `next_cursor` of the previous page (a path).
    pub cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretMetaView>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/secrets/{environment}", tag = "secrets",
    params(("environment" = String, Path), ListParams),
    responses((status = 200, body = SecretList), ErrorResponses), security(("bearer" = [])))]
pub async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
    Path(environment): Path<String>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<SecretList>, ApiError> {
    let prefix = params.prefix.unwrap_or_default();
    // `secrets:list` covers any prefix; `secrets:list:payments/*` covers `prefix=payments/`.
    let actor = caller
        .authenticate_for(&state, Operation::SecretList, &format!("{prefix}*"))
        .await?;
    let env = parse_environment(&environment)?;
    if prefix.len() > 256 {
        return Err(ApiError::field("prefix", "at most 256 characters"));
    }
    let limit = match params.limit {
        None => 100,
        Some(n @ 1..=1000) => n,
        Some(_) => return Err(ApiError::field("limit", "must be between 1 and 1000")),
    };
    let secrets = state
        .authority()?
        .secrets()
        .list_secrets(&actor, &env, &prefix, params.cursor, limit)
        .await?;
    let next_cursor = (secrets.len() == limit as usize)
        .then(|| secrets.last().map(|m| m.path.clone()))
        .flatten();
    Ok(Json(SecretList {
        secrets: secrets.into_iter().map(SecretMetaView::from).collect(),
        next_cursor,
    }))
}

crate::redacted_debug!(SecretView, WriteSecretRequest);
