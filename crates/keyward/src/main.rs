//! The `keyward` binary: the CLI, configuration loading, and assembly of the concrete backends
//! (the embedded SQLite store and the system clock) into a running server.

use keyward_store::Store;
use keyward_store::prelude::*;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keyward_core::SystemClock;
use keyward_crypto::barrier::UnsealKey;
use keyward_service::audit::{ChainReport, verify_chain};
use keyward_service::{DEFAULT_SHARES, DEFAULT_THRESHOLD, Node, adopt_secrets, initialize};
use keyward_store_postgres::PostgresStore;
use keyward_store_sqlite::SqliteStore;

mod client;
mod config;
mod datadir;
mod operator;
mod rotation_cmd;
mod run_cmd;
mod secrets_cmd;
mod store_cmd;
mod webhooks_cmd;

use config::{Config, FileConfig, LogFormat, Overrides, StoreChoice, StoreUrl};
use datadir::DataDir;

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "Self-hosted API key security service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run; boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data dir: the store, its vault and the root key. Prints the root key and the
    /// unseal shares once; the server then starts sealed.
    Init {
        #[arg(long, env = "KEYWARD_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Initialise a PostgreSQL database shared by several nodes instead of a data dir
        /// (postgres://user:password@host:port/database).
        #[arg(long, env = "KEYWARD_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Split the unseal key into this many shares (1-16).
        #[arg(long, default_value_t = DEFAULT_SHARES)]
        key_shares: u8,
        /// Shares needed to unseal (1 only with one share).
        #[arg(long, default_value_t = DEFAULT_THRESHOLD)]
        key_threshold: u8,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP API; an empty data dir is initialised first and the root key printed once.
    Serve(ServeArgs),
    /// Manage keys on a running server (KEYWARD_URL, KEYWARD_TOKEN).
    Keys {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: client::KeysCommand,
    },
    /// Rotation policies on keys, roles and environments; a key's own rotation.
    Rotation {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: rotation_cmd::RotationCommand,
    },
    /// Webhook endpoints and their deliveries (KEYWARD_URL, KEYWARD_TOKEN).
    Webhooks {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: webhooks_cmd::WebhooksCommand,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Operate the vault: seal status, unseal, seal, rotate, rekey.
    Operator {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: operator::OperatorCommand,
    },
    /// Read and write the vault's secrets on a running server (KEYWARD_URL, KEYWARD_TOKEN).
    Secrets {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: secrets_cmd::SecretsCommand,
    },
    /// Run a command with secrets in its environment; nothing is written to disk or printed.
    Run(run_cmd::RunArgs),
    /// Move the state between stores: `keyward store migrate --from DIR --to postgres://…`.
    Store {
        #[command(subcommand)]
        command: store_cmd::StoreCommand,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long, env = "KEYWARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The state's PostgreSQL, shared by several nodes (postgres://user:password@host:port/db);
    /// unset: the embedded store in the data dir.
    #[arg(long, env = "KEYWARD_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Cluster-wide rate limits on Redis (redis://[:password@]host:port/[db]).
    #[arg(long, env = "KEYWARD_RATELIMIT_REDIS", hide_env_values = true)]
    ratelimit_redis: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, env = "KEYWARD_LISTEN")]
    listen: Option<String>,
    /// A TOML configuration file.
    #[arg(long, env = "KEYWARD_CONFIG")]
    config: Option<PathBuf>,
    /// `text` or `json` log lines on stderr.
    #[arg(long, env = "KEYWARD_LOG_FORMAT")]
    log_format: Option<String>,
    /// Threads serving requests (default: one per core).
    #[arg(long, env = "KEYWARD_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Allow plain HTTP on a non-loopback address (put TLS in front of it).
    #[arg(long)]
    insecure_plain_http: bool,
    /// Print the root key of a new data dir as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the audit log's hash chain offline; exits 2 at the first broken entry. With
    /// the unseal key (KEYWARD_UNSEAL_KEY, --unseal-key-file, or the data dir's unseal.key) it
    /// also checks the integrity tags of every key, environment, role, plan and the audit head,
    /// so rewritten or truncated entries and records edited outside keyward are found too.
    Verify {
        #[arg(long, env = "KEYWARD_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Check a shared PostgreSQL store instead of a data dir (postgres://…).
        #[arg(long, env = "KEYWARD_STORE", hide_env_values = true)]
        store: Option<String>,
        /// A file holding the unseal key.
        #[arg(long)]
        unseal_key_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keyward: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    let command = match command {
        Command::Serve(args) => {
            // The configuration decides how many threads the runtime gets.
            let config = load_config(args)?;
            runtime.worker_threads(config.0.worker_threads);
            let runtime = runtime.build().context("cannot start the runtime")?;
            return runtime.block_on(serve(config)).map(|()| ExitCode::SUCCESS);
        }
        other => other,
    };
    let runtime = runtime.build().context("cannot start the runtime")?;
    runtime.block_on(dispatch(command))
}

fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init {
            store: Some(url),
            key_shares,
            key_threshold,
            json,
            ..
        } => {
            init_postgres(&url, key_shares, key_threshold, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init {
            data_dir,
            key_shares,
            key_threshold,
            json,
            store: None,
        } => {
            let dir = DataDir::new(&data_dir);
            if dir.db_path().exists() || dir.legacy_secrets_exist() {
                anyhow::bail!("{} is already initialised", data_dir.display());
            }
            let _lock = {
                dir.create()?;
                dir.lock()?
            };
            init(&dir, key_shares, key_threshold, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(load_config(args)?).await.map(|()| ExitCode::SUCCESS),
        Command::Keys { remote, command } => client::run(remote, command).await,
        Command::Rotation { remote, command } => rotation_cmd::run(remote, command).await,
        Command::Webhooks { remote, command } => webhooks_cmd::run(remote, command).await,
        Command::Operator { remote, command } => operator::run(remote, command).await,
        Command::Secrets { remote, command } => secrets_cmd::run(remote, command).await,
        Command::Run(args) => run_cmd::run(args).await,
        Command::Store { command } => store_cmd::run(command).await,
        Command::Audit {
            command:
                AuditCommand::Verify {
                    data_dir,
                    store,
                    unseal_key_file,
                    json,
                },
        } => audit_verify(&data_dir, store, unseal_key_file, json).await,
    }
}

/// Initialises `dir` and prints the root key once.
/// Creates the store and its vault; prints the root key and the unseal shares, once.
/// Atomic: the store is made under a staging name and moved into place only once complete and
/// printed, so a failed init leaves no half data dir behind.
async fn init(dir: &DataDir, shares: u8, threshold: u8, json: bool) -> anyhow::Result<()> {
    dir.create()?;
    dir.discard_staging()?;
    let made = {
        let store = SqliteStore::open(&dir.staging_db_path())?;
        let made = initialize(&store, &SystemClock, shares, threshold).await;
        drop(store);
        match made {
            Ok(made) => made,
            Err(e) => {
                dir.discard_staging()?;
                return Err(e.into());
            }
        }
    };
    let share_texts: Vec<String> = made
        .vault
        .shares
        .iter()
        .map(|s| s.to_text().to_string())
        .collect();
    let environments = keyward_service::initial_environments();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "data_dir": dir_display(dir),
                "root_key": made.root_key.expose(),
                "unseal_shares": share_texts,
                "unseal_threshold": threshold,
                "environments": environments.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("keyward: initialised {}", dir_display(dir));
        println!("Root key (shown only this once; store it in a secret manager now):");
        println!("  {}", made.root_key.expose());
        println!();
        println!(
            "Unseal shares ({threshold} of {shares} unseal the vault; give each to a different person):"
        );
        for (i, share) in share_texts.iter().enumerate() {
            println!("  {}: {share}", i + 1);
        }
        println!();
        println!("The server starts sealed: unseal it with `keyward operator unseal`.");
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;
    if let Err(e) = dir.commit_staging() {
        let _ = dir.discard_staging();
        return Err(e.context("init failed; the keys printed above are void"));
    }
    Ok(())
}

/// Connects to a shared PostgreSQL store, saying where it could not.
async fn open_postgres(
    url: &StoreUrl,
    pool_size: usize,
    feed_grace: std::time::Duration,
) -> anyhow::Result<PostgresStore> {
    let options = keyward_store_postgres::Options {
        pool_size,
        feed_grace,
        ..keyward_store_postgres::Options::default()
    };
    PostgresStore::connect(url.expose(), options)
        .await
        .map_err(|e| anyhow::anyhow!("store: {e}"))
}

/// Initialises a shared PostgreSQL store: its vault, root key and unseal shares, printed once.
/// Refused if the database already holds a keyward store. Nothing is written beside it: each
/// node unseals with shares or a key it is given.
async fn init_postgres(url: &str, shares: u8, threshold: u8, json: bool) -> anyhow::Result<()> {
    let url = match StoreChoice::parse(Some(url.to_owned())).map_err(anyhow::Error::msg)? {
        StoreChoice::Postgres { url, .. } => url,
        StoreChoice::Embedded => anyhow::bail!("store: give a postgres:// URL"),
    };
    let store = open_postgres(&url, 2, std::time::Duration::from_secs(10)).await?;
    if store.vault().await?.is_some() {
        anyhow::bail!("{url:?} already holds a keyward store");
    }
    let made = match initialize(&store, &SystemClock, shares, threshold).await {
        Ok(made) => made,
        // Two inits at once: one vault came out of it, the other's.
        Err(keyward_service::InitError::Store(
            keyward_store::StoreError::AuditConflict | keyward_store::StoreError::Conflict(_),
        )) => {
            anyhow::bail!(
                "another init of {url:?} ran at the same time: it holds a keyward store now"
            )
        }
        Err(e) => return Err(e.into()),
    };
    let share_texts: Vec<String> = made
        .vault
        .shares
        .iter()
        .map(|s| s.to_text().to_string())
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "store": format!("{url:?}"),
                "root_key": made.root_key.expose(),
                "unseal_shares": share_texts,
                "unseal_threshold": threshold,
            })
        );
    } else {
        println!("keyward: initialised the store at {url:?}");
        println!("Root key (shown only this once; store it in a secret manager now):");
        println!("  {}", made.root_key.expose());
        println!();
        println!(
            "Unseal shares ({threshold} of {shares} unseal the vault; give each to a different person):"
        );
        for (i, share) in share_texts.iter().enumerate() {
            println!("  {}: {share}", i + 1);
        }
        println!();
        println!("Each node starts sealed: unseal it with `keyward operator unseal`.");
    }
    Ok(())
}

