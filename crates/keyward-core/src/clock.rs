//! The one source of time. Everything that depends on time takes a [`Clock`], so tests can drive
//! expiry, grace periods and schedules through months in milliseconds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::Timestamp;

pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time. The only place in keyward that reads the system time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp::from_unix_ms(ms)
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    ms: Arc<AtomicI64>,
}

impl FakeClock {
    pub fn new(start: Timestamp) -> Self {
        FakeClock {
            ms: Arc::new(AtomicI64::new(start.unix_ms())),
        }
    }

    pub fn advance_ms(&self, ms: i64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn advance_seconds(&self, seconds: i64) {
        self.advance_ms(seconds.saturating_mul(1000));
    }

    /// The current fake time in milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.ms.load(Ordering::SeqCst)
    }

    pub fn set(&self, at: Timestamp) {
        self.ms.store(at.unix_ms(), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_unix_ms(self.ms.load(Ordering::SeqCst))
    }
}
