//! `keyward keys …`: the admin API over HTTP, for people and scripts.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

#[derive(Debug, Args)]
pub struct Remote {
    /// The keyward server.
    #[arg(
        long,
        env = "KEYWARD_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key; its plaintext is printed once.
    Create {
        #[arg(long)]
        environment: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        purpose: Option<String>,
        /// A `resource:action` permission; repeat for more.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Seconds until the key expires.
        #[arg(long, conflicts_with = "expires_at")]
        ttl_s: Option<u64>,
        /// RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        /// A JSON object stored with the key and returned by verify.
        #[arg(long)]
        meta: Option<String>,
        /// `default` or `keyward` (an admin key, in the admin environment).
        #[arg(long)]
        service: Option<String>,
        /// A role whose permissions the key holds; repeat for more.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A `METHOD /path/pattern` rule; repeat for more.
        #[arg(long = "path-rule")]
        path_rules: Vec<String>,
        /// A CIDR block the key may be used from; repeat for more.
        #[arg(long = "allow-cidr")]
        allowed_cidrs: Vec<String>,
        /// A CIDR block the key may never be used from; repeat for more.
        #[arg(long = "deny-cidr")]
        denied_cidrs: Vec<String>,
    },
    /// List keys, oldest first.
    List {
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        /// Keys whose start begins with this (find a leaked key by what was seen of it).
        #[arg(long)]
        start: Option<String>,
        /// Keys created before this RFC 3339 time.
        #[arg(long)]
        created_before: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one key (never its secret).
    Show { id: String },
    /// Show where each of a key's permissions comes from and what its environment's policy removes.
    Explain { id: String },
    /// Revoke a key for good; or, with selectors, every key they all match (an emergency
    /// revocation: the count is shown and confirmed first unless --yes).
    Revoke {
        /// The key to revoke (with selectors: one more key the selectors must also match).
        #[arg(required_unless_present_any = ["owner", "environment", "start", "created_before"])]
        id: Option<String>,
        #[arg(long)]
        reason: String,
        /// Every key of this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Every key of this environment.
        #[arg(long)]
        environment: Option<String>,
        /// Every key whose start begins with this (what was seen of a leaked key).
        #[arg(long)]
        start: Option<String>,
        /// Every key created before this RFC 3339 time.
        #[arg(long)]
        created_before: Option<String>,
        /// Revoke without asking to confirm the count.
        #[arg(long)]
        yes: bool,
    },
    /// Every generation of a key (rolls and rotations), newest first, and how each ended.
    Versions { id: String },
    /// Replace a key with a successor; the old key works for the grace period.
    Roll {
        id: String,
        #[arg(long, default_value_t = 86_400)]
        grace_period_s: u64,
    },
}

pub async fn run(remote: Remote, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let token = std::env::var("KEYWARD_TOKEN")
        .context("set KEYWARD_TOKEN to an admin key (the root key from keyward init)")?;
    let client = reqwest::Client::new();
    let base = remote.url.trim_end_matches('/');
    let (method, path, body) = match &command {
        KeysCommand::Create {
            environment,
            name,
            owner,
            purpose,
            permissions,
            ttl_s,
            expires_at,
            meta,
            service,
            roles,
            path_rules,
            allowed_cidrs,
            denied_cidrs,
        } => {
            let mut body = Map::new();
            body.insert("environment".into(), json!(environment));
            body.insert("name".into(), json!(name));
            body.insert("owner".into(), json!(owner));
            body.insert("permissions".into(), json!(permissions));
            for (field, value) in [
                ("purpose", purpose),
                ("expires_at", expires_at),
                ("service", service),
            ] {
                if let Some(v) = value {
                    body.insert(field.into(), json!(v));
                }
            }
            if let Some(ttl) = ttl_s {
                body.insert("ttl_s".into(), json!(ttl));
            }
            for (field, list) in [
                ("roles", roles),
                ("path_rules", path_rules),
                ("allowed_cidrs", allowed_cidrs),
                ("denied_cidrs", denied_cidrs),
            ] {
                if !list.is_empty() {
                    body.insert(field.into(), json!(list));
                }
            }
            if let Some(meta) = meta {
                let parsed: Value = serde_json::from_str(meta).context("--meta is not JSON")?;
                body.insert("meta".into(), parsed);
            }
            (
                reqwest::Method::POST,
                "/v1/keys".to_owned(),
                Some(Value::Object(body)),
            )
        }
        KeysCommand::List {
            environment,
            status,
            owner,
            start,
            created_before,
            limit,
            cursor,
        } => {
            let mut query = form_query(&[
                ("environment", environment.clone()),
                ("status", status.clone()),
                ("owner", owner.clone()),
                ("start", start.clone()),
                ("created_before", created_before.clone()),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor.clone()),
            ]);
            if !query.is_empty() {
                query.insert(0, '?');
            }
            (reqwest::Method::GET, format!("/v1/keys{query}"), None)
        }
        KeysCommand::Explain { id } => (
            reqwest::Method::GET,
            format!("/v1/keys/{}/effective-permissions", path_segment(id)),
            None,
        ),
        KeysCommand::Show { id } => (
            reqwest::Method::GET,
            format!("/v1/keys/{}", path_segment(id)),
            None,
        ),
        KeysCommand::Revoke {
            id,
            reason,
            owner,
            environment,
            start,
            created_before,
            yes,
        } => {
            let mut selector = Map::new();
            for (field, value) in [
                ("owner", owner),
                ("environment", environment),
                ("start", start),
                ("created_before", created_before),
            ] {
                if let Some(v) = value {
                    selector.insert(field.into(), json!(v));
                }
            }
            match id {
                Some(id) if selector.is_empty() => (
                    reqwest::Method::POST,
                    format!("/v1/keys/{}/revoke", path_segment(id)),
                    Some(json!({ "reason": reason })),
                ),
                _ => {
                    if let Some(id) = id {
                        selector.insert("ids".into(), json!([id]));
                    }
                    selector.insert("reason".into(), json!(reason));
                    let bulk = Bulk {
                        client: &client,
                        base,
                        token: token.trim(),
                    };
                    return bulk.revoke(selector, *yes, remote.json).await;
                }
            }
        }
        KeysCommand::Versions { id } => (
            reqwest::Method::GET,
            format!("/v1/keys/{}/versions", path_segment(id)),
            None,
        ),
        KeysCommand::Roll { id, grace_period_s } => (
            reqwest::Method::POST,
            format!("/v1/keys/{}/roll", path_segment(id)),
            Some(json!({ "grace_period_s": grace_period_s })),
        ),
    };
    let answer = call(&client, base, Some(token.trim()), method, &path, body).await?;
    if remote.json {
        println!("{answer}");
    } else {
        print_summary(&command, &answer);
    }
    Ok(ExitCode::SUCCESS)
}

