//! The `keyward` binary: the CLI, configuration loading, and assembly of the concrete backends
//! (the embedded SQLite store and the system clock) into a running server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keyward_core::SystemClock;
use keyward_service::audit::{ChainReport, verify_chain};
use keyward_service::{Authority, initialize};
use keyward_store::SqliteStore;

mod client;
mod config;
mod datadir;

use config::{Config, FileConfig, LogFormat, Overrides};
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
    /// Create a data dir: the store, the environments' secrets and the root key (printed once).
    Init {
        #[arg(long, env = "KEYWARD_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
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
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long, env = "KEYWARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
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
    /// Recompute the audit log's hash chain offline; exits non-zero at the first broken entry.
    Verify {
        #[arg(long, env = "KEYWARD_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
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
        Command::Init { data_dir, json } => {
            let dir = DataDir::new(&data_dir);
            if dir.is_initialised() {
                anyhow::bail!("{} is already initialised", data_dir.display());
            }
            dir.check_consistent()?;
            init(&dir, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(load_config(args)?).await.map(|()| ExitCode::SUCCESS),
        Command::Keys { remote, command } => client::run(remote, command).await,
        Command::Audit {
            command: AuditCommand::Verify { data_dir, json },
        } => audit_verify(&data_dir, json).await,
    }
}

/// Initialises `dir` and prints the root key once.
async fn init(dir: &DataDir, json: bool) -> anyhow::Result<()> {
    dir.create()?;
    let environments = keyward_service::initial_environments();
    let keyring = dir.write_new_secrets(&environments)?;
    let store = SqliteStore::open(&dir.db_path())?;
    let root = initialize(&store, &SystemClock, &keyring).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "data_dir": dir_display(dir),
                "root_key": root.expose(),
                "environments": environments.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("keyward: initialised {}", dir_display(dir));
        println!("Root key (shown only this once; store it in a secret manager now):");
        println!("  {}", root.expose());
    }
    Ok(())
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
    let dir = DataDir::new(&config.data_dir);
    dir.check_consistent()?;
    if !dir.is_initialised() {
        init(&dir, json).await?;
    }
    let _lock = dir.lock()?;
    let keyring = dir.read_keyring()?;
    let store = SqliteStore::open(&dir.db_path())
        .with_context(|| format!("cannot open {}", dir.db_path().display()))?;
    let authority = Arc::new(
        Authority::open(
            Arc::new(store),
            Arc::new(SystemClock),
            keyring,
            Arc::new(datadir::SecretsWriter::new(&config.data_dir)),
            config.authority.clone(),
        )
        .await?,
    );
    authority.start_background();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "keyward listening");
    println!("keyward listening on http://{addr}");
    keyward_server::run(listener, authority, config.server, shutdown_signal()).await?;
    tracing::info!("keyward stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: draining requests and flushing usage");
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

async fn audit_verify(data_dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let dir = DataDir::new(data_dir);
    if !dir.db_path().exists() {
        anyhow::bail!("no keyward store in {}", data_dir.display());
    }
    let store = SqliteStore::open(&dir.db_path())?;
    match verify_chain(&store).await? {
        ChainReport::Intact { entries } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"intact": true, "entries": entries})
                );
            } else {
                println!("audit log intact: {entries} entries verified");
            }
            Ok(ExitCode::SUCCESS)
        }
        ChainReport::Broken(broken) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"intact": false, "first_broken_seq": broken.seq, "reason": broken.reason})
                );
            } else {
                eprintln!(
                    "keyward: audit log BROKEN at entry {}: {}",
                    broken.seq, broken.reason
                );
            }
            Ok(ExitCode::from(2))
        }
    }
}
