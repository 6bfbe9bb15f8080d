//! The one authorization point.
//!
//! Every use case names an [`Operation`]; [`Operation::permission`] is the one table from
//! operations to the permission they need; [`Authz::authorize`] is the one function that
//! decides `(principal, operation, target)`. Routes never choose permissions.
//!
//! The rule: **a principal can never confer, reach or act on more than it holds.**
//!
//! * *Reach*: an admin key scoped by `admin_environments` reaches only those environments, verify
//!   included; objects shared by every environment (roles, plans, the audit log, the vault) are
//!   for unscoped keys only.
//! * *Act on*: to roll, revoke, disable, update or grant to an admin key, the caller must hold
//!   every permission that key holds (directly, through roles, through live grants) and cover its
//!   scope. Changing a role or a plan acts on every admin key that holds it or is on it.
//! * *Confer*: what a caller gives an admin key (permissions, roles, grants, a role's new
//!   permissions) must be within the caller's own effective permissions, and an admin key made
//!   by a restricted one is at least as restricted (networks, expiry, scope).
//!
//! API keys (service `default`) hold the protected API's vocabulary, not admin powers, so only
//! scope applies to them. Refusals are audited (`auth.forbidden`) by [`Authz::refuse`].

use std::net::IpAddr;
use std::sync::Arc;

use keyward_core::permission::admin;
use keyward_core::{
    EnvironmentName, KeyId, KeyRecord, KeyStatus, Permission, RoleName, ServiceName, Timestamp,
};
use serde_json::json;

use keyward_core::Clock;
use keyward_store::Store;

use crate::ServiceError;
use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::cache::CachedKey;
use crate::catalog::{Catalog, Roles};
use crate::integrity::Integrity;

/// What a caller asks to do. A new capability adds a variant and its row in
/// [`Operation::permission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    KeyCreate,
    KeyRead,
    KeyUpdate,
    KeyRevoke,
    KeyRoll,
    KeyGrant,
    KeyVerify,
    AuditRead,
    EventsRead,
    RoleRead,
    RoleWrite,
    EnvironmentRead,
    EnvironmentWrite,
    PlanRead,
    PlanWrite,
    SysSeal,
    SysRotate,
    SysRekey,
    SysRead,
    SecretRead,
    SecretWrite,
    SecretList,
    SecretDelete,
    SecretDestroy,
    LeaseCreate,
    LeaseRead,
    LeaseRenew,
    LeaseRevoke,
    WebhookRead,
    WebhookWrite,
}

