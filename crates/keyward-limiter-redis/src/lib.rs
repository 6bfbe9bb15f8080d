//! Cluster-wide rate limits: the service's [`Limiter`] on Redis.
//!
//! All of a key's applicable limits are judged in one Lua script (`limits.lua`), loaded once and
//! called by its SHA: one round trip per verification, atomic, on the server's clock, so the
//! limits are exact across every node. The algorithms are the service's own (GCRA up to a
//! minute, sliding windows beyond), in microseconds.
//!
//! When Redis cannot be reached (or does not answer within the timeout), the configured
//! [`Unreachable`] policy decides: refuse, admit, or fall back to this node's own limits. The
//! limiter says so once per transition in the log and in the `keyward_ratelimit_redis_up`
//! gauge, and tries Redis again after a second, going back to it by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyward_core::ratelimit::{Algorithm, LimitOutcome};
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
    options: Options,
    local: LocalLimiter,
    /// Whether the last call to Redis succeeded.
    up: AtomicBool,
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
        script
            .prepare_invoke()
            .load_async(&mut connection)
            .await
            .map_err(|e| {
                ConnectError(format!(
                    "Redis at {place} refused the script: {}",
                    reason(&e)
                ))
            })?;
        metrics::gauge!("keyward_ratelimit_redis_up").set(1.0);
        Ok(RedisLimiter {
            connection,
            script,
            options,
            local: LocalLimiter::new(),
            up: AtomicBool::new(true),
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

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, request: LimitRequest<'_>) -> Vec<LimitOutcome> {
        if !request.applies.iter().any(|a| *a) {
            return Vec::new();
        }
        if self.elapsed_ms() < self.retry_at_ms.load(Ordering::Acquire) {
            return self.unreachable(request);
        }
        match self.ask(&request).await {
            Some(outcomes) => {
                self.mark(true);
                outcomes
            }
            None => {
                let retry = u64::try_from(RETRY_AFTER.as_millis()).unwrap_or(1000);
                self.retry_at_ms
                    .store(self.elapsed_ms() + retry, Ordering::Release);
                self.mark(false);
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
