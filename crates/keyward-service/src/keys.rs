//! The keys service: create, read, list, update, revoke, roll. Each change is written together
//! with its audit entry, and the verification cache learns of it (through the change feed)
//! before the call returns.

use keyward_core::audit::AuditAction;
use keyward_core::model::ADMIN_ENVIRONMENT;
use keyward_core::{
    EnvironmentName, KeyAccess, KeyId, KeyRecord, KeyStatus, ParsedKey, Permission, ServiceName,
    Timestamp,
};
use keyward_crypto::PlaintextKey;
use keyward_store::{Changes, KeyQuery};
use serde_json::{Map, Value, json};

use std::sync::Arc;

use keyward_core::Clock;
use keyward_store::Store;

use crate::audit::PendingEntry;
use crate::audit_log::{AuditLog, Writer};
use crate::authz::{Authz, Operation, Restrictions, Target};
use crate::catalog::{Catalog, is_admin_environment};
use crate::integrity::Integrity;
use crate::quotas::QuotaBook;
use crate::{Actor, ServiceError};

/// Bounds on what a client may store, so no request can grow a record without limit.
pub mod limits {
    pub const NAME_CHARS: usize = 200;
    pub const OWNER_CHARS: usize = 200;
    pub const PURPOSE_CHARS: usize = 1000;
    pub const REASON_CHARS: usize = 1000;
    pub const META_BYTES: usize = 8 * 1024;
    pub const PERMISSIONS: usize = 256;
    /// A roll's grace period: at most 365 days.
    pub const MAX_GRACE_PERIOD_S: u64 = 365 * 24 * 3600;
    /// A key's time to live: at most 100 years.
    pub const MAX_TTL_S: u64 = 100 * 365 * 24 * 3600;
    pub const PAGE_DEFAULT: u32 = 100;
    pub const PAGE_MAX: u32 = 1000;
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub service: ServiceName,
    pub environment: EnvironmentName,
    pub name: String,
    pub owner: String,
    pub purpose: Option<String>,
    pub permissions: Vec<Permission>,
    /// An absolute expiry; exclusive with `ttl_s`.
    pub expires_at: Option<Timestamp>,
    /// Seconds from now until expiry; exclusive with `expires_at`.
    pub ttl_s: Option<u64>,
    pub meta: Map<String, Value>,
    pub access: KeyAccess,
    /// With `access.quota`: the credits the key starts with (default: the refill amount).
    pub quota_remaining: Option<u64>,
    /// The key's own rotation policy (beats its roles' and its environment's).
    pub rotation: Option<keyward_core::RotationPolicy>,
    /// Where the scheduler writes the key's successors.
    pub delivery: Option<keyward_core::DeliveryTarget>,
}

/// A partial update: `None` leaves a field as it is. For `purpose` and `expires_at`,
/// `Some(None)` clears the field.
#[derive(Debug, Clone, Default)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub owner: Option<String>,
    pub purpose: Option<Option<String>>,
    pub permissions: Option<Vec<Permission>>,
    pub meta: Option<Map<String, Value>>,
    pub expires_at: Option<Option<Timestamp>>,
    pub enabled: Option<bool>,
    pub roles: Option<Vec<keyward_core::RoleName>>,
    pub path_rules: Option<Vec<keyward_core::PathRule>>,
    pub allowed_cidrs: Option<Vec<keyward_core::Cidr>>,
    pub denied_cidrs: Option<Vec<keyward_core::Cidr>>,
    pub ratelimits: Option<Vec<keyward_core::RateLimit>>,
    /// `Some(None)` takes the key off its plan.
    pub plan: Option<Option<keyward_core::PlanName>>,
    /// `Some(None)` removes the concurrency limit.
    pub concurrency: Option<Option<keyward_core::ConcurrencyLimit>>,
    /// Replaces the quota and sets what remains (a credit grant); `Some(None)` removes it.
    pub quota: Option<Option<(keyward_core::QuotaConfig, Option<u64>)>>,
    /// Sets the key's own rotation policy; `Some(None)` removes it (the key then follows its
    /// roles' or its environment's).
    pub rotation: Option<Option<keyward_core::RotationPolicy>>,
    /// Sets where the scheduler writes the key's successors; `Some(None)` removes it.
    pub delivery: Option<Option<keyward_core::DeliveryTarget>>,
}

/// One page of a key listing.
#[derive(Debug, Clone)]
pub struct KeyPage {
    pub keys: Vec<KeyRecord>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<KeyId>,
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field,
        message: message.into(),
    }
}

pub(crate) fn check_text(
    field: &'static str,
    value: &str,
    max_chars: usize,
) -> Result<(), ServiceError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_meta(meta: &Map<String, Value>) -> Result<(), ServiceError> {
    let size = serde_json::to_vec(meta)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limits::META_BYTES {
        return Err(invalid(
            "meta",
            format!("must be at most {} bytes of JSON", limits::META_BYTES),
        ));
    }
    Ok(())
}

fn check_permissions(permissions: &[Permission]) -> Result<(), ServiceError> {
    if permissions.len() > limits::PERMISSIONS {
        return Err(invalid(
            "permissions",
            format!("at most {} permissions", limits::PERMISSIONS),
        ));
    }
    Ok(())
}

fn permission_names(permissions: &[Permission]) -> Vec<&str> {
    permissions.iter().map(Permission::as_str).collect()
}

/// The keys service.
#[derive(Debug)]
pub struct Keys {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    ids: keyward_crypto::KeyIds,
    catalog: Arc<Catalog>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) authz: Arc<Authz>,
    quotas: Arc<QuotaBook>,
    pub(crate) integrity: Arc<Integrity>,
}