impl Operation {
    /// The permission each operation needs: the one table.
    pub const fn permission(self) -> &'static str {
        use Operation::*;
        match self {
            KeyCreate => admin::KEYS_CREATE,
            KeyRead => admin::KEYS_READ,
            KeyUpdate | KeyGrant => admin::KEYS_UPDATE,
            KeyRevoke => admin::KEYS_REVOKE,
            KeyRoll => admin::KEYS_ROLL,
            KeyVerify => admin::KEYS_VERIFY,
            AuditRead => admin::AUDIT_READ,
            EventsRead => admin::EVENTS_READ,
            RoleRead => admin::ROLES_READ,
            RoleWrite => admin::ROLES_MANAGE,
            EnvironmentRead => admin::ENVIRONMENTS_READ,
            EnvironmentWrite => admin::ENVIRONMENTS_MANAGE,
            PlanRead => admin::PLANS_READ,
            PlanWrite => admin::PLANS_MANAGE,
            SysSeal => admin::SYS_SEAL,
            SysRotate => admin::SYS_ROTATE,
            SysRekey => admin::SYS_REKEY,
            SysRead => admin::SYS_READ,
            SecretRead => admin::SECRETS_READ,
            SecretWrite => admin::SECRETS_WRITE,
            SecretList => admin::SECRETS_LIST,
            SecretDelete => admin::SECRETS_DELETE,
            SecretDestroy => admin::SECRETS_DESTROY,
            LeaseCreate => admin::LEASES_CREATE,
            LeaseRead => admin::LEASES_READ,
            LeaseRenew => admin::LEASES_RENEW,
            LeaseRevoke => admin::LEASES_REVOKE,
            WebhookRead => admin::WEBHOOKS_READ,
            WebhookWrite => admin::WEBHOOKS_MANAGE,
        }
    }

    /// The operation's name in audit entries.
    pub const fn name(self) -> &'static str {
        use Operation::*;
        match self {
            KeyCreate => "key.create",
            KeyRead => "key.read",
            KeyUpdate => "key.update",
            KeyRevoke => "key.revoke",
            KeyRoll => "key.roll",
            KeyGrant => "grant.add",
            KeyVerify => "key.verify",
            AuditRead => "audit.read",
            EventsRead => "events.read",
            RoleRead => "role.read",
            RoleWrite => "role.write",
            EnvironmentRead => "environment.read",
            EnvironmentWrite => "environment.write",
            PlanRead => "plan.read",
            PlanWrite => "plan.write",
            SysSeal => "vault.seal",
            SysRotate => "vault.rotate",
            SysRekey => "vault.rekey",
            SysRead => "vault.read",
            SecretRead => "secret.read",
            SecretWrite => "secret.write",
            SecretList => "secret.list",
            SecretDelete => "secret.delete",
            SecretDestroy => "secret.destroy",
            LeaseCreate => "lease.create",
            LeaseRead => "lease.read",
            LeaseRenew => "lease.renew",
            LeaseRevoke => "lease.revoke",
            WebhookRead => "webhook.read",
            WebhookWrite => "webhook.write",
        }
    }

    /// Operations on objects shared by every environment: for unscoped admin keys only.
    const fn is_global(self) -> bool {
        use Operation::*;
        matches!(
            self,
            AuditRead
                | EventsRead
                | RoleWrite
                | PlanWrite
                | SysSeal
                | SysRotate
                | SysRekey
                | SysRead
                | WebhookRead
                | WebhookWrite
        )
    }
}

/// What an operation acts on, as far as authorization cares.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// Nothing beyond the operation itself (global operations, reads of shared catalogs).
    None,
    /// An object shared by every environment (a role, a plan, a new environment): only an
    /// unscoped admin key may change one.
    Shared,
    /// A secret path (or, for a listing, a prefix glob) in an environment: the permission is
    /// scoped by the path, `secrets:read:payments/stripe`.
    Secret {
        environment: &'a EnvironmentName,
        path: &'a str,
    },
    /// Something that lives in one environment: a secret, a lease, an environment's policy.
    Environment(&'a EnvironmentName),
    /// A key, as stored before the change.
    Key(&'a KeyRecord),
}

/// Why an operation was refused. Messages name what was refused, never a value the client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("this key lacks the permission {permission}")]
    Missing { permission: String },
    #[error("this admin key is scoped and cannot reach that environment")]
    OutOfScope { environment: EnvironmentName },
    #[error("this admin key is scoped; only an unscoped admin key may do this")]
    Global,
    #[error(
        "the target key holds a permission or scope this key does not; only a key at least as strong may act on it"
    )]
    StrongerTarget { lacking: String },
    #[error("the change would confer a permission this key does not hold itself ({field})")]
    Confers {
        field: &'static str,
        /// For the audit entry only.
        permission: String,
    },
    #[error(
        "an admin key made or changed by a restricted key must be at least as restricted ({field})"
    )]
    LessRestricted { field: &'static str },
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing { .. } => "missing_permission",
            Refusal::OutOfScope { .. } => "out_of_scope",
            Refusal::Global => "scoped_key",
            Refusal::StrongerTarget { .. } => "stronger_target",
            Refusal::Confers { .. } => "escalation",
            Refusal::LessRestricted { .. } => "less_restricted",
        }
    }

    fn details(&self) -> serde_json::Value {
        match self {
            Refusal::Missing { permission } => json!({ "permission": permission }),
            Refusal::OutOfScope { environment } => json!({ "environment": environment }),
            Refusal::Global => json!({}),
            Refusal::StrongerTarget { lacking } => json!({ "lacking": lacking }),
            Refusal::Confers { field, permission } => {
                json!({ "field": field, "permission": permission })
            }
            Refusal::LessRestricted { field } => json!({ "field": field }),
        }
    }
}

