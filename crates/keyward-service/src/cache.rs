//! The verification cache.
//!
//! Two structures answer most verifications without the store:
//!
//! * **Records**: key hash → [`CachedKey`], sharded behind read-write locks so verifications on
//!   different cores rarely meet. Bounded: past its capacity a shard drops an arbitrary entry,
//!   which costs one store read the next time that key is seen.
//! * **Known hashes**: the first eight bytes of every stored key hash. This is a complete negative
//!   cache: a well-formed key whose hash is not in it is `NOT_FOUND` without a store lookup, so a
//!   flood of random keys with valid checksums never reaches the store. It costs about 16 bytes a
//!   key and is filled from the store at start.
//!
//! Invalidation races with cache fills are closed by a per-shard epoch: a fill that read the
//! store before an invalidation is dropped instead of resurrecting the old record.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use keyward_core::{
    EnvironmentName, KeyHash, KeyId, KeyRecord, KeyStatus, NetworkRules, PathRule, Permission,
    PermissionSet, ServiceName, Timestamp,
};

const SHARDS: usize = 64;

/// What verification needs to know about a key, kept compact because a node may cache millions:
/// environment, owner and permission set are shared between the keys that have the same ones
/// (most keys of a team share them), metadata is only allocated when there is some, and the
/// name, which no verdict carries, is left out.
#[derive(Debug, Clone)]
pub struct CachedKey {
    pub id: KeyId,
    pub service: ServiceName,
    pub status: KeyStatus,
    /// The key's environment with its policy and network rules, shared by all its keys (a policy
    /// change clears the cache).
    pub env: Arc<EnvironmentState>,
    pub owner: Arc<str>,
    /// Direct permissions and those of the key's roles, as they were when the entry was made
    /// (a role change clears the cache).
    pub permissions: Arc<HeldPermissions>,
    /// Temporary grants, roles expanded: each permission with the instant it lapses.
    pub grants: Box<[(Permission, Timestamp)]>,
    pub path_rules: Option<Arc<[PathRule]>>,
    pub network: Option<Arc<NetworkRules>>,
    /// For admin keys: the environments they may manage (`None`: all).
    pub admin_environments: Option<Arc<[EnvironmentName]>>,
    pub ratelimits: Option<Arc<KeyLimits>>,
    pub concurrency: Option<keyward_core::ConcurrencyLimit>,
    pub quota: Option<keyward_core::QuotaConfig>,
    pub meta: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    pub expires_at: Option<Timestamp>,
}

type PermissionSets = HashMap<Box<[Permission]>, Arc<HeldPermissions>>;

/// What a key has from its plan as well as itself: limits, graduated response, quota.
#[derive(Debug, Default)]
pub struct KeyExtras {
    pub limits: Vec<keyward_core::RateLimit>,
    pub graduated: Option<keyward_core::Graduated>,
    pub quota: Option<keyward_core::QuotaConfig>,
}

/// A key's rate limits with the fingerprint the limiter keys their state by.
#[derive(Debug)]
pub struct KeyLimits {
    pub list: Box<[keyward_core::RateLimit]>,
    /// The plan's graduated response, if any.
    pub graduated: Option<keyward_core::Graduated>,
    /// The limits' names, shared with every verdict that reports them.
    pub names: Box<[Arc<str>]>,
    pub fingerprint: u64,
}

/// A permission list with its compiled form, shared by every key that holds the same list.
#[derive(Debug, PartialEq)]
pub struct HeldPermissions {
    pub list: Box<[Permission]>,
    pub set: PermissionSet,
}

/// An environment as verification uses it: its record and its compiled network rules.
#[derive(Debug)]
pub struct EnvironmentState {
    pub record: keyward_store::EnvironmentRecord,
    pub network: NetworkRules,
}

