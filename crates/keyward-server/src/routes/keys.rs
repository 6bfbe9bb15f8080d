//! `/v1/keys`: create, read, list, update, revoke and roll keys; grants; effective permissions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyward_core::{
    Cidr, EnvironmentName, Grant, KeyAccess, KeyId, KeyRecord, KeyStatus, PathRule, Permission,
    RoleName, ServiceName, Timestamp,
};
use keyward_service::KeyQuery;
use keyward_service::Operation;
use keyward_service::{KeyUpdate, NewGrant, NewKey, ServiceError, parse_cidrs, parse_path_rules};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorResponses};
use crate::extract::{Caller, JsonBody, QueryParams};
use crate::routes::rotation::{EffectiveRotationView, RotationPolicyView};

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
    /// Roles whose permissions the key holds.
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<RoleName>,
    /// Temporary permissions or roles, each with the instant it lapses.
    #[schema(value_type = Vec<Object>)]
    pub grants: Vec<Grant>,
    /// If any, the only requests the key may make (`METHOD /path/pattern`).
    #[schema(value_type = Vec<String>)]
    pub path_rules: Vec<PathRule>,
    #[schema(value_type = Vec<String>)]
    pub allowed_cidrs: Vec<Cidr>,
    #[schema(value_type = Vec<String>)]
    pub denied_cidrs: Vec<Cidr>,
    /// For admin keys: the environments whose keys they may manage (absent: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub admin_environments: Option<Vec<EnvironmentName>>,
    pub ratelimits: Vec<RateLimitView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub plan: Option<keyward_core::PlanName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyView>,
    /// The quota; `remaining` is given where the server looked it up (show, create, update).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaView>,
    /// The key's own rotation policy, if it has one (its roles' or environment's apply
    /// otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicyView>,
    /// The rotation that applies to the key now, with its next rotation time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_rotation: Option<EffectiveRotationView>,
    /// Where the scheduler writes the key's successors.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub delivery: Option<keyward_core::DeliveryTarget>,
    /// For a rolled key: `schedule`, `manual` or `client`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub rolled_by: Option<keyward_core::RollCause>,
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
            roles: k.access.roles,
            grants: k.access.grants,
            path_rules: k.access.path_rules,
            allowed_cidrs: k.access.allowed_cidrs,
            denied_cidrs: k.access.denied_cidrs,
            admin_environments: k.access.admin_environments,
            ratelimits: k
                .access
                .ratelimits
                .into_iter()
                .map(RateLimitView::from)
                .collect(),
            plan: k.access.plan,
            concurrency: k.access.concurrency.map(|c| ConcurrencyView {
                limit: c.limit,
                lease_timeout_s: Some(c.lease_timeout_s),
            }),
            quota: k.access.quota.map(|q| QuotaView::of(q, None)),
            rotation: k.lifecycle.rotation.map(RotationPolicyView::from),
            effective_rotation: None,
            rolled_by: k.lifecycle.rolled_by,
            delivery: k.lifecycle.delivery,
        }
    }
}

/// A newly issued key, with its plaintext: shown this once and never again.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    /// The API key. Store it now: keyward keeps only its HMAC.
    #[schema(example = "kw_live_3xQ9…")]
    pub key: String,
    #[serde(flatten)]
    pub record: KeyView,
}

