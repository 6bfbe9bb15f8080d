//! The catalogs every capability reads: environments (their policies and the HMAC secrets that
//! hash their keys), roles and plans, as this node believes them.
//!
//! Only records whose integrity tag checks out are in it: an environment, role or plan edited
//! without the unseal key is left out, so what depends on it fails closed. It changes only
//! through the change feed ([`crate::feed`]), never through the write that made a change, so
//! every node's catalog follows the store in commit order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use keyward_core::model::ADMIN_ENVIRONMENT;
use keyward_core::{
    EnvironmentName, KeyHash, KeyRecord, ParsedKey, Permission, PlanName, PlanRecord, RoleName,
    RoleRecord, Timestamp,
};
use keyward_crypto::HmacSecret;
use keyward_store::{EnvironmentRecord, Store};

use crate::integrity::{self, Integrity};
use crate::{EnvState, Keyring, ServiceError, read, write};

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field,
        message: message.into(),
    }
}

/// A key's lifetime in seconds, for policy checks.
fn lifetime_s(created_at: Timestamp, expires_at: Option<Timestamp>) -> Option<u64> {
    expires_at.map(|at| {
        u64::try_from((at.unix_ms() - created_at.unix_ms()).max(0))
            .unwrap_or(0)
            .div_ceil(1000)
    })
}

/// Whether `env` is the environment of admin keys.
pub(crate) fn is_admin_environment(env: &str) -> bool {
    env == ADMIN_ENVIRONMENT
}

pub(crate) type Roles = HashMap<RoleName, Arc<RoleRecord>>;

#[derive(Debug)]
pub(crate) struct Catalog {
    environments: RwLock<HashMap<EnvironmentName, Arc<EnvState>>>,
    roles: RwLock<Roles>,
    plans: RwLock<HashMap<PlanName, Arc<PlanRecord>>>,
    /// Plans left out for failing their check: keys on them fail closed.
    tainted_plans: RwLock<HashSet<PlanName>>,
    /// The environments' HMAC keys. Grows when an environment is created.
    hashers: RwLock<Keyring>,
}

impl Catalog {
    /// Loads the catalogs from the store, leaving out (and reporting) what fails its check, and
    /// opens every environment's HMAC secret with the vault.
    pub(crate) async fn load(
        store: &dyn Store,
        vault: &crate::vault::OpenVault,
        integrity: &Integrity,
    ) -> Result<Self, ServiceError> {
        let key = integrity.key();
        let mut environments = HashMap::new();
        let stored_environments = store.environments().await?;
        for record in &stored_environments {
            if integrity::environment_intact(key, record) {
                environments.insert(record.name.clone(), Arc::new(EnvState::new(record.clone())));
            } else {
                integrity.report(format!("environment {}", record.name));
            }
        }
        let mut roles = HashMap::new();
        for role in store.roles().await? {
            if integrity::role_intact(key, &role) {
                roles.insert(role.name.clone(), Arc::new(role));
            } else {
                integrity.report(format!("role {}", role.name));
            }
        }
        let mut plans = HashMap::new();
        let mut tainted_plans = HashSet::new();
        for plan in store.plans().await? {
            if integrity::plan_intact(key, &plan) {
                plans.insert(plan.name.clone(), Arc::new(plan));
            } else {
                integrity.report(format!("plan {}", plan.name));
                tainted_plans.insert(plan.name);
            }
        }
        let mut secrets = Vec::new();
        for (env, sealed) in store.environment_secrets().await? {
            secrets.push((env.clone(), vault.open_hmac_secret(&env, &sealed)?));
        }
        for env in &stored_environments {
            if !secrets.iter().any(|(name, _)| *name == env.name) {
                return Err(ServiceError::Integrity(format!(
                    "environment {} has no stored secret",
                    env.name
                )));
            }
        }
        Ok(Catalog {
            environments: RwLock::new(environments),
            roles: RwLock::new(roles),
            plans: RwLock::new(plans),
            tainted_plans: RwLock::new(tainted_plans),
            hashers: RwLock::new(Keyring::new(secrets)),
        })
    }

    // ---- hashing -----------------------------------------------------------------------------

    /// The stored form (HMAC) of a presented key, if its environment exists.
    pub(crate) fn hash_of(&self, parsed: &ParsedKey<'_>) -> Option<KeyHash> {
        self.hash(parsed.environment(), parsed.expose())
    }

    /// The HMAC of `secret` under `environment`'s key, if the environment exists.
    pub(crate) fn hash(&self, environment: &str, secret: &str) -> Option<KeyHash> {
        read(&self.hashers)
            .hasher(environment)
            .map(|h| h.hash(secret))
    }

    // ---- environments ------------------------------------------------------------------------

