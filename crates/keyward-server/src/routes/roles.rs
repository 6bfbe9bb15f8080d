//! `/v1/roles`: named, reusable permission sets. A role's change reaches every key holding it
//! before the call returns.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::{Permission, RoleName, RoleRecord, Timestamp};
use keyward_service::Operation;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody};
use crate::routes::keys::{PermissionText, RoleText, parse_permissions};
use crate::routes::rotation::RotationPolicyView;

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleView {
    #[schema(value_type = String)]
    pub name: RoleName,
    pub description: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub permissions: Vec<Permission>,
    /// A template made by `keyward init` (`read-only`, `full-access`); editable all the same.
    pub builtin: bool,
    /// How often keys holding the role are rotated (beats their environment's policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicyView>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<RoleRecord> for RoleView {
    fn from(r: RoleRecord) -> Self {
        RoleView {
            name: r.name,
            description: r.description,
            permissions: r.permissions,
            builtin: r.builtin,
            rotation: r.rotation.map(RotationPolicyView::from),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleList {
    pub roles: Vec<RoleView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleRequest {
    #[schema(value_type = RoleText)]
    pub name: String,
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[schema(value_type = Vec<PermissionText>, max_items = 256)]
    pub permissions: Vec<String>,
    /// How often keys holding the role are rotated.
    pub rotation: Option<RotationPolicyView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRoleRequest {
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[schema(value_type = Vec<PermissionText>, max_items = 256)]
    pub permissions: Vec<String>,
    /// How often keys holding the role are rotated.
    pub rotation: Option<RotationPolicyView>,
}

fn role_name(text: &str) -> Result<RoleName, ApiError> {
    RoleName::parse(text).map_err(|_| ApiError::not_found("role"))
}

#[utoipa::path(get, path = "/v1/roles", tag = "roles",
    responses((status = 200, body = RoleList), ErrorResponses), security(("bearer" = [])))]
pub async fn list_roles(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RoleList>, ApiError> {
    caller.authenticate(&state, Operation::RoleRead).await?;
    Ok(Json(RoleList {
        roles: state
            .authority()?
            .access()
            .roles()
            .into_iter()
            .map(RoleView::from)
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/roles", tag = "roles", request_body = CreateRoleRequest,
    responses((status = 201, body = RoleView), ErrorResponses), security(("bearer" = [])))]
pub async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateRoleRequest>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    let actor = caller.authenticate(&state, Operation::RoleWrite).await?;
    let name = RoleName::parse(&body.name).map_err(|e| ApiError::field("name", e.to_string()))?;
    let permissions = parse_permissions(&body.permissions)?;
    let role = state
        .authority()?
        .access()
        .put_role(
            &actor,
            name,
            body.description,
            permissions,
            body.rotation.map(RotationPolicyView::policy),
            false,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(role.into())))
}

#[utoipa::path(get, path = "/v1/roles/{name}", tag = "roles", params(("name" = String, Path)),
    responses((status = 200, body = RoleView), ErrorResponses), security(("bearer" = [])))]
pub async fn show_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<RoleView>, ApiError> {
    caller.authenticate(&state, Operation::RoleRead).await?;
    Ok(Json(
        state.authority()?.access().role(&role_name(&name)?)?.into(),
    ))
}

#[utoipa::path(put, path = "/v1/roles/{name}", tag = "roles", params(("name" = String, Path)),
    request_body = ReplaceRoleRequest,
    responses((status = 200, description = "Replaced; every key holding the role sees it at once", body = RoleView), ErrorResponses),
    security(("bearer" = [])))]
pub async fn replace_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ReplaceRoleRequest>,
) -> Result<Json<RoleView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::RoleWrite).await?;
    let name = role_name(&name)?;
    let permissions = parse_permissions(&body.permissions)?;
    Ok(Json(
        state
            .authority()?
            .access()
            .put_role(
                &actor,
                name,
                body.description,
                permissions,
                body.rotation.map(RotationPolicyView::policy),
                true,
            )
            .await?
            .into(),
    ))
}

#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "roles", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses), security(("bearer" = [])))]
pub async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = caller.authenticate(&state, Operation::RoleWrite).await?;
    state
        .authority()?
        .access()
        .delete_role(&actor, &role_name(&name)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
