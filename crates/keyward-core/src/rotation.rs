//! Rotation: how often a key is replaced, how long the replaced key keeps working, and how early
//! its holder hears of it. Pure rules over times; the scheduler that acts on them lives in the
//! service.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The longest period a policy may have: ten years.
pub const MAX_EVERY_DAYS: u32 = 3650;

/// A rotation schedule: a key is rolled `every_days` after it was made; the replaced key keeps
/// working for `grace_hours`; its holder may rotate it itself, and is told, from `notice_days`
/// before it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicy {
    pub every_days: u32,
    pub grace_hours: u32,
    #[serde(default)]
    pub notice_days: u32,
    /// For a key with a delivery target: how long the replaced key may keep working while its
    /// successor cannot be delivered (default 72 hours more than the grace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_cap_hours: Option<u32>,
}

/// A rule a policy breaks, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidRotation {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidRotation {
    InvalidRotation {
        field,
        message: message.into(),
    }
}

impl RotationPolicy {
    /// Checks the policy's own values: a period of 1 to 3650 days, a grace of at least an hour
    /// and a notice, each shorter than the period.
    pub fn check(&self) -> Result<(), InvalidRotation> {
        if !(1..=MAX_EVERY_DAYS).contains(&self.every_days) {
            return Err(invalid(
                "every_days",
                format!("must be between 1 and {MAX_EVERY_DAYS}"),
            ));
        }
        if self.grace_hours == 0 {
            return Err(invalid(
                "grace_hours",
                "must be at least 1: a rotation without grace cuts every client off at once",
            ));
        }
        if u64::from(self.grace_hours) >= u64::from(self.every_days) * 24 {
            return Err(invalid(
                "grace_hours",
                "must be shorter than the period (every_days)",
            ));
        }
        if self.notice_days >= self.every_days {
            return Err(invalid(
                "notice_days",
                "must be shorter than the period (every_days)",
            ));
        }
        if let Some(cap) = self.delivery_cap_hours
            && (cap < self.grace_hours || u64::from(cap) >= u64::from(self.every_days) * 24)
        {
            return Err(invalid(
                "delivery_cap_hours",
                "must be at least the grace and shorter than the period",
            ));
        }
        Ok(())
    }

    /// How long a replaced key may keep working while its successor is not delivered, in ms.
    pub fn delivery_cap_ms(&self) -> i64 {
        i64::from(
            self.delivery_cap_hours
                .unwrap_or(self.grace_hours.saturating_add(72)),
        ) * HOUR_MS
    }

    /// When a key made at `since` is due to be rolled.
    pub fn due_at(&self, since: Timestamp) -> Timestamp {
        Timestamp::from_unix_ms(
            since
                .unix_ms()
                .saturating_add(i64::from(self.every_days) * DAY_MS),
        )
    }

    /// From when the holder of a key made at `since` is told, and may rotate it itself.
    pub fn notice_at(&self, since: Timestamp) -> Timestamp {
        Timestamp::from_unix_ms(
            self.due_at(since)
                .unix_ms()
                .saturating_sub(i64::from(self.notice_days) * DAY_MS),
        )
    }

    /// How long a replaced key keeps working, in seconds.
    pub fn grace_s(&self) -> u64 {
        u64::from(self.grace_hours) * 3600
    }

    /// Milliseconds of grace, for time arithmetic.
    pub fn grace_ms(&self) -> i64 {
        i64::from(self.grace_hours) * HOUR_MS
    }
}

/// Where a key's effective policy comes from: the most specific that has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum PolicySource {
    /// The key's own policy.
    Key,
    /// A role the key holds (the one with the shortest period, if several have one).
    Role(String),
    /// The key's environment.
    Environment(String),
}

/// How a generation of a key ended, when it ended by a roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollCause {
    /// By the rotation scheduler, because the policy said so.
    Schedule,
    /// By an admin (`POST /v1/keys/{id}/roll`).
    Manual,
    /// By its holder (`POST /v1/self/rotate`).
    Client,
}

impl RollCause {
    pub const fn as_str(self) -> &'static str {
        match self {
            RollCause::Schedule => "schedule",
            RollCause::Manual => "manual",
            RollCause::Client => "client",
        }
    }
}

/// A key's rotation settings and history. Empty by default, and then not stored at all, so
/// records written before it existed authenticate as before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyLifecycle {
    /// The key's own rotation policy: beats its roles' and its environment's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicy>,
    /// Set when the key was rolled: by whom.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_by: Option<RollCause>,
    /// Where a successor made by the scheduler is written before the grace period starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryTarget>,
}

/// Where a key's successor is written: a secret in keyward's own vault, in the key's
/// environment, or a KV v2 secret on an external Vault or OpenBao (whose token is read from
/// keyward's vault).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryTarget {
    pub kind: DeliveryKind,
    /// If given, it must be the key's environment (the successor never leaves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<crate::EnvironmentName>,
    /// The secret's path (in keyward's vault, or under the KV v2 mount).
    pub path: String,
    /// The field of the secret the key is written to (default `key`).
    #[serde(default = "default_field")]
    pub field: String,
    /// KV v2: the server, e.g. `https://vault.internal:8200`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// KV v2: the mount (default `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// KV v2: the keyward secret (in the key's environment) whose field `token` is the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_path: Option<String>,
}

fn default_field() -> String {
    "key".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    /// A path in keyward's own vault.
    Vault,
    /// A KV v2 path on HashiCorp Vault or OpenBao.
    Kv2,
}

impl DeliveryKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Vault => "vault",
            DeliveryKind::Kv2 => "kv2",
        }
    }
}

impl KeyLifecycle {
    pub fn is_empty(&self) -> bool {
        *self == KeyLifecycle::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(every_days: u32, grace_hours: u32, notice_days: u32) -> RotationPolicy {
        RotationPolicy {
            every_days,
            grace_hours,
            notice_days,
            delivery_cap_hours: None,
        }
    }

    #[test]
    fn a_policy_names_the_field_it_breaks() {
        assert!(policy(30, 48, 7).check().is_ok());
        assert!(policy(1, 23, 0).check().is_ok());
        assert_eq!(policy(0, 0, 0).check().unwrap_err().field, "every_days");
        assert_eq!(policy(3651, 0, 0).check().unwrap_err().field, "every_days");
        assert_eq!(policy(1, 24, 0).check().unwrap_err().field, "grace_hours");
        assert_eq!(policy(30, 0, 0).check().unwrap_err().field, "grace_hours");
        assert_eq!(policy(30, 24, 30).check().unwrap_err().field, "notice_days");
    }

    #[test]
    fn due_notice_and_grace_are_counted_from_the_generation_start() {
        let start = Timestamp::from_unix_ms(1_000);
        let p = policy(30, 48, 7);
        assert_eq!(p.due_at(start).unix_ms(), 1_000 + 30 * DAY_MS);
        assert_eq!(p.notice_at(start).unix_ms(), 1_000 + 23 * DAY_MS);
        assert_eq!(p.grace_s(), 48 * 3600);
        let far = Timestamp::from_unix_ms(i64::MAX);
        assert!(p.due_at(far) >= far, "saturates, never wraps");
    }

    #[test]
    fn an_empty_lifecycle_serialises_to_nothing() {
        assert_eq!(
            serde_json::to_string(&KeyLifecycle::default()).unwrap(),
            "{}"
        );
        let cause: RollCause = serde_json::from_str("\"client\"").unwrap();
        assert_eq!(cause, RollCause::Client);
    }
}
