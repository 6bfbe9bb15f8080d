//! keyward's storage: the [`Store`] trait with its written contract, the change feed
//! ([`ChangeListener`]), and a conformance suite (feature `conformance`) that every backend
//! passes. Backends live in crates of their own (`keyward-store-sqlite`); nothing here knows
//! any of them.
//!
//! The trait speaks only in domain types, so a PostgreSQL backend can implement it without any
//! SQLite assumption leaking upward. Backends do no cryptography: hashes arrive computed.

use std::fmt;

use async_trait::async_trait;
use keyward_core::audit::AuditEntry;
use keyward_core::{
    EnvironmentName, EnvironmentPolicy, KeyHash, KeyId, KeyRecord, KeyStatus, KeySummary, PlanName,
    PlanRecord, QuotaState, RecordMac, RoleName, RoleRecord, RotationPolicy, ServiceName,
    Timestamp,
};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod vault;

/// The repository traits, to call their methods on a `dyn Store`: `use keyward_store::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AuditStore as _, CatalogStore as _, KeyStore as _, OutboxStore as _, Store as _,
        UsageStore as _, VaultStore as _,
    };
}

pub use vault::{
    LeaseKind, RewrapProgress, Rewrapped, SealedValue, SecretMeta, SecretVersion, StoredKeyring,
    VaultLease, VaultRecord,
};

/// The roles in a key's stored `access` and the policy in its stored `lifecycle`, the rest of
/// both skipped: what a [`KeySummary`] holds beyond plain columns.
pub fn summary_fields(
    access: &str,
    lifecycle: &str,
) -> Result<(Vec<RoleName>, Option<RotationPolicy>), StoreError> {
    #[derive(serde::Deserialize)]
    struct Access {
        #[serde(default)]
        roles: Vec<RoleName>,
    }
    #[derive(serde::Deserialize)]
    struct Lifecycle {
        #[serde(default)]
        rotation: Option<RotationPolicy>,
    }
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    let access: Access = serde_json::from_str(access).map_err(|_| corrupt("access"))?;
    let lifecycle: Lifecycle = serde_json::from_str(lifecycle).map_err(|_| corrupt("lifecycle"))?;
    Ok((access.roles, lifecycle.rotation))
}

/// A bound above every string that begins with `prefix` (in byte order), for a range scan:
/// the prefix followed by the greatest character.
pub fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// What can go wrong in a store, named by outcome rather than by backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with the same identity already exists (key id, key hash, environment name).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The audit log's head moved since the caller read it; re-read it and retry.
    #[error("the audit log head moved")]
    AuditConflict,
    /// An update named a row that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend could not be reached or failed to answer.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back into a domain value.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// An environment as stored. Its HMAC secret is stored apart, sealed by the barrier
/// ([`Changes::environment_secrets`]).
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentRecord {
    pub name: EnvironmentName,
    pub created_at: Timestamp,
    pub policy: EnvironmentPolicy,
    /// Set by the service on every write; see [`RecordMac`].
    pub mac: Option<RecordMac>,
}

/// The audit log's head as last written, with the service's integrity tag over it: truncating
/// the newest entries, or rewriting the chain, no longer matches it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditCheckpoint {
    pub seq: u64,
    pub hash: String,
    /// How many keys keyward has revoked: revocation is final, so this only grows, and fewer
    /// revoked keys in the store than this means rows were rolled back to earlier copies.
    pub revoked: u64,
    pub mac: RecordMac,
}

/// A successor key made by the rotation scheduler, waiting, sealed, for the holder of the key
/// it replaced to collect it once, until that key's grace period ends.
#[derive(Clone, PartialEq)]
pub struct Handover {
    pub predecessor: KeyId,
    pub successor: KeyId,
    pub environment: EnvironmentName,
    /// The successor's key, sealed under its environment's keyring.
    pub sealed: Vec<u8>,
    /// The end of the predecessor's grace period: no pickup after it.
    pub expires_at: Timestamp,
    /// For a key with a delivery target: attempts to write the successor there so far, when
    /// the next is due (`None`: nothing to deliver), and why the last failed.
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("predecessor", &self.predecessor)
            .field("successor", &self.successor)
            .field("environment", &self.environment)
            .field("expires_at", &self.expires_at)
            .field("attempts", &self.attempts)
            .field("next_attempt_at", &self.next_attempt_at)
            .finish_non_exhaustive()
    }
}