/// A permission: `*`, `resource:*`, `*:action` or `resource:action`, optionally `:scope` (a
/// path glob).
#[derive(Debug, ToSchema)]
#[schema(
    pattern = "^(\\*|(\\*|[a-z0-9_.-]{1,64}):(\\*|[a-z0-9_.-]{1,64})(:[A-Za-z0-9_./*-]{1,256})?)$",
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
    /// Roles whose permissions the key holds.
    #[serde(default)]
    #[schema(value_type = Vec<RoleText>)]
    pub roles: Vec<String>,
    /// `METHOD /path/pattern` rules (`*` one segment, `**` any); if any, verify needs method
    /// and path and they must match one.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub path_rules: Vec<String>,
    /// CIDR blocks the key may be used from (IPv4 or IPv6); empty: anywhere not denied.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// CIDR blocks the key may never be used from; deny wins over allow.
    #[serde(default)]
    pub denied_cidrs: Vec<String>,
    /// For admin keys: the environments whose keys this key may manage.
    #[schema(value_type = Option<Vec<String>>)]
    pub admin_environments: Option<Vec<String>>,
    /// Named rate limits; a request is admitted only if every applicable one admits it.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub ratelimits: Vec<RateLimitView>,
    /// A plan (tier) whose limits the key has besides its own.
    #[schema(value_type = Option<RoleText>)]
    pub plan: Option<String>,
    /// At most this many of the key's requests in flight (verify with `lease: true`).
    pub concurrency: Option<ConcurrencyView>,
    /// Usage credits that verification spends (`cost`), optionally refilled daily or monthly.
    pub quota: Option<QuotaView>,
    /// The key's own rotation schedule (beats its roles' and its environment's).
    pub rotation: Option<RotationPolicyView>,
    /// Where the scheduler writes the key's successors before the old key's grace starts:
    /// `{"kind": "vault", "path", "field"?}` (keyward's own vault, in the key's environment) or
    /// `{"kind": "kv2", "address", "mount"?, "path", "field"?, "token_path"}` (HashiCorp Vault or
    /// OpenBao; the token is the field `token` of the keyward secret at `token_path`).
    #[schema(value_type = Option<Object>)]
    pub delivery: Option<keyward_core::DeliveryTarget>,
}

/// A quota: `remaining` credits, and whether they are reset to `refill.amount` at the start of
/// each UTC day or month. Without `refill` it is a one-time grant.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaView {
    /// Credits left (on input: to start with; default the refill amount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    pub remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<RefillView>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefillView {
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    pub amount: u64,
    /// `daily` or `monthly` (UTC).
    #[schema(value_type = String, pattern = "^(daily|monthly)$")]
    pub interval: keyward_core::RefillInterval,
}

impl QuotaView {
    fn config(self) -> keyward_core::QuotaConfig {
        keyward_core::QuotaConfig {
            refill: self.refill.map(|r| keyward_core::QuotaRefill {
                amount: r.amount,
                interval: r.interval,
            }),
        }
    }

    pub(crate) fn of(config: keyward_core::QuotaConfig, remaining: Option<u64>) -> Self {
        QuotaView {
            remaining,
            refill: config.refill.map(|r| RefillView {
                amount: r.amount,
                interval: r.interval,
            }),
        }
    }
}

/// At most `limit` requests in flight; an unreleased lease lapses after `lease_timeout_s`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyView {
    #[schema(minimum = 1, maximum = 100_000)]
    pub limit: u32,
    /// Default 30.
    #[schema(minimum = 1, maximum = 86_400)]
    pub lease_timeout_s: Option<u32>,
}

impl ConcurrencyView {
    fn parse(self) -> Result<keyward_core::ConcurrencyLimit, ApiError> {
        let limit = keyward_core::ConcurrencyLimit {
            limit: self.limit,
            lease_timeout_s: self.lease_timeout_s.unwrap_or(30),
        };
        limit
            .validate()
            .map_err(|(field, message)| ApiError::field(field, message))?;
        Ok(limit)
    }
}

/// A rate limit: at most `limit` requests per `period_s`. Periods up to 60 s use GCRA (even
/// spacing, with a `burst` allowance, default `limit`); longer ones a sliding window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitView {
    #[schema(pattern = "^[a-z0-9_.-]{1,32}$", example = "burst")]
    pub name: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_u64)]
    pub limit: u64,
    #[schema(minimum = 1, maximum = 31_536_000_u64)]
    pub period_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000_000_u64)]
    pub burst: Option<u64>,
    /// If set, the limit counts only requests matching this `METHOD /path` pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "POST /v1/reports/**")]
    pub rule: Option<String>,
}

impl From<keyward_core::RateLimit> for RateLimitView {
    fn from(l: keyward_core::RateLimit) -> Self {
        RateLimitView {
            name: l.name,
            limit: l.limit,
            period_s: l.period_s,
            burst: l.burst,
            rule: l.rule.map(|r| r.to_string()),
        }
    }
}

