//! `keyward rotation …`: rotation policies on keys, roles and environments, a key's version
//! history, and a key's own rotation (for the client holding it).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Remote, call};

#[derive(Debug, Subcommand)]
pub enum RotationCommand {
    /// Show the rotation that applies to a key and when it is next rotated.
    Show { id: String },
    /// Set a rotation policy on a key, a role or an environment.
    Set {
        #[command(flatten)]
        on: Target,
        /// Days from a key's creation to its rotation (1-3650).
        #[arg(long)]
        every_days: u32,
        /// Hours the replaced key keeps working.
        #[arg(long, default_value_t = 24)]
        grace_hours: u32,
        /// Days before the rotation from which the holder is told and may rotate itself.
        #[arg(long, default_value_t = 7)]
        notice_days: u32,
    },
    /// Remove the policy from a key, a role or an environment.
    Clear {
        #[command(flatten)]
        on: Target,
    },
    /// Rotate the key in KEYWARD_TOKEN itself (inside its notice window, or to collect the
    /// successor the scheduler made); prints the successor's key once.
    SelfRotate,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A key's id.
    #[arg(long)]
    key: Option<String>,
    /// A role's name: every key holding it.
    #[arg(long)]
    role: Option<String>,
    /// An environment's name: every key in it.
    #[arg(long)]
    environment: Option<String>,
}

fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub async fn run(remote: Remote, command: RotationCommand) -> anyhow::Result<ExitCode> {
    let token = std::env::var("KEYWARD_TOKEN")
        .context("set KEYWARD_TOKEN to an admin key (or, for self-rotate, to the key itself)")?;
    let token = token.trim();
    let client = reqwest::Client::new();
    let base = remote.base();
    let answer = match &command {
        RotationCommand::Show { id } => {
            let path = format!("/v1/keys/{}", segment(id));
            let key = call(
                &client,
                base,
                Some(token),
                reqwest::Method::GET,
                &path,
                None,
            )
            .await?;
            key.get("effective_rotation")
                .cloned()
                .unwrap_or(Value::Null)
        }
        RotationCommand::SelfRotate => {
            call(
                &client,
                base,
                Some(token),
                reqwest::Method::POST,
                "/v1/self/rotate",
                None,
            )
            .await?
        }
        RotationCommand::Set {
            on,
            every_days,
            grace_hours,
            notice_days,
        } => {
            let policy = json!({
                "every_days": every_days,
                "grace_hours": grace_hours,
                "notice_days": notice_days,
            });
            set(&client, base, token, on, policy).await?
        }
        RotationCommand::Clear { on } => set(&client, base, token, on, Value::Null).await?,
    };
    if remote.json() {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    match &command {
        RotationCommand::Show { .. } if answer.is_null() => {
            println!("no rotation policy applies to this key");
        }
        RotationCommand::Show { .. } => print_rotation(&answer),
        RotationCommand::SelfRotate => match answer.get("successor") {
            Some(successor) => {
                println!(
                    "successor {} ({})",
                    text(successor, "id"),
                    text(successor, "start")
                );
                println!(
                    "this key works until {}",
                    answer
                        .get("previous")
                        .map_or("-", |p| text(p, "expires_at"))
                );
                println!("key (shown only this once): {}", text(successor, "key"));
            }
            None => println!(
                "already rotated to {}; its key was handed out before and is never shown again",
                text(&answer, "successor_id")
            ),
        },
        RotationCommand::Set { .. } => println!("rotation policy set"),
        RotationCommand::Clear { .. } => println!("rotation policy removed"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A key's generations as a table, newest first.
pub fn print_versions(answer: &Value) {
    println!(
        "{:<36}  {:<16}  {:<24}  {:<24}  ENDED",
        "ID", "START", "CREATED", "EXPIRES"
    );
    for v in answer["versions"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<16}  {:<24}  {:<24}  {}",
            text(v, "id"),
            text(v, "start"),
            text(v, "created_at"),
            text(v, "expires_at"),
            v.get("ended").and_then(Value::as_str).unwrap_or("current"),
        );
    }
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("-")
}

fn print_rotation(r: &Value) {
    let policy = &r["policy"];
    println!(
        "every {} days, grace {} hours, notice {} days (from the {}{})",
        policy["every_days"],
        policy["grace_hours"],
        policy["notice_days"],
        text(r, "source"),
        r.get("source_name")
            .and_then(Value::as_str)
            .map(|n| format!(" {n}"))
            .unwrap_or_default(),
    );
    println!("next rotation: {}", text(r, "next_rotation_at"));
    println!("notice from:   {}", text(r, "notice_at"));
}

/// Sets (or, with `null`, removes) the policy on the target. A role and an environment are
/// written whole, so their other fields are read first and sent back as they are.
async fn set(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    on: &Target,
    policy: Value,
) -> anyhow::Result<Value> {
    let token = Some(token);
    if let Some(id) = &on.key {
        return call(
            client,
            base,
            token,
            reqwest::Method::PATCH,
            &format!("/v1/keys/{}", segment(id)),
            Some(json!({ "rotation": policy })),
        )
        .await;
    }
    if let Some(role) = &on.role {
        let path = format!("/v1/roles/{}", segment(role));
        let current = call(client, base, token, reqwest::Method::GET, &path, None).await?;
        let mut body = serde_json::Map::new();
        for field in ["description", "permissions"] {
            body.insert(
                field.into(),
                current.get(field).cloned().unwrap_or(Value::Null),
            );
        }
        if !policy.is_null() {
            body.insert("rotation".into(), policy);
        }
        let body = Value::Object(body);
        return call(client, base, token, reqwest::Method::PUT, &path, Some(body)).await;
    }
    let Some(env) = &on.environment else {
        bail!("name a --key, a --role or an --environment");
    };
    let path = format!("/v1/environments/{}", segment(env));
    let current = call(client, base, token, reqwest::Method::GET, &path, None).await?;
    let mut body = current.get("policy").cloned().unwrap_or(Value::Null);
    let Some(fields) = body.as_object_mut() else {
        bail!("keyward answered an environment without a policy");
    };
    if policy.is_null() {
        fields.remove("rotation");
    } else {
        fields.insert("rotation".into(), policy);
    }
    call(
        client,
        base,
        token,
        reqwest::Method::PATCH,
        &path,
        Some(json!({ "policy": body })),
    )
    .await
}