/// The embedded development default: a fresh dir gets a vault with one share, written to
/// `unseal.key` so the server unseals itself. Loudly not for production. Atomic like
/// [`init`]: the store takes its place only with its unseal key beside it.
async fn init_dev(dir: &DataDir, json: bool) -> anyhow::Result<()> {
    dir.discard_staging()?;
    let _ = std::fs::remove_file(dir.unseal_key_path());
    let store = SqliteStore::open(&dir.staging_db_path())?;
    let made = initialize(&store, &SystemClock, 1, 1).await;
    drop(store);
    let made = match made.map_err(anyhow::Error::from).and_then(|made| {
        dir.write_unseal_key(&made.vault.unseal_key)?;
        Ok(made)
    }) {
        Ok(made) => made,
        Err(e) => {
            dir.discard_staging()?;
            return Err(e);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "data_dir": dir_display(dir),
                "root_key": made.root_key.expose(),
                "unseal_key_file": dir.unseal_key_path(),
            })
        );
    } else {
        println!("keyward: initialised {}", dir_display(dir));
        println!("Root key (shown only this once; store it in a secret manager now):");
        println!("  {}", made.root_key.expose());
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;
    dir.commit_staging()?;
    Ok(())
}

fn warn_dev_unseal(dir: &DataDir) {
    eprintln!(
        "WARNING: the unseal key is stored beside the data in {} (mode 0600). This is a \
         development convenience: anyone who copies the data dir can read every secret. In \
         production run `keyward init` (Shamir shares) or keep the key elsewhere \
         (unseal_key_file or KEYWARD_UNSEAL_KEY).",
        dir.unseal_key_path().display()
    );
}

