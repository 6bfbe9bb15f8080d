//! keyward's use cases: issue, verify, update, revoke and roll keys, keep secrets, and keep the
//! audit log.
//!
//! The service is cut by capability, each a service with the dependencies it needs passed in:
//!
//! * [`Keys`]: create, read, list, update, revoke, roll keys.
//! * [`Access`]: environments and their policies, roles, plans, grants, explain.
//! * [`Verifier`]: verification and its admission checks (network and path rules, permissions,
//!   concurrency, quotas, escalation, rate limits), the failed-attempt guard, admin
//!   authentication.
//! * [`Secrets`], [`KeyLeases`], [`Sys`]: the vault's secrets, leases, and its operations.
//! * [`AuditLog`]: the writer every change commits through, with its audit entries, atomically.
//! * [`Events`]: what happened to keys and clients, for webhooks and monitoring.
//!
//! Under them: the authorization point (`authz`), the catalogs (`catalog`), stored-state
//! integrity (`integrity`), quotas, and the change feed (`feed`) through which caches and
//! catalogs learn of every commit. [`Authority`] wires them over one [`Store`] and [`Clock`]
//! and runs their background jobs; it knows nothing of HTTP: the server maps errors to codes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyward_core::{Clock, Timestamp};
use keyward_store::{Store, StoreError};

mod access;
pub mod audit;
mod audit_log;
mod authz;
pub mod cache;
mod catalog;
pub mod escalation;
mod events;
mod feed;
mod guard;
mod init;
mod integrity;
mod jobs;
mod keyring;
mod keys;
pub mod leases;
pub mod limiter;
mod node;
mod outbound;
mod quotas;
mod revocation;
mod rotation;
mod secrets;
mod sys;
mod usage;
pub mod vault;
mod vault_leases;
mod verify;
mod webhooks;

pub use access::{
    Access, EffectivePermission, Explanation, NewGrant, PlanSpec, VerifyRequest, check_ratelimits,
    parse_cidrs, parse_path_rules,
};
pub use audit_log::AuditLog;
pub use authz::{Actor, Operation, Refusal};
pub use cache::{CachedKey, VerifyCache};
pub use events::Events;
pub use guard::GuardConfig;
pub use init::{
    InitError, Initialized, adopt_secrets, builtin_roles, initial_environments, initialize,
};
pub use integrity::verify_stored_state;
pub use keyring::Keyring;
pub use keys::{KeyPage, KeyUpdate, Keys, NewKey, limits};
pub use keyward_store::{
    EnvironmentRecord, KeyQuery, RewrapProgress, SecretMeta, SecretVersion, VaultLease,
};
pub use leases::Lease;
pub use node::{Node, SealStatus, Session};
pub use revocation::{
    BulkRevocation, MAX_BULK_IDS, MAX_BULK_REVOKE, OwnerTransfer, RevokeSelector,
};
pub use rotation::{EffectiveRotation, Ending, Generation, Rotation, RotationRun, SelfRotation};
pub use secrets::{
    SecretMetaUpdate, SecretRead, SecretWrite, Secrets, VersionChange,
    check_path as check_secret_path, secret_limits,
};
pub use sys::Sys;
pub use vault::{DEFAULT_SHARES, DEFAULT_THRESHOLD, NewVault};
pub use vault_leases::{KeyLease, KeyLeases, NewKeyLease};
pub use verify::{RateLimitStatus, Verification, Verifier};
pub use webhooks::{DeliveryRun, EndpointSpec, WebhookConfig, Webhooks};

use authz::Authz;
use catalog::Catalog;
use feed::FeedListener;
use integrity::Integrity;
use quotas::QuotaBook;
use usage::UsageRecorder;

