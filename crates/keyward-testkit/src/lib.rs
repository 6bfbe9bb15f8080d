//! Test fixtures for keyward: [`spawn_app`] starts the real HTTP server on `127.0.0.1:0` over a
//! SQLite store in a temp dir, with a [`FakeClock`] the test moves by hand. The store is wrapped
//! in a [`CountingStore`] so tests can prove which requests reached it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod services;

use keyward_store::prelude::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keyward_core::audit::AuditEntry;
use keyward_core::model::ADMIN_ENVIRONMENT;
use keyward_core::{
    EnvironmentName, FakeClock, KeyHash, KeyId, KeyRecord, RoleName, RoleRecord, Timestamp,
};
use keyward_crypto::barrier::UnsealKey;
use keyward_server::ServerConfig;
use keyward_service::{Authority, AuthorityConfig, Node, initialize};
use keyward_store::{
    AuditHead, Changes, EnvironmentRecord, KeyQuery, KeyUsage, RewrapProgress, Rewrapped,
    SealedValue, SecretMeta, SecretVersion, Store, StoreError, StoredKeyring, VaultLease,
    VaultRecord,
};
use keyward_store_sqlite::SqliteStore;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The instant every test clock starts at.
pub const START: &str = "2026-11-28T10:00:00Z";

/// A store that counts key lookups, to show which paths never touch the store.
#[derive(Debug)]
pub struct CountingStore {
    inner: SqliteStore,
    lookups: AtomicU64,
    /// While set, every write fails as an unreachable store's would.
    failing_writes: std::sync::atomic::AtomicBool,
}

impl CountingStore {
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    /// Makes every later write fail (`true`) or succeed again (`false`).
    pub fn fail_writes(&self, failing: bool) {
        self.failing_writes.store(failing, Ordering::SeqCst);
    }

    /// The vault's stored record.
    pub async fn inner_vault(&self) -> VaultRecord {
        self.inner.vault().await.unwrap().unwrap()
    }

    /// Values still sealed under a term older than `term`.
    pub async fn count_stale(&self, term: u32) -> u64 {
        self.inner.count_stale_sealed(term).await.unwrap()
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn apply(&self, changes: Changes) -> Result<(), StoreError> {
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("writes are failing (test)".into()));
        }
        self.inner.apply(changes).await
    }
    fn subscribe(&self, listener: std::sync::Weak<dyn keyward_store::ChangeListener>) {
        self.inner.subscribe(listener);
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    fn leads(&self) -> bool {
        self.inner.leads()
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync().await
    }
}

#[async_trait]
impl keyward_store::KeyStore for CountingStore {
    async fn count_keys_with_plan(&self, plan: keyward_core::PlanName) -> Result<u64, StoreError> {
        self.inner.count_keys_with_plan(plan).await
    }
    async fn count_keys_with_role(&self, role: RoleName) -> Result<u64, StoreError> {
        self.inner.count_keys_with_role(role).await
    }
    async fn keys_with_lapsed_grants(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.keys_with_lapsed_grants(now, limit).await
    }
    async fn key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.key(id).await
    }
    async fn key_by_hash(&self, hash: KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.key_by_hash(hash).await
    }
    async fn list_keys(&self, query: KeyQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_keys(query).await
    }
    async fn key_hashes(&self) -> Result<Vec<KeyHash>, StoreError> {
        self.inner.key_hashes().await
    }
    async fn rotation_candidates(
        &self,
        after: Option<KeyId>,
        limit: u32,
    ) -> Result<Vec<keyward_core::KeySummary>, StoreError> {
        self.inner.rotation_candidates(after, limit).await
    }
    async fn handover(
        &self,
        predecessor: KeyId,
    ) -> Result<Option<keyward_store::Handover>, StoreError> {
        self.inner.handover(predecessor).await
    }
    async fn lapsed_handovers(&self, now: Timestamp, limit: u32) -> Result<Vec<KeyId>, StoreError> {
        self.inner.lapsed_handovers(now, limit).await
    }
    async fn due_handovers(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<keyward_store::Handover>, StoreError> {
        self.inner.due_handovers(now, limit).await
    }
}

