//! One keyward node: sealed until the vault's unseal key is presented, then an [`Authority`]
//! over the opened key material, until it is sealed again.
//!
//! Every request takes a [`Session`], which fails with [`ServiceError::Sealed`] while sealed.
//! [`Node::seal`] refuses new sessions at once, waits for the ones in flight to finish, then
//! stops the authority and drops every key it held (each is zeroized on drop), so no request is
//! served after `seal` has returned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyward_core::Clock;
use keyward_crypto::barrier::{self, Share, ShareError, UnsealKey};
use keyward_store::{RewrapProgress, Store, VaultRecord};

use crate::vault::OpenVault;
use crate::{Actor, Authority, AuthorityConfig, ServiceError, read, write};

/// How a node stands, as `GET /v1/sys/seal-status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    pub shares: u8,
    pub threshold: u8,
    /// Distinct shares received toward the threshold.
    pub progress: u8,
    /// The newest keyring term.
    pub term: u32,
    pub rewrap: Option<RewrapProgress>,
}

#[derive(Default)]
struct Pending {
    shares: Vec<Share>,
}

/// A request's hold on the unsealed authority. Sealing waits until every session has ended.
#[derive(Debug)]
pub struct Session {
    authority: Arc<Authority>,
    active: Arc<AtomicUsize>,
}

impl std::ops::Deref for Session {
    type Target = Authority;

    fn deref(&self) -> &Authority {
        &self.authority
    }
}

impl Session {
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Node {
    /// This node, for the task that seals it when another node was sealed.
    me: std::sync::Weak<Node>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: AuthorityConfig,
    current: RwLock<Option<Arc<Authority>>>,
    active: Arc<AtomicUsize>,
    /// Shares received so far; holding it also serialises seal and unseal.
    pending: tokio::sync::Mutex<Pending>,
    /// A seal whose audit entry could not be written (who, when): written at the next unseal.
    late_seal: std::sync::Mutex<Option<(String, keyward_core::Timestamp)>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("sealed", &self.is_sealed())
            .finish_non_exhaustive()
    }
}

fn share_field(message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field: "share",
        message: message.into(),
    }
}

