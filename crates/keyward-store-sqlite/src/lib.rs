//! keyward's embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a write that
//! returned is on disk. One connection writes; readers come from a small pool and never block
//! the writer. Blocking calls run on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use keyward_core::audit::{AuditEntry, GENESIS_HASH};
use keyward_core::{
    EnvironmentName, KeyHash, KeyId, KeyRecord, KeyStatus, KeySummary, Permission, PlanName,
    PlanRecord, QuotaState, RecordMac, RoleName, RoleRecord, ServiceName, Timestamp,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use keyward_store::vault::{
    RewrapProgress, Rewrapped, SealedValue, SecretMeta, SecretVersion, StoredKeyring, VaultLease,
    VaultRecord,
};
use keyward_store::{
    AuditCheckpoint, AuditHead, Changes, EnvironmentRecord, Handover, KeyQuery, KeyUsage, Store,
    StoreError,
};

mod vault;
mod webhooks;

/// Migrations in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_access.sql"),
    include_str!("../migrations/sqlite/0003_plans.sql"),
    include_str!("../migrations/sqlite/0004_quotas.sql"),
    include_str!("../migrations/sqlite/0005_events.sql"),
    include_str!("../migrations/sqlite/0006_graduated.sql"),
    include_str!("../migrations/sqlite/0007_plan_quotas.sql"),
    include_str!("../migrations/sqlite/0008_vault.sql"),
    include_str!("../migrations/sqlite/0009_integrity.sql"),
    include_str!("../migrations/sqlite/0010_lease_integrity.sql"),
    include_str!("../migrations/sqlite/0011_rotation.sql"),
    include_str!("../migrations/sqlite/0012_webhooks.sql"),
    include_str!("../migrations/sqlite/0013_delivery.sql"),
    include_str!("../migrations/sqlite/0014_inventory.sql"),
];

/// Readers kept open for reuse; more are opened under load and closed after. Opening one costs
/// far more than a lookup (schema parse, a fresh page cache), so keep enough for the blocking
/// pool's usual concurrency.
const IDLE_READERS: usize = 16;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// The change feed's listeners, told of each commit while the writer is still held.
    listeners: Mutex<Vec<std::sync::Weak<dyn keyward_store::ChangeListener>>>,
}

impl Inner {
    /// Tells every live listener of a committed change; called with the writer held, so
    /// listeners hear of commits one at a time and in order.
    fn notify(&self, changes: &Changes) {
        let listeners: Vec<_> = {
            let mut list = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|l| l.strong_count() > 0);
            list.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        for listener in listeners {
            listener.applied(changes);
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn map_write_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(code, _)
            if code.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => unavailable(e),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a connection half-written: SQLite rolls back
    // an unfinished transaction when it is dropped. So a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut writer = open_connection(path, true)?;
        migrate(&mut writer)?;
        // Checkpoints copy the WAL into the database and fsync both. Under a stream of small
        // commits (read audits) the default of every 1000 pages fsyncs several times a second in
        // the middle of requests; `sync` checkpoints once a second instead, and this bounds
        // the WAL (about 40 MiB) if syncs stop.
        writer
            .pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(unavailable)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                listeners: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => open_connection(&inner.path, false)?,
            };
            let result = f(&conn);
            let mut idle = lock(&inner.readers);
            if idle.len() < IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(unavailable)?
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(unavailable)?
    }
}

