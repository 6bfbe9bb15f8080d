//! The verify service: the verification hot path, its admission checks (network and path
//! rules, permissions, concurrency, quotas, escalation, rate limits), the failed-attempt guard,
//! and admin authentication.
//!
//! parse (length, alphabet, checksum: no store) → HMAC under the environment's secret → cache →
//! known-hash filter → store (once per key, then cached) → status, expiry and environment checks.
//! Nothing here writes to the store: usage goes to the batcher.

use keyward_core::audit::AuditAction;
use std::sync::Arc;

use keyward_core::{EnvironmentName, KeyStatus, ParsedKey, ServiceName, Timestamp, VerifyCode};
use serde_json::json;

use keyward_core::{Clock, Permission};
use keyward_store::Store;

use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::authz::{Authz, Operation};
use crate::catalog::Catalog;
use crate::events::Events;
use crate::guard::{Guard, Guarded};
use crate::integrity::Integrity;
use crate::keys::Keys;
use crate::limiter::{LimitRequest, Limiter};
use crate::quotas::QuotaBook;
use crate::usage::UsageRecorder;
use crate::{Actor, CachedKey, ServiceError, VerifyCache, VerifyRequest};

/// The outcome of a verification. `key` is present whenever the presented key matched a stored
/// key, so callers can report whose key was refused.
#[derive(Debug, Clone)]
pub struct Verification {
    pub code: VerifyCode,
    pub key: Option<Arc<CachedKey>>,
    /// For INSUFFICIENT_PERMISSIONS and IP_DENIED: what was missing or refused.
    pub unmet: Option<String>,
    /// Each applicable rate limit after this request, in the key's order.
    pub ratelimits: Vec<RateLimitStatus>,
    /// For RATE_LIMITED: seconds until a request of the same cost would be admitted.
    pub retry_after_s: Option<u64>,
    /// The concurrency lease taken, when asked for and the key has a concurrency limit.
    pub lease: Option<crate::Lease>,
    /// For a key with a quota: the credits left after this request.
    pub quota_remaining: Option<u64>,
    /// The request was admitted, but a rate limit is past its warning threshold.
    pub warning: bool,
    /// For a key blocked after repeated violations: until when.
    pub blocked_until: Option<keyward_core::Timestamp>,
}

/// Past this share of a limit, verify warns (`warning`) and a `ratelimit.warning` event is
/// sent, once per window.
pub const WARNING_PERCENT: u8 = 80;

/// Where a key stands against one of its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStatus {
    pub name: Arc<str>,
    pub limit: u64,
    pub period_s: u64,
    pub remaining: u64,
    /// Seconds until the limit is back at its full allowance (rounded up).
    pub reset_s: u64,
}

fn ceil_s(ns: i64) -> u64 {
    u64::try_from(ns.max(0))
        .unwrap_or(0)
        .div_ceil(1_000_000_000)
}

impl Verification {
    fn of(code: VerifyCode) -> Self {
        Verification {
            code,
            key: None,
            unmet: None,
            ratelimits: Vec::new(),
            retry_after_s: None,
            lease: None,
            quota_remaining: None,
            warning: false,
            blocked_until: None,
        }
    }
}

enum Lookup {
    Malformed,
    Unknown,
    Found(Arc<CachedKey>),
}

fn evaluate(key: &CachedKey, now: Timestamp, environment: Option<&EnvironmentName>) -> VerifyCode {
    if key.status == KeyStatus::Revoked {
        VerifyCode::Revoked
    } else if key.expires_at.is_some_and(|at| at <= now) {
        VerifyCode::Expired
    } else if key.status == KeyStatus::Disabled {
        VerifyCode::Disabled
    } else if environment.is_some_and(|env| env != key.environment()) {
        VerifyCode::EnvironmentMismatch
    } else {
        VerifyCode::Valid
    }
}

