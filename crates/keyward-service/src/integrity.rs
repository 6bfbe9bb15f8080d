//! Stored security state, authenticated.
//!
//! The vault seals an [`IntegrityKey`]; with it, every write tags the security-relevant fields
//! of the records it stores (keys, environments, roles, plans, the vault record) and a
//! checkpoint of the audit log's head, all in the same transaction (`AuditLog::commit` is the
//! one place that does it). Every read of such a record checks its tag, so an edit of the store
//! made without the unseal key (an un-revoked key, a widened permission, a loosened policy, a
//! lowered keyring term, truncated or rewritten audit entries) fails closed: the record is
//! treated as invalid, the failure is logged and counted, and `/readyz` says so.
//!
//! What it does not cover: usage counters and quota balances (telemetry, written without an
//! audit entry), and rollback of the whole store to an earlier copy of itself, which carries
//! valid tags.

use keyward_core::audit::AuditAction;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use keyward_core::{KeyRecord, PlanRecord, RecordMac, RoleRecord};
use keyward_crypto::barrier::IntegrityKey;
use keyward_store::{AuditCheckpoint, AuditHead, Changes, EnvironmentRecord, VaultRecord};
use serde_json::json;

use std::sync::Arc;

use keyward_store::Store;

use crate::vault::OpenVault;

/// Where the vault's integrity key is stored, sealed by the root key, among the keyrings.
pub(crate) const INTEGRITY_SCOPE: &str = "integrity";

fn bytes(value: &serde_json::Value) -> Vec<u8> {
    // A `Value` serialises its object keys in sorted order: the same record gives the same bytes.
    serde_json::to_vec(value).unwrap_or_default()
}

fn key_bytes(k: &KeyRecord) -> Vec<u8> {
    let mut record = json!({
        "id": k.id.to_string(),
        "service": k.service.as_str(),
        "environment": k.environment.as_str(),
        "hash": keyward_crypto::hex(&k.hash.0),
        "start": k.start,
        "name": k.name,
        "owner": k.owner,
        "purpose": k.purpose,
        "permissions": k.permissions,
        "meta": k.meta,
        "created_at": k.created_at.unix_ms(),
        "updated_at": k.updated_at.unix_ms(),
        "expires_at": k.expires_at.map(keyward_core::Timestamp::unix_ms),
        "status": k.status.as_str(),
        "revoked_at": k.revoked_at.map(keyward_core::Timestamp::unix_ms),
        "revocation_reason": k.revocation_reason,
        "rolled_from": k.rolled_from.map(|id| id.to_string()),
        "rolled_to": k.rolled_to.map(|id| id.to_string()),
        "access": k.access,
    });
    // Covered once set; records from before it existed authenticate as before.
    if !k.lifecycle.is_empty()
        && let Some(fields) = record.as_object_mut()
    {
        fields.insert("lifecycle".into(), json!(k.lifecycle));
    }
    bytes(&record)
}

fn environment_bytes(e: &EnvironmentRecord) -> Vec<u8> {
    bytes(&json!({
        "name": e.name.as_str(),
        "created_at": e.created_at.unix_ms(),
        "policy": e.policy,
    }))
}

fn role_bytes(r: &RoleRecord) -> Vec<u8> {
    let mut record = json!({
        "name": r.name.as_str(),
        "description": r.description,
        "permissions": r.permissions,
        "builtin": r.builtin,
        "created_at": r.created_at.unix_ms(),
        "updated_at": r.updated_at.unix_ms(),
    });
    if let (Some(rotation), Some(fields)) = (r.rotation, record.as_object_mut()) {
        fields.insert("rotation".into(), json!(rotation));
    }
    bytes(&record)
}

fn plan_bytes(p: &PlanRecord) -> Vec<u8> {
    bytes(&json!({
        "name": p.name.as_str(),
        "description": p.description,
        "ratelimits": p.ratelimits,
        "graduated": p.graduated,
        "quota": p.quota,
        "created_at": p.created_at.unix_ms(),
        "updated_at": p.updated_at.unix_ms(),
    }))
}

