//! The vault's tables in SQLite: the vault record, keyrings, sealed environment secrets,
//! versioned secrets and leases.

use keyward_core::{EnvironmentName, KeyId, Timestamp};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{collect_rows, corrupt, mac_at, mac_bytes, map_write_error, to_i64, unavailable};
use keyward_store::vault::{
    LeaseKind, RewrapProgress, Rewrapped, SealedValue, SecretMeta, SecretVersion, StoredKeyring,
    VaultLease, VaultRecord,
};
use keyward_store::{Changes, StoreError};

fn get_err(e: rusqlite::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn env_name(text: &str) -> Result<EnvironmentName, StoreError> {
    EnvironmentName::parse(text).map_err(|_| corrupt("environment name"))
}

fn term_of(ciphertext: &[u8]) -> Option<i64> {
    // The barrier's header: a format byte, then the term as a big-endian u32.
    let bytes: [u8; 4] = ciphertext.get(1..5)?.try_into().ok()?;
    Some(i64::from(u32::from_be_bytes(bytes)))
}

/// Writes the vault part of `changes` inside the caller's transaction.
pub(super) fn apply(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    if let Some(vault) = &changes.vault {
        let rewrap = vault
            .rewrap
            .map(|r| serde_json::to_string(&r))
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO vault (id, tag, shares, threshold, sealed_root, term, created_at, rewrap, mac) \
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET \
             tag = excluded.tag, shares = excluded.shares, threshold = excluded.threshold, \
             sealed_root = excluded.sealed_root, term = excluded.term, rewrap = excluded.rewrap, \
             mac = excluded.mac",
            params![
                vault.tag.as_slice(),
                vault.shares,
                vault.threshold,
                vault.sealed_root,
                vault.term,
                vault.created_at.unix_ms(),
                rewrap,
                vault.mac.map(|m| m.0.to_vec()),
            ],
        )
        .map_err(map_write_error)?;
    }
    for ring in &changes.keyrings {
        tx.execute(
            "INSERT INTO keyrings (scope, blob) VALUES (?1, ?2) \
             ON CONFLICT (scope) DO UPDATE SET blob = excluded.blob",
            params![ring.scope, ring.sealed],
        )
        .map_err(map_write_error)?;
    }
    for (env, sealed) in &changes.environment_secrets {
        let changed = tx
            .execute(
                "UPDATE environments SET secret = ?2, secret_term = ?3 WHERE name = ?1",
                params![env.as_str(), sealed, term_of(sealed)],
            )
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(env.to_string()));
        }
    }
    for (env, path) in &changes.delete_secrets {
        tx.execute(
            "DELETE FROM secrets WHERE environment = ?1 AND path = ?2",
            params![env.as_str(), path],
        )
        .map_err(map_write_error)?;
    }
    for meta in &changes.upsert_secrets {
        tx.execute(
            "INSERT INTO secrets (environment, path, owner, purpose, max_versions, cas_required, \
             custom, current_version, created_at, updated_at, incarnation) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (environment, path) DO UPDATE SET owner = excluded.owner, \
             purpose = excluded.purpose, max_versions = excluded.max_versions, \
             cas_required = excluded.cas_required, custom = excluded.custom, \
             current_version = excluded.current_version, updated_at = excluded.updated_at",
            params![
                meta.environment.as_str(),
                meta.path,
                meta.owner,
                meta.purpose,
                meta.max_versions,
                i64::from(meta.cas_required),
                serde_json::Value::Object(meta.custom.clone()).to_string(),
                to_i64(meta.current_version),
                meta.created_at.unix_ms(),
                meta.updated_at.unix_ms(),
                meta.incarnation,
            ],
        )
        .map_err(map_write_error)?;
    }
    for v in &changes.upsert_secret_versions {
        tx.execute(
            "INSERT INTO secret_versions (environment, path, version, ciphertext, term, \
             created_at, deleted_at, destroyed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (environment, path, version) DO UPDATE SET \
             ciphertext = excluded.ciphertext, term = excluded.term, \
             deleted_at = excluded.deleted_at, destroyed = excluded.destroyed",
            params![
                v.environment.as_str(),
                v.path,
                to_i64(v.version),
                v.ciphertext,
                v.ciphertext.as_deref().and_then(term_of),
                v.created_at.unix_ms(),
                v.deleted_at.map(Timestamp::unix_ms),
                i64::from(v.destroyed),
            ],
        )
        .map_err(map_write_error)?;
    }
    for (env, path, version) in &changes.delete_secret_versions {
        tx.execute(
            "DELETE FROM secret_versions WHERE environment = ?1 AND path = ?2 AND version = ?3",
            params![env.as_str(), path, to_i64(*version)],
        )
        .map_err(map_write_error)?;
    }
    for lease in &changes.upsert_leases {
        tx.execute(
            "INSERT INTO vault_leases (id, kind, path, environment, key_id, secret_version, \
             actor, issued_at, expires_at, max_expires_at, ended_at, end_reason, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at, \
             ended_at = excluded.ended_at, end_reason = excluded.end_reason, mac = excluded.mac",
            params![
                lease.id,
                lease.kind.as_str(),
                lease.path,
                lease.environment.as_str(),
                lease.key_id.map(|id| id.to_string()),
                lease.secret_version.map(to_i64),
                lease.actor,
                lease.issued_at.unix_ms(),
                lease.expires_at.unix_ms(),
                lease.max_expires_at.unix_ms(),
                lease.ended_at.map(Timestamp::unix_ms),
                lease.end_reason,
                mac_bytes(lease.mac),
            ],
        )
        .map_err(map_write_error)?;
    }
    Ok(())
}