/// The verify service.
#[derive(Debug)]
pub struct Verifier {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
    cache: Arc<VerifyCache>,
    /// keyward's own protection against key guessing and brute force.
    guard: Guard,
    /// Rate-limit state: in this process unless a cluster-wide limiter is configured.
    limiter: Arc<dyn Limiter>,
    /// Concurrency leases taken by verifications.
    leases: Arc<dyn crate::leases::LeaseTable>,
    quotas: Arc<QuotaBook>,
    escalations: Arc<dyn crate::escalation::EscalationTable>,
    usage: UsageRecorder,
    events: Arc<Events>,
    audit: Arc<AuditLog>,
    authz: Arc<Authz>,
    integrity: Arc<Integrity>,
    /// Disables keys blocked too often.
    keys: Arc<Keys>,
}

/// What the verify service is made of.
pub(crate) struct VerifierParts {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub catalog: Arc<Catalog>,
    pub cache: Arc<VerifyCache>,
    pub guard: crate::GuardConfig,
    /// A shared limiter, or `None` for this process's own.
    pub limiter: Option<Arc<dyn Limiter>>,
    /// A shared lease table, or `None` for this process's own.
    pub leases: Option<Arc<dyn crate::leases::LeaseTable>>,
    /// A shared escalation table, or `None` for this process's own.
    pub escalations: Option<Arc<dyn crate::escalation::EscalationTable>>,
    pub quotas: Arc<QuotaBook>,
    pub usage: UsageRecorder,
    pub events: Arc<Events>,
    pub audit: Arc<AuditLog>,
    pub authz: Arc<Authz>,
    pub integrity: Arc<Integrity>,
    pub keys: Arc<Keys>,
}

impl Verifier {
    pub(crate) fn new(parts: VerifierParts) -> Self {
        Verifier {
            store: parts.store,
            clock: parts.clock,
            catalog: parts.catalog,
            cache: parts.cache,
            guard: Guard::new(parts.guard),
            limiter: parts
                .limiter
                .unwrap_or_else(|| Arc::new(crate::limiter::LocalLimiter::new())),
            leases: parts
                .leases
                .unwrap_or_else(|| Arc::new(crate::leases::Leases::default())),
            quotas: parts.quotas,
            escalations: parts
                .escalations
                .unwrap_or_else(|| Arc::new(crate::escalation::Escalations::default())),
            usage: parts.usage,
            events: parts.events,
            audit: parts.audit,
            authz: parts.authz,
            integrity: parts.integrity,
            keys: parts.keys,
        }
    }

    pub fn cache(&self) -> &VerifyCache {
        &self.cache
    }

    /// Usage events dropped because the buffer was full.
    pub fn usage_events_dropped(&self) -> u64 {
        self.usage.dropped()
    }

    /// Failed attempts from addresses the full failed-attempt table could not track.
    pub fn guard_untracked(&self) -> u64 {
        self.guard.untracked()
    }

    /// Ends a concurrency lease taken by a verification. False if it is unknown or lapsed, or
    /// of a key of an environment `actor` (if any) cannot reach: that lease is left alone and
    /// the refusal audited, and the caller learns no more than for an unknown lease.
    pub async fn release_lease(&self, id: &str, actor: Option<&Actor>) -> bool {
        let reaches = |env: &keyward_core::EnvironmentName| actor.is_none_or(|a| a.may_manage(env));
        let released = self.leases.release(id, self.clock.now(), &reaches).await;
        match released {
            crate::leases::Release::Released => true,
            crate::leases::Release::Unknown => false,
            crate::leases::Release::OutOfReach(environment) => {
                if let Some(actor) = actor {
                    let refusal = crate::Refusal::OutOfScope { environment };
                    self.authz
                        .refuse(actor, Operation::KeyVerify, Some(id.to_owned()), refusal)
                        .await;
                }
                false
            }
        }
    }

    /// Forgets idle state: rate-limit windows, guard entries, lapsed leases and escalations.
    pub(crate) fn sweep_idle(&self) {
        let now = self.clock.now();
        let now_ns = now.unix_ms().saturating_mul(1_000_000);
        self.limiter.sweep(now_ns);
        self.guard.sweep(now_ns);
        self.leases.sweep(now);
        self.escalations.sweep(now);
    }

    /// Writes what remains of the usage batch and stops its writer.
    pub(crate) async fn shutdown(&self) {
        self.usage.shutdown().await;
    }

