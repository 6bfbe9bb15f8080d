//! The connection table: at most `max_connections` at once, and when it is full a new
//! connection takes the place of the oldest one that has no request in flight (one still
//! sending its first header, or idle between requests), rather than being turned away. A flood
//! of connections that never finish a request then only pushes out its own kind: a client that
//! sends a request is served, and `/healthz` and verify stay reachable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How many of the oldest connections are looked at for one to push out.
const SCAN: usize = 256;

/// One connection's standing: how many of its requests are in flight, and the signal that
/// closes it.
#[derive(Debug, Default)]
pub(crate) struct Connection {
    in_flight: AtomicUsize,
    evicted: Notify,
}

impl Connection {
    /// Marks a request in flight until the guard is dropped.
    pub(crate) fn serving(self: &Arc<Self>) -> Serving {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Serving(Arc::clone(self))
    }

    /// Completes when the table has pushed this connection out.
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// A request in flight on a connection; see [`Connection::serving`].
#[derive(Debug)]
pub(crate) struct Serving(Arc<Connection>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(crate) struct Table {
    slots: Arc<Semaphore>,
    limit: usize,
    /// Connections in the order they came, weakly: a closed one is skipped and dropped.
    order: Mutex<VecDeque<Weak<Connection>>>,
}

impl Table {
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Table {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// A slot for a new connection: a free one, or one made by pushing out the oldest
    /// connection with no request in flight. `None` when every connection is serving.
    pub(crate) async fn admit(&self) -> Option<(OwnedSemaphorePermit, Arc<Connection>)> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !self.evict_one() {
                    return None;
                }
                // The pushed-out connection gives its slot back as soon as its task sees the
                // signal; wait that long, no longer.
                tokio::time::timeout(
                    std::time::Duration::from_millis(100),
                    Arc::clone(&self.slots).acquire_owned(),
                )
                .await
                .ok()?
                .ok()?
            }
        };
        let connection = Arc::new(Connection::default());
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        if order.len() >= self.limit.saturating_mul(2) {
            order.retain(|c| c.strong_count() > 0);
        }
        order.push_back(Arc::downgrade(&connection));
        Some((permit, connection))
    }

    /// Signals the oldest connection with no request in flight to close. False if none was
    /// found among the oldest [`SCAN`].
    fn evict_one(&self) -> bool {
        let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut busy = Vec::new();
        let mut evicted = false;
        while busy.len() < SCAN {
            let Some(entry) = order.pop_front() else {
                break;
            };
            let Some(connection) = entry.upgrade() else {
                continue;
            };
            if connection.in_flight.load(Ordering::Acquire) == 0 {
                // notify_one keeps a permit, so the signal is not lost if the task is not
                // waiting at this instant.
                connection.evicted.notify_one();
                evicted = true;
                break;
            }
            busy.push(entry);
        }
        // Connections passed over keep their place at the front.
        for entry in busy.into_iter().rev() {
            order.push_front(entry);
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn a_full_table_pushes_out_the_oldest_idle_connection_never_a_serving_one() {
        let table = Table::new(3);
        let (_p1, serving) = table.admit().await.unwrap();
        let (p2, idle_old) = table.admit().await.unwrap();
        let (_p3, _idle_new) = table.admit().await.unwrap();
        let _request = serving.serving();
        // The oldest is serving: the next oldest, idle, is signalled.
        let signalled = tokio::spawn({
            let idle_old = Arc::clone(&idle_old);
            async move { idle_old.evicted().await }
        });
        let freed = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            drop(p2);
        });
        let (_p4, _newest) = table.admit().await.expect("a slot was made");
        signalled.await.unwrap();
        freed.await.unwrap();
        // With every connection serving, a newcomer is turned away.
        let table = Table::new(1);
        let (_p, only) = table.admit().await.unwrap();
        let _busy = only.serving();
        assert!(table.admit().await.is_none());
    }
}
