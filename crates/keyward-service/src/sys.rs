//! Vault operations of an unsealed authority: the audit of unseal and seal, keyring rotation with
//! its background rewrap, and rekeying.

use keyward_core::audit::AuditAction;
use std::sync::Arc;

use keyward_crypto::barrier::{self, Share, UnsealKey};
use keyward_store::{Changes, RewrapProgress, Rewrapped, SealedValue};
use serde_json::json;

use keyward_core::Clock;
use keyward_store::Store;

use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::authz::{Authz, Operation, Target};
use crate::integrity::Integrity;
use crate::secrets::Secrets;
use crate::vault::OpenVault;
use crate::{Actor, ServiceError};

fn random_err(e: keyward_crypto::RandomUnavailable) -> ServiceError {
    ServiceError::internal(e)
}

/// Names a sealed value for a report: never its contents.
fn describe(value: &SealedValue) -> String {
    match value {
        SealedValue::EnvironmentSecret { environment, .. } => {
            format!("environment {environment} HMAC secret")
        }
        SealedValue::SecretVersion {
            environment,
            path,
            version,
            ..
        } => format!("secret {environment}/{path} version {version}"),
    }
}

/// The vault operations service.
#[derive(Debug)]
pub struct Sys {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    vault: Arc<OpenVault>,
    audit: Arc<AuditLog>,
    authz: Arc<Authz>,
    integrity: Arc<Integrity>,
    /// Cached ciphertexts are dropped after each rewrap batch.
    secrets: Arc<Secrets>,
    /// Values re-sealed per write during a rewrap.
    batch: u32,
    /// The rewrap in progress, if any.
    rewrap: tokio::sync::Mutex<Option<RewrapProgress>>,
    rewrap_wake: Arc<tokio::sync::Notify>,
}