pub(super) fn vault(conn: &Connection) -> Result<Option<VaultRecord>, StoreError> {
    let row = conn
        .query_row(
            "SELECT tag, shares, threshold, sealed_root, term, created_at, rewrap, mac FROM vault \
             WHERE id = 1",
            [],
            |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, u8>(1)?,
                    row.get::<_, u8>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, u32>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, Option<Vec<u8>>>(7)?,
                ))
            },
        )
        .optional()
        .map_err(unavailable)?;
    let Some((tag, shares, threshold, sealed_root, term, created_at, rewrap, mac)) = row else {
        return Ok(None);
    };
    Ok(Some(VaultRecord {
        tag: tag.try_into().map_err(|_| corrupt("vault tag"))?,
        shares,
        threshold,
        sealed_root,
        term,
        created_at: Timestamp::from_unix_ms(created_at),
        rewrap: rewrap
            .as_deref()
            .map(|r| serde_json::from_str(r).map_err(|_| corrupt("rewrap progress")))
            .transpose()?,
        mac: mac
            .map(|m| {
                m.try_into()
                    .map(keyward_core::RecordMac)
                    .map_err(|_| corrupt("vault tag"))
            })
            .transpose()?,
    }))
}

pub(super) fn keyrings(conn: &Connection) -> Result<Vec<StoredKeyring>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT scope, blob FROM keyrings ORDER BY scope")
        .map_err(unavailable)?;
    let rows = stmt.query([]).map_err(unavailable)?;
    collect_rows(rows, |row| {
        Ok(StoredKeyring {
            scope: row.get(0).map_err(get_err)?,
            sealed: row.get(1).map_err(get_err)?,
        })
    })
}

pub(super) fn environment_secrets(
    conn: &Connection,
) -> Result<Vec<(EnvironmentName, Vec<u8>)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, secret FROM environments WHERE secret IS NOT NULL ORDER BY name",
        )
        .map_err(unavailable)?;
    let rows = stmt.query([]).map_err(unavailable)?;
    collect_rows(rows, |row| {
        let name: String = row.get(0).map_err(get_err)?;
        Ok((env_name(&name)?, row.get(1).map_err(get_err)?))
    })
}

const SECRET_COLUMNS: &str = "environment, path, owner, purpose, max_versions, cas_required, \
    custom, current_version, created_at, updated_at, incarnation";

fn secret_from_row(row: &Row<'_>) -> Result<SecretMeta, StoreError> {
    let env: String = row.get(0).map_err(get_err)?;
    let custom: String = row.get(6).map_err(get_err)?;
    let custom = match serde_json::from_str(&custom) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err(corrupt("secret custom metadata")),
    };
    Ok(SecretMeta {
        environment: env_name(&env)?,
        path: row.get(1).map_err(get_err)?,
        owner: row.get(2).map_err(get_err)?,
        purpose: row.get(3).map_err(get_err)?,
        max_versions: row.get(4).map_err(get_err)?,
        cas_required: row.get::<_, i64>(5).map_err(get_err)? != 0,
        custom,
        current_version: u64::try_from(row.get::<_, i64>(7).map_err(get_err)?).unwrap_or(0),
        created_at: Timestamp::from_unix_ms(row.get(8).map_err(get_err)?),
        updated_at: Timestamp::from_unix_ms(row.get(9).map_err(get_err)?),
        incarnation: row.get(10).map_err(get_err)?,
    })
}

