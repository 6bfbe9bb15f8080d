//! The change feed's consumer: this node's verification cache and catalogs learn of every
//! committed change from the store, whichever instance (or, with a shared backend, whichever
//! node) made it, never from the write itself.
//!
//! The store calls [`FeedListener::applied`] synchronously after each commit and before `apply`
//! returns, one commit at a time, so a revoke that returned has already emptied every
//! listening cache, and catalogs change in commit order. Records arrive as committed; each is
//! checked against its integrity tag before this node believes it.

use std::sync::Arc;

use keyward_store::{ChangeListener, Changes};

use crate::VerifyCache;
use crate::catalog::Catalog;
use crate::integrity::{self, Integrity};
use crate::quotas::QuotaBook;
use crate::secrets::Secrets;
use crate::vault::OpenVault;

/// What learns from the feed: this node's caches and catalogs. The store holds it weakly, so
/// it stops listening when the authority that owns it is dropped.
#[derive(Debug)]
pub(crate) struct FeedListener {
    pub(crate) cache: Arc<VerifyCache>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) quotas: Arc<QuotaBook>,
    pub(crate) vault: Arc<OpenVault>,
    pub(crate) secrets: Arc<Secrets>,
    pub(crate) integrity: Arc<Integrity>,
    /// Notified when an operator sealed the vault on any node: the node seals this one too.
    pub(crate) seal_requested: Arc<tokio::sync::Notify>,
    /// Notified when a commit wrote events to the outbox: the webhook dispatcher runs then.
    pub(crate) outbox_written: Arc<tokio::sync::Notify>,
}

impl ChangeListener for FeedListener {
    fn applied(&self, changes: &Changes) {
        self.learn(changes);
        if !changes.outbox.is_empty() {
            self.outbox_written.notify_one();
        }
    }

    /// Another node's changes may have been missed: serve nothing cached until the feed has
    /// caught up. Catalogs (environments, roles, plans) stay as they are; the rows missed are
    /// delivered, and they with them, before [`ChangeListener::resumed`].
    fn interrupted(&self) {
        self.cache.vouch(false);
        self.secrets.vouch_for_cached(false);
    }

    fn resumed(&self) {
        self.cache.vouch(true);
        self.secrets.vouch_for_cached(true);
    }
}

impl FeedListener {
    /// Brings this node's caches and catalogs up to date with a committed change.
    fn learn(&self, changes: &Changes) {
        if changes.seal {
            self.seal_requested.notify_one();
        }
        // The audit log says what was revoked and sealed, whichever node wrote it, even if the
        // record it changed did not reach this node: a revoked key stops verifying here, and
        // a seal seals this node. (Both only ever refuse more.)
        // (Rows come first: a revocation whose row was seen is known by the time its entry
        // arrives, and costs nothing more.)
        let mut revoked_unseen = false;
        for key in changes.insert_keys.iter().chain(&changes.update_keys) {
            if key.status == keyward_core::KeyStatus::Revoked {
                self.integrity.note_revoked(key.id);
            }
        }
        for entry in &changes.audit {
            for id in crate::audit::revoked_keys(entry) {
                revoked_unseen |= self.integrity.note_revoked(id);
            }
            // (An entry written late, at an unseal, records a seal that already happened.)
            if entry.action == keyward_core::audit::AuditAction::VaultSeal.as_str()
                && entry.details.get("audited_late") != Some(&serde_json::Value::Bool(true))
            {
                self.seal_requested.notify_one();
            }
        }
        if revoked_unseen {
            // The cache is keyed by hash, and the entry names the key by id: read all afresh.
            self.cache.clear();
        }
        for key in &changes.insert_keys {
            self.cache.add_known(&key.hash);
        }
        for key in changes.insert_keys.iter().chain(&changes.update_keys) {
            self.cache.invalidate(&key.hash);
        }
        for (id, state) in &changes.set_quotas {
            self.quotas.set(*id, *state);
        }
        let integrity_key = self.integrity.key();
        let mut catalogs_changed = false;
        // Keyrings first: a new environment's HMAC secret opens under its keyring.
        for stored in &changes.keyrings {
            match self.vault.open_stored(stored) {
                Ok(Some((env, keyring))) => self.vault.install(env, keyring),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    scope = %stored.scope,
                    error = %e,
                    "a keyring was sealed under a root key this node does not hold (a rekey by \
                     another instance); unseal this node again before it seals new keyrings"
                ),
            }
        }
        if let Some(vault) = &changes.vault
            && integrity::vault_intact(integrity_key, vault)
        {
            self.vault.set_term(vault.term);
        }
        for (env, sealed) in &changes.environment_secrets {
            match self.vault.open_hmac_secret(env, sealed) {
                Ok(secret) => self.catalog.add_hmac_secret(env.clone(), &secret),
                Err(e) => {
                    tracing::warn!(environment = %env, error = %e, "cannot open a new environment's secret");
                }
            }
        }
        for record in changes
            .environments
            .iter()
            .chain(&changes.update_environments)
        {
            catalogs_changed = true;
            let intact = integrity::environment_intact(integrity_key, record);
            if !intact {
                self.integrity
                    .report(format!("environment {}", record.name));
            }
            self.catalog.learn_environment(record, intact);
        }
        for role in &changes.upsert_roles {
            catalogs_changed = true;
            let intact = integrity::role_intact(integrity_key, role);
            if !intact {
                self.integrity.report(format!("role {}", role.name));
            }
            self.catalog.learn_role(role, intact);
        }
        for name in &changes.delete_roles {
            catalogs_changed = true;
            self.catalog.forget_role(name);
        }
        for plan in &changes.upsert_plans {
            catalogs_changed = true;
            let intact = integrity::plan_intact(integrity_key, plan);
            if !intact {
                self.integrity.report(format!("plan {}", plan.name));
            }
            self.catalog.learn_plan(plan, intact);
        }
        for name in &changes.delete_plans {
            catalogs_changed = true;
            self.catalog.forget_plan(name);
        }
        // Secrets are cached as stored (sealed): a changed one is read afresh.
        let secrets = changes
            .upsert_secrets
            .iter()
            .map(|m| (&m.environment, &m.path))
            .chain(
                changes
                    .upsert_secret_versions
                    .iter()
                    .map(|v| (&v.environment, &v.path)),
            )
            .chain(
                changes
                    .delete_secret_versions
                    .iter()
                    .map(|(e, p, _)| (e, p)),
            )
            .chain(changes.delete_secrets.iter().map(|(e, p)| (e, p)));
        for (env, path) in secrets {
            self.secrets.forget(env, path);
        }
        if catalogs_changed {
            // Cached keys carry their environment, roles and plan as they were: refill them.
            // Catalog changes are rare; this is cheaper than indexing keys by each.
            self.cache.clear();
        }
    }
}
