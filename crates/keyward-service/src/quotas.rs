//! Quotas: usage credits that verification spends, with an optional daily or monthly refill.
//!
//! The count lives in memory on the node that serves the key, seeded from the store the first
//! time the key is seen, and is written back in batches (once a second and at shutdown), like
//! usage, so verification never waits for a store write. An admin's grant is written at once.
//! A crash loses at most the last second of spending, which errs towards the key's holder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_core::{Clock, KeyId, QuotaConfig, QuotaState, Timestamp};
use keyward_store::Store;

use crate::catalog::Catalog;

#[derive(Debug, Clone, Copy)]
struct Cell {
    state: QuotaState,
    dirty: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Quotas {
    cells: Mutex<HashMap<KeyId, Cell>>,
}

impl Quotas {
    fn cells(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Cell>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seeds a key's count from the store, unless this node already holds a newer one.
    pub(crate) fn seed(&self, id: KeyId, stored: QuotaState) {
        self.cells().entry(id).or_insert(Cell {
            state: stored,
            dirty: false,
        });
    }

    /// Starts a count this node made up (a plan's quota, first used): written at the next flush.
    pub(crate) fn seed_new(&self, id: KeyId, state: QuotaState) {
        self.cells()
            .entry(id)
            .or_insert(Cell { state, dirty: true });
    }

    pub(crate) fn is_seeded(&self, id: KeyId) -> bool {
        self.cells().contains_key(&id)
    }

    /// Spends `cost` if that many remain (after any refill due by `now`). Returns what remains,
    /// or `Err` with what remains when there is not enough (nothing is spent then).
    pub(crate) fn spend(
        &self,
        id: KeyId,
        config: &QuotaConfig,
        now: Timestamp,
        cost: u64,
    ) -> Result<u64, u64> {
        let mut cells = self.cells();
        let Some(cell) = cells.get_mut(&id) else {
            return Err(0);
        };
        let current = cell.state.at(config, now);
        if current != cell.state {
            cell.state = current;
            cell.dirty = true;
        }
        if cell.state.remaining < cost {
            return Err(cell.state.remaining);
        }
        cell.state.remaining -= cost;
        if cost > 0 {
            cell.dirty = true;
        }
        Ok(cell.state.remaining)
    }

    /// Returns credits spent by a request that was refused afterwards.
    pub(crate) fn give_back(&self, id: KeyId, cost: u64) {
        if let Some(cell) = self.cells().get_mut(&id) {
            cell.state.remaining = cell.state.remaining.saturating_add(cost);
            cell.dirty = true;
        }
    }

    /// Sets a key's count as an admin granted it (already written to the store).
    pub(crate) fn set(&self, id: KeyId, state: Option<QuotaState>) {
        let mut cells = self.cells();
        match state {
            Some(state) => {
                cells.insert(
                    id,
                    Cell {
                        state,
                        dirty: false,
                    },
                );
            }
            None => {
                cells.remove(&id);
            }
        }
    }

    /// What remains for a key this node holds, as of `now`.
    pub(crate) fn remaining(&self, id: KeyId, config: &QuotaConfig, now: Timestamp) -> Option<u64> {
        self.cells()
            .get(&id)
            .map(|c| c.state.at(config, now).remaining)
    }

    /// The counts changed since the last call, marked clean.
    pub(crate) fn take_dirty(&self) -> Vec<(KeyId, QuotaState)> {
        let mut cells = self.cells();
        cells
            .iter_mut()
            .filter(|(_, c)| c.dirty)
            .map(|(id, c)| {
                c.dirty = false;
                (*id, c.state)
            })
            .collect()
    }

    /// Marks counts dirty again after a failed write, unless they changed meanwhile.
    pub(crate) fn mark_dirty(&self, states: &[(KeyId, QuotaState)]) {
        let mut cells = self.cells();
        for (id, _) in states {
            if let Some(cell) = cells.get_mut(id) {
                cell.dirty = true;
            }
        }
    }
}

/// The quota service: this node's counts, seeded from and written back to the store.
#[derive(Debug)]
pub(crate) struct QuotaBook {
    counts: Quotas,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
}

impl std::ops::Deref for QuotaBook {
    type Target = Quotas;

