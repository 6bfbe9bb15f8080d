//! The change feed across nodes.
//!
//! Every write that changes state also appends a row to `change_log` naming what it changed
//! (ids and names, never a value) and sends `NOTIFY keyward_changes`, both in its transaction.
//! Writes are serialised by an advisory lock, so rows are numbered in commit order without
//! gaps. Each node follows the log from the sequence it last delivered:
//!
//! * its own writes are delivered to its listeners right after they commit (after any earlier
//!   rows it had not delivered yet), as the contract asks;
//! * other nodes' writes are delivered by a task that `LISTEN`s on a connection of its own and,
//!   on each notification (and once a second, in case one was lost), reads the rows after the
//!   last it delivered and the records they name, as they are now.
//!
//! Records are always read when delivered, so a listener never learns an older state after a
//! newer one. When the listening connection is lost, the node keeps vouching for what it has
//! cached for a short grace (a restart of PostgreSQL stops every node's writes too), then tells
//! its listeners the feed is interrupted. After a reconnect it tells them so at once, reads
//! every row it missed, and only then tells them it has resumed.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use deadpool_postgres::Transaction;
use keyward_core::{EnvironmentName, KeyId, PlanName, RoleName};
use keyward_store::{ChangeListener, Changes, StoreError};
use serde::{Deserialize, Serialize};
use tokio_postgres::AsyncMessage;

use crate::{Inner, rows, unavailable};

/// The notification channel.
pub(crate) const CHANNEL: &str = "keyward_changes";

/// Rows read from the log at a time.
const PAGE: i64 = 200;

/// How often the listening task looks at the log without a notification, and checks that its
/// connection still answers.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a committed write changed, by identity only.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Summary {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inserted_keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    updated_keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    quotas: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    environments: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    environment_secrets: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    plans: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<(String, String)>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    keyrings: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    vault: bool,
    /// Set for a seal, which has no record of its own: the row then announces the write (its
    /// audit entry, which is what nodes act on).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    seal: bool,
}

impl Summary {
    pub(crate) fn of(changes: &Changes) -> Summary {
        let ids =
            |keys: &[keyward_core::KeyRecord]| keys.iter().map(|k| k.id.to_string()).collect();
        let mut environments: BTreeSet<String> = BTreeSet::new();
        environments.extend(changes.environments.iter().map(|e| e.name.to_string()));
        environments.extend(
            changes
                .update_environments
                .iter()
                .map(|e| e.name.to_string()),
        );
        let mut roles: BTreeSet<String> = BTreeSet::new();
        roles.extend(changes.upsert_roles.iter().map(|r| r.name.to_string()));
        roles.extend(changes.delete_roles.iter().map(ToString::to_string));
        let mut plans: BTreeSet<String> = BTreeSet::new();
        plans.extend(changes.upsert_plans.iter().map(|p| p.name.to_string()));
        plans.extend(changes.delete_plans.iter().map(ToString::to_string));
        let mut secrets: BTreeSet<(String, String)> = BTreeSet::new();
        let mut secret = |env: &EnvironmentName, path: &str| {
            secrets.insert((env.to_string(), path.to_owned()));
        };
        for m in &changes.upsert_secrets {
            secret(&m.environment, &m.path);
        }
        for v in &changes.upsert_secret_versions {
            secret(&v.environment, &v.path);
        }
        for (env, path, _) in &changes.delete_secret_versions {
            secret(env, path);
        }
        for (env, path) in &changes.delete_secrets {
            secret(env, path);
        }
        Summary {
            inserted_keys: ids(&changes.insert_keys),
            updated_keys: ids(&changes.update_keys),
            quotas: changes
                .set_quotas
                .iter()
                .map(|(id, _)| id.to_string())
                .collect(),
            environments: environments.into_iter().collect(),
            environment_secrets: changes
                .environment_secrets
                .iter()
                .map(|(env, _)| env.to_string())
                .collect(),
            roles: roles.into_iter().collect(),
            plans: plans.into_iter().collect(),
            secrets: secrets.into_iter().collect(),
            keyrings: !changes.keyrings.is_empty(),
            vault: changes.vault.is_some(),
            seal: changes.seal,
        }
    }

    /// Nothing another node caches changed (an audit entry of a read, a lease).
    pub(crate) fn is_empty(&self) -> bool {
        *self == Summary::default()
    }
}