fn open_connection(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(unavailable)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let done: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(unavailable)?;
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {done}, newer than this keyward knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction().map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

/// One node's quota spending, merged into the stored count (see `UsageStore::spend_quotas`):
/// the same period subtracts, a newer one replaces, an older one is dropped.
const QUOTA_SPEND_SQL: &str = "UPDATE keys SET \
    quota_remaining = CASE \
      WHEN quota_period_start = ?2 THEN max(quota_remaining - ?4, 0) \
      WHEN quota_period_start IS NULL OR quota_period_start < ?2 THEN ?3 \
      ELSE quota_remaining END, \
    quota_period_start = CASE \
      WHEN quota_period_start IS NULL OR quota_period_start < ?2 THEN ?2 \
      ELSE quota_period_start END \
    WHERE id = ?1 RETURNING quota_remaining, quota_period_start";

const KEY_COLUMNS: &str = "id, service, environment, hash, start, name, owner, purpose, \
    permissions, meta, created_at, updated_at, expires_at, status, revoked_at, \
    revocation_reason, rolled_from, rolled_to, last_used_at, uses, access, next_grant_expiry, mac, \
    lifecycle";

/// Maps every row of a query, stopping at the first error.
fn collect_rows<T>(
    mut rows: rusqlite::Rows<'_>,
    mut map: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        out.push(map(row)?);
    }
    Ok(out)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn key_from_row(row: &Row<'_>) -> Result<KeyRecord, StoreError> {
    let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
    let id: String = row.get(0).map_err(get_err)?;
    let service: String = row.get(1).map_err(get_err)?;
    let environment: String = row.get(2).map_err(get_err)?;
    let hash: Vec<u8> = row.get(3).map_err(get_err)?;
    let permissions: String = row.get(8).map_err(get_err)?;
    let meta: String = row.get(9).map_err(get_err)?;
    let status: String = row.get(13).map_err(get_err)?;
    let rolled_from: Option<String> = row.get(16).map_err(get_err)?;
    let rolled_to: Option<String> = row.get(17).map_err(get_err)?;
    let uses: i64 = row.get(19).map_err(get_err)?;
    let access: String = row.get(20).map_err(get_err)?;
    let lifecycle: String = row.get(23).map_err(get_err)?;
    let ts = |i: usize| -> Result<Option<Timestamp>, StoreError> {
        let v: Option<i64> = row.get(i).map_err(get_err)?;
        Ok(v.map(Timestamp::from_unix_ms))
    };
    let parse_id = |s: &str| s.parse::<KeyId>().map_err(|_| corrupt("key id"));
    let permissions: Vec<String> =
        serde_json::from_str(&permissions).map_err(|_| corrupt("permissions"))?;
    Ok(KeyRecord {
        id: parse_id(&id)?,
        service: ServiceName::parse(&service).ok_or_else(|| corrupt("service"))?,
        environment: EnvironmentName::parse(&environment).map_err(|_| corrupt("environment"))?,
        hash: KeyHash(hash.try_into().map_err(|_| corrupt("hash"))?),
        start: row.get(4).map_err(get_err)?,
        name: row.get(5).map_err(get_err)?,
        owner: row.get(6).map_err(get_err)?,
        purpose: row.get(7).map_err(get_err)?,
        permissions: permissions
            .iter()
            .map(|p| Permission::parse(p).map_err(|_| corrupt("permission")))
            .collect::<Result<_, _>>()?,
        meta: serde_json::from_str(&meta).map_err(|_| corrupt("meta"))?,
        created_at: ts(10)?.ok_or_else(|| corrupt("created_at"))?,
        updated_at: ts(11)?.ok_or_else(|| corrupt("updated_at"))?,
        expires_at: ts(12)?,
        status: KeyStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        revoked_at: ts(14)?,
        revocation_reason: row.get(15).map_err(get_err)?,
        rolled_from: rolled_from.as_deref().map(parse_id).transpose()?,
        rolled_to: rolled_to.as_deref().map(parse_id).transpose()?,
        last_used_at: ts(18)?,
        uses: u64::try_from(uses).unwrap_or(0),
        access: serde_json::from_str(&access).map_err(|_| corrupt("access"))?,
        lifecycle: serde_json::from_str(&lifecycle).map_err(|_| corrupt("lifecycle"))?,
        mac: mac_at(row, 22)?,
    })
}

const SUMMARY_COLUMNS: &str =
    "id, environment, start, name, owner, created_at, expires_at, access, lifecycle";

fn summary_from_row(row: &Row<'_>) -> Result<KeySummary, StoreError> {
    let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
    let text = |i: usize| -> Result<&str, StoreError> {
        row.get_ref(i)
            .map_err(get_err)?
            .as_str()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let (roles, rotation) = keyward_store::summary_fields(text(7)?, text(8)?)?;
    let expires_at: Option<i64> = row.get(6).map_err(get_err)?;
    Ok(KeySummary {
        id: text(0)?.parse().map_err(|_| corrupt("key id"))?,
        environment: EnvironmentName::parse(text(1)?).map_err(|_| corrupt("environment"))?,
        start: text(2)?.to_owned(),
        name: text(3)?.to_owned(),
        owner: text(4)?.to_owned(),
        created_at: Timestamp::from_unix_ms(row.get(5).map_err(get_err)?),
        expires_at: expires_at.map(Timestamp::from_unix_ms),
        roles,
        rotation,
    })
}

const HANDOVER_COLUMNS: &str = "successor, predecessor, environment, sealed, expires_at, \
    attempts, next_attempt_at, last_error";

fn handover_from_row(row: &Row<'_>) -> Result<Handover, StoreError> {
    let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
    let id = |i: usize| -> Result<KeyId, StoreError> {
        let text: String = row.get(i).map_err(get_err)?;
        text.parse().map_err(|_| corrupt("handover key id"))
    };
    let environment: String = row.get(2).map_err(get_err)?;
    let attempts: i64 = row.get(5).map_err(get_err)?;
    let next: Option<i64> = row.get(6).map_err(get_err)?;
    Ok(Handover {
        successor: id(0)?,
        predecessor: id(1)?,
        environment: EnvironmentName::parse(&environment)
            .map_err(|_| corrupt("handover environment"))?,
        sealed: row.get(3).map_err(get_err)?,
        expires_at: Timestamp::from_unix_ms(row.get(4).map_err(get_err)?),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_at: next.map(Timestamp::from_unix_ms),
        last_error: row.get(7).map_err(get_err)?,
    })
}

/// The integrity tag in column `i`, if any.
fn mac_at(row: &Row<'_>, i: usize) -> Result<Option<RecordMac>, StoreError> {
    let bytes: Option<Vec<u8>> = row.get(i).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    bytes
        .map(|b| {
            b.try_into()
                .map(RecordMac)
                .map_err(|_| corrupt("integrity tag"))
        })
        .transpose()
}

fn mac_bytes(mac: Option<RecordMac>) -> Option<Vec<u8>> {
    mac.map(|m| m.0.to_vec())
}

fn lifecycle_json(key: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(&key.lifecycle).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn rotation_json(role: &RoleRecord) -> Result<Option<String>, StoreError> {
    role.rotation
        .map(|r| serde_json::to_string(&r))
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn access_json(key: &KeyRecord) -> Result<String, StoreError> {
    serde_json::to_string(&key.access).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn permission_list(permissions: &[Permission]) -> String {
    let list: Vec<&str> = permissions.iter().map(Permission::as_str).collect();
    serde_json::Value::from(list).to_string()
}

fn role_from_row(row: &Row<'_>) -> Result<RoleRecord, StoreError> {
    let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
    let name: String = row.get(0).map_err(get_err)?;
    let permissions: String = row.get(2).map_err(get_err)?;
    let rotation: Option<String> = row.get(7).map_err(get_err)?;
    let permissions: Vec<String> =
        serde_json::from_str(&permissions).map_err(|_| corrupt("role permissions"))?;
    Ok(RoleRecord {
        name: RoleName::parse(&name).map_err(|_| corrupt("role name"))?,
        description: row.get(1).map_err(get_err)?,
        permissions: permissions
            .iter()
            .map(|p| Permission::parse(p).map_err(|_| corrupt("role permission")))
            .collect::<Result<_, _>>()?,
        builtin: row.get::<_, i64>(3).map_err(get_err)? != 0,
        created_at: Timestamp::from_unix_ms(row.get(4).map_err(get_err)?),
        updated_at: Timestamp::from_unix_ms(row.get(5).map_err(get_err)?),
        rotation: rotation
            .as_deref()
            .map(|r| serde_json::from_str(r).map_err(|_| corrupt("role rotation")))
            .transpose()?,
        mac: mac_at(row, 6)?,
    })
}

fn permissions_json(key: &KeyRecord) -> String {
    permission_list(&key.permissions)
}

fn meta_json(key: &KeyRecord) -> String {
    serde_json::Value::Object(key.meta.clone()).to_string()
}

fn policy_json(env: &EnvironmentRecord) -> Result<String, StoreError> {
    serde_json::to_string(&env.policy).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn audit_from_row(row: &Row<'_>) -> Result<AuditEntry, StoreError> {
    let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
    let seq: i64 = row.get(0).map_err(get_err)?;
    let details: String = row.get(5).map_err(get_err)?;
    Ok(AuditEntry {
        seq: u64::try_from(seq).map_err(|_| corrupt("audit seq"))?,
        ts: Timestamp::from_unix_ms(row.get(1).map_err(get_err)?),
        actor: row.get(2).map_err(get_err)?,
        action: row.get(3).map_err(get_err)?,
        target: row.get(4).map_err(get_err)?,
        details: serde_json::from_str(&details).map_err(|_| corrupt("audit details"))?,
        prev_hash: row.get(6).map_err(get_err)?,
        hash: row.get(7).map_err(get_err)?,
    })
}

fn head(conn: &Connection) -> Result<Option<AuditHead>, StoreError> {
    conn.prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .map_err(unavailable)?
        .query_row([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .optional()
        .map_err(unavailable)
        .map(|found| {
            found.map(|(seq, hash)| AuditHead {
                seq: u64::try_from(seq).unwrap_or(0),
                hash,
            })
        })
}

fn apply_changes(conn: &mut Connection, changes: &Changes) -> Result<(), StoreError> {
    if changes.relaxed {
        // In WAL mode, NORMAL writes the commit to the WAL without an fsync: it survives a
        // process crash; the next FULL commit (or sync) makes it survive a machine crash too.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unavailable)?;
        let result = apply_in_transaction(conn, changes);
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(unavailable)?;
        return result;
    }
    apply_in_transaction(conn, changes)
}

fn apply_in_transaction(conn: &mut Connection, changes: &Changes) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    if !changes.audit.is_empty() {
        let (mut seq, mut hash) = match head(&tx)? {
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
        tx.execute(
            "INSERT INTO environments (name, created_at, policy, mac) VALUES (?1, ?2, ?3, ?4)",
            params![
                env.name.as_str(),
                env.created_at.unix_ms(),
                policy_json(env)?,
                mac_bytes(env.mac),
            ],
        )
        .map_err(map_write_error)?;
    }
    for env in &changes.update_environments {
        let changed = tx
            .execute(
                "UPDATE environments SET policy = ?2, mac = ?3 WHERE name = ?1",
                params![env.name.as_str(), policy_json(env)?, mac_bytes(env.mac)],
            )
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(env.name.to_string()));
        }
    }
    for role in &changes.upsert_roles {
        tx.execute(
            "INSERT INTO roles (name, description, permissions, builtin, created_at, updated_at, mac, rotation) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (name) DO UPDATE SET \
             description = excluded.description, permissions = excluded.permissions, \
             updated_at = excluded.updated_at, mac = excluded.mac, rotation = excluded.rotation",
            params![
                role.name.as_str(),
                role.description,
                permission_list(&role.permissions),
                i64::from(role.builtin),
                role.created_at.unix_ms(),
                role.updated_at.unix_ms(),
                mac_bytes(role.mac),
                rotation_json(role)?,
            ],
        )
        .map_err(map_write_error)?;
    }
    for plan in &changes.upsert_plans {
        let corrupt_json = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
        let limits = serde_json::to_string(&plan.ratelimits).map_err(corrupt_json)?;
        let graduated = plan
            .graduated
            .map(|g| serde_json::to_string(&g))
            .transpose()
            .map_err(corrupt_json)?;
        let quota = plan
            .quota
            .map(|q| serde_json::to_string(&q))
            .transpose()
            .map_err(corrupt_json)?;
        tx.execute(
            "INSERT INTO plans (name, description, ratelimits, graduated, created_at, updated_at, quota, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (name) DO UPDATE SET \
             description = excluded.description, ratelimits = excluded.ratelimits, \
             graduated = excluded.graduated, quota = excluded.quota, updated_at = excluded.updated_at, \
             mac = excluded.mac",
            params![
                plan.name.as_str(),
                plan.description,
                limits,
                graduated,
                plan.created_at.unix_ms(),
                plan.updated_at.unix_ms(),
                quota,
                mac_bytes(plan.mac),
            ],
        )
        .map_err(map_write_error)?;
    }
    for name in &changes.delete_plans {
        let changed = tx
            .execute("DELETE FROM plans WHERE name = ?1", params![name.as_str()])
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
    }
    for name in &changes.delete_roles {
        let changed = tx
            .execute("DELETE FROM roles WHERE name = ?1", params![name.as_str()])
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
    }
    for key in &changes.insert_keys {
        tx.prepare_cached(&format!(
                "INSERT INTO keys ({KEY_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
            ))
        .map_err(unavailable)?
        .execute(params![
                key.id.to_string(),
                key.service.as_str(),
                key.environment.as_str(),
                key.hash.0.as_slice(),
                key.start,
                key.name,
                key.owner,
                key.purpose,
                permissions_json(key),
                meta_json(key),
                key.created_at.unix_ms(),
                key.updated_at.unix_ms(),
                key.expires_at.map(Timestamp::unix_ms),
                key.status.as_str(),
                key.revoked_at.map(Timestamp::unix_ms),
                key.revocation_reason,
                key.rolled_from.map(|id| id.to_string()),
                key.rolled_to.map(|id| id.to_string()),
                key.last_used_at.map(Timestamp::unix_ms),
                to_i64(key.uses),
                access_json(key)?,
                key.access.next_grant_expiry().map(Timestamp::unix_ms),
                mac_bytes(key.mac),
                lifecycle_json(key)?,
            ],
        )
        .map_err(map_write_error)?;
    }
    for key in &changes.update_keys {
        let changed = tx
            .prepare_cached(
                "UPDATE keys SET name = ?2, owner = ?3, purpose = ?4, permissions = ?5, meta = ?6, \
                 updated_at = ?7, expires_at = ?8, status = ?9, revoked_at = ?10, \
                 revocation_reason = ?11, rolled_to = ?12, access = ?13, next_grant_expiry = ?14, \
                 mac = ?15, lifecycle = ?16 WHERE id = ?1",
            )
            .map_err(unavailable)?
            .execute(params![
                key.id.to_string(),
                key.name,
                key.owner,
                key.purpose,
                permissions_json(key),
                meta_json(key),
                key.updated_at.unix_ms(),
                key.expires_at.map(Timestamp::unix_ms),
                key.status.as_str(),
                key.revoked_at.map(Timestamp::unix_ms),
                key.revocation_reason,
                key.rolled_to.map(|id| id.to_string()),
                access_json(key)?,
                key.access.next_grant_expiry().map(Timestamp::unix_ms),
                mac_bytes(key.mac),
                lifecycle_json(key)?,
            ])
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(key.id.to_string()));
        }
    }
    for handover in &changes.insert_handovers {
        tx.execute(
            "INSERT INTO key_handovers (successor, predecessor, environment, sealed, expires_at, \
             attempts, next_attempt_at, last_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                handover.successor.to_string(),
                handover.predecessor.to_string(),
                handover.environment.as_str(),
                handover.sealed,
                handover.expires_at.unix_ms(),
                i64::from(handover.attempts),
                handover.next_attempt_at.map(Timestamp::unix_ms),
                handover.last_error,
            ],
        )
        .map_err(map_write_error)?;
    }
    for handover in &changes.update_handovers {
        let changed = tx
            .execute(
                "UPDATE key_handovers SET attempts = ?2, next_attempt_at = ?3, last_error = ?4, \
                 expires_at = ?5 WHERE predecessor = ?1",
                params![
                    handover.predecessor.to_string(),
                    i64::from(handover.attempts),
                    handover.next_attempt_at.map(Timestamp::unix_ms),
                    handover.last_error,
                    handover.expires_at.unix_ms(),
                ],
            )
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!(
                "handover of {}",
                handover.predecessor
            )));
        }
    }
    for predecessor in &changes.delete_handovers {
        let changed = tx
            .execute(
                "DELETE FROM key_handovers WHERE predecessor = ?1",
                [predecessor.to_string()],
            )
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("handover of {predecessor}")));
        }
    }
    // After the key inserts: a new key's quota is set in the same write.
    for (id, state) in &changes.set_quotas {
        let changed = tx
            .execute(
                "UPDATE keys SET quota_remaining = ?2, quota_period_start = ?3 WHERE id = ?1",
                params![
                    id.to_string(),
                    state.map(|s| to_i64(s.remaining)),
                    state.map(|s| s.period_start.unix_ms()),
                ],
            )
            .map_err(map_write_error)?;
        if changed == 0 {
            return Err(StoreError::NotFound(id.to_string()));
        }
    }
    vault::apply(&tx, changes)?;
    webhooks::apply(&tx, changes)?;
    if let Some(checkpoint) = &changes.audit_checkpoint {
        tx.prepare_cached(
            "INSERT INTO audit_checkpoint (id, seq, hash, revoked, mac) VALUES (1, ?1, ?2, ?4, ?3) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
             revoked = excluded.revoked, mac = excluded.mac",
        )
        .map_err(unavailable)?
        .execute(params![
            to_i64(checkpoint.seq),
            checkpoint.hash,
            checkpoint.mac.0.as_slice(),
            to_i64(checkpoint.revoked)
        ])
        .map_err(map_write_error)?;
    }
    for entry in &changes.audit {
        tx.prepare_cached(
            "INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(unavailable)?
        .execute(params![
            to_i64(entry.seq),
            entry.ts.unix_ms(),
            entry.actor,
            entry.action,
            entry.target,
            entry.details.to_string(),
            entry.prev_hash,
            entry.hash,
        ])
        .map_err(map_write_error)?;
    }
    tx.commit().map_err(unavailable)
}