pub(super) fn secret(
    conn: &Connection,
    env: &EnvironmentName,
    path: &str,
) -> Result<Option<SecretMeta>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE environment = ?1 AND path = ?2"
        ))
        .map_err(unavailable)?;
    let rows = stmt
        .query(params![env.as_str(), path])
        .map_err(unavailable)?;
    Ok(collect_rows(rows, secret_from_row)?.into_iter().next())
}

pub(super) fn list_secrets(
    conn: &Connection,
    env: &EnvironmentName,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<SecretMeta>, StoreError> {
    // Prefix match by range, so LIKE's wildcards in a path mean nothing.
    let mut upper = prefix.to_owned();
    upper.push(char::MAX);
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE environment = ?1 AND path >= ?2 \
             AND path < ?3 AND path > ?4 ORDER BY path LIMIT ?5"
        ))
        .map_err(unavailable)?;
    let rows = stmt
        .query(params![
            env.as_str(),
            prefix,
            upper,
            after.unwrap_or(""),
            limit
        ])
        .map_err(unavailable)?;
    collect_rows(rows, secret_from_row)
}

const VERSION_COLUMNS: &str =
    "environment, path, version, ciphertext, created_at, deleted_at, destroyed";

fn version_from_row(row: &Row<'_>) -> Result<SecretVersion, StoreError> {
    let env: String = row.get(0).map_err(get_err)?;
    Ok(SecretVersion {
        environment: env_name(&env)?,
        path: row.get(1).map_err(get_err)?,
        version: u64::try_from(row.get::<_, i64>(2).map_err(get_err)?).unwrap_or(0),
        ciphertext: row.get(3).map_err(get_err)?,
        created_at: Timestamp::from_unix_ms(row.get(4).map_err(get_err)?),
        deleted_at: row
            .get::<_, Option<i64>>(5)
            .map_err(get_err)?
            .map(Timestamp::from_unix_ms),
        destroyed: row.get::<_, i64>(6).map_err(get_err)? != 0,
    })
}

pub(super) fn secret_versions(
    conn: &Connection,
    env: &EnvironmentName,
    path: &str,
    version: Option<u64>,
) -> Result<Vec<SecretVersion>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM secret_versions WHERE environment = ?1 AND path = ?2 \
             AND (?3 IS NULL OR version = ?3) ORDER BY version"
        ))
        .map_err(unavailable)?;
    let rows = stmt
        .query(params![env.as_str(), path, version.map(to_i64)])
        .map_err(unavailable)?;
    collect_rows(rows, version_from_row)
}

const LEASE_COLUMNS: &str = "id, kind, path, environment, key_id, secret_version, actor, \
    issued_at, expires_at, max_expires_at, ended_at, end_reason, mac";

fn lease_from_row(row: &Row<'_>) -> Result<VaultLease, StoreError> {
    let kind: String = row.get(1).map_err(get_err)?;
    let env: String = row.get(3).map_err(get_err)?;
    let key_id: Option<String> = row.get(4).map_err(get_err)?;
    let time = |i: usize| -> Result<Option<Timestamp>, StoreError> {
        Ok(row
            .get::<_, Option<i64>>(i)
            .map_err(get_err)?
            .map(Timestamp::from_unix_ms))
    };
    Ok(VaultLease {
        id: row.get(0).map_err(get_err)?,
        kind: match kind.as_str() {
            "key" => LeaseKind::Key,
            "secret" => LeaseKind::Secret,
            _ => return Err(corrupt("lease kind")),
        },
        path: row.get(2).map_err(get_err)?,
        environment: env_name(&env)?,
        key_id: key_id
            .map(|id| id.parse::<KeyId>().map_err(|_| corrupt("lease key id")))
            .transpose()?,
        secret_version: row
            .get::<_, Option<i64>>(5)
            .map_err(get_err)?
            .and_then(|v| u64::try_from(v).ok()),
        actor: row.get(6).map_err(get_err)?,
        issued_at: time(7)?.ok_or_else(|| corrupt("lease issued_at"))?,
        expires_at: time(8)?.ok_or_else(|| corrupt("lease expires_at"))?,
        max_expires_at: time(9)?.ok_or_else(|| corrupt("lease max_expires_at"))?,
        ended_at: time(10)?,
        end_reason: row.get(11).map_err(get_err)?,
        mac: mac_at(row, 12)?,
    })
}

pub(super) fn lease(conn: &Connection, id: &str) -> Result<Option<VaultLease>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {LEASE_COLUMNS} FROM vault_leases WHERE id = ?1"
        ))
        .map_err(unavailable)?;
    let rows = stmt.query([id]).map_err(unavailable)?;
    Ok(collect_rows(rows, lease_from_row)?.into_iter().next())
}

