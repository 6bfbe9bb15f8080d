//! The change feed's consumer: this node's verification cache and catalogs learn of every
//! committed change from the store, whichever instance (or, with a shared backend, whichever
//! node) made it, never from the write itself.
//!
//! The store calls [`Authority::learn`] synchronously after each commit and before `apply`
//! returns, one commit at a time, so a revoke that returned has already emptied every
//! listening cache, and catalogs change in commit order. Records arrive as committed; each is
//! checked against its integrity tag before this node believes it.

use std::sync::{Arc, Weak};

use keyward_store::{ChangeListener, Changes};

use crate::{Authority, EnvState, integrity, write};

/// Hands the feed to an authority while it lives.
#[derive(Debug)]
pub(crate) struct FeedListener {
    pub(crate) authority: Weak<Authority>,
}

impl ChangeListener for FeedListener {
    fn applied(&self, changes: &Changes) {
        if let Some(authority) = self.authority.upgrade() {
            authority.learn(changes);
        }
    }
}

impl Authority {
    /// Brings this node's caches and catalogs up to date with a committed change.
    pub(crate) fn learn(&self, changes: &Changes) {
        for key in &changes.insert_keys {
            self.cache.add_known(&key.hash);
        }
        for key in changes.insert_keys.iter().chain(&changes.update_keys) {
            self.cache.invalidate(&key.hash);
        }
        for (id, state) in &changes.set_quotas {
            self.quotas.set(*id, *state);
        }
        let integrity_key = self.vault.integrity();
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
                Ok(secret) => write(&self.keyring).add(env.clone(), &secret),
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
            if integrity::environment_intact(integrity_key, record) {
                write(&self.environments)
                    .insert(record.name.clone(), Arc::new(EnvState::new(record.clone())));
            } else {
                self.findings.report(format!("environment {}", record.name));
                write(&self.environments).remove(&record.name);
            }
        }
        for role in &changes.upsert_roles {
            catalogs_changed = true;
            if integrity::role_intact(integrity_key, role) {
                write(&self.roles).insert(role.name.clone(), Arc::new(role.clone()));
            } else {
                self.findings.report(format!("role {}", role.name));
                write(&self.roles).remove(&role.name);
            }
        }
        for name in &changes.delete_roles {
            catalogs_changed = true;
            write(&self.roles).remove(name);
        }
        for plan in &changes.upsert_plans {
            catalogs_changed = true;
            if integrity::plan_intact(integrity_key, plan) {
                write(&self.plans).insert(plan.name.clone(), Arc::new(plan.clone()));
                write(&self.tainted_plans).remove(&plan.name);
            } else {
                self.findings.report(format!("plan {}", plan.name));
                write(&self.plans).remove(&plan.name);
                write(&self.tainted_plans).insert(plan.name.clone());
            }
        }
        for name in &changes.delete_plans {
            catalogs_changed = true;
            write(&self.plans).remove(name);
        }
        if catalogs_changed {
            // Cached keys carry their environment, roles and plan as they were: refill them.
            // Catalog changes are rare; this is cheaper than indexing keys by each.
            self.cache.clear();
        }
    }
}