/// An authenticated admin caller: the principal every operation is decided for.
#[derive(Debug, Clone)]
pub struct Actor {
    key: Arc<CachedKey>,
    /// When the caller was authenticated: grants are judged at this instant.
    at: Timestamp,
    /// Where the caller called from, if known.
    ip: Option<IpAddr>,
}

impl Actor {
    pub(crate) fn new(key: Arc<CachedKey>, at: Timestamp, ip: Option<IpAddr>) -> Self {
        Actor { key, at, ip }
    }

    pub fn key_id(&self) -> KeyId {
        self.key.id
    }

    /// Whether this admin key may reach `environment`.
    pub fn may_manage(&self, environment: &EnvironmentName) -> bool {
        self.key
            .admin_environments
            .as_ref()
            .is_none_or(|scope| scope.contains(environment))
    }

    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The environments this admin key is limited to, if it is.
    pub fn scope(&self) -> Option<&[EnvironmentName]> {
        self.key.admin_environments.as_deref()
    }

    /// Whether this caller holds `permission` (directly, through its roles or a live grant).
    pub fn holds(&self, permission: &str) -> bool {
        self.key.holds(permission, self.at)
    }

    pub(crate) fn expires_at(&self) -> Option<Timestamp> {
        self.key.expires_at
    }

    /// How long this caller holds `permission`: `Some(None)` for good (directly or through a
    /// role), `Some(Some(t))` through grants until `t`, `None` not at all.
    pub(crate) fn held_until(&self, permission: &str) -> Option<Option<Timestamp>> {
        if self.key.permissions.set.grants(permission) {
            return Some(None);
        }
        self.key
            .grants
            .iter()
            .filter(|(p, until)| *until > self.at && p.covers_str(permission))
            .map(|(_, until)| *until)
            .max()
            .map(Some)
    }

    pub(crate) fn audit_name(&self) -> String {
        self.key.id.to_string()
    }

    /// Whether this caller's scope covers `scope` (`None`: every environment).
    fn covers_scope(&self, scope: Option<&[EnvironmentName]>) -> bool {
        match (self.scope(), scope) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|e| mine.contains(e)),
        }
    }
}

