//! `/v1/webhooks`: endpoints that receive keyward's events, signed by the Standard Webhooks
//! specification, their delivery log, redelivery, test sends and secret rotation.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::{Timestamp, WebhookDelivery, WebhookEndpoint};
use keyward_service::{EndpointSpec, Operation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody, QueryParams};

/// An endpoint as the API shows it: never its signing secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    #[schema(example = "wh_3f2a…")]
    pub id: String,
    #[schema(example = "https://hooks.example.com/keyward")]
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The event types it receives; empty: every type.
    #[schema(example = json!(["key.rotated", "key.expiring"]))]
    pub event_types: Vec<String>,
    /// Only events of keys of this environment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Only events of keys of this owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub enabled: bool,
    /// Why keyward disabled it (a `410 Gone`), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Signing secrets in use: 2 while a rotation overlaps.
    pub signing_secrets: usize,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl From<WebhookEndpoint> for WebhookView {
    fn from(w: WebhookEndpoint) -> Self {
        WebhookView {
            id: w.id,
            url: w.url,
            description: w.description,
            event_types: w
                .event_types
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            environment: w.environment.map(|e| e.to_string()),
            owner: w.owner,
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            signing_secrets: w.secrets.len(),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// A new endpoint with its signing secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify `webhook-signature` with it. Shown only this once.
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// An http or https URL; internal addresses need the operator's `webhook_allowed_cidrs`.
    #[schema(max_length = 2000)]
    pub url: String,
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// Event types to receive (default: every type).
    #[serde(default)]
    pub event_types: Vec<String>,
    pub environment: Option<String>,
    #[schema(max_length = 200)]
    pub owner: Option<String>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[schema(max_length = 2000)]
    pub url: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    pub event_types: Option<Vec<String>>,
    /// `null` removes the filter.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub environment: Option<Option<String>>,
    /// `null` removes the filter.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    /// `true` enables it again (after a `410 Gone`, say).
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// How long the old secret keeps signing beside the new one (default 86400, at most
    /// 604800).
    #[schema(maximum = 604_800)]
    pub overlap_s: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The new `whsec_…`, shown only this once.
    pub secret: String,
}

/// One event's delivery to the endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The event's position: redeliver with it.
    pub seq: u64,
    /// The `webhook-id` header: the same for every attempt.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: u32,
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl From<WebhookDelivery> for DeliveryView {
    fn from(d: WebhookDelivery) -> Self {
        DeliveryView {
            seq: d.seq,
            event_id: d.event_id,
            kind: d.kind.as_str().to_owned(),
            key_id: d.key_id.map(|k| k.to_string()),
            state: d.state.as_str().to_owned(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `before` for older ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Deliveries of events before this position.
    pub before: Option<u64>,
    /// 1-1000 (default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestSent {
    /// The test event's `webhook-id`.
    pub event_id: String,
}

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    responses((status = 201, description = "The endpoint, with its secret shown once", body = CreatedWebhook), ErrorResponses),
    security(("bearer" = [])))]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookWrite).await?;
    let spec = EndpointSpec {
        url: Some(body.url),
        description: Some(body.description),
        event_types: Some(body.event_types),
        environment: Some(body.environment),
        owner: Some(body.owner),
        enabled: None,
    };
    let (endpoint, secret) = state.authority()?.webhooks().create(&actor, spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: endpoint.into(),
            secret,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), ErrorResponses), security(("bearer" = [])))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<WebhookList>, ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookRead).await?;
    let list = state.authority()?.webhooks().list(&actor).await?;
    Ok(Json(WebhookList {
        webhooks: list.into_iter().map(WebhookView::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookView), ErrorResponses), security(("bearer" = [])))]
pub async fn show_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookRead).await?;
    Ok(Json(
        state
            .authority()?
            .webhooks()
            .show(&actor, &id)
            .await?
            .into(),
    ))
}

#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body = UpdateWebhookRequest,
    responses((status = 200, body = WebhookView), ErrorResponses), security(("bearer" = [])))]
pub async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateWebhookRequest>,
) -> Result<Json<WebhookView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookWrite).await?;
    let spec = EndpointSpec {
        url: body.url,
        description: body.description,
        event_types: body.event_types,
        environment: body.environment,
        owner: body.owner,
        enabled: body.enabled,
    };
    Ok(Json(
        state
            .authority()?
            .webhooks()
            .update(&actor, &id, spec)
            .await?
            .into(),
    ))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204, description = "Removed, with its delivery log"), ErrorResponses),
    security(("bearer" = [])))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookWrite).await?;
    state.authority()?.webhooks().delete(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path)), request_body = RotateSecretRequest,
    responses((status = 200, description = "The new secret, shown once; both sign during the overlap", body = RotatedSecret), ErrorResponses),
    security(("bearer" = [])))]
pub async fn rotate_webhook_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RotateSecretRequest>,
) -> Result<Json<RotatedSecret>, ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookWrite).await?;
    let (endpoint, secret) = state
        .authority()?
        .webhooks()
        .rotate_secret(&actor, &id, body.overlap_s.unwrap_or(86_400))
        .await?;
    Ok(Json(RotatedSecret {
        webhook: endpoint.into(),
        secret,
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), DeliveryParams),
    responses((status = 200, body = DeliveryList), ErrorResponses), security(("bearer" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookRead).await?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let deliveries = state
        .authority()?
        .webhooks()
        .deliveries(&actor, &id, params.before, limit)
        .await?;
    let next_before = (deliveries.len() == limit as usize)
        .then(|| deliveries.last().map(|d| d.seq))
        .flatten();
    Ok(Json(DeliveryList {
        deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
        next_before,
    }))
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{seq}/redeliver", tag = "webhooks",
    params(("id" = String, Path), ("seq" = u64, Path)),
    responses((status = 202, description = "Queued again, with the same webhook-id", body = DeliveryView), ErrorResponses),
    security(("bearer" = [])))]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, seq)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookWrite).await?;
    let seq: u64 = seq.parse().map_err(|_| ApiError::not_found("delivery"))?;
    let delivery = state
        .authority()?
        .webhooks()
        .redeliver(&actor, &id, seq)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(delivery.into())))
}

#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 202, description = "A webhook.test event is queued for this endpoint only", body = TestSent), ErrorResponses),
    security(("bearer" = [])))]
pub async fn test_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestSent>), ApiError> {
    let actor = caller.authenticate(&state, Operation::WebhookWrite).await?;
    let event_id = state.authority()?.webhooks().test(&actor, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(TestSent { event_id })))
}
