//! Leases: dynamic, short-lived API keys (and leased secret reads), renewable up to a maximum
//! lifetime and revocable by id or by path prefix.
//!
//! A leased key's `expires_at` is the lease's end, so it stops verifying (`EXPIRED`) the moment
//! the lease ends, with no call and no sweep needed; a renewal moves both together. A sweeper
//! marks ended leases and audits each end.

use keyward_core::audit::AuditAction;
use keyward_core::{KeyRecord, Timestamp};
use keyward_store::{Changes, LeaseKind, VaultLease};
use serde_json::json;

use std::sync::Arc;

use keyward_core::Clock;
use keyward_store::Store;

use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::authz::{Authz, Operation, Target};
use crate::catalog::Catalog;
use crate::integrity::Integrity;
use crate::keys::{Keys, NewKey};
use crate::{Actor, ServiceError};

/// A key lease asks for a key (as `POST /v1/keys` does) and its lease's lifetimes.
#[derive(Debug, Clone)]
pub struct NewKeyLease {
    pub key: NewKey,
    pub ttl_s: u64,
    /// The most renewals may extend the lease to, from issue (default: `ttl_s`).
    pub max_ttl_s: Option<u64>,
}

/// An issued key lease: the lease, the key record and the key, shown once.
#[derive(Debug)]
pub struct KeyLease {
    pub lease: VaultLease,
    pub record: KeyRecord,
    pub key: keyward_crypto::PlaintextKey,
}

/// Longest lease: 30 days.
pub const MAX_LEASE_TTL_S: u64 = 30 * 24 * 3600;

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field,
        message: message.into(),
    }
}

fn lease_not_found() -> ServiceError {
    ServiceError::NotFound { what: "lease" }
}

/// A fresh lease id.
pub(crate) fn lease_id(
    ids: &keyward_crypto::KeyIds,
    now: Timestamp,
) -> Result<String, ServiceError> {
    ids.next(now)
        .map(|id| id.to_string())
        .map_err(ServiceError::internal)
}

/// The leases service: leased keys, and the lifecycle of every lease.
#[derive(Debug)]
pub struct KeyLeases {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ids: keyward_crypto::KeyIds,
    catalog: Arc<Catalog>,
    audit: Arc<AuditLog>,
    authz: Arc<Authz>,
    keys: Arc<Keys>,
    integrity: Arc<Integrity>,
}