/// A key's effective permissions at `now`: direct, through roles (with `role_change` in place
/// of the stored role of that name), and through live grants.
fn effective(
    key: &KeyRecord,
    roles: &Roles,
    role_change: Option<(&RoleName, &[Permission])>,
    now: Timestamp,
) -> Vec<Permission> {
    let role_permissions = |name: &RoleName| -> Vec<Permission> {
        match role_change {
            Some((changed, permissions)) if changed == name => permissions.to_vec(),
            _ => roles
                .get(name)
                .map(|r| r.permissions.clone())
                .unwrap_or_default(),
        }
    };
    let mut out = key.permissions.clone();
    for role in &key.access.roles {
        out.extend(role_permissions(role));
    }
    for grant in key.access.grants.iter().filter(|g| g.expires_at > now) {
        out.extend(grant.permission.iter().cloned());
        if let Some(role) = &grant.role {
            out.extend(role_permissions(role));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether `key` holds `role`, directly or through a live grant.
pub(crate) fn holds_role(key: &KeyRecord, role: &RoleName, now: Timestamp) -> bool {
    key.access.roles.contains(role)
        || key
            .access
            .grants
            .iter()
            .any(|g| g.expires_at > now && g.role.as_ref() == Some(role))
}

/// The part of the decision made before the target is known, at authentication: the
/// operation's permission (scoped by `path` for secrets), and an unscoped key for operations
/// on what every environment shares.
pub(crate) fn admit(actor: &Actor, op: Operation, path: Option<&str>) -> Result<(), Refusal> {
    let held = match path {
        Some(path) => actor.holds(&format!("{}:{path}", op.permission())),
        None => actor.holds(op.permission()),
    };
    if !held {
        return Err(Refusal::Missing {
            permission: op.permission().to_owned(),
        });
    }
    if op.is_global() && actor.scope().is_some() {
        return Err(Refusal::Global);
    }
    Ok(())
}

/// The authorization service: decides, audits refusals, and makes keys inherit restrictions.
#[derive(Debug)]
pub(crate) struct Authz {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
    audit: Arc<AuditLog>,
    integrity: Arc<Integrity>,
}

impl Authz {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        catalog: Arc<Catalog>,
        audit: Arc<AuditLog>,
        integrity: Arc<Integrity>,
    ) -> Self {
        Authz {
            store,
            clock,
            catalog,
            audit,
            integrity,
        }
    }

    /// The one decision: may `actor` perform `op` on `target`? Pure; the caller audits a refusal
    /// with [`Authz::refuse`].
    pub(crate) fn authorize(
        &self,
        actor: &Actor,
        op: Operation,
        target: Target<'_>,
    ) -> Result<(), Refusal> {
        let path = match target {
            Target::Secret { path, .. } => Some(path),
            _ => None,
        };
        admit(actor, op, path)?;
        if matches!(target, Target::Shared) && actor.scope().is_some() {
            return Err(Refusal::Global);
        }
        match target {
            Target::None | Target::Shared => Ok(()),
            Target::Secret { environment, .. } => Self::reach(actor, environment),
            Target::Environment(env) => Self::reach(actor, env),
            Target::Key(key) => {
                Self::reach(actor, &key.environment)?;
                if key.service == ServiceName::Keyward && key.id != actor.key_id() {
                    self.act_on(actor, key, None)?;
                }
                Ok(())
            }
        }
    }

    fn reach(actor: &Actor, env: &EnvironmentName) -> Result<(), Refusal> {
        if actor.may_manage(env) {
            Ok(())
        } else {
            Err(Refusal::OutOfScope {
                environment: env.clone(),
            })
        }
    }

    /// Refuses unless `actor` holds every permission and covers the scope of admin key `key`
    /// (with `role_change` applied to its roles).
    pub(crate) fn act_on(
        &self,
        actor: &Actor,
        key: &KeyRecord,
        role_change: Option<(&RoleName, &[Permission])>,
    ) -> Result<(), Refusal> {
        if key.service != ServiceName::Keyward || key.status == KeyStatus::Revoked {
            return Ok(());
        }
        let roles = self.catalog.role_map();
        let held = effective(key, &roles, role_change, self.clock.now());
        drop(roles);
        if let Some(p) = held.iter().find(|p| !actor.holds(p.as_str())) {
            return Err(Refusal::StrongerTarget {
                lacking: p.to_string(),
            });
        }
        if !actor.covers_scope(key.access.admin_environments.as_deref()) {
            return Err(Refusal::StrongerTarget {
                lacking: "admin_environments".into(),
            });
        }
        Ok(())
    }

    /// Refuses a resulting admin key `key` that would hold a permission `actor` lacks.
    pub(crate) fn confer(&self, actor: &Actor, key: &KeyRecord) -> Result<(), Refusal> {
        if key.service != ServiceName::Keyward {
            return Ok(());
        }
        let roles = self.catalog.role_map();
        let now = self.clock.now();
        let field = |p: &Permission| {
            if key.permissions.contains(p) {
                "permissions"
            } else if key.access.roles.iter().any(|r| {
                roles
                    .get(r)
                    .is_some_and(|role| role.permissions.contains(p))
            }) {
                "roles"
            } else {
                "grants"
            }
        };
        let refused = |p: &Permission| Refusal::Confers {
            field: field(p),
            permission: p.to_string(),
        };
        // What the key holds for good must be held for good: a permission the caller has only
        // through a grant cannot be made permanent, nor granted past the caller's own grant.
        let role_permissions = |name: &RoleName| {
            roles
                .get(name)
                .map(|r| r.permissions.clone())
                .unwrap_or_default()
        };
        let mut forever = key.permissions.clone();
        for role in &key.access.roles {
            forever.extend(role_permissions(role));
        }
        if let Some(p) = forever
            .iter()
            .find(|p| actor.held_until(p.as_str()) != Some(None))
        {
            return Err(refused(p));
        }
        for grant in key.access.grants.iter().filter(|g| g.expires_at > now) {
            let mut granted = grant.permission.iter().cloned().collect::<Vec<_>>();
            if let Some(role) = &grant.role {
                granted.extend(role_permissions(role));
            }
            let short = |p: &Permission| match actor.held_until(p.as_str()) {
                None => true,
                Some(None) => false,
                Some(Some(until)) => until < grant.expires_at,
            };
            if let Some(p) = granted.iter().find(|p| short(p)) {
                return Err(refused(p));
            }
        }
        Ok(())
    }

    /// Makes admin key `key` (new, or with `changed` restrictions) at least as restricted as
    /// `actor`: unset restrictions are inherited from the actor, set ones must lie within its.
    /// `creating` applies every restriction; an update applies those it changes.
    pub(crate) async fn inherit(
        &self,
        actor: &Actor,
        key: &mut KeyRecord,
        changed: Restrictions,
    ) -> Result<(), Result<Refusal, ServiceError>> {
        if key.service != ServiceName::Keyward {
            return Ok(());
        }
        let less = |field| Err(Ok(Refusal::LessRestricted { field }));
        if let Some(limit) = actor.expires_at() {
            match key.expires_at {
                None if changed.expiry => key.expires_at = Some(limit),
                None if changed.require => return less("expires_at"),
                Some(at) if at > limit && (changed.expiry || changed.require) => {
                    return less("expires_at");
                }
                _ => {}
            }
        }
        if (changed.scope || changed.require)
            && !actor.covers_scope(key.access.admin_environments.as_deref())
        {
            match (&key.access.admin_environments, actor.scope()) {
                (None, Some(mine)) if changed.creating => {
                    key.access.admin_environments = Some(mine.to_vec());
                }
                _ => return less("admin_environments"),
            }
        }
        if changed.network || changed.require {
            let Some(me) = self
                .store
                .key(actor.key_id())
                .await
                .map_err(|e| Err(e.into()))?
            else {
                return Err(Err(ServiceError::Unauthorized));
            };
            let mine = &me.access.allowed_cidrs;
            if !mine.is_empty() {
                if key.access.allowed_cidrs.is_empty() && changed.network {
                    key.access.allowed_cidrs = mine.clone();
                } else if key.access.allowed_cidrs.is_empty()
                    || !key
                        .access
                        .allowed_cidrs
                        .iter()
                        .all(|c| mine.iter().any(|m| c.within(m)))
                {
                    return less("allowed_cidrs");
                }
            }
            for denied in &me.access.denied_cidrs {
                if key.access.denied_cidrs.contains(denied) {
                    continue;
                }
                if changed.network {
                    key.access.denied_cidrs.push(*denied);
                } else {
                    return less("denied_cidrs");
                }
            }
        }
        Ok(())
    }

    /// Audits a refusal of `op` (on `target`, an id or name) and turns it into the error for the
    /// caller. Never call it holding the writer lock: the entry is group-committed.
    pub(crate) async fn refuse(
        &self,
        actor: &Actor,
        op: Operation,
        target: Option<String>,
        refusal: Refusal,
    ) -> ServiceError {
        let mut details = refusal.details();
        if let Some(obj) = details.as_object_mut() {
            obj.insert("operation".into(), op.name().into());
            obj.insert("reason".into(), refusal.reason().into());
        }
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: keyward_core::audit::AuditAction::AuthForbidden,
            target,
            details,
        };
        if let Err(e) = self.audit.batched(entry).await {
            tracing::error!(error = %e, "could not audit a refused admin request");
        }
        tracing::info!(actor = %actor.key_id(), operation = op.name(), reason = refusal.reason(), "admin request refused");
        ServiceError::Refused(refusal)
    }

    /// [`Authz::authorize`], auditing a refusal. Never call it holding the writer lock.
    pub(crate) async fn permit(
        &self,
        actor: &Actor,
        op: Operation,
        target: Target<'_>,
    ) -> Result<(), ServiceError> {
        match self.authorize(actor, op, target) {
            Ok(()) => Ok(()),
            Err(refusal) => {
                let name = match target {
                    Target::None | Target::Shared => None,
                    Target::Environment(env)
                    | Target::Secret {
                        environment: env, ..
                    } => Some(env.to_string()),
                    Target::Key(key) => Some(key.id.to_string()),
                };
                Err(self.refuse(actor, op, name, refusal).await)
            }
        }
    }

    /// Every admin key that is not revoked, for checks of changes that reach them all (a role,
    /// a plan, the admin environment's policy). Admin keys are few.
    pub(crate) async fn admin_keys(&self) -> Result<Vec<KeyRecord>, ServiceError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_keys(keyward_store::KeyQuery {
                    service: Some(ServiceName::Keyward),
                    after,
                    limit: 1000,
                    ..keyward_store::KeyQuery::default()
                })
                .await?;
            let full = page.len() == 1000;
            after = page.last().map(|k| k.id);
            out.extend(
                page.into_iter()
                    .filter(|k| k.status != KeyStatus::Revoked)
                    .filter_map(|k| self.integrity.intact_key(k)),
            );
            if !full {
                return Ok(out);
            }
        }
    }

    /// Checks that `key`, as it will be stored after a change, holds nothing `actor` lacks, and
    /// makes it at least as restricted as `actor` (`changed` says which restrictions the change
    /// sets). The caller audits a refusal with [`Authz::audited`], after letting go of the
    /// writer.
    pub(crate) async fn conferrable(
        &self,
        actor: &Actor,
        key: &mut KeyRecord,
        changed: Restrictions,
    ) -> Result<(), ServiceError> {
        let outcome = match self.confer(actor, key) {
            Err(refusal) => Err(Ok(refusal)),
            Ok(()) => self.inherit(actor, key, changed).await,
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(Err(e)) => Err(e),
            Err(Ok(refusal)) => Err(ServiceError::Refused(refusal)),
        }
    }

    /// Audits `error` as a refusal of `op` on `key` if it is one; returns it.
    pub(crate) async fn audited(
        &self,
        actor: &Actor,
        op: Operation,
        key: &KeyRecord,
        error: ServiceError,
    ) -> ServiceError {
        match error {
            ServiceError::Refused(refusal) => {
                self.refuse(actor, op, Some(key.id.to_string()), refusal)
                    .await
            }
            other => other,
        }
    }

    /// The first admin key `reaches` selects that `actor` may not act on (with `role_change`
    /// applied), as a change to a shared object acts on all of them. Call it holding the
    /// writer, so no key can take the role (or join the plan) between this check and the
    /// commit; audit a refusal with [`Authz::refuse`] once the writer is let go.
    pub(crate) async fn refusal_among(
        &self,
        actor: &Actor,
        reaches: impl Fn(&KeyRecord) -> bool,
        role_change: Option<(&RoleName, &[Permission])>,
    ) -> Result<Option<(KeyId, Refusal)>, ServiceError> {
        for key in self.admin_keys().await? {
            if !reaches(&key) {
                continue;
            }
            if let Err(refusal) = self.act_on(actor, &key, role_change) {
                return Ok(Some((key.id, refusal)));
            }
        }
        Ok(None)
    }
}

/// Which restrictions of an admin key a change sets, for [`Authz::inherit`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Restrictions {
    pub creating: bool,
    pub expiry: bool,
    pub scope: bool,
    pub network: bool,
    /// The change confers permissions: the restrictions it does not set must already lie
    /// within the caller's (checked, never filled in), so a restricted key cannot hand its
    /// powers to a key that lives longer or is used from further away.
    pub require: bool,
}

impl Restrictions {
    pub(crate) const ALL: Restrictions = Restrictions {
        creating: true,
        expiry: true,
        scope: true,
        network: true,
        require: false,
    };

    /// Conferring permissions on an existing key: every restriction must already be within.
    pub(crate) const REQUIRED: Restrictions = Restrictions {
        creating: false,
        expiry: false,
        scope: false,
        network: false,
        require: true,
    };
}
