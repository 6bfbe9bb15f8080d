//! Reads on one pooled connection, with statements prepared once per connection. The store's
//! trait methods and the change feed's loads share them.

use deadpool_postgres::ClientWrapper;
use keyward_core::{
    EnvironmentName, KeyId, KeyRecord, PlanRecord, QuotaState, RoleRecord, Timestamp,
};
use keyward_store::vault::{SecretMeta, StoredKeyring, VaultRecord};
use keyward_store::{EnvironmentRecord, StoreError};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::rows::{self, get};
use crate::unavailable;

pub(crate) async fn query(
    client: &ClientWrapper,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    crate::timed(async {
        let stmt = client.prepare_cached(sql).await.map_err(unavailable)?;
        match client.query(&stmt, params).await {
            Ok(found) => Ok(found),
            // PostgreSQL text cannot hold a NUL character, so no stored row matches a value
            // with one (a client's filter, say): nothing found, not a failing store.
            Err(e) if crate::is_nul_in_text(&e) => Ok(Vec::new()),
            Err(e) => Err(unavailable(e)),
        }
    })
    .await
}

pub(crate) fn all<T>(
    found: Vec<Row>,
    map: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    found.iter().map(map).collect()
}

pub(crate) async fn keys_by_id(
    client: &ClientWrapper,
    ids: &[String],
) -> Result<Vec<KeyRecord>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {} FROM keys WHERE id = ANY($1) ORDER BY id",
        rows::KEY_COLUMNS
    );
    all(query(client, &sql, &[&ids]).await?, rows::key)
}

pub(crate) async fn quota_state(
    client: &ClientWrapper,
    id: KeyId,
) -> Result<Option<QuotaState>, StoreError> {
    let found = query(
        client,
        "SELECT quota_remaining, quota_period_start FROM keys WHERE id = $1",
        &[&id.to_string()],
    )
    .await?;
    let Some(row) = found.first() else {
        return Ok(None);
    };
    let remaining: Option<i64> = get(row, 0)?;
    let start: Option<i64> = get(row, 1)?;
    Ok(match (remaining, start) {
        (Some(remaining), Some(start)) => Some(QuotaState {
            remaining: u64::try_from(remaining).unwrap_or(0),
            period_start: Timestamp::from_unix_ms(start),
        }),
        _ => None,
    })
}

pub(crate) async fn environments(
    client: &ClientWrapper,
) -> Result<Vec<EnvironmentRecord>, StoreError> {
    let sql = format!(
        "SELECT {} FROM environments ORDER BY name",
        rows::ENVIRONMENT_COLUMNS
    );
    all(query(client, &sql, &[]).await?, rows::environment)
}

pub(crate) async fn environment_secrets(
    client: &ClientWrapper,
) -> Result<Vec<(EnvironmentName, Vec<u8>)>, StoreError> {
    let found = query(
        client,
        "SELECT name, secret FROM environments WHERE secret IS NOT NULL ORDER BY name",
        &[],
    )
    .await?;
    all(found, |row| {
        Ok((rows::env_name(get(row, 0)?)?, get(row, 1)?))
    })
}

pub(crate) async fn roles(client: &ClientWrapper) -> Result<Vec<RoleRecord>, StoreError> {
    let sql = format!("SELECT {} FROM roles ORDER BY name", rows::ROLE_COLUMNS);
    all(query(client, &sql, &[]).await?, rows::role)
}

pub(crate) async fn plans(client: &ClientWrapper) -> Result<Vec<PlanRecord>, StoreError> {
    let sql = format!("SELECT {} FROM plans ORDER BY name", rows::PLAN_COLUMNS);
    all(query(client, &sql, &[]).await?, rows::plan)
}

pub(crate) async fn secret(
    client: &ClientWrapper,
    env: &EnvironmentName,
    path: &str,
) -> Result<Option<SecretMeta>, StoreError> {
    let sql = format!(
        "SELECT {} FROM secrets WHERE environment = $1 AND path = $2",
        rows::SECRET_COLUMNS
    );
    let found = query(client, &sql, &[&env.as_str(), &path]).await?;
    found.first().map(rows::secret).transpose()
}

pub(crate) async fn keyrings(client: &ClientWrapper) -> Result<Vec<StoredKeyring>, StoreError> {
    let found = query(
        client,
        "SELECT scope, blob FROM keyrings ORDER BY scope",
        &[],
    )
    .await?;
    all(found, |row| {
        Ok(StoredKeyring {
            scope: get(row, 0)?,
            sealed: get(row, 1)?,
        })
    })
}

pub(crate) async fn vault(client: &ClientWrapper) -> Result<Option<VaultRecord>, StoreError> {
    let sql = format!("SELECT {} FROM vault WHERE id = 1", rows::VAULT_COLUMNS);
    let found = query(client, &sql, &[]).await?;
    found.first().map(rows::vault).transpose()
}