impl Node {
    /// A sealed node over an initialised store.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: AuthorityConfig,
    ) -> Result<Arc<Node>, ServiceError> {
        if store.vault().await?.is_none() {
            return Err(ServiceError::internal(
                "the store has no vault: initialise it first (keyward init)",
            ));
        }
        Ok(Arc::new_cyclic(|me| Node {
            me: me.clone(),
            store,
            clock,
            config,
            current: RwLock::new(None),
            active: Arc::new(AtomicUsize::new(0)),
            pending: tokio::sync::Mutex::new(Pending::default()),
            late_seal: std::sync::Mutex::new(None),
        }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn is_sealed(&self) -> bool {
        read(&self.current).is_none()
    }

    /// The unsealed authority for one request, or [`ServiceError::Sealed`].
    pub fn session(&self) -> Result<Session, ServiceError> {
        let current = read(&self.current);
        let authority = current.as_ref().ok_or(ServiceError::Sealed)?;
        // Counted while the read lock is held: a seal (which takes the write lock) either sees
        // this session or made it fail.
        self.active.fetch_add(1, Ordering::SeqCst);
        Ok(Session {
            authority: Arc::clone(authority),
            active: Arc::clone(&self.active),
        })
    }

    async fn record(&self) -> Result<VaultRecord, ServiceError> {
        self.store
            .vault()
            .await?
            .ok_or_else(|| ServiceError::internal("the store lost its vault record"))
    }

    pub async fn status(&self) -> Result<SealStatus, ServiceError> {
        let record = self.record().await?;
        let progress = self.pending.lock().await.shares.len();
        Ok(SealStatus {
            initialized: true,
            sealed: self.is_sealed(),
            shares: record.shares,
            threshold: record.threshold,
            progress: u8::try_from(progress).unwrap_or(u8::MAX),
            term: record.term,
            rewrap: record.rewrap,
        })
    }

    /// Unseals with the whole unseal key (from a file or an environment variable).
    pub async fn unseal_with_key(&self, key: &UnsealKey, via: &str) -> Result<(), ServiceError> {
        let mut pending = self.pending.lock().await;
        if !self.is_sealed() {
            // Already open; still, a key that is not this vault's is refused, never accepted.
            key.open_root(&self.record().await?.sealed_root)?;
            return Ok(());
        }
        pending.shares.clear();
        self.open_with(key, via).await
    }

    /// Adds one share. At the threshold the shares are combined; if they do not open the vault,
    /// every share given so far is discarded and the answer does not say which was wrong.
    pub async fn submit_share(&self, text: &str) -> Result<SealStatus, ServiceError> {
        let record = self.record().await?;
        {
            let mut pending = self.pending.lock().await;
            if self.is_sealed() {
                let share = Share::parse(text, &record.tag).map_err(|e| match e {
                    ShareError::OtherVault => share_field(
                        "this share belongs to another keyward vault (or to shares replaced by a rekey)",
                    ),
                    ShareError::Malformed => share_field(e.to_string()),
                })?;
                if pending.shares.iter().any(|s| s.index() == share.index()) {
                    return Err(share_field("this share was already given"));
                }
                pending.shares.push(share);
                if pending.shares.len() >= usize::from(record.threshold) {
                    let shares = std::mem::take(&mut pending.shares);
                    let key = barrier::combine(&shares)
                        .map_err(|_| share_field("the shares do not combine"))?;
                    if let Err(e) = self.open_with(&key, "shares").await {
                        return Err(match e {
                            ServiceError::Integrity(_) => share_field(
                                "these shares do not unseal this vault; progress was reset",
                            ),
                            other => other,
                        });
                    }
                }
            }
        }
        self.status().await
    }

    /// Discards the shares given so far.
    pub async fn reset_unseal(&self) -> Result<SealStatus, ServiceError> {
        self.pending.lock().await.shares.clear();
        self.status().await
    }

    async fn open_with(&self, key: &UnsealKey, via: &str) -> Result<(), ServiceError> {
        let record = self.record().await?;
        let keyrings = self.store.keyrings().await?;
        let vault = OpenVault::open(&record, key, &keyrings)?;
        let authority = Authority::open(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            Arc::new(vault),
            self.config.clone(),
        )
        .await?;
        let late_seal = self
            .late_seal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        authority
            .sys()
            .note_unsealed(via, record.rewrap, late_seal)
            .await?;
        authority.start_background();
        self.follow_seals(&authority);
        *write(&self.current) = Some(authority);
        tracing::info!(via, "vault unsealed");
        Ok(())
    }

    /// Seals this node when an operator seals the vault on any node sharing its store. The
    /// watch ends when `authority` does (sealing it notifies the watch itself).
    fn follow_seals(&self, authority: &Arc<Authority>) {
        let requested = authority.seal_requested();
        let (node, opened) = (self.me.clone(), Arc::downgrade(authority));
        tokio::spawn(async move {
            requested.notified().await;
            let Some(node) = node.upgrade() else { return };
            let _pending = node.pending.lock().await;
            let still_open = read(&node.current)
                .as_ref()
                .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), opened.as_ptr()));
            if still_open {
                node.seal_now().await;
                tracing::warn!("vault sealed: an operator sealed it on a node sharing this store");
            }
        });
    }

    /// Seals: audited as `actor`'s action, then no new session starts, the ones in flight
    /// finish, the authority flushes and stops, and its key material is dropped.
    pub async fn seal(&self, actor: &Actor) -> Result<(), ServiceError> {
        let _pending = self.pending.lock().await;
        let session = self.session()?;
        session.sys().may_seal(actor).await?;
        // An emergency seal does not wait on the store: if its audit entry cannot be written
        // now (the store is failing, or under attack), the vault seals anyway and the entry is
        // written at the next unseal.
        let audited = session.sys().audit_seal(actor).await;
        drop(session);
        self.seal_now().await;
        if let Err(e) = audited {
            tracing::error!(error = %e, actor = %actor.key_id(), "the seal could not be audited; sealed anyway, the entry follows at the next unseal");
            *self.late_seal.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((actor.audit_name(), self.clock.now()));
        }
        tracing::warn!(actor = %actor.key_id(), "vault sealed");
        Ok(())
    }

    /// Seals without an audit entry: at process shutdown.
    pub async fn shutdown(&self) {
        let _pending = self.pending.lock().await;
        self.seal_now().await;
    }

    async fn seal_now(&self) {
        let taken = write(&self.current).take();
        let Some(authority) = taken else {
            return;
        };
        // Ends the watch for seals elsewhere (it finds this authority gone).
        authority.seal_requested().notify_one();
        while self.active.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        authority.shutdown().await;
        // Background tasks hold only weak references; once they stop, this is the last one.
        drop(authority);
    }

    /// Replaces the unseal key and its shares, given the current key (or a quorum of current
    /// shares). Returns the new key and shares: shown once.
    pub async fn rekey(
        &self,
        actor: &Actor,
        current: &UnsealKey,
        shares: u8,
        threshold: u8,
    ) -> Result<(UnsealKey, Vec<Share>), ServiceError> {
        let _pending = self.pending.lock().await;
        let session = self.session()?;
        session.sys().rekey(actor, current, shares, threshold).await
    }

    /// Combines current shares given all at once (for a rekey).
    pub async fn key_from_shares(&self, texts: &[String]) -> Result<UnsealKey, ServiceError> {
        let record = self.record().await?;
        let mut shares: Vec<Share> = Vec::new();
        for text in texts {
            let share = Share::parse(text, &record.tag).map_err(|e| share_field(e.to_string()))?;
            if shares.iter().any(|s| s.index() == share.index()) {
                return Err(share_field("the same share was given twice"));
            }
            shares.push(share);
        }
        if shares.len() < usize::from(record.threshold) {
            return Err(share_field(format!(
                "{} shares are needed, {} were given",
                record.threshold,
                shares.len()
            )));
        }
        barrier::combine(&shares).map_err(|_| share_field("the shares do not combine"))
    }
}
