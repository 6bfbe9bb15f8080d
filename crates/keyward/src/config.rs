//! Configuration: defaults, then a TOML file, then environment variables and flags (clap merges
//! those two). Every bad value is reported at once; insecure settings need a name that says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The file format. Every key is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// Where the state lives: unset for the embedded store in `data_dir`, or a
    /// `postgres://user:password@host:port/database` URL shared by several nodes.
    pub store: Option<String>,
    /// Pooled PostgreSQL connections per node (default 16).
    pub store_pool_size: Option<usize>,
    /// Cluster-wide rate limits on Redis (`redis://[:password@]host:port/[db]`); unset: each
    /// node limits on its own.
    pub ratelimit_redis: Option<String>,
    /// While Redis cannot be reached: `fail_closed`, `fail_open` or `local` (default).
    pub ratelimit_redis_unreachable: Option<String>,
    /// A Redis call slower than this counts as Redis being unreachable (default 100).
    pub ratelimit_redis_timeout_ms: Option<u64>,
    /// How long a node that lost PostgreSQL's change feed keeps answering from its cache
    /// (default 10000; then it reads every key afresh, and refuses when it cannot).
    pub store_feed_grace_ms: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub body_limit_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    /// A client must send a whole request header within this (default 10000).
    pub header_read_timeout_ms: Option<u64>,
    /// Connections served at once (default 8192); more are closed on accept.
    pub max_connections: Option<usize>,
    pub cache_capacity: Option<usize>,
    pub usage_flush_interval_ms: Option<u64>,
    /// How often the rotation scheduler looks for due keys, in seconds (default 60).
    pub rotation_interval_s: Option<u64>,
    pub insecure_unauthenticated_verify: Option<bool>,
    pub insecure_plain_http: Option<bool>,
    pub worker_threads: Option<usize>,
    pub trusted_proxies: Option<Vec<String>>,
    /// Internal networks (loopback, private, link-local) webhook endpoints may use.
    pub webhook_allowed_cidrs: Option<Vec<String>>,
    /// Failed verifications (MALFORMED, NOT_FOUND) allowed per client `ip` a minute; 0: no limit.
    pub failed_verifications_per_minute: Option<u64>,
    /// Failed admin authentications allowed per client address a minute; 0: no limit.
    pub failed_admin_auth_per_minute: Option<u64>,
    /// IPv6 clients are counted by this prefix in the failed-attempt limits (default 64).
    pub guard_ipv6_prefix: Option<u8>,
    /// The most client addresses the failed-attempt limits track at once (default 100000).
    pub guard_max_addresses: Option<usize>,
    /// Values re-sealed per write while a rotation's rewrap runs (default 200).
    pub rewrap_batch_size: Option<u32>,
    /// A file holding the unseal key (`kwunseal1-…`): the server unseals itself at start.
    pub unseal_key_file: Option<PathBuf>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        // The parser's own message quotes the offending line, which may hold a password (a
        // store URL): say where and what, never the text.
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.get(..s.start).map_or(0, |t| t.lines().count().max(1)));
            match line {
                Some(line) => anyhow::anyhow!(
                    "config file {}, line {line}: {}",
                    path.display(),
                    e.message()
                ),
                None => anyhow::anyhow!("config file {}: {}", path.display(), e.message()),
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A PostgreSQL URL. It may hold a password, so it never prints: its Debug shows where it
/// points and nothing else.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // postgres://user:password@host:port/db → postgres://host:port/db
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let place = rest.rsplit_once('@').map_or(rest, |(_, place)| place);
        let place = place.split('?').next().unwrap_or_default();
        write!(f, "postgres://{place}")
    }
}

/// Cluster-wide rate limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLimits {
    pub url: RedisUrl,
    pub when_unreachable: keyward_limiter_redis::Unreachable,
    pub timeout: Duration,
}

/// A Redis URL, which may hold a password: its Debug shows only where it points.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let place = rest.rsplit_once('@').map_or(rest, |(_, place)| place);
        let place = place.split('?').next().unwrap_or_default();
        write!(f, "redis://{place}")
    }
}

/// Where the state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// SQLite in the data dir: one node.
    Embedded,
    /// PostgreSQL shared by several nodes.
    Postgres {
        url: StoreUrl,
        pool_size: usize,
        feed_grace: Duration,
    },
}

