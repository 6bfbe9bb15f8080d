//! Key records and their identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Cidr, EnvironmentName, KeyPrefix, PathRule, Permission, Timestamp};

/// A key's identifier: a UUIDv7, so identifiers sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub Uuid);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for KeyId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(KeyId)
    }
}

/// HMAC-SHA256 of a key under its environment's secret: the only form in which keys are stored.
/// It is uniformly distributed and cannot be steered by a client without the secret, so hash
/// tables may use its bytes directly as their hash (see the `Hash` impl).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.short());
    }
}

impl KeyHash {
    /// The first eight bytes as a number: a well-spread hash-table key.
    pub fn short(&self) -> u64 {
        let [a, b, c, d, e, f, g, h, ..] = self.0;
        u64::from_le_bytes([a, b, c, d, e, f, g, h])
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({:016x}…)", self.short())
    }
}

/// A service protected by keyward. Until services can be managed, there are two: the default
/// service for users' keys and the reserved `keyward` service whose keys are admin keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceName {
    Default,
    Keyward,
}

impl ServiceName {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Default => "default",
            ServiceName::Keyward => "keyward",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "default" => Some(ServiceName::Default),
            "keyward" => Some(ServiceName::Keyward),
            _ => None,
        }
    }

    pub fn prefix(self) -> KeyPrefix {
        let text = match self {
            ServiceName::Default => "kw",
            ServiceName::Keyward => "keyward",
        };
        // Both literals are valid prefixes; the test below pins it.
        KeyPrefix::parse(text).unwrap_or_else(|_| unreachable_prefix())
    }
}

#[cold]
fn unreachable_prefix() -> KeyPrefix {
    #[allow(clippy::panic)]
    {
        panic!("built-in service prefixes are valid")
    }
}

/// The environment reserved for admin keys.
pub const ADMIN_ENVIRONMENT: &str = "admin";
/// Environments every data dir has from `keyward init` on.
pub const DEFAULT_ENVIRONMENTS: [&str; 2] = ["live", "test"];

/// The answer of a verification. Later capabilities may add codes; none is ever removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerifyCode {
    Valid,
    Malformed,
    NotFound,
    Expired,
    Revoked,
    Disabled,
    EnvironmentMismatch,
    InsufficientPermissions,
    IpDenied,
    RateLimited,
    UsageExceeded,
}

impl VerifyCode {
    pub const ALL: [VerifyCode; 11] = [
        VerifyCode::Valid,
        VerifyCode::Malformed,
        VerifyCode::NotFound,
        VerifyCode::Expired,
        VerifyCode::Revoked,
        VerifyCode::Disabled,
        VerifyCode::EnvironmentMismatch,
        VerifyCode::InsufficientPermissions,
        VerifyCode::IpDenied,
        VerifyCode::RateLimited,
        VerifyCode::UsageExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerifyCode::Valid => "VALID",
            VerifyCode::Malformed => "MALFORMED",
            VerifyCode::NotFound => "NOT_FOUND",
            VerifyCode::Expired => "EXPIRED",
            VerifyCode::Revoked => "REVOKED",
            VerifyCode::Disabled => "DISABLED",
            VerifyCode::EnvironmentMismatch => "ENVIRONMENT_MISMATCH",
            VerifyCode::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            VerifyCode::IpDenied => "IP_DENIED",
            VerifyCode::RateLimited => "RATE_LIMITED",
            VerifyCode::UsageExceeded => "USAGE_EXCEEDED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Disabled,
    /// Final: a revoked key never verifies again.
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(KeyStatus::Active),
            "disabled" => Some(KeyStatus::Disabled),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}

/// An integrity tag over a stored record's security-relevant fields, made and checked by the
/// service under a key the vault seals, so an edit of the store without the unseal key is
/// detected. The store keeps it beside the record and does nothing else with it. `None` marks a
/// record never sealed: valid only while a vault from before integrity tags is adopted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordMac(pub [u8; 32]);

impl fmt::Debug for RecordMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, ..] = self.0;
        write!(f, "RecordMac({a:02x}{b:02x}{c:02x}{d:02x}…)")
    }
}

