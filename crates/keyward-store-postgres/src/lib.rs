//! keyward's shared store for several nodes: PostgreSQL, through a pool of `tokio-postgres`
//! connections.
//!
//! Every node keeps its caches true from the change feed ([`feed`]): each state change is
//! recorded in `change_log` and announced with `NOTIFY` in its own transaction, and each node
//! follows the log over a `LISTEN`ing connection of its own. Writes are serialised across nodes
//! by a transaction-scoped advisory lock, which also orders the audit chain: a writer that read
//! an old head gets [`StoreError::AuditConflict`] and retries, so no two nodes fork the chain.
//!
//! The schema is the embedded store's, migration for migration (`migrations/postgres/`, the
//! same file names as SQLite's), recorded in `keyward_migrations`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use keyward_core::audit::AuditEntry;
use keyward_core::{
    EnvironmentName, KeyHash, KeyId, KeyRecord, KeySummary, PlanName, PlanRecord, QuotaState,
    RecordMac, RoleName, RoleRecord, Timestamp,
};
use keyward_store::vault::{
    RewrapProgress, Rewrapped, SealedValue, SecretMeta, SecretVersion, StoredKeyring, VaultLease,
    VaultRecord,
};
use keyward_store::{
    AuditCheckpoint, AuditHead, ChangeListener, Changes, EnvironmentRecord, Handover, KeyQuery,
    KeyUsage, Store, StoreError,
};
use tokio_postgres::error::SqlState;

mod feed;
mod leader;
mod reads;
mod rows;
mod webhooks;
mod write;

use reads::{all, query};
use rows::{get, to_i64};

/// Migrations in order, by the same names as the embedded store's.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_access",
        include_str!("../migrations/postgres/0002_access.sql"),
    ),
    (
        "0003_plans",
        include_str!("../migrations/postgres/0003_plans.sql"),
    ),
    (
        "0004_quotas",
        include_str!("../migrations/postgres/0004_quotas.sql"),
    ),
    (
        "0005_events",
        include_str!("../migrations/postgres/0005_events.sql"),
    ),
    (
        "0006_graduated",
        include_str!("../migrations/postgres/0006_graduated.sql"),
    ),
    (
        "0007_plan_quotas",
        include_str!("../migrations/postgres/0007_plan_quotas.sql"),
    ),
    (
        "0008_vault",
        include_str!("../migrations/postgres/0008_vault.sql"),
    ),
    (
        "0009_integrity",
        include_str!("../migrations/postgres/0009_integrity.sql"),
    ),
    (
        "0010_lease_integrity",
        include_str!("../migrations/postgres/0010_lease_integrity.sql"),
    ),
    (
        "0011_rotation",
        include_str!("../migrations/postgres/0011_rotation.sql"),
    ),
    (
        "0012_webhooks",
        include_str!("../migrations/postgres/0012_webhooks.sql"),
    ),
    (
        "0013_delivery",
        include_str!("../migrations/postgres/0013_delivery.sql"),
    ),
    (
        "0014_inventory",
        include_str!("../migrations/postgres/0014_inventory.sql"),
    ),
];

/// Advisory lock ids (one namespace per database): writes, and migrations.
const WRITE_LOCK: i64 = 0x6b65_7977_0001;
const MIGRATE_LOCK: i64 = 0x6b65_7977_0002;

/// How a node uses its PostgreSQL.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pooled connections for reads and writes (the change feed has one more of its own).
    pub pool_size: usize,
    /// How long the node keeps vouching for what it cached after it lost the change feed.
    pub feed_grace: Duration,
    /// How long connecting, or waiting for a pooled connection, may take.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_size: 16,
            feed_grace: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) config: tokio_postgres::Config,
    /// `host:port/database`, for messages: never the password.
    target: String,
    /// This node, in the change log's rows.
    origin: String,
    pub(crate) feed: feed::Feed,
    pub(crate) leadership: Arc<leader::Leadership>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// The longest one statement (or a commit) may take: a server that accepts a connection and
/// then stops answering fails the call instead of holding it, and what waits behind it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "PostgreSQL did not answer in time".into(),
            ))
        })
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Whether PostgreSQL refused a text value for holding a NUL character (which it cannot store).
pub(crate) fn is_nul_in_text(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| *db.code() == SqlState::CHARACTER_NOT_IN_REPERTOIRE)
}

