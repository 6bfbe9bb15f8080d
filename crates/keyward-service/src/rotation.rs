//! Rotation by policy: which policy applies to a key, the scheduler that rolls each key once it
//! is due, and the holder's own rotation (`POST /v1/self/rotate`) with the sealed handover of a
//! successor the scheduler made.
//!
//! Exactly once, across restarts and nodes: a roll sets the old key's `rolled_to` in the same
//! write as it inserts the successor, under the writer, after reading the key afresh, so a
//! second attempt (a retry, a restart, a second scheduler) finds it rolled and does nothing.
//! The scheduler keeps no state of its own: each run scans the store for what is due, so what
//! fell due while keyward was down is done at the first run after it starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_core::OutboxEvent;
use keyward_core::audit::AuditAction;
use keyward_core::{
    Clock, EnvironmentName, KeyId, KeyRecord, KeyStatus, KeySummary, PolicySource, RollCause,
    RotationPolicy, Timestamp,
};
use keyward_crypto::PlaintextKey;
use keyward_store::{Changes, Handover, Store};
use serde_json::json;

use crate::ServiceError;
use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::catalog::Catalog;
use crate::integrity::Integrity;
use crate::keys::{Keys, Roller};
use crate::vault::OpenVault;

/// Where a policy is set, for naming the field a bad one came in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field {
    Key,
    Role,
    Environment,
}

/// Checks a policy's own values, naming the field as the client sent it.
pub(crate) fn check_policy(at: Field, policy: &RotationPolicy) -> Result<(), ServiceError> {
    policy.check().map_err(|e| {
        let field = match (at, e.field) {
            (Field::Key | Field::Role, "every_days") => "rotation.every_days",
            (Field::Key | Field::Role, "grace_hours") => "rotation.grace_hours",
            (Field::Key | Field::Role, "delivery_cap_hours") => "rotation.delivery_cap_hours",
            (Field::Environment, "delivery_cap_hours") => "policy.rotation.delivery_cap_hours",
            (Field::Key | Field::Role, _) => "rotation.notice_days",
            (Field::Environment, "every_days") => "policy.rotation.every_days",
            (Field::Environment, "grace_hours") => "policy.rotation.grace_hours",
            (Field::Environment, _) => "policy.rotation.notice_days",
        };
        ServiceError::InvalidField {
            field,
            message: e.message,
        }
    })
}

/// A key's rotation as it applies now: the policy, where it comes from, and its times.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveRotation {
    pub policy: RotationPolicy,
    pub source: PolicySource,
    /// When the scheduler rolls the key.
    pub due_at: Timestamp,
    /// From when the holder is told, and may rotate the key itself.
    pub notice_at: Timestamp,
}

/// The policy that applies to `key`: its own, else the shortest of its roles', else its
/// environment's. (Roles held through temporary grants do not count: the key would change
/// schedule when they lapse.)
pub(crate) fn effective(key: &KeySummary, catalog: &Catalog) -> Option<EffectiveRotation> {
    // Looked up once: the environment's policy is the fallback and the ceiling.
    let env_policy = catalog
        .environment(key.environment.as_str())
        .and_then(|env| env.record.policy.rotation);
    let (policy, source) = if let Some(own) = key.rotation {
        (own, PolicySource::Key)
    } else if let Some((policy, role)) = key
        .roles
        .iter()
        .filter_map(|name| {
            let role = catalog.role(name)?;
            role.rotation.map(|p| (p, name.to_string()))
        })
        .min_by_key(|(p, name)| (p.every_days, name.clone()))
    {
        (policy, PolicySource::Role(role))
    } else {
        let policy = env_policy?;
        (
            policy,
            PolicySource::Environment(key.environment.to_string()),
        )
    };
    // A key's or a role's policy may be stricter than its environment's, never looser: the
    // environment's period and grace are ceilings.
    let policy = match env_policy {
        Some(ceiling) => {
            let every_days = policy.every_days.min(ceiling.every_days);
            let grace_hours = policy.grace_hours.min(ceiling.grace_hours);
            let default_cap = |p: &RotationPolicy| p.grace_hours.saturating_add(72);
            let cap = policy
                .delivery_cap_hours
                .unwrap_or_else(|| default_cap(&policy))
                .min(
                    ceiling
                        .delivery_cap_hours
                        .unwrap_or_else(|| default_cap(&ceiling)),
                )
                .min(every_days.saturating_mul(24).saturating_sub(1))
                .max(grace_hours);
            RotationPolicy {
                every_days,
                grace_hours,
                notice_days: policy.notice_days.min(every_days.saturating_sub(1)),
                delivery_cap_hours: Some(cap),
            }
        }
        None => policy,
    };
    Some(EffectiveRotation {
        policy,
        source,
        due_at: policy.due_at(key.created_at),
        notice_at: policy.notice_at(key.created_at),
    })
}

