//! `/v1/sys`: the vault's seal state, unsealing with shares, sealing, keyring rotation and
//! rekeying.
//!
//! Seal status and unseal answer while sealed and need no key (no key can be checked while
//! sealed: the HMAC secrets are sealed too). Everything else needs an admin key.

use axum::Json;
use axum::extract::State;
use keyward_core::Timestamp;
use keyward_crypto::barrier::UnsealKey;
use keyward_service::Operation;
use keyward_service::RewrapProgress;
use keyward_service::SealStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct RewrapView {
    /// The term values are being re-sealed under.
    pub term: u32,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    /// Values sealed under older terms when the rewrap began.
    pub total: u64,
    pub done: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

impl From<RewrapProgress> for RewrapView {
    fn from(r: RewrapProgress) -> Self {
        RewrapView {
            term: r.term,
            started_at: r.started_at,
            total: r.total,
            done: r.done,
            finished_at: r.finished_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SealStatusView {
    pub initialized: bool,
    pub sealed: bool,
    /// Shares the unseal key was split into, and how many unseal it.
    pub shares: u8,
    pub threshold: u8,
    /// Distinct shares received so far toward the threshold.
    pub progress: u8,
    /// The newest keyring term.
    pub term: u32,
    pub rewrap: Option<RewrapView>,
}

impl From<SealStatus> for SealStatusView {
    fn from(s: SealStatus) -> Self {
        SealStatusView {
            initialized: s.initialized,
            sealed: s.sealed,
            shares: s.shares,
            threshold: s.threshold,
            progress: s.progress,
            term: s.term,
            rewrap: s.rewrap.map(RewrapView::from),
        }
    }
}

#[utoipa::path(get, path = "/v1/sys/seal-status", tag = "vault",
    responses((status = 200, body = SealStatusView), ErrorResponses))]
pub async fn seal_status(State(state): State<AppState>) -> Result<Json<SealStatusView>, ApiError> {
    Ok(Json(state.node.status().await?.into()))
}

/// Give one share (`share`), the whole unseal key (`key`), or `reset: true` to discard the
/// shares given so far.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UnsealRequest {
    /// One unseal share, `kws1-…`, as printed by `keyward init`.
    pub share: Option<String>,
    /// The whole unseal key, `kwunseal1-…`.
    pub key: Option<String>,
    pub reset: bool,
}

#[utoipa::path(post, path = "/v1/sys/unseal", tag = "vault", request_body = UnsealRequest,
    responses((status = 200, body = SealStatusView), ErrorResponses))]
pub async fn unseal(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<UnsealRequest>,
) -> Result<Json<SealStatusView>, ApiError> {
    let status = match (body.share, body.key, body.reset) {
        (None, None, true) => state.node.reset_unseal().await?,
        (Some(share), None, false) => {
            let share = zeroize::Zeroizing::new(share);
            state.node.submit_share(&share).await?
        }
        (None, Some(key), false) => {
            let key = zeroize::Zeroizing::new(key);
            let key = UnsealKey::from_text(&key)
                .ok_or_else(|| ApiError::field("key", "not an unseal key (kwunseal1-…)"))?;
            state
                .node
                .unseal_with_key(&key, "key")
                .await
                .map_err(|e| match e {
                    keyward_service::ServiceError::Integrity(_) => {
                        ApiError::field("key", "this key does not unseal this vault")
                    }
                    other => other.into(),
                })?;
            state.node.status().await?
        }
        _ => {
            return Err(ApiError::field(
                "share",
                "give exactly one of share, key or reset: true",
            ));
        }
    };
    Ok(Json(status.into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SealedView {
    pub sealed: bool,
}

#[utoipa::path(post, path = "/v1/sys/seal", tag = "vault",
    responses((status = 200, body = SealedView), ErrorResponses), security(("bearer" = [])))]
pub async fn seal(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SealedView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::SysSeal).await?;
    state.node.seal(&actor).await?;
    Ok(Json(SealedView { sealed: true }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyringView {
    /// The newest keyring term: new values are sealed under it.
    pub term: u32,
    pub rewrap: Option<RewrapView>,
}

#[utoipa::path(post, path = "/v1/sys/rotate", tag = "vault",
    responses((status = 200, body = KeyringView), ErrorResponses), security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<KeyringView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::SysRotate).await?;
    let (term, progress) = state.authority()?.sys().rotate(&actor).await?;
    Ok(Json(KeyringView {
        term,
        rewrap: Some(progress.into()),
    }))
}

#[utoipa::path(get, path = "/v1/sys/keyring", tag = "vault",
    responses((status = 200, body = KeyringView), ErrorResponses), security(("bearer" = [])))]
pub async fn keyring(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<KeyringView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::SysRead).await?;
    let (term, rewrap) = state.authority()?.sys().keyring_status(&actor).await?;
    Ok(Json(KeyringView {
        term,
        rewrap: rewrap.map(RewrapView::from),
    }))
}

/// A quorum of current shares (or the current unseal key) and the new split.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RekeyRequest {
    /// At least the threshold of current shares.
    #[serde(default)]
    pub shares: Vec<String>,
    /// Or the current unseal key, `kwunseal1-…`.
    #[serde(default)]
    pub key: Option<String>,
    #[schema(minimum = 1, maximum = 16)]
    pub new_shares: u8,
    #[schema(minimum = 1, maximum = 16)]
    pub new_threshold: u8,
}

#[derive(Serialize, ToSchema)]
pub struct RekeyView {
    /// The new shares: shown once. The old ones no longer unseal.
    pub shares: Vec<String>,
    pub threshold: u8,
    /// The new unseal key, for an unseal key file: shown once.
    pub key: String,
}

#[utoipa::path(post, path = "/v1/sys/rekey", tag = "vault", request_body = RekeyRequest,
    responses((status = 200, body = RekeyView), ErrorResponses), security(("bearer" = [])))]
pub async fn rekey(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<RekeyRequest>,
) -> Result<Json<RekeyView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::SysRekey).await?;
    let shares = zeroize::Zeroizing::new(body.shares);
    let current = match (&body.key, shares.is_empty()) {
        (Some(key), true) => UnsealKey::from_text(&zeroize::Zeroizing::new(key.clone()))
            .ok_or_else(|| ApiError::field("key", "not an unseal key (kwunseal1-…)"))?,
        (None, false) => state.node.key_from_shares(&shares).await?,
        _ => {
            return Err(ApiError::field(
                "shares",
                "give either the current shares or the current key",
            ));
        }
    };
    let (key, parts) = state
        .node
        .rekey(&actor, &current, body.new_shares, body.new_threshold)
        .await?;
    Ok(Json(RekeyView {
        shares: parts.iter().map(|s| s.to_text().to_string()).collect(),
        threshold: body.new_threshold,
        key: key.to_text().to_string(),
    }))
}

crate::redacted_debug!(UnsealRequest, RekeyRequest, RekeyView);