/// A data dir from before the vault: seal its HMAC secrets into the store under a new vault
/// whose key is written beside it, then remove the old secrets file.
async fn adopt_legacy(dir: &DataDir, store: &SqliteStore) -> anyhow::Result<()> {
    let secrets = dir.read_legacy_secrets()?;
    let vault = adopt_secrets(store, &SystemClock, secrets, 1, 1).await?;
    dir.write_unseal_key(&vault.unseal_key)?;
    dir.remove_legacy_secrets()?;
    eprintln!("keyward: moved the environments' secrets into the sealed store");
    warn_dev_unseal(dir);
    Ok(())
}

/// The unseal key from the environment, the configured file, or the data dir's dev file.
fn configured_unseal_key(
    config: &Config,
    dir: Option<&DataDir>,
) -> anyhow::Result<Option<UnsealKey>> {
    if let Ok(text) = std::env::var("KEYWARD_UNSEAL_KEY") {
        let text = zeroize::Zeroizing::new(text);
        return UnsealKey::from_text(&text)
            .map(Some)
            .context("KEYWARD_UNSEAL_KEY is not an unseal key (kwunseal1-…)");
    }
    let path = match &config.unseal_key_file {
        Some(path) => path.clone(),
        None => match dir {
            Some(dir) if dir.unseal_key_path().exists() => {
                // Auto-unseal from beside the data: said at every start, not only the first.
                warn_dev_unseal(dir);
                dir.unseal_key_path()
            }
            _ => return Ok(None),
        },
    };
    datadir::check_key_file(&path)?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the unseal key file {}", path.display()))?,
    );
    UnsealKey::from_text(&text)
        .map(Some)
        .with_context(|| format!("{} does not hold an unseal key", path.display()))
}