/// Everything keyward keeps about a key. Never the key itself: only its HMAC and display start.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub service: ServiceName,
    pub environment: EnvironmentName,
    pub hash: KeyHash,
    /// Prefix, environment and the first four secret characters, for people to recognise a key.
    pub start: String,
    pub name: String,
    pub owner: String,
    pub purpose: Option<String>,
    pub permissions: Vec<Permission>,
    pub meta: serde_json::Map<String, serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// After this instant the key answers `EXPIRED`. Expiry is a time, not a state.
    pub expires_at: Option<Timestamp>,
    pub status: KeyStatus,
    pub revoked_at: Option<Timestamp>,
    pub revocation_reason: Option<String>,
    /// The key this one replaced by a roll.
    pub rolled_from: Option<KeyId>,
    /// The key that replaced this one by a roll.
    pub rolled_to: Option<KeyId>,
    /// Updated in batches, so it may trail the truth by one flush interval.
    pub last_used_at: Option<Timestamp>,
    /// Successful verifications, counted in batches like `last_used_at`.
    pub uses: u64,
    /// Roles, temporary grants, path rules, network rules and admin scope.
    pub access: KeyAccess,
    /// The key's rotation policy and how its generation ended.
    pub lifecycle: crate::KeyLifecycle,
    /// Set by the service on every write; see [`RecordMac`].
    pub mac: Option<RecordMac>,
}

/// What a key may do beyond its direct permissions, and from where. All empty by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyAccess {
    /// Roles whose permissions the key holds; a role's change reaches its keys at once.
    pub roles: Vec<RoleName>,
    /// Permissions or roles held until a time.
    pub grants: Vec<Grant>,
    /// If any, the requests the key may make; verify needs `method` and `path` then.
    pub path_rules: Vec<PathRule>,
    /// If any, the only networks the key may be used from.
    pub allowed_cidrs: Vec<Cidr>,
    /// Networks the key may never be used from; deny wins over allow.
    pub denied_cidrs: Vec<Cidr>,
    /// For admin keys: the environments whose keys it may manage (`None`: all).
    pub admin_environments: Option<Vec<EnvironmentName>>,
    /// Named rate limits; a request is admitted only if every applicable one admits it. They
    /// add to the plan's; one with a plan limit's name replaces it for this key.
    pub ratelimits: Vec<crate::RateLimit>,
    /// The plan (tier) whose limits the key has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanName>,
    /// At most this many of the key's requests in flight (verify with `lease`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyLimit>,
    /// Usage credits: how the key's remaining uses are refilled, if they are. (The remaining
    /// count itself is state, kept apart from the key's settings.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaConfig>,
}

/// A key's quota: present means verification spends credits; `refill` says whether and how
/// they come back. A one-time credit grant has no refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<QuotaRefill>,
}

/// Back to `amount` remaining at the start of each UTC day or month (not added: reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRefill {
    pub amount: u64,
    pub interval: RefillInterval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefillInterval {
    Daily,
    Monthly,
}

impl RefillInterval {
    /// The start of the refill period that contains `at` (00:00 UTC of its day or month).
    pub fn period_start(self, at: Timestamp) -> Timestamp {
        let day_ms = 86_400_000;
        let day_start = at.unix_ms() - at.unix_ms().rem_euclid(day_ms);
        match self {
            RefillInterval::Daily => Timestamp::from_unix_ms(day_start),
            RefillInterval::Monthly => {
                let text = at.to_rfc3339();
                // RFC 3339 from 1970 on always starts with YYYY-MM.
                let month = text.get(..7).unwrap_or("1970-01");
                Timestamp::parse_rfc3339(&format!("{month}-01T00:00:00Z"))
                    .unwrap_or(Timestamp::from_unix_ms(day_start))
            }
        }
    }

    /// The start of the period after the one containing `at`.
    pub fn next_start(self, at: Timestamp) -> Timestamp {
        let start = self.period_start(at);
        match self {
            RefillInterval::Daily => start.plus_seconds(86_400),
            // 32 days past a month's first day is always in the next month.
            RefillInterval::Monthly => self.period_start(start.plus_seconds(32 * 86_400)),
        }
    }
}

/// Where a key's quota stands: `remaining` credits as of the refill period starting at
/// `period_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub remaining: u64,
    pub period_start: Timestamp,
}

