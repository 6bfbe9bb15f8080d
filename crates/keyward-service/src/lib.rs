//! keyward's use cases: issue, verify, update, revoke and roll keys, and keep the audit log.
//!
//! [`Authority`] is the one entry point. It works over any [`Store`] and [`Clock`], owns the
//! verification cache and the usage batcher, and appends an audit entry in the same atomic write
//! as every change it makes. It knows nothing of HTTP: the server crate maps its errors to codes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyward_core::audit::GENESIS_HASH;
use keyward_core::model::ADMIN_ENVIRONMENT;
use keyward_core::{
    Clock, EnvironmentName, KeyHash, KeyRecord, ParsedKey, Permission, RoleName, RoleRecord,
    Timestamp,
};
use keyward_store::{AuditHead, Store, StoreError};

mod access;
pub mod audit;
mod authz;
pub mod cache;
mod escalation;
mod events;
mod feed;
mod guard;
mod init;
mod integrity;
mod keyring;
mod keys;
mod leases;
pub mod limiter;
mod node;
mod quotas;
mod secrets;
mod sys;
mod usage;
pub mod vault;
mod vault_leases;
mod verify;

pub use access::{
    EffectivePermission, Explanation, NewGrant, PlanSpec, VerifyRequest, check_ratelimits,
    parse_cidrs, parse_path_rules,
};
pub use authz::{Actor, Operation, Refusal};
pub use cache::{CachedKey, VerifyCache};
pub use guard::GuardConfig;
pub use init::{
    InitError, Initialized, adopt_secrets, builtin_roles, initial_environments, initialize,
};
pub use integrity::verify_stored_state;
pub use keyring::Keyring;
pub use keys::{KeyPage, KeyUpdate, NewKey, limits};
pub use keyward_store::{
    EnvironmentRecord, KeyQuery, RewrapProgress, SecretMeta, SecretVersion, VaultLease,
};
pub use leases::Lease;
pub use node::{Node, SealStatus, Session};
pub use secrets::{
    SecretMetaUpdate, SecretRead, SecretWrite, VersionChange, check_path as check_secret_path,
    secret_limits,
};
pub use vault::{DEFAULT_SHARES, DEFAULT_THRESHOLD, NewVault};
pub use vault_leases::{KeyLease, NewKeyLease};
pub use verify::{RateLimitStatus, Verification};

use audit::PendingEntry;
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
            StoreError::AuditConflict => {
                ServiceError::Conflict("a concurrent change was made; retry".into())
            }
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
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        AuthorityConfig {
            cache_capacity: 2_000_000,
            usage_flush_interval: Duration::from_secs(1),
            usage_buffer: 65_536,
            guard: GuardConfig::default(),
            rewrap_batch: 200,
        }
    }
}

