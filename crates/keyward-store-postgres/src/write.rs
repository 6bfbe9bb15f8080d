//! One [`Changes`] written inside the caller's transaction, in the order the contract needs:
//! the audit chain checked first, catalogs before the keys that name them, keys before their
//! quotas, the vault, then the checkpoint and the entries.

use deadpool_postgres::Transaction;
use keyward_core::Timestamp;
use keyward_core::audit::GENESIS_HASH;
use keyward_store::vault::{RewrapProgress, Rewrapped, SealedValue};
use keyward_store::{AuditHead, Changes, StoreError};
use tokio_postgres::types::ToSql;

use crate::rows::{self, mac_bytes, permission_list, term_of, to_i64, to_json};
use crate::{map_write_error, unavailable};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs one statement (prepared once per connection); returns the rows it changed.
pub(crate) async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, StoreError> {
    crate::timed(async {
        let stmt = tx.prepare_cached(sql).await.map_err(unavailable)?;
        tx.execute(&stmt, params).await.map_err(map_write_error)
    })
    .await
}

/// Like [`exec`], for a statement that must change a row: none changed is `NotFound(what)`.
pub(crate) async fn exec_one(
    tx: &Transaction<'_>,
    sql: &str,
    params: Params<'_>,
    what: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    match exec(tx, sql, params).await? {
        0 => Err(StoreError::NotFound(what())),
        _ => Ok(()),
    }
}

pub(crate) async fn head(tx: &Transaction<'_>) -> Result<Option<AuditHead>, StoreError> {
    let stmt = tx
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .await
        .map_err(unavailable)?;
    let row = tx.query_opt(&stmt, &[]).await.map_err(unavailable)?;
    row.map(|row| {
        Ok(AuditHead {
            seq: u64::try_from(rows::get::<i64>(&row, 0)?).map_err(|_| rows::corrupt("seq"))?,
            hash: rows::get(&row, 1)?,
        })
    })
    .transpose()
}

