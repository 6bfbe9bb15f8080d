//! keyward protecting itself: per-client-address limits on failed verifications (key guessing)
//! and failed admin authentications (brute force).
//!
//! Each failure consumes from the client address's allowance (GCRA). Once it is spent, the
//! address is refused before any key is looked at, until the allowance refills; the moment an
//! address is blocked is audited once (not every refused attempt, which would let a flood write
//! the log).
//!
//! IPv6 clients are counted by prefix (`/64` by default: one subscriber's network), since a
//! single host can take any address of its /64. Only addresses that failed get an entry, and the
//! table is bounded: when it is full and holds nothing spent, a new address is not tracked (and
//! counted in [`Guard::untracked`]), so a flood of distinct addresses cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use keyward_core::Timestamp;
use keyward_core::ratelimit::{LimitState, RateLimit, check};

/// Per-address allowances of failures. `None` turns a guard off.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Verifications answered MALFORMED or NOT_FOUND for the `ip` given in verify.
    pub failed_verifications: Option<RateLimit>,
    /// Admin requests refused for a missing or bad key, by the caller's address.
    pub failed_admin_auth: Option<RateLimit>,
    /// IPv6 clients are counted by this prefix (1-128).
    pub ipv6_prefix: u8,
    /// The most addresses (or IPv6 prefixes) tracked at once, per guard.
    pub max_addresses: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let per_minute = |name: &str, limit| RateLimit {
            name: name.into(),
            limit,
            period_s: 60,
            burst: None,
            rule: None,
        };
        GuardConfig {
            failed_verifications: Some(per_minute("failed-verifications", 100)),
            failed_admin_auth: Some(per_minute("failed-admin-auth", 20)),
            ipv6_prefix: 64,
            max_addresses: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Guarded {
    Verification,
    AdminAuth,
}

impl Guarded {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Guarded::Verification => "failed_verifications",
            Guarded::AdminAuth => "failed_admin_auth",
        }
    }
}

const SHARDS: usize = 16;

/// An IPv4 address, or an IPv6 prefix (`true`): the families never share a slot.
type Slot = (bool, u128);

type Table = [Mutex<HashMap<Slot, LimitState>>; SHARDS];

/// The guard's state: for each guard, a bounded table from client address to its allowance.
#[derive(Debug)]
pub(crate) struct Guard {
    verifications: Table,
    admin_auth: Table,
    config: GuardConfig,
    untracked: AtomicU64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(GuardConfig::default())
    }
}

