//! Rows to domain values and back. Every column is read with a checked `try_get`: a row that
//! does not decode is [`StoreError::Corrupt`], never a panic.

use keyward_core::audit::AuditEntry;
use keyward_core::{
    EnvironmentName, KeyHash, KeyId, KeyRecord, KeyStatus, KeySummary, Permission, PlanName,
    PlanRecord, RecordMac, RoleName, RoleRecord, ServiceName, Timestamp,
};
use keyward_store::vault::{LeaseKind, SecretMeta, SecretVersion, VaultLease, VaultRecord};
use keyward_store::{EnvironmentRecord, StoreError};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

/// Column `i` of `row`, or why it could not be read.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

pub(crate) fn time(row: &Row, i: usize) -> Result<Timestamp, StoreError> {
    get::<i64>(row, i).map(Timestamp::from_unix_ms)
}

fn time_opt(row: &Row, i: usize) -> Result<Option<Timestamp>, StoreError> {
    Ok(get::<Option<i64>>(row, i)?.map(Timestamp::from_unix_ms))
}

fn count(row: &Row, i: usize) -> Result<u64, StoreError> {
    u64::try_from(get::<i64>(row, i)?).map_err(|_| corrupt("negative count"))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn mac_at(row: &Row, i: usize) -> Result<Option<RecordMac>, StoreError> {
    get::<Option<Vec<u8>>>(row, i)?
        .map(|b| {
            b.try_into()
                .map(RecordMac)
                .map_err(|_| corrupt("integrity tag"))
        })
        .transpose()
}

pub(crate) fn mac_bytes(mac: Option<RecordMac>) -> Option<Vec<u8>> {
    mac.map(|m| m.0.to_vec())
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|_| corrupt(what))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn permission_list(permissions: &[Permission]) -> String {
    let list: Vec<&str> = permissions.iter().map(Permission::as_str).collect();
    serde_json::Value::from(list).to_string()
}

fn permissions(text: &str, what: &str) -> Result<Vec<Permission>, StoreError> {
    let list: Vec<String> = json(text, what)?;
    list.iter()
        .map(|p| Permission::parse(p).map_err(|_| corrupt(what)))
        .collect()
}

pub(crate) fn key_id(text: &str) -> Result<KeyId, StoreError> {
    text.parse::<KeyId>().map_err(|_| corrupt("key id"))
}

pub(crate) fn env_name(text: &str) -> Result<EnvironmentName, StoreError> {
    EnvironmentName::parse(text).map_err(|_| corrupt("environment name"))
}

pub(crate) const KEY_COLUMNS: &str = "id, service, environment, hash, start, name, owner, purpose, \
    permissions, meta, created_at, updated_at, expires_at, status, revoked_at, \
    revocation_reason, rolled_from, rolled_to, last_used_at, uses, access, next_grant_expiry, mac, \
    lifecycle";

pub(crate) fn key(row: &Row) -> Result<KeyRecord, StoreError> {
    let hash: Vec<u8> = get(row, 3)?;
    let rolled_from: Option<&str> = get(row, 16)?;
    let rolled_to: Option<&str> = get(row, 17)?;
    Ok(KeyRecord {
        id: key_id(get(row, 0)?)?,
        service: ServiceName::parse(get(row, 1)?).ok_or_else(|| corrupt("service"))?,
        environment: env_name(get(row, 2)?)?,
        hash: KeyHash(hash.try_into().map_err(|_| corrupt("hash"))?),
        start: get(row, 4)?,
        name: get(row, 5)?,
        owner: get(row, 6)?,
        purpose: get(row, 7)?,
        permissions: permissions(get(row, 8)?, "permissions")?,
        meta: json(get(row, 9)?, "meta")?,
        created_at: time(row, 10)?,
        updated_at: time(row, 11)?,
        expires_at: time_opt(row, 12)?,
        status: KeyStatus::parse(get(row, 13)?).ok_or_else(|| corrupt("status"))?,
        revoked_at: time_opt(row, 14)?,
        revocation_reason: get(row, 15)?,
        rolled_from: rolled_from.map(key_id).transpose()?,
        rolled_to: rolled_to.map(key_id).transpose()?,
        last_used_at: time_opt(row, 18)?,
        uses: count(row, 19)?,
        access: json(get(row, 20)?, "access")?,
        lifecycle: json(get(row, 23)?, "lifecycle")?,
        mac: mac_at(row, 22)?,
    })
}

pub(crate) const SUMMARY_COLUMNS: &str =
    "id, environment, start, name, owner, created_at, expires_at, access, lifecycle";

pub(crate) fn summary(row: &Row) -> Result<KeySummary, StoreError> {
    let (roles, rotation) = keyward_store::summary_fields(get(row, 7)?, get(row, 8)?)?;
    Ok(KeySummary {
        id: key_id(get(row, 0)?)?,
        environment: env_name(get(row, 1)?)?,
        start: get(row, 2)?,
        name: get(row, 3)?,
        owner: get(row, 4)?,
        created_at: time(row, 5)?,
        expires_at: time_opt(row, 6)?,
        roles,
        rotation,
    })
}

pub(crate) const ENVIRONMENT_COLUMNS: &str = "name, created_at, policy, mac";

pub(crate) fn environment(row: &Row) -> Result<EnvironmentRecord, StoreError> {
    Ok(EnvironmentRecord {
        name: env_name(get(row, 0)?)?,
        created_at: time(row, 1)?,
        policy: json(get(row, 2)?, "environment policy")?,
        mac: mac_at(row, 3)?,
    })
}

pub(crate) const ROLE_COLUMNS: &str =
    "name, description, permissions, builtin, created_at, updated_at, mac, rotation";

pub(crate) fn role(row: &Row) -> Result<RoleRecord, StoreError> {
    let rotation: Option<&str> = get(row, 7)?;
    Ok(RoleRecord {
        rotation: rotation.map(|r| json(r, "role rotation")).transpose()?,
        name: RoleName::parse(get(row, 0)?).map_err(|_| corrupt("role name"))?,
        description: get(row, 1)?,
        permissions: permissions(get(row, 2)?, "role permissions")?,
        builtin: get(row, 3)?,
        created_at: time(row, 4)?,
        updated_at: time(row, 5)?,
        mac: mac_at(row, 6)?,
    })
}

pub(crate) const PLAN_COLUMNS: &str =
    "name, description, ratelimits, created_at, updated_at, graduated, quota, mac";

pub(crate) fn plan(row: &Row) -> Result<PlanRecord, StoreError> {
    let graduated: Option<&str> = get(row, 5)?;
    let quota: Option<&str> = get(row, 6)?;
    Ok(PlanRecord {
        name: PlanName::parse(get(row, 0)?).map_err(|_| corrupt("plan name"))?,
        description: get(row, 1)?,
        ratelimits: json(get(row, 2)?, "plan limits")?,
        graduated: graduated
            .map(|g| json(g, "plan graduated response"))
            .transpose()?,
        quota: quota.map(|q| json(q, "plan quota")).transpose()?,
        created_at: time(row, 3)?,
        updated_at: time(row, 4)?,
        mac: mac_at(row, 7)?,
    })
}

pub(crate) const AUDIT_COLUMNS: &str = "seq, ts, actor, action, target, details, prev_hash, hash";

pub(crate) fn audit(row: &Row) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        seq: count(row, 0)?,
        ts: time(row, 1)?,
        actor: get(row, 2)?,
        action: get(row, 3)?,
        target: get(row, 4)?,
        details: json(get(row, 5)?, "audit details")?,
        prev_hash: get(row, 6)?,
        hash: get(row, 7)?,
    })
}