impl EnvironmentState {
    pub fn new(record: keyward_store::EnvironmentRecord) -> Self {
        // Stored policies were validated when they were written, so every block parses.
        let parse = |list: &[String]| {
            keyward_core::CidrSet::new(
                list.iter()
                    .filter_map(|c| keyward_core::Cidr::parse(c).ok())
                    .collect(),
            )
            .unwrap_or_default()
        };
        let network = NetworkRules {
            allow: parse(&record.policy.allowed_cidrs),
            deny: parse(&record.policy.denied_cidrs),
        };
        EnvironmentState { record, network }
    }
}

impl CachedKey {
    pub fn environment(&self) -> &EnvironmentName {
        &self.env.record.name
    }

    /// Whether the key holds `wanted` at `now`, directly, through a role or a live grant.
    pub fn holds(&self, wanted: &str, now: Timestamp) -> bool {
        self.permissions.set.grants(wanted)
            || self
                .grants
                .iter()
                .any(|(p, until)| *until > now && p.covers_str(wanted))
    }
}

/// Shares equal values between cache entries. Values no entry uses any more are swept out
/// whenever the set has doubled since the last sweep, so it stays proportional to the cache.
struct Interner<T: ?Sized> {
    set: std::sync::Mutex<(HashSet<Arc<T>>, usize)>,
}

impl<T: ?Sized + std::hash::Hash + Eq> Interner<T> {
    fn new() -> Self {
        Interner {
            set: std::sync::Mutex::new((HashSet::new(), 1024)),
        }
    }

    fn intern(&self, value: &T) -> Arc<T>
    where
        for<'a> Arc<T>: From<&'a T>,
    {
        let mut guard = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let (set, sweep_at) = &mut *guard;
        if let Some(shared) = set.get(value) {
            return Arc::clone(shared);
        }
        if set.len() >= *sweep_at {
            set.retain(|v| Arc::strong_count(v) > 1);
            *sweep_at = (set.len() * 2).max(1024);
        }
        let shared: Arc<T> = Arc::from(value);
        set.insert(Arc::clone(&shared));
        shared
    }
}

/// A `Hasher` that takes a [`KeyHash`]'s own bytes as the hash. Sound only because key hashes
/// are HMAC outputs that clients cannot choose.
#[derive(Default)]
pub(crate) struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a KeyHash or u64 is hashed; stay correct anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type BuildKeyHash = BuildHasherDefault<KeyHashHasher>;

struct Shard {
    records: RwLock<HashMap<KeyHash, Arc<CachedKey>, BuildKeyHash>>,
    epoch: AtomicU64,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Every critical section below leaves the map consistent, so poisoning carries no meaning.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct VerifyCache {
    /// False while the change feed may have missed changes: no record is served from the cache
    /// then, so every verification reads the store (and fails closed if it cannot).
    vouched: std::sync::atomic::AtomicBool,
    shards: Box<[Shard]>,
    per_shard: usize,
    known: RwLock<HashSet<u64, BuildKeyHash>>,
    owners: Interner<str>,
    permission_sets: std::sync::Mutex<(PermissionSets, usize)>,
}

impl std::fmt::Debug for VerifyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyCache")
            .field("records", &self.len())
            .field("known", &read(&self.known).len())
            .finish()
    }
}

/// A shard's epoch as read before a store lookup; see [`VerifyCache::insert_if_current`].
#[derive(Debug, Clone, Copy)]
pub struct Epoch(u64);

impl VerifyCache {
    /// A cache holding at most about `capacity` records.
    pub fn new(capacity: usize) -> Self {
        VerifyCache {
            vouched: std::sync::atomic::AtomicBool::new(true),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    records: RwLock::new(HashMap::default()),
                    epoch: AtomicU64::new(0),
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            known: RwLock::new(HashSet::default()),
            owners: Interner::new(),
            permission_sets: std::sync::Mutex::new((HashMap::new(), 1024)),
        }
    }

