//! Usage batching: verifications never write to the store, nor wake anything. Each valid
//! verification folds into a sharded in-memory table (one entry per key: its latest use and a
//! count); one task writes `last_used_at` and `uses` once per interval, and once more at
//! shutdown. The table holds at most `capacity` keys between two writes: a use of a key beyond
//! that is dropped and counted, so memory stays bounded whatever the load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyward_core::{KeyId, Timestamp};
use keyward_store::{KeyUsage, Store};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// Shards of the table: verifications on different cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Pending-usage shard capacity kept between flushes; a larger one is freed after a flush.
const KEEP_CAPACITY: usize = 1024;

type Pending = HashMap<KeyId, KeyUsage, std::hash::BuildHasherDefault<KeyIdHasher>>;

/// Hashes a key id by its last eight bytes, which are random (UUIDv7): keyward makes every id,
/// so no client can choose ids that collide, and a verification spends no SipHash on usage.
#[derive(Default)]
struct KeyIdHasher(u64);

impl std::hash::Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        match bytes.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            // The id's sixteen bytes (its length prefix, also written, is ignored).
            // Multiplied by an odd constant: the variant bits in byte 8 are fixed, and the
            // shard index already took the low bits of byte 15.
            Some(random) if bytes.len() == 16 => {
                self.0 = u64::from_le_bytes(random).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            }
            _ => {
                for &b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(b);
                }
            }
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

#[derive(Debug)]
struct Table {
    shards: Box<[std::sync::Mutex<Pending>]>,
    per_shard: usize,
    dropped: AtomicU64,
}

impl Table {
    fn shard(&self, id: KeyId) -> std::sync::MutexGuard<'_, Pending> {
        // Key ids end in random bits (UUIDv7).
        let index = (id.0.as_u128() as usize) % SHARDS;
        self.shards
            .get(index)
            .unwrap_or_else(|| unreachable!("the index is below SHARDS"))
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, id: KeyId, at: Timestamp) {
        let mut shard = self.shard(id);
        if let Some(entry) = shard.get_mut(&id) {
            entry.uses += 1;
            entry.last_used_at = entry.last_used_at.max(at);
        } else if shard.len() < self.per_shard {
            shard.insert(
                id,
                KeyUsage {
                    id,
                    last_used_at: at,
                    uses: 1,
                },
            );
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes everything pending, leaving empty shards.
    fn take(&self) -> Vec<KeyUsage> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.values().copied());
            if shard.capacity() > KEEP_CAPACITY {
                // After a burst, give the memory back rather than keeping the peak size.
                *shard = Pending::default();
            } else {
                shard.clear();
            }
        }
        out
    }

    /// Puts back what a failed write took, folded with what arrived meanwhile.
    fn restore(&self, usage: Vec<KeyUsage>) {
        for old in usage {
            let mut shard = self.shard(old.id);
            match shard.get_mut(&old.id) {
                Some(entry) => {
                    entry.uses += old.uses;
                    entry.last_used_at = entry.last_used_at.max(old.last_used_at);
                }
                None => {
                    shard.insert(old.id, old);
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct UsageRecorder {
    table: Arc<Table>,
    stop: watch::Sender<bool>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl UsageRecorder {
    /// Starts the writer; at most `capacity` keys are pending between two writes.
    pub(crate) fn start(store: Arc<dyn Store>, capacity: usize, interval: Duration) -> Self {
        let table = Arc::new(Table {
            shards: (0..SHARDS)
                .map(|_| std::sync::Mutex::new(Pending::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            dropped: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let flusher = tokio::spawn(run(store, Arc::clone(&table), stopped, interval));
        UsageRecorder {
            table,
            stop,
            flusher: Mutex::new(Some(flusher)),
        }
    }

    pub(crate) fn record(&self, id: KeyId, at: Timestamp) {
        self.table.record(id, at);
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.table.dropped.load(Ordering::Relaxed)
    }

    /// Stops the flusher after it has written everything recorded so far.
    pub(crate) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.flusher.lock().await.take() {
            let _ = handle.await;
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    table: Arc<Table>,
    mut stopped: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => flush(&*store, &table).await,
            _ = stopped.changed() => break,
        }
    }
    flush(&*store, &table).await;
}

/// Keys written per store write: a flush after a burst over many keys is several short writes,
/// so admin writes waiting for the store's writer are never held up for long.
const WRITE_CHUNK: usize = 1000;

async fn flush(store: &dyn Store, table: &Table) {
    let mut batch = table.take();
    while !batch.is_empty() {
        let rest = batch.split_off(batch.len().min(WRITE_CHUNK));
        if let Err(e) = store.record_usage(batch.clone()).await {
            // Kept for the next tick: usage is retried, not lost, while the store is down.
            tracing::warn!(error = %e, keys = batch.len() + rest.len(), "usage flush failed; will retry");
            table.restore(batch);
            table.restore(rest);
            return;
        }
        batch = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(capacity: usize) -> Table {
        Table {
            shards: (0..SHARDS)
                .map(|_| std::sync::Mutex::new(Pending::default()))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            dropped: AtomicU64::new(0),
        }
    }

    #[test]
    fn uses_fold_per_key_and_the_table_stays_bounded() {
        let table = table(SHARDS * 2);
        let at = |ms| Timestamp::from_unix_ms(ms);
        let one = KeyId(uuid::Uuid::from_u128(1));
        for ms in [30, 10, 20] {
            table.record(one, at(ms));
        }
        // Far more distinct keys than the table holds: the excess is dropped and counted.
        for i in 0..10_000u128 {
            table.record(KeyId(uuid::Uuid::from_u128(1000 + i)), at(5));
        }
        let dropped = table.dropped.load(Ordering::Relaxed);
        let taken = table.take();
        assert!(taken.len() <= SHARDS * 2, "bounded: {}", taken.len());
        assert_eq!(taken.len() as u64 + dropped, 10_001);
        let mine = taken.iter().find(|u| u.id == one).unwrap();
        assert_eq!((mine.uses, mine.last_used_at), (3, at(30)));
        // A failed write is put back and folded with what came after it.
        table.restore(vec![*mine]);
        table.record(one, at(40));
        let again = table.take();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].uses, again[0].last_used_at), (4, at(40)));
        assert!(table.take().is_empty());
    }
}
