//! Webhooks by the Standard Webhooks specification, fed by a transactional outbox.
//!
//! Every event is written to the outbox in the same commit as the change it reports, so none
//! is lost and none is invented. The dispatcher (one node: the singleton holder) fans each new
//! event out to the endpoints that want it, as one delivery row per endpoint, and sends them
//! with `webhook-id`, `webhook-timestamp` and `webhook-signature`. A failed delivery is tried
//! again with exponential backoff and jitter for up to three days; a `410 Gone` disables the
//! endpoint. One key's events reach an endpoint in order: a delivery waits while an earlier one
//! of the same key is pending. Delivery is at least once (a crash between a send and its record
//! sends it again, with the same `webhook-id`, which receivers use to drop duplicates).
//!
//! URLs must be http or https; loopback, link-local, private and other internal addresses are
//! refused unless an operator allowed them, both when an endpoint is registered and on every
//! send (names are resolved and checked each time), and redirects are never followed.

use std::sync::Arc;
use std::time::Duration;

use keyward_core::audit::AuditAction;
use keyward_core::model::ADMIN_ENVIRONMENT;
use keyward_core::{
    CidrSet, Clock, DeliveryState, EnvironmentName, EventType, KeySummary, OutboxEvent,
    SealedSigningSecret, Timestamp, WebhookDelivery, WebhookEndpoint,
};
use keyward_crypto::barrier::Context;
use keyward_crypto::webhook::{SigningSecret, signature_header};
use keyward_store::{Changes, Store};
use serde_json::{Value, json};

use crate::audit::PendingEntry;
use crate::audit_log::AuditLog;
use crate::authz::{Authz, Operation, Target};
use crate::integrity::Integrity;
use crate::vault::OpenVault;
use crate::{Actor, ServiceError};

/// How webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Internal addresses (loopback, private, link-local…) endpoints may use anyway.
    pub allowed_cidrs: CidrSet,
    /// One send may take this long.
    pub timeout: Duration,
    /// Sends in flight at once, over all endpoints.
    pub concurrency: usize,
    /// A delivery is given up after this long.
    pub retry_window: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allowed_cidrs: CidrSet::default(),
            timeout: Duration::from_secs(10),
            concurrency: 32,
            retry_window: Duration::from_secs(3 * 86_400),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidField {
        field,
        message: message.into(),
    }
}

/// An endpoint URL that may be registered: http(s), a host, no credentials, at most 2000
/// characters, and (for a literal address) not internal unless allowed.
fn check_url(text: &str, allowed: &CidrSet) -> Result<reqwest::Url, ServiceError> {
    if text.len() > 2000 {
        return Err(invalid("url", "at most 2000 characters"));
    }
    let url = reqwest::Url::parse(text).map_err(|_| invalid("url", "not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("url", "must be an http or https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "url",
            "must not carry credentials; each delivery is signed instead",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url", "must name a host"));
    }
    if crate::outbound::refused_literal(&url, allowed) {
        return Err(invalid(
            "url",
            "points at an internal address (loopback, private, link-local); an operator may allow it with webhook_allowed_cidrs",
        ));
    }
    Ok(url)
}

/// The retry schedule after the `n`th failed attempt (1-based), before jitter.
fn backoff(n: u32) -> Duration {
    const STEPS: [u64; 8] = [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000, 36_000];
    let index = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
    Duration::from_secs(*STEPS.get(index).unwrap_or(&36_000))
}

/// When to try again after the `n`th failed attempt: the schedule, jittered.
pub(crate) fn retry_after(n: u32) -> Duration {
    jittered(backoff(n))
}

/// `d` ± 20 %, from the OS's randomness (so nodes and endpoints do not retry in step).
fn jittered(d: Duration) -> Duration {
    let factor = 0.8 + 0.4 * f64::from(keyward_crypto::random_byte()) / 255.0;
    d.mul_f64(factor)
}

/// An event's unique id: `msg_` and 26 random base32 characters.
pub(crate) fn new_event_id() -> Result<String, ServiceError> {
    let id = keyward_crypto::new_request_id().map_err(ServiceError::internal)?;
    Ok(format!("msg_{id}"))
}

/// An id derived from what a notice announces, so it is written once however often found due.
pub(crate) fn notice_id(parts: &[&str]) -> String {
    let digest = keyward_crypto::sha256_hex(parts.join("\u{1f}").as_bytes());
    format!("msg_{}", digest.get(..32).unwrap_or(&digest))
}

/// An event about `key`.
pub(crate) fn key_event(
    kind: EventType,
    key: &KeySummary,
    at: Timestamp,
    id: String,
    mut data: Value,
) -> OutboxEvent {
    if let Some(fields) = data.as_object_mut() {
        fields.insert("key_id".into(), json!(key.id));
        fields.insert("start".into(), json!(key.start));
        fields.insert("environment".into(), json!(key.environment));
        fields.insert("owner".into(), json!(key.owner));
        fields.insert("name".into(), json!(key.name));
    }
    OutboxEvent {
        seq: 0,
        id,
        kind,
        ts: at,
        key_id: Some(key.id),
        environment: Some(key.environment.clone()),
        owner: Some(key.owner.clone()),
        data,
        only: None,
        mac: None,
    }
}

/// What an admin may set on an endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointSpec {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub event_types: Option<Vec<String>>,
    pub environment: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// Endpoints at most: each is served on every dispatcher run.
const MAX_ENDPOINTS: usize = 100;

/// What a dispatcher run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryRun {
    pub fanned_out: u64,
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
}