#[async_trait]
impl Store for SqliteStore {
    async fn apply(&self, changes: Changes) -> Result<(), StoreError> {
        // A relaxed commit waits for no fsync: it takes microseconds, less than any hand-off
        // (to the blocking pool, or of this worker's queue to another thread with
        // block_in_place, which costs a thread switch per commit), so it runs right here when
        // the writer is free. If another write holds it (perhaps waiting on its fsync), this
        // one goes to the blocking pool like a durable commit rather than stall the worker.
        if changes.relaxed {
            let free = match self.inner.writer.try_lock() {
                Ok(writer) => Some(writer),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut writer) = free {
                apply_changes(&mut writer, &changes)?;
                self.inner.notify(&changes);
                return Ok(());
            }
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut writer = lock(&inner.writer);
            apply_changes(&mut writer, &changes)?;
            inner.notify(&changes);
            Ok(())
        })
        .await
        .map_err(unavailable)?
    }

    fn subscribe(&self, listener: std::sync::Weak<dyn keyward_store::ChangeListener>) {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // A durable (FULL) commit syncs the WAL, and with it every relaxed commit before it.
        self.write(|conn| {
            conn.execute_batch(
                "BEGIN IMMEDIATE; \
                 INSERT INTO sync_marker (id, n) VALUES (1, 1) \
                 ON CONFLICT (id) DO UPDATE SET n = n + 1; \
                 COMMIT;",
            )
            .map_err(unavailable)
        })
        .await?;
        // On a reader connection, so the writer is never held meanwhile: a passive checkpoint
        // runs beside writers and copies what readers no longer need.
        self.read(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(unavailable)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(unavailable)
        })
        .await
    }
}