/// A constraint violation is a conflict (by the constraint's name: the detail would repeat
/// the row's values); anything else means the store failed.
pub(crate) fn map_write_error(e: tokio_postgres::Error) -> StoreError {
    let constraint = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::FOREIGN_KEY_VIOLATION,
        SqlState::CHECK_VIOLATION,
        SqlState::NOT_NULL_VIOLATION,
    ];
    if is_nul_in_text(&e) {
        return StoreError::Conflict("a text value holds a NUL character".to_owned());
    }
    match e.as_db_error() {
        Some(db) if constraint.contains(db.code()) => {
            StoreError::Conflict(db.constraint().unwrap_or("constraint").to_owned())
        }
        _ => unavailable(e),
    }
}

/// Where a URL points, without its password.
fn target_of(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`), runs
    /// pending migrations, and starts following the change feed. A wrong URL, a refused
    /// password or an unreachable server is one error that says which.
    pub async fn connect(url: &str, options: Options) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Unavailable(
                "the store URL is not a valid postgres://user:password@host:port/database URL"
                    .to_owned(),
            )
        })?;
        config.connect_timeout(options.connect_timeout);
        config.application_name("keyward");
        // A server that stops answering (a dead machine, a cut network) fails the calls in
        // flight within seconds instead of leaving them, and the writes queued behind them,
        // waiting for ever.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(1));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(10));
        let target = target_of(&config);
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(unavailable)?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {target}: {}",
                reason(&e)
            ))
        })?;
        migrate(&mut client).await?;
        let head = query(
            &client,
            "SELECT (SELECT coalesce(max(seq), 0) FROM change_log), \
                    (SELECT coalesce(max(seq), 0) FROM audit_log)",
            &[],
        )
        .await?;
        let delivered: i64 = head.first().map(|r| get(r, 0)).transpose()?.unwrap_or(0);
        let audit_seen: i64 = head.first().map(|r| get(r, 1)).transpose()?.unwrap_or(0);
        drop(client);
        let inner = Arc::new(Inner {
            pool,
            config,
            target,
            origin: uuid::Uuid::now_v7().to_string(),
            feed: feed::Feed::new(delivered, u64::try_from(audit_seen).unwrap_or(0)),
            leadership: Arc::default(),
        });
        tokio::spawn(feed::follow(Arc::downgrade(&inner), options.feed_grace));
        tokio::spawn(leader::run(Arc::downgrade(&inner)));
        Ok(PostgresStore { inner })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "PostgreSQL at {}: {}",
                self.inner.target,
                reason(&e)
            ))
        })
    }
}

/// Why a pooled connection could not be had, in words (the server's own message when it
/// refused one).
fn reason(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => e.to_string(),
        },
        deadpool_postgres::PoolError::Timeout(_) => "timed out".to_owned(),
        other => other.to_string(),
    }
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(unavailable)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS keyward_migrations (
             version     INTEGER PRIMARY KEY,
             name        TEXT NOT NULL,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(unavailable)?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM keyward_migrations",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let done = usize::try_from(get::<i32>(&row, 0)?).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {done}, newer than this keyward knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration {name}: {e}")))?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO keyward_migrations (version, name) VALUES ($1, $2)",
            &[&version, name],
        )
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)
}

impl PostgresStore {
    async fn apply_now(&self, changes: Changes) -> Result<(), StoreError> {
        let summary = feed::Summary::of(&changes);
        let mut client = self.client().await?;
        let tx = timed(async { client.transaction().await.map_err(unavailable) }).await?;
        // Everything up to the commit is bounded as a whole: waiting for the write lock behind
        // a stuck writer, or a server that stopped answering, fails the write instead of
        // hanging it (and nothing is written: the transaction rolls back).
        let seq = timed(async {
            if changes.relaxed {
                // Survives a crash of keyward at once, and one of PostgreSQL's machine after
                // the WAL writer's next flush (a fraction of a second).
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(unavailable)?;
            }
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .await
                .map_err(unavailable)?;
            write::apply(&tx, &changes).await?;
            webhooks::apply(&tx, &changes).await?;
            if summary.is_empty() {
                return Ok(None);
            }
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            feed::record(&tx, &self.inner.origin, &summary, at)
                .await
                .map(Some)
        })
        .await?;
        let mut delivered = self.inner.feed.hold().await;
        timed(async { tx.commit().await.map_err(unavailable) }).await?;
        self.inner
            .feed
            .deliver_own(&mut delivered, &client, seq, &changes)
            .await;
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn apply(&self, changes: Changes) -> Result<(), StoreError> {
        self.apply_now(changes).await
    }

    fn subscribe(&self, listener: std::sync::Weak<dyn ChangeListener>) {
        self.inner.feed.subscribe(listener);
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // A synchronous commit flushes the WAL, and with it every asynchronous commit before.
        let client = self.client().await?;
        client
            .batch_execute("BEGIN; SELECT txid_current(); COMMIT;")
            .await
            .map_err(unavailable)
    }

    fn leads(&self) -> bool {
        self.inner.leadership.leads()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl keyward_store::KeyStore for PostgresStore {
    async fn count_keys_with_plan(&self, plan: PlanName) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let found = query(
            &client,
            "SELECT count(*) FROM keys WHERE status <> 'revoked' \
             AND (access::jsonb ->> 'plan') = $1",
            &[&plan.as_str()],
        )
        .await?;
        count_of(&found)
    }

    async fn count_keys_with_role(&self, role: RoleName) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let found = query(
            &client,
            "SELECT count(*) FROM keys WHERE status <> 'revoked' AND ( \
               coalesce(access::jsonb -> 'roles', '[]'::jsonb) ? $1 OR \
               EXISTS (SELECT 1 FROM jsonb_array_elements( \
                   coalesce(access::jsonb -> 'grants', '[]'::jsonb)) AS g \
                 WHERE g ->> 'role' = $1))",
            &[&role.as_str()],
        )
        .await?;
        count_of(&found)
    }

    async fn keys_with_lapsed_grants(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM keys WHERE next_grant_expiry <= $1 AND status <> 'revoked' \
             ORDER BY next_grant_expiry LIMIT $2",
            rows::KEY_COLUMNS
        );
        let found = query(&client, &sql, &[&now.unix_ms(), &i64::from(limit)]).await?;
        all(found, rows::key)
    }

    async fn key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {} FROM keys WHERE id = $1", rows::KEY_COLUMNS);
        let found = query(&client, &sql, &[&id.to_string()]).await?;
        found.first().map(rows::key).transpose()
    }

    async fn key_by_hash(&self, hash: KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {} FROM keys WHERE hash = $1", rows::KEY_COLUMNS);
        let found = query(&client, &sql, &[&hash.0.as_slice()]).await?;
        found.first().map(rows::key).transpose()
    }

    async fn list_keys(&self, q: KeyQuery) -> Result<Vec<KeyRecord>, StoreError> {
        // Only the filters given, so each can use its index (owner, environment, start).
        type Arg = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;
        let mut sql = format!("SELECT {} FROM keys WHERE TRUE", rows::KEY_COLUMNS);
        let mut args: Vec<Arg> = Vec::new();
        let mut filter = |clause: &str, values: Vec<Arg>| {
            let mut clause = clause.to_owned();
            for value in values {
                args.push(value);
                clause = clause.replacen('?', &format!("${}", args.len()), 1);
            }
            sql.push_str(" AND ");
            sql.push_str(&clause);
        };
        if let Some(service) = q.service {
            filter("service = ?", vec![Box::new(service.as_str())]);
        }
        if let Some(environment) = &q.environment {
            filter("environment = ?", vec![Box::new(environment.to_string())]);
        }
        if let Some(status) = q.status {
            filter("status = ?", vec![Box::new(status.as_str())]);
        }
        if let Some(owner) = q.owner {
            filter("owner = ?", vec![Box::new(owner)]);
        }
        if let Some(after) = q.after {
            filter("id > ?", vec![Box::new(after.to_string())]);
        }
        if let Some(prefix) = q.start_prefix {
            // The range finds the candidates by index (in byte order); the comparison keeps
            // only exact prefixes (no character is a pattern).
            let end = keyward_store::prefix_end(&prefix);
            filter(
                "start COLLATE \"C\" >= ? AND start COLLATE \"C\" < ? AND left(start, length(?)) = ?",
                vec![
                    Box::new(prefix.clone()),
                    Box::new(end),
                    Box::new(prefix.clone()),
                    Box::new(prefix),
                ],
            );
        }
        if let Some(before) = q.created_before {
            filter("created_at < ?", vec![Box::new(before.unix_ms())]);
        }
        args.push(Box::new(i64::from(q.limit)));
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
        let client = self.client().await?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            args.iter().map(|a| a.as_ref() as _).collect();
        let found = query(&client, &sql, &params).await?;
        all(found, rows::key)
    }

    async fn key_hashes(&self) -> Result<Vec<KeyHash>, StoreError> {
        let client = self.client().await?;
        let found = query(&client, "SELECT hash FROM keys", &[]).await?;
        all(found, |row| {
            let hash: Vec<u8> = get(row, 0)?;
            Ok(KeyHash(hash.try_into().map_err(|_| rows::corrupt("hash"))?))
        })
    }

    async fn rotation_candidates(
        &self,
        after: Option<KeyId>,
        limit: u32,
    ) -> Result<Vec<KeySummary>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM keys WHERE id > $1 AND rolled_to IS NULL AND status <> 'revoked' \
             ORDER BY id LIMIT $2",
            rows::SUMMARY_COLUMNS
        );
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let found = query(&client, &sql, &[&after, &i64::from(limit)]).await?;
        all(found, rows::summary)
    }

    async fn handover(&self, predecessor: KeyId) -> Result<Option<Handover>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {HANDOVER_COLUMNS} FROM key_handovers WHERE predecessor = $1");
        let found = query(&client, &sql, &[&predecessor.to_string()]).await?;
        found.first().map(handover_from_row).transpose()
    }

    async fn due_handovers(&self, now: Timestamp, limit: u32) -> Result<Vec<Handover>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {HANDOVER_COLUMNS} FROM key_handovers WHERE next_attempt_at <= $1 \
             ORDER BY next_attempt_at LIMIT $2"
        );
        let found = query(&client, &sql, &[&now.unix_ms(), &i64::from(limit)]).await?;
        all(found, handover_from_row)
    }

    async fn lapsed_handovers(&self, now: Timestamp, limit: u32) -> Result<Vec<KeyId>, StoreError> {
        let client = self.client().await?;
        let found = query(
            &client,
            "SELECT predecessor FROM key_handovers WHERE expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
            &[&now.unix_ms(), &i64::from(limit)],
        )
        .await?;
        all(found, |row| rows::key_id(get(row, 0)?))
    }
}

const HANDOVER_COLUMNS: &str = "successor, predecessor, environment, sealed, expires_at, \
    attempts, next_attempt_at, last_error";

fn handover_from_row(row: &tokio_postgres::Row) -> Result<Handover, StoreError> {
    let attempts: i64 = get(row, 5)?;
    let next: Option<i64> = get(row, 6)?;
    Ok(Handover {
        successor: rows::key_id(get(row, 0)?)?,
        predecessor: rows::key_id(get(row, 1)?)?,
        environment: rows::env_name(get(row, 2)?)?,
        sealed: get(row, 3)?,
        expires_at: rows::time(row, 4)?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_at: next.map(Timestamp::from_unix_ms),
        last_error: get(row, 7)?,
    })
}

fn count_of(found: &[tokio_postgres::Row]) -> Result<u64, StoreError> {
    let n: i64 = found.first().map(|r| get(r, 0)).transpose()?.unwrap_or(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

#[async_trait]
impl keyward_store::OutboxStore for PostgresStore {
    async fn outbox_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<keyward_core::OutboxEvent>, StoreError> {
        webhooks::outbox_after(&*self.client().await?, after, limit).await
    }

    async fn outbox_event(
        &self,
        seq: u64,
    ) -> Result<Option<keyward_core::OutboxEvent>, StoreError> {
        webhooks::outbox_event(&*self.client().await?, seq).await
    }

    async fn outbox_head(&self) -> Result<u64, StoreError> {
        webhooks::outbox_head(&*self.client().await?).await
    }

    async fn outbox_has(&self, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        webhooks::outbox_has(&*self.client().await?, &ids).await
    }

    async fn webhooks(&self) -> Result<Vec<keyward_core::WebhookEndpoint>, StoreError> {
        webhooks::webhooks(&*self.client().await?).await
    }

    async fn pending_deliveries(
        &self,
        endpoint: String,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError> {
        webhooks::pending_deliveries(&*self.client().await?, &endpoint, limit).await
    }

    async fn deliveries(
        &self,
        endpoint: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError> {
        webhooks::deliveries(&*self.client().await?, &endpoint, before, limit).await
    }

    async fn delivery(
        &self,
        endpoint: String,
        seq: u64,
    ) -> Result<Option<keyward_core::WebhookDelivery>, StoreError> {
        webhooks::one_delivery(&*self.client().await?, &endpoint, seq).await
    }

    async fn delivery_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        webhooks::delivery_backlog(&*self.client().await?).await
    }
}

#[async_trait]
impl keyward_store::CatalogStore for PostgresStore {
    async fn environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        reads::environments(&*self.client().await?).await
    }

    async fn roles(&self) -> Result<Vec<RoleRecord>, StoreError> {
        reads::roles(&*self.client().await?).await
    }

    async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        reads::plans(&*self.client().await?).await
    }

    async fn environment_secrets(&self) -> Result<Vec<(EnvironmentName, Vec<u8>)>, StoreError> {
        reads::environment_secrets(&*self.client().await?).await
    }
}

#[async_trait]
impl keyward_store::UsageStore for PostgresStore {
    async fn quota_state(&self, id: KeyId) -> Result<Option<QuotaState>, StoreError> {
        reads::quota_state(&*self.client().await?, id).await
    }

    async fn spend_quotas(
        &self,
        spends: Vec<keyward_store::QuotaSpend>,
    ) -> Result<Vec<(KeyId, QuotaState)>, StoreError> {
        if spends.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = spends.iter().map(|s| s.id.to_string()).collect();
        let starts: Vec<i64> = spends
            .iter()
            .map(|s| s.state.period_start.unix_ms())
            .collect();
        let remaining: Vec<i64> = spends.iter().map(|s| to_i64(s.state.remaining)).collect();
        let spent: Vec<i64> = spends.iter().map(|s| to_i64(s.spent)).collect();
        let client = self.client().await?;
        // One statement: the same period subtracts, a newer one replaces, an older one is
        // dropped, each under the row's lock, so nodes flushing at once both count.
        let found = query(
            &client,
            "UPDATE keys SET \
               quota_remaining = CASE \
                 WHEN keys.quota_period_start = u.start \
                   THEN greatest(keys.quota_remaining - u.spent, 0) \
                 WHEN keys.quota_period_start IS NULL OR keys.quota_period_start < u.start \
                   THEN u.remaining \
                 ELSE keys.quota_remaining END, \
               quota_period_start = CASE \
                 WHEN keys.quota_period_start IS NULL OR keys.quota_period_start < u.start \
                   THEN u.start \
                 ELSE keys.quota_period_start END \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) \
               AS u(id, start, remaining, spent) \
             WHERE keys.id = u.id \
             RETURNING keys.id, keys.quota_remaining, keys.quota_period_start",
            &[&ids, &starts, &remaining, &spent],
        )
        .await?;
        let mut stored: Vec<(KeyId, QuotaState)> = all(found, |row| {
            let id: &str = get(row, 0)?;
            Ok((
                id.parse::<KeyId>().map_err(|_| rows::corrupt("key id"))?,
                QuotaState {
                    remaining: u64::try_from(get::<i64>(row, 1)?).unwrap_or(0),
                    period_start: Timestamp::from_unix_ms(get(row, 2)?),
                },
            ))
        })?;
        // In the order given, as the contract's callers expect.
        stored.sort_by_key(|(id, _)| spends.iter().position(|s| s.id == *id));
        Ok(stored)
    }

    async fn record_usage(&self, usage: Vec<KeyUsage>) -> Result<(), StoreError> {
        if usage.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = usage.iter().map(|u| u.id.to_string()).collect();
        let uses: Vec<i64> = usage.iter().map(|u| to_i64(u.uses)).collect();
        let at: Vec<i64> = usage.iter().map(|u| u.last_used_at.unix_ms()).collect();
        let client = self.client().await?;
        query(
            &client,
            "UPDATE keys SET uses = keys.uses + u.uses, \
             last_used_at = greatest(coalesce(keys.last_used_at, 0), u.at) \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(id, uses, at) \
             WHERE keys.id = u.id RETURNING 1",
            &[&ids, &uses, &at],
        )
        .await
        .map(drop)
    }

    async fn append_events(&self, events: Vec<keyward_core::Event>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let ts: Vec<i64> = events.iter().map(|e| e.ts.unix_ms()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let keys: Vec<Option<String>> = events
            .iter()
            .map(|e| e.key_id.map(|id| id.to_string()))
            .collect();
        let details: Vec<String> = events.iter().map(|e| e.details.to_string()).collect();
        let client = self.client().await?;
        // WITH ORDINALITY keeps the batch's order in the sequence numbers it is given.
        query(
            &client,
            "INSERT INTO events (ts, kind, key_id, details) \
             SELECT ts, kind, key_id, details FROM \
             unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
             AS e(ts, kind, key_id, details, n) ORDER BY n RETURNING seq",
            &[&ts, &kinds, &keys, &details],
        )
        .await
        .map(drop)
    }

    async fn events(&self, after: u64, limit: u32) -> Result<Vec<keyward_core::Event>, StoreError> {
        let client = self.client().await?;
        let found = query(
            &client,
            "SELECT seq, ts, kind, key_id, details FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&to_i64(after), &i64::from(limit)],
        )
        .await?;
        all(found, rows::event)
    }
}

#[async_trait]
impl keyward_store::AuditStore for PostgresStore {
    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        let client = self.client().await?;
        let found = query(
            &client,
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
        found
            .first()
            .map(|row| {
                Ok(AuditHead {
                    seq: u64::try_from(get::<i64>(row, 0)?).map_err(|_| rows::corrupt("seq"))?,
                    hash: get(row, 1)?,
                })
            })
            .transpose()
    }

    async fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>, StoreError> {
        let client = self.client().await?;
        let found = query(
            &client,
            "SELECT seq, hash, mac, revoked FROM audit_checkpoint WHERE id = 1",
            &[],
        )
        .await?;
        found
            .first()
            .map(|row| {
                let mac: Vec<u8> = get(row, 2)?;
                Ok(AuditCheckpoint {
                    seq: u64::try_from(get::<i64>(row, 0)?)
                        .map_err(|_| rows::corrupt("checkpoint seq"))?,
                    hash: get(row, 1)?,
                    revoked: u64::try_from(get::<i64>(row, 3)?)
                        .map_err(|_| rows::corrupt("checkpoint count"))?,
                    mac: RecordMac(
                        mac.try_into()
                            .map_err(|_| rows::corrupt("checkpoint tag"))?,
                    ),
                })
            })
            .transpose()
    }

    async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            rows::AUDIT_COLUMNS
        );
        let found = query(&client, &sql, &[&to_i64(after), &i64::from(limit)]).await?;
        all(found, rows::audit)
    }
}

#[async_trait]
impl keyward_store::VaultStore for PostgresStore {
    async fn vault(&self) -> Result<Option<VaultRecord>, StoreError> {
        reads::vault(&*self.client().await?).await
    }

    async fn keyrings(&self) -> Result<Vec<StoredKeyring>, StoreError> {
        reads::keyrings(&*self.client().await?).await
    }

    async fn secret(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Option<SecretMeta>, StoreError> {
        reads::secret(&*self.client().await?, &env, &path).await
    }

    async fn secret_versions(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Vec<SecretVersion>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM secret_versions WHERE environment = $1 AND path = $2 ORDER BY version",
            rows::VERSION_COLUMNS
        );
        all(
            query(&client, &sql, &[&env.as_str(), &path]).await?,
            rows::version,
        )
    }

    async fn secret_version(
        &self,
        env: EnvironmentName,
        path: String,
        version: u64,
    ) -> Result<Option<SecretVersion>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM secret_versions WHERE environment = $1 AND path = $2 AND version = $3",
            rows::VERSION_COLUMNS
        );
        let found = query(&client, &sql, &[&env.as_str(), &path, &to_i64(version)]).await?;
        found.first().map(rows::version).transpose()
    }

    async fn list_secrets(
        &self,
        env: EnvironmentName,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        let client = self.client().await?;
        // starts_with, so LIKE's wildcards in a path mean nothing.
        let sql = format!(
            "SELECT {} FROM secrets WHERE environment = $1 AND starts_with(path, $2) \
             AND path > $3 ORDER BY path LIMIT $4",
            rows::SECRET_COLUMNS
        );
        let found = query(
            &client,
            &sql,
            &[
                &env.as_str(),
                &prefix,
                &after.unwrap_or_default(),
                &i64::from(limit),
            ],
        )
        .await?;
        all(found, rows::secret)
    }

    async fn lease(&self, id: String) -> Result<Option<VaultLease>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM vault_leases WHERE id = $1",
            rows::LEASE_COLUMNS
        );
        let found = query(&client, &sql, &[&id]).await?;
        found.first().map(rows::lease).transpose()
    }

    async fn leases(
        &self,
        prefix: String,
        open_only: bool,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM vault_leases WHERE starts_with(path, $1) AND id > $2 \
             AND (NOT $3 OR ended_at IS NULL) ORDER BY id LIMIT $4",
            rows::LEASE_COLUMNS
        );
        let found = query(
            &client,
            &sql,
            &[
                &prefix,
                &after.unwrap_or_default(),
                &open_only,
                &i64::from(limit),
            ],
        )
        .await?;
        all(found, rows::lease)
    }

    async fn lapsed_leases(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM vault_leases WHERE ended_at IS NULL AND expires_at <= $1 \
             ORDER BY expires_at LIMIT $2",
            rows::LEASE_COLUMNS
        );
        let found = query(&client, &sql, &[&now.unix_ms(), &i64::from(limit)]).await?;
        all(found, rows::lease)
    }

    async fn stale_sealed(&self, term: u32, limit: u32) -> Result<Vec<SealedValue>, StoreError> {
        let client = self.client().await?;
        let term = i64::from(term);
        let found = query(
            &client,
            "SELECT name, secret FROM environments WHERE secret IS NOT NULL AND secret_term < $1 \
             ORDER BY name LIMIT $2",
            &[&term, &i64::from(limit)],
        )
        .await?;
        let mut out = all(found, |row| {
            Ok(SealedValue::EnvironmentSecret {
                environment: rows::env_name(get(row, 0)?)?,
                ciphertext: get(row, 1)?,
            })
        })?;
        let left = i64::from(limit) - i64::try_from(out.len()).unwrap_or(i64::MAX);
        if left > 0 {
            let found = query(
                &client,
                "SELECT environment, path, version, ciphertext FROM secret_versions \
                 WHERE ciphertext IS NOT NULL AND term < $1 LIMIT $2",
                &[&term, &left],
            )
            .await?;
            out.extend(all(found, |row| {
                Ok(SealedValue::SecretVersion {
                    environment: rows::env_name(get(row, 0)?)?,
                    path: get(row, 1)?,
                    version: u64::try_from(get::<i64>(row, 2)?).unwrap_or(0),
                    ciphertext: get(row, 3)?,
                })
            })?);
        }
        Ok(out)
    }

    async fn count_stale_sealed(&self, term: u32) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let found = query(
            &client,
            "SELECT (SELECT count(*) FROM environments WHERE secret IS NOT NULL AND secret_term < $1) \
             + (SELECT count(*) FROM secret_versions WHERE ciphertext IS NOT NULL AND term < $1)",
            &[&i64::from(term)],
        )
        .await?;
        count_of(&found)
    }

    async fn rewrap(
        &self,
        values: Vec<Rewrapped>,
        progress: RewrapProgress,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .await
            .map_err(unavailable)?;
        let written = write::rewrap(&tx, &values, &progress).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests;
