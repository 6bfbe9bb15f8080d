//! Audit entries and their canonical form.
//!
//! Each entry's hash is SHA-256 over the previous entry's hash (hex) followed by the entry's
//! canonical JSON: the fields `seq`, `ts`, `actor`, `action`, `target` and `details`, with object
//! keys sorted at every depth and no insignificant white space. The hashing itself lives in the
//! crypto crate; this module only defines the bytes that are hashed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Timestamp;

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an audit entry records. Stored and hashed as its name ([`AuditAction::as_str`]); the
/// names are a contract with whoever reads the log, so none is ever renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditAction {
    SystemInit,
    VaultInit,
    VaultUnseal,
    VaultSeal,
    VaultRotate,
    VaultRewrapFinish,
    VaultRewrapQuarantine,
    VaultRekey,
    VaultIntegrityAdopt,
    AuthFailed,
    AuthForbidden,
    GuardBlock,
    KeyCreate,
    KeyUpdate,
    KeyRevoke,
    KeyRevokeBulk,
    KeyOwnerTransfer,
    KeyRoll,
    KeyRotationFailed,
    KeyHandover,
    KeyHandoverLapse,
    KeyDelivered,
    KeyDeliveryFailed,
    GrantAdd,
    GrantLapse,
    EnvironmentCreate,
    EnvironmentUpdate,
    RoleCreate,
    RoleUpdate,
    RoleDelete,
    PlanCreate,
    PlanUpdate,
    PlanDelete,
    SecretRead,
    SecretWrite,
    SecretDelete,
    SecretUndelete,
    SecretDestroy,
    SecretMetadataUpdate,
    SecretMetadataDelete,
    LeaseCreate,
    LeaseRenew,
    LeaseRevoke,
    LeaseExpire,
    WebhookCreate,
    WebhookUpdate,
    WebhookDelete,
    WebhookSecretRotate,
    WebhookRedeliver,
    WebhookTest,
}

impl AuditAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditAction::SystemInit => "system.init",
            AuditAction::VaultInit => "vault.init",
            AuditAction::VaultUnseal => "vault.unseal",
            AuditAction::VaultSeal => "vault.seal",
            AuditAction::VaultRotate => "vault.rotate",
            AuditAction::VaultRewrapFinish => "vault.rewrap.finish",
            AuditAction::VaultRewrapQuarantine => "vault.rewrap.quarantine",
            AuditAction::VaultRekey => "vault.rekey",
            AuditAction::VaultIntegrityAdopt => "vault.integrity_adopt",
            AuditAction::AuthFailed => "auth.failed",
            AuditAction::AuthForbidden => "auth.forbidden",
            AuditAction::GuardBlock => "guard.block",
            AuditAction::KeyCreate => "key.create",
            AuditAction::KeyUpdate => "key.update",
            AuditAction::KeyRevoke => "key.revoke",
            AuditAction::KeyRevokeBulk => "key.revoke_bulk",
            AuditAction::KeyOwnerTransfer => "key.owner_transfer",
            AuditAction::KeyRoll => "key.roll",
            AuditAction::KeyRotationFailed => "key.rotation_failed",
            AuditAction::KeyHandover => "key.handover",
            AuditAction::KeyHandoverLapse => "key.handover_lapse",
            AuditAction::KeyDelivered => "key.delivered",
            AuditAction::KeyDeliveryFailed => "key.delivery_failed",
            AuditAction::GrantAdd => "grant.add",
            AuditAction::GrantLapse => "grant.lapse",
            AuditAction::EnvironmentCreate => "environment.create",
            AuditAction::EnvironmentUpdate => "environment.update",
            AuditAction::RoleCreate => "role.create",
            AuditAction::RoleUpdate => "role.update",
            AuditAction::RoleDelete => "role.delete",
            AuditAction::PlanCreate => "plan.create",
            AuditAction::PlanUpdate => "plan.update",
            AuditAction::PlanDelete => "plan.delete",
            AuditAction::SecretRead => "secret.read",
            AuditAction::SecretWrite => "secret.write",
            AuditAction::SecretDelete => "secret.delete",
            AuditAction::SecretUndelete => "secret.undelete",
            AuditAction::SecretDestroy => "secret.destroy",
            AuditAction::SecretMetadataUpdate => "secret.metadata.update",
            AuditAction::SecretMetadataDelete => "secret.metadata.delete",
            AuditAction::LeaseCreate => "lease.create",
            AuditAction::LeaseRenew => "lease.renew",
            AuditAction::LeaseRevoke => "lease.revoke",
            AuditAction::LeaseExpire => "lease.expire",
            AuditAction::WebhookCreate => "webhook.create",
            AuditAction::WebhookUpdate => "webhook.update",
            AuditAction::WebhookDelete => "webhook.delete",
            AuditAction::WebhookSecretRotate => "webhook.secret_rotate",
            AuditAction::WebhookRedeliver => "webhook.redeliver",
            AuditAction::WebhookTest => "webhook.test",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry of the append-only log. `details` never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub ts: Timestamp,
    /// A key id, `system`, or `anonymous` for a failed authentication.
    pub actor: String,
    /// What happened, e.g. `key.create`, `key.revoke`, `auth.failed`.
    pub action: String,
    /// What it happened to, e.g. a key id.
    pub target: Option<String>,
    pub details: Value,
    /// Hex SHA-256 of the previous entry.
    pub prev_hash: String,
    /// Hex SHA-256 of `prev_hash` followed by [`canonical_bytes`].
    pub hash: String,
}

/// The bytes an entry's hash covers after the previous hash.
pub fn canonical_bytes(
    seq: u64,
    ts: Timestamp,
    actor: &str,
    action: &str,
    target: Option<&str>,
    details: &Value,
) -> Vec<u8> {
    let mut entry = Map::new();
    entry.insert("seq".into(), Value::from(seq));
    entry.insert("ts".into(), Value::from(ts.unix_ms()));
    entry.insert("actor".into(), Value::from(actor));
    entry.insert("action".into(), Value::from(action));
    entry.insert("target".into(), target.map_or(Value::Null, Value::from));
    entry.insert("details".into(), details.clone());
    let mut out = Vec::with_capacity(256);
    write_canonical(&Value::Object(entry), &mut out);
    out
}

/// Writes JSON with object keys sorted at every depth, whatever map type serde_json was built
/// with, so the hash does not depend on a feature flag elsewhere in the dependency tree.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_at_every_depth() {
        let details = serde_json::json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": null}});
        let bytes = canonical_bytes(
            7,
            Timestamp::from_unix_ms(5),
            "system",
            "x.y",
            None,
            &details,
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"action":"x.y","actor":"system","details":{"a":{"c":null,"z":[1,{"x":3,"y":2}]},"b":1},"seq":7,"target":null,"ts":5}"#
        );
    }
}