pub(crate) fn event(row: &Row) -> Result<keyward_core::Event, StoreError> {
    let key: Option<&str> = get(row, 3)?;
    Ok(keyward_core::Event {
        seq: count(row, 0)?,
        ts: time(row, 1)?,
        kind: get(row, 2)?,
        key_id: key.map(key_id).transpose()?,
        details: json(get(row, 4)?, "event details")?,
    })
}

pub(crate) const VAULT_COLUMNS: &str =
    "tag, shares, threshold, sealed_root, term, created_at, rewrap, mac";

pub(crate) fn vault(row: &Row) -> Result<VaultRecord, StoreError> {
    let tag: Vec<u8> = get(row, 0)?;
    let small = |i| -> Result<u8, StoreError> {
        u8::try_from(get::<i32>(row, i)?).map_err(|_| corrupt("vault shares"))
    };
    let rewrap: Option<&str> = get(row, 6)?;
    Ok(VaultRecord {
        tag: tag.try_into().map_err(|_| corrupt("vault tag"))?,
        shares: small(1)?,
        threshold: small(2)?,
        sealed_root: get(row, 3)?,
        term: u32::try_from(get::<i64>(row, 4)?).map_err(|_| corrupt("vault term"))?,
        created_at: time(row, 5)?,
        rewrap: rewrap.map(|r| json(r, "rewrap progress")).transpose()?,
        mac: mac_at(row, 7)?,
    })
}