#[async_trait]
impl keyward_store::OutboxStore for CountingStore {
    async fn outbox_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<keyward_core::OutboxEvent>, StoreError> {
        self.inner.outbox_after(after, limit).await
    }
    async fn outbox_event(
        &self,
        seq: u64,
    ) -> Result<Option<keyward_core::OutboxEvent>, StoreError> {
        self.inner.outbox_event(seq).await
    }
    async fn outbox_head(&self) -> Result<u64, StoreError> {
        self.inner.outbox_head().await
    }
    async fn outbox_has(&self, ids: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.inner.outbox_has(ids).await
    }
    async fn webhooks(&self) -> Result<Vec<keyward_core::WebhookEndpoint>, StoreError> {
        self.inner.webhooks().await
    }
    async fn pending_deliveries(
        &self,
        endpoint: String,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError> {
        self.inner.pending_deliveries(endpoint, limit).await
    }
    async fn deliveries(
        &self,
        endpoint: String,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<keyward_core::WebhookDelivery>, StoreError> {
        self.inner.deliveries(endpoint, before, limit).await
    }
    async fn delivery(
        &self,
        endpoint: String,
        seq: u64,
    ) -> Result<Option<keyward_core::WebhookDelivery>, StoreError> {
        self.inner.delivery(endpoint, seq).await
    }
    async fn delivery_backlog(&self) -> Result<(u64, Option<Timestamp>), StoreError> {
        self.inner.delivery_backlog().await
    }
}

#[async_trait]
impl keyward_store::CatalogStore for CountingStore {
    async fn environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        self.inner.environments().await
    }
    async fn roles(&self) -> Result<Vec<RoleRecord>, StoreError> {
        self.inner.roles().await
    }
    async fn plans(&self) -> Result<Vec<keyward_core::PlanRecord>, StoreError> {
        self.inner.plans().await
    }
    async fn environment_secrets(&self) -> Result<Vec<(EnvironmentName, Vec<u8>)>, StoreError> {
        self.inner.environment_secrets().await
    }
}

#[async_trait]
impl keyward_store::UsageStore for CountingStore {
    async fn quota_state(&self, id: KeyId) -> Result<Option<keyward_core::QuotaState>, StoreError> {
        self.inner.quota_state(id).await
    }
    async fn spend_quotas(
        &self,
        spends: Vec<keyward_store::QuotaSpend>,
    ) -> Result<Vec<(KeyId, keyward_core::QuotaState)>, StoreError> {
        self.inner.spend_quotas(spends).await
    }
    async fn record_usage(&self, usage: Vec<KeyUsage>) -> Result<(), StoreError> {
        self.inner.record_usage(usage).await
    }
    async fn append_events(&self, events: Vec<keyward_core::Event>) -> Result<(), StoreError> {
        self.inner.append_events(events).await
    }
    async fn events(&self, after: u64, limit: u32) -> Result<Vec<keyward_core::Event>, StoreError> {
        self.inner.events(after, limit).await
    }
}

#[async_trait]
impl keyward_store::AuditStore for CountingStore {
    async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        self.inner.audit_head().await
    }
    async fn audit_checkpoint(&self) -> Result<Option<keyward_store::AuditCheckpoint>, StoreError> {
        self.inner.audit_checkpoint().await
    }
    async fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit_entries(after, limit).await
    }
}