/// The key authority: every key operation goes through it.
#[derive(Debug)]
pub struct Authority {
    /// This authority itself, for work that must outlive the request that started it.
    me: std::sync::Weak<Authority>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// The environments' HMAC keys. Grows when an environment is created.
    keyring: RwLock<Keyring>,
    /// The unsealed vault's key material.
    vault: Arc<vault::OpenVault>,
    rewrap_batch: u32,
    /// The rewrap in progress, if any.
    rewrap: tokio::sync::Mutex<Option<keyward_store::RewrapProgress>>,
    rewrap_wake: tokio::sync::Notify,
    environments: RwLock<HashMap<EnvironmentName, Arc<EnvState>>>,
    roles: RwLock<HashMap<RoleName, Arc<RoleRecord>>>,
    plans: RwLock<HashMap<keyward_core::PlanName, Arc<keyward_core::PlanRecord>>>,
    cache: VerifyCache,
    usage: UsageRecorder,
    /// Rate-limit state: in this process until a cluster-wide limiter is configured.
    limiter: Arc<dyn limiter::Limiter>,
    guard: guard::Guard,
    leases: leases::Leases,
    quotas: quotas::Quotas,
    events: events::EventRecorder,
    escalations: escalation::Escalations,
    /// For each key and limit, the window in which a warning or refusal event was last sent:
    /// one event a window, not one a request.
    notified: std::sync::Mutex<HashMap<(keyward_core::KeyId, u64, bool), i64>>,
    ids: keyward_crypto::KeyIds,
    stop: tokio::sync::watch::Sender<bool>,
    /// The periodic sweeper, and the one-shot integrity check after unseal: both end at
    /// [`Authority::shutdown`] (the check is stopped, so no key material outlives a seal).
    background: tokio::sync::Mutex<Vec<(bool, tokio::task::JoinHandle<()>)>>,
    /// The audit log's head. Holding it serialises admin writes, so read-modify-write of a key
    /// (revoke, roll, update) cannot interleave with another on this node; the store's chain
    /// check refuses a write from another node that raced it. Take it with
    /// [`Authority::lock_writer`].
    writer: tokio::sync::Mutex<Writer>,
    /// Entries waiting for [`Authority::audit_batched`]'s next group commit.
    audit_queue: std::sync::Mutex<Vec<(PendingEntry, AuditWaiter)>>,
    /// Set while one caller commits the queued read audits for everyone.
    audit_leader: std::sync::atomic::AtomicBool,
    audit_led: tokio::sync::Notify,
    /// Relaxed (read-audit) commits not yet made durable by a sync.
    unsynced: std::sync::atomic::AtomicBool,
    secret_cache: secrets::SecretCache,
    /// Keys revoked as the checkpoint counted at unseal: the background check compares.
    revoked_at_open: u64,
    /// Stored security state that failed its integrity check since unseal.
    findings: Arc<integrity::Findings>,
    /// Plans left out of the catalog for failing their check: keys on them fail closed.
    tainted_plans: RwLock<std::collections::HashSet<keyward_core::PlanName>>,
    /// This authority's place on the store's change feed (the store holds it weakly).
    feed: Arc<feed::FeedListener>,
}

type AuditWaiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The writer's state: the audit head, and what a commit whose caller went away left behind.
///
/// A store write runs on a task of its own, so it finishes even if the request that made it is
/// dropped (the client went away, the timeout fired). Its caller then never learns the new
/// head; `stale` says so, and the next holder of the writer waits for that write, re-reads the
/// head and drops the verification cache (whatever the write changed is read afresh), so no
/// later write is refused with a stale head and no verdict outlives the change.
#[derive(Debug)]
pub(crate) struct Writer {
    head: AuditHead,
    /// Keys revoked so far, as the audit checkpoint counts them.
    revoked: u64,
    in_flight: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
    stale: bool,
}

/// Held by the caller committing the read-audit queue for everyone; dropping it (also when that
/// caller is cancelled) hands the lead on.
struct Leading<'a>(&'a Authority);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0
            .audit_leader
            .store(false, std::sync::atomic::Ordering::Release);
        self.0.audit_led.notify_waiters();
    }
}