/// Errors of the use cases, named by outcome. The server maps each to one stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error(transparent)]
    Policy(#[from] keyward_core::PolicyViolation),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("this key lacks the permission {permission}")]
    Forbidden { permission: String },
    /// The authorization rule refused the operation (see the `authz` module).
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    /// Another writer over the same store committed first; the use case may run again.
    #[error("a concurrent change was made; retry")]
    Raced,
    #[error("the store is unavailable")]
    Unavailable(#[source] StoreError),
    /// Something failed that no client could have caused; the cause is kept for the log and
    /// never shown.
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
    /// The vault is sealed: nothing can be served until it is unsealed.
    #[error("the vault is sealed; unseal it with POST /v1/sys/unseal or keyward operator unseal")]
    Sealed,
    /// A stored value failed its integrity check (tampering or corruption).
    #[error("{0}")]
    Integrity(String),
    /// The value is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The client address failed too often and is blocked for a while.
    #[error("too many failed attempts from this address; retry in {retry_after_s} s")]
    TooManyFailures { retry_after_s: u64 },
}

impl ServiceError {
    /// An internal error with its cause (an error, or a description of what went wrong).
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ServiceError::Internal(cause.into())
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(detail) => {
                // Ids and hashes are random; a collision means a bug or a corrupted store.
                ServiceError::internal(format!("unexpected store conflict: {detail}"))
            }
            StoreError::AuditConflict => ServiceError::Raced,
            StoreError::NotFound(_) => ServiceError::NotFound { what: "key" },
            other => ServiceError::Unavailable(other),
        }
    }
}

/// Tunables of the authority, with defaults fit for one node.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// Key records kept in memory; each takes roughly 300 bytes.
    pub cache_capacity: usize,
    /// How often batched usage (`last_used_at`, `uses`) is written.
    pub usage_flush_interval: Duration,
    /// Usage events buffered between flushes before new ones are dropped (and counted).
    pub usage_buffer: usize,
    /// keyward's own protection against key guessing and brute force.
    pub guard: GuardConfig,
    /// Values re-sealed per write during a rewrap.
    pub rewrap_batch: u32,
    /// Where rate-limit state lives: `None` for this process (exact on one node); a shared
    /// limiter (Redis) for limits exact across nodes.
    pub limiter: Option<Arc<dyn limiter::Limiter>>,
    /// Where concurrency leases are kept: `None` for this process; a shared table (Redis) for
    /// concurrency limits that hold across nodes.
    pub leases: Option<Arc<dyn leases::LeaseTable>>,
    /// Where the graduated response's violation counts and blocks are kept: `None` for this
    /// process; a shared table (Redis) to count a key's violations on every node together.
    pub escalations: Option<Arc<dyn escalation::EscalationTable>>,
    /// How often the rotation scheduler scans for keys due to be rolled.
    pub rotation_interval: Duration,
    /// How webhooks are sent.
    pub webhooks: WebhookConfig,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            cache_capacity: 2_000_000,
            usage_flush_interval: Duration::from_secs(1),
            usage_buffer: 65_536,
            guard: GuardConfig::default(),
            rewrap_batch: 200,
            limiter: None,
            leases: None,
            escalations: None,
            rotation_interval: Duration::from_secs(60),
            webhooks: WebhookConfig::default(),
        }
    }
}

/// The key authority: the capability services over one store, wired together, with their
/// background jobs.
#[derive(Debug)]
pub struct Authority {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    integrity: Arc<Integrity>,
    audit: Arc<AuditLog>,
    events: Arc<Events>,
    quotas: Arc<QuotaBook>,
    keys: Arc<Keys>,
    access: Arc<Access>,
    verifier: Arc<Verifier>,
    secrets: Arc<Secrets>,
    leases: Arc<KeyLeases>,
    sys: Arc<Sys>,
    rotation: Arc<Rotation>,
    rotation_interval: Duration,
    webhooks: Arc<Webhooks>,
    cache: Arc<VerifyCache>,
    /// Keys revoked as the checkpoint counted at unseal: the background check compares.
    revoked_at_open: u64,
    jobs: jobs::Jobs,
    /// This authority's place on the store's change feed: the store holds it weakly, so it is
    /// held here for as long as the authority lives.
    feed: Arc<FeedListener>,
}