impl QuotaState {
    /// The state at `now`: refilled if a new period has begun.
    pub fn at(self, config: &QuotaConfig, now: Timestamp) -> QuotaState {
        match config.refill {
            Some(refill) if refill.interval.period_start(now) > self.period_start => QuotaState {
                remaining: refill.amount,
                period_start: refill.interval.period_start(now),
            },
            _ => self,
        }
    }
}

/// At most `limit` requests in flight; a lease lapses by itself after `lease_timeout_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    pub limit: u32,
    #[serde(default = "default_lease_timeout_s")]
    pub lease_timeout_s: u32,
}

fn default_lease_timeout_s() -> u32 {
    30
}

impl ConcurrencyLimit {
    /// Checks the values a client gave; names the bad field.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=100_000).contains(&self.limit) {
            return Err(("concurrency.limit", "must be between 1 and 100000"));
        }
        if !(1..=86_400).contains(&self.lease_timeout_s) {
            return Err((
                "concurrency.lease_timeout_s",
                "must be between 1 and 86400 (a day)",
            ));
        }
        Ok(())
    }
}

impl KeyAccess {
    /// The key's network rules, compiled.
    pub fn network(&self) -> crate::NetworkRules {
        // At most MAX_BLOCKS blocks were accepted when the key was written.
        crate::NetworkRules {
            allow: crate::CidrSet::new(self.allowed_cidrs.clone()).unwrap_or_default(),
            deny: crate::CidrSet::new(self.denied_cidrs.clone()).unwrap_or_default(),
        }
    }

    /// The earliest expiry among the grants, which the lapse sweeper waits for.
    pub fn next_grant_expiry(&self) -> Option<Timestamp> {
        self.grants.iter().map(|g| g.expires_at).min()
    }
}

/// A temporary elevation: a permission or a role held until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<Permission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleName>,
    pub expires_at: Timestamp,
    pub granted_at: Timestamp,
    /// The admin key that granted it.
    pub granted_by: String,
}