/// An emergency revocation from the command line.
struct Bulk<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Bulk<'_> {
    async fn post(&self, body: &Map<String, Value>) -> anyhow::Result<Value> {
        call(
            self.client,
            self.base,
            Some(self.token),
            reqwest::Method::POST,
            "/v1/keys/revoke",
            Some(Value::Object(body.clone())),
        )
        .await
    }

    /// Counts what the selector matches, asks to confirm (unless `yes`), then revokes, call
    /// after call while the server says more remain.
    async fn revoke(
        &self,
        mut body: Map<String, Value>,
        yes: bool,
        json_out: bool,
    ) -> anyhow::Result<ExitCode> {
        let count = |answer: &Value| answer.get("revoked").and_then(Value::as_u64).unwrap_or(0);
        let more = |answer: &Value| answer.get("more").and_then(Value::as_bool) == Some(true);
        body.insert("dry_run".into(), json!(true));
        let dry = self.post(&body).await?;
        let matched = count(&dry);
        if matched == 0 {
            if json_out {
                println!("{dry}");
            } else {
                println!("no key matches: nothing revoked");
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !yes && !confirm(matched, more(&dry))? {
            eprintln!("keyward: nothing revoked");
            return Ok(ExitCode::FAILURE);
        }
        body.insert("dry_run".into(), json!(false));
        let mut total = 0;
        loop {
            let answer = self.post(&body).await?;
            total += count(&answer);
            if json_out {
                println!("{answer}");
            }
            if !more(&answer) || count(&answer) == 0 {
                break;
            }
        }
        if !json_out {
            println!("revoked {total} keys");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Asks on the terminal whether to revoke `count` keys; true only for an explicit yes.
fn confirm(count: u64, more: bool) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let count = if more {
        format!("at least {count}")
    } else {
        count.to_string()
    };
    eprint!("revoke {count} keys for good? type yes to go on: ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the confirmation (use --yes)")?;
    Ok(matches!(line.trim(), "yes" | "y"))
}

/// One call to the API: the JSON answer, or the error's code and message as the error.
pub async fn call(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach keyward at {base}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    let answer: Value = response
        .json()
        .await
        .with_context(|| format!("keyward at {base} answered {status} without JSON"))?;
    if !status.is_success() {
        let code = answer
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("ERROR");
        let message = answer
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        bail!("{code}: {message}");
    }
    Ok(answer)
}

impl Remote {
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    pub fn json(&self) -> bool {
        self.json
    }
}

fn form_query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

fn path_segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("-")
}

fn key_line(key: &Value) -> String {
    format!(
        "{}  {:<8} {:<9} {:<16} owner={} expires={}",
        text(key, "id"),
        text(key, "environment"),
        text(key, "status"),
        text(key, "start"),
        text(key, "owner"),
        text(key, "expires_at"),
    )
}

fn print_summary(command: &KeysCommand, answer: &Value) {
    match command {
        KeysCommand::Create { .. } | KeysCommand::Roll { .. } => {
            println!("{}", key_line(answer));
            if let Some(previous) = answer.get("previous") {
                println!("previous key works until {}", text(previous, "expires_at"));
            }
            println!("key (shown only this once): {}", text(answer, "key"));
        }
        KeysCommand::List { .. } => {
            for key in answer
                .get("keys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("{}", key_line(key));
            }
            if let Some(next) = answer.get("next_cursor").and_then(Value::as_str) {
                println!("more: --cursor {next}");
            }
        }
        KeysCommand::Explain { .. } => {
            for line in answer
                .get("permissions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let mut out = format!("{:<32} {}", text(line, "permission"), text(line, "source"));
                if let Some(role) = line.get("role").and_then(Value::as_str) {
                    out.push_str(&format!(" {role}"));
                }
                if let Some(until) = line.get("expires_at").and_then(Value::as_str) {
                    out.push_str(&format!(" until {until}"));
                }
                if let Some(why) = line.get("removed_by_policy").and_then(Value::as_str) {
                    out.push_str(&format!("  REMOVED by policy: {why}"));
                }
                println!("{out}");
            }
        }
        KeysCommand::Versions { .. } => crate::rotation_cmd::print_versions(answer),
        KeysCommand::Show { .. } | KeysCommand::Revoke { .. } => {
            println!(
                "{}",
                serde_json::to_string_pretty(answer).unwrap_or_default()
            );
        }
    }
}
