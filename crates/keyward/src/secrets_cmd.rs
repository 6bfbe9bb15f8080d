//! `keyward secrets …`: the vault's secrets over the HTTP API. Values are given as JSON on stdin
//! or as `field=value` arguments, never required on the command line itself.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::client::{Remote, call};

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print a secret's data as JSON (or one field's value with --field).
    Get {
        /// `env/path`, e.g. `live/payments/stripe`.
        location: String,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        field: Option<String>,
    },
    /// Write a new version. The data is a JSON object on stdin, or `field=value` pairs.
    Put {
        location: String,
        /// `field=value`; `field=-` reads that value from stdin.
        pairs: Vec<String>,
        /// Check-and-set: the version this write replaces (0: must not exist yet).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// List paths of an environment under a prefix.
    List {
        environment: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Soft-delete versions (default: the latest); `undelete` brings them back.
    Delete {
        location: String,
        #[arg(long = "version")]
        versions: Vec<u64>,
    },
    Undelete {
        location: String,
        #[arg(long = "version")]
        versions: Vec<u64>,
    },
    /// Destroy versions for good (default: the latest).
    Destroy {
        location: String,
        #[arg(long = "version")]
        versions: Vec<u64>,
    },
    /// Show metadata and versions (never values).
    Metadata { location: String },
}

fn split_location(location: &str) -> anyhow::Result<(String, String)> {
    let (env, path) = location
        .split_once('/')
        .filter(|(e, p)| !e.is_empty() && !p.is_empty())
        .with_context(|| format!("{location:?}: expected env/path, e.g. live/payments/stripe"))?;
    let path = path
        .split('/')
        .map(|seg| form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/");
    Ok((env.to_owned(), path))
}

fn read_stdin() -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read stdin")?;
    Ok(text)
}

fn data_from(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    if pairs.is_empty() {
        let text = read_stdin()?;
        return match serde_json::from_str(&text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => bail!("stdin is not a JSON object (or give field=value pairs)"),
        };
    }
    let mut data = Map::new();
    for (i, pair) in pairs.iter().enumerate() {
        // The argument may be a value typed without its field: never echo it.
        let (field, value) = pair
            .split_once('=')
            .with_context(|| format!("argument {}: expected field=value", i + 2))?;
        let value = if value == "-" {
            read_stdin()?.trim_end_matches('\n').to_owned()
        } else {
            value.to_owned()
        };
        data.insert(field.to_owned(), Value::String(value));
    }
    Ok(data)
}

pub async fn run(remote: Remote, command: SecretsCommand) -> anyhow::Result<ExitCode> {
    let token = Zeroizing::new(
        std::env::var("KEYWARD_TOKEN")
            .context("set KEYWARD_TOKEN to an admin key holding secrets permissions")?
            .trim()
            .to_owned(),
    );
    let client = reqwest::Client::new();
    let base = remote.base();
    let versions_body = |versions: &[u64]| {
        if versions.is_empty() {
            json!({})
        } else {
            json!({ "versions": versions })
        }
    };
    let (method, path, body) = match &command {
        SecretsCommand::Get {
            location, version, ..
        } => {
            let (env, path) = split_location(location)?;
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            (
                reqwest::Method::GET,
                format!("/v1/secrets/{env}/{path}{query}"),
                None,
            )
        }
        SecretsCommand::Put {
            location,
            pairs,
            cas,
        } => {
            let (env, path) = split_location(location)?;
            let mut body = json!({ "data": data_from(pairs)? });
            if let (Some(cas), Some(obj)) = (cas, body.as_object_mut()) {
                obj.insert("cas".into(), json!(cas));
            }
            (
                reqwest::Method::PUT,
                format!("/v1/secrets/{env}/{path}"),
                Some(body),
            )
        }
        SecretsCommand::List {
            environment,
            prefix,
        } => {
            let prefix: String = form_urlencoded::byte_serialize(prefix.as_bytes()).collect();
            (
                reqwest::Method::GET,
                format!("/v1/secrets/{environment}?prefix={prefix}"),
                None,
            )
        }
        SecretsCommand::Delete { location, versions } => {
            let (env, path) = split_location(location)?;
            let query = if versions.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = versions.iter().map(u64::to_string).collect();
                format!("?versions={}", list.join(","))
            };
            (
                reqwest::Method::DELETE,
                format!("/v1/secrets/{env}/{path}{query}"),
                None,
            )
        }
        SecretsCommand::Undelete { location, versions } => {
            let (env, path) = split_location(location)?;
            (
                reqwest::Method::POST,
                format!("/v1/secret-undelete/{env}/{path}"),
                Some(versions_body(versions)),
            )
        }
        SecretsCommand::Destroy { location, versions } => {
            let (env, path) = split_location(location)?;
            (
                reqwest::Method::POST,
                format!("/v1/secret-destroy/{env}/{path}"),
                Some(versions_body(versions)),
            )
        }
        SecretsCommand::Metadata { location } => {
            let (env, path) = split_location(location)?;
            (
                reqwest::Method::GET,
                format!("/v1/secret-metadata/{env}/{path}"),
                None,
            )
        }
    };
    let answer = call(&client, base, Some(&token), method, &path, body).await?;
    match &command {
        SecretsCommand::Get {
            field: Some(field), ..
        } => {
            let value = answer
                .get("data")
                .and_then(|d| d.get(field))
                .with_context(|| format!("the secret has no field {field:?}"))?;
            match value {
                Value::String(text) => println!("{text}"),
                other => println!("{other}"),
            }
        }
        SecretsCommand::Get { .. } if !remote.json() => {
            println!("{}", answer.get("data").unwrap_or(&Value::Null));
        }
        SecretsCommand::Put { .. } if !remote.json() => {
            println!("version {}", answer.get("version").unwrap_or(&Value::Null));
        }
        SecretsCommand::List { .. } if !remote.json() => {
            for secret in answer
                .get("secrets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "{}  v{}",
                    secret.get("path").and_then(Value::as_str).unwrap_or(""),
                    secret.get("current_version").unwrap_or(&Value::Null)
                );
            }
        }
        _ => println!("{answer}"),
    }
    Ok(ExitCode::SUCCESS)
}
