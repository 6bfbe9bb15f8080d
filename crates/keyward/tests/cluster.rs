//! Several `keyward serve` processes sharing one real PostgreSQL: what one node changes, the
//! others honour at once; a seal on one seals all; a node with another vault's key refuses to
//! serve; a restart of PostgreSQL is ridden out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::zombie_processes
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward_testkit::services::Postgres;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// A PostgreSQL initialised for keyward: its URL, root key and the one unseal share.
struct Cluster {
    pg: Postgres,
    root: String,
    share: String,
}

impl Cluster {
    fn start() -> Cluster {
        let pg = Postgres::start().expect("PostgreSQL starts (apt-get install postgresql)");
        let out = Command::new(BIN)
            .args([
                "init",
                "--key-shares",
                "1",
                "--key-threshold",
                "1",
                "--json",
            ])
            .args(["--store", &pg.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            !out.stdout.windows(8).any(|w| w == b"keyward@"),
            "no URL user echoed"
        );
        Cluster {
            root: init["root_key"].as_str().unwrap().to_owned(),
            share: init["unseal_shares"][0].as_str().unwrap().to_owned(),
            pg,
        }
    }

    /// A node, unsealed.
    fn node(&self) -> Node {
        self.node_with(&[])
    }

    /// A node started with `env`, unsealed.
    fn node_with(&self, env: &[(&str, &str)]) -> Node {
        let node = Node::start(&self.pg.url(), env).expect("the node starts");
        let (status, body) = node.post("/v1/sys/unseal", "", json!({"share": self.share}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sealed"], false);
        node
    }
}

struct Node {
    child: Child,
    url: String,
}

impl Node {
    /// Starts `keyward serve --store URL`; `Err` holds stderr if it exited instead.
    fn start(store: &str, env: &[(&str, &str)]) -> Result<Node, String> {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .env_remove("KEYWARD_UNSEAL_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("keyward listening on ") {
                        std::thread::spawn(move || for _ in lines {});
                        let mut stderr = child.stderr.take().unwrap();
                        std::thread::spawn(move || {
                            std::io::copy(&mut stderr, &mut std::io::sink()).ok()
                        });
                        assert!(
                            std::fs::read_dir(data.path()).unwrap().next().is_none(),
                            "a node on PostgreSQL writes nothing to the data dir"
                        );
                        return Ok(Node {
                            child,
                            url: addr.to_owned(),
                        });
                    }
                }
                _ => {
                    let out = child.wait_with_output().unwrap();
                    return Err(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
        }
    }

    fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let resp = Self::client()
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = Self::client()
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
    }

    fn verify(&self, root: &str, key: &str) -> String {
        let (_, body) = self.post("/v1/verify", root, json!({"key": key}));
        body["code"].as_str().unwrap_or("").to_owned()
    }

    /// How long until `verify` answers `code` for `key` (panics after 5 s).
    fn until_code(&self, root: &str, key: &str, code: &str) -> Duration {
        let since = Instant::now();
        loop {
            if self.verify(root, key) == code {
                return since.elapsed();
            }
            assert!(since.elapsed() < Duration::from_secs(5), "never {code}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create_key(node: &Node, root: &str) -> (String, String) {
    let (status, created) = node.post(
        "/v1/keys",
        root,
        json!({"environment": "live", "name": "n", "owner": "o"}),
    );
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn what_one_node_creates_revokes_or_seals_every_node_honours() {
    let cluster = Cluster::start();
    let nodes = [cluster.node(), cluster.node(), cluster.node()];
    let root = &cluster.root;
    let (id, key) = create_key(&nodes[0], root);
    for node in &nodes[1..] {
        let took = node.until_code(root, &key, "VALID");
        assert!(
            took < Duration::from_secs(1),
            "a new key verified after {took:?}"
        );
    }
    let (status, body) = nodes[0].post(
        &format!("/v1/keys/{id}/revoke"),
        root,
        json!({"reason": "test"}),
    );
    assert_eq!(status, 200, "{body}");
    // Right after the revoke returned on A, B and C refuse it within a second.
    for node in &nodes[1..] {
        let took = node.until_code(root, &key, "REVOKED");
        assert!(
            took < Duration::from_secs(1),
            "revoke honoured after {took:?}"
        );
    }

    // A keyring rotation on one node is picked up by the others: a secret written on B under
    // the new term reads back on C.
    let (status, rotated) = nodes[0].post("/v1/sys/rotate", root, json!({}));
    assert_eq!(status, 200, "{rotated}");
    let term = rotated["term"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while nodes[1].get("/v1/sys/keyring", root).1["term"].as_u64() != Some(term) {
        assert!(Instant::now() < deadline, "node B never learnt term {term}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let resp = Node::client()
        .put(format!("{}/v1/secrets/live/db/password", nodes[1].url))
        .bearer_auth(root)
        .json(&json!({"data": {"value": "s3cret"}}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text());
    let (status, read) = nodes[2].get("/v1/secrets/live/db/password", root);
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"]["value"], "s3cret");

    // A seal on C seals every node.
    let (status, body) = nodes[2].post("/v1/sys/seal", root, json!({}));
    assert_eq!(status, 200, "{body}");
    for node in &nodes[..2] {
        let deadline = Instant::now() + Duration::from_secs(2);
        while node.get("/v1/sys/seal-status", "").1["sealed"] != true {
            assert!(Instant::now() < deadline, "a node stayed unsealed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(node.verify(root, &key), "", "no answer while sealed");
    }
}

#[test]
fn a_node_given_another_vaults_unseal_key_refuses_to_serve() {
    let cluster = Cluster::start();
    // Another vault's key: the embedded default writes one beside its data.
    let dev = tempfile::tempdir().unwrap();
    let dev_node = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dev.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut dev_node = dev_node.unwrap();
    let key_file = dev.path().join("unseal.key");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !key_file.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let _ = dev_node.kill();
    let _ = dev_node.wait();
    let wrong = std::fs::read_to_string(&key_file).unwrap();
    let refused = Node::start(&cluster.pg.url(), &[("KEYWARD_UNSEAL_KEY", wrong.trim())]);
    let err = refused
        .err()
        .expect("a node with the wrong unseal key must not serve");
    assert!(err.contains("does not unseal this vault"), "{err}");
    assert!(!err.contains(wrong.trim()), "never echoes the key");
}

#[test]
fn nodes_ride_out_a_postgres_restart_and_catch_up_after() {
    let mut cluster = Cluster::start();
    let nodes = [cluster.node(), cluster.node(), cluster.node()];
    let root = cluster.root.clone();
    let (_, cached) = create_key(&nodes[0], &root);
    for node in &nodes {
        node.until_code(&root, &cached, "VALID");
    }
    // Verifications run on every node throughout: none may fail with a 500, or answer
    // anything but VALID for the cached key (the restart is well within the grace).
    let load = Load::start(&nodes, &root, &cached);
    std::thread::sleep(Duration::from_millis(300));
    cluster.pg.stop();
    // Both nodes keep answering for the key they cached: nobody can write meanwhile.
    for node in &nodes {
        let (_, body) = node.post("/v1/verify", &root, json!({"key": cached}));
        assert_eq!(body["code"], "VALID", "{body}");
    }
    cluster.pg.restart().unwrap();
    // Writes work again without a restart of either node (the first may meet a stale pooled
    // connection), and B learns of a revoke made on A.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (id, key) = loop {
        let (status, created) = nodes[0].post(
            "/v1/keys",
            &root,
            json!({"environment": "live", "name": "after", "owner": "o"}),
        );
        if status == 201 {
            break (
                created["id"].as_str().unwrap().to_owned(),
                created["key"].as_str().unwrap().to_owned(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "no write after the restart: {status} {created}"
        );
        assert_ne!(status, 500, "{created}");
        std::thread::sleep(Duration::from_millis(100));
    };
    nodes[1].until_code(&root, &key, "VALID");
    let (status, _) = nodes[0].post(
        &format!("/v1/keys/{id}/revoke"),
        &root,
        json!({"reason": "test"}),
    );
    assert_eq!(status, 200);
    nodes[1].until_code(&root, &key, "REVOKED");
    assert_eq!(nodes[1].verify(&root, &cached), "VALID");
    for answers in load.finish() {
        assert_eq!(
            answers.keys().collect::<Vec<_>>(),
            ["200 VALID"],
            "{answers:?}"
        );
    }
}

/// Verifications of one key on every node, in a thread per node, until finished: how often
/// each answered what (`"200 VALID"`, `"503 "` …).
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<std::collections::BTreeMap<String, u32>>>,
}

impl Load {
    fn start(nodes: &[Node], root: &str, key: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = nodes
            .iter()
            .map(|node| {
                let (url, root, key) = (node.url.clone(), root.to_owned(), key.to_owned());
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let client = Node::client();
                    let mut answers = std::collections::BTreeMap::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let resp = client
                            .post(format!("{url}/v1/verify"))
                            .bearer_auth(&root)
                            .json(&json!({"key": key}))
                            .send()
                            .unwrap();
                        let status = resp.status().as_u16();
                        let body: Value = resp.json().unwrap_or(Value::Null);
                        let code = body["code"].as_str().unwrap_or("");
                        *answers.entry(format!("{status} {code}")).or_default() += 1;
                    }
                    answers
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Vec<std::collections::BTreeMap<String, u32>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// A node with a feed grace of 300 ms, unsealed, and a key it has cached (and its config
/// file, to keep).
fn short_grace_node(cluster: &Cluster) -> (Node, String, tempfile::NamedTempFile) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "store_feed_grace_ms = 300\n").unwrap();
    let node = cluster.node_with(&[("KEYWARD_CONFIG", config.path().to_str().unwrap())]);
    let (_, key) = create_key(&node, &cluster.root);
    node.until_code(&cluster.root, &key, "VALID");
    (node, key, config)
}

#[test]
fn past_its_grace_a_node_whose_postgres_stopped_answering_vouches_for_nothing_cached() {
    let cluster = Cluster::start();
    let (node, key, _config) = short_grace_node(&cluster);
    // The server keeps every connection open but answers nothing: no error ends the feed's
    // wait, only the watchdog.
    cluster.pg.freeze();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let (status, body) = node.post("/v1/verify", &cluster.root, json!({"key": key}));
    cluster.pg.thaw();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    node.until_code(&cluster.root, &key, "VALID");
}

#[test]
fn past_its_grace_a_node_cut_off_from_postgres_vouches_for_nothing_cached() {
    let mut cluster = Cluster::start();
    let (node, key, _config) = short_grace_node(&cluster);
    cluster.pg.stop();
    std::thread::sleep(Duration::from_millis(1500));
    // It cannot know whether another node revoked the key meanwhile: it reads the store,
    // which it cannot reach, and says so instead of VALID.
    let (status, body) = node.post("/v1/verify", &cluster.root, json!({"key": key}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    cluster.pg.restart().unwrap();
    node.until_code(&cluster.root, &key, "VALID");
}

/// A key limited to 20 a minute, created on the first node and verified once on each (3 of
/// its 20 spent).
fn limited_key(nodes: &[Node], root: &str) -> String {
    let (status, created) = nodes[0].post(
        "/v1/keys",
        root,
        json!({"environment": "live", "name": "n", "owner": "o",
               "ratelimits": [{"name": "minute", "limit": 20, "period_s": 60}]}),
    );
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    for node in nodes {
        node.until_code(root, &key, "VALID");
    }
    key
}

#[test]
fn limits_on_redis_are_exact_across_nodes_and_follow_the_policy_while_it_is_down() {
    let cluster = Cluster::start();
    let mut redis = keyward_testkit::services::Redis::start().unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "ratelimit_redis_unreachable = 'fail_closed'\nratelimit_redis_timeout_ms = 200\n",
    )
    .unwrap();
    let env = [
        ("KEYWARD_RATELIMIT_REDIS", redis.url()),
        ("KEYWARD_CONFIG", config.path().to_str().unwrap().to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let nodes: Vec<Node> = (0..3).map(|_| cluster.node_with(&env)).collect();
    let root = &cluster.root;
    let key = limited_key(&nodes, root);
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..90 {
        *codes.entry(nodes[i % 3].verify(root, &key)).or_default() += 1;
    }
    // Three were spent finding the key on each node; of the 90, exactly 17 more pass.
    assert_eq!(codes.get("VALID"), Some(&17), "{codes:?}");
    assert_eq!(codes.get("RATE_LIMITED"), Some(&73), "{codes:?}");

    // The cluster's state shows on /metrics: Redis is up, and one node does the singleton work.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let texts: Vec<String> = nodes
            .iter()
            .map(|n| {
                Node::client()
                    .get(format!("{}/metrics", n.url))
                    .bearer_auth(root)
                    .send()
                    .unwrap()
                    .text()
                    .unwrap()
            })
            .collect();
        let leaders = texts
            .iter()
            .filter(|t| t.contains("keyward_singleton_leader 1"))
            .count();
        if leaders == 1
            && texts
                .iter()
                .all(|t| t.contains("keyward_ratelimit_redis_up 1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{texts:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A concurrency limit holds across nodes too: one request in flight, wherever it is.
    let (status, created) = nodes[0].post(
        "/v1/keys",
        root,
        json!({"environment": "live", "name": "c", "owner": "o",
               "concurrency": {"limit": 1, "lease_timeout_s": 30}}),
    );
    assert_eq!(status, 201, "{created}");
    let single = created["key"].as_str().unwrap().to_owned();
    for node in &nodes {
        node.until_code(root, &single, "VALID");
    }
    let lease = |node: &Node| {
        node.post("/v1/verify", root, json!({"key": single, "lease": true}))
            .1
    };
    let held = lease(&nodes[0]);
    assert_eq!(held["code"], "VALID", "{held}");
    let refused = lease(&nodes[1]);
    assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
    let id = held["lease"]["id"].as_str().unwrap();
    let resp = Node::client()
        .post(format!("{}/v1/leases/{id}/release", nodes[2].url))
        .bearer_auth(root)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204, "released on another node");
    assert_eq!(lease(&nodes[1])["code"], "VALID");

    // Redis down: fail_closed refuses, as rate limited, never a 500, under load on every node.
    let load = Load::start(&nodes, root, &key);
    std::thread::sleep(Duration::from_millis(200));
    redis.kill();
    for node in &nodes {
        let (status, body) = node.post("/v1/verify", root, json!({"key": key}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    }
    // Back (empty: Redis kept nothing), Redis is used again within a second or two.
    redis.restart().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    for answers in load.finish() {
        assert!(
            answers
                .keys()
                .all(|a| a == "200 VALID" || a == "200 RATE_LIMITED"),
            "{answers:?}"
        );
        assert!(answers.contains_key("200 RATE_LIMITED"), "{answers:?}");
    }
    // And exact across the nodes again: a new key's 20 a minute, 3 of them spent finding it.
    let key = limited_key(&nodes, root);
    let valid = (0..60)
        .filter(|i| nodes[i % 3].verify(root, &key) == "VALID")
        .count();
    assert_eq!(valid, 17, "{valid} more admitted of the 17 left");
}

/// `keyward serve` on a data dir, as in the embedded default; its root key.
fn embedded(dir: &std::path::Path) -> (Child, String, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut root = String::new();
    loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(key) = line.trim().strip_prefix("keyward_admin_") {
            root = format!("keyward_admin_{key}");
        }
        if let Some(addr) = line.strip_prefix("keyward listening on ") {
            std::thread::spawn(move || for _ in lines {});
            return (child, addr.to_owned(), root);
        }
    }
}

#[test]
fn an_embedded_store_migrates_to_postgres_whole_and_verifiable() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, url, root) = embedded(data.path());
    let node = Node {
        child: Command::new("true").spawn().unwrap(),
        url,
    };
    let (_, kept) = create_key(&node, &root);
    let (gone_id, gone) = create_key(&node, &root);
    let (status, _) = node.post(
        &format!("/v1/keys/{gone_id}/revoke"),
        &root,
        json!({"reason": "t"}),
    );
    assert_eq!(status, 200);
    let resp = Node::client()
        .put(format!("{}/v1/secrets/live/api/token", node.url))
        .bearer_auth(&root)
        .json(&json!({"data": {"value": "v1"}}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, _) = node.post("/v1/sys/rotate", &root, json!({}));
    assert_eq!(status, 200);
    assert_eq!(node.verify(&root, &kept), "VALID");
    let audit_before = node.get("/v1/audit?limit=1000", &root).1;

    let pg = Postgres::start().unwrap();
    // Not while the server runs on it.
    let busy = Command::new(BIN)
        .args(["store", "migrate", "--to", &pg.url(), "--from"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop the server"));
    let _ = server.kill();
    let _ = server.wait();

    let out = Command::new(BIN)
        .args(["store", "migrate", "--json", "--to", &pg.url(), "--from"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["keys"], 3, "two keys and the root key: {report}");
    assert_eq!(report["secrets"], 1);
    // Into a store that is not empty: refused.
    let again = Command::new(BIN)
        .args(["store", "migrate", "--to", &pg.url(), "--from"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // A node on the copy opens with the same unseal key and finds everything intact.
    let key = std::fs::read_to_string(data.path().join("unseal.key")).unwrap();
    let node = Node::start(&pg.url(), &[("KEYWARD_UNSEAL_KEY", key.trim())]).unwrap();
    assert_eq!(node.verify(&root, &kept), "VALID");
    assert_eq!(node.verify(&root, &gone), "REVOKED");
    let (status, read) = node.get("/v1/secrets/live/api/token", &root);
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"]["value"], "v1");
    let (status, ready) = node.get("/readyz", "");
    assert_eq!(
        status, 200,
        "every integrity tag checks out on the copy: {ready}"
    );
    // The copy checks out offline too: its chain, and with the unseal key every tag.
    let out = Command::new(BIN)
        .args(["audit", "verify", "--json", "--store", &pg.url()])
        .env("KEYWARD_UNSEAL_KEY", key.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["integrity_checked"], true);
    let audit_after = node.get("/v1/audit?limit=1000", &root).1;
    let entries = |v: &Value| v["entries"].as_array().unwrap().clone();
    let (before, after) = (entries(&audit_before), entries(&audit_after));
    assert!(before.len() > 5, "{audit_before}");
    // The copy holds every entry as it was (and, after them, the new node's own: its unseal).
    assert_eq!(&after[..before.len()], &before[..]);
}

#[test]
fn audited_reads_on_every_node_neither_fail_nor_block_revokes() {
    let cluster = Cluster::start();
    let nodes = std::sync::Arc::new([cluster.node(), cluster.node()]);
    let root = cluster.root.clone();
    let resp = Node::client()
        .put(format!("{}/v1/secrets/live/app/db", nodes[0].url))
        .bearer_auth(&root)
        .json(&json!({"data": {"v": "x"}}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let (nodes, root, stop) = (nodes.clone(), root.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let client = Node::client();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = client
                        .get(format!("{}/v1/secrets/live/app/db", nodes[i % 2].url))
                        .bearer_auth(&root)
                        .send()
                        .unwrap();
                    if resp.status().as_u16() != 200 {
                        failures.push(resp.status().as_u16());
                    }
                }
                failures
            })
        })
        .collect();
    // Every secret read on either node commits an audit entry; revokes on one of them must
    // still win the log's head.
    for _ in 0..15 {
        let (id, _) = create_key(&nodes[1], &root);
        let (status, body) = nodes[1].post(
            &format!("/v1/keys/{id}/revoke"),
            &root,
            json!({"reason": "t"}),
        );
        assert_eq!(status, 200, "{body}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failures: Vec<u16> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    assert!(failures.iter().all(|s| *s != 500), "{failures:?}");
    assert!(
        failures.len() < 10,
        "{} reads failed: {failures:?}",
        failures.len()
    );
}

fn psql(pg: &Postgres, sql: &str) {
    let out = Command::new("psql")
        .arg(pg.url())
        .args(["-qAtc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_revoke_reaches_every_node_even_if_the_change_log_is_tampered_with() {
    let cluster = Cluster::start();
    let nodes = [cluster.node(), cluster.node()];
    let root = &cluster.root;
    let (id, key) = create_key(&nodes[0], root);
    nodes[1].until_code(root, &key, "VALID");
    // Someone who can write to the database blanks every change-log row from now on, so no
    // row names the revoked key.
    psql(
        &cluster.pg,
        "CREATE FUNCTION blank() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN NEW.summary := '{}'; RETURN NEW; END $$; \
         CREATE TRIGGER blank BEFORE INSERT ON change_log FOR EACH ROW EXECUTE FUNCTION blank();",
    );
    let (status, _) = nodes[0].post(
        &format!("/v1/keys/{id}/revoke"),
        root,
        json!({"reason": "t"}),
    );
    assert_eq!(status, 200);
    // The revoke's audit entry still reaches B, which reads the key afresh.
    let took = nodes[1].until_code(root, &key, "REVOKED");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Worse, the key's row keeps its old state while the revoke commits: the log's entry
    // still makes every node refuse the key.
    psql(&cluster.pg, "DROP TRIGGER blank ON change_log");
    let (id, key) = create_key(&nodes[0], root);
    nodes[1].until_code(root, &key, "VALID");
    psql(
        &cluster.pg,
        "CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN IF NEW.status = 'revoked' THEN RETURN OLD; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER keep BEFORE UPDATE ON keys FOR EACH ROW EXECUTE FUNCTION keep();",
    );
    let (status, _) = nodes[0].post(
        &format!("/v1/keys/{id}/revoke"),
        root,
        json!({"reason": "t"}),
    );
    assert_eq!(status, 200);
    for node in &nodes {
        let took = node.until_code(root, &key, "NOT_FOUND");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    psql(&cluster.pg, "DROP TRIGGER keep ON keys");
    // A forged row cannot seal the cluster: only a seal's audit entry does.
    psql(
        &cluster.pg,
        "INSERT INTO change_log (seq, origin, at, summary) \
         SELECT max(seq) + 1, 'forged', 0, '{\"seal\":true}' FROM change_log; \
         NOTIFY keyward_changes, 'x'",
    );
    std::thread::sleep(Duration::from_millis(1500));
    for node in &nodes {
        assert_eq!(node.get("/v1/sys/seal-status", "").1["sealed"], false);
    }
}

#[test]
fn nodes_spend_one_quota_together() {
    let cluster = Cluster::start();
    let nodes = [cluster.node(), cluster.node()];
    let root = &cluster.root;
    let (status, created) = nodes[0].post(
        "/v1/keys",
        root,
        json!({"environment": "live", "name": "q", "owner": "o", "quota": {"remaining": 20}}),
    );
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    // Both nodes hold the count of 20 once they have seen the key.
    for node in &nodes {
        node.until_code(root, &key, "VALID");
    }
    let spend = |node: &Node, n: usize| {
        (0..n)
            .filter(|_| node.verify(root, &key) == "VALID")
            .count()
    };
    // Each spends; after a flush (a second) each knows what the other spent.
    assert_eq!(spend(&nodes[0], 5), 5);
    assert_eq!(spend(&nodes[1], 5), 5);
    std::thread::sleep(Duration::from_millis(2500));
    // 2 + 10 spent of 20: 8 left, whichever node asks; each node spent the other's credits
    // once only.
    let more = spend(&nodes[0], 20);
    assert_eq!(more, 8, "{more} more admitted of 8 left");
    std::thread::sleep(Duration::from_millis(2500));
    let (_, listed) = nodes[1].get(
        &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
        root,
    );
    assert_eq!(listed["quota"]["remaining"], 0, "{listed}");
}

#[test]
fn two_inits_at_once_make_one_store_and_say_so() {
    let pg = Postgres::start().unwrap();
    let init = || {
        let url = pg.url();
        std::thread::spawn(move || {
            Command::new(BIN)
                .args([
                    "init",
                    "--key-shares",
                    "1",
                    "--key-threshold",
                    "1",
                    "--store",
                    &url,
                ])
                .output()
                .unwrap()
        })
    };
    let (a, b) = (init(), init());
    let outs = [a.join().unwrap(), b.join().unwrap()];
    assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 1);
    let loser = outs.iter().find(|o| !o.status.success()).unwrap();
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(
        err.contains("already holds a keyward store") || err.contains("at the same time"),
        "{err}"
    );
}
