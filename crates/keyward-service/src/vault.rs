//! The vault's key material while unsealed, and how a vault begins.
//!
//! ```text
//! unseal key ──seals──▶ root key ──seals──▶ one keyring per environment ──seal──▶ values
//! (Shamir shares,        (stored)            (stored; numbered terms)             (the HMAC secret,
//!  a file or env var)                                                               stored secrets)
//! ```
//!
//! Each environment's values are sealed under that environment's own keyring, so the key store
//! of one environment opens nothing of another's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keyward_core::EnvironmentName;
use keyward_crypto::HmacSecret;
use keyward_crypto::barrier::{
    self, BarrierError, Context, IntegrityKey, Keyring, RootFormat, RootKey, Share, UnsealKey,
};
use keyward_store::{StoredKeyring, VaultRecord};
use zeroize::Zeroizing;

use crate::integrity::INTEGRITY_SCOPE;
use crate::{ServiceError, read, write};

/// Default share count and threshold of `keyward init`.
pub const DEFAULT_SHARES: u8 = 5;
pub const DEFAULT_THRESHOLD: u8 = 3;

impl From<BarrierError> for ServiceError {
    fn from(e: BarrierError) -> Self {
        match e {
            BarrierError::Random => ServiceError::internal(e),
            // A stored value failed its integrity check: tampering or corruption, never client
            // input. Reported as what it is, without the value.
            other => ServiceError::Integrity(other.to_string()),
        }
    }
}

fn random_err(e: keyward_crypto::RandomUnavailable) -> ServiceError {
    ServiceError::internal(e)
}

/// The scope under which an environment's keyring is stored.
pub(crate) fn scope(env: &EnvironmentName) -> String {
    format!("env:{env}")
}

const fn hmac_context(env: &str) -> Context<'_> {
    Context {
        table: "environment",
        id: env,
        field: "hmac_secret",
    }
}

/// The record id a secret version's ciphertext is bound to: its environment, path, the
/// secret's incarnation and the version.
pub(crate) fn secret_record_id(
    env: &EnvironmentName,
    path: &str,
    incarnation: Option<&str>,
    version: u64,
) -> String {
    match incarnation {
        Some(incarnation) => format!("{env}/{path}@{incarnation}#{version}"),
        // Secrets written before incarnations keep the id they were sealed under.
        None => format!("{env}/{path}#{version}"),
    }
}

/// The unsealed vault: the root key, the integrity key and every environment's keyring,
/// zeroized when dropped.
pub struct OpenVault {
    /// Replaced by a rekey, which reseals every keyring under a new root key.
    root: RwLock<RootKey>,
    integrity: IntegrityKey,
    keyrings: RwLock<HashMap<EnvironmentName, Arc<Keyring>>>,
    term: std::sync::atomic::AtomicU32,
    /// For a vault from before integrity keys: the new key's sealed form and the vault record
    /// whose root key says it has one, to store with the first tags (see [`Adoption`]).
    adoption: std::sync::Mutex<Option<Adoption>>,
}

/// What adopting integrity tags writes besides the tags themselves.
#[derive(Debug)]
pub(crate) struct Adoption {
    pub record: VaultRecord,
    pub stored: StoredKeyring,
}

impl std::fmt::Debug for OpenVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenVault")
            .field("keyrings", &read(&self.keyrings).len())
            .field("term", &self.term())
            .finish_non_exhaustive()
    }
}

