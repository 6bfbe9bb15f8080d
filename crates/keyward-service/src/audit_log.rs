//! The audit log's writer: every change is committed here, with its audit entries, in one
//! atomic write.
//!
//! Holding the writer ([`AuditLog::lock`]) serialises admin writes on this node, so the
//! read-modify-write of a record cannot interleave with another here; the store's chain check
//! refuses a write whose head another writer (another instance over the same store) moved
//! meanwhile. The loser learns the new head and [`AuditLog::retrying`] runs its use case again,
//! reading afresh what it changes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use keyward_core::Clock;
use keyward_core::audit::{AuditEntry, GENESIS_HASH};
use keyward_store::{AuditHead, Changes, Store, StoreError};

use crate::audit::{self, PendingEntry};
use crate::integrity::{self, Integrity};
use crate::{ServiceError, VerifyCache};

/// Attempts of a use case that keeps losing the race for the log's head (to writers on other
/// nodes: on one node, writers take turns). Between attempts each waits a random while, doubling
/// up to about 30 ms, so nodes that collided once do not collide again in step.
const ATTEMPTS: usize = 12;

/// Waits before attempt `tries + 1`: a random time below 0.5 ms × 2^tries (at most 32 ms).
async fn back_off(tries: usize) {
    let ceiling_us: u64 = 500 << tries.min(6);
    // Jitter needs no cryptographic strength; the low bits of the clock spread nodes apart.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mixed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    tokio::time::sleep(std::time::Duration::from_micros(mixed % ceiling_us)).await;
}

type AuditWaiter = tokio::sync::oneshot::Sender<Result<(), AuditFailure>>;

/// Why a batch of read audits could not be committed, for each of its waiters.
#[derive(Debug, Clone)]
enum AuditFailure {
    Raced,
    Other(String),
}

/// The writer's state: the audit head, and what a commit whose caller went away left behind.
///
/// A store write runs on a task of its own, so it finishes even if the request that made it is
/// dropped (the client went away, the timeout fired). Its caller then never learns the new
/// head; `stale` says so, and the next holder of the writer waits for that write, re-reads the
/// head and drops the verification cache (whatever the write changed is read afresh), so no
/// later write is refused with a stale head and no verdict outlives the change.
#[derive(Debug)]
pub(crate) struct Writer {
    head: AuditHead,
    /// Keys revoked so far, as the audit checkpoint counts them.
    revoked: u64,
    in_flight: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
    stale: bool,
}

/// The audit log: its writer, and the group commit of entries that record no change.
#[derive(Debug)]
pub struct AuditLog {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    integrity: Arc<Integrity>,
    /// Dropped when a cancelled commit leaves this node unsure of what changed.
    cache: Arc<VerifyCache>,
    writer: tokio::sync::Mutex<Writer>,
    /// Entries waiting for [`AuditLog::batched`]'s next group commit.
    queue: std::sync::Mutex<Vec<(PendingEntry, AuditWaiter)>>,
    /// Set while one caller commits the queued entries for everyone.
    leader: AtomicBool,
    led: tokio::sync::Notify,
    /// Relaxed (read-audit) commits not yet made durable by a sync.
    unsynced: AtomicBool,
}

/// Held by the caller committing the queue for everyone; dropping it (also when that caller is
/// cancelled) hands the lead on.
struct Leading<'a>(&'a AuditLog);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.leader.store(false, Ordering::Release);
        self.0.led.notify_waiters();
    }
}

fn genesis() -> AuditHead {
    AuditHead {
        seq: 0,
        hash: GENESIS_HASH.to_owned(),
    }
}