impl StoreChoice {
    /// `value` as given by `--store`, `KEYWARD_STORE` or the file.
    pub fn parse(value: Option<String>) -> Result<StoreChoice, String> {
        match value {
            None => Ok(StoreChoice::Embedded),
            Some(v) if v.is_empty() => Ok(StoreChoice::Embedded),
            Some(v) if v.starts_with("postgres://") || v.starts_with("postgresql://") => {
                Ok(StoreChoice::Postgres {
                    url: StoreUrl(v),
                    pool_size: 16,
                    feed_grace: Duration::from_secs(10),
                })
            }
            Some(_) => Err(
                "store: must be a postgres://user:password@host:port/database URL \
                 (leave it unset for the embedded store in data_dir)"
                    .to_owned(),
            ),
        }
    }
}

/// The settings `keyward serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreChoice,
    pub ratelimit_redis: Option<RedisLimits>,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Threads serving requests; by default one per core. On a machine shared with a load
    /// generator or the protected API, fewer threads than cores gives steadier tail latency.
    pub worker_threads: usize,
    pub server: keyward_server::ServerConfig,
    pub authority: keyward_service::AuthorityConfig,
    /// Where to read the unseal key at start, if configured.
    pub unseal_key_file: Option<PathBuf>,
}

/// What flags and environment variables said, overriding the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub store: Option<String>,
    pub ratelimit_redis: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub worker_threads: Option<usize>,
    pub insecure_plain_http: bool,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "keyward-data";