impl OpenVault {
    /// Opens the root key with `key`, then the integrity key and every stored keyring with the
    /// root key, and checks the vault record's tag (its term above all). A vault from before
    /// integrity keys gets one, to be stored by [`OpenVault::take_adoption`]'s taker.
    pub(crate) fn open(
        record: &VaultRecord,
        key: &UnsealKey,
        keyrings: &[StoredKeyring],
    ) -> Result<Self, BarrierError> {
        let (root, format) = key.open_root_with_format(&record.sealed_root)?;
        let stored_integrity = keyrings.iter().find(|k| k.scope == INTEGRITY_SCOPE);
        let (integrity, adoption) = match (format, stored_integrity) {
            (RootFormat::Integrity, Some(stored)) => {
                let integrity = root.open_integrity_key(&stored.sealed)?;
                if !crate::integrity::vault_intact(&integrity, record) {
                    tracing::error!(
                        "the vault record failed its integrity check (was its term edited?)"
                    );
                    return Err(BarrierError::Integrity);
                }
                (integrity, None)
            }
            // The root key says this vault has an integrity key, and it is gone: tampering.
            (RootFormat::Integrity, None) => {
                tracing::error!("the vault's integrity key is missing from the store");
                return Err(BarrierError::Integrity);
            }
            (RootFormat::Legacy, _) => {
                let integrity = IntegrityKey::generate()?;
                let adoption = Adoption {
                    record: VaultRecord {
                        sealed_root: key.seal_root(&root)?,
                        ..record.clone()
                    },
                    stored: StoredKeyring {
                        scope: INTEGRITY_SCOPE.to_owned(),
                        sealed: root.seal_integrity_key(&integrity)?,
                    },
                };
                (integrity, Some(adoption))
            }
        };
        let mut opened = HashMap::new();
        for stored in keyrings {
            let Some(env) = stored
                .scope
                .strip_prefix("env:")
                .and_then(|e| EnvironmentName::parse(e).ok())
            else {
                continue;
            };
            opened.insert(
                env,
                Arc::new(root.open_keyring(&stored.scope, &stored.sealed)?),
            );
        }
        Ok(OpenVault {
            root: RwLock::new(root),
            integrity,
            keyrings: RwLock::new(opened),
            term: std::sync::atomic::AtomicU32::new(record.term),
            adoption: std::sync::Mutex::new(adoption),
        })
    }

    /// Every keyring and the integrity key sealed under `root`: what a rekey stores with the
    /// new root key, so the old root key (and any backup of the record sealing it) opens
    /// nothing that is stored from then on.
    pub(crate) fn sealed_under(&self, root: &RootKey) -> Result<Vec<StoredKeyring>, ServiceError> {
        let mut out = Vec::new();
        for (env, keyring) in read(&self.keyrings).iter() {
            let scope = scope(env);
            out.push(StoredKeyring {
                sealed: root.seal_keyring(&scope, keyring)?,
                scope,
            });
        }
        out.push(StoredKeyring {
            scope: INTEGRITY_SCOPE.to_owned(),
            sealed: root.seal_integrity_key(&self.integrity)?,
        });
        Ok(out)
    }

    /// Opens a stored keyring of an environment (`None` for other scopes, such as the integrity
    /// key's), as the change feed brings it.
    pub(crate) fn open_stored(
        &self,
        stored: &StoredKeyring,
    ) -> Result<Option<(EnvironmentName, Arc<Keyring>)>, BarrierError> {
        let Some(env) = stored
            .scope
            .strip_prefix("env:")
            .and_then(|e| EnvironmentName::parse(e).ok())
        else {
            return Ok(None);
        };
        let keyring = read(&self.root).open_keyring(&stored.scope, &stored.sealed)?;
        Ok(Some((env, Arc::new(keyring))))
    }

    /// Makes `root` the root key that new keyrings are sealed under (after a rekey stored it).
    /// Returns the root key it replaces.
    pub(crate) fn install_root(&self, root: RootKey) -> RootKey {
        std::mem::replace(&mut *write(&self.root), root)
    }

    /// The key that tags stored security state.
    pub(crate) fn integrity(&self) -> &IntegrityKey {
        &self.integrity
    }

