//! `keyward run --secret NAME=env/path[#field] -- CMD ARGS…`: fetches secrets and runs a command
//! with them as environment variables. Nothing is written to disk or printed; on Unix the command
//! replaces this process, so no copy of the values outlives the exec.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::client::call;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The keyward server.
    #[arg(long, env = "KEYWARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// `NAME=env/path` or `NAME=env/path#field`; repeat for more. Without `#field` a secret with
    /// one field gives that field's value, and one with several gives its JSON.
    #[arg(long = "secret", required = true)]
    secrets: Vec<String>,
    /// Pass KEYWARD_TOKEN and KEYWARD_UNSEAL_KEY on to the command (by default they are
    /// removed from its environment: the command gets its secrets, not keyward's keys).
    #[arg(long)]
    keep_keyward_env: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug)]
struct Wanted {
    name: String,
    environment: String,
    path: String,
    field: Option<String>,
}

fn parse(spec: &str) -> anyhow::Result<Wanted> {
    let (name, source) = spec
        .split_once('=')
        .with_context(|| format!("--secret {spec:?}: expected NAME=env/path[#field]"))?;
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        bail!("--secret {spec:?}: {name:?} is not an environment variable name");
    }
    let (location, field) = match source.split_once('#') {
        Some((location, field)) if !field.is_empty() => (location, Some(field.to_owned())),
        Some(_) => bail!("--secret {spec:?}: empty field after '#'"),
        None => (source, None),
    };
    let (environment, path) = location
        .split_once('/')
        .filter(|(e, p)| !e.is_empty() && !p.is_empty())
        .with_context(|| {
            format!("--secret {spec:?}: expected env/path, e.g. live/payments/stripe")
        })?;
    Ok(Wanted {
        name: name.to_owned(),
        environment: environment.to_owned(),
        path: path.to_owned(),
        field,
    })
}

fn value_text(value: &Value) -> Zeroizing<String> {
    Zeroizing::new(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let wanted = args
        .secrets
        .iter()
        .map(|s| parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let token = Zeroizing::new(
        std::env::var("KEYWARD_TOKEN")
            .context("set KEYWARD_TOKEN to an admin key holding secrets:read for these paths")?
            .trim()
            .to_owned(),
    );
    let client = reqwest::Client::new();
    let base = args.url.trim_end_matches('/');
    let mut values: Vec<(String, Zeroizing<String>)> = Vec::new();
    for w in &wanted {
        let path: String = w
            .path
            .split('/')
            .map(|seg| form_urlencoded::byte_serialize(seg.as_bytes()).collect::<String>())
            .collect::<Vec<_>>()
            .join("/");
        let answer = call(
            &client,
            base,
            Some(&token),
            reqwest::Method::GET,
            &format!("/v1/secrets/{}/{path}", w.environment,),
            None,
        )
        .await
        .with_context(|| format!("cannot read {}/{}", w.environment, w.path))?;
        let data = answer
            .get("data")
            .and_then(Value::as_object)
            .with_context(|| format!("{}/{}: the answer has no data", w.environment, w.path))?;
        let text =
            match &w.field {
                Some(field) => value_text(data.get(field).with_context(|| {
                    format!("{}/{} has no field {field:?}", w.environment, w.path)
                })?),
                None if data.len() == 1 => value_text(data.values().next().unwrap_or(&Value::Null)),
                None => Zeroizing::new(Value::Object(data.clone()).to_string()),
            };
        values.push((w.name.clone(), text));
    }
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after --")?;
    let mut command = std::process::Command::new(program);
    command.args(rest);
    if !args.keep_keyward_env {
        command.env_remove("KEYWARD_TOKEN");
        command.env_remove("KEYWARD_UNSEAL_KEY");
    }
    for (name, value) in &values {
        command.env(name, value.as_str());
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        bail!("cannot run {program}: {error}");
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("cannot run {program}"))?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    }
}
