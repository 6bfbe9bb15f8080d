//! The event log's writer: events (rate-limit warnings and refusals, guard blocks) go into a
//! bounded channel without waiting, and one task appends them to the store in batches, once a
//! second and at shutdown. A full channel drops events and counts them: events are telemetry
//! for webhooks and anomaly detection, and must never slow verification.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyward_core::Event;
use keyward_store::Store;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

const BATCH: usize = 1024;

#[derive(Debug)]
struct EventRecorder {
    events: mpsc::Sender<Event>,
    dropped: AtomicU64,
    stop: watch::Sender<bool>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl EventRecorder {
    pub(crate) fn start(
        store: Arc<dyn Store>,
        integrity: Arc<crate::integrity::Integrity>,
        capacity: usize,
        interval: Duration,
    ) -> Self {
        let (events, rx) = mpsc::channel(capacity.max(1));
        let (stop, stopped) = watch::channel(false);
        let writer = tokio::spawn(run(store, integrity, rx, stopped, interval));
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
    integrity: Arc<crate::integrity::Integrity>,
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
                    write(&*store, &integrity, &mut pending).await;
                }
            }
            _ = ticker.tick() => write(&*store, &integrity, &mut pending).await,
            _ = stopped.changed() => break,
        }
    }
    rx.close();
    while let Ok(event) = rx.try_recv() {
        pending.push(event);
    }
    write(&*store, &integrity, &mut pending).await;
}

async fn write(
    store: &dyn Store,
    integrity: &crate::integrity::Integrity,
    pending: &mut Vec<Event>,
) {
    if pending.is_empty() {
        return;
    }
    match store.append_events(pending.clone()).await {
        Ok(()) => {
            let events = std::mem::take(pending);
            publish(store, integrity, &events).await;
        }
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

/// Hands the rate-limit events to the webhook outbox: one event a window per key and limit, as
/// recorded. (Telemetry, like the events themselves: if this write fails they are logged, not
/// retried.)
async fn publish(store: &dyn Store, integrity: &crate::integrity::Integrity, events: &[Event]) {
    let mut outbox = Vec::new();
    for event in events {
        let kind = match event.kind.as_str() {
            "ratelimit.warning" => keyward_core::EventType::RateLimitWarning,
            "ratelimit.exceeded" => keyward_core::EventType::RateLimitExceeded,
            _ => continue,
        };
        let Some(id) = event.key_id else { continue };
        let Some(key) = store
            .key(id)
            .await
            .ok()
            .flatten()
            .and_then(|k| integrity.intact_key(k))
        else {
            continue;
        };
        let Ok(event_id) = crate::webhooks::new_event_id() else {
            continue;
        };
        outbox.push(crate::webhooks::key_event(
            kind,
            &key.summary(),
            event.ts,
            event_id,
            event.details.clone(),
        ));
    }
    if outbox.is_empty() {
        return;
    }
    crate::integrity::seal_outbox(integrity.key(), &mut outbox);
    let written = store
        .apply(keyward_store::Changes {
            outbox,
            ..keyward_store::Changes::default()
        })
        .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "rate-limit events could not be queued for webhooks");
    }
}

/// The events service: what happened to keys and clients (rate-limit warnings and refusals,
/// blocks, guard blocks), recorded without waiting and read back in order.
#[derive(Debug)]
pub struct Events {
    store: Arc<dyn Store>,
    clock: Arc<dyn keyward_core::Clock>,
    recorder: EventRecorder,
    /// For each key and limit, the window in which a warning or refusal event was last sent:
    /// one event a window, not one a request.
    notified: std::sync::Mutex<HashMap<(keyward_core::KeyId, u64, bool), i64>>,
}

impl Events {
    pub(crate) fn start(
        store: Arc<dyn Store>,
        integrity: Arc<crate::integrity::Integrity>,
        clock: Arc<dyn keyward_core::Clock>,
        capacity: usize,
        interval: Duration,
    ) -> Self {
        Events {
            recorder: EventRecorder::start(Arc::clone(&store), integrity, capacity, interval),
            store,
            clock,
            notified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Events after `after`, in order, at most `limit` (1..=1000).
    pub async fn after(&self, after: u64, limit: u32) -> Result<Vec<Event>, crate::ServiceError> {
        Ok(self.store.events(after, limit.clamp(1, 1000)).await?)
    }

    /// Events dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.recorder.dropped()
    }

    /// Records an event of `kind` now.
    pub(crate) fn emit(
        &self,
        kind: keyward_core::EventKind,
        key: Option<keyward_core::KeyId>,
        details: serde_json::Value,
    ) {
        self.recorder.record(Event {
            seq: 0,
            ts: self.clock.now(),
            kind: kind.as_str().to_owned(),
            key_id: key,
            details,
        });
    }

    /// Sends an event for `key` and limit `name` at most once per `window` (an id such as the
    /// limit's window number).
    pub(crate) fn notify_once(
        &self,
        kind: keyward_core::EventKind,
        key: keyward_core::KeyId,
        name: &str,
        window: i64,
        details: serde_json::Value,
    ) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let slot = (
            key,
            hasher.finish(),
            kind == keyward_core::EventKind::RatelimitWarning,
        );
        {
            let mut notified = self.notified.lock().unwrap_or_else(|p| p.into_inner());
            if notified.get(&slot) == Some(&window) {
                return;
            }
            if notified.len() > 1_000_000 {
                notified.clear();
            }
            notified.insert(slot, window);
        }
        self.emit(kind, Some(key), details);
    }

    /// Stores what was recorded and stops the writer.
    pub(crate) async fn shutdown(&self) {
        self.recorder.shutdown().await;
    }
}