fn lease_bytes(l: &keyward_store::VaultLease) -> Vec<u8> {
    bytes(&json!({
        "id": l.id,
        "kind": l.kind.as_str(),
        "path": l.path,
        "environment": l.environment.as_str(),
        "key_id": l.key_id.map(|id| id.to_string()),
        "secret_version": l.secret_version,
        "actor": l.actor,
        "issued_at": l.issued_at.unix_ms(),
        "expires_at": l.expires_at.unix_ms(),
        "max_expires_at": l.max_expires_at.unix_ms(),
        "ended_at": l.ended_at.map(keyward_core::Timestamp::unix_ms),
        "end_reason": l.end_reason,
    }))
}

fn vault_bytes(v: &VaultRecord) -> Vec<u8> {
    bytes(&json!({
        "tag": keyward_crypto::hex(&v.tag),
        "shares": v.shares,
        "threshold": v.threshold,
        "sealed_root": keyward_crypto::hex(&v.sealed_root),
        "term": v.term,
        "created_at": v.created_at.unix_ms(),
    }))
}

fn checkpoint_bytes(seq: u64, hash: &str, revoked: u64) -> Vec<u8> {
    bytes(&json!({ "seq": seq, "hash": hash, "revoked": revoked }))
}

fn tag(key: &IntegrityKey, domain: &str, bytes: &[u8]) -> Option<RecordMac> {
    Some(RecordMac(key.tag(domain, bytes)))
}

fn check(key: &IntegrityKey, domain: &str, bytes: &[u8], mac: Option<RecordMac>) -> bool {
    mac.is_some_and(|m| key.verify(domain, bytes, &m.0))
}

pub(crate) fn seal_key(key: &IntegrityKey, k: &mut KeyRecord) {
    k.mac = tag(key, "key", &key_bytes(k));
}

pub(crate) fn key_intact(key: &IntegrityKey, k: &KeyRecord) -> bool {
    check(key, "key", &key_bytes(k), k.mac)
}

pub(crate) fn environment_intact(key: &IntegrityKey, e: &EnvironmentRecord) -> bool {
    check(key, "environment", &environment_bytes(e), e.mac)
}

pub(crate) fn role_intact(key: &IntegrityKey, r: &RoleRecord) -> bool {
    check(key, "role", &role_bytes(r), r.mac)
}

pub(crate) fn plan_intact(key: &IntegrityKey, p: &PlanRecord) -> bool {
    check(key, "plan", &plan_bytes(p), p.mac)
}

/// An endpoint as its serialised record: every field but the tag.
fn webhook_bytes(w: &keyward_core::WebhookEndpoint) -> Vec<u8> {
    serde_json::to_vec(w).unwrap_or_default()
}

/// An outbox event as its serialised record (its position is not part of it).
fn outbox_bytes(e: &keyward_core::OutboxEvent) -> Vec<u8> {
    serde_json::to_vec(e).unwrap_or_default()
}

/// Tags outbox events written outside a commit of the audit log (rate-limit events).
pub(crate) fn seal_outbox(key: &IntegrityKey, events: &mut [keyward_core::OutboxEvent]) {
    for e in events {
        e.mac = tag(key, "outbox", &outbox_bytes(e));
    }
}

pub(crate) fn outbox_intact(key: &IntegrityKey, e: &keyward_core::OutboxEvent) -> bool {
    check(key, "outbox", &outbox_bytes(e), e.mac)
}

pub(crate) fn webhook_intact(key: &IntegrityKey, w: &keyward_core::WebhookEndpoint) -> bool {
    check(key, "webhook", &webhook_bytes(w), w.mac)
}

pub(crate) fn lease_intact(key: &IntegrityKey, l: &keyward_store::VaultLease) -> bool {
    check(key, "lease", &lease_bytes(l), l.mac)
}

