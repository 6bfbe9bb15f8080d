//! Versioned key/value secrets per environment, sealed under the environment's own keyring.
//!
//! A write adds a version (optionally only if the current version is the one named: check and
//! set); a read returns the latest live version or a named one; delete is soft (undelete brings
//! the value back), destroy removes the value for good. Every read, write, delete and destroy is
//! audited with the path and version, never the value. Access needs `secrets:<action>:<path>`
//! (a glob scope such as `secrets:read:payments/*` covers a subtree) and the admin key's scope
//! over the environment.

use keyward_core::audit::AuditAction;
use keyward_core::permission::admin;
use std::sync::Arc;

use keyward_core::{EnvironmentName, Timestamp};
use keyward_store::{Changes, LeaseKind, SecretMeta, SecretVersion, VaultLease};
use serde_json::{Map, Value, json};

use keyward_core::Clock;
use keyward_store::Store;

use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::authz::{Authz, Operation, Target};
use crate::catalog::Catalog;
use crate::vault::OpenVault;
use crate::{Actor, ServiceError};

pub mod secret_limits {
    /// A secret's value, as JSON text.
    pub const VALUE_BYTES: usize = 48 * 1024;
    pub const PATH_CHARS: usize = 256;
    pub const DEFAULT_MAX_VERSIONS: u32 = 10;
    pub const MAX_VERSIONS: u32 = 1000;
    pub const CUSTOM_BYTES: usize = 8 * 1024;
    /// A leased read lasts at most a day.
    pub const MAX_READ_LEASE_S: u64 = 24 * 3600;
}

use secret_limits as limits;

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field,
        message: message.into(),
    }
}

fn not_found() -> ServiceError {
    ServiceError::NotFound { what: "secret" }
}

/// Checks a secret path: 1-256 characters, segments of `[A-Za-z0-9._-]` separated by single
/// slashes, none of them `.` or `..`.
pub fn check_path(path: &str) -> Result<(), ServiceError> {
    let ok = (1..=limits::PATH_CHARS).contains(&path.len())
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "path",
            "a secret path is 1-256 characters: segments of [A-Za-z0-9._-] separated by '/'",
        ))
    }
}

/// The metadata of a secret before anything was set: no owner, the default version count, a
/// fresh incarnation.
fn new_meta(env: &EnvironmentName, path: &str, now: Timestamp) -> Result<SecretMeta, ServiceError> {
    let incarnation = keyward_crypto::new_request_id().map_err(ServiceError::internal)?;
    Ok(SecretMeta {
        environment: env.clone(),
        path: path.to_owned(),
        owner: None,
        purpose: None,
        max_versions: limits::DEFAULT_MAX_VERSIONS,
        cas_required: false,
        custom: Map::new(),
        current_version: 0,
        created_at: now,
        updated_at: now,
        incarnation: Some(incarnation),
    })
}

/// A write: the new value and, for check-and-set, the version it replaces (0: must not exist).
#[derive(Clone)]
pub struct SecretWrite {
    pub data: Map<String, Value>,
    pub cas: Option<u64>,
}

/// Metadata fields to change; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct SecretMetaUpdate {
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub max_versions: Option<u32>,
    pub cas_required: Option<bool>,
    pub custom: Option<Map<String, Value>>,
}

/// Secrets as stored (metadata and sealed versions, never a plaintext), kept in memory so a read
/// costs no store lookup. Every change to a secret invalidates its entry before the change's
/// call returns; a fill that raced an invalidation is dropped (the epoch moved).
#[derive(Debug, Default)]
pub(crate) struct SecretCache {
    inner: std::sync::RwLock<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    epoch: u64,
    entries: std::collections::HashMap<String, Arc<CachedSecret>>,
    /// Cleared while the change feed may have missed changes: every read goes to the store.
    unvouched: bool,
}

#[derive(Debug)]
pub(crate) struct CachedSecret {
    meta: SecretMeta,
    versions: Vec<SecretVersion>,
}

/// Entries kept before the cache starts over.
const CACHE_ENTRIES: usize = 100_000;