fn dir_display(dir: &DataDir) -> String {
    dir.db_path()
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The resolved configuration and whether to print a new root key as JSON.
fn load_config(args: ServeArgs) -> anyhow::Result<(Config, bool)> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = Config::resolve(
        file,
        Overrides {
            listen: args.listen,
            store: args.store,
            ratelimit_redis: args.ratelimit_redis,
            data_dir: args.data_dir,
            log_format: args.log_format,
            worker_threads: args.worker_threads,
            insecure_plain_http: args.insecure_plain_http,
        },
    )?;
    Ok((config, args.json))
}

async fn serve((config, json): (Config, bool)) -> anyhow::Result<()> {
    init_logging(&config);
    // The embedded store's data dir stays locked while this runs; a shared store has none.
    let (store, dir, _lock): (Arc<dyn Store>, Option<DataDir>, _) = match &config.store {
        StoreChoice::Embedded => {
            let dir = DataDir::new(&config.data_dir);
            dir.create()?;
            let lock = dir.lock()?;
            if !dir.db_path().exists() && !dir.legacy_secrets_exist() {
                // A fresh dir (or one whose initialisation never finished): the embedded default.
                init_dev(&dir, json).await?;
            }
            let store = SqliteStore::open(&dir.db_path())
                .with_context(|| format!("cannot open {}", dir.db_path().display()))?;
            if store.vault().await?.is_none() {
                if dir.legacy_secrets_exist() {
                    adopt_legacy(&dir, &store).await?;
                } else {
                    // Never turned into the embedded default: it may be a store whose vault was lost.
                    anyhow::bail!(
                        "{} has no vault: it is not a complete keyward store. Restore the data dir from \
                         backup, or remove it to start afresh",
                        dir.db_path().display(),
                    );
                }
            }
            (Arc::new(store), Some(dir), Some(lock))
        }
        StoreChoice::Postgres {
            url,
            pool_size,
            feed_grace,
        } => {
            let store = open_postgres(url, *pool_size, *feed_grace).await?;
            if store.vault().await?.is_none() {
                anyhow::bail!(
                    "{url:?} holds no keyward store yet: run `keyward init --store URL` once, \
                     then start the nodes"
                );
            }
            (Arc::new(store), None, None)
        }
    };
    let mut authority = config.authority.clone();
    if let Some(redis) = &config.ratelimit_redis {
        let options = keyward_limiter_redis::Options {
            when_unreachable: redis.when_unreachable,
            timeout: redis.timeout,
        };
        let limiter = keyward_limiter_redis::RedisLimiter::connect(redis.url.expose(), options)
            .await
            .map_err(|e| anyhow::anyhow!("ratelimit_redis: {e}"))?;
        // Concurrency leases live beside the limits, so they hold across nodes too.
        let limiter = Arc::new(limiter);
        authority.limiter =
            Some(Arc::clone(&limiter) as Arc<dyn keyward_service::limiter::Limiter>);
        authority.leases =
            Some(Arc::clone(&limiter) as Arc<dyn keyward_service::leases::LeaseTable>);
        authority.escalations = Some(limiter);
    }
    let node = Node::open(store, Arc::new(SystemClock), authority).await?;
    match configured_unseal_key(&config, dir.as_ref())? {
        Some(key) => node
            .unseal_with_key(&key, "key file")
            .await
            .context("the configured unseal key does not unseal this vault")?,
        None => {
            let status = node.status().await?;
            eprintln!(
                "keyward: the vault is sealed; unseal it with `keyward operator unseal` ({} of {} shares)",
                status.threshold, status.shares
            );
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = shutdown_signal();
    match &config.store {
        StoreChoice::Embedded => {
            tracing::info!(%addr, data_dir = %config.data_dir.display(), "keyward listening");
        }
        StoreChoice::Postgres { url, .. } => {
            tracing::info!(%addr, store = ?url, "keyward listening");
        }
    }
    println!("keyward listening on http://{addr}");
    keyward_server::run(listener, node, config.server, shutdown).await?;
    tracing::info!("keyward stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, before the
/// server says it is listening, so a signal sent right after that is never missed.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut term, mut int) = signals;
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = term => {},
                () = int => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down: draining requests and flushing usage");
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn audit_verify(
    data_dir: &std::path::Path,
    shared: Option<String>,
    unseal_key_file: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let dir = DataDir::new(data_dir);
    // A shared store's key is given; only a data dir keeps one beside it.
    let embedded = shared.is_none();
    let store: Box<dyn Store> = match shared {
        Some(url) => {
            let url = match StoreChoice::parse(Some(url)).map_err(anyhow::Error::msg)? {
                StoreChoice::Postgres { url, .. } => url,
                StoreChoice::Embedded => anyhow::bail!("--store: give a postgres:// URL"),
            };
            Box::new(open_postgres(&url, 2, std::time::Duration::from_secs(10)).await?)
        }
        None => {
            if !dir.db_path().exists() {
                anyhow::bail!("no keyward store in {}", data_dir.display());
            }
            Box::new(SqliteStore::open(&dir.db_path())?)
        }
    };
    let store = store.as_ref();
    let chain = verify_chain(store).await?;
    let key = match std::env::var("KEYWARD_UNSEAL_KEY") {
        Ok(text) => Some(
            UnsealKey::from_text(&zeroize::Zeroizing::new(text))
                .context("KEYWARD_UNSEAL_KEY is not an unseal key (kwunseal1-…)")?,
        ),
        Err(_) => {
            let path = unseal_key_file.or_else(|| {
                let beside = dir.unseal_key_path();
                (embedded && beside.exists()).then_some(beside)
            });
            match path {
                Some(path) => {
                    datadir::check_key_file(&path)?;
                    let text =
                        zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(
                            || format!("cannot read the unseal key file {}", path.display()),
                        )?);
                    Some(UnsealKey::from_text(&text).with_context(|| {
                        format!("{} does not hold an unseal key", path.display())
                    })?)
                }
                None => None,
            }
        }
    };
    let tampered = match &key {
        Some(key) => Some(
            keyward_service::verify_stored_state(store, key)
                .await
                .context("cannot check integrity tags (is this the vault's unseal key?)")?,
        ),
        None => None,
    };
    let (intact, entries, broken) = match &chain {
        ChainReport::Intact { entries } => (true, Some(*entries), None),
        ChainReport::Broken(b) => (false, None, Some(b)),
    };
    let all_good = intact && tampered.as_ref().is_none_or(Vec::is_empty);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "intact": all_good,
                "chain_intact": intact,
                "entries": entries,
                "first_broken_seq": broken.map(|b| b.seq),
                "reason": broken.map(|b| b.reason),
                "integrity_checked": tampered.is_some(),
                "integrity_failures": tampered,
            })
        );
    } else {
        match broken {
            Some(b) => eprintln!("keyward: audit log BROKEN at entry {}: {}", b.seq, b.reason),
            None => println!(
                "audit log chain intact: {} entries verified",
                entries.unwrap_or(0)
            ),
        }
        match &tampered {
            None => println!(
                "integrity tags not checked: give the unseal key (KEYWARD_UNSEAL_KEY or \
                 --unseal-key-file) to detect rewritten or truncated entries and edited records"
            ),
            Some(list) if list.is_empty() => {
                println!("integrity tags intact: keys, environments, roles, plans, audit head")
            }
            Some(list) => {
                for what in list {
                    eprintln!("keyward: INTEGRITY failure: {what}");
                }
            }
        }
    }
    Ok(if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
