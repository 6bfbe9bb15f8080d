//! `/v1/environments`: environments, each with its own key prefix segment, HMAC secret and
//! policy.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::{EnvironmentName, EnvironmentPolicy, Timestamp};
use keyward_service::EnvironmentRecord;
use keyward_service::Operation;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody};
use crate::routes::keys::{parse_environment, parse_permissions_in};
use crate::routes::rotation::RotationPolicyView;

/// An environment's policy as the API reads and writes it. Every field is optional.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyView {
    /// Keys live at most this many seconds.
    #[schema(minimum = 1)]
    pub max_ttl_s: Option<u64>,
    /// Every key needs an expiry.
    pub require_expiry: bool,
    /// Every key needs its own IP allowlist.
    pub require_ip_allowlist: bool,
    /// If set, keys may only hold permissions within these.
    pub permission_ceiling: Option<Vec<String>>,
    /// Permissions no key of the environment may hold or use, e.g. `admin:*`.
    pub forbidden_permissions: Vec<String>,
    /// New keys need approval (read by the approval workflow).
    pub require_approval: bool,
    /// CIDR blocks every key of the environment must come from (empty: anywhere).
    pub allowed_cidrs: Vec<String>,
    /// CIDR blocks no key of the environment may come from.
    pub denied_cidrs: Vec<String>,
    /// How often the environment's keys are rotated, unless a role or the key says otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicyView>,
}

impl PolicyView {
    fn parse(self) -> Result<EnvironmentPolicy, ApiError> {
        Ok(EnvironmentPolicy {
            max_ttl_s: self.max_ttl_s,
            require_expiry: self.require_expiry,
            require_ip_allowlist: self.require_ip_allowlist,
            permission_ceiling: self
                .permission_ceiling
                .as_deref()
                .map(|l| parse_permissions_in("policy.permission_ceiling", l))
                .transpose()?,
            forbidden_permissions: parse_permissions_in(
                "policy.forbidden_permissions",
                &self.forbidden_permissions,
            )?,
            require_approval: self.require_approval,
            allowed_cidrs: self.allowed_cidrs,
            denied_cidrs: self.denied_cidrs,
            rotation: self.rotation.map(RotationPolicyView::policy),
        })
    }

    fn from_policy(p: EnvironmentPolicy) -> Self {
        let names = |list: &[keyward_core::Permission]| {
            list.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        };
        PolicyView {
            max_ttl_s: p.max_ttl_s,
            require_expiry: p.require_expiry,
            require_ip_allowlist: p.require_ip_allowlist,
            permission_ceiling: p.permission_ceiling.as_deref().map(names),
            forbidden_permissions: names(&p.forbidden_permissions),
            require_approval: p.require_approval,
            allowed_cidrs: p.allowed_cidrs,
            denied_cidrs: p.denied_cidrs,
            rotation: p.rotation.map(RotationPolicyView::from),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentView {
    /// Also the key segment: keys of `staging` start with `kw_staging_`.
    #[schema(value_type = String)]
    pub name: EnvironmentName,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub policy: PolicyView,
}

impl From<EnvironmentRecord> for EnvironmentView {
    fn from(e: EnvironmentRecord) -> Self {
        EnvironmentView {
            name: e.name,
            created_at: e.created_at,
            policy: PolicyView::from_policy(e.policy),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentList {
    pub environments: Vec<EnvironmentView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironmentRequest {
    /// 1-8 characters of `[a-z0-9]`; the key segment.
    #[schema(pattern = "^[a-z0-9]{1,8}$", example = "staging")]
    pub name: String,
    #[serde(default, deserialize_with = "crate::extract::object")]
    pub policy: PolicyView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironmentRequest {
    /// Replaces the whole policy.
    #[serde(deserialize_with = "crate::extract::object")]
    pub policy: PolicyView,
}

#[utoipa::path(get, path = "/v1/environments", tag = "environments",
    responses((status = 200, body = EnvironmentList), ErrorResponses), security(("bearer" = [])))]
pub async fn list_environments(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<EnvironmentList>, ApiError> {
    caller
        .authenticate(&state, Operation::EnvironmentRead)
        .await?;
    Ok(Json(EnvironmentList {
        environments: state
            .authority()?
            .access()
            .environments()
            .into_iter()
            .map(EnvironmentView::from)
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/environments", tag = "environments", request_body = CreateEnvironmentRequest,
    responses((status = 201, description = "Created, with its own HMAC secret", body = EnvironmentView), ErrorResponses),
    security(("bearer" = [])))]
pub async fn create_environment(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateEnvironmentRequest>,
) -> Result<(StatusCode, Json<EnvironmentView>), ApiError> {
    let actor = caller
        .authenticate(&state, Operation::EnvironmentWrite)
        .await?;
    let name = parse_environment(&body.name).map_err(|e| ApiError {
        field: Some("name".into()),
        ..e
    })?;
    let policy = body.policy.parse()?;
    let record = state
        .authority()?
        .access()
        .create_environment(&actor, name, policy)
        .await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(get, path = "/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path)), responses((status = 200, body = EnvironmentView), ErrorResponses),
    security(("bearer" = [])))]
pub async fn show_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EnvironmentView>, ApiError> {
    caller
        .authenticate(&state, Operation::EnvironmentRead)
        .await?;
    Ok(Json(
        state
            .authority()?
            .access()
            .environment_record(&name)?
            .into(),
    ))
}

#[utoipa::path(patch, path = "/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path)), request_body = UpdateEnvironmentRequest,
    responses((status = 200, body = EnvironmentView), ErrorResponses), security(("bearer" = [])))]
pub async fn update_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdateEnvironmentRequest>,
) -> Result<Json<EnvironmentView>, ApiError> {
    let actor = caller
        .authenticate(&state, Operation::EnvironmentWrite)
        .await?;
    let name = EnvironmentName::parse(&name).map_err(|_| ApiError::not_found("environment"))?;
    let policy = body.policy.parse()?;
    Ok(Json(
        state
            .authority()?
            .access()
            .update_environment(&actor, &name, policy)
            .await?
            .into(),
    ))
}
