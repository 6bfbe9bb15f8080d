//! `GET /v1/audit`: the audit log, oldest first.

use axum::Json;
use axum::extract::State;
use keyward_core::audit::AuditEntry;
use keyward_service::Operation;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, QueryParams};

/// Paging through a log ordered by sequence number (the audit log, the event log).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeqPageParams {
    /// The `next_cursor` of the previous page (a sequence number).
    #[param(maximum = 9_223_372_036_854_775_807_u64)]
    pub cursor: Option<u64>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl SeqPageParams {
    /// The cursor and page size, checked.
    fn checked(&self) -> Result<(u64, u32), ApiError> {
        let limit = match self.limit {
            None => 100,
            Some(n @ 1..=1000) => n,
            Some(_) => return Err(ApiError::field("limit", "must be between 1 and 1000")),
        };
        let cursor = self.cursor.unwrap_or(0);
        if i64::try_from(cursor).is_err() {
            return Err(ApiError::field(
                "cursor",
                "not a cursor from a previous page",
            ));
        }
        Ok((cursor, limit))
    }
}

/// The cursor of the next page: the last sequence number of a full page.
fn next_cursor(len: usize, limit: u32, last_seq: Option<u64>) -> Option<u64> {
    (len == limit as usize).then_some(last_seq).flatten()
}

/// One entry of the hash-chained log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    pub seq: u64,
    #[schema(value_type = String, format = DateTime)]
    pub ts: keyward_core::Timestamp,
    /// A key id, `system`, or `anonymous`.
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> Self {
        AuditEntryView {
            seq: e.seq,
            ts: e.ts,
            actor: e.actor,
            action: e.action,
            target: e.target,
            details: e.details,
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `cursor` for the next page; absent when there are no more entries yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<u64>,
}

#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(SeqPageParams),
    responses((status = 200, body = AuditPage), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<SeqPageParams>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.authenticate(&state, Operation::AuditRead).await?;
    let (cursor, limit) = params.checked()?;
    let entries = state.authority()?.audit().entries(cursor, limit).await?;
    let next_cursor = next_cursor(entries.len(), limit, entries.last().map(|e| e.seq));
    Ok(Json(AuditPage {
        entries: entries.into_iter().map(AuditEntryView::from).collect(),
        next_cursor,
    }))
}

/// An event: `ratelimit.warning`, `ratelimit.exceeded` (each at most once per key, limit and
/// window), `guard.block`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub seq: u64,
    #[schema(value_type = String, format = DateTime)]
    pub ts: keyward_core::Timestamp,
    pub kind: String,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub key_id: Option<keyward_core::KeyId>,
    #[schema(value_type = Object)]
    pub details: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next page; absent when there are no more events yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<u64>,
}

#[utoipa::path(
    get, path = "/v1/events", tag = "audit",
    params(SeqPageParams),
    responses((status = 200, body = EventPage), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<SeqPageParams>,
) -> Result<Json<EventPage>, ApiError> {
    caller.authenticate(&state, Operation::EventsRead).await?;
    let (cursor, limit) = params.checked()?;
    let events = state.authority()?.events().after(cursor, limit).await?;
    let next_cursor = next_cursor(events.len(), limit, events.last().map(|e| e.seq));
    Ok(Json(EventPage {
        events: events
            .into_iter()
            .map(|e| EventView {
                seq: e.seq,
                ts: e.ts,
                kind: e.kind,
                key_id: e.key_id,
                details: e.details,
            })
            .collect(),
        next_cursor,
    }))
}