impl AuditLog {
    /// Opens the writer at the store's head. Returns the log and the revocation count of an
    /// intact checkpoint (what the integrity check after unseal compares with).
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        integrity: Arc<Integrity>,
        cache: Arc<VerifyCache>,
    ) -> Result<(Self, u64), ServiceError> {
        let head = store.audit_head().await?.unwrap_or_else(genesis);
        let checkpoint = store.audit_checkpoint().await?;
        if let Some(problem) =
            integrity::audit_head_problem(integrity.key(), &head, checkpoint.as_ref())
        {
            integrity.report(format!("audit log: {problem}"));
        }
        let revoked = checkpoint
            .filter(|c| integrity::checkpoint_intact(integrity.key(), c))
            .map_or(0, |c| c.revoked);
        let log = AuditLog {
            store,
            clock,
            integrity,
            cache,
            writer: tokio::sync::Mutex::new(Writer {
                head,
                revoked,
                in_flight: None,
                stale: false,
            }),
            queue: std::sync::Mutex::new(Vec::new()),
            leader: AtomicBool::new(false),
            led: tokio::sync::Notify::new(),
            unsynced: AtomicBool::new(false),
        };
        Ok((log, revoked))
    }

    /// Audit entries after sequence number `after`, oldest first, at most `limit` (1..=1000;
    /// 0 means 100).
    pub async fn entries(&self, after: u64, limit: u32) -> Result<Vec<AuditEntry>, ServiceError> {
        let limit = match limit {
            0 => crate::limits::PAGE_DEFAULT,
            n => n.min(crate::limits::PAGE_MAX),
        };
        Ok(self.store.audit_entries(after, limit).await?)
    }

    /// Takes the writer, first settling what a cancelled commit left behind (see [`Writer`]).
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Writer> {
        let mut writer = self.writer.lock().await;
        if writer.stale {
            // Each step survives this caller being cancelled too: `stale` stays set until the
            // head is known again.
            if let Some(task) = writer.in_flight.as_mut() {
                let _ = task.await;
            }
            writer.in_flight = None;
            match self.store.audit_head().await {
                Ok(head) => {
                    writer.head = head.unwrap_or_else(genesis);
                    if let Ok(Some(c)) = self.store.audit_checkpoint().await {
                        writer.revoked = c.revoked;
                    }
                    self.cache.clear();
                    writer.stale = false;
                    tracing::warn!("a write outlived its request; the audit head was re-read");
                }
                Err(e) => {
                    // The commit that follows will be refused by the chain check and retried.
                    tracing::warn!(error = %e, "could not re-read the audit head");
                }
            }
        }
        writer
    }

    /// Runs a read-modify-write use case (it takes the writer, reads, decides, commits), again
    /// when its commit lost the race for the log's head to another writer over the same store:
    /// by then the writer knows the new head, and the next attempt reads afresh what it changes.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(ServiceError::Raced) if tries < ATTEMPTS => {
                    back_off(tries).await;
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Appends entries to the audit log with `changes`, atomically, tagging every record the
    /// change writes and the checkpoint of the new head. The caller holds the writer. The
    /// store write runs on its own task: once begun, it completes even if this caller is
    /// dropped, and the writer knows it (see [`Writer`]).
    pub(crate) async fn commit(
        &self,
        writer: &mut Writer,
        mut changes: Changes,
        pending: Vec<PendingEntry>,
    ) -> Result<(), ServiceError> {
        let head = &writer.head;
        let entries = audit::chain(head.seq, &head.hash, self.clock.now(), pending);
        let new_head = entries.last().map(|e| AuditHead {
            seq: e.seq,
            hash: e.hash.clone(),
        });
        changes.audit = entries;
        let revoked = writer.revoked + integrity::revocations(&changes);
        integrity::seal_changes(
            self.integrity.key(),
            &mut changes,
            new_head.as_ref(),
            revoked,
        );
        let store = Arc::clone(&self.store);
        writer.stale = true;
        let mut apply: std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>> =
            Box::pin(async move { store.apply(changes).await });
        // Polled once here: a write that completes at once (a relaxed commit, which waits for
        // no fsync) is done before this caller could be cancelled, with no task and no thread
        // hand-off. One still pending goes on on a task of its own, so it completes even if
        // this caller is dropped, and the writer knows it is in flight.
        let first = std::future::poll_fn(|cx| Poll::Ready(apply.as_mut().poll(cx))).await;
        let outcome = match first {
            Poll::Ready(outcome) => Ok(outcome),
            Poll::Pending => {
                let task = writer.in_flight.insert(tokio::spawn(apply));
                task.await
            }
        };
        writer.in_flight = None;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // The store panicked: whether anything was written is unknown, so `stale` stays.
            Err(e) => return Err(ServiceError::internal(format!("store write failed: {e}"))),
        };
        match outcome {
            Ok(()) => {
                if let Some(new_head) = new_head {
                    writer.head = new_head;
                    writer.revoked = revoked;
                }
                writer.stale = false;
                Ok(())
            }
            Err(StoreError::AuditConflict) => {
                // Another writer appended; learn the new head so the retry can succeed.
                if let Ok(Some(current)) = self.store.audit_head().await {
                    writer.head = current;
                    if let Ok(Some(c)) = self.store.audit_checkpoint().await {
                        writer.revoked = c.revoked;
                    }
                    writer.stale = false;
                }
                Err(ServiceError::Raced)
            }
            Err(e) => {
                writer.stale = false;
                Err(e.into())
            }
        }
    }

    /// Appends one entry that records no change, batched with concurrent ones: whoever holds the
    /// writer next commits every queued entry in one transaction (group commit), so audited reads
    /// cost one fsync per batch rather than per read. Returns once the entry is durable.
    pub(crate) async fn batched(&self, entry: PendingEntry) -> Result<(), ServiceError> {
        let (done, mut result) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((entry, done));
        loop {
            // Registered before the leader check, so a leader finishing in between still wakes us.
            let finished = self.led.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if !self.leader.swap(true, Ordering::AcqRel) {
                // The guard gives up the lead even if this request is cancelled mid-way (its
                // client went away): otherwise every later read would wait for ever.
                let _leading = Leading(self);
                self.commit_queue().await;
            }
            tokio::select! {
                outcome = &mut result => {
                    return match outcome {
                        Ok(Ok(())) => Ok(()),
                        // Other nodes kept winning the log's head: busy, not broken.
                        Ok(Err(AuditFailure::Raced)) => Err(ServiceError::Raced),
                        Ok(Err(AuditFailure::Other(e))) => {
                            Err(ServiceError::internal(format!("audit failed: {e}")))
                        }
                        Err(_) => Err(ServiceError::internal("audit writer went away")),
                    };
                }
                () = &mut finished => {}
            }
        }
    }

    /// Commits every queued entry in one transaction and answers each waiter.
    async fn commit_queue(&self) {
        // Let the tasks already runnable (requests in flight) queue their entries first: one
        // larger transaction costs far less than several small ones.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let mut head = self.lock().await;
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let (entries, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        // Read audits are written without waiting for an fsync: they survive a crash of the
        // process at once, and one of the machine after the next sync (within a second).
        let outcome = self
            .commit_entries(&mut head, true, false, entries)
            .await
            .map_err(|e| match e {
                ServiceError::Raced => AuditFailure::Raced,
                other => AuditFailure::Other(other.to_string()),
            });
        self.unsynced.store(true, Ordering::SeqCst);
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    /// Appends entries that record no change (failed authentications, for instance).
    /// Takes the writer and commits `changes` with `pending`: for changes decided without
    /// reading under the writer (their own ids, or rows only the caller writes).
    pub(crate) async fn write(
        &self,
        changes: Changes,
        pending: Vec<PendingEntry>,
    ) -> Result<(), ServiceError> {
        let mut head = self.lock().await;
        self.commit(&mut head, changes, pending).await
    }

    pub(crate) async fn only(&self, pending: Vec<PendingEntry>) -> Result<(), ServiceError> {
        let mut head = self.lock().await;
        self.commit_entries(&mut head, false, false, pending).await
    }

    /// Commits the entries of an operator's seal, which tells every node to seal itself too
    /// ([`Changes::seal`]).
    pub(crate) async fn sealing(&self, pending: Vec<PendingEntry>) -> Result<(), ServiceError> {
        let mut head = self.lock().await;
        self.commit_entries(&mut head, false, true, pending).await
    }

    /// Commits entries that record no change. If the head moved (another node appended, or a
    /// cancelled request's write landed after its caller stopped waiting), the entries are
    /// chained again on the new head: with no change riding along, that is always safe.
    async fn commit_entries(
        &self,
        head: &mut Writer,
        relaxed: bool,
        seal: bool,
        entries: Vec<PendingEntry>,
    ) -> Result<(), ServiceError> {
        let changes = || Changes {
            relaxed,
            seal,
            ..Changes::default()
        };
        let mut tries = 1;
        loop {
            match self.commit(head, changes(), entries.clone()).await {
                Err(ServiceError::Raced) if tries < ATTEMPTS => {
                    back_off(tries).await;
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Makes relaxed read-audit commits durable, if there were any since the last sync.
    pub(crate) async fn sync_relaxed(&self) {
        if self.unsynced.swap(false, Ordering::SeqCst)
            && let Err(e) = self.store.sync().await
        {
            self.unsynced.store(true, Ordering::SeqCst);
            tracing::warn!(error = %e, "could not sync read audits; will retry");
        }
    }
}
