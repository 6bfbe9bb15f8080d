//! Usage batching: verifications never write to the store. Each valid verification sends a small
//! event into a bounded channel (never waiting; a full channel drops the event and counts it);
//! one task folds events per key and writes `last_used_at` and `uses` once per interval, and once
//! more at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyward_core::{KeyId, Timestamp};
use keyward_store::{KeyUsage, Store};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

#[derive(Debug)]
pub(crate) struct UsageRecorder {
    events: mpsc::Sender<(KeyId, Timestamp)>,
    dropped: AtomicU64,
    stop: watch::Sender<bool>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl UsageRecorder {
    pub(crate) fn start(store: Arc<dyn Store>, capacity: usize, interval: Duration) -> Self {
        let (events, rx) = mpsc::channel(capacity.max(1));
        let (stop, stopped) = watch::channel(false);
        let flusher = tokio::spawn(run(store, rx, stopped, interval));
        UsageRecorder {
            events,
            dropped: AtomicU64::new(0),
            stop,
            flusher: Mutex::new(Some(flusher)),
        }
    }

    pub(crate) fn record(&self, id: KeyId, at: Timestamp) {
        if self.events.try_send((id, at)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops the flusher after it has written everything received so far.
    pub(crate) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.flusher.lock().await.take() {
            let _ = handle.await;
        }
    }
}

const RECEIVE_BATCH: usize = 1024;

/// Pending-usage table capacity kept between flushes; a larger one is freed after a flush.
const KEEP_CAPACITY: usize = 16 * 1024;

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<(KeyId, Timestamp)>,
    mut stopped: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut pending: HashMap<KeyId, KeyUsage> = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Events are taken in batches: one wake-up per batch, not per verification.
    let mut batch = Vec::with_capacity(RECEIVE_BATCH);
    loop {
        tokio::select! {
            received = rx.recv_many(&mut batch, RECEIVE_BATCH) => {
                if received == 0 {
                    break;
                }
                for (id, at) in batch.drain(..) {
                    fold(&mut pending, id, at);
                }
            }
            _ = ticker.tick() => flush(&*store, &mut pending).await,
            _ = stopped.changed() => break,
        }
    }
    rx.close();
    while let Ok((id, at)) = rx.try_recv() {
        fold(&mut pending, id, at);
    }
    flush(&*store, &mut pending).await;
}

fn fold(pending: &mut HashMap<KeyId, KeyUsage>, id: KeyId, at: Timestamp) {
    let entry = pending.entry(id).or_insert(KeyUsage {
        id,
        last_used_at: at,
        uses: 0,
    });
    entry.uses += 1;
    entry.last_used_at = entry.last_used_at.max(at);
}

async fn flush(store: &dyn Store, pending: &mut HashMap<KeyId, KeyUsage>) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<KeyUsage> = pending.values().copied().collect();
    match store.record_usage(batch).await {
        // After a burst, give the table's memory back rather than keeping its peak size.
        Ok(()) if pending.capacity() > KEEP_CAPACITY => *pending = HashMap::new(),
        Ok(()) => pending.clear(),
        // Kept for the next tick: usage is retried, not lost, while the store is down.
        Err(e) => {
            tracing::warn!(error = %e, keys = pending.len(), "usage flush failed; will retry")
        }
    }
}