/// A key as shown after a lookup or a change: with what remains of its quota.
pub(crate) async fn view(state: &AppState, record: KeyRecord) -> Result<KeyView, ApiError> {
    let authority = state.authority()?;
    let remaining = authority.keys().quota_remaining(&record).await?;
    let effective = authority.rotation().of(&record);
    let mut view = KeyView::from(record);
    view.effective_rotation = effective.map(EffectiveRotationView::from);
    if let Some(quota) = &mut view.quota {
        quota.remaining = remaining;
    }
    Ok(view)
}

pub(crate) fn parse_plan(text: &str) -> Result<keyward_core::PlanName, ApiError> {
    keyward_core::PlanName::parse(text).map_err(|e| ApiError::field("plan", e.to_string()))
}

pub(crate) fn parse_ratelimits(
    list: &[RateLimitView],
) -> Result<Vec<keyward_core::RateLimit>, ApiError> {
    let limits = list
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(keyward_core::RateLimit {
                name: l.name.clone(),
                limit: l.limit,
                period_s: l.period_s,
                burst: l.burst,
                rule: l
                    .rule
                    .as_deref()
                    .map(|r| {
                        PathRule::parse(r).map_err(|e| {
                            ApiError::field(format!("ratelimits[{i}].rule"), e.to_string())
                        })
                    })
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    keyward_service::check_ratelimits(&limits).map_err(field_error)?;
    Ok(limits)
}

/// A role name: 1-64 characters of `[a-z0-9_.-]`, starting with a letter or digit.
#[derive(Debug, ToSchema)]
#[schema(pattern = "^[a-z0-9][a-z0-9_.-]{0,63}$", example = "read-only")]
pub struct RoleText(pub String);

fn field_error(e: ServiceError) -> ApiError {
    ApiError::from(e)
}

pub(crate) fn parse_roles(field: &str, list: &[String]) -> Result<Vec<RoleName>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            RoleName::parse(r).map_err(|e| ApiError::field(format!("{field}[{i}]"), e.to_string()))
        })
        .collect()
}

/// A new key's access rules from its create request, each bad value named by its field.
fn parse_access(body: &CreateKeyRequest) -> Result<KeyAccess, ApiError> {
    Ok(KeyAccess {
        quota: body.quota.map(QuotaView::config),
        concurrency: body.concurrency.map(ConcurrencyView::parse).transpose()?,
        plan: body.plan.as_deref().map(parse_plan).transpose()?,
        ratelimits: parse_ratelimits(&body.ratelimits)?,
        roles: parse_roles("roles", &body.roles)?,
        grants: Vec::new(),
        path_rules: parse_path_rules("path_rules", &body.path_rules).map_err(field_error)?,
        allowed_cidrs: parse_cidrs("allowed_cidrs", &body.allowed_cidrs).map_err(field_error)?,
        denied_cidrs: parse_cidrs("denied_cidrs", &body.denied_cidrs).map_err(field_error)?,
        admin_environments: body
            .admin_environments
            .as_deref()
            .map(|list| {
                list.iter()
                    .map(|e| parse_environment(e))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?,
    })
}

pub(crate) fn parse_environment(text: &str) -> Result<EnvironmentName, ApiError> {
    EnvironmentName::parse(text).map_err(|e| ApiError::field("environment", e.to_string()))
}

pub(crate) fn parse_permissions(list: &[String]) -> Result<Vec<Permission>, ApiError> {
    parse_permissions_in("permissions", list)
}

/// Parses permissions, naming the bad entry as `field[i]` with its value.
pub(crate) fn parse_permissions_in(
    field: &str,
    list: &[String],
) -> Result<Vec<Permission>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            Permission::parse(p)
                .map_err(|e| ApiError::field(format!("{field}[{i}]"), e.to_string()))
        })
        .collect()
}

pub(crate) fn parse_time(field: &str, text: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse_rfc3339(text).map_err(|e| ApiError::field(field, e.to_string()))
}