/// What one scheduler run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationRun {
    /// Keys looked at.
    pub scanned: u64,
    /// Keys rolled by their policy.
    pub rotated: u64,
    /// Due keys that could not be rolled (audited once a day each).
    pub failed: u64,
    /// Successors nobody collected before the old key's grace ended.
    pub lapsed: u64,
    /// `key.expiring` and `key.expired` events written (each once).
    pub notices: u64,
    /// Successors written to their keys' delivery targets.
    pub delivered: u64,
}

/// What the holder of a key gets from `POST /v1/self/rotate`.
#[derive(Debug)]
pub struct SelfRotation {
    /// The presented key, as it is now (`expires_at`: the end of its grace period).
    pub previous: KeyRecord,
    pub successor_id: KeyId,
    /// The successor and its plaintext, the one time it is handed out; `None` when it was
    /// handed out before.
    pub successor: Option<(KeyRecord, PlaintextKey)>,
}

/// Audited failures are repeated at most this often per key.
const FAILURE_REPORT_MS: i64 = 86_400_000;

/// Keys read per page of the scan.
const SCAN_PAGE: u32 = 2_000;

/// The rotation service.
#[derive(Debug)]
pub struct Rotation {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
    audit: Arc<AuditLog>,
    keys: Arc<Keys>,
    vault: Arc<OpenVault>,
    integrity: Arc<Integrity>,
    /// When each failing key's failure was last audited. Recomputable: after a restart a
    /// failure is audited once more.
    failures: Mutex<HashMap<KeyId, Timestamp>>,
    secrets: Arc<crate::secrets::Secrets>,
    /// Internal networks KV delivery targets may be on.
    allowed: keyward_core::CidrSet,
    /// For KV v2 delivery targets: no redirects, bounded.
    client: reqwest::Client,
    /// Since start: keys rolled by the scheduler, and due rotations that failed.
    rotated: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    /// Keys the last scan found due.
    last_due: std::sync::atomic::AtomicU64,
}