#[async_trait]
impl keyward_store::KeyStore for SqliteStore {
    async fn count_keys_with_plan(&self, plan: PlanName) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let count: i64 = conn
                .query_row(
                    "SELECT count(*) FROM keys WHERE status != 'revoked' AND json_extract(access, '$.plan') = ?1",
                    params![plan.as_str()],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn count_keys_with_role(&self, role: RoleName) -> Result<u64, StoreError> {
        self.read(move |conn| {
            let count: i64 = conn
                .query_row(
                    "SELECT count(*) FROM keys WHERE status != 'revoked' AND ( \
                       EXISTS (SELECT 1 FROM json_each(keys.access, '$.roles') WHERE value = ?1) OR \
                       EXISTS (SELECT 1 FROM json_each(keys.access, '$.grants') WHERE json_extract(value, '$.role') = ?1))",
                    params![role.as_str()],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn keys_with_lapsed_grants(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys WHERE next_grant_expiry <= ?1 AND status != 'revoked' \
                     ORDER BY next_grant_expiry LIMIT ?2"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query(params![now.unix_ms(), i64::from(limit)])
                .map_err(unavailable)?;
            collect_rows(rows, key_from_row)
        })
        .await
    }

    async fn key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"))
                .map_err(unavailable)?;
            let mut rows = stmt.query([id.to_string()]).map_err(unavailable)?;
            match rows.next().map_err(unavailable)? {
                Some(row) => key_from_row(row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn key_by_hash(&self, hash: KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE hash = ?1"))
                .map_err(unavailable)?;
            let mut rows = stmt.query([hash.0.as_slice()]).map_err(unavailable)?;
            match rows.next().map_err(unavailable)? {
                Some(row) => key_from_row(row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_keys(&self, query: KeyQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(move |conn| {
            // Only the filters given, so each can use its index (owner, environment, start).
            use rusqlite::types::Value as Sql;
            let mut sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE 1 = 1");
            let mut args: Vec<Sql> = Vec::new();
            let mut filter = |clause: &str, values: Vec<Sql>| {
                sql.push_str(" AND ");
                sql.push_str(clause);
                args.extend(values);
            };
            if let Some(service) = query.service {
                filter("service = ?", vec![Sql::Text(service.as_str().into())]);
            }
            if let Some(environment) = &query.environment {
                filter("environment = ?", vec![Sql::Text(environment.to_string())]);
            }
            if let Some(status) = query.status {
                filter("status = ?", vec![Sql::Text(status.as_str().into())]);
            }
            if let Some(owner) = query.owner {
                filter("owner = ?", vec![Sql::Text(owner)]);
            }
            if let Some(after) = query.after {
                filter("id > ?", vec![Sql::Text(after.to_string())]);
            }
            if let Some(prefix) = query.start_prefix {
                // The range finds the candidates by index; the comparison keeps only exact
                // prefixes (no character is a pattern).
                filter(
                    "start >= ? AND start < ? AND substr(start, 1, length(?)) = ?",
                    vec![
                        Sql::Text(prefix.clone()),
                        Sql::Text(keyward_store::prefix_end(&prefix)),
                        Sql::Text(prefix.clone()),
                        Sql::Text(prefix),
                    ],
                );
            }
            if let Some(before) = query.created_before {
                filter("created_at < ?", vec![Sql::Integer(before.unix_ms())]);
            }
            sql.push_str(" ORDER BY id LIMIT ?");
            args.push(Sql::Integer(i64::from(query.limit)));
            let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
            let rows = stmt
                .query(rusqlite::params_from_iter(args))
                .map_err(unavailable)?;
            collect_rows(rows, key_from_row)
        })
        .await
    }

    async fn key_hashes(&self) -> Result<Vec<KeyHash>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT hash FROM keys")
                .map_err(unavailable)?;
            let mut rows = stmt.query([]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let hash: Vec<u8> = row.get(0).map_err(unavailable)?;
                out.push(KeyHash(hash.try_into().map_err(|_| corrupt("hash"))?));
            }
            Ok(out)
        })
        .await
    }

    async fn rotation_candidates(
        &self,
        after: Option<KeyId>,
        limit: u32,
    ) -> Result<Vec<KeySummary>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM keys WHERE id > ?1 AND rolled_to IS NULL \
                     AND status != 'revoked' ORDER BY id LIMIT ?2"
                ))
                .map_err(unavailable)?;
            let after = after.map(|id| id.to_string()).unwrap_or_default();
            let rows = stmt
                .query(params![after, i64::from(limit)])
                .map_err(unavailable)?;
            collect_rows(rows, summary_from_row)
        })
        .await
    }