/// The last entry of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// One atomic write. Audit entries ride in the same transaction as the change they record, so a
/// change is never stored without its audit entry, nor an entry without its change.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub environments: Vec<EnvironmentRecord>,
    /// Environments whose policy replaces the stored one.
    pub update_environments: Vec<EnvironmentRecord>,
    /// Roles created or replaced whole.
    pub upsert_roles: Vec<RoleRecord>,
    pub delete_roles: Vec<RoleName>,
    /// Plans created or replaced whole.
    pub upsert_plans: Vec<PlanRecord>,
    pub delete_plans: Vec<PlanName>,
    /// Quota states set by an admin (a credit grant); `None` clears the key's quota.
    pub set_quotas: Vec<(KeyId, Option<QuotaState>)>,
    pub insert_keys: Vec<KeyRecord>,
    /// Full records whose mutable fields replace the stored ones. `last_used_at` and `uses` are
    /// left alone: they belong to [`Store::record_usage`].
    pub update_keys: Vec<KeyRecord>,
    /// The vault's record, created or replaced whole (init, rotate, rekey, rewrap progress).
    pub vault: Option<VaultRecord>,
    /// Keyrings created or replaced whole.
    pub keyrings: Vec<StoredKeyring>,
    /// Environments' sealed HMAC secrets, set (after `environments` are inserted).
    pub environment_secrets: Vec<(EnvironmentName, Vec<u8>)>,
    /// Secret metadata created or replaced whole (before versions are written).
    pub upsert_secrets: Vec<SecretMeta>,
    /// Secret versions created or replaced whole.
    pub upsert_secret_versions: Vec<SecretVersion>,
    /// Versions removed past a secret's `max_versions`.
    pub delete_secret_versions: Vec<(EnvironmentName, String, u64)>,
    /// Secrets removed with every version.
    pub delete_secrets: Vec<(EnvironmentName, String)>,
    /// Leases created or replaced whole.
    pub upsert_leases: Vec<VaultLease>,
    /// Successors waiting for their holder (after `insert_keys`).
    pub insert_handovers: Vec<Handover>,
    /// Handovers whose delivery state changed (each must exist).
    pub update_handovers: Vec<Handover>,
    /// Handovers collected or lapsed, by predecessor. Each must exist: a handover is collected
    /// once, so a second collection fails the whole write with [`StoreError::NotFound`].
    pub delete_handovers: Vec<KeyId>,
    /// Events to deliver (the outbox), in order. One whose id is stored already is left out:
    /// a notice found due again is written once.
    pub outbox: Vec<keyward_core::OutboxEvent>,
    /// Webhook endpoints created or replaced whole.
    pub upsert_webhooks: Vec<keyward_core::WebhookEndpoint>,
    /// Endpoints removed, with their deliveries.
    pub delete_webhooks: Vec<String>,
    /// Deliveries created or replaced whole.
    pub upsert_deliveries: Vec<keyward_core::WebhookDelivery>,
    pub audit: Vec<AuditEntry>,
    /// Replaces the stored audit checkpoint (written with the entries it covers).
    pub audit_checkpoint: Option<AuditCheckpoint>,
    /// The vault was sealed by an operator: every node that hears of this change seals its
    /// own vault too. Nothing is stored for it but the audit entry riding along.
    pub seal: bool,
    /// For writes that record only reads (audit entries of secret reads): the write may return
    /// once it survives a crash of the process, before it survives one of the machine. It is
    /// made fully durable by the next durable write or [`Store::sync`], whichever comes first.
    /// Never set for a change of state.
    pub relaxed: bool,
}