#[async_trait]
impl keyward_store::VaultStore for CountingStore {
    async fn vault(&self) -> Result<Option<VaultRecord>, StoreError> {
        self.inner.vault().await
    }
    async fn keyrings(&self) -> Result<Vec<StoredKeyring>, StoreError> {
        self.inner.keyrings().await
    }
    async fn secret(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Option<SecretMeta>, StoreError> {
        self.inner.secret(env, path).await
    }
    async fn secret_versions(
        &self,
        env: EnvironmentName,
        path: String,
    ) -> Result<Vec<SecretVersion>, StoreError> {
        self.inner.secret_versions(env, path).await
    }
    async fn secret_version(
        &self,
        env: EnvironmentName,
        path: String,
        version: u64,
    ) -> Result<Option<SecretVersion>, StoreError> {
        self.inner.secret_version(env, path, version).await
    }
    async fn list_secrets(
        &self,
        env: EnvironmentName,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        self.inner.list_secrets(env, prefix, after, limit).await
    }
    async fn lease(&self, id: String) -> Result<Option<VaultLease>, StoreError> {
        self.inner.lease(id).await
    }
    async fn leases(
        &self,
        prefix: String,
        open_only: bool,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError> {
        self.inner.leases(prefix, open_only, after, limit).await
    }
    async fn lapsed_leases(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<VaultLease>, StoreError> {
        self.inner.lapsed_leases(now, limit).await
    }
    async fn stale_sealed(&self, term: u32, limit: u32) -> Result<Vec<SealedValue>, StoreError> {
        self.inner.stale_sealed(term, limit).await
    }
    async fn count_stale_sealed(&self, term: u32) -> Result<u64, StoreError> {
        self.inner.count_stale_sealed(term).await
    }
    async fn rewrap(
        &self,
        values: Vec<Rewrapped>,
        progress: RewrapProgress,
    ) -> Result<u64, StoreError> {
        self.inner.rewrap(values, progress).await
    }
}

#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub root_key: String,
    pub clock: FakeClock,
    pub client: reqwest::Client,
    pub store: Arc<CountingStore>,
    /// The node serving: sealed or not.
    pub node: Arc<Node>,
    /// The authority of the last unseal.
    pub authority: Arc<Authority>,
    /// The vault's unseal key and its 5 shares (threshold 3), as `keyward init` printed them.
    pub unseal_key: String,
    pub shares: Vec<String>,
    config: ServerConfig,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts a server with the default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(ServerConfig::default()).await
}

pub async fn spawn_app_with(config: ServerConfig) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(Timestamp::parse_rfc3339(START).unwrap());
    let store = SqliteStore::open(&dir.path().join("keyward.db")).unwrap();
    let init = initialize(&store, &clock, 5, 3).await.unwrap();
    drop(store);
    let unseal_key = init.vault.unseal_key.to_text().to_string();
    let shares = init
        .vault
        .shares
        .iter()
        .map(|s| s.to_text().to_string())
        .collect();
    let running = Running::start(&dir, &clock, &unseal_key, &config).await;
    TestApp {
        addr: running.addr,
        root_key: init.root_key.expose().to_owned(),
        clock,
        client: reqwest::Client::new(),
        store: running.store,
        node: running.node,
        authority: running.authority,
        unseal_key,
        shares,
        config,
        dir,
        stop: Some(running.stop),
        server: Some(running.server),
    }
}

/// One start of the server over a data dir.
struct Running {
    addr: SocketAddr,
    store: Arc<CountingStore>,
    node: Arc<Node>,
    authority: Arc<Authority>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(
        dir: &tempfile::TempDir,
        clock: &FakeClock,
        unseal_key: &str,
        config: &ServerConfig,
    ) -> Running {
        let store = SqliteStore::open(&dir.path().join("keyward.db")).unwrap();
        let store = Arc::new(CountingStore {
            inner: store,
            lookups: AtomicU64::new(0),
            failing_writes: std::sync::atomic::AtomicBool::new(false),
        });
        let node = Node::open(
            store.clone(),
            Arc::new(clock.clone()),
            AuthorityConfig {
                usage_flush_interval: Duration::from_millis(50),
                // Webhook receivers of the tests listen on 127.0.0.1 (only).
                webhooks: keyward_service::WebhookConfig {
                    allowed_cidrs: keyward_core::CidrSet::parse(&["127.0.0.1/32"]).unwrap(),
                    timeout: Duration::from_secs(2),
                    ..keyward_service::WebhookConfig::default()
                },
                ..AuthorityConfig::default()
            },
        )
        .await
        .unwrap();
        node.unseal_with_key(&UnsealKey::from_text(unseal_key).unwrap(), "key")
            .await
            .unwrap();
        let authority = node.session().unwrap().authority().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(keyward_server::run(
            listener,
            node.clone(),
            config.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            addr,
            store,
            node,
            authority,
            stop,
            server,
        }
    }
}

impl TestApp {
    /// Starts the server again over the same data dir after [`TestApp::shutdown`] (to edit the
    /// store offline in between).
    pub async fn start(&mut self) {
        let running = Running::start(&self.dir, &self.clock, &self.unseal_key, &self.config).await;
        self.addr = running.addr;
        self.store = running.store;
        self.node = running.node;
        self.authority = running.authority;
        self.stop = Some(running.stop);
        self.server = Some(running.server);
    }

