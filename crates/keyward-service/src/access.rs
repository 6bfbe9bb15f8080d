//! The access service: environments and their policies, roles, plans, temporary grants, and
//! the explanation of a key's effective permissions.

use keyward_core::audit::AuditAction;
use std::net::IpAddr;

use keyward_core::{
    Cidr, CidrSet, EnvironmentName, EnvironmentPolicy, Grant, KeyId, KeyRecord, PathRule,
    Permission, PermissionQuery, PlanName, PlanRecord, RoleName, RoleRecord, Timestamp,
};
use keyward_store::{Changes, EnvironmentRecord};
use serde_json::json;

use std::sync::Arc;

use keyward_core::Clock;
use keyward_store::Store;

use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::authz::{Authz, Operation, Target};
use crate::catalog::{Catalog, is_admin_environment};
use crate::integrity::Integrity;
use crate::keys::Keys;
use crate::vault::OpenVault;
use crate::{Actor, EnvState, ServiceError};

/// What a verification asks beyond the key itself.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The environment the caller expects the key to belong to.
    pub environment: Option<&'a EnvironmentName>,
    /// Permissions the request needs.
    pub permissions: Option<&'a PermissionQuery>,
    /// The request's method and path, checked against the key's path rules.
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// The address the request came from, checked against network rules.
    pub ip: Option<IpAddr>,
    /// What the request costs against the key's rate limits (default 1; 0 only reads them).
    pub cost: u64,
    /// Take a concurrency lease, if the key has a concurrency limit.
    pub lease: bool,
    /// The environments the calling admin key is scoped to, if it is: a key of any other
    /// environment answers as an unknown key would, revealing nothing of it.
    pub scope: Option<&'a [EnvironmentName]>,
}

impl Default for VerifyRequest<'_> {
    fn default() -> Self {
        VerifyRequest {
            environment: None,
            permissions: None,
            method: None,
            path: None,
            ip: None,
            cost: 1,
            lease: false,
            scope: None,
        }
    }
}

/// What a plan holds, as an admin gives it.
#[derive(Debug, Clone, Default)]
pub struct PlanSpec {
    pub description: Option<String>,
    pub ratelimits: Vec<keyward_core::RateLimit>,
    pub graduated: Option<keyward_core::Graduated>,
    pub quota: Option<keyward_core::QuotaRefill>,
}

/// A grant to add to a key.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub permission: Option<Permission>,
    pub role: Option<RoleName>,
    pub expires_at: Option<Timestamp>,
    pub ttl_s: Option<u64>,
}

/// One line of [`Explanation`].
#[derive(Debug, Clone, PartialEq)]
pub struct EffectivePermission {
    pub permission: Permission,
    /// `direct`, `role` or `grant`.
    pub source: &'static str,
    pub role: Option<RoleName>,
    /// For grants: when it lapses.
    pub expires_at: Option<Timestamp>,
    /// Why the environment's policy takes it away, if it does.
    pub removed_by_policy: Option<String>,
}

/// Where each of a key's permissions comes from, and what its environment's policy removes.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub key: KeyRecord,
    pub permissions: Vec<EffectivePermission>,
    pub policy: EnvironmentPolicy,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field,
        message: message.into(),
    }
}

/// Checks a policy's own values, naming the first bad one.
fn check_policy(policy: &EnvironmentPolicy) -> Result<(), ServiceError> {
    if policy
        .max_ttl_s
        .is_some_and(|ttl| !(1..=crate::limits::MAX_TTL_S).contains(&ttl))
    {
        return Err(invalid(
            "policy.max_ttl_s",
            format!("must be between 1 and {}", crate::limits::MAX_TTL_S),
        ));
    }
    if let Some(rotation) = &policy.rotation {
        crate::rotation::check_policy(crate::rotation::Field::Environment, rotation)?;
    }
    for (field, list) in [
        ("policy.allowed_cidrs", &policy.allowed_cidrs),
        ("policy.denied_cidrs", &policy.denied_cidrs),
    ] {
        CidrSet::parse(list).map_err(|(i, e)| invalid(field, format!("entry {i}: {e}")))?;
    }
    Ok(())
}

