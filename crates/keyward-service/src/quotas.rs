//! Quotas: usage credits that verification spends, with an optional daily or monthly refill.
//!
//! The count lives in memory on the node that serves the key, seeded from the store the first
//! time the key is seen; what the node spent is written back in batches (once a second and at
//! shutdown), like usage, so verification never waits for a store write. The store subtracts
//! each node's spending from the stored count and answers the count as it stands, which the
//! node takes up: several nodes serving one key together spend its quota once, give or take
//! what each spends within one flush interval. An admin's grant is written at once. A crash
//! loses at most the last second of spending, which errs towards the key's holder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyward_core::{Clock, KeyId, QuotaConfig, QuotaState, Timestamp};
use keyward_store::{QuotaSpend, Store};

use crate::catalog::Catalog;

#[derive(Debug, Clone, Copy)]
struct Cell {
    state: QuotaState,
    dirty: bool,
    /// Credits spent in `state`'s period since the last flush.
    spent: u64,
    /// Flushes to come at which the count is read back even if nothing was spent here: other
    /// nodes may be spending it.
    watch: u8,
}

/// How many flushes (seconds) after its last spending here a count keeps being read back.
const WATCH_FLUSHES: u8 = 30;

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
            spent: 0,
            watch: 0,
        });
    }

    /// Starts a count this node made up (a plan's quota, first used): written at the next flush.
    pub(crate) fn seed_new(&self, id: KeyId, state: QuotaState) {
        self.cells().entry(id).or_insert(Cell {
            state,
            dirty: true,
            spent: 0,
            watch: 0,
        });
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
            // A new period: what was spent in the old one no longer counts against it.
            cell.state = current;
            cell.dirty = true;
            cell.spent = 0;
        }
        if cell.state.remaining < cost {
            return Err(cell.state.remaining);
        }
        cell.state.remaining -= cost;
        if cost > 0 {
            cell.dirty = true;
            cell.spent = cell.spent.saturating_add(cost);
        }
        Ok(cell.state.remaining)
    }

    /// Returns credits spent by a request that was refused afterwards.
    pub(crate) fn give_back(&self, id: KeyId, cost: u64) {
        if let Some(cell) = self.cells().get_mut(&id) {
            cell.state.remaining = cell.state.remaining.saturating_add(cost);
            cell.spent = cell.spent.saturating_sub(cost);
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
                        spent: 0,
                        watch: 0,
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

    /// What was spent since the last call, marked clean; and, with nothing spent, the counts
    /// spent here lately, so what other nodes spent of them is read back.
    pub(crate) fn take_dirty(&self) -> Vec<QuotaSpend> {
        let mut cells = self.cells();
        cells
            .iter_mut()
            .filter(|(_, c)| c.dirty || c.watch > 0)
            .map(|(id, c)| {
                if c.dirty {
                    c.watch = WATCH_FLUSHES;
                } else {
                    c.watch -= 1;
                }
                c.dirty = false;
                QuotaSpend {
                    id: *id,
                    state: c.state,
                    spent: std::mem::take(&mut c.spent),
                }
            })
            .collect()
    }

    /// Takes up the counts as stored after a flush, less what was spent here since.
    pub(crate) fn settle(&self, stored: &[(KeyId, QuotaState)]) {
        let mut cells = self.cells();
        for (id, state) in stored {
            let Some(cell) = cells.get_mut(id) else {
                continue;
            };
            if cell.state.period_start == state.period_start {
                cell.state.remaining = state.remaining.saturating_sub(cell.spent);
            } else if cell.state.period_start < state.period_start {
                cell.state = *state;
                cell.spent = 0;
            }
        }
    }

    /// Puts spending back after a failed write, to be written at the next flush.
    pub(crate) fn mark_dirty(&self, spends: &[QuotaSpend]) {
        let mut cells = self.cells();
        for spend in spends {
            if let Some(cell) = cells.get_mut(&spend.id) {
                cell.dirty = true;
                if cell.state.period_start == spend.state.period_start {
                    cell.spent = cell.spent.saturating_add(spend.spent);
                }
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

    /// Writes what was spent and takes up the counts as stored (other nodes' spending
    /// included); on failure the spending stays pending for the next flush.
    pub(crate) async fn flush(&self) {
        let spends = self.counts.take_dirty();
        if spends.is_empty() {
            return;
        }
        match self.store.spend_quotas(spends.clone()).await {
            Ok(stored) => self.counts.settle(&stored),
            Err(e) => {
                tracing::warn!(error = %e, keys = spends.len(), "quota flush failed; will retry");
                self.counts.mark_dirty(&spends);
            }
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
        let taken = quotas.take_dirty();
        assert_eq!((taken.len(), taken[0].spent), (1, 3));
        // Read back for a while after, with nothing more spent.
        let again = quotas.take_dirty();
        assert_eq!((again.len(), again[0].spent), (1, 0));
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