/// The webhooks service.
#[derive(Debug)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    audit: Arc<AuditLog>,
    authz: Arc<Authz>,
    vault: Arc<OpenVault>,
    integrity: Arc<Integrity>,
    catalog: Arc<crate::catalog::Catalog>,
    config: WebhookConfig,
    client: reqwest::Client,
    /// Woken when a commit wrote to the outbox.
    wake: Arc<tokio::sync::Notify>,
    totals: [std::sync::atomic::AtomicU64; 3],
    /// One dispatcher run at a time in this process (the job, and a caller that runs it).
    dispatching: tokio::sync::Mutex<()>,
}

impl Webhooks {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        audit: Arc<AuditLog>,
        authz: Arc<Authz>,
        vault: Arc<OpenVault>,
        integrity: Arc<Integrity>,
        catalog: Arc<crate::catalog::Catalog>,
        config: WebhookConfig,
    ) -> Result<Self, ServiceError> {
        let client = crate::outbound::client(&config.allowed_cidrs, config.timeout)?;
        Ok(Webhooks {
            store,
            clock,
            audit,
            authz,
            vault,
            integrity,
            catalog,
            config,
            client,
            wake: Arc::new(tokio::sync::Notify::new()),
            totals: Default::default(),
            dispatching: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn wake(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.wake)
    }

    /// Deliveries made, retried and given up on since start (metrics).
    pub fn totals(&self) -> (u64, u64, u64) {
        let load = |i: usize| {
            self.totals
                .get(i)
                .map_or(0, |t| t.load(std::sync::atomic::Ordering::Relaxed))
        };
        (load(0), load(1), load(2))
    }

    /// Pending deliveries and the age of the oldest, for metrics.
    pub async fn backlog(&self) -> Result<(u64, Option<Duration>), ServiceError> {
        let (count, oldest) = self.store.delivery_backlog().await?;
        let now = self.clock.now().unix_ms();
        Ok((
            count,
            oldest.map(|at| Duration::from_millis(u64::try_from(now - at.unix_ms()).unwrap_or(0))),
        ))
    }

    fn admin_env() -> Result<EnvironmentName, ServiceError> {
        EnvironmentName::parse(ADMIN_ENVIRONMENT).map_err(ServiceError::internal)
    }

    fn seal_secret(&self, id: &str, secret: &SigningSecret) -> Result<String, ServiceError> {
        let sealed = self.vault.keyring(&Self::admin_env()?)?.seal(
            &Context {
                table: "webhook",
                id,
                field: "secret",
            },
            secret.to_text().as_bytes(),
        )?;
        Ok(keyward_crypto::hex(&sealed))
    }

    fn open_secret(&self, id: &str, sealed: &str) -> Result<SigningSecret, ServiceError> {
        let bytes = keyward_crypto::unhex(sealed).ok_or_else(|| {
            ServiceError::Integrity(format!("webhook {id}: a sealed secret is not hex"))
        })?;
        let plain = self.vault.keyring(&Self::admin_env()?)?.open(
            &Context {
                table: "webhook",
                id,
                field: "secret",
            },
            &bytes,
        )?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| ServiceError::Integrity(format!("webhook {id}: a secret is not text")))?;
        SigningSecret::from_text(text).ok_or_else(|| {
            ServiceError::Integrity(format!("webhook {id}: a secret does not parse"))
        })
    }

    /// The endpoints as stored, each checked against its integrity tag: a tampered one is
    /// left out (and reported), never sent to.
    async fn endpoints(&self) -> Result<Vec<WebhookEndpoint>, ServiceError> {
        Ok(self
            .store
            .webhooks()
            .await?
            .into_iter()
            .filter(|w| {
                let ok = crate::integrity::webhook_intact(self.integrity.key(), w);
                if !ok {
                    self.integrity.report(format!(
                        "webhook {} (its integrity tag does not match)",
                        w.id
                    ));
                }
                ok
            })
            .collect())
    }

    async fn endpoint(&self, id: &str) -> Result<WebhookEndpoint, ServiceError> {
        self.endpoints()
            .await?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or(ServiceError::NotFound { what: "webhook" })
    }

    fn parse_types(list: &[String]) -> Result<Vec<EventType>, ServiceError> {
        let mut out = Vec::new();
        for name in list {
            let kind = EventType::parse(name).ok_or_else(|| {
                invalid(
                    "event_types",
                    format!(
                        "unknown event type; known: {}",
                        EventType::ALL.map(EventType::as_str).join(", ")
                    ),
                )
            })?;
            if kind == EventType::WebhookTest {
                return Err(invalid(
                    "event_types",
                    "webhook.test goes only to the endpoint tested",
                ));
            }
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        out.sort();
        Ok(out)
    }

    fn check_filters(
        &self,
        environment: Option<&str>,
        owner: Option<&str>,
        description: Option<&str>,
    ) -> Result<Option<EnvironmentName>, ServiceError> {
        if let Some(owner) = owner
            && (owner.trim().is_empty()
                || owner.chars().count() > 200
                || owner.chars().any(char::is_control))
        {
            return Err(invalid("owner", "1 to 200 printable characters"));
        }
        if let Some(d) = description
            && (d.chars().count() > 1000 || d.chars().any(char::is_control))
        {
            return Err(invalid("description", "at most 1000 printable characters"));
        }
        let Some(environment) = environment else {
            return Ok(None);
        };
        let name = EnvironmentName::parse(environment)
            .map_err(|_| invalid("environment", "not an environment name"))?;
        if self.catalog.environment(name.as_str()).is_none() {
            return Err(invalid("environment", "unknown environment"));
        }
        Ok(Some(name))
    }

    /// Registers an endpoint; returns it and its signing secret, shown this once.
    pub async fn create(
        &self,
        actor: &Actor,
        spec: EndpointSpec,
    ) -> Result<(WebhookEndpoint, String), ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookWrite, Target::Shared)
            .await?;
        self.may_receive(actor).await?;
        let url = spec
            .url
            .as_deref()
            .ok_or_else(|| invalid("url", "required"))?;
        if self.store.webhooks().await?.len() >= MAX_ENDPOINTS {
            return Err(ServiceError::Conflict(format!(
                "at most {MAX_ENDPOINTS} webhook endpoints; remove one first"
            )));
        }
        let url = check_url(url, &self.config.allowed_cidrs)?;
        let event_types = Self::parse_types(spec.event_types.as_deref().unwrap_or_default())?;
        let description = spec.description.flatten();
        let owner = spec.owner.flatten();
        let environment = self.check_filters(
            spec.environment.flatten().as_deref(),
            owner.as_deref(),
            description.as_deref(),
        )?;
        let id = format!(
            "wh_{}",
            keyward_crypto::new_request_id().map_err(ServiceError::internal)?
        );
        let secret = SigningSecret::generate().map_err(ServiceError::internal)?;
        let now = self.clock.now();
        let mut head = self.audit.lock().await;
        let endpoint = WebhookEndpoint {
            id: id.clone(),
            url: url.to_string(),
            description,
            event_types,
            environment,
            owner,
            secrets: vec![SealedSigningSecret {
                sealed: self.seal_secret(&id, &secret)?,
                created_at: now,
                expires_at: None,
            }],
            enabled: spec.enabled.unwrap_or(true),
            disabled_reason: None,
            // From now on: an endpoint does not receive what happened before it existed.
            cursor: self.store.outbox_head().await?,
            created_at: now,
            updated_at: now,
            mac: None,
        };
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::WebhookCreate,
            target: Some(id.clone()),
            details: describe(&endpoint),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    upsert_webhooks: vec![endpoint.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok((endpoint, secret.to_text().to_string()))
    }

    /// An endpoint receives what happens to every key (names, owners, reasons): whoever points
    /// one somewhere must be able to read keys and events themselves.
    async fn may_receive(&self, actor: &Actor) -> Result<(), ServiceError> {
        for permission in [
            keyward_core::permission::admin::KEYS_READ,
            keyward_core::permission::admin::EVENTS_READ,
        ] {
            if !actor.holds(permission) {
                return Err(self
                    .authz
                    .refuse(
                        actor,
                        Operation::WebhookWrite,
                        None,
                        crate::Refusal::Missing {
                            permission: permission.to_owned(),
                        },
                    )
                    .await);
            }
        }
        Ok(())
    }

    pub async fn list(&self, actor: &Actor) -> Result<Vec<WebhookEndpoint>, ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookRead, Target::Shared)
            .await?;
        self.endpoints().await
    }

    pub async fn show(&self, actor: &Actor, id: &str) -> Result<WebhookEndpoint, ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookRead, Target::Shared)
            .await?;
        self.endpoint(id).await
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: &str,
        spec: EndpointSpec,
    ) -> Result<WebhookEndpoint, ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookWrite, Target::Shared)
            .await?;
        self.may_receive(actor).await?;
        let url = spec
            .url
            .as_deref()
            .map(|u| check_url(u, &self.config.allowed_cidrs))
            .transpose()?;
        let event_types = spec
            .event_types
            .as_deref()
            .map(Self::parse_types)
            .transpose()?;
        let environment = match &spec.environment {
            Some(env) => Some(self.check_filters(env.as_deref(), None, None)?),
            None => None,
        };
        self.check_filters(
            None,
            spec.owner.clone().flatten().as_deref(),
            spec.description.clone().flatten().as_deref(),
        )?;
        let mut head = self.audit.lock().await;
        let mut endpoint = self.endpoint(id).await?;
        if let Some(url) = url {
            endpoint.url = url.to_string();
        }
        if let Some(types) = event_types {
            endpoint.event_types = types;
        }
        if let Some(env) = environment {
            endpoint.environment = env;
        }
        if let Some(owner) = spec.owner {
            endpoint.owner = owner;
        }
        if let Some(description) = spec.description {
            endpoint.description = description;
        }
        if let Some(enabled) = spec.enabled {
            endpoint.enabled = enabled;
            if enabled {
                endpoint.disabled_reason = None;
            }
        }
        endpoint.updated_at = self.clock.now();
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::WebhookUpdate,
            target: Some(id.to_owned()),
            details: describe(&endpoint),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    upsert_webhooks: vec![endpoint.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok(endpoint)
    }

    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<(), ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookWrite, Target::Shared)
            .await?;
        let mut head = self.audit.lock().await;
        let endpoint = self.endpoint(id).await?;
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::WebhookDelete,
            target: Some(endpoint.id.clone()),
            details: json!({ "url_origin": origin(&endpoint.url) }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    delete_webhooks: vec![endpoint.id],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await
    }

    /// A new signing secret, shown this once; the old one keeps signing too for `overlap_s`.
    pub async fn rotate_secret(
        &self,
        actor: &Actor,
        id: &str,
        overlap_s: u64,
    ) -> Result<(WebhookEndpoint, String), ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookWrite, Target::Shared)
            .await?;
        self.may_receive(actor).await?;
        if overlap_s > 7 * 86_400 {
            return Err(invalid("overlap_s", "at most 604800 (7 days)"));
        }
        let secret = SigningSecret::generate().map_err(ServiceError::internal)?;
        let mut head = self.audit.lock().await;
        let mut endpoint = self.endpoint(id).await?;
        let now = self.clock.now();
        // Only the newest of the old secrets overlaps; older ones end now.
        for (i, old) in endpoint.secrets.iter_mut().enumerate() {
            let end = if i == 0 {
                now.plus_seconds(overlap_s)
            } else {
                now
            };
            old.expires_at = Some(old.expires_at.map_or(end, |at| at.min(end)));
        }
        endpoint
            .secrets
            .retain(|s| s.expires_at.is_none_or(|at| at > now));
        endpoint.secrets.insert(
            0,
            SealedSigningSecret {
                sealed: self.seal_secret(&endpoint.id, &secret)?,
                created_at: now,
                expires_at: None,
            },
        );
        endpoint.updated_at = now;
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::WebhookSecretRotate,
            target: Some(endpoint.id.clone()),
            details: json!({ "overlap_s": overlap_s }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    upsert_webhooks: vec![endpoint.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        Ok((endpoint, secret.to_text().to_string()))
    }

    /// An endpoint's deliveries, newest first.
    pub async fn deliveries(
        &self,
        actor: &Actor,
        id: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookRead, Target::Shared)
            .await?;
        let endpoint = self.endpoint(id).await?;
        Ok(self
            .store
            .deliveries(endpoint.id, before, limit.clamp(1, 1000))
            .await?)
    }

    /// Sends one delivery again, at once (its `webhook-id` stays the same).
    pub async fn redeliver(
        &self,
        actor: &Actor,
        id: &str,
        seq: u64,
    ) -> Result<WebhookDelivery, ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookWrite, Target::Shared)
            .await?;
        self.may_receive(actor).await?;
        let mut head = self.audit.lock().await;
        let endpoint = self.endpoint(id).await?;
        let mut delivery = self
            .store
            .delivery(endpoint.id.clone(), seq)
            .await?
            .ok_or(ServiceError::NotFound { what: "delivery" })?;
        let now = self.clock.now();
        delivery.state = DeliveryState::Pending;
        delivery.next_attempt_at = now;
        // A new window of retries from now.
        delivery.created_at = now;
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::WebhookRedeliver,
            target: Some(endpoint.id.clone()),
            details: json!({ "seq": seq, "event_id": delivery.event_id }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    upsert_deliveries: vec![delivery.clone()],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        self.wake.notify_one();
        Ok(delivery)
    }

    /// Queues a `webhook.test` event for this endpoint alone; returns its id.
    pub async fn test(&self, actor: &Actor, id: &str) -> Result<String, ServiceError> {
        self.authz
            .permit(actor, Operation::WebhookWrite, Target::Shared)
            .await?;
        self.may_receive(actor).await?;
        let mut head = self.audit.lock().await;
        let endpoint = self.endpoint(id).await?;
        let event_id = new_event_id()?;
        let event = OutboxEvent {
            seq: 0,
            id: event_id.clone(),
            kind: EventType::WebhookTest,
            ts: self.clock.now(),
            key_id: None,
            environment: None,
            owner: None,
            data: json!({ "endpoint": endpoint.id }),
            only: Some(endpoint.id.clone()),
            mac: None,
        };
        let entry = PendingEntry {
            actor: actor.audit_name(),
            action: AuditAction::WebhookTest,
            target: Some(endpoint.id),
            details: json!({ "event_id": event_id }),
        };
        self.audit
            .commit(
                &mut head,
                Changes {
                    outbox: vec![event],
                    ..Changes::default()
                },
                vec![entry],
            )
            .await?;
        self.wake.notify_one();
        Ok(event_id)
    }

    // ---- the dispatcher --------------------------------------------------------------------

    /// Fans new events out to the endpoints and sends what is due, until nothing is.
    pub async fn run_deliveries(&self) -> Result<DeliveryRun, ServiceError> {
        let _one = self.dispatching.lock().await;
        let mut run = DeliveryRun::default();
        loop {
            let before = run;
            let endpoints: Vec<WebhookEndpoint> = self
                .endpoints()
                .await?
                .into_iter()
                .filter(|e| e.enabled)
                .collect();
            for endpoint in &endpoints {
                run.fanned_out += self.fan_out(endpoint.clone()).await?;
            }
            // Endpoints at once: a slow or dead one holds back only itself.
            let sent =
                futures_util::future::join_all(endpoints.iter().map(|e| self.deliver(e))).await;
            for sent in sent {
                let sent = sent?;
                run.delivered += sent.delivered;
                run.retried += sent.retried;
                run.failed += sent.failed;
            }
            if run == before {
                return Ok(run);
            }
        }
    }

    /// Writes a delivery for each new event the endpoint wants, and moves its cursor.
    async fn fan_out(&self, endpoint: WebhookEndpoint) -> Result<u64, ServiceError> {
        let mut made = 0;
        let mut cursor = endpoint.cursor;
        loop {
            let events = self.store.outbox_after(cursor, 1000).await?;
            let Some(last) = events.last() else {
                return Ok(made);
            };
            let last = last.seq;
            let now = self.clock.now();
            let deliveries: Vec<WebhookDelivery> = events
                .iter()
                .filter(|e| endpoint.wants(e))
                .map(|e| WebhookDelivery {
                    endpoint: endpoint.id.clone(),
                    seq: e.seq,
                    event_id: e.id.clone(),
                    kind: e.kind,
                    key_id: e.key_id,
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    last_status: None,
                    last_error: None,
                    delivered_at: None,
                    created_at: now,
                })
                .collect();
            made += deliveries.len() as u64;
            let mut head = self.audit.lock().await;
            // Read again under the writer: an admin may have changed it meanwhile.
            let Ok(mut current) = self.endpoint(&endpoint.id).await else {
                return Ok(made);
            };
            if current.cursor != cursor {
                return Ok(made);
            }
            current.cursor = last;
            self.audit
                .commit(
                    &mut head,
                    Changes {
                        upsert_webhooks: vec![current],
                        upsert_deliveries: deliveries,
                        ..Changes::default()
                    },
                    Vec::new(),
                )
                .await?;
            cursor = last;
        }
    }

    /// Sends the endpoint's due deliveries, at most one per key at a time and in order per key.
    async fn deliver(&self, endpoint: &WebhookEndpoint) -> Result<DeliveryRun, ServiceError> {
        let mut run = DeliveryRun::default();
        let now = self.clock.now();
        let pending = self
            .store
            .pending_deliveries(endpoint.id.clone(), 128)
            .await?;
        let mut blocked = std::collections::HashSet::new();
        let mut due = Vec::new();
        for delivery in pending {
            let waits = delivery.next_attempt_at > now;
            if let Some(key) = delivery.key_id {
                // An earlier event of this key is still pending: this one waits behind it.
                if !blocked.insert(key) {
                    continue;
                }
            }
            if !waits {
                due.push(delivery);
            }
        }
        if due.is_empty() {
            return Ok(run);
        }
        let secrets: Vec<SigningSecret> = endpoint
            .secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .map(|s| self.open_secret(&endpoint.id, &s.sealed))
            .collect::<Result<_, _>>()?;
        let url = endpoint.url.clone();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        let mut sends = tokio::task::JoinSet::new();
        for delivery in due {
            let Some(event) = self.store.outbox_event(delivery.seq).await? else {
                continue;
            };
            // Only what keyward wrote, to the endpoint it was meant for: an event edited or
            // added in the store, or a delivery pointed at another event, is never signed.
            if !crate::integrity::outbox_intact(self.integrity.key(), &event)
                || event.id != delivery.event_id
                || !endpoint.wants(&event)
            {
                self.integrity.report(format!(
                    "outbox event {} for webhook {} (edited, or not this endpoint's)",
                    delivery.seq, endpoint.id
                ));
                let mut refused = delivery.clone();
                refused.state = DeliveryState::Failed;
                refused.last_error = Some("the event failed its integrity check".into());
                self.audit
                    .write(
                        Changes {
                            upsert_deliveries: vec![refused],
                            ..Changes::default()
                        },
                        Vec::new(),
                    )
                    .await?;
                continue;
            }
            let body = serde_json::to_vec(&json!({
                "type": event.kind.as_str(),
                "timestamp": event.ts,
                "data": event.data,
            }))
            .map_err(ServiceError::internal)?;
            let timestamp = self.clock.now().unix_ms() / 1000;
            let signature = signature_header(&secrets, &event.id, timestamp, &body);
            let request = self
                .client
                .post(url.clone())
                .header("content-type", "application/json")
                .header("webhook-id", event.id.clone())
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body);
            let permit = Arc::clone(&semaphore);
            let allowed = self.config.allowed_cidrs.clone();
            let refused = reqwest::Url::parse(&url)
                .map_or(true, |u| crate::outbound::refused_literal(&u, &allowed));
            sends.spawn(async move {
                let _permit = permit.acquire_owned().await;
                if refused {
                    return (
                        delivery,
                        Err("the endpoint's address is internal".to_owned()),
                    );
                }
                let outcome = match request.send().await {
                    Ok(response) => Ok(response.status().as_u16()),
                    Err(e) => Err(describe_send_error(&e)),
                };
                (delivery, outcome)
            });
        }
        let mut updated = Vec::new();
        let mut gone = false;
        let now = self.clock.now();
        let window_ms = i64::try_from(self.config.retry_window.as_millis()).unwrap_or(i64::MAX);
        while let Some(joined) = sends.join_next().await {
            let Ok((mut delivery, outcome)) = joined else {
                continue;
            };
            delivery.attempts = delivery.attempts.saturating_add(1);
            match outcome {
                Ok(status) if (200..300).contains(&status) => {
                    delivery.state = DeliveryState::Delivered;
                    delivery.last_status = Some(status);
                    delivery.last_error = None;
                    delivery.delivered_at = Some(now);
                    run.delivered += 1;
                }
                Ok(410) => {
                    delivery.state = DeliveryState::Failed;
                    delivery.last_status = Some(410);
                    gone = true;
                    run.failed += 1;
                }
                other => {
                    match other {
                        Ok(status) => {
                            delivery.last_status = Some(status);
                            delivery.last_error = None;
                        }
                        Err(e) => {
                            delivery.last_status = None;
                            delivery.last_error = Some(e);
                        }
                    }
                    if now.unix_ms() - delivery.created_at.unix_ms() >= window_ms {
                        delivery.state = DeliveryState::Failed;
                        run.failed += 1;
                    } else {
                        let wait = jittered(backoff(delivery.attempts));
                        delivery.next_attempt_at = Timestamp::from_unix_ms(
                            now.unix_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
                        );
                        run.retried += 1;
                    }
                }
            }
            updated.push(delivery);
        }
        updated.sort_by_key(|d| d.seq);
        let mut head = self.audit.lock().await;
        let mut changes = Changes {
            upsert_deliveries: updated,
            ..Changes::default()
        };
        let mut entries = Vec::new();
        if gone && let Ok(mut current) = self.endpoint(&endpoint.id).await {
            current.enabled = false;
            current.disabled_reason = Some("the endpoint answered 410 Gone".into());
            current.updated_at = now;
            entries.push(PendingEntry {
                actor: "system".into(),
                action: AuditAction::WebhookUpdate,
                target: Some(current.id.clone()),
                details: json!({ "enabled": false, "reason": "410 Gone" }),
            });
            tracing::warn!(webhook = %current.id, "a webhook endpoint answered 410 Gone; it is disabled");
            changes.upsert_webhooks.push(current);
        }
        self.audit.commit(&mut head, changes, entries).await?;
        for (i, n) in [run.delivered, run.retried, run.failed]
            .into_iter()
            .enumerate()
        {
            if let Some(total) = self.totals.get(i) {
                total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(run)
    }
}

/// Scheme, host and port of a URL: what the audit log and the log name (the path and query of
/// a webhook URL may be a credential of the receiver's).
fn origin(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| "-".into(), |u| u.origin().ascii_serialization())
}

/// Why a send failed, in words that carry no secret (the URL's query may hold one).
fn describe_send_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_redirect() {
        "redirected (redirects are not followed)".into()
    } else if e.is_request() {
        "the request failed".into()
    } else {
        "no answer".into()
    }
}

/// An endpoint for the audit log: where it sends and what, never its secrets.
fn describe(w: &WebhookEndpoint) -> Value {
    json!({
        "url_origin": origin(&w.url),
        "event_types": w.event_types,
        "environment": w.environment,
        "owner": w.owner,
        "enabled": w.enabled,
    })
}