/// The access service.
#[derive(Debug)]
pub struct Access {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
    audit: Arc<AuditLog>,
    authz: Arc<Authz>,
    keys: Arc<Keys>,
    vault: Arc<OpenVault>,
    integrity: Arc<Integrity>,
}

impl Access {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        catalog: Arc<Catalog>,
        audit: Arc<AuditLog>,
        authz: Arc<Authz>,
        keys: Arc<Keys>,
        vault: Arc<OpenVault>,
        integrity: Arc<Integrity>,
    ) -> Self {
        Access {
            store,
            clock,
            catalog,
            audit,
            authz,
            keys,
            vault,
            integrity,
        }
    }

    // ---- environments ------------------------------------------------------------------------

    pub fn environments(&self) -> Vec<EnvironmentRecord> {
        self.catalog.environment_records()
    }

    pub fn environment_record(&self, name: &str) -> Result<EnvironmentRecord, ServiceError> {
        self.catalog
            .environment(name)
            .map(|e| e.record.clone())
            .ok_or(ServiceError::NotFound {
                what: "environment",
            })
    }

    /// Creates an environment with its own HMAC secret (so its own key store) and policy.
    pub async fn create_environment(
        &self,
        actor: &Actor,
        name: EnvironmentName,
        policy: EnvironmentPolicy,
    ) -> Result<EnvironmentRecord, ServiceError> {
        self.audit
            .retrying(|| self.create_environment_once(actor, name.clone(), policy.clone()))
            .await
    }

    async fn create_environment_once(
        &self,
        actor: &Actor,
        name: EnvironmentName,
        policy: EnvironmentPolicy,
    ) -> Result<EnvironmentRecord, ServiceError> {
        check_policy(&policy)?;
        // A new environment is seen by every admin key that is not scoped: a shared object.
        self.authz
            .permit(actor, Operation::EnvironmentWrite, Target::Shared)
            .await?;
        let mut head = self.audit.lock().await;
        // The store too: an environment left out of the catalog (it failed its integrity
        // check) still holds the name.
        if self.catalog.environment(name.as_str()).is_some()
            || self
                .store
                .environments()
                .await?
                .iter()
                .any(|e| e.name == name)
        {
            return Err(ServiceError::Conflict(format!("environment {name} exists")));
        }
        let made = self
            .vault
            .new_environment(&name, self.clock.now().unix_ms())?;
        let record = EnvironmentRecord {
            name: name.clone(),
            created_at: self.clock.now(),
            policy,
            mac: None,
        };
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::EnvironmentCreate,
            target: Some(name.to_string()),
            details: json!({ "policy": record.policy }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    environments: vec![record.clone()],
                    keyrings: vec![made.stored],
                    environment_secrets: vec![(name.clone(), made.sealed_secret)],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        // The change feed has installed the keyring, the secret and the environment.
        drop((made.keyring, made.secret));
        Ok(record)
    }

    /// Replaces an environment's policy. Existing keys keep working; the new policy applies to
    /// every verification from now on and to every later create and update.
    pub async fn update_environment(
        &self,
        actor: &Actor,
        name: &EnvironmentName,
        policy: EnvironmentPolicy,
    ) -> Result<EnvironmentRecord, ServiceError> {
        self.audit
            .retrying(|| self.update_environment_once(actor, name, policy.clone()))
            .await
    }

    async fn update_environment_once(
        &self,
        actor: &Actor,
        name: &EnvironmentName,
        policy: EnvironmentPolicy,
    ) -> Result<EnvironmentRecord, ServiceError> {
        check_policy(&policy)?;
        self.authz
            .permit(
                actor,
                Operation::EnvironmentWrite,
                Target::Environment(name),
            )
            .await?;
        let admin = is_admin_environment(name.as_str());
        if admin {
            let network = EnvState::new(EnvironmentRecord {
                name: name.clone(),
                created_at: Timestamp::UNIX_EPOCH,
                policy: policy.clone(),
                mac: None,
            })
            .network;
            check_not_locked_out(actor, &network)?;
        }
        let mut head = self.audit.lock().await;
        // The admin environment's policy reaches every admin key.
        if admin
            && let Some((id, refusal)) = self.authz.refusal_among(actor, |_| true, None).await?
        {
            drop(head);
            return Err(self
                .authz
                .refuse(
                    actor,
                    Operation::EnvironmentWrite,
                    Some(id.to_string()),
                    refusal,
                )
                .await);
        }
        let mut record = self.environment_record(name.as_str())?;
        record.policy = policy;
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::EnvironmentUpdate,
            target: Some(name.to_string()),
            details: json!({ "policy": record.policy }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    update_environments: vec![record.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok(record)
    }

    // ---- roles -------------------------------------------------------------------------------

    pub fn roles(&self) -> Vec<RoleRecord> {
        self.catalog.role_records()
    }

    pub fn role(&self, name: &RoleName) -> Result<RoleRecord, ServiceError> {
        self.catalog
            .role(name)
            .map(|r| (*r).clone())
            .ok_or(ServiceError::NotFound { what: "role" })
    }

    /// Creates a role, or replaces one (`replace`). Every key holding it sees the change before
    /// this returns.
    pub async fn put_role(
        &self,
        actor: &Actor,
        name: RoleName,
        description: Option<String>,
        permissions: Vec<Permission>,
        rotation: Option<keyward_core::RotationPolicy>,
        replace: bool,
    ) -> Result<RoleRecord, ServiceError> {
        self.audit
            .retrying(|| {
                self.put_role_once(
                    actor,
                    name.clone(),
                    description.clone(),
                    permissions.clone(),
                    rotation,
                    replace,
                )
            })
            .await
    }

    async fn put_role_once(
        &self,
        actor: &Actor,
        name: RoleName,
        description: Option<String>,
        permissions: Vec<Permission>,
        rotation: Option<keyward_core::RotationPolicy>,
        replace: bool,
    ) -> Result<RoleRecord, ServiceError> {
        if let Some(policy) = &rotation {
            crate::rotation::check_policy(crate::rotation::Field::Role, policy)?;
        }
        if permissions.len() > crate::limits::PERMISSIONS {
            return Err(invalid(
                "permissions",
                format!("at most {} permissions", crate::limits::PERMISSIONS),
            ));
        }
        if let Some(d) = &description
            && (d.chars().count() > crate::limits::PURPOSE_CHARS || d.chars().any(char::is_control))
        {
            return Err(invalid("description", "at most 1000 printable characters"));
        }
        self.authz
            .permit(actor, Operation::RoleWrite, Target::Shared)
            .await?;
        if self.catalog.role(&name).is_some_and(|r| r.builtin) {
            return Err(ServiceError::Conflict(format!(
                "role {name} is built in and cannot be changed; create a role of your own"
            )));
        }
        let mut head = self.audit.lock().await;
        let now = self.clock.now();
        if replace {
            // The new permissions reach every admin key that holds the role: checked under the
            // writer, so none can take the role in between.
            if let Some((id, refusal)) = self
                .authz
                .refusal_among(
                    actor,
                    |key| crate::authz::holds_role(key, &name, now),
                    Some((&name, &permissions)),
                )
                .await?
            {
                drop(head);
                return Err(self
                    .authz
                    .refuse(actor, Operation::RoleWrite, Some(id.to_string()), refusal)
                    .await);
            }
        }
        let existing = self.catalog.role(&name);
        // The store too: a role left out of the catalog (it failed its integrity check) is
        // still held by keys, and "creating" it anew would change what they hold unchecked.
        if existing.is_none() && self.store.roles().await?.iter().any(|r| r.name == name) {
            return Err(ServiceError::Conflict(format!(
                "role {name} exists but failed its integrity check; see /readyz and the log"
            )));
        }
        let record = match (existing, replace) {
            (Some(_), false) => return Err(ServiceError::Conflict(format!("role {name} exists"))),
            (None, true) => return Err(ServiceError::NotFound { what: "role" }),
            (Some(old), true) => RoleRecord {
                description,
                permissions,
                rotation,
                updated_at: now,
                ..(*old).clone()
            },
            (None, false) => RoleRecord {
                name: name.clone(),
                description,
                permissions,
                rotation,
                builtin: false,
                created_at: now,
                updated_at: now,
                mac: None,
            },
        };
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: if replace {
                AuditAction::RoleUpdate
            } else {
                AuditAction::RoleCreate
            },
            target: Some(name.to_string()),
            details: json!({
                "permissions": record.permissions.iter().map(Permission::as_str).collect::<Vec<_>>(),
                "rotation": record.rotation,
            }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    upsert_roles: vec![record.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok(record)
    }

    /// Deletes a role that no key holds.
    pub async fn delete_role(&self, actor: &Actor, name: &RoleName) -> Result<(), ServiceError> {
        self.audit
            .retrying(|| self.delete_role_once(actor, name))
            .await
    }

    async fn delete_role_once(&self, actor: &Actor, name: &RoleName) -> Result<(), ServiceError> {
        self.authz
            .permit(actor, Operation::RoleWrite, Target::Shared)
            .await?;
        let mut head = self.audit.lock().await;
        match self.catalog.role(name) {
            None => return Err(ServiceError::NotFound { what: "role" }),
            Some(role) if role.builtin => {
                return Err(ServiceError::Conflict(format!(
                    "role {name} is built in and cannot be deleted"
                )));
            }
            Some(_) => {}
        }
        let holders = self.store.count_keys_with_role(name.clone()).await?;
        if holders > 0 {
            return Err(ServiceError::Conflict(format!(
                "role {name} is held by {holders} key(s); remove it from them first"
            )));
        }
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::RoleDelete,
            target: Some(name.to_string()),
            details: json!({}),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    delete_roles: vec![name.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok(())
    }

    // ---- plans -------------------------------------------------------------------------------

    pub fn plans(&self) -> Vec<PlanRecord> {
        self.catalog.plan_records()
    }

    pub fn plan(&self, name: &PlanName) -> Result<PlanRecord, ServiceError> {
        self.catalog
            .plan(name)
            .map(|p| (*p).clone())
            .ok_or(ServiceError::NotFound { what: "plan" })
    }

    /// Creates a plan, or replaces one (`replace`). Every key on it has the new limits before
    /// this returns.
    pub async fn put_plan(
        &self,
        actor: &Actor,
        name: PlanName,
        spec: PlanSpec,
        replace: bool,
    ) -> Result<PlanRecord, ServiceError> {
        self.audit
            .retrying(|| self.put_plan_once(actor, name.clone(), spec.clone(), replace))
            .await
    }

    async fn put_plan_once(
        &self,
        actor: &Actor,
        name: PlanName,
        spec: PlanSpec,
        replace: bool,
    ) -> Result<PlanRecord, ServiceError> {
        let PlanSpec {
            description,
            ratelimits,
            graduated,
            quota,
        } = spec;
        if quota.is_some_and(|q| !(1..=1_000_000_000_000).contains(&q.amount)) {
            return Err(invalid(
                "quota.amount",
                "must be between 1 and 1000000000000",
            ));
        }
        check_ratelimits(&ratelimits)?;
        if let Some(g) = &graduated {
            g.validate()
                .map_err(|(field, message)| ServiceError::InvalidField {
                    field,
                    message: message.into(),
                })?;
        }
        if let Some(d) = &description
            && (d.chars().count() > crate::limits::PURPOSE_CHARS || d.chars().any(char::is_control))
        {
            return Err(invalid("description", "at most 1000 printable characters"));
        }
        self.authz
            .permit(actor, Operation::PlanWrite, Target::Shared)
            .await?;
        let mut head = self.audit.lock().await;
        if replace
            && let Some((id, refusal)) = self
                .authz
                .refusal_among(actor, |key| key.access.plan.as_ref() == Some(&name), None)
                .await?
        {
            // New limits reach every admin key on the plan.
            drop(head);
            return Err(self
                .authz
                .refuse(actor, Operation::PlanWrite, Some(id.to_string()), refusal)
                .await);
        }
        let now = self.clock.now();
        let existing = self.catalog.plan(&name);
        // As for roles: a plan left out of the catalog still has keys on it.
        if existing.is_none() && self.store.plans().await?.iter().any(|p| p.name == name) {
            return Err(ServiceError::Conflict(format!(
                "plan {name} exists but failed its integrity check; see /readyz and the log"
            )));
        }
        let record = match (existing, replace) {
            (Some(_), false) => return Err(ServiceError::Conflict(format!("plan {name} exists"))),
            (None, true) => return Err(ServiceError::NotFound { what: "plan" }),
            (Some(old), true) => PlanRecord {
                description,
                ratelimits,
                graduated,
                quota,
                updated_at: now,
                ..(*old).clone()
            },
            (None, false) => PlanRecord {
                name: name.clone(),
                description,
                ratelimits,
                graduated,
                quota,
                created_at: now,
                updated_at: now,
                mac: None,
            },
        };
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: if replace {
                AuditAction::PlanUpdate
            } else {
                AuditAction::PlanCreate
            },
            target: Some(name.to_string()),
            details: json!({ "ratelimits": record.ratelimits, "graduated": record.graduated, "quota": record.quota }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    upsert_plans: vec![record.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok(record)
    }

    /// Deletes a plan no key is on.
    pub async fn delete_plan(&self, actor: &Actor, name: &PlanName) -> Result<(), ServiceError> {
        self.audit
            .retrying(|| self.delete_plan_once(actor, name))
            .await
    }

    async fn delete_plan_once(&self, actor: &Actor, name: &PlanName) -> Result<(), ServiceError> {
        self.authz
            .permit(actor, Operation::PlanWrite, Target::Shared)
            .await?;
        let mut head = self.audit.lock().await;
        if self.catalog.plan(name).is_none() {
            return Err(ServiceError::NotFound { what: "plan" });
        }
        let holders = self.store.count_keys_with_plan(name.clone()).await?;
        if holders > 0 {
            return Err(ServiceError::Conflict(format!(
                "{holders} key(s) are on plan {name}; move them first"
            )));
        }
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::PlanDelete,
            target: Some(name.to_string()),
            details: json!({}),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    delete_plans: vec![name.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok(())
    }

    // ---- grants ------------------------------------------------------------------------------

    /// Grants a permission or a role to a key until a time. It lapses by itself then; the lapse
    /// is audited by [`Access::sweep_lapsed_grants`].
    pub async fn add_grant(
        &self,
        actor: &Actor,
        id: KeyId,
        grant: NewGrant,
    ) -> Result<KeyRecord, ServiceError> {
        self.audit
            .retrying(|| self.add_grant_once(actor, id, grant.clone()))
            .await
    }

    async fn add_grant_once(
        &self,
        actor: &Actor,
        id: KeyId,
        grant: NewGrant,
    ) -> Result<KeyRecord, ServiceError> {
        if grant.permission.is_some() == grant.role.is_some() {
            return Err(invalid(
                "permission",
                "give exactly one of permission and role",
            ));
        }
        let mut head = self.audit.lock().await;
        let now = self.clock.now();
        let expires_at = match (grant.expires_at, grant.ttl_s) {
            (Some(at), None) if at > now && at <= now.plus_seconds(crate::limits::MAX_TTL_S) => at,
            (Some(at), None) if at > now => {
                return Err(invalid("expires_at", "must be within 100 years"));
            }
            (Some(_), None) => return Err(invalid("expires_at", "must be in the future")),
            (None, Some(ttl)) if (1..=crate::limits::MAX_TTL_S).contains(&ttl) => {
                now.plus_seconds(ttl)
            }
            (None, Some(_)) => return Err(invalid("ttl_s", "must be between 1 and 3153600000")),
            _ => {
                return Err(invalid(
                    "expires_at",
                    "give expires_at or ttl_s (exactly one)",
                ));
            }
        };
        let mut key = self.keys.key(id).await?;
        if let Err(refusal) = self
            .authz
            .authorize(actor, Operation::KeyGrant, Target::Key(&key))
        {
            drop(head);
            return Err(self
                .authz
                .refuse(actor, Operation::KeyGrant, Some(id.to_string()), refusal)
                .await);
        }
        if key.status == keyward_core::KeyStatus::Revoked {
            return Err(ServiceError::Conflict(format!(
                "key {id} is revoked; revocation is final"
            )));
        }
        if let Some(role) = &grant.role
            && self.catalog.role(role).is_none()
        {
            return Err(invalid("role", "no such role"));
        }
        if key.access.grants.len() >= 64 {
            return Err(invalid("permission", "a key holds at most 64 grants"));
        }
        key.access.grants.push(Grant {
            permission: grant.permission.clone(),
            role: grant.role.clone(),
            expires_at,
            granted_at: now,
            granted_by: actor.audit_name(),
        });
        key.updated_at = now;
        let conferred = match self.authz.confer(actor, &key) {
            Err(refusal) => Err(Ok(refusal)),
            Ok(()) => {
                self.authz
                    .inherit(actor, &mut key, crate::authz::Restrictions::REQUIRED)
                    .await
            }
        };
        match conferred {
            Ok(()) => {}
            Err(Ok(refusal)) => {
                drop(head);
                return Err(self
                    .authz
                    .refuse(actor, Operation::KeyGrant, Some(id.to_string()), refusal)
                    .await);
            }
            Err(Err(e)) => return Err(e),
        }
        // The grant's permissions must fit the environment's policy as direct ones would.
        let mut with_grant = key.clone();
        with_grant.expires_at = key.expires_at;
        if let Some(p) = &grant.permission {
            with_grant.permissions.push(p.clone());
        }
        if let Some(r) = &grant.role {
            with_grant.access.roles.push(r.clone());
        }
        self.catalog.check_key_policy(&with_grant)?;
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::GrantAdd,
            target: Some(id.to_string()),
            details: json!({ "permission": grant.permission, "role": grant.role, "expires_at": expires_at }),
        };
        self.keys.commit_key(&mut head, &key, entry).await?;
        Ok(key)
    }

    /// Removes grants that lapsed by now and audits each lapse. Verification already ignores a
    /// lapsed grant from the instant it lapses; this makes the lapse visible and durable. Runs
    /// in the background; safe to call at any time (what it finds is recomputed from the store).
    pub async fn sweep_lapsed_grants(&self) -> Result<usize, ServiceError> {
        let mut swept = 0;
        loop {
            let mut head = self.audit.lock().await;
            let now = self.clock.now();
            let due: Vec<KeyRecord> = self
                .store
                .keys_with_lapsed_grants(now, 100)
                .await?
                .into_iter()
                .filter_map(|k| self.integrity.intact_key(k))
                .collect();
            if due.is_empty() {
                return Ok(swept);
            }
            let mut entries = Vec::new();
            let mut updated = Vec::new();
            for mut key in due {
                let (lapsed, live): (Vec<Grant>, Vec<Grant>) = key
                    .access
                    .grants
                    .drain(..)
                    .partition(|g| g.expires_at <= now);
                key.access.grants = live;
                for g in lapsed {
                    entries.push(PendingEntry {
                        actor: "system".into(),
                        action: AuditAction::GrantLapse,
                        target: Some(key.id.to_string()),
                        details: json!({ "permission": g.permission, "role": g.role, "expires_at": g.expires_at }),
                    });
                }
                updated.push(key);
            }
            swept += entries.len();
            let changed = updated.clone();
            self.audit
                .commit(
                    &mut head,
                    Changes {
                        update_keys: updated,
                        ..Changes::default()
                    },
                    entries,
                )
                .await?;
            drop(changed);
        }
    }

    // ---- explain -----------------------------------------------------------------------------

    pub async fn explain(&self, actor: &Actor, id: KeyId) -> Result<Explanation, ServiceError> {
        let key = self.keys.key(id).await?;
        self.authz
            .permit(
                actor,
                Operation::KeyRead,
                Target::Environment(&key.environment),
            )
            .await?;
        let now = self.clock.now();
        let policy = self
            .catalog
            .environment(key.environment.as_str())
            .map(|e| e.record.policy.clone())
            .unwrap_or_default();
        let roles = self.catalog.role_map();
        let line = |permission: &Permission, source, role: Option<&RoleName>, expires_at| {
            EffectivePermission {
                permission: permission.clone(),
                source,
                role: role.cloned(),
                expires_at,
                removed_by_policy: policy.removes(permission),
            }
        };
        let mut permissions: Vec<EffectivePermission> = key
            .permissions
            .iter()
            .map(|p| line(p, "direct", None, None))
            .collect();
        for role in &key.access.roles {
            for p in roles
                .get(role)
                .map(|r| r.permissions.as_slice())
                .unwrap_or_default()
            {
                permissions.push(line(p, "role", Some(role), None));
            }
        }
        for g in key.access.grants.iter().filter(|g| g.expires_at > now) {
            if let Some(p) = &g.permission {
                permissions.push(line(p, "grant", None, Some(g.expires_at)));
            }
            if let Some(role) = &g.role {
                for p in roles
                    .get(role)
                    .map(|r| r.permissions.as_slice())
                    .unwrap_or_default()
                {
                    permissions.push(line(p, "grant", Some(role), Some(g.expires_at)));
                }
            }
        }
        drop(roles);
        Ok(Explanation {
            key,
            permissions,
            policy,
        })
    }
}

/// Refuses a change of network rules that would deny the admin key making it, from where it
/// is calling now: the last admin key could otherwise lock every admin out.
pub(crate) fn check_not_locked_out(
    actor: &Actor,
    network: &keyward_core::NetworkRules,
) -> Result<(), ServiceError> {
    if network.is_empty() || actor.ip().is_some_and(|ip| network.permits(ip)) {
        Ok(())
    } else {
        Err(ServiceError::Conflict(
            "these network rules would deny the admin key making the change, from where it calls now"
                .into(),
        ))
    }
}

/// Parses CIDR blocks for a field, naming the first bad entry and its value.
pub fn parse_cidrs(field: &'static str, list: &[String]) -> Result<Vec<Cidr>, ServiceError> {
    if list.len() > keyward_core::cidr::MAX_BLOCKS {
        return Err(invalid(field, "at most 10000 blocks"));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| Cidr::parse(c).map_err(|e| invalid(field, format!("entry {i}: {e}"))))
        .collect()
}

/// Parses path rules for a field, naming the first bad entry and its value.
pub fn parse_path_rules(
    field: &'static str,
    list: &[String],
) -> Result<Vec<PathRule>, ServiceError> {
    if list.len() > 256 {
        return Err(invalid(field, "at most 256 rules"));
    }
    list.iter()
        .enumerate()
        .map(|(i, r)| PathRule::parse(r).map_err(|e| invalid(field, format!("entry {i}: {e}"))))
        .collect()
}

/// Checks a key's rate limits: each valid, names unique, at most 16.
pub fn check_ratelimits(limits: &[keyward_core::RateLimit]) -> Result<(), ServiceError> {
    if limits.len() > crate::limiter::MAX_OWN_LIMITS {
        return Err(invalid(
            "ratelimits",
            format!("at most {} limits", crate::limiter::MAX_OWN_LIMITS),
        ));
    }
    for (i, limit) in limits.iter().enumerate() {
        limit.validate().map_err(|e| ServiceError::InvalidField {
            field: "ratelimits",
            message: format!("ratelimits[{i}].{}: {}", e.field, e.message),
        })?;
        if limits.iter().take(i).any(|other| other.name == limit.name) {
            return Err(invalid(
                "ratelimits",
                format!("ratelimits[{i}].name: the name is used twice"),
            ));
        }
    }
    Ok(())
}