impl Authority {
    /// Opens the authority over an initialised store and its unsealed vault: opens the
    /// environments' HMAC secrets, loads the catalogs, the audit head and the known key hashes,
    /// and starts the usage and event writers. Must be called within a tokio runtime. Servers go
    /// through [`Node`], which calls this on unseal.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        vault: Arc<vault::OpenVault>,
        config: AuthorityConfig,
    ) -> Result<Arc<Self>, ServiceError> {
        if let Some(adoption) = vault.take_adoption() {
            integrity::adopt(store.as_ref(), clock.as_ref(), &vault, adoption).await?;
        }
        let integrity = Arc::new(Integrity::new(Arc::clone(&vault)));
        // Records that fail their integrity check are left out: an environment's keys, a role's
        // permissions, a plan's keys then fail closed.
        let catalog = Arc::new(Catalog::load(store.as_ref(), &vault, &integrity).await?);
        let cache = Arc::new(VerifyCache::new(config.cache_capacity));
        let (audit, revoked_at_open) = AuditLog::open(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&integrity),
            Arc::clone(&cache),
        )
        .await?;
        let audit = Arc::new(audit);
        cache.add_known_many(store.key_hashes().await?);
        let events = Arc::new(Events::start(
            Arc::clone(&store),
            Arc::clone(&integrity),
            Arc::clone(&clock),
            config.usage_buffer,
            config.usage_flush_interval,
        ));
        let usage = UsageRecorder::start(
            Arc::clone(&store),
            config.usage_buffer,
            config.usage_flush_interval,
        );
        let authz = Arc::new(Authz::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&catalog),
            Arc::clone(&audit),
            Arc::clone(&integrity),
        ));
        let quotas = Arc::new(QuotaBook::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&catalog),
        ));
        let keys = Arc::new(Keys::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&catalog),
            Arc::clone(&audit),
            Arc::clone(&authz),
            Arc::clone(&quotas),
            Arc::clone(&integrity),
        ));
        let access = Arc::new(Access::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&catalog),
            Arc::clone(&audit),
            Arc::clone(&authz),
            Arc::clone(&keys),
            Arc::clone(&vault),
            Arc::clone(&integrity),
        ));
        let verifier = Arc::new(Verifier::new(verify::VerifierParts {
            store: Arc::clone(&store),
            clock: Arc::clone(&clock),
            catalog: Arc::clone(&catalog),
            cache: Arc::clone(&cache),
            guard: config.guard.clone(),
            limiter: config.limiter.clone(),
            leases: config.leases.clone(),
            escalations: config.escalations.clone(),
            quotas: Arc::clone(&quotas),
            usage,
            events: Arc::clone(&events),
            audit: Arc::clone(&audit),
            authz: Arc::clone(&authz),
            integrity: Arc::clone(&integrity),
            keys: Arc::clone(&keys),
        }));
        let secrets = Arc::new(Secrets::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&vault),
            Arc::clone(&catalog),
            Arc::clone(&audit),
            Arc::clone(&authz),
        ));
        let leases = Arc::new(KeyLeases::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&catalog),
            Arc::clone(&audit),
            Arc::clone(&authz),
            Arc::clone(&keys),
            Arc::clone(&integrity),
        ));
        let sys = Arc::new(Sys::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&vault),
            Arc::clone(&audit),
            Arc::clone(&authz),
            Arc::clone(&integrity),
            Arc::clone(&secrets),
            config.rewrap_batch,
        ));
        let rotation = Arc::new(Rotation::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&catalog),
            Arc::clone(&audit),
            Arc::clone(&keys),
            Arc::clone(&vault),
            Arc::clone(&integrity),
            Arc::clone(&secrets),
            config.webhooks.allowed_cidrs.clone(),
        )?);
        let webhooks = Arc::new(Webhooks::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            Arc::clone(&audit),
            Arc::clone(&authz),
            Arc::clone(&vault),
            Arc::clone(&integrity),
            Arc::clone(&catalog),
            config.webhooks.clone(),
        )?);
        let feed = Arc::new(FeedListener {
            cache: Arc::clone(&cache),
            catalog,
            quotas: Arc::clone(&quotas),
            vault,
            secrets: Arc::clone(&secrets),
            integrity: Arc::clone(&integrity),
            seal_requested: Arc::new(tokio::sync::Notify::new()),
            outbox_written: webhooks.wake(),
        });
        let listener: Arc<dyn keyward_store::ChangeListener> = feed.clone();
        store.subscribe(Arc::downgrade(&listener));
        Ok(Arc::new(Authority {
            store,
            clock,
            integrity,
            audit,
            events,
            quotas,
            keys,
            access,
            verifier,
            secrets,
            leases,
            sys,
            rotation,
            rotation_interval: config.rotation_interval,
            webhooks,
            cache,
            revoked_at_open,
            jobs: jobs::Jobs::new(),
            feed,
        }))
    }

    /// Opens the authority with the vault's unseal key, without a [`Node`]: for tools and
    /// benchmarks that own the process. The background work is not started.
    pub async fn open_with_key(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        key: &keyward_crypto::barrier::UnsealKey,
        config: AuthorityConfig,
    ) -> Result<Arc<Self>, ServiceError> {
        let record = store
            .vault()
            .await?
            .ok_or_else(|| ServiceError::internal("the store has no vault"))?;
        let keyrings = store.keyrings().await?;
        let vault = vault::OpenVault::open(&record, key, &keyrings)?;
        Self::open(store, clock, Arc::new(vault), config).await
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub fn leases(&self) -> &KeyLeases {
        &self.leases
    }

    pub fn sys(&self) -> &Sys {
        &self.sys
    }

    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Whether the store answers.
    pub async fn ready(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// Integrity failures found since unseal (a metric).
    pub fn integrity_failures(&self) -> u64 {
        self.integrity.failures()
    }

    /// What failed its integrity check since unseal, for `/readyz`; empty when all is well.
    pub fn integrity_findings(&self) -> Vec<String> {
        self.integrity.findings()
    }

    /// Notified when an operator sealed the vault on some node (this one included): the
    /// [`Node`] seals this authority then.
    pub(crate) fn seal_requested(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.feed.seal_requested)
    }

    /// Starts the background jobs, each supervised on its own: the integrity check of every
    /// key and of the audit chain (once, after unseal), the rewrap, the sync of read audits,
    /// lease expiry, grant lapses, the quota flush, and the sweep of idle limiter and guard
    /// state. They stop at [`Authority::shutdown`].
    pub fn start_background(&self) {
        let second = Duration::from_secs(1);
        let store = Arc::clone(&self.store);
        let cache = Arc::clone(&self.cache);
        let revoked_at_open = self.revoked_at_open;
        // An edit in the middle of the log that left its head alone, a key row put back from
        // before its revocation, or a tampered key that nobody presents, is found here and
        // reported on /readyz.
        self.jobs.once(
            "integrity-check",
            &self.integrity,
            move |integrity| async move {
                // The log names every revoked key: what the cache read before knowing them is
                // read again, so a restored row stops verifying.
                if integrity.check_audit_chain(store.as_ref()).await {
                    cache.clear();
                }
                integrity
                    .check_every_key(store.as_ref(), revoked_at_open)
                    .await;
            },
        );
        self.jobs.every_leading(
            "rewrap",
            second,
            Some(self.sys.rewrap_wake()),
            &self.store,
            &self.sys,
            |sys| async move { sys.run_rewrap().await },
        );
        self.jobs.every(
            "audit-sync",
            second,
            None,
            &self.audit,
            |audit| async move {
                audit.sync_relaxed().await;
            },
        );
        self.jobs.every_leading(
            "lease-expiry",
            second,
            None,
            &self.store,
            &self.leases,
            |leases| async move {
                if let Err(e) = leases.sweep_lapsed_vault_leases().await {
                    tracing::warn!(error = %e, "lease expiry sweep failed; will retry");
                }
            },
        );
        self.jobs.every_leading(
            "grant-lapse",
            second,
            None,
            &self.store,
            &self.access,
            |access| async move {
                if let Err(e) = access.sweep_lapsed_grants().await {
                    tracing::warn!(error = %e, "grant lapse sweep failed; will retry");
                }
            },
        );
        self.jobs.every_leading(
            "rotation",
            self.rotation_interval,
            None,
            &self.store,
            &self.rotation,
            |rotation| async move {
                if let Err(e) = rotation.run_due().await {
                    tracing::warn!(error = %e, "rotation run failed; will retry");
                }
            },
        );
        self.jobs.every_leading(
            "webhooks",
            second,
            Some(self.webhooks.wake()),
            &self.store,
            &self.webhooks,
            |webhooks| async move {
                if let Err(e) = webhooks.run_deliveries().await {
                    tracing::warn!(error = %e, "webhook delivery run failed; will retry");
                }
            },
        );
        self.jobs.every(
            "quota-flush",
            second,
            None,
            &self.quotas,
            |quotas| async move {
                quotas.flush().await;
            },
        );
        self.jobs.every(
            "idle-sweep",
            Duration::from_secs(60),
            None,
            &self.verifier,
            |verifier| async move { verifier.sweep_idle() },
        );
    }

    /// Stops the background jobs and writes what is pending (quotas, events, usage, read
    /// audits). Call once, after the last request.
    pub async fn shutdown(&self) {
        self.jobs.shutdown().await;
        self.quotas.flush().await;
        self.events.shutdown().await;
        self.verifier.shutdown().await;
        self.audit.sync_relaxed().await;
    }
}

pub(crate) use cache::EnvironmentState as EnvState;

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