    /// Verifies a key presented to a protected API. `environment`, when given, is the
    /// environment the caller expects the key to belong to.
    ///
    /// Errors only when the store is needed and unreachable; every answer about the key itself,
    /// valid or not, is a [`Verification`].
    pub async fn verify(
        &self,
        presented: &str,
        request: &VerifyRequest<'_>,
    ) -> Result<Verification, ServiceError> {
        // An address that has been guessing keys is refused before any lookup.
        if let Some(ip) = request.ip
            && let Some(wait) = self
                .guard
                .blocked(Guarded::Verification, ip, self.clock.now())
        {
            return Ok(Verification {
                unmet: Some("too many failed verifications from this address".into()),
                retry_after_s: Some(wait),
                ..Verification::of(VerifyCode::RateLimited)
            });
        }
        let key = match self.lookup(presented).await? {
            // A key outside the caller's scope answers as an unknown one, but it is a real key:
            // no guessing is counted against the address.
            Lookup::Found(key)
                if request
                    .scope
                    .is_some_and(|scope| !scope.contains(key.environment())) =>
            {
                return Ok(Verification::of(VerifyCode::NotFound));
            }
            Lookup::Found(key) if key.service != ServiceName::Keyward => key,
            // Admin keys are not API keys: they never pass verification for a protected API.
            other => {
                let code = match other {
                    Lookup::Malformed => VerifyCode::Malformed,
                    _ => VerifyCode::NotFound,
                };
                self.guard_failure(Guarded::Verification, request.ip).await;
                return Ok(Verification::of(code));
            }
        };
        let now = self.clock.now();
        let mut verdict = Verification {
            code: evaluate(&key, now, request.environment),
            ..Verification::of(VerifyCode::Valid)
        };
        if verdict.code == VerifyCode::Valid
            && let Err((refused, why)) = self.check_access(&key, request, now)
        {
            verdict.code = refused;
            verdict.unmet = Some(why);
        }
        // A lease first: if the rate limits then refuse the request, the lease is given back.
        if verdict.code == VerifyCode::Valid
            && request.lease
            && let Some(concurrency) = key.concurrency
        {
            let id = keyward_crypto::new_request_id().map_err(ServiceError::internal)?;
            match self
                .leases
                .acquire(
                    key.id,
                    key.environment(),
                    concurrency.limit,
                    concurrency.lease_timeout_s,
                    now,
                    id,
                )
                .await
            {
                Ok(lease) => verdict.lease = Some(lease),
                Err(earliest) => {
                    verdict.code = VerifyCode::RateLimited;
                    verdict.unmet = Some(format!(
                        "{} requests already in flight (the key's concurrency limit)",
                        concurrency.limit
                    ));
                    verdict.retry_after_s = Some(
                        ceil_s((earliest.unix_ms() - now.unix_ms()).saturating_mul(1_000_000))
                            .max(1),
                    );
                }
            }
        }
        // Credits next: spent now, given back if the rate limits refuse the request.
        let mut spent = 0;
        if verdict.code == VerifyCode::Valid
            && let Some(config) = &key.quota
        {
            match self.quotas.spend(key.id, config, now, request.cost) {
                Ok(remaining) => {
                    spent = request.cost;
                    verdict.quota_remaining = Some(remaining);
                }
                Err(remaining) => {
                    verdict.code = VerifyCode::UsageExceeded;
                    verdict.quota_remaining = Some(remaining);
                    verdict.unmet = Some(format!(
                        "the key's quota has {remaining} left, the request costs {}",
                        request.cost
                    ));
                }
            }
        }
        // A key blocked for repeated violations is refused before its limits are counted.
        if verdict.code == VerifyCode::Valid
            && key
                .ratelimits
                .as_ref()
                .is_some_and(|l| l.graduated.is_some_and(|g| g.block.is_some()))
            && let Some(until) = self.escalations.blocked_until(key.id, now).await
        {
            verdict.code = VerifyCode::RateLimited;
            verdict.blocked_until = Some(until);
            verdict.retry_after_s =
                Some(ceil_s((until.unix_ms() - now.unix_ms()).saturating_mul(1_000_000)).max(1));
            verdict.unmet = Some(format!(
                "blocked until {until} after repeated rate-limit violations"
            ));
        }
        // Limits count only requests that would otherwise be served.
        if verdict.code == VerifyCode::Valid
            && let Some(limits) = &key.ratelimits
        {
            let mut applies = [false; crate::limiter::MAX_LIMITS];
            for (slot, limit) in applies.iter_mut().zip(limits.list.iter()) {
                *slot = limit.applies(request.method, request.path);
            }
            let applies = applies.get(..limits.list.len()).unwrap_or_default();
            if applies.iter().any(|a| *a) {
                let request = LimitRequest {
                    key: key.id,
                    limits: &limits.list,
                    applies,
                    cost: request.cost,
                    now: now.unix_ms().saturating_mul(1_000_000),
                    fingerprint: limits.fingerprint,
                };
                let outcomes = match self.limiter.check_without_waiting(request) {
                    Some(outcomes) => outcomes,
                    None => self.limiter.check(request).await,
                };
                let applicable = limits
                    .list
                    .iter()
                    .zip(limits.names.iter())
                    .zip(applies)
                    .filter(|(_, a)| **a)
                    .map(|(l, _)| l);
                let all_admitted = outcomes.iter().all(|o| o.admitted);
                let now_ns = now.unix_ms().saturating_mul(1_000_000);
                for ((limit, name), outcome) in applicable.zip(&outcomes) {
                    let period_ns = i64::try_from(limit.period_s)
                        .unwrap_or(i64::MAX / 1_000_000_000)
                        .saturating_mul(1_000_000_000);
                    let window = now_ns / period_ns.max(1);
                    let used = limit.limit.saturating_sub(outcome.remaining);
                    if !outcome.admitted {
                        self.events.notify_once(
                            keyward_core::EventKind::RatelimitExceeded,
                            key.id,
                            name,
                            window,
                            json!({ "limit": name.as_ref(), "quota": limit.limit, "period_s": limit.period_s, "retry_after_s": ceil_s(outcome.retry_after_ns) }),
                        );
                    } else if all_admitted
                        && u128::from(used) * 100
                            >= u128::from(limit.limit)
                                * u128::from(
                                    limits
                                        .graduated
                                        .map_or(WARNING_PERCENT, |g| g.warning_percent),
                                )
                    {
                        verdict.warning = true;
                        self.events.notify_once(
                            keyward_core::EventKind::RatelimitWarning,
                            key.id,
                            name,
                            window,
                            json!({ "limit": name.as_ref(), "quota": limit.limit, "period_s": limit.period_s, "remaining": outcome.remaining }),
                        );
                    }
                    verdict.ratelimits.push(RateLimitStatus {
                        name: Arc::clone(name),
                        limit: limit.limit,
                        period_s: limit.period_s,
                        remaining: outcome.remaining,
                        reset_s: ceil_s(outcome.reset_ns),
                    });
                }
                if let Some(wait) = outcomes
                    .iter()
                    .filter(|o| !o.admitted)
                    .map(|o| o.retry_after_ns)
                    .max()
                {
                    verdict.code = VerifyCode::RateLimited;
                    verdict.retry_after_s = Some(ceil_s(wait).max(1));
                    if let Some(rule) = limits.graduated.and_then(|g| g.block) {
                        self.escalate(&key, &rule, now).await;
                    }
                }
            }
        }
        if verdict.code == VerifyCode::Valid {
            self.usage.record(key.id, now);
        } else {
            if let Some(lease) = verdict.lease.take() {
                let _ = self.leases.release(&lease.id, now, &|_| true).await;
            }
            if spent > 0 {
                self.quotas.give_back(key.id, spent);
                verdict.quota_remaining = verdict.quota_remaining.map(|r| r + spent);
            }
        }
        verdict.key = Some(key);
        Ok(verdict)
    }