impl Authority {
    /// Opens the authority over an initialised store and its unsealed vault: opens the
    /// environments' HMAC secrets, loads the audit head and the known key hashes, and starts the
    /// usage flusher. Must be called within a tokio runtime. Servers go through [`Node`], which
    /// calls this on unseal.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        vault: Arc<vault::OpenVault>,
        config: AuthorityConfig,
    ) -> Result<Arc<Self>, ServiceError> {
        if let Some(adoption) = vault.take_adoption() {
            Self::adopt_integrity(store.as_ref(), clock.as_ref(), &vault, adoption).await?;
        }
        let findings = Arc::new(integrity::Findings::default());
        let key = vault.integrity();
        let keyring = Self::load_hmac_keys(store.as_ref(), &vault).await?;
        // Records that fail their integrity check are left out: an environment's keys, a role's
        // permissions, a plan's keys then fail closed.
        let mut tainted_plans = std::collections::HashSet::new();
        let mut environments = HashMap::new();
        for record in store.environments().await? {
            if integrity::environment_intact(key, &record) {
                environments.insert(record.name.clone(), Arc::new(EnvState::new(record)));
            } else {
                findings.report(format!("environment {}", record.name));
            }
        }
        let mut roles = HashMap::new();
        for role in store.roles().await? {
            if integrity::role_intact(key, &role) {
                roles.insert(role.name.clone(), Arc::new(role));
            } else {
                findings.report(format!("role {}", role.name));
            }
        }
        let mut plans = HashMap::new();
        for plan in store.plans().await? {
            if integrity::plan_intact(key, &plan) {
                plans.insert(plan.name.clone(), Arc::new(plan));
            } else {
                findings.report(format!("plan {}", plan.name));
                tainted_plans.insert(plan.name);
            }
        }
        let head = store.audit_head().await?.unwrap_or(AuditHead {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        });
        let checkpoint = store.audit_checkpoint().await?;
        if let Some(problem) = integrity::audit_head_problem(key, &head, checkpoint.as_ref()) {
            findings.report(format!("audit log: {problem}"));
        }
        let revoked = checkpoint
            .filter(|c| integrity::checkpoint_intact(key, c))
            .map_or(0, |c| c.revoked);
        let cache = VerifyCache::new(config.cache_capacity);
        cache.add_known_many(store.key_hashes().await?);
        let store_for_events = Arc::clone(&store);
        let usage = UsageRecorder::start(
            Arc::clone(&store),
            config.usage_buffer,
            config.usage_flush_interval,
        );
        Ok(Arc::new_cyclic(|me| Authority {
            me: me.clone(),
            store,
            clock,
            keyring: RwLock::new(keyring),
            vault,
            rewrap: tokio::sync::Mutex::new(None),
            rewrap_batch: config.rewrap_batch.max(1),
            rewrap_wake: tokio::sync::Notify::new(),
            environments: RwLock::new(environments),
            roles: RwLock::new(roles),
            plans: RwLock::new(plans),
            cache,
            usage,
            limiter: Arc::new(limiter::LocalLimiter::new()),
            guard: guard::Guard::new(config.guard.clone()),
            leases: leases::Leases::default(),
            quotas: quotas::Quotas::default(),
            events: events::EventRecorder::start(
                Arc::clone(&store_for_events),
                config.usage_buffer,
                config.usage_flush_interval,
            ),
            notified: std::sync::Mutex::new(HashMap::new()),
            escalations: escalation::Escalations::default(),
            ids: keyward_crypto::KeyIds::default(),
            stop: tokio::sync::watch::channel(false).0,
            background: tokio::sync::Mutex::new(Vec::new()),
            revoked_at_open: revoked,
            writer: tokio::sync::Mutex::new(Writer {
                head,
                revoked,
                in_flight: None,
                stale: false,
            }),
            audit_queue: std::sync::Mutex::new(Vec::new()),
            audit_leader: std::sync::atomic::AtomicBool::new(false),
            audit_led: tokio::sync::Notify::new(),
            unsynced: std::sync::atomic::AtomicBool::new(false),
            secret_cache: secrets::SecretCache::default(),
            findings,
            tainted_plans: RwLock::new(tainted_plans),
            feed: Arc::new(feed::FeedListener {
                authority: me.clone(),
            }),
        }))
        .inspect(|authority| {
            let listener: Arc<dyn keyward_store::ChangeListener> = authority.feed.clone();
            authority.store.subscribe(Arc::downgrade(&listener));
        })
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

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The stored form (HMAC) of a presented key, if its environment exists. For bulk imports.
    pub fn key_hash(&self, key: &str) -> Option<KeyHash> {
        ParsedKey::parse(key).ok().and_then(|p| self.hash_of(&p))
    }

    /// Tags a record for a bulk import written straight to the store (its integrity tag), as
    /// every write through the authority is. For tools and benchmarks that own the process.
    pub fn tag_for_import(&self, key: &mut KeyRecord) {
        integrity::seal_key(self.vault.integrity(), key);
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn cache(&self) -> &VerifyCache {
        &self.cache
    }

    /// Usage events dropped because the buffer was full.
    pub fn usage_events_dropped(&self) -> u64 {
        self.usage.dropped()
    }

    /// Failed attempts from addresses the full failed-attempt table could not track.
    pub fn guard_untracked(&self) -> u64 {
        self.guard.untracked()
    }

    /// Log events dropped because the buffer was full.
    pub fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// Events after `after`, in order, at most `limit` (1..=1000).
    pub async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<keyward_core::Event>, ServiceError> {
        Ok(self.store.events(after, limit.clamp(1, 1000)).await?)
    }

    /// Sends an event for `key` and limit `limit_index` at most once per `window` (an id such as
    /// the limit's window number).
    pub(crate) fn notify_once(
        &self,
        kind: keyward_core::EventKind,
        key: keyward_core::KeyId,
        name: &str,
        window: i64,
        details: serde_json::Value,
    ) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let slot = (
            key,
            hasher.finish(),
            kind == keyward_core::EventKind::RatelimitWarning,
        );
        {
            let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
            if notified.get(&slot) == Some(&window) {
                return;
            }
            if notified.len() > 1_000_000 {
                notified.clear();
            }
            notified.insert(slot, window);
        }
        self.events.record(keyward_core::Event {
            seq: 0,
            ts: self.clock.now(),
            kind: kind.as_str().to_owned(),
            key_id: Some(key),
            details,
        });
    }

    /// Starts the background work that needs the authority itself: the grant-lapse sweeper,
    /// once a second, and the limiter's sweep of idle state, once a minute. It stops at [`Authority::shutdown`].
    pub fn start_background(self: &Arc<Self>) {
        // The whole audit chain is checked once after unseal, beside serving: an edit in the
        // middle of the log that left its head alone is found here.
        let store = Arc::clone(&self.store);
        let findings = Arc::clone(&self.findings);
        let checker = Arc::downgrade(self);
        let check = tokio::spawn(async move {
            // Every key's tag too, so /readyz reports a tampered key before anyone presents it.
            if let Some(authority) = checker.upgrade() {
                authority.check_every_key(authority.revoked_at_open).await;
            }
            match audit::verify_chain(store.as_ref()).await {
                Ok(audit::ChainReport::Broken(broken)) => {
                    findings.report(format!("audit log: {broken}"));
                }
                Ok(audit::ChainReport::Intact { entries }) => {
                    tracing::debug!(entries, "audit chain verified");
                }
                Err(e) => tracing::warn!(error = %e, "could not verify the audit chain"),
            }
        });
        let authority = Arc::downgrade(self);
        let mut stopped = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut ticks: u64 = 0;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let wake = match authority.upgrade() {
                    Some(a) => a,
                    None => return,
                };
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = wake.rewrap_wake.notified() => {}
                    _ = stopped.changed() => return,
                }
                drop(wake);
                let Some(authority) = authority.upgrade() else {
                    return;
                };
                authority.run_rewrap().await;
                authority.sync_relaxed().await;
                if let Err(e) = authority.sweep_lapsed_vault_leases().await {
                    tracing::warn!(error = %e, "lease expiry sweep failed; will retry");
                }
                if let Err(e) = authority.sweep_lapsed_grants().await {
                    tracing::warn!(error = %e, "grant lapse sweep failed; will retry");
                }
                authority.flush_quotas().await;
                ticks += 1;
                if ticks.is_multiple_of(60) {
                    let now_ns = authority.clock.now().unix_ms().saturating_mul(1_000_000);
                    authority.limiter.sweep(now_ns);
                    authority.guard.sweep(now_ns);
                    authority.leases.sweep(authority.clock.now());
                    authority.escalations.sweep(authority.clock.now());
                }
            }
        });
        if let Ok(mut slot) = self.background.try_lock() {
            slot.push((true, check));
            slot.push((false, task));
        }
    }

    /// Writes pending usage and stops background work. Call once, after the last request.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.background.lock().await);
        for (abortable, task) in tasks {
            // The sweeper finishes what it is doing and stops; the integrity check (which only
            // reads) is cut short.
            if abortable {
                task.abort();
            }
            let _ = task.await;
        }
        self.flush_quotas().await;
        self.events.shutdown().await;
        self.usage.shutdown().await;
        self.sync_relaxed().await;
    }

    /// Makes relaxed read-audit commits durable, if there were any since the last sync.
    async fn sync_relaxed(&self) {
        if self
            .unsynced
            .swap(false, std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = self.store.sync().await
        {
            self.unsynced
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(error = %e, "could not sync read audits; will retry");
        }
    }

    /// Ends a concurrency lease taken by a verification. False if it is unknown or lapsed.
    pub fn release_lease(&self, id: &str) -> bool {
        self.leases.release(id, self.clock.now())
    }

    /// Whether the store answers.
    pub async fn ready(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// Takes the writer, first settling what a cancelled commit left behind (see [`Writer`]).
    pub(crate) async fn lock_writer(&self) -> tokio::sync::MutexGuard<'_, Writer> {
        let mut writer = self.writer.lock().await;
        if writer.stale {
            // Each step survives this caller being cancelled too: `stale` stays set until the
            // head is known again.
            if let Some(task) = writer.in_flight.as_mut() {
                let _ = task.await;
            }
            writer.in_flight = None;
            match self.store.audit_head().await {
                Ok(head) => {
                    writer.head = head.unwrap_or(AuditHead {
                        seq: 0,
                        hash: GENESIS_HASH.to_owned(),
                    });
                    if let Ok(Some(c)) = self.store.audit_checkpoint().await {
                        writer.revoked = c.revoked;
                    }
                    self.cache.clear();
                    writer.stale = false;
                    tracing::warn!("a write outlived its request; the audit head was re-read");
                }
                Err(e) => {
                    // The commit that follows will be refused by the chain check and retried.
                    tracing::warn!(error = %e, "could not re-read the audit head");
                }
            }
        }
        writer
    }

    /// Appends entries to the audit log with `changes`, atomically. The caller holds the writer.
    /// The store write runs on its own task: once begun, it completes even if this caller is
    /// dropped, and the writer knows it (see [`Writer`]).
    async fn commit(
        &self,
        writer: &mut Writer,
        mut changes: keyward_store::Changes,
        pending: Vec<PendingEntry>,
    ) -> Result<(), ServiceError> {
        let head = &writer.head;
        let entries = audit::chain(head.seq, &head.hash, self.clock.now(), pending);
        let new_head = entries.last().map(|e| AuditHead {
            seq: e.seq,
            hash: e.hash.clone(),
        });
        changes.audit = entries;
        let revoked = writer.revoked + integrity::revocations(&changes);
        integrity::seal_changes(
            self.vault.integrity(),
            &mut changes,
            new_head.as_ref(),
            revoked,
        );
        let store = Arc::clone(&self.store);
        writer.stale = true;
        let task = writer
            .in_flight
            .insert(tokio::spawn(async move { store.apply(changes).await }));
        let outcome = task.await;
        writer.in_flight = None;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // The store panicked: whether anything was written is unknown, so `stale` stays.
            Err(e) => return Err(ServiceError::internal(format!("store write failed: {e}"))),
        };
        match outcome {
            Ok(()) => {
                if let Some(new_head) = new_head {
                    writer.head = new_head;
                    writer.revoked = revoked;
                }
                writer.stale = false;
                Ok(())
            }
            Err(StoreError::AuditConflict) => {
                // Another writer appended; learn the new head so the retry can succeed.
                if let Ok(Some(current)) = self.store.audit_head().await {
                    writer.head = current;
                    if let Ok(Some(c)) = self.store.audit_checkpoint().await {
                        writer.revoked = c.revoked;
                    }
                    writer.stale = false;
                }
                Err(StoreError::AuditConflict.into())
            }
            Err(e) => {
                writer.stale = false;
                Err(e.into())
            }
        }
    }

    /// Appends one entry that records no change, batched with concurrent ones: whoever holds the
    /// writer next commits every queued entry in one transaction (group commit), so audited reads
    /// cost one fsync per batch rather than per read. Returns once the entry is durable.
    pub(crate) async fn audit_batched(&self, entry: PendingEntry) -> Result<(), ServiceError> {
        use std::sync::atomic::Ordering;
        let (done, mut result) = tokio::sync::oneshot::channel();
        self.audit_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((entry, done));
        loop {
            // Registered before the leader check, so a leader finishing in between still wakes us.
            let finished = self.audit_led.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if !self.audit_leader.swap(true, Ordering::AcqRel) {
                // The guard gives up the lead even if this request is cancelled mid-way (its
                // client went away): otherwise every later read would wait for ever.
                let _leading = Leading(self);
                self.commit_audit_queue().await;
            }
            tokio::select! {
                outcome = &mut result => {
                    return match outcome {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(ServiceError::internal(format!("audit failed: {e}"))),
                        Err(_) => Err(ServiceError::internal("audit writer went away")),
                    };
                }
                () = &mut finished => {}
            }
        }
    }

    /// Commits every queued read-audit entry in one transaction and answers each waiter.
    async fn commit_audit_queue(&self) {
        // Let the tasks already runnable (requests in flight) queue their entries first: one
        // larger transaction costs far less than several small ones.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let mut head = self.lock_writer().await;
        let batch =
            std::mem::take(&mut *self.audit_queue.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let (entries, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        // Read audits are written without waiting for an fsync: they survive a crash of the
        // process at once, and one of the machine after the next sync (within a second).
        let outcome = self
            .commit_entries(&mut head, true, entries)
            .await
            .map_err(|e| e.to_string());
        self.unsynced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Appends entries that record no change (failed authentications, for instance).
    async fn audit_only(&self, pending: Vec<PendingEntry>) -> Result<(), ServiceError> {
        let mut head = self.lock_writer().await;
        self.commit_entries(&mut head, false, pending).await
    }

    /// Commits entries that record no change. If the head moved (another node appended, or a
    /// cancelled request's write landed after its caller stopped waiting), the entries are
    /// chained again on the new head: with no change riding along, that is always safe.
    async fn commit_entries(
        &self,
        head: &mut Writer,
        relaxed: bool,
        entries: Vec<PendingEntry>,
    ) -> Result<(), ServiceError> {
        let changes = || keyward_store::Changes {
            relaxed,
            ..keyward_store::Changes::default()
        };
        match self.commit(head, changes(), entries.clone()).await {
            Err(ServiceError::Conflict(_)) => self.commit(head, changes(), entries).await,
            other => other,
        }
    }

    fn hash_of(&self, parsed: &ParsedKey<'_>) -> Option<KeyHash> {
        read(&self.keyring)
            .hasher(parsed.environment())
            .map(|h| h.hash(parsed.expose()))
    }

    fn environment(&self, name: &str) -> Option<Arc<EnvState>> {
        read(&self.environments)
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, state)| Arc::clone(state))
    }

    /// The permissions `key` holds directly and through its roles, and its grants with roles
    /// expanded.
    fn held_by(&self, key: &KeyRecord) -> (Vec<Permission>, Vec<(Permission, Timestamp)>) {
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

    fn is_admin_environment(env: &str) -> bool {
        env == ADMIN_ENVIRONMENT
    }
}

pub(crate) use cache::EnvironmentState as EnvState;

pub(crate) fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