impl Rotation {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        catalog: Arc<Catalog>,
        audit: Arc<AuditLog>,
        keys: Arc<Keys>,
        vault: Arc<OpenVault>,
        integrity: Arc<Integrity>,
        secrets: Arc<crate::secrets::Secrets>,
        allowed: keyward_core::CidrSet,
    ) -> Result<Self, ServiceError> {
        let client = crate::outbound::client(&allowed, std::time::Duration::from_secs(5))?;
        Ok(Rotation {
            allowed,
            secrets,
            client,
            store,
            clock,
            catalog,
            audit,
            keys,
            vault,
            integrity,
            failures: Mutex::new(HashMap::new()),
            rotated: std::sync::atomic::AtomicU64::new(0),
            failed: std::sync::atomic::AtomicU64::new(0),
            last_due: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Keys the last scan found due for rotation.
    pub fn last_due(&self) -> u64 {
        self.last_due.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keys rolled by the scheduler, and due rotations that failed, since start (metrics).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.rotated.load(std::sync::atomic::Ordering::Relaxed),
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The rotation that applies to `key` now, if any does. A key that can no longer be
    /// rotated (revoked, rolled) has none.
    pub fn of(&self, key: &KeyRecord) -> Option<EffectiveRotation> {
        if key.status == KeyStatus::Revoked || key.rolled_to.is_some() {
            return None;
        }
        effective(&key.summary(), &self.catalog)
    }

    /// Rolls every key that is due, and drops the successors nobody collected in time. Each
    /// key is read again under the writer before it is rolled, so a key is rolled once
    /// however many runs (or nodes) find it due.
    pub async fn run_due(&self) -> Result<RotationRun, ServiceError> {
        let mut run = RotationRun::default();
        let mut after = None;
        loop {
            let page = self.store.rotation_candidates(after, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let now = self.clock.now();
            let mut notices = Vec::new();
            for key in &page {
                run.scanned += 1;
                let due = effective(key, &self.catalog);
                notices.extend(notices_for(key, due.as_ref(), now));
                if key.is_expired_at(now) {
                    continue;
                }
                let Some(due) = due else {
                    continue;
                };
                if due.due_at > now {
                    continue;
                }
                match self.rotate_due(key.id).await {
                    Ok(true) => run.rotated += 1,
                    Ok(false) => {}
                    Err(e) => {
                        run.failed += 1;
                        self.report_failure(key, &due, &e).await;
                    }
                }
            }
            run.notices += self.send_notices(notices).await?;
        }
        run.delivered = self.deliver_due().await?;
        run.lapsed = self.sweep_lapsed_handovers().await?;
        if run.rotated > 0 || run.failed > 0 {
            tracing::info!(
                rotated = run.rotated,
                failed = run.failed,
                scanned = run.scanned,
                "rotation run"
            );
        }
        self.rotated
            .fetch_add(run.rotated, std::sync::atomic::Ordering::Relaxed);
        self.failed
            .fetch_add(run.failed, std::sync::atomic::Ordering::Relaxed);
        self.last_due.store(
            run.rotated + run.failed,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(run)
    }

    /// Rolls one key by its policy if it is still due. `Ok(false)`: it no longer is.
    async fn rotate_due(&self, id: KeyId) -> Result<bool, ServiceError> {
        self.audit.retrying(|| self.rotate_due_once(id)).await
    }

    async fn rotate_due_once(&self, id: KeyId) -> Result<bool, ServiceError> {
        let mut head = self.keys.writer().await;
        let old = match self.keys.for_change(id).await {
            Ok(old) => old,
            Err(ServiceError::Conflict(_) | ServiceError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let now = self.clock.now();
        let Some(due) = self.of(&old) else {
            return Ok(false);
        };
        if due.due_at > now || old.is_expired_at(now) {
            return Ok(false);
        }
        // With a delivery target the grace starts once the successor is delivered; until then
        // the old key works up to the policy's cap.
        let delivering = old.lifecycle.delivery.is_some();
        let grace_s = if delivering {
            u64::try_from(due.policy.delivery_cap_ms() / 1000).unwrap_or(0)
        } else {
            due.policy.grace_s()
        };
        let mut succession = self
            .keys
            .succession(old, grace_s, Roller::Scheduler)
            .await?;
        let (old, new) = (&succession.old, &succession.new);
        let grace_end = old.expires_at.unwrap_or(now);
        let sealed = self.vault.seal_handover(
            &new.environment,
            old.id,
            new.id,
            succession.plaintext.expose().as_bytes(),
        )?;
        succession.changes.insert_handovers.push(Handover {
            predecessor: old.id,
            successor: new.id,
            environment: new.environment.clone(),
            sealed,
            expires_at: grace_end,
            attempts: 0,
            next_attempt_at: delivering.then_some(now),
            last_error: None,
        });
        if let Some(entry) = succession.entries.first_mut()
            && let Some(details) = entry.details.as_object_mut()
        {
            details.insert("policy".into(), json!(due.policy));
            details.insert("source".into(), json!(due.source));
            details.insert("due_at".into(), json!(due.due_at));
        }
        let (old, new, _plaintext) = self.keys.commit_succession(&mut head, succession).await?;
        drop(head);
        tracing::info!(key_id = %old.id, successor = %new.id, "key rotated by its policy");
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&old.id);
        Ok(true)
    }

    /// Audits a rotation that failed, once a day per key, and logs it.
    async fn report_failure(
        &self,
        key: &KeySummary,
        due: &EffectiveRotation,
        error: &ServiceError,
    ) {
        let now = self.clock.now();
        {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if failures
                .get(&key.id)
                .is_some_and(|at| now.unix_ms() - at.unix_ms() < FAILURE_REPORT_MS)
            {
                return;
            }
            failures.insert(key.id, now);
        }
        tracing::warn!(key_id = %key.id, error = %error, "a due rotation failed; will retry");
        let entry = PendingEntry {
            actor: "system".into(),
            action: AuditAction::KeyRotationFailed,
            target: Some(key.id.to_string()),
            details: json!({
                "start": key.start,
                "policy": due.policy,
                "source": due.source,
                "due_at": due.due_at,
                "error": error.to_string(),
            }),
        };
        let event = crate::webhooks::key_event(
            keyward_core::EventType::KeyRotationFailed,
            key,
            now,
            crate::webhooks::notice_id(&[
                "key.rotation_failed",
                &key.id.to_string(),
                &(now.unix_ms() / FAILURE_REPORT_MS).to_string(),
            ]),
            json!({ "due_at": due.due_at, "error": error.to_string() }),
        );
        let mut head = self.keys.writer().await;
        let written = self
            .audit
            .commit(
                &mut head,
                Changes {
                    outbox: vec![event],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not audit a failed rotation");
        }
    }

    /// Writes the notices not written before (each has an id of what it announces).
    async fn send_notices(&self, notices: Vec<OutboxEvent>) -> Result<u64, ServiceError> {
        if notices.is_empty() {
            return Ok(0);
        }
        let known = self
            .store
            .outbox_has(notices.iter().map(|n| n.id.clone()).collect())
            .await?;
        let new: Vec<OutboxEvent> = notices
            .into_iter()
            .filter(|n| !known.contains(&n.id))
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        let count = new.len() as u64;
        self.audit
            .write(
                Changes {
                    outbox: new,
                    ..Changes::default()
                },
                Vec::new(),
            )
            .await?;
        Ok(count)
    }

    /// Writes the successors due for delivery to their targets: on success the old key's grace
    /// starts; on failure the delivery is tried again with backoff, and the failure is audited
    /// and announced (`key.rotation_failed`) once a day.
    async fn deliver_due(&self) -> Result<u64, ServiceError> {
        let mut delivered = 0;
        let now = self.clock.now();
        // A few a run: each may take the client's timeout.
        for handover in self.store.due_handovers(now, 20).await? {
            match self.deliver_one(handover).await {
                Ok(true) => delivered += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "a successor delivery could not be recorded"),
            }
        }
        Ok(delivered)
    }

    async fn deliver_one(&self, mut handover: Handover) -> Result<bool, ServiceError> {
        let old = self.keys.key(handover.predecessor).await?;
        if old.rolled_to != Some(handover.successor) || old.environment != handover.environment {
            self.integrity.report(format!(
                "key handover of {}: it names another key than the roll did",
                old.id
            ));
            return Err(ServiceError::Integrity(
                "a handover names another key".into(),
            ));
        }
        let Some(target) = old.lifecycle.delivery.clone() else {
            // The target was removed since: the successor waits for its holder instead.
            handover.next_attempt_at = None;
            self.audit
                .write(
                    Changes {
                        update_handovers: vec![handover],
                        ..Changes::default()
                    },
                    Vec::new(),
                )
                .await?;
            return Ok(false);
        };
        let successor = self.keys.key(handover.successor).await?;
        if successor.status == KeyStatus::Revoked {
            // Revoked meanwhile: nothing to hand to anyone.
            self.audit
                .write(
                    Changes {
                        delete_handovers: vec![handover.predecessor],
                        ..Changes::default()
                    },
                    vec![PendingEntry {
                        actor: "system".into(),
                        action: AuditAction::KeyHandoverLapse,
                        target: Some(handover.predecessor.to_string()),
                        details: json!({ "reason": "the successor was revoked" }),
                    }],
                )
                .await?;
            return Ok(false);
        }
        let plaintext = self.open_handover(&handover)?;
        let outcome = self.write_to(&target, &old, &successor, &plaintext).await;
        drop(plaintext);
        let now = self.clock.now();
        let mut head = self.keys.writer().await;
        let mut old = self.keys.key(handover.predecessor).await?;
        match outcome {
            Ok(()) => {
                let grace =
                    effective(&old.summary(), &self.catalog).map_or(0, |e| e.policy.grace_s());
                let grace_end = now.plus_seconds(grace);
                old.expires_at = Some(old.expires_at.map_or(grace_end, |at| at.min(grace_end)));
                old.updated_at = now;
                let entry = PendingEntry {
                    actor: "system".into(),
                    action: AuditAction::KeyDelivered,
                    target: Some(old.id.to_string()),
                    details: json!({
                        "successor": successor.id,
                        "successor_start": successor.start,
                        "target": crate::keys::describe_delivery(&target),
                        "attempts": handover.attempts + 1,
                        "old_expires_at": old.expires_at,
                    }),
                };
                self.audit
                    .commit(
                        &mut head,
                        Changes {
                            update_keys: vec![old.clone()],
                            delete_handovers: vec![old.id],
                            ..Changes::default()
                        },
                        vec![entry],
                    )
                    .await?;
                tracing::info!(key_id = %old.id, successor = %successor.id, "successor delivered");
                Ok(true)
            }
            Err(reason) => {
                handover.attempts = handover.attempts.saturating_add(1);
                let wait = crate::webhooks::retry_after(handover.attempts);
                handover.next_attempt_at = Some(Timestamp::from_unix_ms(
                    now.unix_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
                ));
                handover.last_error = Some(reason.clone());
                let mut entries = Vec::new();
                let mut outbox = Vec::new();
                let day = (now.unix_ms() / FAILURE_REPORT_MS).to_string();
                let first_today = {
                    let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                    let fresh = failures
                        .get(&old.id)
                        .is_none_or(|at| now.unix_ms() - at.unix_ms() >= FAILURE_REPORT_MS);
                    if fresh {
                        failures.insert(old.id, now);
                    }
                    fresh
                };
                if first_today {
                    tracing::warn!(key_id = %old.id, reason = %reason, "a successor could not be delivered; will retry");
                    entries.push(PendingEntry {
                        actor: "system".into(),
                        action: AuditAction::KeyDeliveryFailed,
                        target: Some(old.id.to_string()),
                        details: json!({
                            "successor": successor.id,
                            "target": crate::keys::describe_delivery(&target),
                            "attempts": handover.attempts,
                            "error": reason,
                            "old_expires_at": old.expires_at,
                        }),
                    });
                    outbox.push(crate::webhooks::key_event(
                        keyward_core::EventType::KeyRotationFailed,
                        &old.summary(),
                        now,
                        crate::webhooks::notice_id(&[
                            "key.delivery_failed",
                            &old.id.to_string(),
                            &day,
                        ]),
                        json!({
                            "reason": "delivery",
                            "error": reason,
                            "successor_id": successor.id,
                            "old_expires_at": old.expires_at,
                        }),
                    ));
                }
                self.audit
                    .commit(
                        &mut head,
                        Changes {
                            update_handovers: vec![handover],
                            outbox,
                            ..Changes::default()
                        },
                        entries,
                    )
                    .await?;
                Ok(false)
            }
        }
    }

    /// Writes `key` (the successor's plaintext) to `target`. The error names what failed,
    /// never a secret or what the server answered beyond its status.
    async fn write_to(
        &self,
        target: &keyward_core::DeliveryTarget,
        old: &KeyRecord,
        successor: &KeyRecord,
        key: &PlaintextKey,
    ) -> Result<(), String> {
        let mut data = serde_json::Map::new();
        data.insert(target.field.clone(), json!(key.expose()));
        match target.kind {
            keyward_core::DeliveryKind::Vault => {
                data.insert("key_id".into(), json!(successor.id));
                data.insert("start".into(), json!(successor.start));
                self.secrets
                    .write_as(
                        "system".into(),
                        &old.environment,
                        &target.path,
                        crate::secrets::SecretWrite { data, cas: None },
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("writing keyward's vault: {e}"))
            }
            keyward_core::DeliveryKind::Kv2 => {
                let token_path = target.token_path.as_deref().unwrap_or_default();
                let read = self
                    .secrets
                    .read_as("system".into(), &old.environment, token_path, None, None)
                    .await
                    .map_err(|e| format!("reading the token at {token_path}: {e}"))?;
                let token = read
                    .data
                    .get("token")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| format!("the secret {token_path} has no text field token"))?
                    .to_owned();
                let token = zeroize::Zeroizing::new(token);
                let address = target.address.as_deref().unwrap_or_default();
                let refused = reqwest::Url::parse(address).map_or(true, |u| {
                    crate::outbound::refused_literal(&u, &self.allowed)
                });
                if refused {
                    return Err(
                        "the KV server's address is internal and not allowed (webhook_allowed_cidrs)"
                            .to_owned(),
                    );
                }
                let mount = target.mount.as_deref().unwrap_or("secret");
                let url = format!(
                    "{}/v1/{mount}/data/{}",
                    address.trim_end_matches('/'),
                    target.path
                );
                let response = self
                    .client
                    .post(url)
                    .header("X-Vault-Token", token.as_str())
                    .json(&json!({ "data": data }))
                    .send()
                    .await
                    .map_err(|e| {
                        if e.is_timeout() {
                            "the KV server timed out".to_owned()
                        } else {
                            "the KV server could not be reached".to_owned()
                        }
                    })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("the KV server answered {}", status.as_u16()))
                }
            }
        }
    }

    /// Removes the handovers whose grace ended: nobody may collect those successors now.
    async fn sweep_lapsed_handovers(&self) -> Result<u64, ServiceError> {
        let mut lapsed = 0;
        loop {
            let now = self.clock.now();
            let due = self.store.lapsed_handovers(now, 100).await?;
            if due.is_empty() {
                return Ok(lapsed);
            }
            let mut head = self.keys.writer().await;
            let entries = due
                .iter()
                .map(|id| PendingEntry {
                    actor: "system".into(),
                    action: AuditAction::KeyHandoverLapse,
                    target: Some(id.to_string()),
                    details: json!({}),
                })
                .collect();
            lapsed += due.len() as u64;
            self.audit
                .commit(
                    &mut head,
                    Changes {
                        delete_handovers: due,
                        ..Changes::default()
                    },
                    entries,
                )
                .await?;
        }
    }

    /// The holder of `holder` (authenticated with it) rotates it: inside its notice window
    /// the key is rolled now, with its policy's grace; once the scheduler has rolled it, the
    /// successor it made is handed out, once.
    pub async fn self_rotate(&self, holder: KeyId) -> Result<SelfRotation, ServiceError> {
        self.audit.retrying(|| self.self_rotate_once(holder)).await
    }

    async fn self_rotate_once(&self, holder: KeyId) -> Result<SelfRotation, ServiceError> {
        // Refusals are decided before the writer is taken, and audited in group commits: a
        // key hammering this route must not hold up every other write.
        {
            let key = self.keys.key(holder).await?;
            if key.rolled_to.is_none()
                && self
                    .of(&key)
                    .is_none_or(|due| self.clock.now() < due.notice_at)
            {
                return self.refuse_self_rotation(&key).await;
            }
        }
        let mut head = self.keys.writer().await;
        let old = self.keys.for_change(holder).await?;
        let now = self.clock.now();
        if old.status != KeyStatus::Active || old.is_expired_at(now) {
            return Err(ServiceError::Unauthorized);
        }
        if let Some(successor_id) = old.rolled_to {
            let Some(handover) = self.store.handover(old.id).await? else {
                // Handed out before (or the successor went to an admin): only its id now.
                return Ok(SelfRotation {
                    previous: old,
                    successor_id,
                    successor: None,
                });
            };
            // The row is not authenticated; the key's own (tagged) record is: the handover must
            // be the one its roll made, or it is somebody else's successor.
            if handover.predecessor != old.id
                || handover.successor != successor_id
                || handover.environment != old.environment
            {
                self.integrity.report(format!(
                    "key handover of {}: it names another key than the roll did",
                    old.id
                ));
                return Err(ServiceError::Integrity(
                    "the waiting successor does not belong to this key (the store was edited)"
                        .into(),
                ));
            }
            let successor = self.keys.key(successor_id).await?;
            let plaintext = self.open_handover(&handover)?;
            let entry = PendingEntry {
                actor: old.id.to_string(),
                action: AuditAction::KeyHandover,
                target: Some(old.id.to_string()),
                details: json!({ "successor": successor_id, "successor_start": successor.start }),
            };
            self.audit
                .commit(
                    &mut head,
                    Changes {
                        delete_handovers: vec![old.id],
                        ..Changes::default()
                    },
                    vec![entry],
                )
                .await?;
            tracing::info!(key_id = %old.id, successor = %successor_id, "successor collected by its holder");
            return Ok(SelfRotation {
                previous: old,
                successor_id,
                successor: Some((successor, plaintext)),
            });
        }
        let refusal = match self.of(&old) {
            None => Some((
                "no_policy",
                "no rotation policy applies to this key; an admin rolls it".to_owned(),
            )),
            Some(due) if now < due.notice_at => Some((
                "outside_window",
                format!(
                    "this key may rotate itself from {} (its notice window)",
                    due.notice_at.to_rfc3339()
                ),
            )),
            Some(_) => None,
        };
        if let Some((reason, message)) = refusal {
            drop(head);
            let entry = PendingEntry {
                actor: old.id.to_string(),
                action: AuditAction::AuthForbidden,
                target: Some(old.id.to_string()),
                details: json!({ "operation": "key.self_rotate", "reason": reason }),
            };
            self.audit.batched(entry).await?;
            return Err(ServiceError::Policy(keyward_core::PolicyViolation {
                rule: "rotation",
                message,
            }));
        }
        let Some(due) = self.of(&old) else {
            return Err(ServiceError::internal(
                "the rotation policy vanished under the writer",
            ));
        };
        let mut succession = self
            .keys
            .succession(old, due.policy.grace_s(), Roller::Holder)
            .await?;
        if let Some(entry) = succession.entries.first_mut()
            && let Some(details) = entry.details.as_object_mut()
        {
            details.insert("policy".into(), json!(due.policy));
            details.insert("source".into(), json!(due.source));
        }
        let (old, new, plaintext) = self.keys.commit_succession(&mut head, succession).await?;
        tracing::info!(key_id = %old.id, successor = %new.id, "key rotated by its holder");
        Ok(SelfRotation {
            previous: old,
            successor_id: new.id,
            successor: Some((new, plaintext)),
        })
    }

    async fn refuse_self_rotation(&self, key: &KeyRecord) -> Result<SelfRotation, ServiceError> {
        let (reason, message) = match self.of(key) {
            None => (
                "no_policy",
                "no rotation policy applies to this key; an admin rolls it".to_owned(),
            ),
            Some(due) => (
                "outside_window",
                format!(
                    "this key may rotate itself from {} (its notice window)",
                    due.notice_at.to_rfc3339()
                ),
            ),
        };
        self.audit
            .batched(PendingEntry {
                actor: key.id.to_string(),
                action: AuditAction::AuthForbidden,
                target: Some(key.id.to_string()),
                details: json!({ "operation": "key.self_rotate", "reason": reason }),
            })
            .await?;
        Err(ServiceError::Policy(keyward_core::PolicyViolation {
            rule: "rotation",
            message,
        }))
    }

    fn open_handover(&self, handover: &Handover) -> Result<PlaintextKey, ServiceError> {
        let bytes = self.vault.open_handover(
            &handover.environment,
            handover.predecessor,
            handover.successor,
            &handover.sealed,
        )?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ServiceError::Integrity("a sealed successor key is not text".into()))?;
        if keyward_core::ParsedKey::parse(text).is_err() {
            return Err(ServiceError::Integrity(
                "a sealed successor key does not parse".into(),
            ));
        }
        Ok(PlaintextKey::from_presented(text.to_owned()))
    }

    /// A key as its holder may see it: the key and its rotation.
    pub async fn holder_view(
        &self,
        holder: KeyId,
    ) -> Result<(KeyRecord, Option<EffectiveRotation>), ServiceError> {
        let key = self.keys.key(holder).await?;
        let rotation = self.of(&key);
        Ok((key, rotation))
    }

    /// Every generation of the key `id` belongs to, newest first, for an admin who may read it.
    pub async fn versions(
        &self,
        actor: &crate::Actor,
        id: KeyId,
    ) -> Result<Vec<Generation>, ServiceError> {
        let key = self.keys.key_as(actor, id).await?;
        let now = self.clock.now();
        let mut chain = vec![key.clone()];
        // Back to the first generation, then forward to the newest.
        let mut back = key.rolled_from;
        while let Some(id) = back {
            if chain.len() >= MAX_GENERATIONS {
                break;
            }
            match self.store.key(id).await? {
                Some(k) => {
                    back = k.rolled_from;
                    chain.insert(0, k);
                }
                None => break,
            }
        }
        let mut forward = key.rolled_to;
        while let Some(id) = forward {
            if chain.len() >= MAX_GENERATIONS {
                break;
            }
            match self.store.key(id).await? {
                Some(k) => {
                    forward = k.rolled_to;
                    chain.push(k);
                }
                None => break,
            }
        }
        let mut generations: Vec<Generation> = chain
            .into_iter()
            .filter_map(|k| self.integrity.intact_key(k))
            .map(|k| Generation::of(k, now))
            .collect();
        generations.reverse();
        Ok(generations)
    }
}

/// Days before an expiry on which its holder is told.
const EXPIRY_NOTICES: [i64; 3] = [1, 7, 14];

/// How long after an expiry `key.expired` is still sent (older expiries are history).
const EXPIRED_NOTICE_MS: i64 = 3 * 86_400_000;

/// The notices due for `key` now: its rotation is near (from the policy's notice), its expiry
/// is near (14, 7 and 1 days before: the nearest threshold crossed), or it just expired.
fn notices_for(
    key: &KeySummary,
    due: Option<&EffectiveRotation>,
    now: Timestamp,
) -> Vec<OutboxEvent> {
    const DAY_MS: i64 = 86_400_000;
    let mut out = Vec::new();
    // Most keys have nothing due: nothing is made for them.
    let id = || key.id.to_string();
    if let Some(due) = due
        && due.policy.notice_days > 0
        && now >= due.notice_at
        && now < due.due_at
    {
        let at = due.due_at.unix_ms().to_string();
        out.push(crate::webhooks::key_event(
            keyward_core::EventType::KeyExpiring,
            key,
            now,
            crate::webhooks::notice_id(&["key.expiring", "rotation", &id(), &at]),
            json!({
                "reason": "rotation",
                "at": due.due_at,
                "notice_days": due.policy.notice_days,
                "rotate": "POST /v1/self/rotate with this key",
            }),
        ));
    }
    if let Some(expires_at) = key.expires_at {
        let left = expires_at.unix_ms() - now.unix_ms();
        let at = || expires_at.unix_ms().to_string();
        if left > 0 {
            if let Some(days) = EXPIRY_NOTICES.into_iter().find(|d| left <= d * DAY_MS) {
                out.push(crate::webhooks::key_event(
                    keyward_core::EventType::KeyExpiring,
                    key,
                    now,
                    crate::webhooks::notice_id(&[
                        "key.expiring",
                        "expiry",
                        &id(),
                        &at(),
                        &days.to_string(),
                    ]),
                    json!({ "reason": "expiry", "at": expires_at, "days": days }),
                ));
            }
        } else if -left < EXPIRED_NOTICE_MS {
            out.push(crate::webhooks::key_event(
                keyward_core::EventType::KeyExpired,
                key,
                now,
                crate::webhooks::notice_id(&["key.expired", &id(), &at()]),
                json!({ "at": expires_at }),
            ));
        }
    }
    out
}

/// Generations listed at most.
const MAX_GENERATIONS: usize = 10_000;

/// One generation of a key, for its version history.
#[derive(Debug, Clone)]
pub struct Generation {
    pub key: KeyRecord,
    /// How it ended, if it has: rolled (by whom), revoked, expired.
    pub ended: Option<Ending>,
}

/// How a generation of a key ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Rolled(RollCause),
    Revoked,
    Expired,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Rolled(RollCause::Schedule) => "rolled_by_schedule",
            Ending::Rolled(RollCause::Manual) => "rolled_by_hand",
            Ending::Rolled(RollCause::Client) => "rolled_by_client",
            Ending::Revoked => "revoked",
            Ending::Expired => "expired",
        }
    }
}