/// Learns of every change a store commits: the store's change feed. Caches and catalogs above
/// the store keep themselves true from it, whichever instance made the change.
///
/// Contract: [`ChangeListener::applied`] is called once for every successful
/// [`Store::apply`], with the changes as committed, after the commit and before `apply`
/// returns, in commit order (never two at once). A change that returned to its writer has
/// therefore reached every listener of this store. It must not block or call back into the
/// store. (A backend shared by several nodes also carries the feed to the listeners of the
/// other nodes, over its notification channel.)
pub trait ChangeListener: Send + Sync {
    fn applied(&self, changes: &Changes);

    /// The feed may have missed changes made by another node (a shared backend lost its
    /// notification channel): until [`ChangeListener::resumed`], what was learnt from the store
    /// before must not be vouched for without reading it again. An embedded store never calls
    /// it.
    fn interrupted(&self) {}

    /// The feed has delivered every change it had missed: what was learnt is true again.
    fn resumed(&self) {}
}

/// What one node spent of one key's quota since its last flush.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaSpend {
    pub id: KeyId,
    /// The node's count: its period, and what remains by the node's reckoning.
    pub state: QuotaState,
    /// Credits the node spent in `state`'s period since its last flush.
    pub spent: u64,
}

/// Usage of one key since the last flush.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyUsage {
    pub id: KeyId,
    pub last_used_at: Timestamp,
    pub uses: u64,
}

/// Filters for listing keys, oldest first, in pages after a cursor.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub service: Option<ServiceName>,
    pub environment: Option<EnvironmentName>,
    pub status: Option<KeyStatus>,
    pub owner: Option<String>,
    /// Only keys whose `start` begins with this (find a leaked key by what was seen of it).
    pub start_prefix: Option<String>,
    /// Only keys created before this instant.
    pub created_before: Option<Timestamp>,
    /// Only keys whose id sorts after this one.
    pub after: Option<KeyId>,
    pub limit: u32,
}

/// The storage contract: one atomic [`Store::apply`] for every change, the change feed, and
/// the reads of each concern as a trait of its own ([`KeyStore`], [`CatalogStore`],
/// [`UsageStore`], [`AuditStore`], [`VaultStore`]), so a use case can name the few it reads.
/// Every backend guarantees:
///
/// * **Durability**: when [`Store::apply`] returns `Ok`, the changes survive a crash of the
///   process or the machine ([`Changes::relaxed`] writes: of the process, and of the machine
///   after the next durable write or [`Store::sync`]).
/// * **Atomicity**: `apply` writes all of its changes or none.
/// * **Audit chain**: `apply` accepts audit entries only if the first continues the stored head
///   (`seq` = head's + 1, or 1 on an empty log; `prev_hash` = head's hash, or the genesis hash)
///   and each later one continues the one before it. Otherwise it returns
///   [`StoreError::AuditConflict`] and writes nothing, so two writers can never fork the chain.
///   Entries are never changed or deleted.
/// * **Read-your-writes**: after `apply` returns, every read on any connection sees the change.
/// * **Identity**: key ids and key hashes are unique; inserting a duplicate is
///   [`StoreError::Conflict`]. Updating a missing key is [`StoreError::NotFound`].
#[async_trait]
pub trait Store:
    KeyStore + CatalogStore + UsageStore + AuditStore + VaultStore + OutboxStore + fmt::Debug + 'static
{
    async fn apply(&self, changes: Changes) -> Result<(), StoreError>;

    /// Adds `listener` to the change feed (see [`ChangeListener`]). Listeners that were
    /// dropped are forgotten.
    fn subscribe(&self, listener: std::sync::Weak<dyn ChangeListener>);

    /// Makes every write that returned fully durable (see [`Changes::relaxed`]).
    async fn sync(&self) -> Result<(), StoreError>;

    /// Succeeds when the backend answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether this node does the work only one node may do at a time: sweeps that write
    /// (lapsed grants, expired leases), the rewrap, schedulers. A store with one node always
    /// does; a shared store elects one node and moves the work to another when it is gone.
    fn leads(&self) -> bool {
        true
    }
}

