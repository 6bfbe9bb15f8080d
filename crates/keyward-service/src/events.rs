//! The event log's writer: events (rate-limit warnings and refusals, guard blocks) go into a
//! bounded channel without waiting, and one task appends them to the store in batches, once a
//! second and at shutdown. A full channel drops events and counts them: events are telemetry
//! for webhooks and anomaly detection, and must never slow verification.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyward_core::Event;
use keyward_store::Store;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

const BATCH: usize = 1024;

#[derive(Debug)]
pub(crate) struct EventRecorder {
    events: mpsc::Sender<Event>,
    dropped: AtomicU64,
    stop: watch::Sender<bool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl EventRecorder {
    pub(crate) fn start(store: Arc<dyn Store>, capacity: usize, interval: Duration) -> Self {
        let (events, rx) = mpsc::channel(capacity.max(1));
        let (stop, stopped) = watch::channel(false);
        let writer = tokio::spawn(run(store, rx, stopped, interval));
        EventRecorder {
            events,
            dropped: AtomicU64::new(0),
            stop,
            writer: Mutex::new(Some(writer)),
        }
    }

    pub(crate) fn record(&self, event: Event) {
        if self.events.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops the writer after it has stored everything received so far.
    pub(crate) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.writer.lock().await.take() {
            let _ = handle.await;
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Event>,
    mut stopped: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut pending: Vec<Event> = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = rx.recv_many(&mut pending, BATCH) => {
                if received == 0 {
                    break;
                }
                if pending.len() >= BATCH {
                    write(&*store, &mut pending).await;
                }
            }
            _ = ticker.tick() => write(&*store, &mut pending).await,
            _ = stopped.changed() => break,
        }
    }
    rx.close();
    while let Ok(event) = rx.try_recv() {
        pending.push(event);
    }
    write(&*store, &mut pending).await;
}

async fn write(store: &dyn Store, pending: &mut Vec<Event>) {
    if pending.is_empty() {
        return;
    }
    match store.append_events(pending.clone()).await {
        Ok(()) => pending.clear(),
        Err(e) => {
            tracing::warn!(error = %e, events = pending.len(), "event write failed; will retry");
            // Bound what is kept while the store is down.
            if pending.len() > 64 * BATCH {
                let excess = pending.len() - 64 * BATCH;
                pending.drain(..excess);
            }
        }
    }
}