fn cache_key(env: &EnvironmentName, path: &str) -> String {
    format!("{env}/{path}")
}

impl SecretCache {
    fn get(&self, key: &str) -> Option<Arc<CachedSecret>> {
        let inner = crate::read(&self.inner);
        if inner.unvouched {
            return None;
        }
        inner.entries.get(key).cloned()
    }

    /// Whether cached entries may be served (see [`keyward_store::ChangeListener::interrupted`]).
    pub(crate) fn vouch(&self, vouched: bool) {
        crate::write(&self.inner).unvouched = !vouched;
    }

    fn epoch(&self) -> u64 {
        crate::read(&self.inner).epoch
    }

    fn fill(&self, epoch: u64, key: String, value: Arc<CachedSecret>) {
        let mut inner = crate::write(&self.inner);
        if inner.epoch != epoch {
            return;
        }
        if inner.entries.len() >= CACHE_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(key, value);
    }

    pub(crate) fn invalidate(&self, env: &EnvironmentName, path: &str) {
        let mut inner = crate::write(&self.inner);
        inner.epoch += 1;
        inner.entries.remove(&cache_key(env, path));
    }

    pub(crate) fn clear(&self) {
        let mut inner = crate::write(&self.inner);
        inner.epoch += 1;
        inner.entries.clear();
    }
}

/// A secret read back.
#[derive(Clone)]
pub struct SecretRead {
    pub meta: SecretMeta,
    pub version: u64,
    pub created_at: Timestamp,
    pub data: Map<String, Value>,
    pub lease: Option<VaultLease>,
}