/// Writes `changes`; the caller holds the write lock and commits.
pub(crate) async fn apply(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    if !changes.audit.is_empty() {
        let (mut seq, mut hash) = match head(tx).await? {
            Some(h) => (h.seq, h.hash),
            None => (0, GENESIS_HASH.to_owned()),
        };
        for entry in &changes.audit {
            if entry.seq != seq + 1 || entry.prev_hash != hash {
                return Err(StoreError::AuditConflict);
            }
            seq = entry.seq;
            hash.clone_from(&entry.hash);
        }
    }
    for env in &changes.environments {
        exec(
            tx,
            "INSERT INTO environments (name, created_at, policy, mac) VALUES ($1, $2, $3, $4)",
            &[
                &env.name.as_str(),
                &env.created_at.unix_ms(),
                &to_json(&env.policy)?,
                &mac_bytes(env.mac),
            ],
        )
        .await?;
    }
    for env in &changes.update_environments {
        exec_one(
            tx,
            "UPDATE environments SET policy = $2, mac = $3 WHERE name = $1",
            &[
                &env.name.as_str(),
                &to_json(&env.policy)?,
                &mac_bytes(env.mac),
            ],
            || env.name.to_string(),
        )
        .await?;
    }
    for role in &changes.upsert_roles {
        exec(
            tx,
            "INSERT INTO roles (name, description, permissions, builtin, created_at, updated_at, mac, rotation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO UPDATE SET \
             description = excluded.description, permissions = excluded.permissions, \
             updated_at = excluded.updated_at, mac = excluded.mac, rotation = excluded.rotation",
            &[
                &role.name.as_str(),
                &role.description,
                &permission_list(&role.permissions),
                &role.builtin,
                &role.created_at.unix_ms(),
                &role.updated_at.unix_ms(),
                &mac_bytes(role.mac),
                &role.rotation.map(|r| to_json(&r)).transpose()?,
            ],
        )
        .await?;
    }
    for plan in &changes.upsert_plans {
        let graduated = plan.graduated.map(|g| to_json(&g)).transpose()?;
        let quota = plan.quota.map(|q| to_json(&q)).transpose()?;
        exec(
            tx,
            "INSERT INTO plans (name, description, ratelimits, graduated, created_at, updated_at, quota, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO UPDATE SET \
             description = excluded.description, ratelimits = excluded.ratelimits, \
             graduated = excluded.graduated, quota = excluded.quota, \
             updated_at = excluded.updated_at, mac = excluded.mac",
            &[
                &plan.name.as_str(),
                &plan.description,
                &to_json(&plan.ratelimits)?,
                &graduated,
                &plan.created_at.unix_ms(),
                &plan.updated_at.unix_ms(),
                &quota,
                &mac_bytes(plan.mac),
            ],
        )
        .await?;
    }
    for name in &changes.delete_plans {
        exec_one(
            tx,
            "DELETE FROM plans WHERE name = $1",
            &[&name.as_str()],
            || name.to_string(),
        )
        .await?;
    }
    for name in &changes.delete_roles {
        exec_one(
            tx,
            "DELETE FROM roles WHERE name = $1",
            &[&name.as_str()],
            || name.to_string(),
        )
        .await?;
    }
    for key in &changes.insert_keys {
        let sql = format!(
            "INSERT INTO keys ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)",
            rows::KEY_COLUMNS
        );
        exec(
            tx,
            &sql,
            &[
                &key.id.to_string(),
                &key.service.as_str(),
                &key.environment.as_str(),
                &key.hash.0.as_slice(),
                &key.start,
                &key.name,
                &key.owner,
                &key.purpose,
                &permission_list(&key.permissions),
                &serde_json::Value::Object(key.meta.clone()).to_string(),
                &key.created_at.unix_ms(),
                &key.updated_at.unix_ms(),
                &key.expires_at.map(Timestamp::unix_ms),
                &key.status.as_str(),
                &key.revoked_at.map(Timestamp::unix_ms),
                &key.revocation_reason,
                &key.rolled_from.map(|id| id.to_string()),
                &key.rolled_to.map(|id| id.to_string()),
                &key.last_used_at.map(Timestamp::unix_ms),
                &to_i64(key.uses),
                &to_json(&key.access)?,
                &key.access.next_grant_expiry().map(Timestamp::unix_ms),
                &mac_bytes(key.mac),
                &to_json(&key.lifecycle)?,
            ],
        )
        .await?;
    }
    for key in &changes.update_keys {
        exec_one(
            tx,
            "UPDATE keys SET name = $2, owner = $3, purpose = $4, permissions = $5, meta = $6, \
             updated_at = $7, expires_at = $8, status = $9, revoked_at = $10, \
             revocation_reason = $11, rolled_to = $12, access = $13, next_grant_expiry = $14, \
             mac = $15, lifecycle = $16 WHERE id = $1",
            &[
                &key.id.to_string(),
                &key.name,
                &key.owner,
                &key.purpose,
                &permission_list(&key.permissions),
                &serde_json::Value::Object(key.meta.clone()).to_string(),
                &key.updated_at.unix_ms(),
                &key.expires_at.map(Timestamp::unix_ms),
                &key.status.as_str(),
                &key.revoked_at.map(Timestamp::unix_ms),
                &key.revocation_reason,
                &key.rolled_to.map(|id| id.to_string()),
                &to_json(&key.access)?,
                &key.access.next_grant_expiry().map(Timestamp::unix_ms),
                &mac_bytes(key.mac),
                &to_json(&key.lifecycle)?,
            ],
            || key.id.to_string(),
        )
        .await?;
    }
    for handover in &changes.insert_handovers {
        exec(
            tx,
            "INSERT INTO key_handovers (successor, predecessor, environment, sealed, expires_at, \
             attempts, next_attempt_at, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &handover.successor.to_string(),
                &handover.predecessor.to_string(),
                &handover.environment.as_str(),
                &handover.sealed,
                &handover.expires_at.unix_ms(),
                &i64::from(handover.attempts),
                &handover.next_attempt_at.map(Timestamp::unix_ms),
                &handover.last_error,
            ],
        )
        .await?;
    }
    for handover in &changes.update_handovers {
        exec_one(
            tx,
            "UPDATE key_handovers SET attempts = $2, next_attempt_at = $3, last_error = $4, \
             expires_at = $5 WHERE predecessor = $1",
            &[
                &handover.predecessor.to_string(),
                &i64::from(handover.attempts),
                &handover.next_attempt_at.map(Timestamp::unix_ms),
                &handover.last_error,
                &handover.expires_at.unix_ms(),
            ],
            || format!("handover of {}", handover.predecessor),
        )
        .await?;
    }
    for predecessor in &changes.delete_handovers {
        exec_one(
            tx,
            "DELETE FROM key_handovers WHERE predecessor = $1",
            &[&predecessor.to_string()],
            || format!("handover of {predecessor}"),
        )
        .await?;
    }
    // After the key inserts: a new key's quota is set in the same write.
    for (id, state) in &changes.set_quotas {
        exec_one(
            tx,
            "UPDATE keys SET quota_remaining = $2, quota_period_start = $3 WHERE id = $1",
            &[
                &id.to_string(),
                &state.map(|s| to_i64(s.remaining)),
                &state.map(|s| s.period_start.unix_ms()),
            ],
            || id.to_string(),
        )
        .await?;
    }
    apply_vault(tx, changes).await?;
    if let Some(checkpoint) = &changes.audit_checkpoint {
        exec(
            tx,
            "INSERT INTO audit_checkpoint (id, seq, hash, revoked, mac) VALUES (1, $1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
             revoked = excluded.revoked, mac = excluded.mac",
            &[
                &to_i64(checkpoint.seq),
                &checkpoint.hash,
                &to_i64(checkpoint.revoked),
                &checkpoint.mac.0.as_slice(),
            ],
        )
        .await?;
    }
    for entry in &changes.audit {
        exec(
            tx,
            "INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &to_i64(entry.seq),
                &entry.ts.unix_ms(),
                &entry.actor,
                &entry.action,
                &entry.target,
                &entry.details.to_string(),
                &entry.prev_hash,
                &entry.hash,
            ],
        )
        .await?;
    }
    Ok(())
}