pub(crate) fn vault_intact(key: &IntegrityKey, v: &VaultRecord) -> bool {
    check(key, "vault", &vault_bytes(v), v.mac)
}

pub(crate) fn checkpoint_intact(key: &IntegrityKey, c: &AuditCheckpoint) -> bool {
    check(
        key,
        "audit-checkpoint",
        &checkpoint_bytes(c.seq, &c.hash, c.revoked),
        Some(c.mac),
    )
}

/// The checkpoint of `head`, tagged.
pub(crate) fn checkpoint(key: &IntegrityKey, head: &AuditHead, revoked: u64) -> AuditCheckpoint {
    AuditCheckpoint {
        seq: head.seq,
        hash: head.hash.clone(),
        revoked,
        mac: RecordMac(key.tag(
            "audit-checkpoint",
            &checkpoint_bytes(head.seq, &head.hash, revoked),
        )),
    }
}

/// Keys `changes` stores as revoked. Every write path revokes a key at most once (revoked keys
/// are never written again), so this is what the revoked count grows by.
pub(crate) fn revocations(changes: &Changes) -> u64 {
    changes
        .insert_keys
        .iter()
        .chain(&changes.update_keys)
        .filter(|k| k.status == keyward_core::KeyStatus::Revoked)
        .count() as u64
}

/// Tags every record `changes` writes, and the checkpoint of the audit head it leads to, with
/// the revoked count `revoked` (as it stands after the change).
pub(crate) fn seal_changes(
    key: &IntegrityKey,
    changes: &mut Changes,
    head: Option<&AuditHead>,
    revoked: u64,
) {
    for k in changes
        .insert_keys
        .iter_mut()
        .chain(changes.update_keys.iter_mut())
    {
        seal_key(key, k);
    }
    for e in changes
        .environments
        .iter_mut()
        .chain(changes.update_environments.iter_mut())
    {
        e.mac = tag(key, "environment", &environment_bytes(e));
    }
    for r in &mut changes.upsert_roles {
        r.mac = tag(key, "role", &role_bytes(r));
    }
    for p in &mut changes.upsert_plans {
        p.mac = tag(key, "plan", &plan_bytes(p));
    }
    for l in &mut changes.upsert_leases {
        l.mac = tag(key, "lease", &lease_bytes(l));
    }
    for w in &mut changes.upsert_webhooks {
        w.mac = tag(key, "webhook", &webhook_bytes(w));
    }
    seal_outbox(key, &mut changes.outbox);
    if let Some(v) = &mut changes.vault {
        v.mac = tag(key, "vault", &vault_bytes(v));
    }
    if let Some(head) = head {
        changes.audit_checkpoint = Some(checkpoint(key, head, revoked));
    }
}

/// Every stored key, environment, role and plan as a change that rewrites it: tagged by
/// [`seal_changes`], this is what adopting integrity tags writes for a store from before them.
pub(crate) async fn everything(
    store: &dyn keyward_store::Store,
) -> Result<Changes, keyward_store::StoreError> {
    let mut changes = Changes {
        update_environments: store.environments().await?,
        upsert_roles: store.roles().await?,
        upsert_plans: store.plans().await?,
        ..Changes::default()
    };
    let mut after = None;
    loop {
        let page = store
            .list_keys(keyward_store::KeyQuery {
                after,
                limit: 1000,
                ..keyward_store::KeyQuery::default()
            })
            .await?;
        let full = page.len() == 1000;
        after = page.last().map(|k| k.id);
        changes.update_keys.extend(page);
        if !full {
            break;
        }
    }
    let mut after = None;
    loop {
        let page = store.leases(String::new(), false, after, 1000).await?;
        let full = page.len() == 1000;
        after = page.last().map(|l| l.id.clone());
        changes.upsert_leases.extend(page);
        if !full {
            return Ok(changes);
        }
    }
}

