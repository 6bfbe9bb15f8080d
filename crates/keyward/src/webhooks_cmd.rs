//! `keyward webhooks …`: endpoints that receive keyward's signed events, and their deliveries.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::client::{Remote, call};

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; its signing secret (whsec_…) is printed once.
    Create {
        /// The endpoint's http or https URL (`--url` names the keyward server).
        #[arg(long)]
        endpoint: String,
        /// An event type to receive (key.rotated, key.expiring, …); repeat for more; none:
        /// every type.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Only events of keys of this environment.
        #[arg(long)]
        environment: Option<String>,
        /// Only events of keys of this owner.
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the endpoints.
    List,
    /// Show one endpoint (never its secret).
    Show { id: String },
    /// Change an endpoint's URL, events, filters or enabled state.
    Update {
        id: String,
        /// A new endpoint URL.
        #[arg(long)]
        endpoint: Option<String>,
        /// Replaces the event types; repeat for more.
        #[arg(long = "event")]
        events: Vec<String>,
        /// `true` enables it again (after a 410 Gone), `false` pauses it.
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Remove an endpoint and its delivery log.
    Delete { id: String },
    /// A new signing secret, printed once; the old one signs too during the overlap.
    RotateSecret {
        id: String,
        /// Seconds the old secret keeps signing.
        #[arg(long, default_value_t = 86_400)]
        overlap_s: u64,
    },
    /// An endpoint's deliveries, newest first.
    Deliveries {
        id: String,
        #[arg(long)]
        limit: Option<u32>,
        /// Deliveries of events before this position.
        #[arg(long)]
        before: Option<u64>,
    },
    /// Send one delivery again (same webhook-id).
    Redeliver { id: String, seq: u64 },
    /// Send a webhook.test event to this endpoint only.
    Test { id: String },
}

fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

pub async fn run(remote: Remote, command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    let token = std::env::var("KEYWARD_TOKEN")
        .context("set KEYWARD_TOKEN to an admin key (the root key from keyward init)")?;
    let client = reqwest::Client::new();
    let (method, path, body) = match &command {
        WebhooksCommand::Create {
            endpoint: url,
            events,
            environment,
            owner,
            description,
        } => {
            let mut body = Map::new();
            body.insert("url".into(), json!(url));
            body.insert("event_types".into(), json!(events));
            for (field, value) in [
                ("environment", environment),
                ("owner", owner),
                ("description", description),
            ] {
                if let Some(v) = value {
                    body.insert(field.into(), json!(v));
                }
            }
            (
                reqwest::Method::POST,
                "/v1/webhooks".to_owned(),
                Some(Value::Object(body)),
            )
        }
        WebhooksCommand::List => (reqwest::Method::GET, "/v1/webhooks".to_owned(), None),
        WebhooksCommand::Show { id } => (
            reqwest::Method::GET,
            format!("/v1/webhooks/{}", segment(id)),
            None,
        ),
        WebhooksCommand::Update {
            id,
            endpoint: url,
            events,
            enabled,
        } => {
            let mut body = Map::new();
            if let Some(url) = url {
                body.insert("url".into(), json!(url));
            }
            if !events.is_empty() {
                body.insert("event_types".into(), json!(events));
            }
            if let Some(enabled) = enabled {
                body.insert("enabled".into(), json!(enabled));
            }
            (
                reqwest::Method::PATCH,
                format!("/v1/webhooks/{}", segment(id)),
                Some(Value::Object(body)),
            )
        }
        WebhooksCommand::Delete { id } => (
            reqwest::Method::DELETE,
            format!("/v1/webhooks/{}", segment(id)),
            None,
        ),
        WebhooksCommand::RotateSecret { id, overlap_s } => (
            reqwest::Method::POST,
            format!("/v1/webhooks/{}/rotate-secret", segment(id)),
            Some(json!({ "overlap_s": overlap_s })),
        ),
        WebhooksCommand::Deliveries { id, limit, before } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(before) = before {
                query.append_pair("before", &before.to_string());
            }
            let query = query.finish();
            let query = if query.is_empty() {
                query
            } else {
                format!("?{query}")
            };
            (
                reqwest::Method::GET,
                format!("/v1/webhooks/{}/deliveries{query}", segment(id)),
                None,
            )
        }
        WebhooksCommand::Redeliver { id, seq } => (
            reqwest::Method::POST,
            format!("/v1/webhooks/{}/deliveries/{seq}/redeliver", segment(id)),
            None,
        ),
        WebhooksCommand::Test { id } => (
            reqwest::Method::POST,
            format!("/v1/webhooks/{}/test", segment(id)),
            None,
        ),
    };
    let answer = call(
        &client,
        remote.base(),
        Some(token.trim()),
        method,
        &path,
        body,
    )
    .await?;
    if remote.json() {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &Value, field: &str| -> String {
        match v.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".into(),
            Some(other) => other.to_string(),
        }
    };
    let line = |w: &Value| {
        let events = w
            .get("event_types")
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
            .map_or_else(
                || "every event".to_owned(),
                |l| {
                    l.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                },
            );
        format!(
            "{:<36}  {:<8}  {}  ({events})",
            text(w, "id"),
            if w.get("enabled") == Some(&Value::Bool(true)) {
                "enabled"
            } else {
                "disabled"
            },
            text(w, "url"),
        )
    };
    match &command {
        WebhooksCommand::Create { .. } | WebhooksCommand::RotateSecret { .. } => {
            println!("{}", line(&answer));
            println!(
                "signing secret (shown only this once): {}",
                text(&answer, "secret")
            );
        }
        WebhooksCommand::List => {
            println!("{:<36}  {:<8}  URL  (EVENTS)", "ID", "STATE");
            for w in answer
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("{}", line(w));
            }
        }
        WebhooksCommand::Show { .. } | WebhooksCommand::Update { .. } => {
            println!("{}", line(&answer));
            if let Some(reason) = answer.get("disabled_reason").and_then(Value::as_str) {
                println!("disabled: {reason}");
            }
        }
        WebhooksCommand::Delete { .. } => println!("webhook removed"),
        WebhooksCommand::Deliveries { .. } => {
            println!(
                "{:>8}  {:<20}  {:<9}  {:>8}  {:>6}  EVENT ID",
                "SEQ", "TYPE", "STATE", "ATTEMPTS", "STATUS"
            );
            for d in answer
                .get("deliveries")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "{:>8}  {:<20}  {:<9}  {:>8}  {:>6}  {}",
                    text(d, "seq"),
                    text(d, "type"),
                    text(d, "state"),
                    text(d, "attempts"),
                    text(d, "last_status"),
                    text(d, "event_id"),
                );
            }
            if let Some(next) = answer.get("next_before").and_then(Value::as_u64) {
                println!("more: --before {next}");
            }
        }
        WebhooksCommand::Redeliver { .. } => {
            println!("queued again: {}", text(&answer, "event_id"));
        }
        WebhooksCommand::Test { .. } => {
            println!("test event queued: {}", text(&answer, "event_id"))
        }
    }
    Ok(ExitCode::SUCCESS)
}