impl Keys {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        catalog: Arc<Catalog>,
        audit: Arc<AuditLog>,
        authz: Arc<Authz>,
        quotas: Arc<QuotaBook>,
        integrity: Arc<Integrity>,
    ) -> Self {
        Keys {
            store,
            clock,
            ids: keyward_crypto::KeyIds::default(),
            catalog,
            audit,
            authz,
            quotas,
            integrity,
        }
    }

    /// The stored form (HMAC) of a presented key, if its environment exists. For bulk imports.
    pub fn key_hash(&self, key: &str) -> Option<keyward_core::KeyHash> {
        ParsedKey::parse(key)
            .ok()
            .and_then(|p| self.catalog.hash_of(&p))
    }

    /// Tags a record for a bulk import written straight to the store (its integrity tag), as
    /// every write through the service is. For tools and benchmarks that own the process.
    pub fn tag_for_import(&self, key: &mut KeyRecord) {
        crate::integrity::seal_key(self.integrity.key(), key);
    }

    /// An active key record for `key` (a presented key of an existing environment), tagged
    /// for a bulk import written straight to the store: `invoices:read`, no expiry, `owner`.
    /// For tools, tests and benchmarks that own the process.
    pub fn record_for_import(
        &self,
        id: KeyId,
        key: &str,
        owner: &str,
        now: Timestamp,
    ) -> Option<KeyRecord> {
        let parsed = ParsedKey::parse(key).ok()?;
        let mut record = KeyRecord {
            id,
            service: ServiceName::Default,
            environment: EnvironmentName::parse(parsed.environment()).ok()?,
            hash: self.catalog.hash_of(&parsed)?,
            start: parsed.start().to_owned(),
            name: format!("imported {id}"),
            owner: owner.to_owned(),
            purpose: None,
            permissions: vec![Permission::parse("invoices:read").ok()?],
            meta: serde_json::Map::new(),
            created_at: now,
            updated_at: now,
            expires_at: None,
            status: KeyStatus::Active,
            revoked_at: None,
            revocation_reason: None,
            rolled_from: None,
            rolled_to: None,
            last_used_at: None,
            uses: 0,
            access: KeyAccess::default(),
            lifecycle: keyward_core::KeyLifecycle::default(),
            mac: None,
        };
        self.tag_for_import(&mut record);
        Some(record)
    }

    /// What remains of a key's quota now, if it has one.
    pub async fn quota_remaining(&self, key: &KeyRecord) -> Result<Option<u64>, ServiceError> {
        self.quotas.remaining_for(key).await
    }

    fn check_environment(
        &self,
        service: ServiceName,
        env: &EnvironmentName,
    ) -> Result<(), ServiceError> {
        if self.catalog.environment(env.as_str()).is_none() {
            return Err(invalid("environment", "no such environment"));
        }
        let admin = is_admin_environment(env.as_str());
        match service {
            ServiceName::Keyward if !admin => Err(invalid(
                "environment",
                format!(
                    "admin keys (service keyward) belong to the {ADMIN_ENVIRONMENT} environment"
                ),
            )),
            ServiceName::Default if admin => Err(invalid(
                "environment",
                format!("the {ADMIN_ENVIRONMENT} environment is reserved for admin keys"),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses issuing a key in an environment whose policy wants approval: the approval
    /// workflow does not exist yet, and a policy is never silently ignored.
    fn check_issuance(&self, env: &EnvironmentName) -> Result<(), ServiceError> {
        if self
            .catalog
            .environment(env.as_str())
            .is_some_and(|e| e.record.policy.require_approval)
        {
            return Err(keyward_core::PolicyViolation {
                rule: "require_approval",
                message: "keys of this environment need an approval, which this server cannot \
                          grant yet; clear require_approval or issue the key elsewhere"
                    .into(),
            }
            .into());
        }
        Ok(())
    }

    /// An admin key may not revoke or disable itself: doing so with the last admin key would lock
    /// every admin out. Another admin key (or the root key) does it.
    /// Refused (and audited, as every refusal is) when `actor` is key `id` itself.
    async fn check_not_self(
        &self,
        actor: &Actor,
        op: Operation,
        id: KeyId,
    ) -> Result<(), ServiceError> {
        if actor.key_id() == id {
            let entry = PendingEntry {
                actor: actor.audit_name(),
                action: AuditAction::AuthForbidden,
                target: Some(id.to_string()),
                details: json!({ "operation": op.name(), "reason": "self" }),
            };
            if let Err(e) = self.audit.batched(entry).await {
                tracing::error!(error = %e, "could not audit a refused admin request");
            }
            return Err(ServiceError::Conflict(
                "an admin key cannot revoke or disable itself; use another admin key".into(),
            ));
        }
        Ok(())
    }

    fn expiry(
        &self,
        now: Timestamp,
        expires_at: Option<Timestamp>,
        ttl_s: Option<u64>,
    ) -> Result<Option<Timestamp>, ServiceError> {
        match (expires_at, ttl_s) {
            (Some(_), Some(_)) => Err(invalid("ttl_s", "give expires_at or ttl_s, not both")),
            (Some(at), None) if at <= now => Err(invalid("expires_at", "must be in the future")),
            (Some(at), None) if at > now.plus_seconds(limits::MAX_TTL_S) => {
                Err(invalid("expires_at", "must be within 100 years"))
            }
            (Some(at), None) => Ok(Some(at)),
            (None, Some(0)) => Err(invalid("ttl_s", "must be at least 1")),
            (None, Some(ttl)) if ttl > limits::MAX_TTL_S => Err(invalid(
                "ttl_s",
                format!("must be at most {} (100 years)", limits::MAX_TTL_S),
            )),
            (None, Some(ttl)) => Ok(Some(now.plus_seconds(ttl))),
            (None, None) => Ok(None),
        }
    }

    /// Issues a key. The plaintext is returned here and never again.
    pub async fn create_key(
        &self,
        actor: &Actor,
        new: NewKey,
    ) -> Result<(KeyRecord, PlaintextKey), ServiceError> {
        self.create_key_with(actor, Operation::KeyCreate, new, |_| {
            (Changes::default(), None)
        })
        .await
    }

    /// Creates a key as operation `op`, writing with it the changes and audit entry `with`
    /// makes for the record.
    pub(crate) async fn create_key_with<E: Into<Option<PendingEntry>>>(
        &self,
        actor: &Actor,
        op: Operation,
        new: NewKey,
        with: impl Fn(&KeyRecord) -> (Changes, E),
    ) -> Result<(KeyRecord, PlaintextKey), ServiceError> {
        self.audit
            .retrying(|| self.create_key_once(actor, op, new.clone(), &with))
            .await
    }

    async fn create_key_once<E: Into<Option<PendingEntry>>>(
        &self,
        actor: &Actor,
        op: Operation,
        new: NewKey,
        with: &impl Fn(&KeyRecord) -> (Changes, E),
    ) -> Result<(KeyRecord, PlaintextKey), ServiceError> {
        check_text("name", &new.name, limits::NAME_CHARS)?;
        check_text("owner", &new.owner, limits::OWNER_CHARS)?;
        if let Some(purpose) = &new.purpose {
            check_text("purpose", purpose, limits::PURPOSE_CHARS)?;
        }
        check_permissions(&new.permissions)?;
        check_meta(&new.meta)?;
        if let Some(policy) = &new.rotation {
            crate::rotation::check_policy(crate::rotation::Field::Key, policy)?;
        }
        self.check_environment(new.service, &new.environment)?;
        self.authz
            .permit(actor, op, Target::Environment(&new.environment))
            .await?;
        if let Some(target) = &new.delivery {
            self.check_delivery(actor, op, None, new.service, target, &new.environment)
                .await?;
        }
        if new.service != ServiceName::Keyward && new.access.admin_environments.is_some() {
            return Err(invalid(
                "admin_environments",
                "only admin keys (service keyward) have an admin scope",
            ));
        }
        self.check_issuance(&new.environment)?;
        let now = self.clock.now();
        let expires_at = self.expiry(now, new.expires_at, new.ttl_s)?;

        let (mut record, plaintext) = self.mint(
            now,
            KeyTemplate {
                service: new.service,
                environment: new.environment,
                name: new.name,
                owner: new.owner,
                purpose: new.purpose,
                permissions: new.permissions,
                meta: new.meta,
                expires_at,
                status: KeyStatus::Active,
                rolled_from: None,
                access: new.access,
                lifecycle: keyward_core::KeyLifecycle {
                    rotation: new.rotation,
                    rolled_by: None,
                    delivery: new.delivery.clone(),
                },
            },
        )?;
        // Judged under the writer: a role cannot change between this check and the commit.
        let mut head = self.audit.lock().await;
        if let Err(e) = self
            .authz
            .conferrable(actor, &mut record, Restrictions::ALL)
            .await
        {
            drop(head);
            return Err(self.authz.audited(actor, op, &record, e).await);
        }
        self.catalog.check_key_policy(&record)?;
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::KeyCreate,
            target: Some(record.id.to_string()),
            details: json!({
                "service": record.service.as_str(),
                "environment": record.environment.as_str(),
                "name": record.name,
                "owner": record.owner,
                "purpose": record.purpose,
                "start": record.start,
                "permissions": permission_names(&record.permissions),
                "expires_at": record.expires_at,
                "access": record.access,
                "rotation": record.lifecycle.rotation,
            }),
        };
        let quota = record
            .access
            .quota
            .map(|config| initial_quota(&config, new.quota_remaining, now))
            .transpose()?;
        let (mut changes, extra) = with(&record);
        changes.insert_keys.push(record.clone());
        changes
            .set_quotas
            .extend(quota.map(|q| (record.id, Some(q))));
        let mut entries = vec![entry];
        entries.extend(extra.into());
        self.audit.commit(&mut head, changes, entries).await?;
        if let Some(state) = quota {
            self.quotas.set(record.id, Some(state));
        }
        tracing::info!(key_id = %record.id, actor = %actor.key_id(), "key created");
        Ok((record, plaintext))
    }

    fn mint(
        &self,
        now: Timestamp,
        template: KeyTemplate,
    ) -> Result<(KeyRecord, PlaintextKey), ServiceError> {
        let random = |e: keyward_crypto::RandomUnavailable| ServiceError::internal(e);
        let plaintext = PlaintextKey::generate(&template.service.prefix(), &template.environment)
            .map_err(random)?;
        let hash = self
            .catalog
            .hash(template.environment.as_str(), plaintext.expose())
            .ok_or_else(|| invalid("environment", "unknown environment"))?;
        let start = ParsedKey::parse(plaintext.expose())
            .map(|p| p.start().to_owned())
            .map_err(|e| ServiceError::internal(format!("generated key does not parse: {e}")))?;
        let record = KeyRecord {
            id: self.ids.next(now).map_err(random)?,
            service: template.service,
            environment: template.environment,
            hash,
            start,
            name: template.name,
            owner: template.owner,
            purpose: template.purpose,
            permissions: template.permissions,
            meta: template.meta,
            created_at: now,
            updated_at: now,
            expires_at: template.expires_at,
            status: template.status,
            revoked_at: None,
            revocation_reason: None,
            rolled_from: template.rolled_from,
            rolled_to: None,
            last_used_at: None,
            uses: 0,
            access: template.access,
            lifecycle: template.lifecycle,
            mac: None,
        };
        Ok((record, plaintext))
    }

    /// A key, if `actor` may see it.
    pub async fn key_as(&self, actor: &Actor, id: KeyId) -> Result<KeyRecord, ServiceError> {
        let key = self.key(id).await?;
        self.authz
            .permit(
                actor,
                Operation::KeyRead,
                Target::Environment(&key.environment),
            )
            .await?;
        Ok(key)
    }

    /// A stored key whose integrity tag checks out: a tampered record is an `INTEGRITY` error,
    /// never read, changed or written back.
    pub async fn key(&self, id: KeyId) -> Result<KeyRecord, ServiceError> {
        let key = self
            .store
            .key(id)
            .await?
            .ok_or(ServiceError::NotFound { what: "key" })?;
        self.integrity.intact_key(key).ok_or_else(|| {
            ServiceError::Integrity(format!(
                "key {id} was changed outside keyward (its integrity tag does not match)"
            ))
        })
    }

    /// Keys matching `query`, oldest first; `query.limit` is clamped to 1..=1000 (0 means 100).
    pub async fn list_keys(
        &self,
        actor: &Actor,
        mut query: KeyQuery,
    ) -> Result<KeyPage, ServiceError> {
        if let Some(scope) = actor.scope() {
            match (&query.environment, scope) {
                (Some(env), _) => {
                    self.authz
                        .permit(actor, Operation::KeyRead, Target::Environment(env))
                        .await?;
                }
                (None, [only]) => query.environment = Some(only.clone()),
                (None, _) => {
                    return Err(invalid(
                        "environment",
                        "this admin key is scoped to several environments; name one",
                    ));
                }
            }
        }
        let limit = match query.limit {
            0 => limits::PAGE_DEFAULT,
            n => n.min(limits::PAGE_MAX),
        };
        query.limit = limit + 1;
        let mut keys = self.store.list_keys(query).await?;
        let next = if keys.len() > limit as usize {
            keys.truncate(limit as usize);
            keys.last().map(|k| k.id)
        } else {
            None
        };
        // Tampered records are left out of the page (and reported); the cursor pages on.
        keys.retain(|k| self.integrity.intact_key(k.clone()).is_some());
        Ok(KeyPage { keys, next })
    }

    /// Writes a changed key with its audit entry, then drops it from the cache. The caller
    /// holds the writer lock (`head`).
    pub(crate) async fn commit_key(
        &self,
        head: &mut Writer,
        key: &KeyRecord,
        entry: PendingEntry,
    ) -> Result<(), ServiceError> {
        self.commit_key_with(head, key, entry, Vec::new()).await
    }

    /// [`Keys::commit_key`] with the events it reports, in the same write.
    pub(crate) async fn commit_key_with(
        &self,
        head: &mut Writer,
        key: &KeyRecord,
        entry: PendingEntry,
        outbox: Vec<keyward_core::OutboxEvent>,
    ) -> Result<(), ServiceError> {
        self.audit
            .commit(
                head,
                Changes {
                    update_keys: vec![key.clone()],
                    outbox,
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok(())
    }

    /// Writes a key's changed quota with the key (a grant takes effect at once).
    pub(crate) fn apply_quota_change(
        &self,
        id: KeyId,
        change: Option<Option<keyward_core::QuotaState>>,
    ) {
        if let Some(state) = change {
            self.quotas.set(id, state);
        }
    }

    /// Reads a key for a change, under the writer lock.
    async fn key_for_change(&self, id: KeyId) -> Result<KeyRecord, ServiceError> {
        let key = self.key(id).await?;
        if key.status == KeyStatus::Revoked {
            return Err(ServiceError::Conflict(format!(
                "key {id} is revoked; revocation is final"
            )));
        }
        Ok(key)
    }

    /// Changes a key's metadata, permissions, expiry or enabled state.
    pub async fn update_key(
        &self,
        actor: &Actor,
        id: KeyId,
        update: KeyUpdate,
    ) -> Result<KeyRecord, ServiceError> {
        self.audit
            .retrying(|| self.update_key_once(actor, id, update.clone()))
            .await
    }

    async fn update_key_once(
        &self,
        actor: &Actor,
        id: KeyId,
        update: KeyUpdate,
    ) -> Result<KeyRecord, ServiceError> {
        if let Some(name) = &update.name {
            check_text("name", name, limits::NAME_CHARS)?;
        }
        if let Some(owner) = &update.owner {
            check_text("owner", owner, limits::OWNER_CHARS)?;
        }
        if let Some(Some(purpose)) = &update.purpose {
            check_text("purpose", purpose, limits::PURPOSE_CHARS)?;
        }
        if let Some(permissions) = &update.permissions {
            check_permissions(permissions)?;
        }
        if let Some(meta) = &update.meta {
            check_meta(meta)?;
        }
        if let Some(Some(policy)) = &update.rotation {
            crate::rotation::check_policy(crate::rotation::Field::Key, policy)?;
        }
        // Before the writer is taken: a refusal writes its own audit entry. (A key's
        // environment never changes.)
        if let Some(delivery) = &update.delivery {
            let key = self.key(id).await?;
            match delivery {
                Some(target) => {
                    self.check_delivery(
                        actor,
                        Operation::KeyUpdate,
                        Some(&key),
                        key.service,
                        target,
                        &key.environment,
                    )
                    .await?;
                }
                // Removing one changes where successors go (and how long the old key lives):
                // as much a matter for one who may roll the key as setting one.
                None => {
                    if let Err(refusal) =
                        self.authz
                            .authorize(actor, Operation::KeyRoll, Target::Key(&key))
                    {
                        return Err(self
                            .authz
                            .refuse(actor, Operation::KeyRoll, Some(id.to_string()), refusal)
                            .await);
                    }
                }
            }
        }
        if update.enabled == Some(false) {
            self.check_not_self(actor, Operation::KeyUpdate, id).await?;
        }
        let mut head = self.audit.lock().await;
        let now = self.clock.now();
        let mut key = self.key_for_change(id).await?;
        let was_enabled = key.status == KeyStatus::Active;
        if let Err(refusal) = self
            .authz
            .authorize(actor, Operation::KeyUpdate, Target::Key(&key))
        {
            drop(head);
            return Err(self
                .authz
                .refuse(actor, Operation::KeyUpdate, Some(id.to_string()), refusal)
                .await);
        }
        let restrictions = Restrictions {
            creating: false,
            expiry: update.expires_at.is_some(),
            scope: false,
            network: update.allowed_cidrs.is_some() || update.denied_cidrs.is_some(),
            // Permissions conferred on an admin key need it to be as restricted as the caller.
            require: update.permissions.is_some() || update.roles.is_some(),
        };
        if let Some(Some(at)) = update.expires_at {
            if at <= now {
                return Err(invalid("expires_at", "must be in the future"));
            }
            if at > now.plus_seconds(limits::MAX_TTL_S) {
                return Err(invalid("expires_at", "must be within 100 years"));
            }
        }
        let mut changed = Map::new();
        if let Some(name) = update.name {
            changed.insert("name".into(), json!(name));
            key.name = name;
        }
        if let Some(owner) = update.owner {
            changed.insert("owner".into(), json!(owner));
            key.owner = owner;
        }
        if let Some(purpose) = update.purpose {
            changed.insert("purpose".into(), json!(purpose));
            key.purpose = purpose;
        }
        if let Some(permissions) = update.permissions {
            changed.insert("permissions".into(), json!(permission_names(&permissions)));
            key.permissions = permissions;
        }
        if let Some(meta) = update.meta {
            // Metadata values are the user's; only which keys changed is recorded.
            changed.insert("meta_keys".into(), json!(meta.keys().collect::<Vec<_>>()));
            key.meta = meta;
        }
        if let Some(expires_at) = update.expires_at {
            changed.insert("expires_at".into(), json!(expires_at));
            key.expires_at = expires_at;
        }
        if let Some(enabled) = update.enabled {
            changed.insert("enabled".into(), json!(enabled));
            key.status = if enabled {
                KeyStatus::Active
            } else {
                KeyStatus::Disabled
            };
        }
        if let Some(roles) = update.roles {
            changed.insert("roles".into(), json!(roles));
            key.access.roles = roles;
        }
        if let Some(rules) = update.path_rules {
            changed.insert("path_rules".into(), json!(rules));
            key.access.path_rules = rules;
        }
        if let Some(cidrs) = update.allowed_cidrs {
            changed.insert("allowed_cidrs".into(), json!(cidrs));
            key.access.allowed_cidrs = cidrs;
        }
        if let Some(cidrs) = update.denied_cidrs {
            changed.insert("denied_cidrs".into(), json!(cidrs));
            key.access.denied_cidrs = cidrs;
        }
        if let Some(limits) = update.ratelimits {
            changed.insert("ratelimits".into(), json!(limits));
            key.access.ratelimits = limits;
        }
        if let Some(plan) = update.plan {
            changed.insert("plan".into(), json!(plan));
            key.access.plan = plan;
        }
        if let Some(concurrency) = update.concurrency {
            changed.insert("concurrency".into(), json!(concurrency));
            key.access.concurrency = concurrency;
        }
        let mut quota_change = None;
        if let Some(quota) = update.quota {
            let state = quota
                .map(|(config, remaining)| initial_quota(&config, remaining, now))
                .transpose()?;
            changed.insert(
                "quota".into(),
                json!({"config": quota.map(|(c, _)| c), "remaining": state.map(|s| s.remaining)}),
            );
            key.access.quota = quota.map(|(c, _)| c);
            quota_change = Some(state);
        }
        if let Some(rotation) = update.rotation {
            changed.insert("rotation".into(), json!(rotation));
            key.lifecycle.rotation = rotation;
        }
        if let Some(delivery) = update.delivery {
            changed.insert(
                "delivery".into(),
                json!(delivery.as_ref().map(describe_delivery)),
            );
            key.lifecycle.delivery = delivery;
        }
        key.updated_at = now;
        if let Err(e) = self.authz.conferrable(actor, &mut key, restrictions).await {
            drop(head);
            return Err(self
                .authz
                .audited(actor, Operation::KeyUpdate, &key, e)
                .await);
        }
        self.catalog.check_key_policy(&key)?;
        if key.id == actor.key_id() {
            crate::access::check_not_locked_out(actor, &key.access.network())?;
        }
        let disabled_event = if was_enabled && key.status == KeyStatus::Disabled {
            Some(crate::webhooks::key_event(
                keyward_core::EventType::KeyDisabled,
                &key.summary(),
                now,
                crate::webhooks::new_event_id()?,
                json!({ "by": actor.audit_name() }),
            ))
        } else {
            None
        };
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::KeyUpdate,
            target: Some(id.to_string()),
            details: Value::Object(changed),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    update_keys: vec![key.clone()],
                    set_quotas: quota_change
                        .map(|state| (key.id, state))
                        .into_iter()
                        .collect(),
                    outbox: disabled_event.into_iter().collect(),
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        self.apply_quota_change(key.id, quota_change);
        Ok(key)
    }

    /// Disables an active key on the system's own authority (repeated rate-limit violations),
    /// with an audit entry. False if the key was not active.
    pub(crate) async fn disable_for_violations(&self, id: KeyId) -> Result<bool, ServiceError> {
        self.audit
            .retrying(|| self.disable_for_violations_once(id))
            .await
    }

    async fn disable_for_violations_once(&self, id: KeyId) -> Result<bool, ServiceError> {
        let mut head = self.audit.lock().await;
        let mut key = self.key(id).await?;
        if key.status != KeyStatus::Active {
            return Ok(false);
        }
        key.status = KeyStatus::Disabled;
        key.updated_at = self.clock.now();
        let entry = PendingEntry {
            actor: "system".into(),
            action: AuditAction::KeyUpdate,
            target: Some(id.to_string()),
            details: json!({ "enabled": false, "reason": "repeated rate-limit violations" }),
        };
        let event = crate::webhooks::key_event(
            keyward_core::EventType::KeyDisabled,
            &key.summary(),
            key.updated_at,
            crate::webhooks::new_event_id()?,
            json!({ "reason": "repeated rate-limit violations", "by": "system" }),
        );
        self.commit_key_with(&mut head, &key, entry, vec![event])
            .await?;
        Ok(true)
    }

    /// Revokes a key for good. When this returns, no verification that starts afterwards
    /// answers `VALID` for it.
    pub async fn revoke_key(
        &self,
        actor: &Actor,
        id: KeyId,
        reason: String,
    ) -> Result<KeyRecord, ServiceError> {
        self.audit
            .retrying(|| self.revoke_key_once(actor, id, reason.clone()))
            .await
    }

    async fn revoke_key_once(
        &self,
        actor: &Actor,
        id: KeyId,
        reason: String,
    ) -> Result<KeyRecord, ServiceError> {
        check_text("reason", &reason, limits::REASON_CHARS)?;
        self.check_not_self(actor, Operation::KeyRevoke, id).await?;
        let mut head = self.audit.lock().await;
        let mut key = self.key_for_change(id).await?;
        if let Err(refusal) = self
            .authz
            .authorize(actor, Operation::KeyRevoke, Target::Key(&key))
        {
            drop(head);
            return Err(self
                .authz
                .refuse(actor, Operation::KeyRevoke, Some(id.to_string()), refusal)
                .await);
        }
        let now = self.clock.now();
        key.status = KeyStatus::Revoked;
        key.revoked_at = Some(now);
        key.revocation_reason = Some(reason.clone());
        key.updated_at = now;
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::KeyRevoke,
            target: Some(id.to_string()),
            details: json!({ "reason": reason, "start": key.start }),
        };
        let event = crate::webhooks::key_event(
            keyward_core::EventType::KeyRevoked,
            &key.summary(),
            key.updated_at,
            crate::webhooks::new_event_id()?,
            json!({ "reason": reason, "by": actor.audit_name() }),
        );
        self.commit_key_with(&mut head, &key, entry, vec![event])
            .await?;
        tracing::info!(key_id = %id, actor = %actor.key_id(), "key revoked");
        Ok(key)
    }

    /// Replaces a key with a successor that has the same settings. The old key keeps working
    /// for `grace_period_s` seconds (never longer than it would have anyway), then answers
    /// `EXPIRED`. A successor of a key with an expiry gets the same lifetime, counted from now.
    /// Returns the old key as updated and the successor with its plaintext.
    pub async fn roll_key(
        &self,
        actor: &Actor,
        id: KeyId,
        grace_period_s: u64,
    ) -> Result<(KeyRecord, KeyRecord, PlaintextKey), ServiceError> {
        self.audit
            .retrying(|| self.roll_key_once(actor, id, grace_period_s))
            .await
    }

    async fn roll_key_once(
        &self,
        actor: &Actor,
        id: KeyId,
        grace_period_s: u64,
    ) -> Result<(KeyRecord, KeyRecord, PlaintextKey), ServiceError> {
        if grace_period_s > limits::MAX_GRACE_PERIOD_S {
            return Err(invalid(
                "grace_period_s",
                format!("must be at most {} (365 days)", limits::MAX_GRACE_PERIOD_S),
            ));
        }
        let mut head = self.audit.lock().await;
        let old = self.key_for_change(id).await?;
        if let Err(refusal) = self
            .authz
            .authorize(actor, Operation::KeyRoll, Target::Key(&old))
        {
            drop(head);
            return Err(self
                .authz
                .refuse(actor, Operation::KeyRoll, Some(id.to_string()), refusal)
                .await);
        }
        let old_for_refusal = old.clone();
        let succession = match self
            .succession(old, grace_period_s, Roller::Admin(actor))
            .await
        {
            Err(RollError::Refused(e)) => {
                drop(head);
                return Err(self
                    .authz
                    .audited(actor, Operation::KeyRoll, &old_for_refusal, e)
                    .await);
            }
            Err(RollError::Other(e)) => return Err(e),
            Ok(succession) => succession,
        };
        self.commit_succession(&mut head, succession).await
    }

    /// Prepares the roll of `old` (read under the writer, not revoked): its successor, the
    /// changes and the audit entry, for the caller to add to and commit with
    /// [`Keys::commit_succession`]. Nothing is written.
    pub(crate) async fn succession(
        &self,
        mut old: KeyRecord,
        grace_period_s: u64,
        roller: Roller<'_>,
    ) -> Result<Succession, RollError> {
        let id = old.id;
        self.check_issuance(&old.environment)?;
        let now = self.clock.now();
        if let Some(successor) = old.rolled_to {
            return Err(ServiceError::Conflict(format!(
                "key {id} was already rolled to {successor}"
            ))
            .into());
        }
        if old.is_expired_at(now) {
            return Err(ServiceError::Conflict(format!("key {id} has expired")).into());
        }
        let lifetime_ms = old
            .expires_at
            .map(|at| at.unix_ms().saturating_sub(old.created_at.unix_ms()));
        let (mut new, plaintext) = self.mint(
            now,
            KeyTemplate {
                service: old.service,
                environment: old.environment.clone(),
                name: old.name.clone(),
                owner: old.owner.clone(),
                purpose: old.purpose.clone(),
                permissions: old.permissions.clone(),
                meta: old.meta.clone(),
                expires_at: lifetime_ms
                    .map(|ms| Timestamp::from_unix_ms(now.unix_ms().saturating_add(ms))),
                status: old.status,
                rolled_from: Some(old.id),
                access: old.access.clone(),
                lifecycle: keyward_core::KeyLifecycle {
                    rotation: old.lifecycle.rotation,
                    rolled_by: None,
                    delivery: old.lifecycle.delivery.clone(),
                },
            },
        )?;
        let (actor_name, cause) = match roller {
            // The successor is a new key made by the caller: never outliving the caller, at
            // least as restricted as it.
            Roller::Admin(actor) => {
                if new.service == ServiceName::Keyward
                    && let Some(limit) = actor.expires_at()
                {
                    new.expires_at = Some(new.expires_at.map_or(limit, |at| at.min(limit)));
                }
                self.authz
                    .conferrable(actor, &mut new, Restrictions::ALL)
                    .await
                    .map_err(RollError::Refused)?;
                (actor.audit_name(), keyward_core::RollCause::Manual)
            }
            // The same settings again, made by the policy or by the key itself: nothing is
            // conferred that the key did not hold, and the successor ends when the key would
            // have (a rotation renews the secret, never the lifetime).
            Roller::Scheduler => {
                new.expires_at = old.expires_at;
                ("system".to_owned(), keyward_core::RollCause::Schedule)
            }
            Roller::Holder => {
                new.expires_at = old.expires_at;
                (old.id.to_string(), keyward_core::RollCause::Client)
            }
        };
        // Within the environment's policy as it is now.
        self.catalog.check_key_policy(&new)?;
        let grace_end = now.plus_seconds(grace_period_s);
        old.expires_at = Some(old.expires_at.map_or(grace_end, |at| at.min(grace_end)));
        old.rolled_to = Some(new.id);
        old.lifecycle.rolled_by = Some(cause);
        old.updated_at = now;
        let entry = PendingEntry {
            actor: actor_name,
            action: AuditAction::KeyRoll,
            target: Some(id.to_string()),
            details: json!({
                "successor": new.id,
                "successor_start": new.start,
                "grace_period_s": grace_period_s,
                "old_expires_at": old.expires_at,
                "cause": cause.as_str(),
            }),
        };
        // The successor carries on with what is left of the old key's quota.
        let quota = match self.catalog.limits_of(&old).quota {
            Some(config) => {
                self.quotas.seed_for(&old).await?;
                let remaining = self.quotas.remaining(old.id, &config, now).unwrap_or(0);
                Some(initial_quota(&config, Some(remaining), now)?)
            }
            None => None,
        };
        let rotated = crate::webhooks::key_event(
            keyward_core::EventType::KeyRotated,
            &old.summary(),
            now,
            crate::webhooks::new_event_id()?,
            json!({
                "successor_id": new.id,
                "successor_start": new.start,
                "cause": cause.as_str(),
                "old_expires_at": old.expires_at,
            }),
        );
        Ok(Succession {
            changes: Changes {
                insert_keys: vec![new.clone()],
                update_keys: vec![old.clone()],
                set_quotas: quota.map(|q| (new.id, Some(q))).into_iter().collect(),
                outbox: vec![rotated],
                ..Changes::default()
            },
            entries: vec![entry],
            quota,
            old,
            new,
            plaintext,
        })
    }

    /// Commits a roll prepared by [`Keys::succession`].
    pub(crate) async fn commit_succession(
        &self,
        head: &mut Writer,
        succession: Succession,
    ) -> Result<(KeyRecord, KeyRecord, PlaintextKey), ServiceError> {
        let Succession {
            changes,
            entries,
            quota,
            old,
            new,
            plaintext,
        } = succession;
        self.audit.commit(head, changes, entries).await?;
        if let Some(state) = quota {
            self.quotas.set(new.id, Some(state));
        }
        Ok((old, new, plaintext))
    }

    /// The writer, for use cases elsewhere that read and roll a key under it.
    pub(crate) async fn writer(&self) -> tokio::sync::MutexGuard<'_, Writer> {
        self.audit.lock().await
    }

    /// A key about to be changed by the system: read afresh, intact and not revoked.
    pub(crate) async fn for_change(&self, id: KeyId) -> Result<KeyRecord, ServiceError> {
        self.key_for_change(id).await
    }
}

/// Who rolls a key, which decides what the successor may be and who the audit names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Roller<'a> {
    /// An admin (`POST /v1/keys/{id}/roll`): the successor is a key the admin makes.
    Admin(&'a Actor),
    /// The rotation scheduler, by the key's policy.
    Scheduler,
    /// The key's own holder (`POST /v1/self/rotate`).
    Holder,
}

/// Why a roll was not prepared: a refusal of the admin's (to audit) or any other error.
#[derive(Debug)]
pub(crate) enum RollError {
    Refused(ServiceError),
    Other(ServiceError),
}

impl From<ServiceError> for RollError {
    fn from(e: ServiceError) -> Self {
        RollError::Other(e)
    }
}

impl From<RollError> for ServiceError {
    fn from(e: RollError) -> Self {
        match e {
            RollError::Refused(e) | RollError::Other(e) => e,
        }
    }
}

/// A roll ready to commit: what it writes, and what the caller gets back.
pub(crate) struct Succession {
    pub changes: Changes,
    pub entries: Vec<PendingEntry>,
    quota: Option<keyward_core::QuotaState>,
    pub old: KeyRecord,
    pub new: KeyRecord,
    pub plaintext: PlaintextKey,
}

/// A delivery target for the audit log: its kind and paths, never the address's query.
pub(crate) fn describe_delivery(t: &keyward_core::DeliveryTarget) -> Value {
    let origin = t
        .address
        .as_deref()
        .and_then(|a| reqwest::Url::parse(a).ok())
        .map(|u| u.origin().ascii_serialization());
    json!({ "kind": t.kind.as_str(), "path": t.path, "field": t.field, "address": origin,
        "mount": t.mount, "token_path": t.token_path })
}

impl Keys {
    /// Checks a delivery target: its own values, that it stays in the key's environment, and
    /// that the caller could itself write there (or read the token it names): a target must not
    /// be a way to reach secrets the caller cannot.
    async fn check_delivery(
        &self,
        actor: &Actor,
        op: Operation,
        key: Option<&KeyRecord>,
        service: ServiceName,
        target: &keyward_core::DeliveryTarget,
        environment: &EnvironmentName,
    ) -> Result<(), ServiceError> {
        use keyward_core::DeliveryKind;
        let id = key.map(|k| k.id);
        if service == ServiceName::Keyward {
            return Err(invalid(
                "delivery",
                "admin keys are not delivered: roll them with POST /v1/keys/{id}/roll",
            ));
        }
        // A target receives every successor of the key: whoever sets one on an existing key
        // must be one who could roll it (and so hold its successor) anyway.
        if let Some(key) = key
            && let Err(refusal) = self
                .authz
                .authorize(actor, Operation::KeyRoll, Target::Key(key))
        {
            return Err(self
                .authz
                .refuse(actor, Operation::KeyRoll, Some(key.id.to_string()), refusal)
                .await);
        }
        if target
            .environment
            .as_ref()
            .is_some_and(|e| e != environment)
        {
            return Err(invalid(
                "delivery.environment",
                "must be the key's environment: a successor never leaves it",
            ));
        }
        let secret_path = |field: &'static str, path: &str| {
            crate::secrets::check_path(path).map_err(|_| {
                invalid(
                    field,
                    "a secret path: segments of [A-Za-z0-9._-] separated by '/'",
                )
            })
        };
        if target.field.is_empty()
            || target.field.len() > 128
            || target.field.chars().any(char::is_control)
        {
            return Err(invalid("delivery.field", "1 to 128 printable characters"));
        }
        let needed = match target.kind {
            DeliveryKind::Vault => {
                secret_path("delivery.path", &target.path)?;
                if matches!(target.field.as_str(), "key_id" | "start") {
                    return Err(invalid(
                        "delivery.field",
                        "key_id and start are written beside the key; name another field",
                    ));
                }
                for (field, value) in [
                    ("delivery.address", target.address.is_some()),
                    ("delivery.mount", target.mount.is_some()),
                    ("delivery.token_path", target.token_path.is_some()),
                ] {
                    if value {
                        return Err(invalid(field, "only for a kv2 target"));
                    }
                }
                // Written there, and readable by whoever may read it.
                let read = format!("secrets:read:{}", target.path);
                if !actor.holds(&read) {
                    return Err(self
                        .authz
                        .refuse(
                            actor,
                            op,
                            id.map(|id| id.to_string()),
                            crate::Refusal::Missing { permission: read },
                        )
                        .await);
                }
                format!("secrets:write:{}", target.path)
            }
            DeliveryKind::Kv2 => {
                secret_path("delivery.path", &target.path)?;
                let address = target
                    .address
                    .as_deref()
                    .ok_or_else(|| invalid("delivery.address", "required for a kv2 target"))?;
                let url = reqwest::Url::parse(address)
                    .map_err(|_| invalid("delivery.address", "not a valid URL"))?;
                // https, or http to an address written out (an operator's allowed network);
                // the server itself, without credentials, path, query or fragment.
                let literal = crate::outbound::literal_host(&url).is_some();
                if !(url.scheme() == "https" || (url.scheme() == "http" && literal))
                    || url.host_str().is_none()
                    || !url.username().is_empty()
                    || url.password().is_some()
                    || url.query().is_some()
                    || url.fragment().is_some()
                    || !matches!(url.path(), "" | "/")
                {
                    return Err(invalid(
                        "delivery.address",
                        "an https server address (http only to an IP address), without credentials, path or query",
                    ));
                }
                if let Some(mount) = &target.mount {
                    secret_path("delivery.mount", mount)?;
                }
                let token = target
                    .token_path
                    .as_deref()
                    .ok_or_else(|| invalid("delivery.token_path", "required for a kv2 target"))?;
                secret_path("delivery.token_path", token)?;
                format!("secrets:read:{token}")
            }
        };
        if !actor.holds(&needed) {
            return Err(self
                .authz
                .refuse(
                    actor,
                    op,
                    id.map(|id| id.to_string()),
                    crate::Refusal::Missing { permission: needed },
                )
                .await);
        }
        Ok(())
    }
}

/// The settings a minted key starts with.
struct KeyTemplate {
    service: ServiceName,
    environment: EnvironmentName,
    name: String,
    owner: String,
    purpose: Option<String>,
    permissions: Vec<Permission>,
    meta: Map<String, Value>,
    expires_at: Option<Timestamp>,
    status: KeyStatus,
    rolled_from: Option<KeyId>,
    access: KeyAccess,
    lifecycle: keyward_core::KeyLifecycle,
}

/// A quota's starting state: `remaining` credits (default: the refill amount) in the current
/// refill period.
fn initial_quota(
    config: &keyward_core::QuotaConfig,
    remaining: Option<u64>,
    now: Timestamp,
) -> Result<keyward_core::QuotaState, ServiceError> {
    const MAX: u64 = 1_000_000_000_000;
    if let Some(refill) = config.refill
        && !(1..=MAX).contains(&refill.amount)
    {
        return Err(invalid(
            "quota.refill.amount",
            "must be between 1 and 1000000000000",
        ));
    }
    let remaining = match (remaining, config.refill) {
        (Some(r), _) if r > MAX => {
            return Err(invalid("quota.remaining", "must be at most 1000000000000"));
        }
        (Some(r), _) => r,
        (None, Some(refill)) => refill.amount,
        (None, None) => {
            return Err(invalid(
                "quota.remaining",
                "a quota without a refill needs remaining",
            ));
        }
    };
    let period_start = config.refill.map_or(now, |r| r.interval.period_start(now));
    Ok(keyward_core::QuotaState {
        remaining,
        period_start,
    })
}