/// Why the stored audit head does not match the tagged checkpoint, if it does not.
pub(crate) fn audit_head_problem(
    key: &IntegrityKey,
    head: &AuditHead,
    checkpoint: Option<&AuditCheckpoint>,
) -> Option<String> {
    let Some(checkpoint) = checkpoint else {
        return (head.seq > 0).then(|| "the checkpoint of its head is missing".to_owned());
    };
    if !checkpoint_intact(key, checkpoint) {
        return Some("the checkpoint of its head was altered".to_owned());
    }
    if head.seq < checkpoint.seq {
        return Some(format!(
            "entries {}..={} were removed (truncated)",
            head.seq + 1,
            checkpoint.seq
        ));
    }
    if head.seq > checkpoint.seq {
        return Some(format!(
            "entries after {} were not written by keyward",
            checkpoint.seq
        ));
    }
    (head.hash != checkpoint.hash).then(|| "its entries were rewritten".to_owned())
}

/// Checks every tagged record and the audit checkpoint of a store, offline, with the vault's
/// unseal key (`keyward audit verify` with a key). Returns what failed; empty when all is intact.
pub async fn verify_stored_state(
    store: &dyn keyward_store::Store,
    unseal_key: &keyward_crypto::barrier::UnsealKey,
) -> Result<Vec<String>, crate::ServiceError> {
    let record = store
        .vault()
        .await?
        .ok_or_else(|| crate::ServiceError::internal("the store has no vault"))?;
    let vault = crate::vault::OpenVault::open(&record, unseal_key, &store.keyrings().await?)?;
    if vault.take_adoption().is_some() {
        return Ok(vec![
            "this store predates integrity tags: unseal it once with keyward serve to adopt them"
                .into(),
        ]);
    }
    let key = vault.integrity();
    let mut failed = Vec::new();
    let all = everything(store).await?;
    failed.extend(
        all.update_environments
            .iter()
            .filter(|e| !environment_intact(key, e))
            .map(|e| format!("environment {}", e.name)),
    );
    failed.extend(
        all.upsert_roles
            .iter()
            .filter(|r| !role_intact(key, r))
            .map(|r| format!("role {}", r.name)),
    );
    failed.extend(
        all.upsert_plans
            .iter()
            .filter(|p| !plan_intact(key, p))
            .map(|p| format!("plan {}", p.name)),
    );
    failed.extend(
        all.update_keys
            .iter()
            .filter(|k| !key_intact(key, k))
            .map(|k| format!("key {}", k.id)),
    );
    failed.extend(
        all.upsert_leases
            .iter()
            .filter(|l| l.mac.is_some() && !lease_intact(key, l))
            .map(|l| format!("lease {}", l.id)),
    );
    // Revocations the log records, against the rows: a row put back from before its
    // revocation has a valid tag but is named here.
    let mut in_log = std::collections::HashSet::new();
    if let crate::audit::ChainReport::Broken(broken) = crate::audit::walk_chain(store, |entry| {
        in_log.extend(crate::audit::revoked_keys(entry))
    })
    .await?
    {
        failed.push(format!("audit log: {broken}"));
    }
    failed.extend(
        all.update_keys
            .iter()
            .filter(|k| k.status != keyward_core::KeyStatus::Revoked && in_log.contains(&k.id))
            .map(|k| {
                format!(
                    "key {}: revoked in the audit log, not in its row (restored from an earlier copy)",
                    k.id
                )
            }),
    );
    let revoked = all
        .update_keys
        .iter()
        .filter(|k| k.status == keyward_core::KeyStatus::Revoked && key_intact(key, k))
        .count() as u64;
    if let Some(c) = store.audit_checkpoint().await?
        && checkpoint_intact(key, &c)
        && revoked < c.revoked
    {
        failed.push(format!(
            "revocations undone: {revoked} revoked keys in the store, {} revoked by keyward",
            c.revoked
        ));
    }
    let head = store.audit_head().await?.unwrap_or(AuditHead {
        seq: 0,
        hash: keyward_core::audit::GENESIS_HASH.to_owned(),
    });
    if let Some(problem) = audit_head_problem(key, &head, store.audit_checkpoint().await?.as_ref())
    {
        failed.push(format!("audit log: {problem}"));
    }
    Ok(failed)
}