    pub(crate) fn environment(&self, name: &str) -> Option<Arc<EnvState>> {
        read(&self.environments)
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, state)| Arc::clone(state))
    }

    pub(crate) fn environment_records(&self) -> Vec<EnvironmentRecord> {
        let mut out: Vec<EnvironmentRecord> = read(&self.environments)
            .values()
            .map(|e| e.record.clone())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    // ---- roles and plans ---------------------------------------------------------------------

    /// The roles, for a decision that reads several (hold it briefly: changes wait for it).
    pub(crate) fn role_map(&self) -> RwLockReadGuard<'_, Roles> {
        read(&self.roles)
    }

    pub(crate) fn role(&self, name: &RoleName) -> Option<Arc<RoleRecord>> {
        read(&self.roles).get(name).cloned()
    }

    pub(crate) fn role_records(&self) -> Vec<RoleRecord> {
        let mut out: Vec<RoleRecord> = read(&self.roles).values().map(|r| (**r).clone()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn plan(&self, name: &PlanName) -> Option<Arc<PlanRecord>> {
        read(&self.plans).get(name).cloned()
    }

    pub(crate) fn plan_records(&self) -> Vec<PlanRecord> {
        let mut out: Vec<PlanRecord> = read(&self.plans).values().map(|p| (**p).clone()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether a key on `plan` must fail closed: the plan was tampered with, or it is gone
    /// although a live key is on it (no plan with keys on it can be deleted).
    pub(crate) fn plan_untrusted(&self, plan: &PlanName, key_is_live: bool) -> bool {
        read(&self.tainted_plans).contains(plan)
            || (key_is_live && !read(&self.plans).contains_key(plan))
    }

    // ---- what keys hold ----------------------------------------------------------------------

    /// The permissions `key` holds directly and through its roles, and its grants with roles
    /// expanded.
    pub(crate) fn held_by(
        &self,
        key: &KeyRecord,
    ) -> (Vec<Permission>, Vec<(Permission, Timestamp)>) {
        let roles = read(&self.roles);
        let mut held = key.permissions.clone();
        for role in &key.access.roles {
            if let Some(role) = roles.get(role) {
                held.extend(role.permissions.iter().cloned());
            }
        }
        let mut grants = Vec::new();
        for grant in &key.access.grants {
            if let Some(p) = &grant.permission {
                grants.push((p.clone(), grant.expires_at));
            }
            if let Some(role) = grant.role.as_ref().and_then(|r| roles.get(r)) {
                grants.extend(
                    role.permissions
                        .iter()
                        .map(|p| (p.clone(), grant.expires_at)),
                );
            }
        }
        (held, grants)
    }

    /// A key's limits: its plan's, then its own (its own replace the plan's of the same name);
    /// the plan's graduated response; and the key's quota, its own or else the plan's.
    pub(crate) fn limits_of(&self, key: &KeyRecord) -> crate::cache::KeyExtras {
        let own = &key.access.ratelimits;
        let plan = key.access.plan.as_ref().and_then(|p| self.plan(p));
        let mut limits: Vec<keyward_core::RateLimit> = plan
            .iter()
            .flat_map(|p| p.ratelimits.iter())
            .filter(|l| !own.iter().any(|o| o.name == l.name))
            .cloned()
            .collect();
        limits.extend(own.iter().cloned());
        let quota = key.access.quota.or_else(|| {
            plan.as_ref()
                .and_then(|p| p.quota)
                .map(|refill| keyward_core::QuotaConfig {
                    refill: Some(refill),
                })
        });
        crate::cache::KeyExtras {
            limits,
            graduated: plan.and_then(|p| p.graduated),
            quota,
        }
    }

    /// Checks a key's settings against its environment's policy and that its plan and roles
    /// exist.
    pub(crate) fn check_key_policy(&self, key: &KeyRecord) -> Result<(), ServiceError> {
        crate::access::check_ratelimits(&key.access.ratelimits)?;
        if let Some(concurrency) = &key.access.concurrency {
            concurrency
                .validate()
                .map_err(|(field, message)| ServiceError::InvalidField {
                    field,
                    message: message.into(),
                })?;
        }
        if let Some(plan) = &key.access.plan
            && !read(&self.plans).contains_key(plan)
        {
            return Err(invalid("plan", "no such plan"));
        }
        let env = self
            .environment(key.environment.as_str())
            .ok_or_else(|| invalid("environment", "no such environment"))?;
        {
            let roles = read(&self.roles);
            for (i, role) in key.access.roles.iter().enumerate() {
                if !roles.contains_key(role) {
                    return Err(invalid("roles", format!("roles[{i}]: no such role")));
                }
            }
        }
        let (held, _) = self.held_by(key);
        env.record.policy.check_key(
            lifetime_s(key.created_at, key.expires_at),
            &held,
            !key.access.allowed_cidrs.is_empty(),
        )?;
        Ok(())
    }

    // ---- learning from the change feed -------------------------------------------------------

    pub(crate) fn add_hmac_secret(&self, env: EnvironmentName, secret: &HmacSecret) {
        write(&self.hashers).add(env, secret);
    }

    /// Installs an environment as committed, or leaves it out if it failed its check.
    pub(crate) fn learn_environment(&self, record: &EnvironmentRecord, intact: bool) {
        let mut environments = write(&self.environments);
        if intact {
            environments.insert(record.name.clone(), Arc::new(EnvState::new(record.clone())));
        } else {
            environments.remove(&record.name);
        }
    }

    pub(crate) fn learn_role(&self, role: &RoleRecord, intact: bool) {
        let mut roles = write(&self.roles);
        if intact {
            roles.insert(role.name.clone(), Arc::new(role.clone()));
        } else {
            roles.remove(&role.name);
        }
    }

    pub(crate) fn forget_role(&self, name: &RoleName) {
        write(&self.roles).remove(name);
    }

    pub(crate) fn learn_plan(&self, plan: &PlanRecord, intact: bool) {
        let mut plans = write(&self.plans);
        let mut tainted = write(&self.tainted_plans);
        if intact {
            plans.insert(plan.name.clone(), Arc::new(plan.clone()));
            tainted.remove(&plan.name);
        } else {
            plans.remove(&plan.name);
            tainted.insert(plan.name.clone());
        }
    }

    pub(crate) fn forget_plan(&self, name: &PlanName) {
        write(&self.plans).remove(name);
    }
}