    fn deref(&self) -> &Quotas {
        &self.counts
    }
}

impl QuotaBook {
    pub(crate) fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, catalog: Arc<Catalog>) -> Self {
        QuotaBook {
            counts: Quotas::default(),
            store,
            clock,
            catalog,
        }
    }

    /// Writes spent quotas; on failure they stay pending for the next flush.
    pub(crate) async fn flush(&self) {
        let states = self.counts.take_dirty();
        if states.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_quotas(states.clone()).await {
            tracing::warn!(error = %e, keys = states.len(), "quota flush failed; will retry");
            self.counts.mark_dirty(&states);
        }
    }

    /// Makes sure this node holds the key's quota count, reading it from the store once. A key
    /// on a plan's quota with no count yet starts with the plan's amount.
    pub(crate) async fn seed_for(
        &self,
        key: &keyward_core::KeyRecord,
    ) -> Result<(), crate::ServiceError> {
        let Some(config) = self.catalog.limits_of(key).quota else {
            return Ok(());
        };
        if self.counts.is_seeded(key.id) {
            return Ok(());
        }
        match self.store.quota_state(key.id).await? {
            Some(state) => self.counts.seed(key.id, state),
            None => {
                if let Some(refill) = config.refill {
                    let now = self.clock.now();
                    self.counts.seed_new(
                        key.id,
                        QuotaState {
                            remaining: refill.amount,
                            period_start: refill.interval.period_start(now),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// What remains of a key's quota now, if it has one.
    pub(crate) async fn remaining_for(
        &self,
        key: &keyward_core::KeyRecord,
    ) -> Result<Option<u64>, crate::ServiceError> {
        let Some(config) = &key.access.quota else {
            return Ok(None);
        };
        self.seed_for(key).await?;
        Ok(self.counts.remaining(key.id, config, self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::{QuotaRefill, RefillInterval};

    use super::*;

    #[test]
    fn spend_refill_and_give_back() {
        let quotas = Quotas::default();
        let id = KeyId(uuid::Uuid::from_u128(9));
        let day = Timestamp::parse_rfc3339("2026-11-28T00:00:00Z").unwrap();
        let config = QuotaConfig {
            refill: Some(QuotaRefill {
                amount: 10,
                interval: RefillInterval::Daily,
            }),
        };
        quotas.seed(
            id,
            QuotaState {
                remaining: 3,
                period_start: day,
            },
        );
        // A second seed does not overwrite what this node holds.
        quotas.seed(
            id,
            QuotaState {
                remaining: 99,
                period_start: day,
            },
        );
        let noon = day.plus_seconds(12 * 3600);
        assert_eq!(quotas.spend(id, &config, noon, 2), Ok(1));
        assert_eq!(
            quotas.spend(id, &config, noon, 2),
            Err(1),
            "nothing is spent when not enough remains"
        );
        quotas.give_back(id, 2);
        assert_eq!(quotas.spend(id, &config, noon, 3), Ok(0));
        assert_eq!(quotas.take_dirty().len(), 1);
        assert!(quotas.take_dirty().is_empty());
        // The next day it is back at 10, not 10 plus what was left.
        assert_eq!(
            quotas.spend(id, &config, day.plus_seconds(86_400), 1),
            Ok(9)
        );
        // A one-time grant never refills.
        let once = QuotaConfig { refill: None };
        quotas.set(
            id,
            Some(QuotaState {
                remaining: 1,
                period_start: day,
            }),
        );
        assert_eq!(
            quotas.spend(id, &once, day.plus_seconds(400 * 86_400), 1),
            Ok(0)
        );
        assert_eq!(
            quotas.spend(id, &once, day.plus_seconds(800 * 86_400), 1),
            Err(0)
        );
    }
}