pub(crate) fn parse_id(text: &str) -> Result<KeyId, ApiError> {
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
    caller: Caller,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyCreate).await?;
    let service = match body.service.as_deref() {
        None => ServiceName::Default,
        Some(text) => ServiceName::parse(text)
            .ok_or_else(|| ApiError::field("service", "must be 'default' or 'keyward'"))?,
    };
    let access = parse_access(&body)?;
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
        access,
        quota_remaining: body.quota.and_then(|q| q.remaining),
        rotation: body.rotation.map(RotationPolicyView::policy),
        delivery: body.delivery,
    };
    let (record, key) = state.authority()?.keys().create_key(&actor, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: key.expose().to_owned(),
            record: view(&state, record).await?,
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
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyRead).await?;
    let id = parse_id(&id)?;
    let record = state.authority()?.keys().key_as(&actor, id).await?;
    Ok(Json(view(&state, record).await?))
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
    /// Only keys whose `start` begins with this, taken literally (find a leaked `kw_live_xJ4l…`).
    #[param(max_length = 64)]
    pub start: Option<String>,
    /// Only keys created before this instant (RFC 3339).
    #[param(format = DateTime)]
    pub created_before: Option<String>,
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
    caller: Caller,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<KeyList>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyRead).await?;
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
        start_prefix: params.start.map(start_prefix).transpose()?,
        created_before: params
            .created_before
            .as_deref()
            .map(|t| {
                Timestamp::parse_rfc3339(t)
                    .map_err(|_| ApiError::field("created_before", "must be an RFC 3339 time"))
            })
            .transpose()?,
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
    let page = state.authority()?.keys().list_keys(&actor, query).await?;
    Ok(Json(KeyList {
        keys: page.keys.into_iter().map(KeyView::from).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// A `start` prefix to search by: a few characters of a key as someone saw it.
pub(crate) fn start_prefix(prefix: String) -> Result<String, ApiError> {
    let fits = (1..=64).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if fits {
        Ok(prefix)
    } else {
        Err(ApiError::field(
            "start",
            "must be 1-64 characters of a key's start (letters, digits, _)",
        ))
    }
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
    /// Replaces the key's roles.
    #[schema(value_type = Option<Vec<RoleText>>)]
    pub roles: Option<Vec<String>>,
    /// Replaces the key's path rules.
    pub path_rules: Option<Vec<String>>,
    /// Replaces the key's allowed CIDR blocks.
    pub allowed_cidrs: Option<Vec<String>>,
    /// Replaces the key's denied CIDR blocks.
    pub denied_cidrs: Option<Vec<String>>,
    /// Replaces the key's rate limits (their state starts afresh).
    pub ratelimits: Option<Vec<RateLimitView>>,
    /// Moves the key to another plan; `null` takes it off its plan.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<RoleText>)]
    pub plan: Option<Option<String>>,
    /// Replaces the concurrency limit; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<ConcurrencyView>)]
    pub concurrency: Option<Option<ConcurrencyView>>,
    /// Replaces the quota and sets what remains (a credit grant); `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<QuotaView>)]
    pub quota: Option<Option<QuotaView>>,
    /// Sets the key's own rotation schedule; `null` removes it (its roles' or environment's
    /// then apply).
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<RotationPolicyView>)]
    pub rotation: Option<Option<RotationPolicyView>>,
    /// Sets where successors are delivered; `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub delivery: Option<Option<keyward_core::DeliveryTarget>>,
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
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyUpdate).await?;
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
        roles: body
            .roles
            .as_deref()
            .map(|r| parse_roles("roles", r))
            .transpose()?,
        path_rules: body
            .path_rules
            .as_deref()
            .map(|r| parse_path_rules("path_rules", r).map_err(field_error))
            .transpose()?,
        allowed_cidrs: body
            .allowed_cidrs
            .as_deref()
            .map(|c| parse_cidrs("allowed_cidrs", c).map_err(field_error))
            .transpose()?,
        denied_cidrs: body
            .denied_cidrs
            .as_deref()
            .map(|c| parse_cidrs("denied_cidrs", c).map_err(field_error))
            .transpose()?,
        ratelimits: body
            .ratelimits
            .as_deref()
            .map(parse_ratelimits)
            .transpose()?,
        plan: body
            .plan
            .map(|p| p.as_deref().map(parse_plan).transpose())
            .transpose()?,
        concurrency: body
            .concurrency
            .map(|c| c.map(ConcurrencyView::parse).transpose())
            .transpose()?,
        quota: body.quota.map(|q| q.map(|q| (q.config(), q.remaining))),
        rotation: body.rotation.map(|r| r.map(RotationPolicyView::policy)),
        delivery: body.delivery,
    };
    Ok(Json(
        view(
            &state,
            state
                .authority()?
                .keys()
                .update_key(&actor, id, update)
                .await?,
        )
        .await?,
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
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RevokeRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyRevoke).await?;
    let id = parse_id(&id)?;
    Ok(Json(
        state
            .authority()?
            .keys()
            .revoke_key(&actor, id, body.reason)
            .await?
            .into(),
    ))
}

