//! Rotation: policies as the API reads and writes them, a key's version history, and the calls
//! a key's holder makes with that very key (`/v1/self`, `/v1/self/rotate`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::{KeyId, PolicySource, RotationPolicy, Timestamp};
use keyward_service::{EffectiveRotation, Generation, Operation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::Caller;
use crate::routes::keys::{CreatedKey, KeyView, parse_id, view};

/// A rotation schedule: rolled every `every_days`; the replaced key works `grace_hours` more;
/// its holder is told, and may rotate it, from `notice_days` before it is due.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicyView {
    /// Days from a key's creation to its rotation (1-3650).
    #[schema(minimum = 1, maximum = 3650, example = 90)]
    pub every_days: u32,
    /// Hours the replaced key keeps working; shorter than the period.
    #[schema(example = 48)]
    pub grace_hours: u32,
    /// Days before the rotation from which the holder is told and may rotate; shorter than
    /// the period.
    #[serde(default)]
    #[schema(example = 7)]
    pub notice_days: u32,
    /// For keys with a delivery target: how long the replaced key may keep working while its
    /// successor cannot be delivered (default: the grace plus 72 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_cap_hours: Option<u32>,
}

impl RotationPolicyView {
    pub fn policy(self) -> RotationPolicy {
        RotationPolicy {
            every_days: self.every_days,
            grace_hours: self.grace_hours,
            notice_days: self.notice_days,
            delivery_cap_hours: self.delivery_cap_hours,
        }
    }
}

impl From<RotationPolicy> for RotationPolicyView {
    fn from(p: RotationPolicy) -> Self {
        RotationPolicyView {
            every_days: p.every_days,
            grace_hours: p.grace_hours,
            notice_days: p.notice_days,
            delivery_cap_hours: p.delivery_cap_hours,
        }
    }
}

/// The rotation that applies to a key now.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectiveRotationView {
    pub policy: RotationPolicyView,
    /// Where the policy comes from: `key`, `role` or `environment`.
    #[schema(example = "environment")]
    pub source: String,
    /// The role or environment it comes from (absent for the key's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// When the scheduler rolls the key.
    #[schema(value_type = String, format = DateTime)]
    pub next_rotation_at: Timestamp,
    /// From when the holder is told, and may call `POST /v1/self/rotate`.
    #[schema(value_type = String, format = DateTime)]
    pub notice_at: Timestamp,
}

impl From<EffectiveRotation> for EffectiveRotationView {
    fn from(e: EffectiveRotation) -> Self {
        let (source, source_name) = match e.source {
            PolicySource::Key => ("key", None),
            PolicySource::Role(name) => ("role", Some(name)),
            PolicySource::Environment(name) => ("environment", Some(name)),
        };
        EffectiveRotationView {
            policy: e.policy.into(),
            source: source.to_owned(),
            source_name,
            next_rotation_at: e.due_at,
            notice_at: e.notice_at,
        }
    }
}

/// One generation of a key.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyVersionView {
    #[schema(value_type = String, format = Uuid)]
    pub id: KeyId,
    #[schema(example = "kw_live_3xQ9")]
    pub start: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// `active`, `disabled` or `revoked`.
    pub status: String,
    /// How the generation ended: `rolled_by_schedule`, `rolled_by_hand`, `rolled_by_client`,
    /// `revoked` or `expired`; absent while it is current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub rolled_to: Option<KeyId>,
}

impl From<Generation> for KeyVersionView {
    fn from(g: Generation) -> Self {
        KeyVersionView {
            id: g.key.id,
            start: g.key.start,
            created_at: g.key.created_at,
            expires_at: g.key.expires_at,
            status: g.key.status.as_str().to_owned(),
            ended: g.ended.map(|e| e.as_str().to_owned()),
            rolled_to: g.key.rolled_to,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyVersionList {
    /// Every generation, newest first.
    pub versions: Vec<KeyVersionView>,
}

#[utoipa::path(
    get, path = "/v1/keys/{id}/versions", tag = "keys",
    params(("id" = String, Path, description = "Any generation's id")),
    responses((status = 200, body = KeyVersionList), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn key_versions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyVersionList>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyRead).await?;
    let id = parse_id(&id)?;
    let versions = state.authority()?.rotation().versions(&actor, id).await?;
    Ok(Json(KeyVersionList {
        versions: versions.into_iter().map(KeyVersionView::from).collect(),
    }))
}

/// A key as its own holder sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelfView {
    #[schema(value_type = String, format = Uuid)]
    pub id: KeyId,
    #[schema(example = "kw_live_3xQ9")]
    pub start: String,
    #[schema(example = "live")]
    pub environment: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Set once the key was rolled: switch to the successor (collect it with
    /// `POST /v1/self/rotate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub rolled_to: Option<KeyId>,
    /// The rotation that applies, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<EffectiveRotationView>,
    /// Whether `POST /v1/self/rotate` would hand out a successor now.
    pub rotate_now: bool,
}

#[utoipa::path(
    get, path = "/v1/self", tag = "keys",
    responses((status = 200, description = "The presented key", body = SelfView), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn show_self(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<SelfView>, ApiError> {
    let authority = state.authority()?;
    let holder = authority
        .verifier()
        .authenticate_holder(caller.bearer.as_deref(), caller.ip)
        .await?;
    let (key, rotation) = authority.rotation().holder_view(holder).await?;
    let now = authority.now();
    let rotate_now =
        key.rolled_to.is_some() || rotation.as_ref().is_some_and(|r| r.notice_at <= now);
    Ok(Json(SelfView {
        id: key.id,
        start: key.start,
        environment: key.environment.to_string(),
        expires_at: key.expires_at,
        rolled_to: key.rolled_to,
        rotation: rotation.map(EffectiveRotationView::from),
        rotate_now,
    }))
}

/// What `POST /v1/self/rotate` answers: the successor, with its key the one time it is handed
/// out.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelfRotated {
    #[schema(value_type = String, format = Uuid)]
    pub successor_id: KeyId,
    /// The successor with its key, shown this once; absent when it was handed out before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successor: Option<CreatedKey>,
    /// The presented key as it is now: `expires_at` is the end of its grace period.
    pub previous: KeyView,
}

#[utoipa::path(
    post, path = "/v1/self/rotate", tag = "keys",
    responses(
        (status = 201, description = "The successor, with its key shown once", body = SelfRotated),
        (status = 200, description = "Rotated before: the successor's id, never its key again", body = SelfRotated),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn rotate_self(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<SelfRotated>), ApiError> {
    let authority = state.authority()?;
    let holder = authority
        .verifier()
        .authenticate_holder(caller.bearer.as_deref(), caller.ip)
        .await?;
    let rotated = authority.rotation().self_rotate(holder).await?;
    let previous = view(&state, rotated.previous).await?;
    let (status, successor) = match rotated.successor {
        Some((record, key)) => (
            StatusCode::CREATED,
            Some(CreatedKey {
                key: key.expose().to_owned(),
                record: view(&state, record).await?,
            }),
        ),
        None => (StatusCode::OK, None),
    };
    Ok((
        status,
        Json(SelfRotated {
            successor_id: rotated.successor_id,
            successor,
            previous,
        }),
    ))
}