impl KeyLeases {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        catalog: Arc<Catalog>,
        audit: Arc<AuditLog>,
        authz: Arc<Authz>,
        keys: Arc<Keys>,
        integrity: Arc<Integrity>,
    ) -> Self {
        KeyLeases {
            store,
            clock,
            ids: keyward_crypto::KeyIds::default(),
            catalog,
            audit,
            authz,
            keys,
            integrity,
        }
    }

    /// Issues a short-lived key as a lease.
    pub async fn create_key_lease(
        &self,
        actor: &Actor,
        new: NewKeyLease,
    ) -> Result<KeyLease, ServiceError> {
        let max_ttl = new.max_ttl_s.unwrap_or(new.ttl_s);
        if !(1..=MAX_LEASE_TTL_S).contains(&new.ttl_s) {
            return Err(invalid("ttl_s", format!("1 to {MAX_LEASE_TTL_S} seconds")));
        }
        if !(new.ttl_s..=MAX_LEASE_TTL_S).contains(&max_ttl) {
            return Err(invalid(
                "max_ttl_s",
                format!("at least ttl_s and at most {MAX_LEASE_TTL_S} seconds"),
            ));
        }
        if new.key.expires_at.is_some() || new.key.ttl_s.is_some() {
            return Err(invalid(
                "expires_at",
                "a leased key expires with its lease: give ttl_s for the lease",
            ));
        }
        // Renewals may carry the key to max_ttl_s: the environment's policy must allow that.
        if let Some(env) = self.catalog.environment(new.key.environment.as_str())
            && let Some(policy_max) = env.record.policy.max_ttl_s
            && max_ttl > policy_max
        {
            return Err(keyward_core::PolicyViolation {
                rule: "max_ttl_s",
                message: format!("keys of this environment expire within {policy_max} s"),
            }
            .into());
        }
        let now = self.clock.now();
        let mut key = new.key;
        key.ttl_s = Some(new.ttl_s);
        let lease_id = lease_id(&self.ids, now)?;
        let path = format!("keys/{}/{}", key.environment, key.name);
        let environment = key.environment.clone();
        let lease = std::sync::Mutex::new(None);
        let (record, plaintext) = self
            .keys
            .create_key_with(actor, Operation::LeaseCreate, key, |record| {
                let made = VaultLease {
                    mac: None,
                    id: lease_id.clone(),
                    kind: LeaseKind::Key,
                    path: path.clone(),
                    environment: environment.clone(),
                    key_id: Some(record.id),
                    secret_version: None,
                    actor: actor.audit_name(),
                    issued_at: now,
                    expires_at: record.expires_at.unwrap_or(now),
                    max_expires_at: now.plus_seconds(max_ttl),
                    ended_at: None,
                    end_reason: None,
                };
                let entry = PendingEntry {
                    actor: actor.audit_name(),
                    action: AuditAction::LeaseCreate,
                    target: Some(made.id.clone()),
                    details: json!({
                        "kind": "key", "path": made.path, "key_id": record.id,
                        "expires_at": made.expires_at, "max_expires_at": made.max_expires_at,
                    }),
                };
                *lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(made.clone());
                (
                    Changes {
                        upsert_leases: vec![made],
                        ..Changes::default()
                    },
                    Some(entry),
                )
            })
            .await?;
        let lease = lease
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| ServiceError::internal("the lease was not made"))?;
        Ok(KeyLease {
            lease,
            record,
            key: plaintext,
        })
    }

    /// A lease the actor's admin scope covers, or 404 / 403.
    /// A lease `actor` may perform `op` on. Renewing and revoking act through the lease (on
    /// its key), so they need its integrity tag to check out; a read shows an untagged lease.
    async fn lease_in_scope(
        &self,
        actor: &Actor,
        op: Operation,
        id: &str,
    ) -> Result<VaultLease, ServiceError> {
        let lease = self
            .store
            .lease(id.to_owned())
            .await?
            .ok_or_else(lease_not_found)?;
        let lease = self.checked(lease, op != Operation::LeaseRead)?;
        self.authz
            .permit(actor, op, Target::Environment(&lease.environment))
            .await?;
        Ok(lease)
    }

    pub async fn lease(&self, actor: &Actor, id: &str) -> Result<VaultLease, ServiceError> {
        self.lease_in_scope(actor, Operation::LeaseRead, id).await
    }

    /// Leases under `prefix` (all when empty), by id.
    pub async fn list_leases(
        &self,
        actor: &Actor,
        prefix: &str,
        open_only: bool,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<VaultLease>, ServiceError> {
        self.authz
            .permit(actor, Operation::LeaseRead, Target::None)
            .await?;
        let leases = self
            .store
            .leases(prefix.to_owned(), open_only, after, limit.clamp(1, 1000))
            .await?;
        Ok(leases
            .into_iter()
            .filter_map(|l| self.checked(l, false).ok())
            .filter(|l| actor.may_manage(&l.environment))
            .collect())
    }

    /// `lease` if its tag checks out, or (when only reading it) it has none, being from before
    /// leases were tagged. A tampered lease is reported and refused.
    fn checked(&self, lease: VaultLease, acting: bool) -> Result<VaultLease, ServiceError> {
        if lease.mac.is_none() && !acting {
            return Ok(lease);
        }
        self.integrity.intact_lease(lease)
    }

    /// Extends a lease by `increment_s` from now (default: its original TTL), never past its
    /// maximum. A leased key's expiry moves with it.
    pub async fn renew_lease(
        &self,
        actor: &Actor,
        id: &str,
        increment_s: Option<u64>,
    ) -> Result<VaultLease, ServiceError> {
        self.audit
            .retrying(|| self.renew_lease_once(actor, id, increment_s))
            .await
    }

    async fn renew_lease_once(
        &self,
        actor: &Actor,
        id: &str,
        increment_s: Option<u64>,
    ) -> Result<VaultLease, ServiceError> {
        let lease = self
            .lease_in_scope(actor, Operation::LeaseRenew, id)
            .await?;
        let mut head = self.audit.lock().await;
        let lease = self
            .store
            .lease(lease.id)
            .await?
            .ok_or_else(lease_not_found)?;
        let mut lease = self.checked(lease, true)?;
        let now = self.clock.now();
        if lease.ended_at.is_some() || lease.expires_at <= now {
            return Err(ServiceError::Conflict("the lease has ended".into()));
        }
        let original = u64::try_from(lease.expires_at.unix_ms() - lease.issued_at.unix_ms())
            .unwrap_or(0)
            / 1000;
        let increment = increment_s.unwrap_or(original.max(1));
        if !(1..=MAX_LEASE_TTL_S).contains(&increment) {
            return Err(invalid(
                "increment_s",
                format!("1 to {MAX_LEASE_TTL_S} seconds"),
            ));
        }
        let wanted = now.plus_seconds(increment);
        // Never past the lease's maximum, nor past what the environment's policy allows now.
        let mut cap = lease.max_expires_at;
        if let Some(policy_max) = self
            .catalog
            .environment(lease.environment.as_str())
            .and_then(|e| e.record.policy.max_ttl_s)
        {
            cap = cap.min(lease.issued_at.plus_seconds(policy_max));
        }
        lease.expires_at = wanted.min(cap).max(lease.expires_at);
        let mut changes = Changes {
            upsert_leases: vec![lease.clone()],
            ..Changes::default()
        };
        let mut key_record = None;
        if let Some(key_id) = lease.key_id {
            let mut key = self.keys.key(key_id).await?;
            if key.status == keyward_core::KeyStatus::Revoked {
                return Err(ServiceError::Conflict(
                    "the leased key was revoked; revocation is final".into(),
                ));
            }
            // A rolled key ends with its grace period: renewing the lease must not bring it
            // back beside its successor (a key is often rolled because it leaked).
            if let Some(successor) = key.rolled_to {
                return Err(ServiceError::Conflict(format!(
                    "the leased key was rolled to {successor}; a rolled key is not renewed"
                )));
            }
            if key.environment != lease.environment {
                return Err(ServiceError::Integrity(format!(
                    "lease {} names key {key_id} of another environment",
                    lease.id
                )));
            }
            key.expires_at = Some(lease.expires_at);
            key.updated_at = now;
            changes.update_keys.push(key.clone());
            key_record = Some(key);
        }
        self.audit.commit(
            &mut head,
            changes,
            vec![PendingEntry {
                actor: actor.audit_name(),
                action: AuditAction::LeaseRenew,
                target: Some(lease.id.clone()),
                details: json!({ "path": lease.path, "expires_at": lease.expires_at, "capped": wanted > cap }),
            }],
        )
        .await?;
        drop(key_record);
        Ok(lease)
    }

    /// Ends a lease now; a leased key is revoked with it.
    pub async fn revoke_lease(&self, actor: &Actor, id: &str) -> Result<VaultLease, ServiceError> {
        let lease = self
            .lease_in_scope(actor, Operation::LeaseRevoke, id)
            .await?;
        let mut ended = self
            .end_leases(&actor.audit_name(), vec![lease], "revoked")
            .await?;
        ended.pop().ok_or_else(lease_not_found)
    }

    /// Ends every open lease whose path starts with `prefix`. Returns how many ended.
    pub async fn revoke_lease_prefix(
        &self,
        actor: &Actor,
        prefix: &str,
    ) -> Result<usize, ServiceError> {
        self.authz
            .permit(actor, Operation::LeaseRevoke, Target::None)
            .await?;
        if prefix.is_empty() || prefix.len() > 512 {
            return Err(invalid("prefix", "1-512 characters, e.g. keys/live/ci-"));
        }
        let mut total = 0;
        let mut after = None;
        loop {
            let page = self
                .store
                .leases(prefix.to_owned(), true, after.clone(), 500)
                .await?;
            let full = page.len() == 500;
            after = page.last().map(|l| l.id.clone());
            // Leases of environments outside the actor's scope stay, and paging goes past them.
            // So do leases whose tag does not check out: they cannot be acted through.
            let open: Vec<_> = page
                .into_iter()
                .filter_map(|l| self.checked(l, true).ok())
                .filter(|l| actor.may_manage(&l.environment))
                .collect();
            if !open.is_empty() {
                total += self
                    .end_leases(&actor.audit_name(), open, "revoked")
                    .await?
                    .into_iter()
                    .filter(|l| l.end_reason.as_deref() == Some("revoked"))
                    .count();
            }
            if !full {
                return Ok(total);
            }
        }
    }

    /// Marks leases ended (`revoked` or `expired`), revoking leased keys that are still active;
    /// one audited write.
    async fn end_leases(
        &self,
        actor: &str,
        leases: Vec<VaultLease>,
        reason: &str,
    ) -> Result<Vec<VaultLease>, ServiceError> {
        self.audit
            .retrying(|| self.end_leases_once(actor, leases.clone(), reason))
            .await
    }

    async fn end_leases_once(
        &self,
        actor: &str,
        leases: Vec<VaultLease>,
        reason: &str,
    ) -> Result<Vec<VaultLease>, ServiceError> {
        let mut head = self.audit.lock().await;
        let now = self.clock.now();
        let mut changes = Changes::default();
        let mut entries = Vec::new();
        let mut ended = Vec::new();
        let mut revoked_keys = Vec::new();
        for mut lease in leases {
            // Re-read under the writer lock: another call may have ended it meanwhile.
            let Some(current) = self.store.lease(lease.id.clone()).await? else {
                continue;
            };
            // Revoking acts on the lease's key: only through a lease whose tag checks out. An
            // expiry touches no key, so an untagged lease from before tags may lapse.
            let current = match self.checked(current, reason == "revoked") {
                Ok(current) => current,
                Err(_) => continue,
            };
            if current.ended_at.is_some() {
                ended.push(current);
                continue;
            }
            lease = current;
            lease.ended_at = Some(now);
            lease.end_reason = Some(reason.to_owned());
            if reason == "revoked"
                && let Some(key_id) = lease.key_id
                && let Some(mut key) = self
                    .store
                    .key(key_id)
                    .await?
                    .and_then(|k| self.integrity.intact_key(k))
                && key.status != keyward_core::KeyStatus::Revoked
            {
                key.status = keyward_core::KeyStatus::Revoked;
                key.revoked_at = Some(now);
                key.revocation_reason = Some(format!("lease {} revoked", lease.id));
                key.updated_at = now;
                changes.update_keys.push(key.clone());
                revoked_keys.push(key);
            }
            entries.push(PendingEntry {
                actor: actor.to_owned(),
                action: if reason == "revoked" {
                    AuditAction::LeaseRevoke
                } else {
                    AuditAction::LeaseExpire
                },
                target: Some(lease.id.clone()),
                details: json!({ "kind": lease.kind.as_str(), "path": lease.path, "key_id": lease.key_id }),
            });
            changes.upsert_leases.push(lease.clone());
            ended.push(lease);
        }
        if !entries.is_empty() {
            self.audit.commit(&mut head, changes, entries).await?;
        }
        drop(revoked_keys);
        Ok(ended)
    }

    /// Runs the lease expiry sweep now (it also runs every second in the background).
    pub async fn sweep_vault_leases_now(&self) -> Result<(), ServiceError> {
        self.sweep_lapsed_vault_leases().await
    }

    /// Marks leases past their end as expired, auditing each. Their keys already fail to verify:
    /// this only records the end.
    pub(crate) async fn sweep_lapsed_vault_leases(&self) -> Result<(), ServiceError> {
        let lapsed = self.store.lapsed_leases(self.clock.now(), 500).await?;
        if !lapsed.is_empty() {
            self.end_leases("system", lapsed, "expired").await?;
        }
        Ok(())
    }
}