macro_rules! slug_type {
    ($(#[$doc:meta])* $name:ident, $invalid:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
        #[error("a {} name is 1-64 characters of [a-z0-9_.-], starting with a letter or digit", $what)]
        pub struct $invalid;

        impl $name {
            pub fn parse(text: &str) -> Result<Self, $invalid> {
                let ok = (1..=64).contains(&text.len())
                    && text.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
                if ok { Ok($name(text.to_owned())) } else { Err($invalid) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

slug_type!(
    /// A role's name: 1-64 characters of `[a-z0-9_.-]`, starting with a letter or digit.
    RoleName,
    InvalidRoleName,
    "role"
);
slug_type!(
    /// A plan's name, with the same rules as a role's.
    PlanName,
    InvalidPlanName,
    "plan"
);

/// A named set of rate limits (a tier: `free`, `pro`, …). Every key on the plan has its
/// limits; changing the plan changes them for every such key at once.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRecord {
    pub name: PlanName,
    pub description: Option<String>,
    pub ratelimits: Vec<crate::RateLimit>,
    /// How the plan answers a key that keeps hitting its limits.
    pub graduated: Option<Graduated>,
    /// Credits for each key on the plan that has no quota of its own, refilled each period.
    pub quota: Option<QuotaRefill>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Set by the service on every write; see [`RecordMac`].
    pub mac: Option<RecordMac>,
}

/// A graduated response to rate-limit pressure: warn past a share of a limit; block a key that
/// is refused `violations` times within `within_s` for `block_s`; disable it after
/// `disable_after_blocks` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graduated {
    /// Warn past this percentage of a limit (default 80).
    #[serde(default = "default_warning_percent")]
    pub warning_percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockRule>,
}

fn default_warning_percent() -> u8 {
    80
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRule {
    pub violations: u32,
    pub within_s: u64,
    pub block_s: u64,
    /// Disable the key (an audited change an admin must undo) after this many blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_after_blocks: Option<u32>,
}

impl Graduated {
    /// Checks the values a client gave; names the bad field.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=100).contains(&self.warning_percent) {
            return Err(("graduated.warning_percent", "must be between 1 and 100"));
        }
        if let Some(block) = &self.block {
            if !(1..=1_000_000).contains(&block.violations) {
                return Err((
                    "graduated.block.violations",
                    "must be between 1 and 1000000",
                ));
            }
            if !(1..=86_400).contains(&block.within_s) {
                return Err(("graduated.block.within_s", "must be between 1 and 86400"));
            }
            if !(1..=2_592_000).contains(&block.block_s) {
                return Err((
                    "graduated.block.block_s",
                    "must be between 1 and 2592000 (30 days)",
                ));
            }
            if block.disable_after_blocks == Some(0) {
                return Err(("graduated.block.disable_after_blocks", "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The kinds of [`Event`]. Stored as their names, which consumers match on: never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    RatelimitWarning,
    RatelimitExceeded,
    RatelimitBlock,
    KeyDisabled,
    GuardBlock,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::RatelimitWarning => "ratelimit.warning",
            EventKind::RatelimitExceeded => "ratelimit.exceeded",
            EventKind::RatelimitBlock => "ratelimit.block",
            EventKind::KeyDisabled => "key.disabled",
            EventKind::GuardBlock => "guard.block",
        }
    }
}

/// Something that happened to a key that consumers (webhooks, anomaly detection) may act on:
/// `ratelimit.warning`, `ratelimit.exceeded`, `guard.block`, … Not an audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log; 0 until stored.
    pub seq: u64,
    pub ts: Timestamp,
    pub kind: String,
    pub key_id: Option<KeyId>,
    pub details: serde_json::Value,
}

/// A named, reusable set of permissions.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleRecord {
    pub name: RoleName,
    pub description: Option<String>,
    pub permissions: Vec<Permission>,
    /// Created by `keyward init`; immutable.
    pub builtin: bool,
    /// How often keys holding the role are rotated (beats their environment's policy).
    pub rotation: Option<crate::RotationPolicy>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Set by the service on every write; see [`RecordMac`].
    pub mac: Option<RecordMac>,
}

impl KeyRecord {
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The part of the record that a scan of every key judges.
    pub fn summary(&self) -> KeySummary {
        KeySummary {
            id: self.id,
            environment: self.environment.clone(),
            start: self.start.clone(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            roles: self.access.roles.clone(),
            rotation: self.lifecycle.rotation,
        }
    }
}

/// What the rotation scheduler judges of a key, and what its events name: a key's identity,
/// times, roles and own rotation policy, without the permissions, meta and limits that a whole
/// record decodes. A scan of every key reads only these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    pub id: KeyId,
    pub environment: EnvironmentName,
    pub start: String,
    pub name: String,
    pub owner: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub roles: Vec<RoleName>,
    pub rotation: Option<crate::RotationPolicy>,
}

impl KeySummary {
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_periods() {
        let at = |t: &str| Timestamp::parse_rfc3339(t).unwrap();
        let now = at("2026-11-28T10:00:00Z");
        assert_eq!(
            RefillInterval::Daily.period_start(now),
            at("2026-11-28T00:00:00Z")
        );
        assert_eq!(
            RefillInterval::Daily.next_start(now),
            at("2026-11-29T00:00:00Z")
        );
        assert_eq!(
            RefillInterval::Monthly.period_start(now),
            at("2026-11-01T00:00:00Z")
        );
        assert_eq!(
            RefillInterval::Monthly.next_start(now),
            at("2026-12-01T00:00:00Z")
        );
        assert_eq!(
            RefillInterval::Monthly.next_start(at("2026-12-31T23:59:59Z")),
            at("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            RefillInterval::Monthly.next_start(at("2027-01-31T12:00:00Z")),
            at("2027-02-01T00:00:00Z")
        );

        let config = QuotaConfig {
            refill: Some(QuotaRefill {
                amount: 100,
                interval: RefillInterval::Daily,
            }),
        };
        let spent = QuotaState {
            remaining: 3,
            period_start: at("2026-11-28T00:00:00Z"),
        };
        assert_eq!(spent.at(&config, at("2026-11-28T23:59:59Z")), spent);
        assert_eq!(spent.at(&config, at("2026-11-29T00:00:00Z")).remaining, 100);
        // A one-time grant never refills.
        assert_eq!(
            spent.at(&QuotaConfig { refill: None }, at("2027-06-01T00:00:00Z")),
            spent
        );
    }

    #[test]
    fn service_prefixes_are_valid() {
        assert_eq!(ServiceName::Default.prefix().as_str(), "kw");
        assert_eq!(ServiceName::Keyward.prefix().as_str(), "keyward");
        assert!(EnvironmentName::parse(ADMIN_ENVIRONMENT).is_ok());
    }
}
