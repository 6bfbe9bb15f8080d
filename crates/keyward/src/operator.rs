//! `keyward operator …`: the vault's seal state, unsealing, sealing, keyring rotation and
//! rekeying, over the HTTP API.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::client::{Remote, call};

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Show whether the vault is sealed, unseal progress, the keyring term and rewrap progress.
    Status,
    /// Give one unseal share (read from stdin when not given, so it stays out of shell history).
    Unseal {
        share: Option<String>,
        /// Discard the shares given so far.
        #[arg(long, conflicts_with = "share")]
        reset: bool,
    },
    /// Seal the vault now (needs KEYWARD_TOKEN with sys:seal).
    Seal,
    /// Add a keyring term; old values are re-sealed under it in the background.
    Rotate,
    /// Replace the unseal shares. Current shares are read from stdin, one per line.
    Rekey {
        #[arg(long)]
        key_shares: u8,
        #[arg(long)]
        key_threshold: u8,
    },
}

fn token() -> anyhow::Result<Zeroizing<String>> {
    Ok(Zeroizing::new(
        std::env::var("KEYWARD_TOKEN")
            .context("set KEYWARD_TOKEN to an admin key (the root key from keyward init)")?
            .trim()
            .to_owned(),
    ))
}

fn read_lines(prompt: &str) -> anyhow::Result<Vec<Zeroizing<String>>> {
    if std::io::stdin().is_terminal() {
        eprintln!("{prompt}");
    }
    let mut lines = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = Zeroizing::new(line.context("cannot read stdin")?);
        if !line.trim().is_empty() {
            lines.push(Zeroizing::new(line.trim().to_owned()));
        }
    }
    Ok(lines)
}

fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    value.get(name).unwrap_or(&Value::Null)
}

fn print_status(status: &Value) {
    let sealed = status
        .get("sealed")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    println!(
        "sealed: {sealed}  progress: {}/{}  shares: {}  keyring term: {}",
        field(status, "progress"),
        field(status, "threshold"),
        field(status, "shares"),
        field(status, "term")
    );
    if let Some(rewrap) = status.get("rewrap").filter(|r| !r.is_null()) {
        let state = if field(rewrap, "finished_at").is_null() {
            "running"
        } else {
            "finished"
        };
        println!(
            "rewrap to term {}: {}/{} values, {state}",
            field(rewrap, "term"),
            field(rewrap, "done"),
            field(rewrap, "total")
        );
    }
}

pub async fn run(remote: Remote, command: OperatorCommand) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    let base = remote.base();
    let answer = match &command {
        OperatorCommand::Status => {
            call(
                &client,
                base,
                None,
                reqwest::Method::GET,
                "/v1/sys/seal-status",
                None,
            )
            .await?
        }
        OperatorCommand::Unseal { share, reset } => {
            let body = if *reset {
                json!({ "reset": true })
            } else {
                let share = match share {
                    Some(s) => Zeroizing::new(s.clone()),
                    None => read_lines("Enter one unseal share:")?
                        .into_iter()
                        .next()
                        .context("no share on stdin")?,
                };
                json!({ "share": share.as_str() })
            };
            call(
                &client,
                base,
                None,
                reqwest::Method::POST,
                "/v1/sys/unseal",
                Some(body),
            )
            .await?
        }
        OperatorCommand::Seal => {
            let token = token()?;
            call(
                &client,
                base,
                Some(&token),
                reqwest::Method::POST,
                "/v1/sys/seal",
                None,
            )
            .await?
        }
        OperatorCommand::Rotate => {
            let token = token()?;
            call(
                &client,
                base,
                Some(&token),
                reqwest::Method::POST,
                "/v1/sys/rotate",
                None,
            )
            .await?
        }
        OperatorCommand::Rekey {
            key_shares,
            key_threshold,
        } => {
            let token = token()?;
            let lines = read_lines("Enter the current unseal shares, one per line, then EOF:")?;
            if lines.is_empty() {
                bail!("no current shares on stdin");
            }
            let shares: Vec<&str> = lines.iter().map(|l| l.as_str()).collect();
            call(
                &client,
                base,
                Some(&token),
                reqwest::Method::POST,
                "/v1/sys/rekey",
                Some(json!({
                    "shares": shares,
                    "new_shares": key_shares,
                    "new_threshold": key_threshold,
                })),
            )
            .await?
        }
    };
    if remote.json() {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        OperatorCommand::Status | OperatorCommand::Unseal { .. } => print_status(&answer),
        OperatorCommand::Seal => println!("sealed"),
        OperatorCommand::Rotate => {
            println!(
                "keyring term {}; old values are being re-sealed",
                field(&answer, "term")
            );
        }
        OperatorCommand::Rekey { .. } => {
            println!("New unseal shares (shown only this once; the old ones no longer work):");
            for (i, share) in field(&answer, "shares")
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                println!("  {}: {}", i + 1, share.as_str().unwrap_or(""));
            }
            println!(
                "New unseal key (for an unseal key file): {}",
                field(&answer, "key").as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
