//! `keyward store migrate`: copies an embedded store into a shared PostgreSQL one, record for
//! record (keys with their usage and quotas, catalogs, the audit chain and its tagged
//! checkpoint, the vault's sealed records, secrets, leases, events), then checks the copy.
//!
//! Nothing is decrypted or re-tagged: ciphertexts and integrity tags move as they are, so the
//! copy opens with the same unseal key and its audit chain verifies as the original did.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use keyward_core::Timestamp;
use keyward_store::prelude::*;
use keyward_store::{Changes, KeyQuery, Store};
use keyward_store_sqlite::SqliteStore;

use crate::config::StoreChoice;
use crate::datadir::DataDir;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the embedded store of a data dir into an empty PostgreSQL database, then verify
    /// the copy (counts, the audit head, the whole audit chain). Stop the server first.
    Migrate {
        /// The data dir to copy from.
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL to copy into (postgres://user:password@host:port/database).
        #[arg(long, env = "KEYWARD_STORE", hide_env_values = true)]
        to: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Records written per transaction.
const BATCH: u32 = 1000;

pub async fn run(command: StoreCommand) -> anyhow::Result<ExitCode> {
    let StoreCommand::Migrate { from, to, json } = command;
    let dir = DataDir::new(&from);
    if !dir.db_path().exists() {
        bail!("no keyward store in {}", from.display());
    }
    // The server holds this lock while it runs: a copy of a store in use would not be one.
    let _lock = dir
        .lock()
        .context("stop the server on this data dir before migrating it")?;
    let url = match StoreChoice::parse(Some(to)).map_err(anyhow::Error::msg)? {
        StoreChoice::Postgres { url, .. } => url,
        StoreChoice::Embedded => bail!("--to: give a postgres:// URL"),
    };
    let source = SqliteStore::open(&dir.db_path())
        .with_context(|| format!("cannot open {}", dir.db_path().display()))?;
    let target = crate::open_postgres(&url, 4, std::time::Duration::from_secs(10)).await?;
    if target.vault().await?.is_some()
        || !target.environments().await?.is_empty()
        || target.audit_head().await?.is_some()
    {
        bail!("{url:?} is not empty: migrate only into a database keyward has not used");
    }
    let counts = Counts::of(&source).await?;
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(counts.total())
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({eta} left)")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> "),
    );
    copy(&source, &target, &bar).await?;
    bar.finish_and_clear();
    let checked = check(&source, &target, &counts).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "store": format!("{url:?}"),
                "keys": counts.keys,
                "secrets": counts.secrets,
                "leases": counts.leases,
                "audit_entries": counts.audit,
                "events": counts.events,
                "audit_head": checked,
                "verified": true,
            })
        );
    } else {
        println!(
            "keyward: copied {} keys, {} secrets, {} leases, {} audit entries and {} events into {url:?}",
            counts.keys, counts.secrets, counts.leases, counts.audit, counts.events
        );
        println!(
            "keyward: verified: the counts match and the audit chain is intact up to {checked}"
        );
        println!("Start the nodes with --store and the same unseal key or shares.");
    }
    Ok(ExitCode::SUCCESS)
}

/// What a store holds, counted the same way on both sides.
#[derive(Debug, PartialEq)]
struct Counts {
    environments: usize,
    roles: usize,
    plans: usize,
    keyrings: usize,
    keys: u64,
    secrets: u64,
    leases: u64,
    audit: u64,
    events: u64,
}

impl Counts {
    async fn of(store: &dyn Store) -> anyhow::Result<Counts> {
        let mut keys = 0;
        let mut after = None;
        loop {
            let page = store.list_keys(page_of_keys(after)).await?;
            keys += page.len() as u64;
            match page.last() {
                Some(last) => after = Some(last.id),
                None => break,
            }
        }
        let environments = store.environments().await?;
        let mut secrets = 0;
        for env in &environments {
            let mut after = None;
            loop {
                let page = store
                    .list_secrets(env.name.clone(), String::new(), after, BATCH)
                    .await?;
                secrets += page.len() as u64;
                match page.last() {
                    Some(last) => after = Some(last.path.clone()),
                    None => break,
                }
            }
        }
        let mut leases = 0;
        let mut after = None;
        loop {
            let page = store.leases(String::new(), false, after, BATCH).await?;
            leases += page.len() as u64;
            match page.last() {
                Some(last) => after = Some(last.id.clone()),
                None => break,
            }
        }
        let audit = store.audit_head().await?.map_or(0, |h| h.seq);
        let mut events = 0;
        let mut after = 0;
        loop {
            let page = store.events(after, BATCH).await?;
            events += page.len() as u64;
            match page.last() {
                Some(last) => after = last.seq,
                None => break,
            }
        }
        Ok(Counts {
            environments: environments.len(),
            roles: store.roles().await?.len(),
            plans: store.plans().await?.len(),
            keyrings: store.keyrings().await?.len(),
            keys,
            secrets,
            leases,
            audit,
            events,
        })
    }