    async fn lookup(&self, presented: &str) -> Result<Lookup, ServiceError> {
        let Ok(parsed) = ParsedKey::parse(presented) else {
            return Ok(Lookup::Malformed);
        };
        let Some(hash) = self.catalog.hash_of(&parsed) else {
            return Ok(Lookup::Unknown);
        };
        if let Some(key) = self.cache.get(&hash) {
            return Ok(Self::same_environment(&parsed, key));
        }
        if !self.cache.may_exist(&hash) {
            return Ok(Lookup::Unknown);
        }
        let epoch = self.cache.epoch(&hash);
        match self.store.key_by_hash(hash).await? {
            Some(record) => {
                // A record edited without the unseal key, or on a tampered plan, is no key.
                let Some(record) = self.integrity.intact_key(record) else {
                    return Ok(Lookup::Unknown);
                };
                // A plan tampered with, or gone although a live key is on it (no plan with keys
                // on it can be deleted), would take the key's limits away: fail closed.
                if let Some(plan) = record.access.plan.as_ref().filter(|p| {
                    self.catalog
                        .plan_untrusted(p, record.status != keyward_core::KeyStatus::Revoked)
                }) {
                    self.integrity.report(format!(
                        "key {} is on plan {plan}, which was tampered with or removed",
                        record.id
                    ));
                    return Ok(Lookup::Unknown);
                }
                let Some(env) = self.catalog.environment(record.environment.as_str()) else {
                    return Ok(Lookup::Unknown);
                };
                let (held, grants) = self.catalog.held_by(&record);
                self.quotas.seed_for(&record).await?;
                let limits = self.catalog.limits_of(&record);
                let key = self.cache.entry_for(&record, env, held, grants, limits);
                self.cache.insert_if_current(hash, Arc::clone(&key), epoch);
                Ok(Self::same_environment(&parsed, key))
            }
            None => Ok(Lookup::Unknown),
        }
    }