/// A key's id (a UUID).
#[derive(Debug, ToSchema)]
#[schema(
    pattern = "^[0-9A-Fa-f{}-]{32,38}$",
    example = "0190f5d2-7a4e-7000-8000-000000000000"
)]
pub struct KeyIdText(pub String);

/// An emergency revocation: the keys that every given selector matches (at least one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeManyRequest {
    /// These keys (at most 1,000).
    #[serde(default)]
    #[schema(value_type = Vec<KeyIdText>, max_items = 1_000)]
    pub ids: Vec<String>,
    /// Keys of this owner.
    #[schema(min_length = 1, max_length = 200)]
    pub owner: Option<String>,
    /// Keys of this environment.
    #[schema(pattern = "^[a-z0-9]{1,8}$")]
    pub environment: Option<String>,
    /// Keys whose `start` begins with this, taken literally.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_]{1,64}$")]
    pub start: Option<String>,
    /// Keys created before this instant (RFC 3339).
    #[schema(format = DateTime)]
    pub created_before: Option<String>,
    /// Why; kept in each key and in the one audit entry.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: String,
    /// Count what would be revoked, revoke nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an emergency revocation did.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedMany {
    /// Keys revoked (with `dry_run`: that would be).
    pub revoked: u64,
    /// More keys match than one call revokes (100,000): call again for the rest.
    pub more: bool,
    /// The calling key matched and was left alone: a key never revokes itself.
    pub skipped_self: bool,
    /// Matching records that failed their integrity check, left alone (and reported).
    pub skipped_tampered: u64,
    pub dry_run: bool,
}

#[utoipa::path(
    post, path = "/v1/keys/revoke", tag = "keys",
    request_body = RevokeManyRequest,
    responses(
        (status = 200, description = "Revoked: every later verify of them answers REVOKED", body = RevokedMany),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn revoke_keys(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<RevokeManyRequest>,
) -> Result<Json<RevokedMany>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyRevoke).await?;
    let ids = body
        .ids
        .iter()
        .map(|id| {
            id.parse()
                .map_err(|_| ApiError::field("ids", "each must be a key id"))
        })
        .collect::<Result<Vec<KeyId>, _>>()?;
    let selector = keyward_service::RevokeSelector {
        ids,
        owner: body.owner,
        environment: body
            .environment
            .as_deref()
            .map(parse_environment)
            .transpose()?,
        start_prefix: body.start.map(start_prefix).transpose()?,
        created_before: body
            .created_before
            .as_deref()
            .map(|t| parse_time("created_before", t))
            .transpose()?,
    };
    let done = state
        .authority()?
        .keys()
        .revoke_matching(&actor, selector, body.reason, body.dry_run)
        .await?;
    Ok(Json(RevokedMany {
        revoked: done.revoked,
        more: done.more,
        skipped_self: done.skipped_self,
        skipped_tampered: done.skipped_tampered,
        dry_run: body.dry_run,
    }))
}

/// Moves an owner's keys to another owner.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The new owner.
    #[schema(min_length = 1, max_length = 200)]
    pub to: String,
    /// Why; kept in the audit entry and the events.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: String,
}

/// What a transfer did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Transferred {
    /// Keys that now belong to the new owner.
    pub moved: u64,
    /// More keys remain than one call moves (100,000): call again for the rest.
    pub more: bool,
    /// The calling key belonged to the old owner and was left alone.
    pub skipped_self: bool,
    /// Records that failed their integrity check, left alone (and reported).
    pub skipped_tampered: u64,
}