/// What the node has found tampered with since it was unsealed: reported on `/readyz`.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    failures: AtomicU64,
    /// Short descriptions (`key <id>`, `role <name>`, `audit log: …`), deduplicated, bounded.
    found: Mutex<BTreeSet<String>>,
}

impl Findings {
    pub(crate) fn report(&self, what: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        if found.len() < 100 && !found.contains(&what) {
            tracing::error!(record = %what, "stored security state failed its integrity check; it is treated as invalid");
            found.insert(what);
        }
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn list(&self) -> Vec<String> {
        self.found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// The integrity service: the vault's integrity key, what failed a check since unseal, and the
/// keys the audit log says were revoked.
#[derive(Debug)]
pub(crate) struct Integrity {
    vault: Arc<OpenVault>,
    findings: Findings,
    /// Keys revoked according to the audit log (whose chain and tagged head authenticate it),
    /// and to every revoke this node has seen committed since. A key row that is not revoked
    /// but is named here was put back from an earlier copy: it is no key.
    revoked: std::sync::RwLock<std::collections::HashSet<keyward_core::KeyId>>,
}

impl Integrity {
    pub(crate) fn new(vault: Arc<OpenVault>) -> Self {
        Integrity {
            vault,
            findings: Findings::default(),
            revoked: std::sync::RwLock::new(std::collections::HashSet::new()),
        }
    }

    /// Records a committed revocation (the change feed calls this); false if it was known.
    pub(crate) fn note_revoked(&self, id: keyward_core::KeyId) -> bool {
        crate::write(&self.revoked).insert(id)
    }

    pub(crate) fn key(&self) -> &IntegrityKey {
        self.vault.integrity()
    }

    pub(crate) fn report(&self, what: String) {
        self.findings.report(what);
    }

    /// Integrity failures found since unseal (a metric).
    pub(crate) fn failures(&self) -> u64 {
        self.findings.failures()
    }

    /// What failed its integrity check since unseal, for `/readyz`; empty when all is well.
    pub(crate) fn findings(&self) -> Vec<String> {
        self.findings.list()
    }

    /// `key` if its tag checks out and no revocation of it was undone; otherwise the failure is
    /// reported and `None` returned.
    pub(crate) fn intact_key(&self, key: KeyRecord) -> Option<KeyRecord> {
        if !key_intact(self.key(), &key) {
            self.findings.report(format!("key {}", key.id));
            return None;
        }
        if key.status != keyward_core::KeyStatus::Revoked
            && crate::read(&self.revoked).contains(&key.id)
        {
            self.findings.report(format!(
                "key {}: revoked in the audit log, not in its row (the row was restored from an \
                 earlier copy); it is treated as no key",
                key.id
            ));
            return None;
        }
        Some(key)
    }

    /// `lease` if it can be acted on: its tag checks out. A lease whose tag fails is reported
    /// and refused (`INTEGRITY`); one stored before leases were tagged is refused too, without
    /// a finding: it lapses by itself, and its key can be revoked directly.
    pub(crate) fn intact_lease(
        &self,
        lease: keyward_store::VaultLease,
    ) -> Result<keyward_store::VaultLease, crate::ServiceError> {
        if lease.mac.is_none() {
            return Err(crate::ServiceError::Conflict(format!(
                "lease {} was made before leases carried integrity tags and cannot be renewed \
                 or revoked; it lapses by itself, and its key can be revoked with \
                 POST /v1/keys/{{id}}/revoke",
                lease.id
            )));
        }
        if lease_intact(self.key(), &lease) {
            Ok(lease)
        } else {
            self.findings.report(format!("lease {}", lease.id));
            Err(crate::ServiceError::Integrity(format!(
                "lease {} was changed outside keyward (its integrity tag does not match)",
                lease.id
            )))
        }
    }

    /// Checks every stored key's tag, reporting failures, and that no revocation was undone
    /// (fewer intact revoked keys than the checkpoint at unseal counted); run once after unseal.
    pub(crate) async fn check_every_key(&self, store: &dyn Store, revoked_at_open: u64) {
        let mut revoked = 0u64;
        let mut after = None;
        loop {
            let page = match store
                .list_keys(keyward_store::KeyQuery {
                    after,
                    limit: 1000,
                    ..keyward_store::KeyQuery::default()
                })
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "could not check the keys' integrity tags");
                    return;
                }
            };
            let full = page.len() == 1000;
            after = page.last().map(|k| k.id);
            for key in page {
                if let Some(key) = self.intact_key(key)
                    && key.status == keyward_core::KeyStatus::Revoked
                {
                    revoked += 1;
                }
            }
            if !full {
                if revoked < revoked_at_open {
                    self.findings.report(format!(
                        "revocations undone: {revoked} revoked keys in the store, {revoked_at_open} \
                         revoked by keyward (key rows were restored from an earlier copy)"
                    ));
                }
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Checks the whole audit chain, reporting a break (an edit in the middle of the log that
    /// left its head alone is found here), and learns from it every key ever revoked. Returns
    /// whether any was learned. Run once after unseal, beside serving.
    pub(crate) async fn check_audit_chain(&self, store: &dyn Store) -> bool {
        let mut revoked = Vec::new();
        let report = crate::audit::walk_chain(store, |entry| {
            revoked.extend(crate::audit::revoked_keys(entry));
        })
        .await;
        let learned = !revoked.is_empty();
        crate::write(&self.revoked).extend(revoked);
        match report {
            Ok(crate::audit::ChainReport::Broken(broken)) => {
                self.findings.report(format!("audit log: {broken}"));
            }
            Ok(crate::audit::ChainReport::Intact { entries }) => {
                tracing::debug!(entries, "audit chain verified");
            }
            Err(e) => tracing::warn!(error = %e, "could not verify the audit chain"),
        }
        learned
    }
}

/// Tags every stored record and the audit head of a store from before integrity tags, and
/// stores the vault's new integrity key with a root key that says it has one: one write,
/// audited. Runs once, at the first unseal after the upgrade.
pub(crate) async fn adopt(
    store: &dyn Store,
    clock: &dyn keyward_core::Clock,
    vault: &OpenVault,
    adoption: crate::vault::Adoption,
) -> Result<(), crate::ServiceError> {
    let mut changes = everything(store).await?;
    let head = store.audit_head().await?;
    let (seq, hash) = head.map_or((0, keyward_core::audit::GENESIS_HASH.to_owned()), |h| {
        (h.seq, h.hash)
    });
    let records = changes.update_keys.len()
        + changes.update_environments.len()
        + changes.upsert_roles.len()
        + changes.upsert_plans.len();
    changes.audit = crate::audit::chain(
        seq,
        &hash,
        clock.now(),
        vec![crate::audit::PendingEntry {
            actor: "system".into(),
            action: AuditAction::VaultIntegrityAdopt,
            target: None,
            details: json!({ "records": records, "audit_entries": seq }),
        }],
    );
    let new_head = changes.audit.last().map(|e| AuditHead {
        seq: e.seq,
        hash: e.hash.clone(),
    });
    changes.vault = Some(adoption.record);
    changes.keyrings = vec![adoption.stored];
    let revoked = revocations(&changes);
    seal_changes(vault.integrity(), &mut changes, new_head.as_ref(), revoked);
    store.apply(changes).await?;
    tracing::warn!(
        records,
        "stored security state is now authenticated: this store predates integrity tags, and \
         what it held at this first unseal was trusted and tagged"
    );
    Ok(())
}
