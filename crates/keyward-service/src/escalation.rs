//! Graduated response: a key that keeps hitting its limits is blocked for a while, and after
//! repeated blocks disabled (an audited change an admin must undo). Configured per plan.
//! [`Escalations`] keeps violation counts and blocks in this process: after a restart a key
//! starts with a clean slate, which errs towards admitting; a disable is stored and survives.
//! An [`EscalationTable`] shared by several nodes (Redis) counts a key's violations wherever
//! they happen.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use keyward_core::{BlockRule, KeyId, Timestamp};

#[derive(Debug, Default)]
struct Record {
    violations: VecDeque<Timestamp>,
    blocked_until: Option<Timestamp>,
    blocks: u32,
}

/// Where violation counts and blocks are kept: in this process ([`Escalations`]) or shared.
#[async_trait::async_trait]
pub trait EscalationTable: Send + Sync + std::fmt::Debug + 'static {
    /// Until when `key` is blocked, if it is at `now`.
    async fn blocked_until(&self, key: KeyId, now: Timestamp) -> Option<Timestamp>;

    /// Records a refusal by the key's limits and says whether it escalates.
    async fn violation(&self, key: KeyId, rule: &BlockRule, now: Timestamp) -> Escalated;

    /// Forgets keys with no recent violations and no block, held here.
    fn sweep(&self, now: Timestamp);
}

#[async_trait::async_trait]
impl EscalationTable for Escalations {
    async fn blocked_until(&self, key: KeyId, now: Timestamp) -> Option<Timestamp> {
        Escalations::blocked_until(self, key, now)
    }

    async fn violation(&self, key: KeyId, rule: &BlockRule, now: Timestamp) -> Escalated {
        Escalations::violation(self, key, rule, now)
    }

    fn sweep(&self, now: Timestamp) {
        Escalations::sweep(self, now);
    }
}

/// What a violation led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalated {
    Nothing,
    /// The key is now blocked until then.
    Blocked(Timestamp),
    /// The key is blocked until then, and has been blocked often enough to be disabled.
    Disable(Timestamp),
}

#[derive(Debug, Default)]
pub struct Escalations {
    records: Mutex<HashMap<KeyId, Record>>,
}

impl Escalations {
    /// Until when `key` is blocked, if it is at `now`.
    pub fn blocked_until(&self, key: KeyId, now: Timestamp) -> Option<Timestamp> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .get(&key)
            .and_then(|r| r.blocked_until)
            .filter(|until| *until > now)
    }

    /// Records a refusal by the key's limits and says whether it escalates.
    pub fn violation(&self, key: KeyId, rule: &BlockRule, now: Timestamp) -> Escalated {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let record = records.entry(key).or_default();
        let horizon = Timestamp::from_unix_ms(
            now.unix_ms().saturating_sub(
                i64::try_from(rule.within_s)
                    .unwrap_or(i64::MAX / 1000)
                    .saturating_mul(1000),
            ),
        );
        while record.violations.front().is_some_and(|t| *t <= horizon) {
            record.violations.pop_front();
        }
        record.violations.push_back(now);
        if record.violations.len() < rule.violations as usize {
            return Escalated::Nothing;
        }
        record.violations.clear();
        let until = now.plus_seconds(rule.block_s);
        record.blocked_until = Some(until);
        record.blocks += 1;
        match rule.disable_after_blocks {
            Some(limit) if record.blocks >= limit => {
                record.blocks = 0;
                Escalated::Disable(until)
            }
            _ => Escalated::Blocked(until),
        }
    }

    /// Forgets keys with no recent violations and no block.
    pub fn sweep(&self, now: Timestamp) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.retain(|_, r| {
            r.blocked_until.is_some_and(|u| u > now) || !r.violations.is_empty() || r.blocks > 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_n_violations_within_the_window_then_disables() {
        let esc = Escalations::default();
        let key = KeyId(uuid::Uuid::from_u128(3));
        let rule = BlockRule {
            violations: 3,
            within_s: 60,
            block_s: 300,
            disable_after_blocks: Some(2),
        };
        let t0 = Timestamp::from_unix_ms(1_000_000);
        assert_eq!(esc.violation(key, &rule, t0), Escalated::Nothing);
        assert_eq!(
            esc.violation(key, &rule, t0.plus_seconds(30)),
            Escalated::Nothing
        );
        // The first violation has left the 60 s window: still two.
        assert_eq!(
            esc.violation(key, &rule, t0.plus_seconds(61)),
            Escalated::Nothing
        );
        let until = t0.plus_seconds(62 + 300);
        assert_eq!(
            esc.violation(key, &rule, t0.plus_seconds(62)),
            Escalated::Blocked(until)
        );
        assert_eq!(esc.blocked_until(key, t0.plus_seconds(100)), Some(until));
        assert_eq!(esc.blocked_until(key, until), None);
        let t1 = until;
        for i in 0..2 {
            assert_eq!(
                esc.violation(key, &rule, t1.plus_seconds(i)),
                Escalated::Nothing
            );
        }
        assert_eq!(
            esc.violation(key, &rule, t1.plus_seconds(2)),
            Escalated::Disable(t1.plus_seconds(302))
        );
    }
}