async fn apply_vault(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    if let Some(vault) = &changes.vault {
        let rewrap = vault.rewrap.map(|r| to_json(&r)).transpose()?;
        exec(
            tx,
            "INSERT INTO vault (id, tag, shares, threshold, sealed_root, term, created_at, rewrap, mac) \
             VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET \
             tag = excluded.tag, shares = excluded.shares, threshold = excluded.threshold, \
             sealed_root = excluded.sealed_root, term = excluded.term, rewrap = excluded.rewrap, \
             mac = excluded.mac",
            &[
                &vault.tag.as_slice(),
                &i32::from(vault.shares),
                &i32::from(vault.threshold),
                &vault.sealed_root,
                &i64::from(vault.term),
                &vault.created_at.unix_ms(),
                &rewrap,
                &mac_bytes(vault.mac),
            ],
        )
        .await?;
    }
    for ring in &changes.keyrings {
        exec(
            tx,
            "INSERT INTO keyrings (scope, blob) VALUES ($1, $2) \
             ON CONFLICT (scope) DO UPDATE SET blob = excluded.blob",
            &[&ring.scope, &ring.sealed],
        )
        .await?;
    }
    for (env, sealed) in &changes.environment_secrets {
        exec_one(
            tx,
            "UPDATE environments SET secret = $2, secret_term = $3 WHERE name = $1",
            &[&env.as_str(), sealed, &term_of(sealed)],
            || env.to_string(),
        )
        .await?;
    }
    for (env, path) in &changes.delete_secrets {
        exec(
            tx,
            "DELETE FROM secrets WHERE environment = $1 AND path = $2",
            &[&env.as_str(), path],
        )
        .await?;
    }
    for meta in &changes.upsert_secrets {
        exec(
            tx,
            "INSERT INTO secrets (environment, path, owner, purpose, max_versions, cas_required, \
             custom, current_version, created_at, updated_at, incarnation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (environment, path) DO UPDATE SET owner = excluded.owner, \
             purpose = excluded.purpose, max_versions = excluded.max_versions, \
             cas_required = excluded.cas_required, custom = excluded.custom, \
             current_version = excluded.current_version, updated_at = excluded.updated_at",
            &[
                &meta.environment.as_str(),
                &meta.path,
                &meta.owner,
                &meta.purpose,
                &i64::from(meta.max_versions),
                &meta.cas_required,
                &serde_json::Value::Object(meta.custom.clone()).to_string(),
                &to_i64(meta.current_version),
                &meta.created_at.unix_ms(),
                &meta.updated_at.unix_ms(),
                &meta.incarnation,
            ],
        )
        .await?;
    }
    for v in &changes.upsert_secret_versions {
        exec(
            tx,
            "INSERT INTO secret_versions (environment, path, version, ciphertext, term, \
             created_at, deleted_at, destroyed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (environment, path, version) DO UPDATE SET \
             ciphertext = excluded.ciphertext, term = excluded.term, \
             deleted_at = excluded.deleted_at, destroyed = excluded.destroyed",
            &[
                &v.environment.as_str(),
                &v.path,
                &to_i64(v.version),
                &v.ciphertext,
                &v.ciphertext.as_deref().and_then(term_of),
                &v.created_at.unix_ms(),
                &v.deleted_at.map(Timestamp::unix_ms),
                &v.destroyed,
            ],
        )
        .await?;
    }
    for (env, path, version) in &changes.delete_secret_versions {
        exec(
            tx,
            "DELETE FROM secret_versions WHERE environment = $1 AND path = $2 AND version = $3",
            &[&env.as_str(), path, &to_i64(*version)],
        )
        .await?;
    }
    for lease in &changes.upsert_leases {
        exec(
            tx,
            "INSERT INTO vault_leases (id, kind, path, environment, key_id, secret_version, \
             actor, issued_at, expires_at, max_expires_at, ended_at, end_reason, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at, \
             ended_at = excluded.ended_at, end_reason = excluded.end_reason, mac = excluded.mac",
            &[
                &lease.id,
                &lease.kind.as_str(),
                &lease.path,
                &lease.environment.as_str(),
                &lease.key_id.map(|id| id.to_string()),
                &lease.secret_version.map(to_i64),
                &lease.actor,
                &lease.issued_at.unix_ms(),
                &lease.expires_at.unix_ms(),
                &lease.max_expires_at.unix_ms(),
                &lease.ended_at.map(Timestamp::unix_ms),
                &lease.end_reason,
                &mac_bytes(lease.mac),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Writes re-sealed values whose stored ciphertext is still the old one, and the progress.
pub(crate) async fn rewrap(
    tx: &Transaction<'_>,
    values: &[Rewrapped],
    progress: &RewrapProgress,
) -> Result<u64, StoreError> {
    let mut written = 0;
    for value in values {
        let term = i64::from(value.term);
        written += match &value.value {
            SealedValue::EnvironmentSecret {
                environment,
                ciphertext,
            } => {
                exec(
                    tx,
                    "UPDATE environments SET secret = $2, secret_term = $3 \
                     WHERE name = $1 AND secret = $4",
                    &[&environment.as_str(), ciphertext, &term, &value.old],
                )
                .await?
            }
            SealedValue::SecretVersion {
                environment,
                path,
                version,
                ciphertext,
            } => {
                exec(
                    tx,
                    "UPDATE secret_versions SET ciphertext = $4, term = $5 \
                     WHERE environment = $1 AND path = $2 AND version = $3 AND ciphertext = $6",
                    &[
                        &environment.as_str(),
                        path,
                        &to_i64(*version),
                        ciphertext,
                        &term,
                        &value.old,
                    ],
                )
                .await?
            }
        };
    }
    exec(
        tx,
        "UPDATE vault SET rewrap = $1 WHERE id = 1",
        &[&to_json(progress)?],
    )
    .await?;
    Ok(written)
}
