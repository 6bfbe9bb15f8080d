//! Building and checking the audit log's hash chain.

use keyward_core::Timestamp;
use keyward_core::audit::{AuditAction, AuditEntry, GENESIS_HASH, canonical_bytes};
use keyward_crypto::audit_hash;
use keyward_store::Store;
use serde_json::Value;

/// An entry before it is placed in the chain.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    pub actor: String,
    pub action: AuditAction,
    pub target: Option<String>,
    pub details: Value,
}

/// Places `pending` after (`seq`, `prev_hash`), returning the chained entries.
pub fn chain(
    seq: u64,
    prev_hash: &str,
    ts: Timestamp,
    pending: Vec<PendingEntry>,
) -> Vec<AuditEntry> {
    let mut prev = prev_hash.to_owned();
    let mut seq = seq;
    pending
        .into_iter()
        .map(|p| {
            seq += 1;
            let target = p.target;
            let bytes = canonical_bytes(
                seq,
                ts,
                &p.actor,
                p.action.as_str(),
                target.as_deref(),
                &p.details,
            );
            let hash = audit_hash(&prev, &bytes);
            AuditEntry {
                seq,
                ts,
                actor: p.actor,
                action: p.action.as_str().to_owned(),
                target,
                details: p.details,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            }
        })
        .collect()
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq}: {reason}")]
pub struct ChainBreak {
    /// The sequence number of the first entry that does not check out.
    pub seq: u64,
    pub reason: &'static str,
}

/// Follows the chain from the start, one entry at a time.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, entry: &AuditEntry) -> Result<(), ChainBreak> {
        let seq = entry.seq;
        if seq != self.expected_seq {
            return Err(ChainBreak {
                seq,
                reason: "sequence gap or reordering: an entry is missing or out of place",
            });
        }
        if entry.prev_hash != self.prev_hash {
            return Err(ChainBreak {
                seq,
                reason: "previous-hash link broken: an earlier entry was removed or reordered",
            });
        }
        let bytes = canonical_bytes(
            seq,
            entry.ts,
            &entry.actor,
            &entry.action,
            entry.target.as_deref(),
            &entry.details,
        );
        if audit_hash(&self.prev_hash, &bytes) != entry.hash {
            return Err(ChainBreak {
                seq,
                reason: "hash mismatch: the entry was modified",
            });
        }
        self.expected_seq += 1;
        self.prev_hash.clone_from(&entry.hash);
        Ok(())
    }

    /// How many entries checked out.
    pub fn verified(&self) -> u64 {
        self.expected_seq - 1
    }
}

/// The outcome of checking a whole log.
#[derive(Debug)]
pub enum ChainReport {
    Intact { entries: u64 },
    Broken(ChainBreak),
}

/// Recomputes the whole chain from the store, page by page.
pub async fn verify_chain(store: &dyn Store) -> Result<ChainReport, keyward_store::StoreError> {
    walk_chain(store, |_| {}).await
}

/// [`verify_chain`], handing each entry that checks out to `visit`, oldest first.
pub(crate) async fn walk_chain(
    store: &dyn Store,
    mut visit: impl FnMut(&AuditEntry),
) -> Result<ChainReport, keyward_store::StoreError> {
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store.audit_entries(after, 1000).await?;
        let Some(last) = page.last() else {
            return Ok(ChainReport::Intact {
                entries: verifier.verified(),
            });
        };
        after = last.seq;
        for entry in &page {
            if let Err(broken) = verifier.check(entry) {
                return Ok(ChainReport::Broken(broken));
            }
            visit(entry);
        }
    }
}

/// The keys an entry says were revoked: a key revoked by hand, the keys of an emergency
/// revocation, or the key of a revoked lease.
pub(crate) fn revoked_keys(entry: &AuditEntry) -> Vec<keyward_core::KeyId> {
    let parse = |v: &serde_json::Value| v.as_str().and_then(|id| id.parse().ok());
    if entry.action == AuditAction::KeyRevoke.as_str() {
        entry
            .target
            .as_deref()
            .and_then(|id| id.parse().ok())
            .into_iter()
            .collect()
    } else if entry.action == AuditAction::KeyRevokeBulk.as_str() {
        entry
            .details
            .get("ids")
            .and_then(|ids| ids.as_array())
            .map(|ids| ids.iter().filter_map(parse).collect())
            .unwrap_or_default()
    } else if entry.action == AuditAction::LeaseRevoke.as_str() {
        entry
            .details
            .get("key_id")
            .and_then(parse)
            .into_iter()
            .collect()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> Vec<AuditEntry> {
        let pending = (0..n)
            .map(|i| PendingEntry {
                actor: "system".into(),
                action: AuditAction::KeyUpdate,
                target: Some(format!("t{i}")),
                details: serde_json::json!({"i": i}),
            })
            .collect();
        chain(0, GENESIS_HASH, Timestamp::from_unix_ms(1), pending)
    }

    fn check_all(entries: &[AuditEntry]) -> Result<(), ChainBreak> {
        let mut verifier = ChainVerifier::default();
        entries.iter().try_for_each(|e| verifier.check(e))
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(check_all(&log(5)), Ok(()));
    }

    #[test]
    fn detects_an_edit() {
        let mut entries = log(5);
        entries[2].details = serde_json::json!({"i": 99});
        assert_eq!(check_all(&entries).unwrap_err().seq, 3);
        let mut entries = log(5);
        entries[3].actor = "mallory".into();
        assert_eq!(check_all(&entries).unwrap_err().seq, 4);
    }

    #[test]
    fn detects_a_deletion() {
        let mut entries = log(5);
        entries.remove(1);
        assert_eq!(check_all(&entries).unwrap_err().seq, 3);
        // Deleting and renumbering the rest still breaks the links.
        let mut entries = log(5);
        entries.remove(1);
        for (i, e) in entries.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        assert_eq!(check_all(&entries).unwrap_err().seq, 2);
    }

    #[test]
    fn detects_reordering() {
        let mut entries = log(5);
        entries.swap(1, 2);
        assert_eq!(check_all(&entries).unwrap_err().seq, 3);
        let mut entries = log(5);
        entries.swap(1, 2);
        entries[1].seq = 2;
        entries[2].seq = 3;
        assert_eq!(check_all(&entries).unwrap_err().seq, 2);
    }
}
