//! The verification hot path and admin authentication.
//!
//! parse (length, alphabet, checksum: no store) → HMAC under the environment's secret → cache →
//! known-hash filter → store (once per key, then cached) → status, expiry and environment checks.
//! Nothing here writes to the store: usage goes to the batcher.

use std::sync::Arc;

use keyward_core::permission::grants;
use keyward_core::{
    EnvironmentName, KeyId, KeyStatus, ParsedKey, ServiceName, Timestamp, VerifyCode,
};
use serde_json::json;

use crate::audit::PendingEntry;
use crate::{Authority, CachedKey, ServiceError};

/// The outcome of a verification. `key` is present whenever the presented key matched a stored
/// key, so callers can report whose key was refused.
#[derive(Debug, Clone)]
pub struct Verification {
    pub code: VerifyCode,
    pub key: Option<Arc<CachedKey>>,
}

/// An authenticated admin caller.
#[derive(Debug, Clone)]
pub struct Actor {
    key: Arc<CachedKey>,
}

impl Actor {
    pub fn key_id(&self) -> KeyId {
        self.key.id
    }

    /// Whether this caller holds `permission`.
    pub fn holds(&self, permission: &str) -> bool {
        grants(&self.key.permissions, permission)
    }

    pub(crate) fn audit_name(&self) -> String {
        self.key.id.to_string()
    }
}

enum Lookup {
    Malformed,
    Unknown,
    Found(Arc<CachedKey>),
}

fn evaluate(key: &CachedKey, now: Timestamp, environment: Option<&EnvironmentName>) -> VerifyCode {
    if key.status == KeyStatus::Revoked {
        VerifyCode::Revoked
    } else if key.expires_at.is_some_and(|at| at <= now) {
        VerifyCode::Expired
    } else if key.status == KeyStatus::Disabled {
        VerifyCode::Disabled
    } else if environment.is_some_and(|env| *env != *key.environment) {
        VerifyCode::EnvironmentMismatch
    } else {
        VerifyCode::Valid
    }
}

impl Authority {
    /// Verifies a key presented to a protected API. `environment`, when given, is the
    /// environment the caller expects the key to belong to.
    ///
    /// Errors only when the store is needed and unreachable; every answer about the key itself,
    /// valid or not, is a [`Verification`].
    pub async fn verify(
        &self,
        presented: &str,
        environment: Option<&EnvironmentName>,
    ) -> Result<Verification, ServiceError> {
        let key = match self.lookup(presented).await? {
            Lookup::Malformed => {
                return Ok(Verification {
                    code: VerifyCode::Malformed,
                    key: None,
                });
            }
            Lookup::Unknown => {
                return Ok(Verification {
                    code: VerifyCode::NotFound,
                    key: None,
                });
            }
            // Admin keys are not API keys: they never pass verification for a protected API.
            Lookup::Found(key) if key.service == ServiceName::Keyward => {
                return Ok(Verification {
                    code: VerifyCode::NotFound,
                    key: None,
                });
            }
            Lookup::Found(key) => key,
        };
        let now = self.clock.now();
        let code = evaluate(&key, now, environment);
        if code == VerifyCode::Valid {
            self.usage.record(key.id, now);
        }
        Ok(Verification {
            code,
            key: Some(key),
        })
    }

    async fn lookup(&self, presented: &str) -> Result<Lookup, ServiceError> {
        let Ok(parsed) = ParsedKey::parse(presented) else {
            return Ok(Lookup::Malformed);
        };
        let Some(hash) = self.hash_of(&parsed) else {
            return Ok(Lookup::Unknown);
        };
        if let Some(key) = self.cache.get(&hash) {
            return Ok(Lookup::Found(key));
        }
        if !self.cache.may_exist(&hash) {
            return Ok(Lookup::Unknown);
        }
        let epoch = self.cache.epoch(&hash);
        match self.store.key_by_hash(hash).await? {
            Some(record) => {
                let key = self.cache.entry_for(&record);
                self.cache.insert_if_current(hash, Arc::clone(&key), epoch);
                Ok(Lookup::Found(key))
            }
            None => Ok(Lookup::Unknown),
        }
    }

    /// Authenticates an admin caller by its bearer key and checks that it holds `permission`.
    /// Every refusal is audited; if that audit entry cannot be written the caller is still
    /// refused.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        permission: &str,
    ) -> Result<Actor, ServiceError> {
        let refusal = match bearer {
            None => Some("missing"),
            Some(presented) => match self.lookup(presented).await? {
                Lookup::Malformed => Some("malformed"),
                Lookup::Unknown => Some("unknown_key"),
                Lookup::Found(key) => {
                    let reason = match evaluate(&key, self.clock.now(), None) {
                        _ if key.service != ServiceName::Keyward => Some("not_an_admin_key"),
                        VerifyCode::Valid => None,
                        VerifyCode::Revoked => Some("revoked"),
                        VerifyCode::Expired => Some("expired"),
                        _ => Some("disabled"),
                    };
                    match reason {
                        Some(reason) => Some(reason),
                        None => {
                            let actor = Actor { key };
                            if actor.holds(permission) {
                                return Ok(actor);
                            }
                            self.audit_refusal(PendingEntry {
                                actor: actor.audit_name(),
                                action: "auth.forbidden",
                                target: None,
                                details: json!({ "permission": permission }),
                            })
                            .await;
                            return Err(ServiceError::Forbidden {
                                permission: permission.to_owned(),
                            });
                        }
                    }
                }
            },
        };
        let reason = refusal.unwrap_or("unknown_key");
        let start = bearer
            .and_then(|b| ParsedKey::parse(b).ok())
            .map(|p| p.start().to_owned());
        self.audit_refusal(PendingEntry {
            actor: "anonymous".into(),
            action: "auth.failed",
            target: None,
            details: json!({ "reason": reason, "key_start": start, "permission": permission }),
        })
        .await;
        Err(ServiceError::Unauthorized)
    }

    async fn audit_refusal(&self, entry: PendingEntry) {
        if let Err(e) = self.audit_only(vec![entry]).await {
            tracing::error!(error = %e, "could not audit a refused admin request");
        }
    }
}