    /// The cached form of `key`, given the permissions it holds through its roles too, and its
    /// grants with roles expanded.
    pub fn entry_for(
        &self,
        key: &KeyRecord,
        env: Arc<EnvironmentState>,
        held: Vec<Permission>,
        grants: Vec<(Permission, Timestamp)>,
        extras: KeyExtras,
    ) -> Arc<CachedKey> {
        let KeyExtras {
            limits,
            graduated,
            quota,
        } = extras;
        let access = &key.access;
        let network = access.network();
        Arc::new(CachedKey {
            id: key.id,
            service: key.service,
            status: key.status,
            env,
            owner: self.owners.intern(key.owner.as_str()),
            permissions: self.held_permissions(held),
            grants: grants.into_boxed_slice(),
            path_rules: (!access.path_rules.is_empty())
                .then(|| Arc::from(access.path_rules.as_slice())),
            network: (!network.is_empty()).then(|| Arc::new(network)),
            admin_environments: access.admin_environments.as_deref().map(Arc::from),
            concurrency: access.concurrency,
            quota,
            ratelimits: (!limits.is_empty()).then(|| {
                Arc::new(KeyLimits {
                    fingerprint: crate::limiter::fingerprint(&limits),
                    names: limits.iter().map(|l| Arc::from(l.name.as_str())).collect(),
                    graduated,
                    list: limits.into_boxed_slice(),
                })
            }),
            meta: (!key.meta.is_empty()).then(|| Arc::new(key.meta.clone())),
            expires_at: key.expires_at,
        })
    }

    fn held_permissions(&self, mut held: Vec<Permission>) -> Arc<HeldPermissions> {
        held.sort();
        held.dedup();
        let list = held.into_boxed_slice();
        let mut guard = self
            .permission_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (sets, sweep_at) = &mut *guard;
        if let Some(shared) = sets.get(&list) {
            return Arc::clone(shared);
        }
        if sets.len() >= *sweep_at {
            sets.retain(|_, v| Arc::strong_count(v) > 1);
            *sweep_at = (sets.len() * 2).max(1024);
        }
        let shared = Arc::new(HeldPermissions {
            set: PermissionSet::new(&list),
            list: list.clone(),
        });
        sets.insert(list, Arc::clone(&shared));
        shared
    }

    /// Forgets every record, as when a role changes: each key is read again on next use.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut records = write(&shard.records);
            records.clear();
            shard.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn shard(&self, hash: &KeyHash) -> &Shard {
        // Byte 8 is independent of the bytes the maps hash on.
        let index = usize::from(hash.0[8]) % SHARDS;
        match self.shards.get(index) {
            Some(shard) => shard,
            None => unreachable_shard(),
        }
    }

    pub fn get(&self, hash: &KeyHash) -> Option<Arc<CachedKey>> {
        if !self.vouched.load(Ordering::Acquire) {
            return None;
        }
        read(&self.shard(hash).records).get(hash).cloned()
    }

    /// Whether cached records may be served; see [`keyward_store::ChangeListener::interrupted`].
    pub fn vouch(&self, vouched: bool) {
        self.vouched.store(vouched, Ordering::Release);
    }

    pub fn vouched(&self) -> bool {
        self.vouched.load(Ordering::Acquire)
    }

    /// Whether a key with this hash may exist in the store.
    pub fn may_exist(&self, hash: &KeyHash) -> bool {
        read(&self.known).contains(&hash.short())
    }

    /// Records that a key with this hash exists. Call before the create that stored it returns.
    pub fn add_known(&self, hash: &KeyHash) {
        write(&self.known).insert(hash.short());
    }

    pub fn add_known_many(&self, hashes: impl IntoIterator<Item = KeyHash>) {
        let mut known = write(&self.known);
        known.extend(hashes.into_iter().map(|h| h.short()));
    }

    pub fn epoch(&self, hash: &KeyHash) -> Epoch {
        Epoch(self.shard(hash).epoch.load(Ordering::Acquire))
    }