pub(super) fn leases(
    conn: &Connection,
    prefix: &str,
    open_only: bool,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<VaultLease>, StoreError> {
    let mut upper = prefix.to_owned();
    upper.push(char::MAX);
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {LEASE_COLUMNS} FROM vault_leases WHERE path >= ?1 AND path < ?2 \
             AND id > ?3 AND (?4 = 0 OR ended_at IS NULL) ORDER BY id LIMIT ?5"
        ))
        .map_err(unavailable)?;
    let rows = stmt
        .query(params![
            prefix,
            upper,
            after.unwrap_or(""),
            i64::from(open_only),
            limit
        ])
        .map_err(unavailable)?;
    collect_rows(rows, lease_from_row)
}

pub(super) fn lapsed_leases(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
) -> Result<Vec<VaultLease>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {LEASE_COLUMNS} FROM vault_leases WHERE ended_at IS NULL \
             AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2"
        ))
        .map_err(unavailable)?;
    let rows = stmt
        .query(params![now.unix_ms(), limit])
        .map_err(unavailable)?;
    collect_rows(rows, lease_from_row)
}

pub(super) fn stale_sealed(
    conn: &Connection,
    term: u32,
    limit: u32,
) -> Result<Vec<SealedValue>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, secret FROM environments WHERE secret IS NOT NULL AND secret_term < ?1 \
             ORDER BY name LIMIT ?2",
        )
        .map_err(unavailable)?;
    let rows = stmt.query(params![term, limit]).map_err(unavailable)?;
    out.extend(collect_rows(rows, |row| {
        let name: String = row.get(0).map_err(get_err)?;
        Ok(SealedValue::EnvironmentSecret {
            environment: env_name(&name)?,
            ciphertext: row.get(1).map_err(get_err)?,
        })
    })?);
    let left = limit.saturating_sub(u32::try_from(out.len()).unwrap_or(u32::MAX));
    let mut stmt = conn
        .prepare_cached(
            "SELECT environment, path, version, ciphertext FROM secret_versions \
             WHERE ciphertext IS NOT NULL AND term < ?1 LIMIT ?2",
        )
        .map_err(unavailable)?;
    let rows = stmt.query(params![term, left]).map_err(unavailable)?;
    out.extend(collect_rows(rows, |row| {
        let env: String = row.get(0).map_err(get_err)?;
        Ok(SealedValue::SecretVersion {
            environment: env_name(&env)?,
            path: row.get(1).map_err(get_err)?,
            version: u64::try_from(row.get::<_, i64>(2).map_err(get_err)?).unwrap_or(0),
            ciphertext: row.get(3).map_err(get_err)?,
        })
    })?);
    Ok(out)
}

pub(super) fn count_stale_sealed(conn: &Connection, term: u32) -> Result<u64, StoreError> {
    conn.query_row(
        "SELECT (SELECT count(*) FROM environments WHERE secret IS NOT NULL AND secret_term < ?1) \
         + (SELECT count(*) FROM secret_versions WHERE ciphertext IS NOT NULL AND term < ?1)",
        [term],
        |row| row.get::<_, i64>(0),
    )
    .map_err(unavailable)
    .map(|n| u64::try_from(n).unwrap_or(0))
}

pub(super) fn rewrap(
    conn: &mut Connection,
    values: &[Rewrapped],
    progress: &RewrapProgress,
) -> Result<u64, StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    let mut written = 0;
    for value in values {
        let changed = match &value.value {
            SealedValue::EnvironmentSecret {
                environment,
                ciphertext,
            } => tx.execute(
                "UPDATE environments SET secret = ?2, secret_term = ?3 \
                 WHERE name = ?1 AND secret = ?4",
                params![environment.as_str(), ciphertext, value.term, value.old],
            ),
            SealedValue::SecretVersion {
                environment,
                path,
                version,
                ciphertext,
            } => tx.execute(
                "UPDATE secret_versions SET ciphertext = ?4, term = ?5 \
                 WHERE environment = ?1 AND path = ?2 AND version = ?3 AND ciphertext = ?6",
                params![
                    environment.as_str(),
                    path,
                    to_i64(*version),
                    ciphertext,
                    value.term,
                    value.old
                ],
            ),
        }
        .map_err(map_write_error)?;
        written += changed as u64;
    }
    let progress =
        serde_json::to_string(progress).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute("UPDATE vault SET rewrap = ?1 WHERE id = 1", [progress])
        .map_err(map_write_error)?;
    tx.commit().map_err(unavailable)?;
    Ok(written)
}