    fn total(&self) -> u64 {
        self.keys + self.secrets + self.leases + self.audit + self.events
    }
}

fn page_of_keys(after: Option<keyward_core::KeyId>) -> KeyQuery {
    KeyQuery {
        after,
        limit: BATCH,
        ..KeyQuery::default()
    }
}

async fn copy(source: &SqliteStore, target: &dyn Store, bar: &ProgressBar) -> anyhow::Result<()> {
    // The vault and the catalogs first: keys and secrets name their environments.
    let environments = source.environments().await?;
    target
        .apply(Changes {
            environments: environments.clone(),
            environment_secrets: source.environment_secrets().await?,
            upsert_roles: source.roles().await?,
            upsert_plans: source.plans().await?,
            vault: source.vault().await?,
            keyrings: source.keyrings().await?,
            ..Changes::default()
        })
        .await
        .context("copying the vault and catalogs")?;

    bar.set_message("keys");
    let mut after = None;
    loop {
        let page = source.list_keys(page_of_keys(after)).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        let mut set_quotas = Vec::new();
        for key in &page {
            if let Some(state) = source.quota_state(key.id).await? {
                set_quotas.push((key.id, Some(state)));
            }
        }
        let n = page.len() as u64;
        target
            .apply(Changes {
                insert_keys: page,
                set_quotas,
                ..Changes::default()
            })
            .await
            .context("copying keys")?;
        bar.inc(n);
    }

    bar.set_message("secrets");
    for env in &environments {
        let mut after = None;
        loop {
            let page = source
                .list_secrets(env.name.clone(), String::new(), after, 100)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.path.clone());
            let mut versions = Vec::new();
            for meta in &page {
                versions.extend(
                    source
                        .secret_versions(meta.environment.clone(), meta.path.clone())
                        .await?,
                );
            }
            let n = page.len() as u64;
            target
                .apply(Changes {
                    upsert_secrets: page,
                    upsert_secret_versions: versions,
                    ..Changes::default()
                })
                .await
                .context("copying secrets")?;
            bar.inc(n);
        }
    }

    bar.set_message("leases");
    let mut after = None;
    loop {
        let page = source.leases(String::new(), false, after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let n = page.len() as u64;
        target
            .apply(Changes {
                upsert_leases: page,
                ..Changes::default()
            })
            .await
            .context("copying leases")?;
        bar.inc(n);
    }

    // Successors waiting for their holders (after the keys they name).
    let waiting = source
        .lapsed_handovers(Timestamp::from_unix_ms(i64::MAX), u32::MAX)
        .await?;
    let mut handovers = Vec::with_capacity(waiting.len());
    for predecessor in waiting {
        handovers.extend(source.handover(predecessor).await?);
    }
    if !handovers.is_empty() {
        target
            .apply(Changes {
                insert_handovers: handovers,
                ..Changes::default()
            })
            .await
            .context("copying key handovers")?;
    }

    bar.set_message("audit log");
    let checkpoint = source.audit_checkpoint().await?;
    let head = source.audit_head().await?.map_or(0, |h| h.seq);
    let mut after = 0;
    loop {
        let page = source.audit_entries(after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let n = page.len() as u64;
        // The tagged checkpoint goes with the last entries, as the service writes it.
        let audit_checkpoint = if after == head {
            checkpoint.clone()
        } else {
            None
        };
        target
            .apply(Changes {
                audit: page,
                audit_checkpoint,
                ..Changes::default()
            })
            .await
            .context("copying the audit log")?;
        bar.inc(n);
    }
    if head == 0 && checkpoint.is_some() {
        target
            .apply(Changes {
                audit_checkpoint: checkpoint,
                ..Changes::default()
            })
            .await?;
    }

    bar.set_message("events");
    let mut after = 0;
    loop {
        let page = source.events(after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let n = page.len() as u64;
        target.append_events(page).await.context("copying events")?;
        bar.inc(n);
    }
    target.sync().await?;
    Ok(())
}

/// Compares the copy with the original; returns the audit head both share.
async fn check(source: &dyn Store, target: &dyn Store, counts: &Counts) -> anyhow::Result<String> {
    let copied = Counts::of(target).await?;
    if &copied != counts {
        bail!("the copy does not match: the original holds {counts:?}, the copy {copied:?}");
    }
    if source.audit_head().await? != target.audit_head().await?
        || source.audit_checkpoint().await? != target.audit_checkpoint().await?
    {
        bail!("the copy's audit head differs from the original's");
    }
    if source.vault().await? != target.vault().await? {
        bail!("the copy's vault record differs from the original's");
    }
    match keyward_service::audit::verify_chain(target).await? {
        keyward_service::audit::ChainReport::Intact { entries } => {
            let head = target.audit_head().await?;
            Ok(match head {
                Some(h) => format!("entry {entries} ({})", h.hash),
                None => "an empty log".to_owned(),
            })
        }
        keyward_service::audit::ChainReport::Broken(b) => {
            bail!("the copy's audit chain is broken: {b:?}")
        }
    }
}