    /// Caches `key` unless its shard was invalidated since `epoch` was read.
    pub fn insert_if_current(&self, hash: KeyHash, key: Arc<CachedKey>, epoch: Epoch) {
        let shard = self.shard(&hash);
        let mut records = write(&shard.records);
        if shard.epoch.load(Ordering::Acquire) != epoch.0 {
            return;
        }
        if records.len() >= self.per_shard
            && !records.contains_key(&hash)
            && let Some(victim) = records.keys().next().copied()
        {
            records.remove(&victim);
        }
        records.insert(hash, key);
    }

    /// Forgets the record for `hash`; every verification that starts after this returns reads
    /// the store again.
    pub fn invalidate(&self, hash: &KeyHash) {
        let shard = self.shard(hash);
        let mut records = write(&shard.records);
        records.remove(hash);
        shard.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(&s.records).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cold]
fn unreachable_shard() -> ! {
    #[allow(clippy::panic)]
    {
        panic!("shard index is reduced modulo the shard count")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_env() -> Arc<EnvironmentState> {
        Arc::new(EnvironmentState::new(keyward_store::EnvironmentRecord {
            name: EnvironmentName::parse("live").unwrap(),
            created_at: Timestamp::from_unix_ms(0),
            policy: keyward_core::EnvironmentPolicy::default(),
            mac: None,
        }))
    }

    fn cached(n: u8) -> (KeyHash, Arc<CachedKey>) {
        let mut record = keyward_store::conformance::sample_key(n, "live");
        record.hash = KeyHash([n; 32]);
        let held = record.permissions.clone();
        (
            record.hash,
            VerifyCache::new(1).entry_for(
                &record,
                test_env(),
                held,
                Vec::new(),
                KeyExtras::default(),
            ),
        )
    }

    #[test]
    fn fill_after_invalidation_is_dropped() {
        let cache = VerifyCache::new(100);
        let (hash, key) = cached(1);
        let before = cache.epoch(&hash);
        cache.invalidate(&hash);
        cache.insert_if_current(hash, key.clone(), before);
        assert!(cache.get(&hash).is_none());
        cache.insert_if_current(hash, key, cache.epoch(&hash));
        assert!(cache.get(&hash).is_some());
        cache.invalidate(&hash);
        assert!(cache.get(&hash).is_none());
    }

    #[test]
    fn stays_bounded() {
        let cache = VerifyCache::new(64);
        for n in 0..=255u8 {
            let (hash, key) = cached(n);
            cache.insert_if_current(hash, key, cache.epoch(&hash));
        }
        assert!(cache.len() <= 64, "{}", cache.len());
    }

    #[test]
    fn equal_owners_and_permissions_are_shared() {
        let cache = VerifyCache::new(100);
        let (ka, kb) = (
            keyward_store::conformance::sample_key(2, "live"),
            keyward_store::conformance::sample_key(4, "live"),
        );
        let env = test_env();
        let a = cache.entry_for(
            &ka,
            Arc::clone(&env),
            ka.permissions.clone(),
            Vec::new(),
            KeyExtras::default(),
        );
        let b = cache.entry_for(
            &kb,
            env,
            kb.permissions.clone(),
            Vec::new(),
            KeyExtras::default(),
        );
        assert!(Arc::ptr_eq(&a.owner, &b.owner));
        assert!(Arc::ptr_eq(&a.permissions, &b.permissions));
        assert!(Arc::ptr_eq(&a.env, &b.env));
    }

    #[test]
    fn interner_sweeps_unused_values() {
        let interner: Interner<str> = Interner::new();
        for i in 0..5000 {
            drop(interner.intern(format!("owner {i}").as_str()));
        }
        let kept = interner.intern("kept");
        assert!(interner.set.lock().unwrap().0.len() <= 2048);
        assert!(Arc::ptr_eq(&kept, &interner.intern("kept")));
    }

    #[test]
    fn known_hashes() {
        let cache = VerifyCache::new(1);
        let (hash, _) = cached(3);
        assert!(!cache.may_exist(&hash));
        cache.add_known(&hash);
        assert!(cache.may_exist(&hash));
    }
}
