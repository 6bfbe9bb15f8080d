//! What the vault stores. Every secret value arrives sealed by the barrier: backends store
//! ciphertexts and never see a plaintext.

use keyward_core::{EnvironmentName, KeyId, RecordMac, Timestamp};
use serde::{Deserialize, Serialize};

/// The vault's one record: how it unseals, and its newest keyring term.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultRecord {
    /// Marks this vault's shares, so a share of another vault is refused on sight.
    pub tag: [u8; 4],
    pub shares: u8,
    pub threshold: u8,
    /// The root key, sealed by the unseal key.
    pub sealed_root: Vec<u8>,
    /// The newest keyring term: every keyring seals new values under it.
    pub term: u32,
    pub created_at: Timestamp,
    pub rewrap: Option<RewrapProgress>,
    /// The service's integrity tag over everything above but `rewrap`: the newest term in
    /// particular, so no node is made to seal under an older one.
    pub mac: Option<keyward_core::RecordMac>,
}

/// Progress of re-sealing old values under the newest term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapProgress {
    /// The term values are re-sealed under.
    pub term: u32,
    pub started_at: Timestamp,
    /// Values under older terms when the rewrap started.
    pub total: u64,
    pub done: u64,
    pub finished_at: Option<Timestamp>,
}

/// A keyring as stored: sealed by the root key, for one scope (`env:<name>`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKeyring {
    pub scope: String,
    pub sealed: Vec<u8>,
}

/// A secret's metadata: everything but its values.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretMeta {
    pub environment: EnvironmentName,
    pub path: String,
    pub owner: Option<String>,
    pub purpose: Option<String>,
    /// Versions kept; older ones are removed when a write goes past it.
    pub max_versions: u32,
    /// Writes must name the version they replace.
    pub cas_required: bool,
    pub custom: serde_json::Map<String, serde_json::Value>,
    /// The newest version written (0 before the first write).
    pub current_version: u64,
    /// Random, fixed when the secret is first written and bound into every version's
    /// ciphertext: a secret deleted and made again cannot be handed an old ciphertext. `None`
    /// for secrets from before incarnations.
    pub incarnation: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One version of a secret's value.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretVersion {
    pub environment: EnvironmentName,
    pub path: String,
    pub version: u64,
    /// Sealed under the environment's keyring; `None` once destroyed.
    pub ciphertext: Option<Vec<u8>>,
    pub created_at: Timestamp,
    /// Soft deletion: the value is kept and can be undeleted.
    pub deleted_at: Option<Timestamp>,
    pub destroyed: bool,
}

/// A stored value sealed under some keyring term, as rewrap finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum SealedValue {
    EnvironmentSecret {
        environment: EnvironmentName,
        ciphertext: Vec<u8>,
    },
    SecretVersion {
        environment: EnvironmentName,
        path: String,
        version: u64,
        ciphertext: Vec<u8>,
    },
}

impl SealedValue {
    pub fn ciphertext(&self) -> &[u8] {
        match self {
            SealedValue::EnvironmentSecret { ciphertext, .. }
            | SealedValue::SecretVersion { ciphertext, .. } => ciphertext,
        }
    }

    pub fn environment(&self) -> &EnvironmentName {
        match self {
            SealedValue::EnvironmentSecret { environment, .. }
            | SealedValue::SecretVersion { environment, .. } => environment,
        }
    }
}

/// A re-sealed value: written only if the stored ciphertext is still `old`, so a rewrap never
/// overwrites a value changed or destroyed meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewrapped {
    pub value: SealedValue,
    pub old: Vec<u8>,
    pub term: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    /// A short-lived API key: it stops verifying when the lease ends.
    Key,
    /// A read of a stored secret.
    Secret,
}

impl LeaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Key => "key",
            LeaseKind::Secret => "secret",
        }
    }
}

/// A lease: something handed out for a time, renewable up to a maximum, revocable.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultLease {
    pub id: String,
    pub kind: LeaseKind,
    /// `keys/<env>/<name>` or `secrets/<env>/<path>`: what revoking by prefix matches.
    pub path: String,
    pub environment: EnvironmentName,
    pub key_id: Option<KeyId>,
    pub secret_version: Option<u64>,
    /// Who took the lease (a key id).
    pub actor: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub max_expires_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    /// `revoked` or `expired`.
    pub end_reason: Option<String>,
    /// The service's integrity tag over the lease (see the service's `integrity` module);
    /// `None` for a lease stored before leases were tagged.
    pub mac: Option<RecordMac>,
}