    async fn handover(&self, predecessor: KeyId) -> Result<Option<Handover>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {HANDOVER_COLUMNS} FROM key_handovers WHERE predecessor = ?1"
                ))
                .map_err(unavailable)?;
            let mut rows = stmt.query([predecessor.to_string()]).map_err(unavailable)?;
            match rows.next().map_err(unavailable)? {
                Some(row) => handover_from_row(row).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn due_handovers(&self, now: Timestamp, limit: u32) -> Result<Vec<Handover>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {HANDOVER_COLUMNS} FROM key_handovers WHERE next_attempt_at <= ?1 \
                     ORDER BY next_attempt_at LIMIT ?2"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query(params![now.unix_ms(), i64::from(limit)])
                .map_err(unavailable)?;
            collect_rows(rows, handover_from_row)
        })
        .await
    }

    async fn lapsed_handovers(&self, now: Timestamp, limit: u32) -> Result<Vec<KeyId>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT predecessor FROM key_handovers WHERE expires_at <= ?1 \
                     ORDER BY expires_at LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query(params![now.unix_ms(), i64::from(limit)])
                .map_err(unavailable)?;
            collect_rows(rows, |row| {
                let text: String = row.get(0).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                text.parse().map_err(|_| corrupt("handover key id"))
            })
        })
        .await
    }
}