/// The table slot of an address: IPv4 as itself (IPv4-mapped IPv6 included), IPv6 by prefix.
fn slot(ip: IpAddr, ipv6_prefix: u8) -> Slot {
    match ip {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (false, u128::from(u32::from(v4))),
            None => {
                let bits = u32::from(ipv6_prefix.clamp(1, 128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                (true, u128::from(v6) & mask)
            }
        },
    }
}

fn spent(state: &LimitState, now: i64) -> bool {
    match *state {
        LimitState::Fresh => true,
        LimitState::Gcra { tat } => tat <= now,
        LimitState::Window { .. } => false,
    }
}

impl Guard {
    pub(crate) fn new(config: GuardConfig) -> Self {
        Guard {
            verifications: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            admin_auth: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            config,
            untracked: AtomicU64::new(0),
        }
    }

    fn parts(&self, kind: Guarded) -> Option<(&RateLimit, &Table)> {
        match kind {
            Guarded::Verification => self
                .config
                .failed_verifications
                .as_ref()
                .map(|l| (l, &self.verifications)),
            Guarded::AdminAuth => self
                .config
                .failed_admin_auth
                .as_ref()
                .map(|l| (l, &self.admin_auth)),
        }
    }

    fn shard(table: &Table, slot: Slot) -> std::sync::MutexGuard<'_, HashMap<Slot, LimitState>> {
        let index = usize::try_from(
            (slot.1 ^ u128::from(slot.0)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 124,
        )
        .unwrap_or(0);
        let [first, ..] = table;
        let shard = table.get(index % SHARDS).unwrap_or(first);
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds until `ip` may try again, if it is blocked now. Adds nothing to the table.
    pub(crate) fn blocked(&self, kind: Guarded, ip: IpAddr, now: Timestamp) -> Option<u64> {
        let (limit, table) = self.parts(kind)?;
        let slot = slot(ip, self.config.ipv6_prefix);
        let state = *Self::shard(table, slot).get(&slot)?;
        let (outcome, _) = check(limit, state, now.unix_ms().saturating_mul(1_000_000), 1);
        (!outcome.admitted).then(|| {
            u64::try_from(outcome.retry_after_ns.max(0))
                .unwrap_or(0)
                .div_ceil(1_000_000_000)
                .max(1)
        })
    }

    /// Counts a failure; true when this one spent the address's allowance (it is now blocked).
    pub(crate) fn fail(&self, kind: Guarded, ip: IpAddr, now: Timestamp) -> bool {
        let Some((limit, table)) = self.parts(kind) else {
            return false;
        };
        let now_ns = now.unix_ms().saturating_mul(1_000_000);
        let slot = slot(ip, self.config.ipv6_prefix);
        let mut shard = Self::shard(table, slot);
        let per_shard = self.config.max_addresses.div_ceil(SHARDS).max(1);
        if !shard.contains_key(&slot) && shard.len() >= per_shard {
            shard.retain(|_, state| !spent(state, now_ns));
            if shard.len() >= per_shard {
                if self.untracked.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        guard = kind.name(),
                        "the failed-attempt table is full; new addresses are not tracked until entries lapse"
                    );
                }
                return false;
            }
        }
        let state = shard.entry(slot).or_insert(LimitState::Fresh);
        let (outcome, next) = check(limit, *state, now_ns, 1);
        if outcome.admitted {
            *state = next;
        }
        outcome.admitted && outcome.remaining == 0
    }

    /// Addresses and prefixes with state held, over both guards.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        [&self.verifications, &self.admin_auth]
            .iter()
            .flat_map(|t| t.iter())
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// Failures from addresses not tracked because the table was full.
    pub(crate) fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    pub(crate) fn sweep(&self, now_ns: i64) {
        for shard in self.verifications.iter().chain(self.admin_auth.iter()) {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, state| !spent(state, now_ns));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    #[test]
    fn addresses_never_share_a_slot_and_ipv6_counts_by_prefix() {
        let mut seen = std::collections::HashSet::new();
        for last in 0..=255u8 {
            assert!(seen.insert(slot(IpAddr::from([203, 0, 113, last]), 64)));
            assert!(seen.insert(slot(
                IpAddr::from([0x2001, 0xdb8, 0, u16::from(last), 0, 0, 0, 1]),
                64
            )));
        }
        let a = IpAddr::from([0x2001, 0xdb8, 0, 7, 0, 0, 0, 1]);
        let b = IpAddr::from([0x2001, 0xdb8, 0, 7, 0xffff, 1, 2, 3]);
        assert_eq!(slot(a, 64), slot(b, 64));
        assert_ne!(slot(a, 128), slot(b, 128));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(slot(mapped, 64), slot(IpAddr::from([192, 0, 2, 1]), 64));
        // An IPv4-compatible IPv6 address is not the IPv4 address it spells.
        let compatible: IpAddr = "::192.0.2.1".parse().unwrap();
        assert_ne!(
            slot(compatible, 128),
            slot(IpAddr::from([192, 0, 2, 1]), 64)
        );
    }

    #[test]
    fn one_ipv6_network_is_blocked_whatever_address_it_takes() {
        let guard = Guard::default();
        for host in 0..100u16 {
            guard.fail(
                Guarded::Verification,
                IpAddr::from([0x2001, 0xdb8, 0, 7, host, 0, 0, 1]),
                at(0),
            );
        }
        let fresh = IpAddr::from([0x2001, 0xdb8, 0, 7, 0xabcd, 0, 0, 9]);
        assert!(guard.blocked(Guarded::Verification, fresh, at(0)).is_some());
        let other = IpAddr::from([0x2001, 0xdb8, 0, 8, 0, 0, 0, 1]);
        assert!(guard.blocked(Guarded::Verification, other, at(0)).is_none());
    }

    #[test]
    fn checks_add_no_entries_and_a_million_addresses_stay_bounded() {
        let guard = Guard::new(GuardConfig {
            max_addresses: 10_000,
            ..GuardConfig::default()
        });
        for n in 0..1_000_000u32 {
            assert!(
                guard
                    .blocked(Guarded::Verification, IpAddr::from(n.to_be_bytes()), at(0))
                    .is_none()
            );
        }
        assert_eq!(guard.len(), 0, "checking an address must not track it");
        for n in 0..1_000_000u32 {
            guard.fail(Guarded::Verification, IpAddr::from(n.to_be_bytes()), at(0));
        }
        assert!(guard.len() <= 10_000 + SHARDS, "{}", guard.len());
        assert!(guard.untracked() > 0);
        // Once entries lapse, new addresses are tracked again.
        guard.sweep(at(120_000).unix_ms() * 1_000_000);
        assert_eq!(guard.len(), 0);
    }
}