#[utoipa::path(
    post, path = "/v1/owners/{owner}/transfer", tag = "keys",
    params(("owner" = String, Path, description = "The owner whose keys move")),
    request_body = TransferRequest,
    responses(
        (status = 200, description = "Every key of the owner that is not revoked moved", body = Transferred),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn transfer_owner(
    State(state): State<AppState>,
    caller: Caller,
    Path(owner): Path<String>,
    JsonBody(body): JsonBody<TransferRequest>,
) -> Result<Json<Transferred>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyUpdate).await?;
    let done = state
        .authority()?
        .keys()
        .transfer_owner(&actor, owner, body.to, body.reason)
        .await?;
    Ok(Json(Transferred {
        moved: done.moved,
        more: done.more,
        skipped_self: done.skipped_self,
        skipped_tampered: done.skipped_tampered,
    }))
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
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RollRequest>,
) -> Result<(StatusCode, Json<RolledKey>), ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyRoll).await?;
    let id = parse_id(&id)?;
    let (old, new, key) = state
        .authority()?
        .keys()
        .roll_key(&actor, id, body.grace_period_s)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RolledKey {
            successor: CreatedKey {
                key: key.expose().to_owned(),
                record: view(&state, new).await?,
            },
            previous: view(&state, old).await?,
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The permission to grant; exclusive with `role`.
    #[schema(value_type = Option<PermissionText>)]
    pub permission: Option<String>,
    /// The role to grant; exclusive with `permission`.
    #[schema(value_type = Option<RoleText>)]
    pub role: Option<String>,
    /// RFC 3339, in the future; exclusive with `ttl_s`.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Seconds until the grant lapses; exclusive with `expires_at`.
    #[schema(minimum = 1, maximum = 3_153_600_000_u64)]
    pub ttl_s: Option<u64>,
}

#[utoipa::path(
    post, path = "/v1/keys/{id}/grants", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    request_body = GrantRequest,
    responses(
        (status = 201, description = "Granted until its expiry, then it lapses by itself", body = KeyView),
        ErrorResponses,
    ),
    security(("bearer" = []))
)]
pub async fn add_grant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<GrantRequest>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyGrant).await?;
    let id = parse_id(&id)?;
    let grant = NewGrant {
        permission: body
            .permission
            .as_deref()
            .map(|p| Permission::parse(p).map_err(|e| ApiError::field("permission", e.to_string())))
            .transpose()?,
        role: body
            .role
            .as_deref()
            .map(|r| RoleName::parse(r).map_err(|e| ApiError::field("role", e.to_string())))
            .transpose()?,
        expires_at: body
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t))
            .transpose()?,
        ttl_s: body.ttl_s,
    };
    let key = state
        .authority()?
        .access()
        .add_grant(&actor, id, grant)
        .await?;
    Ok((StatusCode::CREATED, Json(key.into())))
}

/// One effective permission and where it comes from.
#[derive(Debug, Serialize, ToSchema)]
pub struct EffectivePermissionView {
    #[schema(value_type = String)]
    pub permission: Permission,
    /// `direct`, `role` or `grant`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub role: Option<RoleName>,
    /// For grants: when it lapses.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Set when the environment's policy takes the permission away, with the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_by_policy: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Explanation {
    #[schema(value_type = String, format = Uuid)]
    pub key_id: KeyId,
    #[schema(value_type = String)]
    pub environment: EnvironmentName,
    pub permissions: Vec<EffectivePermissionView>,
    /// The environment's policy, which removed what is marked `removed_by_policy`.
    #[schema(value_type = Object)]
    pub policy: keyward_core::EnvironmentPolicy,
}

#[utoipa::path(
    get, path = "/v1/keys/{id}/effective-permissions", tag = "keys",
    params(("id" = String, Path, description = "The key's id")),
    responses((status = 200, body = Explanation), ErrorResponses),
    security(("bearer" = []))
)]
pub async fn explain_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Explanation>, ApiError> {
    let actor = caller.authenticate(&state, Operation::KeyRead).await?;
    let id = parse_id(&id)?;
    let explained = state.authority()?.access().explain(&actor, id).await?;
    Ok(Json(Explanation {
        key_id: explained.key.id,
        environment: explained.key.environment,
        permissions: explained
            .permissions
            .into_iter()
            .map(|p| EffectivePermissionView {
                permission: p.permission,
                source: p.source,
                role: p.role,
                expires_at: p.expires_at,
                removed_by_policy: p.removed_by_policy,
            })
            .collect(),
        policy: explained.policy,
    }))
}

crate::redacted_debug!(CreatedKey);