/// Appends the write's row to the log and notifies, inside its transaction (the write lock is
/// held); returns the row's sequence number.
pub(crate) async fn record(
    tx: &Transaction<'_>,
    origin: &str,
    summary: &Summary,
    at: i64,
) -> Result<i64, StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO change_log (seq, origin, at, summary) \
             SELECT coalesce(max(seq), 0) + 1, $1, $2, $3 FROM change_log RETURNING seq",
        )
        .await
        .map_err(unavailable)?;
    let row = tx
        .query_one(&stmt, &[&origin, &at, &rows::to_json(summary)?])
        .await
        .map_err(unavailable)?;
    let seq: i64 = rows::get(&row, 0)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
        .await
        .map_err(unavailable)?;
    Ok(seq)
}

/// The listeners, and how far along the log they have been told.
pub(crate) struct Feed {
    listeners: std::sync::Mutex<Vec<Weak<dyn ChangeListener>>>,
    /// Whether listeners were last told the feed is whole (`resumed`) rather than
    /// `interrupted`.
    vouching: std::sync::atomic::AtomicBool,
    /// When the listening connection last answered (a heartbeat or a catch-up).
    last_contact: std::sync::Mutex<Instant>,
    /// The last row delivered, and the last audit entry; held while delivering, so listeners
    /// hear one change at a time.
    delivered: tokio::sync::Mutex<i64>,
    audit_seen: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").finish_non_exhaustive()
    }
}

impl Feed {
    pub(crate) fn new(delivered: i64, audit_seen: u64) -> Feed {
        Feed {
            audit_seen: std::sync::atomic::AtomicU64::new(audit_seen),
            listeners: std::sync::Mutex::new(Vec::new()),
            vouching: std::sync::atomic::AtomicBool::new(true),
            last_contact: std::sync::Mutex::new(Instant::now()),
            delivered: tokio::sync::Mutex::new(delivered),
        }
    }