impl Generation {
    fn of(key: KeyRecord, now: Timestamp) -> Self {
        let ended = if key.status == KeyStatus::Revoked {
            Some(Ending::Revoked)
        } else if key.rolled_to.is_some() {
            // Rolls from before causes were kept were all made by hand.
            Some(Ending::Rolled(
                key.lifecycle.rolled_by.unwrap_or(RollCause::Manual),
            ))
        } else if key.is_expired_at(now) {
            Some(Ending::Expired)
        } else {
            None
        };
        Generation { key, ended }
    }
}

impl OpenVault {
    /// Seals a successor's key for its handover, bound to the key it replaces and to itself.
    pub(crate) fn seal_handover(
        &self,
        env: &EnvironmentName,
        predecessor: KeyId,
        successor: KeyId,
        key: &[u8],
    ) -> Result<Vec<u8>, ServiceError> {
        let id = format!("{predecessor}/{successor}");
        Ok(self.keyring(env)?.seal(&handover_context(&id), key)?)
    }

    pub(crate) fn open_handover(
        &self,
        env: &EnvironmentName,
        predecessor: KeyId,
        successor: KeyId,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ServiceError> {
        let id = format!("{predecessor}/{successor}");
        Ok(self.keyring(env)?.open(&handover_context(&id), sealed)?)
    }
}

fn handover_context(id: &str) -> keyward_crypto::barrier::Context<'_> {
    keyward_crypto::barrier::Context {
        table: "key_handover",
        id,
        field: "key",
    }
}