#[async_trait]
impl keyward_store::CatalogStore for SqliteStore {
    async fn environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, created_at, policy, mac FROM environments ORDER BY name",
                )
                .map_err(unavailable)?;
            let mut rows = stmt.query([]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
                let name: String = row.get(0).map_err(get_err)?;
                let policy: String = row.get(2).map_err(get_err)?;
                out.push(EnvironmentRecord {
                    name: EnvironmentName::parse(&name).map_err(|_| corrupt("environment"))?,
                    created_at: Timestamp::from_unix_ms(row.get(1).map_err(get_err)?),
                    policy: serde_json::from_str(&policy)
                        .map_err(|_| corrupt("environment policy"))?,
                    mac: mac_at(row, 3)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn roles(&self) -> Result<Vec<RoleRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, description, permissions, builtin, created_at, updated_at, mac, \
                     rotation FROM roles ORDER BY name",
                )
                .map_err(unavailable)?;
            let rows = stmt.query([]).map_err(unavailable)?;
            collect_rows(rows, role_from_row)
        })
        .await
    }

    async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT name, description, ratelimits, created_at, updated_at, graduated, quota, mac FROM plans ORDER BY name")
                .map_err(unavailable)?;
            let mut rows = stmt.query([]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
                let name: String = row.get(0).map_err(get_err)?;
                let limits: String = row.get(2).map_err(get_err)?;
                let graduated: Option<String> = row.get(5).map_err(get_err)?;
                let quota: Option<String> = row.get(6).map_err(get_err)?;
                out.push(PlanRecord {
                    name: PlanName::parse(&name).map_err(|_| corrupt("plan name"))?,
                    description: row.get(1).map_err(get_err)?,
                    ratelimits: serde_json::from_str(&limits).map_err(|_| corrupt("plan limits"))?,
                    graduated: graduated
                        .as_deref()
                        .map(|g| serde_json::from_str(g).map_err(|_| corrupt("plan graduated response")))
                        .transpose()?,
                    quota: quota
                        .as_deref()
                        .map(|q| serde_json::from_str(q).map_err(|_| corrupt("plan quota")))
                        .transpose()?,
                    created_at: Timestamp::from_unix_ms(row.get(3).map_err(get_err)?),
                    updated_at: Timestamp::from_unix_ms(row.get(4).map_err(get_err)?),
                    mac: mac_at(row, 7)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn environment_secrets(&self) -> Result<Vec<(EnvironmentName, Vec<u8>)>, StoreError> {
        self.read(vault::environment_secrets).await
    }
}

#[async_trait]
impl keyward_store::UsageStore for SqliteStore {
    async fn quota_state(&self, id: KeyId) -> Result<Option<QuotaState>, StoreError> {
        self.read(move |conn| {
            let row: Option<(Option<i64>, Option<i64>)> = conn
                .query_row(
                    "SELECT quota_remaining, quota_period_start FROM keys WHERE id = ?1",
                    [id.to_string()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            Ok(match row {
                Some((Some(remaining), Some(start))) => Some(QuotaState {
                    remaining: u64::try_from(remaining).unwrap_or(0),
                    period_start: Timestamp::from_unix_ms(start),
                }),
                _ => None,
            })
        })
        .await
    }

    async fn spend_quotas(
        &self,
        spends: Vec<keyward_store::QuotaSpend>,
    ) -> Result<Vec<(KeyId, QuotaState)>, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let mut stored = Vec::with_capacity(spends.len());
            {
                let mut stmt = tx.prepare_cached(QUOTA_SPEND_SQL).map_err(unavailable)?;
                for spend in &spends {
                    let row = stmt
                        .query_row(
                            params![
                                spend.id.to_string(),
                                spend.state.period_start.unix_ms(),
                                to_i64(spend.state.remaining),
                                to_i64(spend.spent)
                            ],
                            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                        )
                        .optional()
                        .map_err(unavailable)?;
                    if let Some((remaining, start)) = row {
                        stored.push((
                            spend.id,
                            QuotaState {
                                remaining: u64::try_from(remaining).unwrap_or(0),
                                period_start: Timestamp::from_unix_ms(start),
                            },
                        ));
                    }
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(stored)
        })
        .await
    }

    async fn record_usage(&self, usage: Vec<KeyUsage>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE keys SET uses = uses + ?2, \
                         last_used_at = max(coalesce(last_used_at, 0), ?3) WHERE id = ?1",
                    )
                    .map_err(unavailable)?;
                for u in &usage {
                    stmt.execute(params![
                        u.id.to_string(),
                        to_i64(u.uses),
                        u.last_used_at.unix_ms()
                    ])
                    .map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn append_events(&self, events: Vec<keyward_core::Event>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO events (ts, kind, key_id, details) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(unavailable)?;
                for e in &events {
                    stmt.execute(params![
                        e.ts.unix_ms(),
                        e.kind,
                        e.key_id.map(|id| id.to_string()),
                        e.details.to_string(),
                    ])
                    .map_err(unavailable)?;
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn events(&self, after: u64, limit: u32) -> Result<Vec<keyward_core::Event>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT seq, ts, kind, key_id, details FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(unavailable)?;
            let mut rows = stmt.query(params![to_i64(after), i64::from(limit)]).map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(unavailable)? {
                let get_err = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
                let key_id: Option<String> = row.get(3).map_err(get_err)?;
                let details: String = row.get(4).map_err(get_err)?;
                out.push(keyward_core::Event {
                    seq: u64::try_from(row.get::<_, i64>(0).map_err(get_err)?).unwrap_or(0),
                    ts: Timestamp::from_unix_ms(row.get(1).map_err(get_err)?),
                    kind: row.get(2).map_err(get_err)?,
                    key_id: key_id.as_deref().map(|k| k.parse().map_err(|_| corrupt("event key id"))).transpose()?,
                    details: serde_json::from_str(&details).map_err(|_| corrupt("event details"))?,
                });
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl keyward_store::AuditStore for SqliteStore {
    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        self.read(head).await
    }

    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError> {
        self.read(|conn| {
            let row = conn
                .query_row(
                    "SELECT seq, hash, mac, revoked FROM audit_checkpoint WHERE id = 1",
                    [],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()
                .map_err(unavailable)?;
            row.map(|(seq, hash, mac, revoked)| {
                Ok(AuditCheckpoint {
                    seq: u64::try_from(seq).map_err(|_| corrupt("checkpoint seq"))?,
                    hash,
                    revoked: u64::try_from(revoked).map_err(|_| corrupt("checkpoint count"))?,
                    mac: RecordMac(mac.try_into().map_err(|_| corrupt("checkpoint tag"))?),
                })
            })
            .transpose()
        })
        .await
    }

    async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, ts, actor, action, target, details, prev_hash, hash \
                     FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query(params![to_i64(after), i64::from(limit)])
                .map_err(unavailable)?;
            collect_rows(rows, audit_from_row)
        })
        .await
    }
}

#[async_trait]
impl keyward_store::OutboxStore for SqliteStore {
    async fn outbox_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<keyward_core::OutboxEvent>, StoreError> {
        self.read(move |conn| webhooks::outbox_after(conn, after, limit))
            .await
    }

    async fn outbox_event(
        &self,
        seq: u64,
    ) -> Result<Option<keyward_core::OutboxEvent>, StoreError> {
        self.read(move |conn| webhooks::outbox_event(conn, seq))
            .await
    }

    async fn outbox_head(&self) -> Result<u64, StoreError> {
        self.read(webhooks::outbox_head).await
    }

    async fn outbox_has(&self, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.read(move |conn| webhooks::outbox_has(conn, &ids))
            .await
    }

    async fn webhooks(&self) -> Result<Vec<keyward_core::WebhookEndpoint>, StoreError> {
        self.read(webhooks::webhooks).await
    }

    async fn pending_deliveries(
        &self,
        endpoint: String,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError> {
        self.read(move |conn| webhooks::pending_deliveries(conn, &endpoint, limit))
            .await
    }

    async fn deliveries(
        &self,
        endpoint: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError> {
        self.read(move |conn| webhooks::deliveries(conn, &endpoint, before, limit))
            .await
    }

    async fn delivery(
        &self,
        endpoint: String,
        seq: u64,
    ) -> Result<Option<keyward_core::WebhookDelivery>, StoreError> {
        self.read(move |conn| webhooks::delivery(conn, &endpoint, seq))
            .await
    }

    async fn delivery_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        self.read(webhooks::delivery_backlog).await
    }
}

#[async_trait]
impl keyward_store::VaultStore for SqliteStore {
    async fn vault(&self) -> Result<Option<VaultRecord>, StoreError> {
        self.read(vault::vault).await
    }

    async fn keyrings(&self) -> Result<Vec<StoredKeyring>, StoreError> {
        self.read(vault::keyrings).await
    }

    async fn secret(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Option<SecretMeta>, StoreError> {
        self.read(move |conn| vault::secret(conn, &env, &path))
            .await
    }

    async fn secret_versions(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Vec<SecretVersion>, StoreError> {
        self.read(move |conn| vault::secret_versions(conn, &env, &path, None))
            .await
    }

    async fn secret_version(
        &self,
        env: EnvironmentName,
        path: String,
        version: u64,
    ) -> Result<Option<SecretVersion>, StoreError> {
        self.read(move |conn| {
            Ok(vault::secret_versions(conn, &env, &path, Some(version))?
                .into_iter()
                .next())
        })
        .await
    }

    async fn list_secrets(
        &self,
        env: EnvironmentName,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        self.read(move |conn| vault::list_secrets(conn, &env, &prefix, after.as_deref(), limit))
            .await
    }

    async fn lease(&self, id: String) -> Result<Option<VaultLease>, StoreError> {
        self.read(move |conn| vault::lease(conn, &id)).await
    }

    async fn leases(
        &self,
        prefix: String,
        open_only: bool,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError> {
        self.read(move |conn| vault::leases(conn, &prefix, open_only, after.as_deref(), limit))
            .await
    }

    async fn lapsed_leases(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError> {
        self.read(move |conn| vault::lapsed_leases(conn, now, limit))
            .await
    }

    async fn stale_sealed(&self, term: u32, limit: u32) -> Result<Vec<SealedValue>, StoreError> {
        self.read(move |conn| vault::stale_sealed(conn, term, limit))
            .await
    }

    async fn count_stale_sealed(&self, term: u32) -> Result<u64, StoreError> {
        self.read(move |conn| vault::count_stale_sealed(conn, term))
            .await
    }

    async fn rewrap(
        &self,
        values: Vec<Rewrapped>,
        progress: RewrapProgress,
    ) -> Result<u64, StoreError> {
        self.write(move |conn| vault::rewrap(conn, &values, &progress))
            .await
    }
}

#[cfg(test)]
mod tests;