    /// Shuts the server down gracefully (draining, flushing usage) and starts it again on the
    /// same data dir, as a process restart would.
    pub async fn restart(&mut self) {
        self.shutdown().await;
        self.start().await;
    }

    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request with the root key and returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(&self.root_key.clone(), method, path, body)
            .await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Creates a key in `environment` and returns the response body (with `key` and `id`).
    pub async fn create_key(&self, environment: &str, extra: Value) -> Value {
        let mut body =
            json!({"environment": environment, "name": "test key", "owner": "team-test"});
        if let (Some(obj), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        let (status, created) = self
            .call(reqwest::Method::POST, "/v1/keys", Some(body))
            .await;
        assert_eq!(status, 201, "create failed: {created}");
        created
    }

    /// Verifies `key` and returns the verdict's `code`.
    pub async fn verify_code(&self, key: &str) -> String {
        let (status, verdict) = self
            .call(
                reqwest::Method::POST,
                "/v1/verify",
                Some(json!({"key": key})),
            )
            .await;
        assert_eq!(status, 200, "{verdict}");
        verdict["code"].as_str().unwrap().to_owned()
    }

    pub async fn audit(&self) -> Vec<Value> {
        let (status, page) = self
            .call(reqwest::Method::GET, "/v1/audit?limit=1000", None)
            .await;
        assert_eq!(status, 200, "{page}");
        page["entries"].as_array().unwrap().clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The environment name admin keys live in.
pub fn admin_environment() -> EnvironmentName {
    EnvironmentName::parse(ADMIN_ENVIRONMENT).unwrap()
}

/// A webhook receiver on loopback: records every request (headers and body) and answers with
/// the status set (200 unless told otherwise; 0 closes the connection unanswered, as a dead
/// receiver would).
#[derive(Debug, Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<std::sync::Mutex<Vec<Received>>>,
    status: Arc<std::sync::atomic::AtomicU16>,
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names in lower case.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (r, s) = (Arc::clone(&received), Arc::clone(&status));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, s) = (Arc::clone(&r), Arc::clone(&s));
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = std::collections::HashMap::new();
                        loop {
                            let mut header = String::new();
                            if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let header = header.trim_end();
                            if header.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':') {
                                headers.insert(
                                    name.trim().to_ascii_lowercase(),
                                    value.trim().to_owned(),
                                );
                            }
                        }
                        let length: usize = headers
                            .get("content-length")
                            .and_then(|l| l.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; length];
                        if stream.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let code = s.load(std::sync::atomic::Ordering::SeqCst);
                        if code == 0 {
                            return;
                        }
                        r.lock().unwrap().push(Received { headers, body });
                        let answer = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
                        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver {
            url,
            received,
            status,
        }
    }

    /// Answers `code` from now on (0: drops connections unanswered).
    pub fn answer(&self, code: u16) {
        self.status.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    /// What was received (and answered with a 2xx or otherwise) so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A Python virtual environment under the target directory with `packages` installed (pip,
/// from PyPI), made once and reused; its interpreter.
pub fn python_with(packages: &[&str]) -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let name = packages.join("_").replace(['=', '<', '>', '.'], "-");
    let venv = target.join(format!("test-venv-{name}"));
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    let lock_path = target.join(format!("test-venv-{name}.lock"));
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv failed");
        let installed = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages)
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {packages:?} failed");
        std::fs::write(&ready, b"").unwrap();
    }
    drop(lock);
    python
}
