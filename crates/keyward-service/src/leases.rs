//! Concurrency limits: at most N requests of a key in flight. A verification with `lease`
//! takes a lease when the key has a concurrency limit; the caller releases it when its request
//! ends. Leases lapse by themselves after the key's lease timeout, so a caller that crashed
//! cannot lock its key out. [`Leases`] keeps them in this process: after a restart every lease
//! is gone, which errs towards admitting (they would have lapsed within the timeout anyway). A
//! [`LeaseTable`] shared by several nodes (Redis) makes the limit hold across them.

use std::collections::HashMap;
use std::sync::Mutex;

use keyward_core::{EnvironmentName, KeyId, Timestamp};

/// A lease: proof that one request of a key is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub key: KeyId,
    pub expires_at: Timestamp,
}

/// Where concurrency leases are kept: in this process ([`Leases`]) or shared by several nodes.
#[async_trait::async_trait]
pub trait LeaseTable: Send + Sync + std::fmt::Debug + 'static {
    /// Takes a lease for `key` if fewer than `limit` are in flight. `Err` carries the instant
    /// the earliest lease lapses.
    async fn acquire(
        &self,
        key: KeyId,
        environment: &EnvironmentName,
        limit: u32,
        timeout_s: u32,
        now: Timestamp,
        id: String,
    ) -> Result<Lease, Timestamp>;

    /// Ends a lease of a key whose environment `reaches` accepts. A lease of an environment
    /// the caller cannot reach stays as it is.
    async fn release(
        &self,
        id: &str,
        now: Timestamp,
        reaches: &(dyn for<'e> Fn(&'e EnvironmentName) -> bool + Send + Sync),
    ) -> Release;

    /// Drops every lapsed lease held here.
    fn sweep(&self, now: Timestamp);
}

#[async_trait::async_trait]
impl LeaseTable for Leases {
    async fn acquire(
        &self,
        key: KeyId,
        environment: &EnvironmentName,
        limit: u32,
        timeout_s: u32,
        now: Timestamp,
        id: String,
    ) -> Result<Lease, Timestamp> {
        Leases::acquire(self, key, environment, limit, timeout_s, now, id)
    }

    async fn release(
        &self,
        id: &str,
        now: Timestamp,
        reaches: &(dyn for<'e> Fn(&'e EnvironmentName) -> bool + Send + Sync),
    ) -> Release {
        Leases::release(self, id, now, reaches)
    }

    fn sweep(&self, now: Timestamp) {
        Leases::sweep(self, now);
    }
}

/// What releasing a lease did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    Released,
    /// Released already, lapsed, or never taken.
    Unknown,
    /// Of a key in an environment the caller cannot reach: left as it is.
    OutOfReach(EnvironmentName),
}

#[derive(Debug, Default)]
pub struct Leases {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<KeyId, Vec<(String, Timestamp)>>,
    /// Each lease's key, and the key's environment (a scoped caller releases only its own).
    by_id: HashMap<String, (KeyId, EnvironmentName)>,
}

impl Table {
    fn expire(&mut self, key: KeyId, now: Timestamp) {
        if let Some(held) = self.by_key.get_mut(&key) {
            let by_id = &mut self.by_id;
            held.retain(|(id, until)| {
                let live = *until > now;
                if !live {
                    by_id.remove(id);
                }
                live
            });
            if held.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }
}

impl Leases {
    /// Takes a lease for `key` if fewer than `limit` are in flight. `Err` carries the instant
    /// the earliest lease lapses.
    pub fn acquire(
        &self,
        key: KeyId,
        environment: &EnvironmentName,
        limit: u32,
        timeout_s: u32,
        now: Timestamp,
        id: String,
    ) -> Result<Lease, Timestamp> {
        let mut table = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        table.expire(key, now);
        let held = table.by_key.entry(key).or_default();
        if held.len() >= limit as usize {
            let earliest = held.iter().map(|(_, until)| *until).min().unwrap_or(now);
            return Err(earliest);
        }
        let expires_at = now.plus_seconds(u64::from(timeout_s));
        held.push((id.clone(), expires_at));
        table.by_id.insert(id.clone(), (key, environment.clone()));
        Ok(Lease {
            id,
            key,
            expires_at,
        })
    }

    /// Ends a lease of a key whose environment `reaches` accepts. A lease of an environment
    /// the caller cannot reach stays as it is.
    pub fn release(
        &self,
        id: &str,
        now: Timestamp,
        reaches: impl Fn(&EnvironmentName) -> bool,
    ) -> Release {
        let mut table = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match table.by_id.get(id) {
            Some((_, environment)) if !reaches(environment) => {
                return Release::OutOfReach(environment.clone());
            }
            Some(_) => {}
            None => return Release::Unknown,
        }
        let Some((key, _)) = table.by_id.remove(id) else {
            return Release::Unknown;
        };
        let mut live = false;
        if let Some(held) = table.by_key.get_mut(&key) {
            if let Some(pos) = held.iter().position(|(lease, _)| lease == id) {
                live = held.swap_remove(pos).1 > now;
            }
            if held.is_empty() {
                table.by_key.remove(&key);
            }
        }
        if live {
            Release::Released
        } else {
            Release::Unknown
        }
    }

    /// How many leases `key` holds now.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, key: KeyId, now: Timestamp) -> usize {
        let mut table = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        table.expire(key, now);
        table.by_key.get(&key).map_or(0, Vec::len)
    }

    /// Drops every lapsed lease.
    pub fn sweep(&self, now: Timestamp) {
        let mut table = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<KeyId> = table.by_key.keys().copied().collect();
        for key in keys {
            table.expire(key, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyId {
        KeyId(uuid::Uuid::from_u128(5))
    }

    #[test]
    fn at_most_n_in_flight_and_leases_lapse() {
        let leases = Leases::default();
        let live = EnvironmentName::parse("live").unwrap();
        let any = |_: &EnvironmentName| true;
        let t0 = Timestamp::from_unix_ms(1_000_000);
        let a = leases.acquire(key(), &live, 2, 30, t0, "a".into()).unwrap();
        leases.acquire(key(), &live, 2, 30, t0, "b".into()).unwrap();
        assert_eq!(
            leases.acquire(key(), &live, 2, 30, t0, "c".into()),
            Err(a.expires_at)
        );
        // A caller that cannot reach the key's environment cannot end its lease.
        assert_eq!(
            leases.release("a", t0, |env| env.as_str() == "test"),
            Release::OutOfReach(live.clone())
        );
        assert_eq!(leases.in_flight(key(), t0), 2);
        assert_eq!(leases.release("a", t0, any), Release::Released);
        assert_eq!(
            leases.release("a", t0, any),
            Release::Unknown,
            "released twice"
        );
        leases.acquire(key(), &live, 2, 30, t0, "c".into()).unwrap();
        assert_eq!(leases.in_flight(key(), t0), 2);
        // A crashed caller's leases lapse by themselves.
        let later = t0.plus_seconds(30);
        assert_eq!(leases.in_flight(key(), later), 0);
        assert_eq!(leases.release("b", later, any), Release::Unknown);
        leases
            .acquire(key(), &live, 2, 30, later, "d".into())
            .unwrap();
        leases.sweep(later.plus_seconds(31));
        assert_eq!(leases.in_flight(key(), later), 0);
    }
}