    pub(crate) fn subscribe(&self, listener: Weak<dyn ChangeListener>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    fn each(&self, mut tell: impl FnMut(&dyn ChangeListener)) {
        let live: Vec<Arc<dyn ChangeListener>> = {
            let mut list = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|l| l.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for listener in live {
            tell(&*listener);
        }
    }

    /// Holds delivery: taken by a write before it commits, so the listening task cannot
    /// deliver the write's row before the write does.
    pub(crate) async fn hold(&self) -> tokio::sync::MutexGuard<'_, i64> {
        self.delivered.lock().await
    }

    /// Delivers this node's own committed write (row `seq`, if it has one), after any earlier
    /// rows not yet delivered, with delivery held since before its commit.
    pub(crate) async fn deliver_own(
        &self,
        delivered: &mut i64,
        client: &deadpool_postgres::ClientWrapper,
        seq: Option<i64>,
        changes: &Changes,
    ) {
        // Bounded: once committed, the write returns even if the server stops answering now.
        if let Some(seq) = seq
            && *delivered < seq - 1
            && let Err(e) =
                crate::timed(self.catch_up_locked(client, delivered, Some(seq - 1))).await
        {
            // The listening task delivers them (and this row again) once it can read them.
            tracing::warn!(error = %e, "could not read the change log after a write");
        }
        self.each(|l| l.applied(changes));
        if let Some(seq) = seq
            && *delivered == seq - 1
        {
            *delivered = seq;
        }
        // This write's entries were delivered with it; entries before them by other nodes are
        // delivered by the listening task (a revocation twice is harmless).
        if let Some(last) = changes.audit.last() {
            self.audit_seen
                .fetch_max(last.seq, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Delivers every row after the last delivered.
    pub(crate) async fn catch_up(
        &self,
        client: &deadpool_postgres::ClientWrapper,
    ) -> Result<(), StoreError> {
        let mut delivered = self.delivered.lock().await;
        self.catch_up_locked(client, &mut delivered, None).await
    }

    async fn catch_up_locked(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        delivered: &mut i64,
        through: Option<i64>,
    ) -> Result<(), StoreError> {
        let stmt = client
            .prepare_cached(
                "SELECT seq, summary FROM change_log WHERE seq > $1 AND seq <= $2 \
                 ORDER BY seq LIMIT $3",
            )
            .await
            .map_err(unavailable)?;
        loop {
            let found = client
                .query(&stmt, &[&*delivered, &through.unwrap_or(i64::MAX), &PAGE])
                .await
                .map_err(unavailable)?;
            if found.is_empty() {
                return self.deliver_audit(client).await;
            }
            for row in found {
                let seq: i64 = rows::get(&row, 0)?;
                let text: &str = rows::get(&row, 1)?;
                match serde_json::from_str::<Summary>(text) {
                    Ok(summary) => {
                        let changes = load(client, &summary).await?;
                        self.each(|l| l.applied(&changes));
                    }
                    Err(_) => tracing::warn!(seq, "skipped an unreadable change log row"),
                }
                *delivered = seq;
            }
        }
    }

    /// Delivers the audit entries appended since the last delivered, on their own. The log is
    /// hash-chained and its head tagged: what a revocation or a seal says is learnt from its
    /// entry even if the change log's row naming the change was suppressed.
    async fn deliver_audit(
        &self,
        client: &deadpool_postgres::ClientWrapper,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT {} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            rows::AUDIT_COLUMNS
        );
        loop {
            let after = self.audit_seen.load(std::sync::atomic::Ordering::Acquire);
            let found = crate::reads::query(client, &sql, &[&rows::to_i64(after), &PAGE]).await?;
            let audit = crate::reads::all(found, rows::audit)?;
            let Some(last) = audit.last().map(|e| e.seq) else {
                return Ok(());
            };
            let changes = Changes {
                audit,
                ..Changes::default()
            };
            self.each(|l| l.applied(&changes));
            self.audit_seen
                .fetch_max(last, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Tells listeners the feed may have missed changes, once until it resumes.
    fn interrupted(&self) {
        if self
            .vouching
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            metrics::gauge!("keyward_store_feed_vouched").set(0.0);
            self.each(|l| l.interrupted());
        }
    }

    fn resumed(&self) {
        if !self
            .vouching
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            metrics::gauge!("keyward_store_feed_vouched").set(1.0);
            self.each(|l| l.resumed());
            tracing::info!("the change feed is following PostgreSQL");
        }
    }

    fn touch(&self) {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn since_contact(&self) -> Duration {
        self.last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

/// The changes a row names, as the store holds them now. A name gone from the store since (a
/// role or plan deleted, a secret removed) is delivered as a deletion.
async fn load(
    client: &deadpool_postgres::ClientWrapper,
    summary: &Summary,
) -> Result<Changes, StoreError> {
    use crate::reads;
    let mut changes = Changes {
        insert_keys: reads::keys_by_id(client, &summary.inserted_keys).await?,
        update_keys: reads::keys_by_id(client, &summary.updated_keys).await?,
        ..Changes::default()
    };
    for id in &summary.quotas {
        let Ok(id) = id.parse::<KeyId>() else {
            continue;
        };
        changes
            .set_quotas
            .push((id, reads::quota_state(client, id).await?));
    }
    if !summary.environments.is_empty() {
        changes.update_environments = reads::environments(client)
            .await?
            .into_iter()
            .filter(|e| summary.environments.iter().any(|n| n == e.name.as_str()))
            .collect();
    }
    if !summary.environment_secrets.is_empty() {
        changes.environment_secrets = reads::environment_secrets(client)
            .await?
            .into_iter()
            .filter(|(e, _)| summary.environment_secrets.iter().any(|n| n == e.as_str()))
            .collect();
    }
    if !summary.roles.is_empty() {
        let now = reads::roles(client).await?;
        for name in &summary.roles {
            match now.iter().find(|r| r.name.as_str() == name) {
                Some(role) => changes.upsert_roles.push(role.clone()),
                None => {
                    if let Ok(name) = RoleName::parse(name) {
                        changes.delete_roles.push(name);
                    }
                }
            }
        }
    }
    if !summary.plans.is_empty() {
        let now = reads::plans(client).await?;
        for name in &summary.plans {
            match now.iter().find(|p| p.name.as_str() == name) {
                Some(plan) => changes.upsert_plans.push(plan.clone()),
                None => {
                    if let Ok(name) = PlanName::parse(name) {
                        changes.delete_plans.push(name);
                    }
                }
            }
        }
    }
    for (env, path) in &summary.secrets {
        let Ok(env) = EnvironmentName::parse(env) else {
            continue;
        };
        match reads::secret(client, &env, path).await? {
            Some(meta) => changes.upsert_secrets.push(meta),
            None => changes.delete_secrets.push((env, path.clone())),
        }
    }
    if summary.keyrings {
        changes.keyrings = reads::keyrings(client).await?;
    }
    if summary.vault {
        changes.vault = reads::vault(client).await?;
    }
    // A seal is learnt from its audit entry (delivered with the entries), never from a row
    // of the change log, which anyone who can write to the database could forge.
    Ok(changes)
}

/// How often the listening task checks its connection and the log without a notification: a
/// third of the grace, at most a second, so a healthy connection is never taken for a lost one.
fn heartbeat(grace: Duration) -> Duration {
    (grace / 3).clamp(Duration::from_millis(20), HEARTBEAT)
}

/// How long connecting and listening, or one catch-up, may take before the connection counts
/// as lost. (A server that accepts connections but never answers must not hold the feed.)
const STALL: Duration = Duration::from_secs(5);

/// Follows the log for as long as the store lives: the listening connection, the heartbeat,
/// reconnects, and what listeners are told about each. A watchdog beside it stops vouching
/// once nothing answered for the grace, however the connection is stuck.
pub(crate) async fn follow(store: Weak<Inner>, grace: Duration) {
    tokio::spawn(watch_contact(store.clone(), grace));
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = store.upgrade() else { return };
        let config = inner.config.clone();
        drop(inner);
        match tokio::time::timeout(STALL, listen(&config)).await {
            Ok(Ok((listening, mut notified))) => {
                backoff = Duration::from_millis(100);
                // What was delivered before the connection was lost may be stale now: vouch for
                // nothing until every missed row is in.
                {
                    let Some(inner) = store.upgrade() else { return };
                    inner.feed.interrupted();
                }
                if follow_connected(&store, &listening, &mut notified, heartbeat(grace))
                    .await
                    .is_none()
                {
                    return;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the change feed cannot reach PostgreSQL");
            }
            Err(_) => tracing::debug!("the change feed's connection to PostgreSQL stalled"),
        }
        tokio::time::sleep(backoff.min(grace / 4)).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Stops vouching once the listening connection has not answered for `grace`.
async fn watch_contact(store: Weak<Inner>, grace: Duration) {
    let tick = (grace / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = store.upgrade() else { return };
        if inner.feed.since_contact() >= grace
            && inner
                .feed
                .vouching
                .load(std::sync::atomic::Ordering::Acquire)
        {
            tracing::warn!(
                "the change feed lost PostgreSQL: cached keys are no longer vouched for until it \
                 is back"
            );
            inner.feed.interrupted();
        }
    }
}

/// While the listening connection lives: catches up, resumes, then delivers what is notified
/// and what the heartbeat finds. Returns `None` when the store is gone, `Some` when the
/// connection was lost.
async fn follow_connected(
    store: &Weak<Inner>,
    listening: &tokio_postgres::Client,
    notified: &mut tokio::sync::mpsc::Receiver<()>,
    heartbeat: Duration,
) -> Option<()> {
    // The store is held only while a catch-up runs, so dropping it ends this task.
    let catch_up = |inner: Arc<Inner>| async move {
        let caught_up = tokio::time::timeout(STALL, async {
            let client = inner.pool.get().await.map_err(unavailable)?;
            inner.feed.catch_up(&client).await
        })
        .await;
        match caught_up {
            Ok(Ok(())) => {
                inner.feed.touch();
                let vouching = inner
                    .feed
                    .vouching
                    .load(std::sync::atomic::Ordering::Acquire);
                metrics::gauge!("keyward_store_feed_vouched").set(if vouching { 1.0 } else { 0.0 });
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the change feed could not catch up");
                false
            }
            Err(_) => false,
        }
    };
    if !catch_up(store.upgrade()?).await {
        return Some(());
    }
    store.upgrade()?.feed.resumed();
    loop {
        let beat = tokio::select! {
            got = notified.recv() => {
                if got.is_none() {
                    return Some(());
                }
                false
            }
            () = tokio::time::sleep(heartbeat) => true,
        };
        if beat {
            let alive = tokio::time::timeout(heartbeat * 2, listening.simple_query("SELECT 1"))
                .await
                .is_ok_and(|r| r.is_ok());
            if !alive {
                return Some(());
            }
        }
        if !catch_up(store.upgrade()?).await {
            return Some(());
        }
    }
}

/// A connection of its own that `LISTEN`s, and a channel that hears of each notification. The
/// channel closes when the connection ends.
async fn listen(
    config: &tokio_postgres::Config,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::Receiver<()>), StoreError> {
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(unavailable)?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    // One pending wake-up is enough: a catch-up reads every row there is.
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(())
                    {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(unavailable)?;
    Ok((client, rx))
}