impl std::fmt::Debug for SecretWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretWrite")
            .field("fields", &self.data.len())
            .field("cas", &self.cas)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SecretRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRead")
            .field("path", &self.meta.path)
            .field("version", &self.version)
            .field("data", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// The secrets service.
#[derive(Debug)]
pub struct Secrets {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ids: keyward_crypto::KeyIds,
    vault: Arc<OpenVault>,
    cache: SecretCache,
    catalog: Arc<Catalog>,
    audit: Arc<AuditLog>,
    authz: Arc<Authz>,
}

impl Secrets {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        vault: Arc<OpenVault>,
        catalog: Arc<Catalog>,
        audit: Arc<AuditLog>,
        authz: Arc<Authz>,
    ) -> Self {
        Secrets {
            store,
            clock,
            ids: keyward_crypto::KeyIds::default(),
            vault,
            cache: SecretCache::default(),
            catalog,
            audit,
            authz,
        }
    }

    /// Drops every cached secret (ciphertexts were resealed, or the keyrings changed).
    pub(crate) fn forget_cached(&self) {
        self.cache.clear();
    }

    /// Serves cached secrets, or not while the change feed may have missed changes.
    pub(crate) fn vouch_for_cached(&self, vouched: bool) {
        self.cache.vouch(vouched);
    }

    /// Drops one cached secret: it changed (the change feed calls this).
    pub(crate) fn forget(&self, env: &EnvironmentName, path: &str) {
        self.cache.invalidate(env, path);
    }

    async fn check_secret_access(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        op: Operation,
        path: &str,
    ) -> Result<(), ServiceError> {
        check_path(path)?;
        self.authz
            .permit(
                actor,
                op,
                Target::Secret {
                    environment: env,
                    path,
                },
            )
            .await
    }

    fn known_environment(&self, env: &EnvironmentName) -> Result<(), ServiceError> {
        self.catalog
            .environment(env.as_str())
            .map(|_| ())
            .ok_or(ServiceError::NotFound {
                what: "environment",
            })
    }

    async fn secret_meta(
        &self,
        env: &EnvironmentName,
        path: &str,
    ) -> Result<Option<SecretMeta>, ServiceError> {
        Ok(self.store.secret(env.clone(), path.to_owned()).await?)
    }

    /// Writes a new version. With `cas` (or when the secret requires it) the write succeeds only
    /// if the current version is `cas`; otherwise 409.
    pub async fn write_secret(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        write: SecretWrite,
    ) -> Result<(SecretMeta, u64), ServiceError> {
        self.audit
            .retrying(|| self.write_secret_once(actor, env, path, write.clone()))
            .await
    }

    async fn write_secret_once(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        write: SecretWrite,
    ) -> Result<(SecretMeta, u64), ServiceError> {
        self.check_secret_access(actor, env, Operation::SecretWrite, path)
            .await?;
        self.write_as(actor.audit_name(), env, path, write).await
    }

    /// Writes a new version for `actor` (a key id, or `system`), whose right to was checked.
    pub(crate) async fn write_as(
        &self,
        actor: String,
        env: &EnvironmentName,
        path: &str,
        write: SecretWrite,
    ) -> Result<(SecretMeta, u64), ServiceError> {
        self.known_environment(env)?;
        let text = zeroize::Zeroizing::new(
            serde_json::to_vec(&Value::Object(write.data)).map_err(ServiceError::internal)?,
        );
        if text.len() > limits::VALUE_BYTES {
            return Err(ServiceError::TooLarge(format!(
                "a secret's value is at most {} bytes of JSON",
                limits::VALUE_BYTES
            )));
        }
        let mut head = self.audit.lock().await;
        let now = self.clock.now();
        let existing = self.secret_meta(env, path).await?;
        let current = existing.as_ref().map_or(0, |m| m.current_version);
        if existing.as_ref().is_some_and(|m| m.cas_required) && write.cas.is_none() {
            return Err(invalid(
                "cas",
                "this secret requires check-and-set: give the version you replace",
            ));
        }
        if let Some(cas) = write.cas
            && cas != current
        {
            return Err(ServiceError::Conflict(format!(
                "check-and-set failed: the current version is {current}, not {cas}"
            )));
        }
        let version = current + 1;
        let mut meta = match existing {
            Some(meta) => meta,
            None => new_meta(env, path, now)?,
        };
        meta.current_version = version;
        meta.updated_at = now;
        let ciphertext =
            self.vault
                .seal_secret(env, path, meta.incarnation.as_deref(), version, &text)?;
        let pruned = self.pruned_versions(&meta, version).await?;
        self.audit.commit(
            &mut head,
            Changes {
                upsert_secrets: vec![meta.clone()],
                upsert_secret_versions: vec![SecretVersion {
                    environment: env.clone(),
                    path: path.to_owned(),
                    version,
                    ciphertext: Some(ciphertext),
                    created_at: now,
                    deleted_at: None,
                    destroyed: false,
                }],
                delete_secret_versions: pruned
                    .iter()
                    .map(|v| (env.clone(), path.to_owned(), *v))
                    .collect(),
                ..Changes::default()
            },
            vec![PendingEntry {
                actor,
                action: AuditAction::SecretWrite,
                target: Some(format!("{env}/{path}")),
                details: json!({ "environment": env, "path": path, "version": version, "pruned_versions": pruned }),
            }],
        )
        .await?;
        Ok((meta, version))
    }

    /// Versions to drop so that at most `max_versions` remain once `newest` is written.
    async fn pruned_versions(
        &self,
        meta: &SecretMeta,
        newest: u64,
    ) -> Result<Vec<u64>, ServiceError> {
        let keep_from = newest.saturating_sub(u64::from(meta.max_versions)) + 1;
        Ok(self
            .store
            .secret_versions(meta.environment.clone(), meta.path.clone())
            .await?
            .into_iter()
            .map(|v| v.version)
            .filter(|v| *v < keep_from)
            .collect())
    }

    /// Reads the latest version (or `version`). A deleted or destroyed version is 404, as is a
    /// secret whose latest version is. With `lease_ttl_s`, the read is recorded as a lease.
    pub async fn read_secret(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        version: Option<u64>,
        lease_ttl_s: Option<u64>,
    ) -> Result<SecretRead, ServiceError> {
        self.audit
            .retrying(|| self.read_secret_once(actor, env, path, version, lease_ttl_s))
            .await
    }

    async fn read_secret_once(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        version: Option<u64>,
        lease_ttl_s: Option<u64>,
    ) -> Result<SecretRead, ServiceError> {
        self.check_secret_access(actor, env, Operation::SecretRead, path)
            .await?;
        self.read_as(actor.audit_name(), env, path, version, lease_ttl_s)
            .await
    }

    /// Reads a version for `actor` (a key id, or `system`), whose right to was checked; the
    /// read is audited as any other.
    pub(crate) async fn read_as(
        &self,
        actor: String,
        env: &EnvironmentName,
        path: &str,
        version: Option<u64>,
        lease_ttl_s: Option<u64>,
    ) -> Result<SecretRead, ServiceError> {
        if let Some(ttl) = lease_ttl_s
            && !(1..=limits::MAX_READ_LEASE_S).contains(&ttl)
        {
            return Err(invalid(
                "lease_ttl_s",
                format!("1 to {} seconds", limits::MAX_READ_LEASE_S),
            ));
        }
        let secret = self.cached_secret(env, path).await?;
        let meta = &secret.meta;
        let wanted = version.unwrap_or(meta.current_version);
        let stored = secret
            .versions
            .iter()
            .find(|v| v.version == wanted)
            .ok_or_else(not_found)?;
        let ciphertext = match (&stored.ciphertext, stored.deleted_at, stored.destroyed) {
            (Some(c), None, false) => c,
            _ => {
                return Err(ServiceError::NotFound {
                    what: "secret version (deleted or destroyed)",
                });
            }
        };
        let plain =
            self.vault
                .open_secret(env, path, meta.incarnation.as_deref(), wanted, ciphertext)?;
        let data = match serde_json::from_slice(&plain) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(ServiceError::Integrity(
                    "a stored secret opened but is not a JSON object".into(),
                ));
            }
        };
        let now = self.clock.now();
        let lease = match lease_ttl_s {
            Some(ttl) => Some(VaultLease {
                mac: None,
                id: crate::vault_leases::lease_id(&self.ids, now)?,
                kind: LeaseKind::Secret,
                path: format!("secrets/{env}/{path}"),
                environment: env.clone(),
                key_id: None,
                secret_version: Some(wanted),
                actor: actor.clone(),
                issued_at: now,
                expires_at: now.plus_seconds(ttl),
                max_expires_at: now.plus_seconds(ttl),
                ended_at: None,
                end_reason: None,
            }),
            None => None,
        };
        let entry = PendingEntry {
            actor,
            action: AuditAction::SecretRead,
            target: Some(format!("{env}/{path}")),
            details: json!({
                "environment": env,
                "path": path,
                "version": wanted,
                "lease_id": lease.as_ref().map(|l| &l.id),
            }),
        };
        match &lease {
            Some(lease) => {
                let mut head = self.audit.lock().await;
                self.audit
                    .commit(
                        &mut head,
                        Changes {
                            upsert_leases: vec![lease.clone()],
                            ..Changes::default()
                        },
                        vec![entry],
                    )
                    .await?;
            }
            None => self.audit.batched(entry).await?,
        }
        Ok(SecretRead {
            meta: meta.clone(),
            version: wanted,
            created_at: stored.created_at,
            data,
            lease,
        })
    }

    /// A secret's metadata and versions, from memory or else the store.
    async fn cached_secret(
        &self,
        env: &EnvironmentName,
        path: &str,
    ) -> Result<Arc<CachedSecret>, ServiceError> {
        let key = cache_key(env, path);
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let epoch = self.cache.epoch();
        let meta = self.secret_meta(env, path).await?.ok_or_else(not_found)?;
        let versions = self
            .store
            .secret_versions(env.clone(), path.to_owned())
            .await?;
        let value = Arc::new(CachedSecret { meta, versions });
        self.cache.fill(epoch, key, Arc::clone(&value));
        Ok(value)
    }

    /// Secrets of `env` under `prefix`, in path order.
    pub async fn list_secrets(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        prefix: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, ServiceError> {
        let glob = format!("{prefix}*");
        self.authz
            .permit(
                actor,
                Operation::SecretList,
                Target::Secret {
                    environment: env,
                    path: &glob,
                },
            )
            .await?;
        self.known_environment(env)?;
        let listed = self
            .store
            .list_secrets(env.clone(), prefix.to_owned(), after, limit.clamp(1, 1000))
            .await?;
        // A key scoped to part of the tree sees only what it may list.
        Ok(listed
            .into_iter()
            .filter(|m| actor.holds(&format!("{}:{}", admin::SECRETS_LIST, m.path)))
            .collect())
    }

    /// A secret's metadata and its versions (without values).
    pub async fn secret_metadata(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
    ) -> Result<(SecretMeta, Vec<SecretVersion>), ServiceError> {
        self.check_secret_access(actor, env, Operation::SecretRead, path)
            .await?;
        let meta = self.secret_meta(env, path).await?.ok_or_else(not_found)?;
        let mut versions = self
            .store
            .secret_versions(env.clone(), path.to_owned())
            .await?;
        for v in &mut versions {
            v.ciphertext = None;
        }
        Ok((meta, versions))
    }

    /// Creates or changes a secret's metadata. Lowering `max_versions` drops the oldest versions.
    pub async fn update_secret_metadata(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        update: SecretMetaUpdate,
    ) -> Result<SecretMeta, ServiceError> {
        self.audit
            .retrying(|| self.update_secret_metadata_once(actor, env, path, update.clone()))
            .await
    }

    async fn update_secret_metadata_once(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        update: SecretMetaUpdate,
    ) -> Result<SecretMeta, ServiceError> {
        self.check_secret_access(actor, env, Operation::SecretWrite, path)
            .await?;
        self.known_environment(env)?;
        for (field, text) in [("owner", &update.owner), ("purpose", &update.purpose)] {
            if let Some(text) = text
                && (text.is_empty() || text.len() > 1000 || text.chars().any(char::is_control))
            {
                return Err(invalid(field, "1-1000 characters, no control characters"));
            }
        }
        if let Some(max) = update.max_versions
            && !(1..=limits::MAX_VERSIONS).contains(&max)
        {
            return Err(invalid(
                "max_versions",
                format!("1 to {}", limits::MAX_VERSIONS),
            ));
        }
        if let Some(custom) = &update.custom {
            if custom.values().any(|v| !v.is_string()) {
                return Err(invalid("custom", "custom metadata values are strings"));
            }
            if Value::Object(custom.clone()).to_string().len() > limits::CUSTOM_BYTES {
                return Err(ServiceError::TooLarge(format!(
                    "custom metadata is at most {} bytes",
                    limits::CUSTOM_BYTES
                )));
            }
        }
        let mut head = self.audit.lock().await;
        let now = self.clock.now();
        let mut meta = match self.secret_meta(env, path).await? {
            Some(meta) => meta,
            None => new_meta(env, path, now)?,
        };
        if let Some(owner) = update.owner {
            meta.owner = Some(owner);
        }
        if let Some(purpose) = update.purpose {
            meta.purpose = Some(purpose);
        }
        if let Some(max) = update.max_versions {
            meta.max_versions = max;
        }
        if let Some(cas) = update.cas_required {
            meta.cas_required = cas;
        }
        if let Some(custom) = update.custom {
            meta.custom = custom;
        }
        meta.updated_at = now;
        let pruned = self.pruned_versions(&meta, meta.current_version).await?;
        self.audit.commit(
            &mut head,
            Changes {
                upsert_secrets: vec![meta.clone()],
                delete_secret_versions: pruned
                    .iter()
                    .map(|v| (env.clone(), path.to_owned(), *v))
                    .collect(),
                ..Changes::default()
            },
            vec![PendingEntry {
                actor: actor.audit_name(),
                action: AuditAction::SecretMetadataUpdate,
                target: Some(format!("{env}/{path}")),
                details: json!({
                    "environment": env, "path": path, "owner": meta.owner, "purpose": meta.purpose,
                    "max_versions": meta.max_versions, "cas_required": meta.cas_required,
                    "custom": meta.custom, "pruned_versions": pruned,
                }),
            }],
        )
        .await?;
        Ok(meta)
    }

    /// Soft-deletes, undeletes or destroys versions (default: the latest). Destroy removes the
    /// value for good; the version stays listed as destroyed.
    pub async fn change_secret_versions(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        versions: Option<Vec<u64>>,
        change: VersionChange,
    ) -> Result<Vec<u64>, ServiceError> {
        self.audit
            .retrying(|| {
                self.change_secret_versions_once(actor, env, path, versions.clone(), change)
            })
            .await
    }

    async fn change_secret_versions_once(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
        versions: Option<Vec<u64>>,
        change: VersionChange,
    ) -> Result<Vec<u64>, ServiceError> {
        let op = match change {
            VersionChange::Delete | VersionChange::Undelete => Operation::SecretDelete,
            VersionChange::Destroy => Operation::SecretDestroy,
        };
        self.check_secret_access(actor, env, op, path).await?;
        if versions
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 1000)
        {
            return Err(invalid("versions", "1 to 1000 version numbers"));
        }
        let mut head = self.audit.lock().await;
        let meta = self.secret_meta(env, path).await?.ok_or_else(not_found)?;
        let wanted = versions.unwrap_or_else(|| vec![meta.current_version]);
        let stored = self
            .store
            .secret_versions(env.clone(), path.to_owned())
            .await?;
        let now = self.clock.now();
        let mut changed = Vec::new();
        let mut updates = Vec::new();
        for number in &wanted {
            let Some(mut v) = stored.iter().find(|v| v.version == *number).cloned() else {
                return Err(ServiceError::NotFound {
                    what: "secret version",
                });
            };
            let before = v.clone();
            match change {
                VersionChange::Delete if !v.destroyed => v.deleted_at = v.deleted_at.or(Some(now)),
                VersionChange::Undelete if !v.destroyed => v.deleted_at = None,
                VersionChange::Destroy => {
                    v.destroyed = true;
                    v.ciphertext = None;
                }
                _ => {}
            }
            if v != before {
                changed.push(v.version);
                updates.push(v);
            }
        }
        self.audit.commit(
            &mut head,
            Changes {
                upsert_secret_versions: updates,
                ..Changes::default()
            },
            vec![PendingEntry {
                actor: actor.audit_name(),
                action: change.action(),
                target: Some(format!("{env}/{path}")),
                details: json!({ "environment": env, "path": path, "versions": wanted, "changed": changed }),
            }],
        )
        .await?;
        Ok(changed)
    }

    /// Removes a secret, its metadata and every version, irrecoverably.
    pub async fn delete_secret(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
    ) -> Result<(), ServiceError> {
        self.audit
            .retrying(|| self.delete_secret_once(actor, env, path))
            .await
    }

    async fn delete_secret_once(
        &self,
        actor: &Actor,
        env: &EnvironmentName,
        path: &str,
    ) -> Result<(), ServiceError> {
        self.check_secret_access(actor, env, Operation::SecretDestroy, path)
            .await?;
        let mut head = self.audit.lock().await;
        let meta = self.secret_meta(env, path).await?.ok_or_else(not_found)?;
        self.audit.commit(
            &mut head,
            Changes {
                delete_secrets: vec![(env.clone(), path.to_owned())],
                ..Changes::default()
            },
            vec![PendingEntry {
                actor: actor.audit_name(),
                action: AuditAction::SecretMetadataDelete,
                target: Some(format!("{env}/{path}")),
                details: json!({ "environment": env, "path": path, "versions": meta.current_version }),
            }],
        )
        .await?;
        Ok(())
    }
}

/// What [`Secrets::change_secret_versions`] does to each version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionChange {
    Delete,
    Undelete,
    Destroy,
}

impl VersionChange {
    fn action(self) -> AuditAction {
        match self {
            VersionChange::Delete => AuditAction::SecretDelete,
            VersionChange::Undelete => AuditAction::SecretUndelete,
            VersionChange::Destroy => AuditAction::SecretDestroy,
        }
    }
}