/// Keys: reads by id, hash and query, and the counts the service's checks need.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// How many keys that are not revoked are on `plan`.
    async fn count_keys_with_plan(&self, plan: PlanName) -> Result<u64, StoreError>;

    /// How many keys that are not revoked hold `role` (directly or as a grant).
    async fn count_keys_with_role(&self, role: RoleName) -> Result<u64, StoreError>;

    /// Keys that are not revoked with a grant that expired at or before `now`, at most `limit`.
    /// (A revoked key is never written again, lapsed grants and all.)
    async fn keys_with_lapsed_grants(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError>;

    async fn key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError>;

    async fn key_by_hash(&self, hash: KeyHash) -> Result<Option<KeyRecord>, StoreError>;

    async fn list_keys(&self, query: KeyQuery) -> Result<Vec<KeyRecord>, StoreError>;

    /// Every stored key hash, for the verifier's membership filter.
    async fn key_hashes(&self) -> Result<Vec<KeyHash>, StoreError>;

    /// Keys that may still be rotated (neither revoked nor rolled), in id order after `after`,
    /// at most `limit`, as their summaries: the rotation scheduler's scan. A backend decodes
    /// only the summary's columns (see [`summary_fields`]).
    async fn rotation_candidates(
        &self,
        after: Option<KeyId>,
        limit: u32,
    ) -> Result<Vec<KeySummary>, StoreError>;

    /// The successor waiting for the holder of `predecessor`, if one is.
    async fn handover(&self, predecessor: KeyId) -> Result<Option<Handover>, StoreError>;

    /// Predecessors whose handover lapsed at or before `now`, at most `limit`.
    async fn lapsed_handovers(&self, now: Timestamp, limit: u32) -> Result<Vec<KeyId>, StoreError>;

    /// Handovers whose delivery is due at or before `now`, soonest first, at most `limit`.
    async fn due_handovers(&self, now: Timestamp, limit: u32) -> Result<Vec<Handover>, StoreError>;
}

/// The outbox and the webhooks it is delivered to.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Events after position `after`, oldest first, at most `limit`.
    async fn outbox_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<keyward_core::OutboxEvent>, StoreError>;

    async fn outbox_event(&self, seq: u64)
    -> Result<Option<keyward_core::OutboxEvent>, StoreError>;

    /// The newest outbox position (0 when empty).
    async fn outbox_head(&self) -> Result<u64, StoreError>;

    /// Which of `ids` the outbox holds already.
    async fn outbox_has(&self, ids: Vec<String>) -> Result<Vec<String>, StoreError>;

    /// Every endpoint, by id.
    async fn webhooks(&self) -> Result<Vec<keyward_core::WebhookEndpoint>, StoreError>;

    /// Pending deliveries to `endpoint`, oldest event first, at most `limit`.
    async fn pending_deliveries(
        &self,
        endpoint: String,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError>;

    /// Deliveries to `endpoint`, newest event first, before position `before`, at most `limit`.
    async fn deliveries(
        &self,
        endpoint: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError>;

    async fn delivery(
        &self,
        endpoint: String,
        seq: u64,
    ) -> Result<Option<keyward_core::WebhookDelivery>, StoreError>;

    /// How many deliveries are pending, and when the oldest of them was made.
    async fn delivery_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError>;
}

/// What every environment shares or owns: environments (and their sealed HMAC secrets), roles, plans.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    async fn environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError>;

    async fn roles(&self) -> Result<Vec<RoleRecord>, StoreError>;

    async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError>;

    /// Every environment's sealed HMAC secret (environments without one are left out).
    async fn environment_secrets(&self) -> Result<Vec<(EnvironmentName, Vec<u8>)>, StoreError>;
}

