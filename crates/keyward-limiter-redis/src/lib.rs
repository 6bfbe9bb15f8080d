//! Cluster-wide rate limits: the service's [`Limiter`] on Redis.
//!
//! All of a key's applicable limits are judged in one Lua script (`limits.lua`), loaded once and
//! called by its SHA: one round trip per verification, atomic, on the server's clock, so the
//! limits are exact across every node. The algorithms are the service's own (GCRA up to a
//! minute, sliding windows beyond), in microseconds.
//!
//! Concurrency leases are kept there too ([`LeaseTable`]): a sorted set per key of its leases
//! by when they lapse, so a key's concurrency limit holds across nodes. So are the graduated
//! response's violation counts and blocks ([`EscalationTable`]): a key blocked for repeated
//! violations is blocked on every node.
//!
//! When Redis cannot be reached (or does not answer within the timeout), the configured
//! [`Unreachable`] policy decides: refuse, admit, or fall back to this node's own limits. The
//! limiter says so once per transition in the log and in the `keyward_ratelimit_redis_up`
//! gauge, and tries Redis again after a second, going back to it by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyward_core::BlockRule;
use keyward_core::ratelimit::{Algorithm, LimitOutcome};
use keyward_core::{EnvironmentName, KeyId, Timestamp};
use keyward_service::escalation::{Escalated, EscalationTable, Escalations};
use keyward_service::leases::{Lease, LeaseTable, Leases, Release};
use keyward_service::limiter::{LimitRequest, Limiter, LocalLimiter};
use redis::aio::ConnectionManager;

/// What to do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Refuse every limited request (as rate limited, retry after a second).
    FailClosed,
    /// Admit every limited request.
    FailOpen,
    /// Limit on this node alone, as a node without Redis would.
    Local,
}

impl Unreachable {
    pub fn parse(text: &str) -> Option<Unreachable> {
        match text {
            "fail_closed" => Some(Unreachable::FailClosed),
            "fail_open" => Some(Unreachable::FailOpen),
            "local" => Some(Unreachable::Local),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unreachable::FailClosed => "fail_closed",
            Unreachable::FailOpen => "fail_open",
            Unreachable::Local => "local",
        }
    }
}

/// How the limiter talks to Redis.
#[derive(Debug, Clone)]
pub struct Options {
    pub when_unreachable: Unreachable,
    /// A call that takes longer counts as Redis being unreachable.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            when_unreachable: Unreachable::Local,
            timeout: Duration::from_millis(100),
        }
    }
}

/// How long after a failed call the limiter tries Redis again (meanwhile the policy answers
/// at once, so an outage adds no latency).
const RETRY_AFTER: Duration = Duration::from_secs(1);

const NS_PER_US: i64 = 1_000;

pub struct RedisLimiter {
    connection: ConnectionManager,
    script: redis::Script,
    acquire: redis::Script,
    release: redis::Script,
    violation: redis::Script,
    blocked: redis::Script,
    options: Options,
    local: LocalLimiter,
    /// Leases taken while Redis could not be reached, under the `local` policy.
    local_leases: Leases,
    /// Violations counted while Redis could not be reached, under the `local` policy.
    local_escalations: Escalations,
    /// Whether the last call to Redis succeeded.
    up: AtomicBool,
    /// Whether the gauge was set since the process's recorder was (probably) installed.
    reported: AtomicBool,
    /// Milliseconds since `started` before which Redis is not tried again.
    retry_at_ms: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("up", &self.up.load(Ordering::Relaxed))
            .field("when_unreachable", &self.options.when_unreachable)
            .finish_non_exhaustive()
    }
}