    /// For a vault from before integrity keys, what adopting them must store (once).
    pub(crate) fn take_adoption(&self) -> Option<Adoption> {
        self.adoption
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn term(&self) -> u32 {
        self.term.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn keyring(&self, env: &EnvironmentName) -> Result<Arc<Keyring>, ServiceError> {
        read(&self.keyrings)
            .get(env)
            .cloned()
            .ok_or_else(|| ServiceError::Integrity(format!("environment {env} has no keyring")))
    }

    pub(crate) fn environments(&self) -> Vec<EnvironmentName> {
        read(&self.keyrings).keys().cloned().collect()
    }

    pub(crate) fn seal_keyring(
        &self,
        env: &EnvironmentName,
        keyring: &Keyring,
    ) -> Result<StoredKeyring, ServiceError> {
        let scope = scope(env);
        Ok(StoredKeyring {
            sealed: read(&self.root).seal_keyring(&scope, keyring)?,
            scope,
        })
    }

    /// A new environment's keyring (at the vault's current term) and HMAC secret, sealed and
    /// ready to store with it. Call [`OpenVault::install`] once stored.
    pub(crate) fn new_environment(
        &self,
        env: &EnvironmentName,
        now_ms: i64,
    ) -> Result<NewEnvironment, ServiceError> {
        let mut keyring = Keyring::generate(now_ms).map_err(random_err)?;
        keyring.rotate_to(self.term(), now_ms).map_err(random_err)?;
        let secret = HmacSecret::generate().map_err(random_err)?;
        let sealed_secret = keyring.seal_hmac_secret(&hmac_context(env.as_str()), &secret)?;
        Ok(NewEnvironment {
            stored: self.seal_keyring(env, &keyring)?,
            keyring: Arc::new(keyring),
            secret,
            sealed_secret,
        })
    }

    pub(crate) fn install(&self, env: EnvironmentName, keyring: Arc<Keyring>) {
        write(&self.keyrings).insert(env, keyring);
    }

    pub(crate) fn set_term(&self, term: u32) {
        self.term.store(term, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn open_hmac_secret(
        &self,
        env: &EnvironmentName,
        sealed: &[u8],
    ) -> Result<HmacSecret, ServiceError> {
        Ok(self
            .keyring(env)?
            .open_hmac_secret(&hmac_context(env.as_str()), sealed)?)
    }

    pub(crate) fn seal_hmac_secret(
        &self,
        env: &EnvironmentName,
        secret: &HmacSecret,
    ) -> Result<Vec<u8>, ServiceError> {
        Ok(self
            .keyring(env)?
            .seal_hmac_secret(&hmac_context(env.as_str()), secret)?)
    }

    pub(crate) fn seal_secret(
        &self,
        env: &EnvironmentName,
        path: &str,
        incarnation: Option<&str>,
        version: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ServiceError> {
        let id = secret_record_id(env, path, incarnation, version);
        Ok(self.keyring(env)?.seal(
            &Context {
                table: "secret",
                id: &id,
                field: "data",
            },
            plaintext,
        )?)
    }

    pub(crate) fn open_secret(
        &self,
        env: &EnvironmentName,
        path: &str,
        incarnation: Option<&str>,
        version: u64,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        let id = secret_record_id(env, path, incarnation, version);
        Ok(self.keyring(env)?.open(
            &Context {
                table: "secret",
                id: &id,
                field: "data",
            },
            ciphertext,
        )?)
    }
}

pub(crate) struct NewEnvironment {
    pub stored: StoredKeyring,
    pub keyring: Arc<Keyring>,
    pub secret: HmacSecret,
    pub sealed_secret: Vec<u8>,
}

/// What a new vault hands out once: the unseal key and its shares.
pub struct NewVault {
    pub record: VaultRecord,
    pub unseal_key: UnsealKey,
    pub shares: Vec<Share>,
    pub open: OpenVault,
    /// The integrity key, sealed by the root key, to store with the record.
    pub integrity: StoredKeyring,
}

impl std::fmt::Debug for NewVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewVault")
            .field("shares", &self.shares.len())
            .finish_non_exhaustive()
    }
}

/// Makes a vault: unseal key, its shares, and the root key sealed under it.
pub(crate) fn new_vault(
    shares: u8,
    threshold: u8,
    now: keyward_core::Timestamp,
) -> Result<NewVault, ServiceError> {
    let unseal_key = UnsealKey::generate().map_err(random_err)?;
    let tag = barrier::new_vault_tag().map_err(random_err)?;
    let parts = barrier::split(&unseal_key, shares, threshold, &tag).map_err(|e| {
        ServiceError::InvalidField {
            field: "shares",
            message: e.to_string(),
        }
    })?;
    let root = RootKey::generate().map_err(random_err)?;
    let integrity = IntegrityKey::generate().map_err(random_err)?;
    let mut record = VaultRecord {
        tag,
        shares,
        threshold,
        sealed_root: unseal_key.seal_root(&root)?,
        term: 1,
        created_at: now,
        rewrap: None,
        mac: None,
    };
    let mut tagged = keyward_store::Changes {
        vault: Some(record.clone()),
        ..keyward_store::Changes::default()
    };
    crate::integrity::seal_changes(&integrity, &mut tagged, None, 0);
    record.mac = tagged.vault.and_then(|v| v.mac);
    let stored = StoredKeyring {
        scope: INTEGRITY_SCOPE.to_owned(),
        sealed: root.seal_integrity_key(&integrity)?,
    };
    Ok(NewVault {
        record,
        unseal_key,
        shares: parts,
        integrity: stored,
        open: OpenVault {
            root: RwLock::new(root),
            integrity,
            keyrings: RwLock::new(HashMap::new()),
            term: std::sync::atomic::AtomicU32::new(1),
            adoption: std::sync::Mutex::new(None),
        },
    })
}
