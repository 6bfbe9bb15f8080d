//! keyward's domain types and pure logic.
//!
//! This crate holds what every other keyward crate agrees on: the API key format and its
//! checksum, identifiers, timestamps and the [`Clock`] they come from, key records, permissions
//! and audit entries. It performs no I/O, spawns nothing and depends on no cryptography, SQL or
//! HTTP crate, so that every rule here can be tested in isolation and reused by every backend.

pub mod audit;
pub mod cidr;
pub mod clock;
pub mod key;
pub mod model;
pub mod path_rule;
pub mod permission;
pub mod policy;
pub mod query;
pub mod ratelimit;
pub mod rotation;
pub mod timestamp;
pub mod webhook;

pub use cidr::{Cidr, CidrSet, NetworkRules};
pub use clock::{Clock, FakeClock, SystemClock};
pub use key::{EnvironmentName, KeyPrefix, MalformedKey, ParsedKey};
pub use model::{
    BlockRule, ConcurrencyLimit, Event, EventKind, Graduated, Grant, KeyAccess, KeyHash, KeyId,
    KeyRecord, KeyStatus, KeySummary, PlanName, PlanRecord, QuotaConfig, QuotaRefill, QuotaState,
    RecordMac, RefillInterval, RoleName, RoleRecord, ServiceName, VerifyCode,
};
pub use path_rule::PathRule;
pub use permission::{Permission, PermissionSet};
pub use policy::{EnvironmentPolicy, PolicyViolation};
pub use query::PermissionQuery;
pub use ratelimit::{LimitOutcome, LimitState, RateLimit};
pub use rotation::{
    DeliveryKind, DeliveryTarget, KeyLifecycle, PolicySource, RollCause, RotationPolicy,
};
pub use timestamp::Timestamp;
pub use webhook::{
    DeliveryState, EventType, OutboxEvent, SealedSigningSecret, WebhookDelivery, WebhookEndpoint,
};