    /// Counts a refusal by the key's limits against its plan's block rule; blocks the key, and
    /// after enough blocks disables it (an audited change), recording each step as an event.
    async fn escalate(
        &self,
        key: &CachedKey,
        rule: &keyward_core::BlockRule,
        now: keyward_core::Timestamp,
    ) {
        use crate::escalation::Escalated;
        use keyward_core::EventKind;
        let blocked = |until| json!({ "until": until, "violations": rule.violations });
        match self.escalations.violation(key.id, rule, now).await {
            Escalated::Nothing => {}
            Escalated::Blocked(until) => {
                self.events
                    .emit(EventKind::RatelimitBlock, Some(key.id), blocked(until));
            }
            Escalated::Disable(until) => {
                self.events
                    .emit(EventKind::RatelimitBlock, Some(key.id), blocked(until));
                // The disable commits on a task of its own: a verification whose client goes
                // away cannot leave it stored but not yet seen by the cache.
                let (keys, events) = (Arc::clone(&self.keys), Arc::clone(&self.events));
                let id = key.id;
                let disable = tokio::spawn(async move {
                    match keys.disable_for_violations(id).await {
                        Ok(true) => events.emit(
                            EventKind::KeyDisabled,
                            Some(id),
                            json!({ "reason": "repeated rate-limit violations" }),
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(error = %e, key_id = %id, "could not disable a key after repeated violations")
                        }
                    }
                });
                let _ = disable.await;
            }
        }
    }

    /// A stored key answers only to a presented key of its own environment. The HMAC already
    /// makes that so (each environment has its own secret); this also holds if rows of two
    /// environments were ever mixed up in the store.
    fn same_environment(parsed: &ParsedKey<'_>, key: Arc<CachedKey>) -> Lookup {
        if key.environment().as_str() == parsed.environment() {
            Lookup::Found(key)
        } else {
            Lookup::Unknown
        }
    }

