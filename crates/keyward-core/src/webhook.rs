//! Webhooks: the events keyward tells subscribers of, the endpoints they subscribe with, and
//! the state of each delivery. Pure data; signing lives in the crypto crate and delivery in the
//! service.

use serde::{Deserialize, Serialize};

use crate::{EnvironmentName, KeyId, Timestamp};

/// What an event reports. Its name is a contract with subscribers: none is ever renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "key.expiring")]
    KeyExpiring,
    #[serde(rename = "key.rotated")]
    KeyRotated,
    #[serde(rename = "key.rotation_failed")]
    KeyRotationFailed,
    #[serde(rename = "key.revoked")]
    KeyRevoked,
    #[serde(rename = "key.disabled")]
    KeyDisabled,
    #[serde(rename = "key.expired")]
    KeyExpired,
    #[serde(rename = "key.owner_transferred")]
    KeyOwnerTransferred,
    #[serde(rename = "ratelimit.warning")]
    RateLimitWarning,
    #[serde(rename = "ratelimit.exceeded")]
    RateLimitExceeded,
    /// Sent by `POST /v1/webhooks/{id}/test`, to that endpoint only.
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::KeyExpiring,
        EventType::KeyRotated,
        EventType::KeyRotationFailed,
        EventType::KeyRevoked,
        EventType::KeyDisabled,
        EventType::KeyExpired,
        EventType::KeyOwnerTransferred,
        EventType::RateLimitWarning,
        EventType::RateLimitExceeded,
        EventType::WebhookTest,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::KeyExpiring => "key.expiring",
            EventType::KeyRotated => "key.rotated",
            EventType::KeyRotationFailed => "key.rotation_failed",
            EventType::KeyRevoked => "key.revoked",
            EventType::KeyDisabled => "key.disabled",
            EventType::KeyExpired => "key.expired",
            EventType::KeyOwnerTransferred => "key.owner_transferred",
            EventType::RateLimitWarning => "ratelimit.warning",
            EventType::RateLimitExceeded => "ratelimit.exceeded",
            EventType::WebhookTest => "webhook.test",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to deliver, written in the same commit as the change it reports (the outbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Position in the outbox; 0 until stored.
    #[serde(skip)]
    pub seq: u64,
    /// The `webhook-id`: unique, and the same for every delivery (and redelivery) of the
    /// event, so subscribers can drop duplicates. Notices have one derived from what they
    /// announce, so a notice is written once however often it is found due.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub ts: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The event's `data`: names keys by id and `start`, never a secret.
    pub data: serde_json::Value,
    /// For a test event: the only endpoint it goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<String>,
    /// Set by the service on every write; see [`crate::RecordMac`]. An event whose tag does
    /// not match is never signed nor sent.
    #[serde(skip)]
    pub mac: Option<crate::RecordMac>,
}

/// A signing secret of an endpoint, sealed; during a rotation the old one is kept (and signs
/// too) until `expires_at`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedSigningSecret {
    /// Hex of the sealed `whsec_…` secret.
    pub sealed: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for SealedSigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSigningSecret")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A subscriber's endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The types it receives; empty: every type.
    #[serde(default)]
    pub event_types: Vec<EventType>,
    /// Only events of keys of this environment, or of this owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Newest first.
    pub secrets: Vec<SealedSigningSecret>,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// The last outbox position considered for it: it receives what comes after.
    pub cursor: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Set by the service on every write; see [`crate::RecordMac`].
    #[serde(skip)]
    pub mac: Option<crate::RecordMac>,
}

impl WebhookEndpoint {
    /// Whether `event` goes to this endpoint.
    pub fn wants(&self, event: &OutboxEvent) -> bool {
        if let Some(only) = &event.only {
            return *only == self.id;
        }
        if event.kind == EventType::WebhookTest {
            return false;
        }
        (self.event_types.is_empty() || self.event_types.contains(&event.kind))
            && self
                .environment
                .as_ref()
                .is_none_or(|env| event.environment.as_ref() == Some(env))
            && self
                .owner
                .as_ref()
                .is_none_or(|owner| event.owner.as_ref() == Some(owner))
    }
}

/// Where one event's delivery to one endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet: due at `next_attempt_at`.
    Pending,
    Delivered,
    /// Given up on (after the retry window, or the endpoint answered 410 Gone).
    Failed,
}

impl DeliveryState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub endpoint: String,
    /// The outbox position of the event.
    pub seq: u64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Deliveries of one key's events go out in order: a later one waits for an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, env: &str, owner: &str) -> OutboxEvent {
        OutboxEvent {
            seq: 1,
            id: "msg_1".into(),
            kind,
            ts: Timestamp::from_unix_ms(1),
            key_id: None,
            environment: EnvironmentName::parse(env).ok(),
            owner: Some(owner.into()),
            data: serde_json::json!({}),
            only: None,
            mac: None,
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::parse("key.exploded"), None);
    }

    #[test]
    fn an_endpoint_receives_what_its_filters_let_through() {
        let mut endpoint = WebhookEndpoint {
            id: "wh_1".into(),
            url: "https://example.com/hook".into(),
            description: None,
            event_types: vec![EventType::KeyRevoked],
            environment: EnvironmentName::parse("live").ok(),
            owner: None,
            secrets: Vec::new(),
            enabled: true,
            disabled_reason: None,
            cursor: 0,
            created_at: Timestamp::from_unix_ms(1),
            updated_at: Timestamp::from_unix_ms(1),
            mac: None,
        };
        assert!(endpoint.wants(&event(EventType::KeyRevoked, "live", "a")));
        assert!(!endpoint.wants(&event(EventType::KeyRevoked, "test", "a")));
        assert!(!endpoint.wants(&event(EventType::KeyRotated, "live", "a")));
        endpoint.event_types.clear();
        endpoint.owner = Some("a".into());
        assert!(endpoint.wants(&event(EventType::KeyRotated, "live", "a")));
        assert!(!endpoint.wants(&event(EventType::KeyRotated, "live", "b")));
        // Test events go to the endpoint they name, and to no other.
        let mut test = event(EventType::WebhookTest, "live", "a");
        assert!(!endpoint.wants(&test));
        test.only = Some("wh_1".into());
        assert!(endpoint.wants(&test));
        test.only = Some("wh_2".into());
        assert!(!endpoint.wants(&test));
    }
}
