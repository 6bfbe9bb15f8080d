//! `POST /v1/verify`: the hot path, called by the APIs that keyward protects.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use keyward_core::permission::admin;
use keyward_core::{EnvironmentName, KeyId, Permission, Timestamp, VerifyCode};
use keyward_crypto::PlaintextKey;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Bearer, JsonBody};

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
}

fn presented_key<'de, D: Deserializer<'de>>(d: D) -> Result<PlaintextKey, D::Error> {
    String::deserialize(d).map(PlaintextKey::from_presented)
}

/// The verdict. `valid` is true exactly when `code` is `VALID`; details of the key are given
/// whenever the presented key matched one.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResponse {
    pub valid: bool,
    /// VALID, MALFORMED, NOT_FOUND, EXPIRED, REVOKED, DISABLED, ENVIRONMENT_MISMATCH, …
    #[schema(value_type = String, example = "VALID")]
    pub code: VerifyCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub key_id: Option<KeyId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub environment: Option<EnvironmentName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub permissions: Option<Vec<Permission>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

#[utoipa::path(
    post, path = "/v1/verify", tag = "verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict, for valid and invalid keys alike", body = VerifyResponse),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn verify(
    State(state): State<AppState>,
    Bearer(bearer): Bearer,
    JsonBody(body): JsonBody<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    let started = Instant::now();
    if !state.config.insecure_unauthenticated_verify {
        state
            .authority
            .authenticate(bearer.as_deref(), admin::KEYS_VERIFY)
            .await?;
    }
    let environment = body
        .environment
        .as_deref()
        .map(|e| {
            EnvironmentName::parse(e).map_err(|err| ApiError::field("environment", err.to_string()))
        })
        .transpose()?;
    let verdict = state
        .authority
        .verify(body.key.expose(), environment.as_ref())
        .await?;
    state.metrics.verified(verdict.code, started.elapsed());
    let key = verdict.key.as_deref();
    Ok(Json(VerifyResponse {
        valid: verdict.code == VerifyCode::Valid,
        code: verdict.code,
        key_id: key.map(|k| k.id),
        owner: key.map(|k| k.owner.to_string()),
        environment: key.map(|k| (*k.environment).clone()),
        permissions: key.map(|k| k.permissions.to_vec()),
        meta: key.map(|k| k.meta.as_deref().cloned().unwrap_or_default()),
        expires_at: key.and_then(|k| k.expires_at),
    }))
}