pub(crate) const SECRET_COLUMNS: &str = "environment, path, owner, purpose, max_versions, \
    cas_required, custom, current_version, created_at, updated_at, incarnation";

pub(crate) fn secret(row: &Row) -> Result<SecretMeta, StoreError> {
    let custom = match json::<serde_json::Value>(get(row, 6)?, "secret custom metadata")? {
        serde_json::Value::Object(map) => map,
        _ => return Err(corrupt("secret custom metadata")),
    };
    Ok(SecretMeta {
        environment: env_name(get(row, 0)?)?,
        path: get(row, 1)?,
        owner: get(row, 2)?,
        purpose: get(row, 3)?,
        max_versions: u32::try_from(get::<i64>(row, 4)?)
            .map_err(|_| corrupt("secret max_versions"))?,
        cas_required: get(row, 5)?,
        custom,
        current_version: count(row, 7)?,
        created_at: time(row, 8)?,
        updated_at: time(row, 9)?,
        incarnation: get(row, 10)?,
    })
}

pub(crate) const VERSION_COLUMNS: &str =
    "environment, path, version, ciphertext, created_at, deleted_at, destroyed";

pub(crate) fn version(row: &Row) -> Result<SecretVersion, StoreError> {
    Ok(SecretVersion {
        environment: env_name(get(row, 0)?)?,
        path: get(row, 1)?,
        version: count(row, 2)?,
        ciphertext: get(row, 3)?,
        created_at: time(row, 4)?,
        deleted_at: time_opt(row, 5)?,
        destroyed: get(row, 6)?,
    })
}

pub(crate) const LEASE_COLUMNS: &str = "id, kind, path, environment, key_id, secret_version, \
    actor, issued_at, expires_at, max_expires_at, ended_at, end_reason, mac";

pub(crate) fn lease(row: &Row) -> Result<VaultLease, StoreError> {
    let key: Option<&str> = get(row, 4)?;
    Ok(VaultLease {
        id: get(row, 0)?,
        kind: match get::<&str>(row, 1)? {
            "key" => LeaseKind::Key,
            "secret" => LeaseKind::Secret,
            _ => return Err(corrupt("lease kind")),
        },
        path: get(row, 2)?,
        environment: env_name(get(row, 3)?)?,
        key_id: key.map(key_id).transpose()?,
        secret_version: get::<Option<i64>>(row, 5)?.and_then(|v| u64::try_from(v).ok()),
        actor: get(row, 6)?,
        issued_at: time(row, 7)?,
        expires_at: time(row, 8)?,
        max_expires_at: time(row, 9)?,
        ended_at: time_opt(row, 10)?,
        end_reason: get(row, 11)?,
        mac: mac_at(row, 12)?,
    })
}

/// The keyring term in a barrier ciphertext's header: a format byte, then the term as a
/// big-endian u32.
pub(crate) fn term_of(ciphertext: &[u8]) -> Option<i64> {
    let bytes: [u8; 4] = ciphertext.get(1..5)?.try_into().ok()?;
    Some(i64::from(u32::from_be_bytes(bytes)))
}