/// Why the limiter could not start.
#[derive(Debug)]
pub struct ConnectError(pub String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

impl RedisLimiter {
    /// Connects to `url` (`redis://[:password@]host:port/[db]`) and loads the script. A wrong
    /// URL, a refused password or an unreachable server is one error that says which, without
    /// the password.
    pub async fn connect(url: &str, options: Options) -> Result<RedisLimiter, ConnectError> {
        let client = redis::Client::open(url).map_err(|_| {
            ConnectError("not a valid redis://[:password@]host:port/[db] URL".to_owned())
        })?;
        let place = {
            let info = client.get_connection_info();
            format!("{}", info.addr())
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let mut connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| ConnectError(format!("cannot reach Redis at {place}: {}", reason(&e))))?;
        let script = redis::Script::new(include_str!("limits.lua"));
        let acquire = redis::Script::new(include_str!("leases.lua"));
        let release = redis::Script::new(include_str!("release.lua"));
        let violation = redis::Script::new(include_str!("violation.lua"));
        let blocked = redis::Script::new(include_str!("blocked.lua"));
        for s in [&script, &acquire, &release, &violation, &blocked] {
            s.prepare_invoke()
                .load_async(&mut connection)
                .await
                .map_err(|e| {
                    ConnectError(format!("Redis at {place} refused a script: {}", reason(&e)))
                })?;
        }
        metrics::gauge!("keyward_ratelimit_redis_up").set(1.0);
        Ok(RedisLimiter {
            connection,
            script,
            acquire,
            release,
            violation,
            blocked,
            options,
            local: LocalLimiter::new(),
            local_leases: Leases::default(),
            local_escalations: Escalations::default(),
            up: AtomicBool::new(true),
            reported: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One round trip: the script's answer, or `None` if Redis failed or was too slow.
    async fn ask(&self, request: &LimitRequest<'_>) -> Option<Vec<LimitOutcome>> {
        let mut invocation = self.script.key(state_key(request));
        invocation.arg(request.cost);
        let applicable: Vec<(usize, &keyward_core::RateLimit)> = request
            .limits
            .iter()
            .enumerate()
            .zip(request.applies)
            .filter(|(_, a)| **a)
            .map(|(l, _)| l)
            .collect();
        invocation.arg(applicable.len());
        for (position, limit) in &applicable {
            let algorithm = match limit.algorithm() {
                Algorithm::Gcra => 0,
                Algorithm::SlidingWindow => 1,
            };
            invocation
                .arg(*position)
                .arg(algorithm)
                .arg(limit.period_s.saturating_mul(1_000_000))
                .arg(limit.limit)
                .arg(limit.burst.unwrap_or(limit.limit));
        }
        let mut connection = self.connection.clone();
        let reply = tokio::time::timeout(
            self.options.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await;
        let values = match reply {
            Ok(Ok(values)) if values.len() == applicable.len() * 4 => values,
            Ok(Ok(_)) => {
                tracing::error!("the rate-limit script answered in an unexpected shape");
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %reason(&e), "Redis rate-limit call failed");
                return None;
            }
            Err(_) => return None,
        };
        Some(
            values
                .chunks_exact(4)
                .map(|o| {
                    let at = |i: usize| o.get(i).copied().unwrap_or(0);
                    LimitOutcome {
                        admitted: at(0) == 1,
                        remaining: u64::try_from(at(1)).unwrap_or(0),
                        reset_ns: at(2).saturating_mul(NS_PER_US),
                        retry_after_ns: at(3).saturating_mul(NS_PER_US),
                    }
                })
                .collect(),
        )
    }

    fn mark(&self, up: bool) {
        // Once more at the first call: a recorder installed after start sees the state too.
        if !self.reported.swap(true, Ordering::AcqRel) {
            metrics::gauge!("keyward_ratelimit_redis_up").set(if up { 1.0 } else { 0.0 });
        }
        if self.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        metrics::gauge!("keyward_ratelimit_redis_up").set(if up { 1.0 } else { 0.0 });
        if up {
            tracing::info!("Redis is back: rate limits are cluster-wide again");
        } else {
            tracing::warn!(
                policy = self.options.when_unreachable.as_str(),
                "Redis is unreachable: rate limits follow the configured policy until it is back"
            );
        }
    }

    /// The answer while Redis cannot be reached.
    fn unreachable(&self, request: LimitRequest<'_>) -> Vec<LimitOutcome> {
        metrics::counter!(
            "keyward_ratelimit_redis_fallbacks_total",
            "policy" => self.options.when_unreachable.as_str()
        )
        .increment(1);
        let applicable = request
            .limits
            .iter()
            .zip(request.applies)
            .filter(|(_, a)| **a)
            .map(|(l, _)| l);
        let retry = i64::try_from(RETRY_AFTER.as_nanos()).unwrap_or(i64::MAX);
        match self.options.when_unreachable {
            Unreachable::Local => self.local.check_now(request),
            Unreachable::FailOpen => applicable
                .map(|limit| LimitOutcome {
                    admitted: true,
                    remaining: limit.limit,
                    reset_ns: 0,
                    retry_after_ns: 0,
                })
                .collect(),
            Unreachable::FailClosed => applicable
                .map(|_| LimitOutcome {
                    admitted: false,
                    remaining: 0,
                    reset_ns: retry,
                    retry_after_ns: retry,
                })
                .collect(),
        }
    }
}

/// The Redis key of a key's limit state: its id in a hash tag (one slot in a Redis Cluster),
/// and the fingerprint of its limits, so changed limits start afresh.
fn state_key(request: &LimitRequest<'_>) -> String {
    format!("kw:rl:{{{}}}:{:016x}", request.key, request.fingerprint)
}

/// A Redis error in words, without the URL (which may hold a password).
fn reason(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    if e.is_connection_refusal() {
        return "connection refused".to_owned();
    }
    match e.kind() {
        redis::ErrorKind::AuthenticationFailed => "authentication failed".to_owned(),
        _ => e.to_string(),
    }
}

impl RedisLimiter {
    /// Whether Redis is worth asking now (not within a second of a failed call).
    fn available(&self) -> bool {
        self.elapsed_ms() >= self.retry_at_ms.load(Ordering::Acquire)
    }

    fn failed(&self) {
        let retry = u64::try_from(RETRY_AFTER.as_millis()).unwrap_or(1000);
        self.retry_at_ms
            .store(self.elapsed_ms() + retry, Ordering::Release);
        self.mark(false);
    }

    /// A lease while Redis cannot be reached, by the policy.
    fn lease_unreachable(
        &self,
        key: KeyId,
        environment: &EnvironmentName,
        limit: u32,
        timeout_s: u32,
        now: Timestamp,
        id: String,
    ) -> Result<Lease, Timestamp> {
        metrics::counter!(
            "keyward_ratelimit_redis_fallbacks_total",
            "policy" => self.options.when_unreachable.as_str()
        )
        .increment(1);
        match self.options.when_unreachable {
            Unreachable::Local => {
                self.local_leases
                    .acquire(key, environment, limit, timeout_s, now, id)
            }
            Unreachable::FailOpen => Ok(Lease {
                id,
                key,
                expires_at: now.plus_seconds(u64::from(timeout_s)),
            }),
            Unreachable::FailClosed => Err(now.plus_seconds(RETRY_AFTER.as_secs().max(1))),
        }
    }

    /// One script call within the timeout; `None` (and Redis marked down) if it failed.
    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(
            self.options.timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        {
            Ok(Ok(value)) => {
                self.mark(true);
                Some(value)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %reason(&e), "Redis call failed");
                self.failed();
                None
            }
            Err(_) => {
                self.failed();
                None
            }
        }
    }
}

/// A key's set of leases.
fn leases_key(key: KeyId) -> String {
    format!("kw:cc:{{{key}}}")
}

/// One lease's holder record: its key and environment.
fn holder_key(id: &str) -> String {
    format!("kw:lease:{id}")
}

#[async_trait]
impl LeaseTable for RedisLimiter {
    async fn acquire(
        &self,
        key: KeyId,
        environment: &EnvironmentName,
        limit: u32,
        timeout_s: u32,
        now: Timestamp,
        id: String,
    ) -> Result<Lease, Timestamp> {
        if !self.available() {
            return self.lease_unreachable(key, environment, limit, timeout_s, now, id);
        }
        let mut invocation = self.acquire.key(leases_key(key));
        invocation
            .key(holder_key(&id))
            .arg(&id)
            .arg(limit)
            .arg(u64::from(timeout_s).saturating_mul(1000))
            .arg(format!("{key} {environment}"));
        match self.call::<(i64, i64)>(&invocation).await {
            Some((1, lapses)) => Ok(Lease {
                id,
                key,
                expires_at: Timestamp::from_unix_ms(lapses),
            }),
            Some((_, earliest)) => Err(Timestamp::from_unix_ms(earliest)),
            None => self.lease_unreachable(key, environment, limit, timeout_s, now, id),
        }
    }

    async fn release(
        &self,
        id: &str,
        now: Timestamp,
        reaches: &(dyn for<'e> Fn(&'e EnvironmentName) -> bool + Send + Sync),
    ) -> Release {
        // Lease ids are made by verify: anything else names no lease (and no Redis key).
        if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Release::Unknown;
        }
        // A lease taken while Redis could not be reached is in this node's table.
        let local = self.local_leases.release(id, now, reaches);
        if local != Release::Unknown || !self.available() {
            return local;
        }
        let mut connection = self.connection.clone();
        let holder = tokio::time::timeout(
            self.options.timeout,
            redis::cmd("GET")
                .arg(holder_key(id))
                .query_async::<Option<String>>(&mut connection),
        )
        .await;
        let holder = match holder {
            Ok(Ok(holder)) => holder,
            _ => {
                self.failed();
                return Release::Unknown;
            }
        };
        let Some((key, environment)) = holder.as_deref().and_then(|h| {
            let (key, env) = h.split_once(' ')?;
            Some((
                key.parse::<KeyId>().ok()?,
                EnvironmentName::parse(env).ok()?,
            ))
        }) else {
            return Release::Unknown;
        };
        if !reaches(&environment) {
            return Release::OutOfReach(environment);
        }
        let mut invocation = self.release.key(leases_key(key));
        invocation.key(holder_key(id)).arg(id);
        match self.call::<i64>(&invocation).await {
            Some(1) => Release::Released,
            _ => Release::Unknown,
        }
    }

    fn sweep(&self, now: Timestamp) {
        self.local_leases.sweep(now);
    }
}

/// A key's block record, its recent violations, and the counter that names violations apart.
fn block_key(key: KeyId) -> String {
    format!("kw:block:{{{key}}}")
}

fn violations_key(key: KeyId) -> String {
    format!("kw:violations:{{{key}}}")
}

fn violation_counter(key: KeyId) -> String {
    format!("kw:violation-seq:{{{key}}}")
}

fn ms(seconds: u64) -> u64 {
    seconds.saturating_mul(1000)
}

#[async_trait]
impl EscalationTable for RedisLimiter {
    async fn blocked_until(&self, key: KeyId, now: Timestamp) -> Option<Timestamp> {
        let local = || match self.options.when_unreachable {
            Unreachable::Local => self.local_escalations.blocked_until(key, now),
            // Refusing or admitting everything, the limits need no block on top.
            Unreachable::FailClosed | Unreachable::FailOpen => None,
        };
        if !self.available() {
            return local();
        }
        let invocation = self.blocked.key(block_key(key));
        match self.call::<i64>(&invocation).await {
            Some(0) => None,
            Some(until) => Some(Timestamp::from_unix_ms(until)),
            None => local(),
        }
    }

    async fn violation(&self, key: KeyId, rule: &BlockRule, now: Timestamp) -> Escalated {
        let local = || match self.options.when_unreachable {
            Unreachable::Local => self.local_escalations.violation(key, rule, now),
            Unreachable::FailClosed | Unreachable::FailOpen => Escalated::Nothing,
        };
        if !self.available() {
            return local();
        }
        let mut invocation = self.violation.key(block_key(key));
        invocation
            .key(violations_key(key))
            .key(violation_counter(key))
            .arg(rule.violations)
            .arg(ms(rule.within_s))
            .arg(ms(rule.block_s))
            .arg(rule.disable_after_blocks.unwrap_or(0));
        match self.call::<(i64, i64)>(&invocation).await {
            Some((0, _)) => Escalated::Nothing,
            Some((1, until)) => Escalated::Blocked(Timestamp::from_unix_ms(until)),
            Some((_, until)) => Escalated::Disable(Timestamp::from_unix_ms(until)),
            None => local(),
        }
    }

    fn sweep(&self, now: Timestamp) {
        self.local_escalations.sweep(now);
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, request: LimitRequest<'_>) -> Vec<LimitOutcome> {
        if !request.applies.iter().any(|a| *a) {
            return Vec::new();
        }
        if !self.available() {
            return self.unreachable(request);
        }
        match self.ask(&request).await {
            Some(outcomes) => {
                self.mark(true);
                outcomes
            }
            None => {
                self.failed();
                self.unreachable(request)
            }
        }
    }

    fn sweep(&self, now: i64) {
        // Redis expires what it holds by itself; only the fallback's state is ours.
        self.local.sweep(now);
    }
}

#[cfg(test)]
mod tests;