    /// Authenticates an admin caller by its bearer key and decides whether it may perform
    /// `op` at all (its permission, and for operations on shared objects an unscoped key). The
    /// use case decides again once it knows its target. Every refusal is audited; if that audit
    /// entry cannot be written the caller is still refused.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        op: Operation,
        client: Option<std::net::IpAddr>,
    ) -> Result<Actor, ServiceError> {
        self.authenticate_for(bearer, op, None, client).await
    }

    /// [`Verifier::authenticate`] for an operation on a secret path (or listing glob), whose
    /// permission is scoped by it.
    pub async fn authenticate_for(
        &self,
        bearer: Option<&str>,
        op: Operation,
        path: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<Actor, ServiceError> {
        let permission = op.permission();
        if let Some(ip) = client
            && let Some(retry_after_s) =
                self.guard.blocked(Guarded::AdminAuth, ip, self.clock.now())
        {
            return Err(ServiceError::TooManyFailures { retry_after_s });
        }
        let refusal = match bearer {
            None => Some("missing"),
            Some(presented) => match self.lookup(presented).await? {
                Lookup::Malformed => Some("malformed"),
                Lookup::Unknown => Some("unknown_key"),
                Lookup::Found(key) => {
                    // Both the key's network rules and its (admin) environment's apply.
                    let permits = |n: &keyward_core::NetworkRules| {
                        n.is_empty() || client.is_some_and(|ip| n.permits(ip))
                    };
                    let network_ok =
                        key.network.as_deref().is_none_or(permits) && permits(&key.env.network);
                    let reason = match evaluate(&key, self.clock.now(), None) {
                        _ if key.service != ServiceName::Keyward => Some("not_an_admin_key"),
                        VerifyCode::Valid if !network_ok => Some("ip_denied"),
                        VerifyCode::Valid => None,
                        VerifyCode::Revoked => Some("revoked"),
                        VerifyCode::Expired => Some("expired"),
                        _ => Some("disabled"),
                    };
                    match reason {
                        Some(reason) => Some(reason),
                        None => {
                            let actor = Actor::new(key, self.clock.now(), client);
                            return match crate::authz::admit(&actor, op, path) {
                                Ok(()) => Ok(actor),
                                Err(refusal) => {
                                    Err(self.authz.refuse(&actor, op, None, refusal).await)
                                }
                            };
                        }
                    }
                }
            },
        };
        let reason = refusal.unwrap_or("unknown_key");
        let start = bearer
            .and_then(|b| ParsedKey::parse(b).ok())
            .map(|p| p.start().to_owned());
        self.audit_refusal(PendingEntry {
            actor: "anonymous".into(),
            action: AuditAction::AuthFailed,
            target: None,
            details: json!({ "reason": reason, "key_start": start, "permission": permission, "ip": client }),
        })
        .await;
        self.guard_failure(Guarded::AdminAuth, client).await;
        Err(ServiceError::Unauthorized)
    }

    /// Authenticates the holder of any key (API or admin) for calls about that key itself
    /// (`/v1/self`): the key must verify now (active, not expired, from a network its rules and
    /// its environment's permit). Failures are audited and count towards the address's guard,
    /// as failed admin authentications do. Returns the key's id.
    pub async fn authenticate_holder(
        &self,
        bearer: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<keyward_core::KeyId, ServiceError> {
        if let Some(ip) = client
            && let Some(retry_after_s) =
                self.guard.blocked(Guarded::AdminAuth, ip, self.clock.now())
        {
            return Err(ServiceError::TooManyFailures { retry_after_s });
        }
        let reason = match bearer {
            None => "missing",
            Some(presented) => match self.lookup(presented).await? {
                Lookup::Malformed => "malformed",
                Lookup::Unknown => "unknown_key",
                Lookup::Found(key) => {
                    let permits = |n: &keyward_core::NetworkRules| {
                        n.is_empty() || client.is_some_and(|ip| n.permits(ip))
                    };
                    let network_ok =
                        key.network.as_deref().is_none_or(permits) && permits(&key.env.network);
                    match evaluate(&key, self.clock.now(), None) {
                        VerifyCode::Valid if network_ok => return Ok(key.id),
                        VerifyCode::Valid => "ip_denied",
                        VerifyCode::Revoked => "revoked",
                        VerifyCode::Expired => "expired",
                        _ => "disabled",
                    }
                }
            },
        };
        let start = bearer
            .and_then(|b| ParsedKey::parse(b).ok())
            .map(|p| p.start().to_owned());
        self.audit_refusal(PendingEntry {
            actor: "anonymous".into(),
            action: AuditAction::AuthFailed,
            target: None,
            details: json!({ "reason": reason, "key_start": start, "call": "self", "ip": client }),
        })
        .await;
        self.guard_failure(Guarded::AdminAuth, client).await;
        Err(ServiceError::Unauthorized)
    }

    async fn audit_refusal(&self, entry: PendingEntry) {
        if let Err(e) = self.audit.only(vec![entry]).await {
            tracing::error!(error = %e, "could not audit a refused admin request");
        }
    }

    /// Records a failure from `ip`; audits the moment the address becomes blocked.
    async fn guard_failure(&self, kind: Guarded, ip: Option<std::net::IpAddr>) {
        let Some(ip) = ip else { return };
        if self.guard.fail(kind, ip, self.clock.now()) {
            tracing::warn!(%ip, guard = kind.name(), "client address blocked after repeated failures");
            let entry = PendingEntry {
                actor: "system".into(),
                action: AuditAction::GuardBlock,
                target: Some(ip.to_string()),
                details: json!({ "guard": kind.name() }),
            };
            if let Err(e) = self.audit.only(vec![entry]).await {
                tracing::error!(error = %e, "could not audit a guard block");
            }
            self.events.emit(
                keyward_core::EventKind::GuardBlock,
                None,
                json!({ "guard": kind.name(), "ip": ip }),
            );
        }
    }

    /// Verdict details beyond status and expiry: network, path rules, then permissions. Returns
    /// the failing code and what was unmet.
    pub(crate) fn check_access(
        &self,
        key: &CachedKey,
        request: &VerifyRequest<'_>,
        now: Timestamp,
    ) -> Result<(), (keyward_core::VerifyCode, String)> {
        use keyward_core::VerifyCode::{InsufficientPermissions, IpDenied};
        let env = &key.env;
        let env_network = Some(&env.network).filter(|n| !n.is_empty());
        if key.network.is_some() || env_network.is_some() {
            let Some(ip) = request.ip else {
                return Err((
                    IpDenied,
                    "the key is restricted by network, and no ip was given".into(),
                ));
            };
            if let Some(network) = &key.network
                && !network.permits(ip)
            {
                return Err((
                    IpDenied,
                    "the address is not allowed by the key's network rules".into(),
                ));
            }
            if let Some(network) = env_network
                && !network.permits(ip)
            {
                return Err((
                    IpDenied,
                    "the address is not allowed by the environment's network rules".into(),
                ));
            }
        }
        if let Some(rules) = &key.path_rules {
            let (Some(method), Some(path)) = (request.method, request.path) else {
                return Err((
                    InsufficientPermissions,
                    "the key is limited to path rules; give method and path".into(),
                ));
            };
            if !rules.iter().any(|r| r.matches(method, path)) {
                return Err((
                    InsufficientPermissions,
                    "the method and path are outside the key's path rules".into(),
                ));
            }
        }
        if let Some(query) = request.permissions {
            let policy = &env.record.policy;
            let holds = |wanted: &str| policy.allows_use(wanted) && key.holds(wanted, now);
            query
                .evaluate(&holds)
                .map_err(|unmet| (InsufficientPermissions, unmet.to_string()))?;
        }
        Ok(())
    }

    /// The permissions a key may use now: what it holds, live grants included, less what its
    /// environment's policy removes.
    pub fn effective_permissions<'k>(
        &self,
        key: &'k CachedKey,
        now: Timestamp,
    ) -> std::borrow::Cow<'k, [Permission]> {
        let policy = &key.env.record.policy;
        let unrestricted =
            policy.forbidden_permissions.is_empty() && policy.permission_ceiling.is_none();
        if unrestricted && key.grants.is_empty() {
            // Already sorted and without duplicates: lent, not copied.
            return std::borrow::Cow::Borrowed(&key.permissions.list);
        }
        let mut out: Vec<Permission> = key
            .permissions
            .list
            .iter()
            .chain(
                key.grants
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(p, _)| p),
            )
            .filter(|p| unrestricted || policy.removes(p).is_none())
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        std::borrow::Cow::Owned(out)
    }
}