impl Config {
    pub fn resolve(file: FileConfig, flags: Overrides) -> anyhow::Result<Config> {
        let mut problems = Vec::new();
        let listen_text = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            problems.push(format!(
                "listen: '{listen_text}' is not an address like 127.0.0.1:8080"
            ))
        });
        let log_format = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                problems.push(format!("log_format: '{other}' is not 'text' or 'json'"));
                LogFormat::Text
            }
        };
        let body_limit_bytes = file.body_limit_bytes.unwrap_or(64 * 1024);
        if !(1024..=16 * 1024 * 1024).contains(&body_limit_bytes) {
            problems.push("body_limit_bytes: must be between 1024 and 16777216".into());
        }
        let request_timeout_ms = file.request_timeout_ms.unwrap_or(10_000);
        if !(100..=600_000).contains(&request_timeout_ms) {
            problems.push("request_timeout_ms: must be between 100 and 600000".into());
        }
        let header_read_timeout_ms = file.header_read_timeout_ms.unwrap_or(10_000);
        if !(100..=600_000).contains(&header_read_timeout_ms) {
            problems.push("header_read_timeout_ms: must be between 100 and 600000".into());
        }
        let max_connections = file.max_connections.unwrap_or(8192);
        if !(1..=1_000_000).contains(&max_connections) {
            problems.push("max_connections: must be between 1 and 1000000".into());
        }
        let cache_capacity = file.cache_capacity.unwrap_or(2_000_000);
        if cache_capacity == 0 {
            problems.push("cache_capacity: must be at least 1".into());
        }
        let flush_ms = file.usage_flush_interval_ms.unwrap_or(1_000);
        if !(10..=3_600_000).contains(&flush_ms) {
            problems.push("usage_flush_interval_ms: must be between 10 and 3600000".into());
        }
        let rotation_interval_s = file.rotation_interval_s.unwrap_or(60);
        if !(1..=86_400).contains(&rotation_interval_s) {
            problems.push("rotation_interval_s: must be between 1 and 86400".into());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let worker_threads = flags
            .worker_threads
            .or(file.worker_threads)
            .unwrap_or(cores);
        if !(1..=1024).contains(&worker_threads) {
            problems.push("worker_threads: must be between 1 and 1024".into());
        }
        let webhook_allowed_cidrs =
            match keyward_core::CidrSet::parse(&file.webhook_allowed_cidrs.unwrap_or_default()) {
                Ok(set) => set,
                Err((i, e)) => {
                    problems.push(format!("webhook_allowed_cidrs: entry {i}: {e}"));
                    keyward_core::CidrSet::default()
                }
            };
        let trusted_proxies =
            match keyward_core::CidrSet::parse(&file.trusted_proxies.unwrap_or_default()) {
                Ok(set) => set,
                Err((i, e)) => {
                    problems.push(format!("trusted_proxies: entry {i}: {e}"));
                    keyward_core::CidrSet::default()
                }
            };
        let guard =
            |name: &str, configured: Option<u64>, default: u64, problems: &mut Vec<String>| {
                match configured.unwrap_or(default) {
                    0 => None,
                    n if n > keyward_core::ratelimit::MAX_LIMIT => {
                        problems.push(format!(
                            "{name}: must be at most {}",
                            keyward_core::ratelimit::MAX_LIMIT
                        ));
                        None
                    }
                    n => Some(keyward_core::RateLimit {
                        name: name.replace('_', "-"),
                        limit: n,
                        period_s: 60,
                        burst: None,
                        rule: None,
                    }),
                }
            };
        let guard_config = keyward_service::GuardConfig {
            failed_verifications: guard(
                "failed_verifications_per_minute",
                file.failed_verifications_per_minute,
                100,
                &mut problems,
            ),
            failed_admin_auth: guard(
                "failed_admin_auth_per_minute",
                file.failed_admin_auth_per_minute,
                20,
                &mut problems,
            ),
            ipv6_prefix: file.guard_ipv6_prefix.unwrap_or(64),
            max_addresses: file.guard_max_addresses.unwrap_or(100_000),
        };
        if !(1..=128).contains(&guard_config.ipv6_prefix) {
            problems.push("guard_ipv6_prefix: must be between 1 and 128".into());
        }
        if !(1..=100_000_000).contains(&guard_config.max_addresses) {
            problems.push("guard_max_addresses: must be between 1 and 100000000".into());
        }
        let rewrap_batch_size = file.rewrap_batch_size.unwrap_or(200);
        if !(1..=10_000).contains(&rewrap_batch_size) {
            problems.push("rewrap_batch_size: must be between 1 and 10000".into());
        }
        let mut store = StoreChoice::parse(flags.store.or(file.store)).unwrap_or_else(|e| {
            problems.push(e);
            StoreChoice::Embedded
        });
        if let StoreChoice::Postgres {
            pool_size,
            feed_grace,
            ..
        } = &mut store
        {
            *pool_size = file.store_pool_size.unwrap_or(16);
            if !(1..=1024).contains(pool_size) {
                problems.push("store_pool_size: must be between 1 and 1024".into());
            }
            let grace_ms = file.store_feed_grace_ms.unwrap_or(10_000);
            if !(100..=600_000).contains(&grace_ms) {
                problems.push("store_feed_grace_ms: must be between 100 and 600000".into());
            }
            *feed_grace = Duration::from_millis(grace_ms);
        }
        let ratelimit_redis = match flags.ratelimit_redis.or(file.ratelimit_redis) {
            None => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                let policy = file
                    .ratelimit_redis_unreachable
                    .as_deref()
                    .unwrap_or("local");
                let when_unreachable = keyward_limiter_redis::Unreachable::parse(policy)
                    .unwrap_or_else(|| {
                        problems.push(
                            "ratelimit_redis_unreachable: must be 'fail_closed', 'fail_open' or 'local'"
                                .into(),
                        );
                        keyward_limiter_redis::Unreachable::Local
                    });
                let timeout_ms = file.ratelimit_redis_timeout_ms.unwrap_or(100);
                if !(1..=10_000).contains(&timeout_ms) {
                    problems.push("ratelimit_redis_timeout_ms: must be between 1 and 10000".into());
                }
                Some(RedisLimits {
                    url: RedisUrl(url),
                    when_unreachable,
                    timeout: Duration::from_millis(timeout_ms),
                })
            }
            Some(_) => {
                problems.push(
                    "ratelimit_redis: must be a redis://[:password@]host:port/[db] URL".into(),
                );
                None
            }
        };
        let plain_http_ok = flags.insecure_plain_http || file.insecure_plain_http.unwrap_or(false);
        if let Ok(addr) = listen
            && !addr.ip().is_loopback()
            && !plain_http_ok
        {
            problems.push(format!(
                "listen: {addr} is not a loopback address, and keyward serves plain HTTP; \
                 put a TLS proxy in front and set insecure_plain_http = true (or --insecure-plain-http)"
            ));
        }
        let listen = match listen {
            Ok(addr) if problems.is_empty() => addr,
            _ => bail!("invalid configuration:\n  {}", problems.join("\n  ")),
        };
        Ok(Config {
            listen,
            store,
            ratelimit_redis,
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            log_format,
            log_level: file.log_level.unwrap_or_else(|| "info".to_owned()),
            unseal_key_file: file.unseal_key_file,
            worker_threads,
            server: keyward_server::ServerConfig {
                body_limit_bytes,
                request_timeout: Duration::from_millis(request_timeout_ms),
                insecure_unauthenticated_verify: file
                    .insecure_unauthenticated_verify
                    .unwrap_or(false),
                trusted_proxies,
                header_read_timeout: Duration::from_millis(header_read_timeout_ms),
                max_connections,
                ..keyward_server::ServerConfig::default()
            },
            authority: keyward_service::AuthorityConfig {
                cache_capacity,
                usage_flush_interval: Duration::from_millis(flush_ms),
                guard: guard_config,
                rewrap_batch: rewrap_batch_size,
                rotation_interval: Duration::from_secs(rotation_interval_s),
                webhooks: keyward_service::WebhookConfig {
                    allowed_cidrs: webhook_allowed_cidrs,
                    ..keyward_service::WebhookConfig::default()
                },
                ..keyward_service::AuthorityConfig::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let config = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert!(config.listen.ip().is_loopback());
        assert!(!config.server.insecure_unauthenticated_verify);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let file: FileConfig = toml::from_str(
            "listen = 'nowhere'\nbody_limit_bytes = 1\nlog_format = 'xml'\nrequest_timeout_ms = 1",
        )
        .unwrap();
        let err = Config::resolve(file, Overrides::default())
            .unwrap_err()
            .to_string();
        for field in [
            "listen",
            "body_limit_bytes",
            "log_format",
            "request_timeout_ms",
        ] {
            assert!(err.contains(field), "{field} missing from: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("lisen = '127.0.0.1:1'").is_err());
    }

    #[test]
    fn public_plain_http_needs_the_insecure_switch() {
        let flags = || Overrides {
            listen: Some("0.0.0.0:8080".into()),
            ..Overrides::default()
        };
        assert!(Config::resolve(FileConfig::default(), flags()).is_err());
        let allowed = Overrides {
            insecure_plain_http: true,
            ..flags()
        };
        assert!(Config::resolve(FileConfig::default(), allowed).is_ok());
    }

    #[test]
    fn a_store_url_is_postgres_and_never_prints_its_password() {
        let flags = Overrides {
            store: Some("postgres://kw:hunter2@db.internal:5433/keyward?sslmode=disable".into()),
            ..Overrides::default()
        };
        let config = Config::resolve(FileConfig::default(), flags).unwrap();
        let shown = format!("{config:?}");
        assert!(
            shown.contains("postgres://db.internal:5433/keyward"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let file: FileConfig = toml::from_str("store = 'mysql://x'").unwrap();
        let err = Config::resolve(file, Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("store: must be a postgres://"), "{err}");
        assert!(!err.contains("mysql://x"), "no echo of the value: {err}");
        let defaults = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(defaults.store, StoreChoice::Embedded);
        let flags = Overrides {
            ratelimit_redis: Some("redis://:hunter2@cache:6379/0?password=hunter3".into()),
            ..Overrides::default()
        };
        let shown = format!(
            "{:?}",
            Config::resolve(FileConfig::default(), flags).unwrap()
        );
        assert!(shown.contains("redis://cache:6379/0"), "{shown}");
        assert!(!shown.contains("hunter"), "{shown}");
    }

    #[test]
    fn a_bad_config_line_is_named_but_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyward.toml");
        std::fs::write(
            &path,
            "listen = '127.0.0.1:1'\nstore = ['postgres://kw:hunter2@db/kw'] junk\n",
        )
        .unwrap();
        let err = format!("{:#}", FileConfig::load(&path).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str("listen = '127.0.0.1:1111'").unwrap();
        let flags = Overrides {
            listen: Some("127.0.0.1:2222".into()),
            ..Overrides::default()
        };
        assert_eq!(Config::resolve(file, flags).unwrap().listen.port(), 2222);
    }
}
