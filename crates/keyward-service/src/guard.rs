//! keyward protecting itself: per-client-IP limits on failed verifications (key guessing) and
//! failed admin authentications (brute force).
//!
//! Each failure consumes from the client address's allowance. Once it is spent, the address is
//! refused before any key is looked at, until the allowance refills; the moment an address is
//! blocked is audited once (not every refused attempt, which would let a flood write the log).

use std::net::IpAddr;

use keyward_core::ratelimit::RateLimit;
use keyward_core::{KeyId, Timestamp};
use serde_json::json;

use crate::Authority;
use crate::audit::PendingEntry;
use crate::limiter::{LimitRequest, LocalLimiter, fingerprint};

/// Per-address allowances of failures. `None` turns a guard off.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Verifications answered MALFORMED or NOT_FOUND for the `ip` given in verify.
    pub failed_verifications: Option<RateLimit>,
    /// Admin requests refused for a missing or bad key, by the caller's address.
    pub failed_admin_auth: Option<RateLimit>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        let per_minute = |name: &str, limit| RateLimit {
            name: name.into(),
            limit,
            period_s: 60,
            burst: None,
            rule: None,
        };
        GuardConfig {
            failed_verifications: Some(per_minute("failed-verifications", 100)),
            failed_admin_auth: Some(per_minute("failed-admin-auth", 20)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Guarded {
    Verification,
    AdminAuth,
}

impl Guarded {
    fn tag(self) -> u128 {
        match self {
            Guarded::Verification => 1 << 120,
            Guarded::AdminAuth => 2 << 120,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Guarded::Verification => "failed_verifications",
            Guarded::AdminAuth => "failed_admin_auth",
        }
    }
}

/// The guard's state: a limiter keyed by client address.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    limiter: LocalLimiter,
    config: GuardConfig,
}

/// A pseudo key id for an address: the guard's state lives in the same limiter structure.
fn slot(kind: Guarded, ip: IpAddr) -> KeyId {
    let bits = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        // IPv6 apart from IPv4, even where the numbers match (::192.0.2.1).
        IpAddr::V6(v6) => u128::from(v6) ^ (1 << 119),
    };
    // The address itself, tagged by guard: distinct addresses never share state. (The limiter
    // shards by the low byte, which varies most between hosts.)
    KeyId(uuid::Uuid::from_u128(bits ^ kind.tag()))
}

impl Guard {
    pub(crate) fn new(config: GuardConfig) -> Self {
        Guard {
            limiter: LocalLimiter::new(),
            config,
        }
    }

    fn limit(&self, kind: Guarded) -> Option<&RateLimit> {
        match kind {
            Guarded::Verification => self.config.failed_verifications.as_ref(),
            Guarded::AdminAuth => self.config.failed_admin_auth.as_ref(),
        }
    }

    fn request<'a>(
        &self,
        kind: Guarded,
        ip: IpAddr,
        limit: &'a RateLimit,
        now: Timestamp,
        cost: u64,
    ) -> LimitRequest<'a> {
        LimitRequest {
            key: slot(kind, ip),
            limits: std::slice::from_ref(limit),
            applies: &[true],
            cost,
            now: now.unix_ms().saturating_mul(1_000_000),
            fingerprint: fingerprint(std::slice::from_ref(limit)),
        }
    }

    /// Seconds until `ip` may try again, if it is blocked now.
    pub(crate) fn blocked(&self, kind: Guarded, ip: IpAddr, now: Timestamp) -> Option<u64> {
        let limit = self.limit(kind)?;
        let outcome = self
            .limiter
            .peek(self.request(kind, ip, limit, now, 1))
            .into_iter()
            .next()?;
        (!outcome.admitted).then(|| {
            u64::try_from(outcome.retry_after_ns.max(0))
                .unwrap_or(0)
                .div_ceil(1_000_000_000)
                .max(1)
        })
    }

    /// Counts a failure; true when this one spent the address's allowance (it is now blocked).
    pub(crate) fn fail(&self, kind: Guarded, ip: IpAddr, now: Timestamp) -> bool {
        let Some(limit) = self.limit(kind) else {
            return false;
        };
        let outcome = self
            .limiter
            .check_now(self.request(kind, ip, limit, now, 1));
        outcome
            .first()
            .is_some_and(|o| o.admitted && o.remaining == 0)
    }

    pub(crate) fn sweep(&self, now_ns: i64) {
        use crate::limiter::Limiter;
        self.limiter.sweep(now_ns);
    }
}

impl Authority {
    /// Records a failure from `ip`; audits the moment the address becomes blocked.
    pub(crate) async fn guard_failure(&self, kind: Guarded, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if self.guard.fail(kind, ip, self.clock.now()) {
            tracing::warn!(%ip, guard = kind.name(), "client address blocked after repeated failures");
            let entry = PendingEntry {
                actor: "system".into(),
                action: "guard.block",
                target: Some(ip.to_string()),
                details: json!({ "guard": kind.name() }),
            };
            if let Err(e) = self.audit_only(vec![entry]).await {
                tracing::error!(error = %e, "could not audit a guard block");
            }
            self.events.record(keyward_core::Event {
                seq: 0,
                ts: self.clock.now(),
                kind: "guard.block".into(),
                key_id: None,
                details: json!({ "guard": kind.name(), "ip": ip }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_never_share_a_slot() {
        let mut seen = std::collections::HashSet::new();
        for last in 0..=255u8 {
            for kind in [Guarded::Verification, Guarded::AdminAuth] {
                assert!(seen.insert(slot(kind, IpAddr::from([203, 0, 113, last]))));
                assert!(seen.insert(slot(
                    kind,
                    IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(last)])
                )));
            }
        }
    }
}