/// Telemetry written in batches without audit: usage counters, quota balances, the event log.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Where a key's quota stands, if it has one.
    async fn quota_state(&self, id: KeyId) -> Result<Option<QuotaState>, StoreError>;

    /// Writes what verification spent of keys' quotas, in one batch, and returns each key's
    /// count as stored after it. Several nodes may spend one key's quota: what a node spent in
    /// the stored period is subtracted from the stored count (never below 0); a count for a
    /// newer period (the node refilled it) replaces the stored one, less nothing more; spending
    /// in an older period than the stored one is dropped. A key with no count yet gets the
    /// node's. Keys that no longer exist are skipped. Like usage, this is not audited.
    async fn spend_quotas(
        &self,
        spends: Vec<QuotaSpend>,
    ) -> Result<Vec<(KeyId, QuotaState)>, StoreError>;

    /// Adds usage counts and advances `last_used_at` (never moves it back). Keys that no longer
    /// exist are skipped. Not audited: usage is telemetry, not an admin action.
    async fn record_usage(&self, usage: Vec<KeyUsage>) -> Result<(), StoreError>;

    /// Appends events in one batch; their `seq` is assigned by the store, increasing.
    async fn append_events(&self, events: Vec<keyward_core::Event>) -> Result<(), StoreError>;

    /// Events with `seq > after`, in order, at most `limit`.
    async fn events(&self, after: u64, limit: u32) -> Result<Vec<keyward_core::Event>, StoreError>;
}

/// The audit log: its head, its tagged checkpoint, and its entries in order.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError>;

    /// The checkpoint last written with [`Changes::audit_checkpoint`].
    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError>;

    /// Audit entries with `seq > after`, in sequence order, at most `limit`.
    async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}

/// The vault: its record, keyrings, versioned secrets, leases, and the rewrap of stale values.
#[async_trait]
pub trait VaultStore: Send + Sync {
    /// The vault's record; `None` before the vault is initialised.
    async fn vault(&self) -> Result<Option<VaultRecord>, StoreError>;

    async fn keyrings(&self) -> Result<Vec<StoredKeyring>, StoreError>;

    async fn secret(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Option<SecretMeta>, StoreError>;

    /// Every version of a secret, oldest first.
    async fn secret_versions(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Vec<SecretVersion>, StoreError>;

    /// One version of a secret.
    async fn secret_version(
        &self,
        env: EnvironmentName,
        path: String,
        version: u64,
    ) -> Result<Option<SecretVersion>, StoreError>;

    /// Secrets of `env` whose path starts with `prefix` and sorts after `after`, in path order.
    async fn list_secrets(
        &self,
        env: EnvironmentName,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, StoreError>;

    async fn lease(&self, id: String) -> Result<Option<VaultLease>, StoreError>;

    /// Leases whose path starts with `prefix`, ordered by id after `after`; only those not ended
    /// when `open_only`.
    async fn leases(
        &self,
        prefix: String,
        open_only: bool,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError>;

    /// Leases not ended whose `expires_at` is at or before `now`, at most `limit`.
    async fn lapsed_leases(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError>;

    /// Values sealed under a term older than `term`, at most `limit`. A value's term is in its
    /// ciphertext's header: byte 0 is the format, bytes 1-4 the term, big-endian.
    async fn stale_sealed(&self, term: u32, limit: u32) -> Result<Vec<SealedValue>, StoreError>;

    /// How many values are sealed under a term older than `term`.
    async fn count_stale_sealed(&self, term: u32) -> Result<u64, StoreError>;

    /// Writes re-sealed values whose stored ciphertext is still the old one, and the rewrap's
    /// progress, in one transaction; returns how many were written. Not audited: the rotation
    /// that caused it is.
    async fn rewrap(
        &self,
        values: Vec<Rewrapped>,
        progress: RewrapProgress,
    ) -> Result<u64, StoreError>;
}
