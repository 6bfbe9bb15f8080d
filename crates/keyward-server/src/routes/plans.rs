//! `/v1/plans`: tiers, named sets of rate limits. A plan's change reaches every key on it
//! before the call returns.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::{PlanName, PlanRecord, Timestamp};
use keyward_service::Operation;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody};
use crate::routes::keys::{RateLimitView, RoleText, parse_plan, parse_ratelimits};
use keyward_service::PlanSpec;

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    #[schema(value_type = String)]
    pub name: PlanName,
    pub description: Option<String>,
    pub ratelimits: Vec<RateLimitView>,
    /// The graduated response: `{warning_percent, block: {violations, within_s, block_s,
    /// disable_after_blocks?}}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub graduated: Option<keyward_core::Graduated>,
    /// Credits for each key on the plan without a quota of its own: `{amount, interval}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub quota: Option<keyward_core::QuotaRefill>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<PlanRecord> for PlanView {
    fn from(p: PlanRecord) -> Self {
        PlanView {
            name: p.name,
            description: p.description,
            ratelimits: p.ratelimits.into_iter().map(RateLimitView::from).collect(),
            graduated: p.graduated,
            quota: p.quota,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    pub plans: Vec<PlanView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlanRequest {
    #[schema(value_type = RoleText)]
    pub name: String,
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[schema(max_items = 16)]
    pub ratelimits: Vec<RateLimitView>,
    /// Warn past `warning_percent` (default 80) of a limit; block a key refused `violations`
    /// times within `within_s` for `block_s`; disable it after `disable_after_blocks` blocks.
    #[serde(default, deserialize_with = "crate::extract::optional_object")]
    #[schema(value_type = Option<Object>)]
    pub graduated: Option<keyward_core::Graduated>,
    /// Credits for each key on the plan without a quota of its own, reset to `amount` each
    /// `interval` (`daily` or `monthly`).
    #[serde(default, deserialize_with = "crate::extract::optional_object")]
    #[schema(value_type = Option<Object>)]
    pub quota: Option<keyward_core::QuotaRefill>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplacePlanRequest {
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[schema(max_items = 16)]
    pub ratelimits: Vec<RateLimitView>,
    /// Warn past `warning_percent` (default 80) of a limit; block a key refused `violations`
    /// times within `within_s` for `block_s`; disable it after `disable_after_blocks` blocks.
    #[serde(default, deserialize_with = "crate::extract::optional_object")]
    #[schema(value_type = Option<Object>)]
    pub graduated: Option<keyward_core::Graduated>,
    /// Credits for each key on the plan without a quota of its own, reset to `amount` each
    /// `interval` (`daily` or `monthly`).
    #[serde(default, deserialize_with = "crate::extract::optional_object")]
    #[schema(value_type = Option<Object>)]
    pub quota: Option<keyward_core::QuotaRefill>,
}

fn plan_name(text: &str) -> Result<PlanName, ApiError> {
    PlanName::parse(text).map_err(|_| ApiError::not_found("plan"))
}

#[utoipa::path(get, path = "/v1/plans", tag = "plans",
    responses((status = 200, body = PlanList), ErrorResponses), security(("bearer" = [])))]
pub async fn list_plans(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PlanList>, ApiError> {
    caller.authenticate(&state, Operation::PlanRead).await?;
    Ok(Json(PlanList {
        plans: state
            .authority()?
            .access()
            .plans()
            .into_iter()
            .map(PlanView::from)
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/plans", tag = "plans", request_body = CreatePlanRequest,
    responses((status = 201, body = PlanView), ErrorResponses), security(("bearer" = [])))]
pub async fn create_plan(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreatePlanRequest>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let actor = caller.authenticate(&state, Operation::PlanWrite).await?;
    let name = parse_plan(&body.name).map_err(|e| ApiError {
        field: Some("name".into()),
        ..e
    })?;
    let limits = parse_ratelimits(&body.ratelimits)?;
    let plan = state
        .authority()?
        .access()
        .put_plan(
            &actor,
            name,
            PlanSpec {
                description: body.description,
                ratelimits: limits,
                graduated: body.graduated,
                quota: body.quota,
            },
            false,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(plan.into())))
}

#[utoipa::path(get, path = "/v1/plans/{name}", tag = "plans", params(("name" = String, Path)),
    responses((status = 200, body = PlanView), ErrorResponses), security(("bearer" = [])))]
pub async fn show_plan(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PlanView>, ApiError> {
    caller.authenticate(&state, Operation::PlanRead).await?;
    Ok(Json(
        state.authority()?.access().plan(&plan_name(&name)?)?.into(),
    ))
}

#[utoipa::path(put, path = "/v1/plans/{name}", tag = "plans", params(("name" = String, Path)),
    request_body = ReplacePlanRequest,
    responses((status = 200, description = "Replaced; every key on the plan has the new limits at once", body = PlanView), ErrorResponses),
    security(("bearer" = [])))]
pub async fn replace_plan(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ReplacePlanRequest>,
) -> Result<Json<PlanView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::PlanWrite).await?;
    let name = plan_name(&name)?;
    let limits = parse_ratelimits(&body.ratelimits)?;
    Ok(Json(
        state
            .authority()?
            .access()
            .put_plan(
                &actor,
                name,
                PlanSpec {
                    description: body.description,
                    ratelimits: limits,
                    graduated: body.graduated,
                    quota: body.quota,
                },
                true,
            )
            .await?
            .into(),
    ))
}

#[utoipa::path(delete, path = "/v1/plans/{name}", tag = "plans", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"), ErrorResponses), security(("bearer" = [])))]
pub async fn delete_plan(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = caller.authenticate(&state, Operation::PlanWrite).await?;
    state
        .authority()?
        .access()
        .delete_plan(&actor, &plan_name(&name)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
