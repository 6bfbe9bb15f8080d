//! The singleton: work only one node may do at a time (sweeps that write, the rewrap, the
//! schedulers) runs on the node holding a session-level advisory lock, on a connection of its
//! own.
//!
//! The holder checks its connection every second and stops leading the moment a check fails.
//! PostgreSQL releases the lock when the session ends: at once when the holder's process dies,
//! and, for a holder cut off by the network, when the server ends its session for being idle
//! longer than the lease (`idle_session_timeout`), after which another node takes over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::Inner;

const LEADER_LOCK: i64 = 0x6b65_7977_0003;

/// How often the holder checks its connection, and others try to take the lock.
const TICK: Duration = Duration::from_secs(1);

/// How long a cut-off holder's session outlives its last check, at most.
pub(crate) const LEASE: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(crate) struct Leadership {
    leads: AtomicBool,
}

impl Leadership {
    pub(crate) fn leads(&self) -> bool {
        self.leads.load(Ordering::Acquire)
    }

    fn set(&self, leads: bool) {
        // Every tick, not only on a change: a recorder installed after start sees it too.
        metrics::gauge!("keyward_singleton_leader").set(if leads { 1.0 } else { 0.0 });
        if self.leads.swap(leads, Ordering::AcqRel) != leads {
            if leads {
                tracing::info!("this node now does the singleton work");
            } else {
                tracing::warn!("this node no longer does the singleton work");
            }
        }
    }
}

/// Holds or seeks the lock for as long as the store lives.
pub(crate) async fn run(store: Weak<Inner>) {
    loop {
        let Some(inner) = store.upgrade() else { return };
        let config = inner.config.clone();
        let leadership = Arc::clone(&inner.leadership);
        drop(inner);
        let connected = tokio::time::timeout(TICK * 5, config.connect(tokio_postgres::NoTls)).await;
        if let Ok(Ok((client, connection))) = connected {
            let driver = tokio::spawn(connection);
            hold(&store, &client, &leadership).await;
            leadership.set(false);
            drop(client);
            driver.abort();
        }
        if store.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Seeks the lock on `client` every tick and, once held, checks the connection every tick;
/// returns when the connection fails or the store is gone.
async fn hold(store: &Weak<Inner>, client: &tokio_postgres::Client, leadership: &Leadership) {
    // A session cut off from its node ends by itself, and with it the lock. (Before
    // PostgreSQL 14 the setting does not exist: the lock lasts until TCP gives up.)
    let lease = format!("SET idle_session_timeout = {}", LEASE.as_millis());
    let _ = client.batch_execute(&lease).await;
    loop {
        if store.strong_count() == 0 {
            return;
        }
        let check = async {
            if leadership.leads() {
                client.simple_query("SELECT 1").await.map(|_| true)
            } else {
                let row = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                    .await?;
                row.try_get::<_, bool>(0)
            }
        };
        match tokio::time::timeout(TICK * 2, check).await {
            Ok(Ok(held)) => leadership.set(held),
            _ => return,
        }
        tokio::time::sleep(TICK).await;
    }
}