impl Sys {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        vault: Arc<OpenVault>,
        audit: Arc<AuditLog>,
        authz: Arc<Authz>,
        integrity: Arc<Integrity>,
        secrets: Arc<Secrets>,
        batch: u32,
    ) -> Self {
        Sys {
            store,
            clock,
            vault,
            audit,
            authz,
            integrity,
            secrets,
            batch: batch.max(1),
            rewrap: tokio::sync::Mutex::new(None),
            rewrap_wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Wakes the rewrap job when a rotation starts one.
    pub(crate) fn rewrap_wake(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.rewrap_wake)
    }

    /// Audits the unseal, after the entry of a seal that could not be audited when it happened
    /// (`late_seal`: who sealed, and when), if there was one.
    pub(crate) async fn note_unsealed(
        &self,
        via: &str,
        rewrap: Option<RewrapProgress>,
        late_seal: Option<(String, keyward_core::Timestamp)>,
    ) -> Result<(), ServiceError> {
        *self.rewrap.lock().await = rewrap.filter(|r| r.finished_at.is_none());
        let mut entries = Vec::new();
        if let Some((actor, at)) = late_seal {
            entries.push(PendingEntry {
                actor,
                action: AuditAction::VaultSeal,
                target: None,
                details: json!({ "sealed_at": at, "audited_late": true }),
            });
        }
        entries.push(PendingEntry {
            actor: "system".into(),
            action: AuditAction::VaultUnseal,
            target: None,
            details: json!({ "via": via }),
        });
        self.audit.only(entries).await
    }

    /// Whether `actor` may seal; refused (and audited as a refusal) otherwise.
    pub(crate) async fn may_seal(&self, actor: &Actor) -> Result<(), ServiceError> {
        self.authz
            .permit(actor, Operation::SysSeal, Target::None)
            .await
    }

    pub(crate) async fn audit_seal(&self, actor: &Actor) -> Result<(), ServiceError> {
        self.audit
            .sealing(vec![PendingEntry {
                actor: actor.audit_name(),
                action: AuditAction::VaultSeal,
                target: None,
                details: json!({}),
            }])
            .await
    }

    async fn vault_record(&self) -> Result<keyward_store::VaultRecord, ServiceError> {
        self.store
            .vault()
            .await?
            .ok_or_else(|| ServiceError::internal("the store lost its vault record"))
    }

    /// The newest keyring term and the latest rewrap.
    pub async fn keyring_status(
        &self,
        actor: &Actor,
    ) -> Result<(u32, Option<RewrapProgress>), ServiceError> {
        self.authz
            .permit(actor, Operation::SysRead, Target::None)
            .await?;
        let record = self.vault_record().await?;
        Ok((record.term, record.rewrap))
    }

    /// Adds a keyring term to every environment's keyring: new values are sealed under it at
    /// once, and a background rewrap re-seals older values under it.
    pub async fn rotate(&self, actor: &Actor) -> Result<(u32, RewrapProgress), ServiceError> {
        self.audit.retrying(|| self.rotate_once(actor)).await
    }

    async fn rotate_once(&self, actor: &Actor) -> Result<(u32, RewrapProgress), ServiceError> {
        self.authz
            .permit(actor, Operation::SysRotate, Target::None)
            .await?;
        let mut head = self.audit.lock().await;
        let mut record = self.vault_record().await?;
        let term = record.term.saturating_add(1);
        let now = self.clock.now();
        let mut rotated = Vec::new();
        let mut stored = Vec::new();
        for env in self.vault.environments() {
            let mut keyring = (*self.vault.keyring(&env)?).clone();
            keyring.rotate_to(term, now.unix_ms()).map_err(random_err)?;
            stored.push(self.vault.seal_keyring(&env, &keyring)?);
            rotated.push((env, Arc::new(keyring)));
        }
        let progress = RewrapProgress {
            term,
            started_at: now,
            total: self.store.count_stale_sealed(term).await?,
            done: 0,
            finished_at: None,
        };
        record.term = term;
        record.rewrap = Some(progress);
        self.audit
            .commit(
                &mut head,
                Changes {
                    vault: Some(record),
                    keyrings: stored,
                    ..Changes::default()
                },
                vec![PendingEntry {
                    actor: actor.audit_name(),
                    action: AuditAction::VaultRotate,
                    target: None,
                    details: json!({ "term": term, "values_to_rewrap": progress.total }),
                }],
            )
            .await?;
        // The change feed installed the rotated keyrings and the new term.
        drop(rotated);
        *self.rewrap.lock().await = Some(progress);
        drop(head);
        self.rewrap_wake.notify_one();
        Ok((term, progress))
    }

    /// Re-seals one batch of values sealed under older terms. Returns whether more may remain.
    /// Each batch and its progress are one write, so a crash loses at most the batch in hand and
    /// the next start resumes from what the store says is still stale.
    pub(crate) async fn rewrap_batch(&self) -> Result<bool, ServiceError> {
        let mut guard = self.rewrap.lock().await;
        let Some(mut progress) = *guard else {
            return Ok(false);
        };
        let stale = self.store.stale_sealed(progress.term, self.batch).await?;
        if stale.is_empty() {
            progress.finished_at = Some(self.clock.now());
            progress.done = progress.done.max(progress.total);
            self.store.rewrap(Vec::new(), progress).await?;
            *guard = None;
            drop(guard);
            self.audit
                .only(vec![PendingEntry {
                    actor: "system".into(),
                    action: AuditAction::VaultRewrapFinish,
                    target: None,
                    details: json!({ "term": progress.term, "values": progress.done }),
                }])
                .await?;
            return Ok(false);
        }
        let mut batch = Vec::with_capacity(stale.len());
        let mut quarantined = Vec::new();
        for value in stale {
            let old = value.ciphertext().to_vec();
            let (ciphertext, term) = match self.reseal(&value).await {
                Ok(resealed) => resealed,
                // A value that does not open (tampered, or corrupt) would stall the rewrap for
                // ever: it is left as it is, marked as done so no later batch takes it again,
                // and reported. Reading it fails as it did before.
                Err(ServiceError::Integrity(_)) => {
                    quarantined.push(describe(&value));
                    (old.clone(), progress.term)
                }
                Err(e) => return Err(e),
            };
            let value = match value {
                SealedValue::EnvironmentSecret { environment, .. } => {
                    SealedValue::EnvironmentSecret {
                        environment,
                        ciphertext,
                    }
                }
                SealedValue::SecretVersion {
                    environment,
                    path,
                    version,
                    ..
                } => SealedValue::SecretVersion {
                    environment,
                    path,
                    version,
                    ciphertext,
                },
            };
            batch.push(Rewrapped { value, old, term });
        }
        let count = batch.len() as u64;
        progress.done = progress.done.saturating_add(count);
        self.store.rewrap(batch, progress).await?;
        if !quarantined.is_empty() {
            for what in &quarantined {
                self.integrity
                    .report(format!("sealed value {what} (quarantined by the rewrap)"));
            }
            self.audit
                .only(vec![PendingEntry {
                    actor: "system".into(),
                    action: AuditAction::VaultRewrapQuarantine,
                    target: None,
                    details: json!({ "term": progress.term, "values": quarantined }),
                }])
                .await?;
        }
        // Cached ciphertexts still open (old terms stay in the keyrings); drop them anyway so
        // reads see what the store holds.
        self.secrets.forget_cached();
        *guard = Some(progress);
        Ok(true)
    }

    /// Opens a stale value and seals it again under its environment's newest term.
    async fn reseal(&self, value: &SealedValue) -> Result<(Vec<u8>, u32), ServiceError> {
        let env = value.environment();
        let keyring = self.vault.keyring(env)?;
        let term = keyring.newest();
        let ciphertext = match value {
            SealedValue::EnvironmentSecret { ciphertext, .. } => {
                let secret = self.vault.open_hmac_secret(env, ciphertext)?;
                self.vault.seal_hmac_secret(env, &secret)?
            }
            SealedValue::SecretVersion {
                path,
                version,
                ciphertext,
                ..
            } => {
                let incarnation = self
                    .store
                    .secret(env.clone(), path.clone())
                    .await?
                    .and_then(|m| m.incarnation);
                let plain = self.vault.open_secret(
                    env,
                    path,
                    incarnation.as_deref(),
                    *version,
                    ciphertext,
                )?;
                self.vault
                    .seal_secret(env, path, incarnation.as_deref(), *version, &plain)?
            }
        };
        Ok((ciphertext, term))
    }

    /// Runs rewrap batches until none remain. Errors are logged; the next wake retries.
    pub(crate) async fn run_rewrap(&self) {
        loop {
            match self.rewrap_batch().await {
                Ok(true) => tokio::task::yield_now().await,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "rewrap batch failed; will retry");
                    return;
                }
            }
        }
    }

    pub(crate) async fn rekey(
        &self,
        actor: &Actor,
        current: &UnsealKey,
        shares: u8,
        threshold: u8,
    ) -> Result<(UnsealKey, Vec<Share>), ServiceError> {
        self.audit
            .retrying(|| self.rekey_once(actor, current, shares, threshold))
            .await
    }

    async fn rekey_once(
        &self,
        actor: &Actor,
        current: &UnsealKey,
        shares: u8,
        threshold: u8,
    ) -> Result<(UnsealKey, Vec<Share>), ServiceError> {
        self.authz
            .permit(actor, Operation::SysRekey, Target::None)
            .await?;
        let mut head = self.audit.lock().await;
        let mut record = self.vault_record().await?;
        // The current key must open the vault; what it opens is then retired.
        current
            .open_root(&record.sealed_root)
            .map_err(|_| ServiceError::InvalidField {
                field: "shares",
                message: "these shares (or this unseal key) do not open this vault".into(),
            })?;
        // A new root key, as Vault's rekey makes: every keyring is resealed under it, so the
        // retired shares with any backup of the old vault record open nothing stored after.
        let root = keyward_crypto::barrier::RootKey::generate().map_err(random_err)?;
        let keyrings = self.vault.sealed_under(&root)?;
        let key = UnsealKey::generate().map_err(random_err)?;
        let tag = barrier::new_vault_tag().map_err(random_err)?;
        let parts = barrier::split(&key, shares, threshold, &tag).map_err(|e| {
            ServiceError::InvalidField {
                field: "new_shares",
                message: e.to_string(),
            }
        })?;
        record.sealed_root = key.seal_root(&root)?;
        record.tag = tag;
        record.shares = shares;
        record.threshold = threshold;
        let resealed = keyrings.len();
        // The new root is this node's before the commit, so the change feed opens the resealed
        // keyrings with it; a failed commit puts the old one back (the writer is held meanwhile,
        // so nothing else seals a keyring in between).
        let previous = self.vault.install_root(root);
        let committed = self
            .audit
            .commit(
            &mut head,
            Changes {
                vault: Some(record),
                keyrings,
                ..Changes::default()
            },
            vec![PendingEntry {
                actor: actor.audit_name(),
                action: AuditAction::VaultRekey,
                target: None,
                details: json!({ "shares": shares, "threshold": threshold, "new_root_key": true, "keyrings_resealed": resealed }),
            }],
        )
        .await;
        if let Err(e) = committed {
            self.vault.install_root(previous);
            return Err(e);
        }
        Ok((key, parts))
    }
}
