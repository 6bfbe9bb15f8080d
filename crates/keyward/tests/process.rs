//! The `keyward` binary as users run it: serve, crash, restart, the CLI, and offline audit checks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::zombie_processes
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// A `keyward serve` process on a free port.
struct Server {
    child: Child,
    url: String,
    root_key: Option<String>,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, None)
    }

    /// [`Server::start`] with a configuration file.
    fn start_with(data_dir: &Path, config: Option<&Path>) -> Server {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut root_key = None;
        loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            if let Some(key) = line.trim().strip_prefix("keyward_admin_") {
                root_key = Some(format!("keyward_admin_{key}"));
            }
            if let Some(addr) = line.strip_prefix("keyward listening on ") {
                // Keep draining stdout so the server never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Server {
                    child,
                    url: addr.to_owned(),
                    root_key,
                };
            }
        }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.child.wait().unwrap();
    }

    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "serve exited with {exit} after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn post(url: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.json().unwrap())
}

fn get(url: &str, token: &str) -> Value {
    client()
        .get(url)
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn cli(args: &[&str], url: &str, token: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("KEYWARD_URL", url)
        .env("KEYWARD_TOKEN", token)
        .output()
        .unwrap()
}

#[test]
fn a_created_key_survives_kill_9_right_after_the_create_returned() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let root = server
        .root_key
        .clone()
        .expect("a new data dir prints the root key");
    let (status, created) = post(
        &format!("{}/v1/keys", server.url),
        &root,
        json!({"environment": "live", "name": "n", "owner": "o"}),
    );
    assert_eq!(status, 201);
    let (status, revoked) = post(
        &format!("{}/v1/keys", server.url),
        &root,
        json!({"environment": "live", "name": "r", "owner": "o"}),
    );
    assert_eq!(status, 201);
    let (status, _) = post(
        &format!(
            "{}/v1/keys/{}/revoke",
            server.url,
            revoked["id"].as_str().unwrap()
        ),
        &root,
        json!({"reason": "test"}),
    );
    assert_eq!(status, 200);
    server.kill9();

    let server = Server::start(dir.path());
    assert!(
        server.root_key.is_none(),
        "an initialised data dir must not print a new root key"
    );
    let verify = |key: &Value| {
        post(
            &format!("{}/v1/verify", server.url),
            &root,
            json!({"key": key}),
        )
    };
    assert_eq!(verify(&created["key"]).1["code"], "VALID");
    assert_eq!(verify(&revoked["key"]).1["code"], "REVOKED");
}

#[test]
fn sigterm_drains_and_flushes_usage() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let root = server.root_key.clone().unwrap();
    let (_, created) = post(
        &format!("{}/v1/keys", server.url),
        &root,
        json!({"environment": "test", "name": "n", "owner": "o"}),
    );
    for _ in 0..3 {
        post(
            &format!("{}/v1/verify", server.url),
            &root,
            json!({"key": created["key"]}),
        );
    }
    server.terminate();
    let server = Server::start(dir.path());
    let shown = get(
        &format!("{}/v1/keys/{}", server.url, created["id"].as_str().unwrap()),
        &root,
    );
    assert_eq!(shown["uses"], 3, "{shown}");
    assert!(shown["last_used_at"].is_string());
}

#[test]
fn two_servers_cannot_share_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start(dir.path());
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another keyward process"));
}

#[test]
fn cli_init_and_keys_commands() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .args(["init", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let init: Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = init["root_key"].as_str().unwrap().to_owned();
    assert_eq!(init["environments"], json!(["live", "test", "admin"]));
    let shares: Vec<String> = init["unseal_shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shares.len(), 5);
    assert_eq!(init["unseal_threshold"], 3);
    // `init` keeps no unseal key beside the data: only the shares open the vault.
    assert!(!data.join("unseal.key").exists());
    assert!(!data.join("secrets.json").exists());
    let db = std::fs::read(data.join("keyward.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&root[14..]));

    let again = Command::new(BIN)
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let server = Server::start(&data);
    let url = server.url.clone();
    // Sealed until 3 of the 5 shares arrive through the CLI.
    let status = cli(&["operator", "status", "--json"], &url, "");
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["sealed"], true);
    let out = cli(&["keys", "list"], &url, &root);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SEALED"));
    for (i, share) in shares.iter().take(3).enumerate() {
        let out = cli(&["operator", "unseal", share, "--json"], &url, "");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["sealed"], i < 2, "after {} shares", i + 1);
    }
    // Rekey from the CLI: current shares on stdin, new ones printed once.
    let current = shares[2..].join("\n");
    let out = cli_stdin(
        &[
            "operator",
            "rekey",
            "--key-shares",
            "3",
            "--key-threshold",
            "2",
            "--json",
        ],
        &url,
        &root,
        &current,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rekeyed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rekeyed["shares"].as_array().unwrap().len(), 3);
    assert_eq!(rekeyed["threshold"], 2);
    // Rotation, and the rewrap's progress in the CLI.
    let out = cli(&["operator", "rotate"], &url, &root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("keyring term 2"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli(&["operator", "status"], &url, "");
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(printed.contains("rewrap to term 2"), "{printed}");
        if printed.contains("finished") {
            assert!(printed.contains("3/3 values"), "{printed}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{printed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = cli(
        &[
            "keys",
            "create",
            "--environment",
            "live",
            "--name",
            "cli",
            "--owner",
            "ops",
            "--permission",
            "a:b",
            "--ttl-s",
            "3600",
            "--json",
        ],
        &url,
        &root,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["permissions"], json!(["a:b"]));

    let out = cli(
        &["keys", "list", "--environment", "live", "--json"],
        &url,
        &root,
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["keys"][0]["id"], id);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);

    let out = cli(
        &[
            "keys",
            "create",
            "--environment",
            "test",
            "--name",
            "ro",
            "--owner",
            "ops",
            "--role",
            "read-only",
            "--allow-cidr",
            "10.0.0.0/8",
            "--path-rule",
            "GET /v1/**",
            "--json",
        ],
        &url,
        &root,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scoped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(scoped["roles"], json!(["read-only"]));
    assert_eq!(scoped["allowed_cidrs"], json!(["10.0.0.0/8"]));
    assert_eq!(scoped["path_rules"], json!(["GET /v1/**"]));
    let out = cli(
        &["keys", "explain", scoped["id"].as_str().unwrap()],
        &url,
        &root,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("*:read") && printed.contains("role read-only"),
        "{printed}"
    );

    let out = cli(&["keys", "show", id], &url, &root);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"owner\": \"ops\""));

    let out = cli(
        &["keys", "roll", id, "--grace-period-s", "60", "--json"],
        &url,
        &root,
    );
    let rolled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rolled["rolled_from"], id);

    let out = cli(
        &[
            "keys",
            "revoke",
            rolled["id"].as_str().unwrap(),
            "--reason",
            "done",
            "--json",
        ],
        &url,
        &root,
    );
    let revoked: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revoked["status"], "revoked");

    // Failures: non-zero exit and one line naming the code.
    let out = cli(
        &["keys", "show", "00000000-0000-7000-8000-000000000000"],
        &url,
        &root,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("NOT_FOUND"), "{err}");
    let out = cli(&["keys", "list"], &url, "keyward_admin_wrong");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHORIZED"));
    let out = cli(&["keys", "list"], "http://127.0.0.1:1", &root);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    drop(server);

    let out = Command::new(BIN)
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intact"], true);
    assert!(report["entries"].as_u64().unwrap() >= 8);
}

fn sql(db: &Path, statements: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    // An attacker with the file can drop the store's guard triggers; the chain still tells.
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;",
    )
    .unwrap();
    conn.execute_batch(statements).unwrap();
}

fn audit_verify(data: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn audit_verify_detects_edit_delete_and_reorder() {
    for (tamper, first_broken) in [
        (
            "UPDATE audit_log SET details = '{\"name\":\"innocent\"}' WHERE seq = 5",
            "entry 5",
        ),
        (
            "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3",
            "entry 3",
        ),
        ("DELETE FROM audit_log WHERE seq = 2", "entry 3"),
        (
            "UPDATE audit_log SET seq = 100 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 100;",
            "entry 2",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success());
        let (ok, report) = audit_verify(&data);
        assert!(ok, "{report}");
        sql(&data.join("keyward.db"), tamper);
        let (ok, report) = audit_verify(&data);
        assert!(!ok, "tampering not detected: {tamper}");
        assert!(report.contains(first_broken), "{tamper}: {report}");
    }
}

#[test]
fn audit_verify_with_the_unseal_key_finds_truncation_and_edited_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let root = server.root_key.clone().unwrap();
    for i in 0..3 {
        let (status, _) = post(
            &format!("{}/v1/keys", server.url),
            &root,
            json!({"environment": "live", "name": format!("k{i}"), "owner": "o"}),
        );
        assert_eq!(status, 201);
    }
    server.terminate();
    // The embedded default's unseal.key sits beside the data: audit verify uses it.
    let (ok, report) = audit_verify(&data);
    assert!(ok, "{report}");
    assert!(report.contains("integrity tags intact"), "{report}");
    // Truncating the newest entries leaves a consistent chain: only the tags tell.
    sql(
        &data.join("keyward.db"),
        "DELETE FROM audit_log WHERE seq > (SELECT max(seq) - 2 FROM audit_log);
         UPDATE keys SET permissions = '[\"*\"]' WHERE name = 'k1';",
    );
    let (ok, report) = audit_verify(&data);
    assert!(!ok, "{report}");
    assert!(report.contains("chain intact"), "{report}");
    assert!(report.contains("truncated"), "{report}");
    assert_eq!(
        report.matches("INTEGRITY failure: key").count(),
        1,
        "{report}"
    );
    // Without the key, the chain alone is checked, and it says what it could not see.
    std::fs::rename(data.join("unseal.key"), dir.path().join("unseal.key")).unwrap();
    let (ok, report) = audit_verify(&data);
    assert!(ok, "{report}");
    assert!(report.contains("not checked"), "{report}");
    let out = Command::new(BIN)
        .args(["audit", "verify", "--json", "--unseal-key-file"])
        .arg(dir.path().join("unseal.key"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intact"], false);
    assert_eq!(report["chain_intact"], true);
}

#[test]
fn a_lowered_keyring_term_is_refused_at_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let root = server.root_key.clone().unwrap();
    let (status, _) = post(&format!("{}/v1/sys/rotate", server.url), &root, json!({}));
    assert_eq!(status, 200);
    server.terminate();
    sql(&data.join("keyward.db"), "UPDATE vault SET term = 1;");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("integrity"), "{stderr}");
}

#[test]
fn serve_refuses_a_store_that_lost_its_vault() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(
        Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
            .status
            .success()
    );
    sql(&data.join("keyward.db"), "DELETE FROM vault;");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no vault"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_embedded_default_keeps_its_unseal_key_private_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("serve exited").unwrap();
        if line.starts_with("keyward listening on ") {
            break;
        }
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("development convenience"),
        "{stderr}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("unseal.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o077,
        0,
        "unseal.key is readable by others: {mode:o}"
    );
}

#[test]
fn bad_configuration_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyward.toml");
    std::fs::write(&config, "listen = 'nowhere'\nbody_limit_bytes = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen") && err.contains("body_limit_bytes"),
        "{err}"
    );
    std::fs::write(&config, "colour = 'blue'\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

fn put_secret(url: &str, token: &str, path: &str, body: Value) -> u16 {
    client()
        .put(format!("{url}/v1/secrets/{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn rewrap_progress(db: &Path) -> Value {
    let conn = rusqlite::Connection::open(db).unwrap();
    let text: Option<String> = conn
        .query_row("SELECT rewrap FROM vault", [], |r| r.get(0))
        .unwrap();
    text.map_or(Value::Null, |t| serde_json::from_str(&t).unwrap())
}

#[test]
fn kill_9_during_a_rewrap_loses_nothing_and_the_rewrap_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Small batches make the rewrap take many writes, so the kill lands in the middle of it.
    let config = dir.path().join("keyward.toml");
    std::fs::write(&config, "rewrap_batch_size = 5\n").unwrap();
    let start = |data: &Path| Server::start_with(data, Some(&config));
    let server = start(&data);
    let root = server.root_key.clone().unwrap();
    let url = server.url.clone();
    for i in 0..400 {
        let status = put_secret(
            &url,
            &root,
            &format!("live/app/{i}"),
            json!({ "data": { "n": i } }),
        );
        assert_eq!(status, 200);
    }
    let (status, rotated) = post(&format!("{url}/v1/sys/rotate"), &root, json!({}));
    assert_eq!(status, 200, "{rotated}");
    server.kill9();
    let progress = rewrap_progress(&data.join("keyward.db"));
    assert!(
        progress["finished_at"].is_null(),
        "the rewrap finished before the kill: {progress}"
    );
    let done_at_kill = progress["done"].as_u64().unwrap();
    assert!(done_at_kill < progress["total"].as_u64().unwrap());

    let server = start(&data);
    let url = server.url.clone();
    for i in 0..400 {
        let body = get(&format!("{url}/v1/secrets/live/app/{i}"), &root);
        assert_eq!(body["data"]["n"], i, "secret {i}: {body}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = get(&format!("{url}/v1/sys/keyring"), &root);
        if !status["rewrap"]["finished_at"].is_null() {
            assert_eq!(status["rewrap"]["term"], 2);
            assert!(status["rewrap"]["done"].as_u64().unwrap() >= 403);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rewrap did not resume: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let conn = rusqlite::Connection::open(data.join("keyward.db")).unwrap();
    let stale: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM secret_versions WHERE term < 2) + (SELECT count(*) FROM environments WHERE secret_term < 2)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale, 0);
}

#[test]
fn keyward_run_injects_secrets_without_printing_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let root = server.root_key.clone().unwrap();
    let url = server.url.clone();
    assert_eq!(
        put_secret(
            &url,
            &root,
            "live/db/main",
            json!({ "data": { "password": "hunter2-run", "user": "app" } })
        ),
        200
    );
    assert_eq!(
        put_secret(
            &url,
            &root,
            "live/stripe",
            json!({ "data": { "key": "sk_run_value" } })
        ),
        200
    );
    let out = Command::new(BIN)
        .args([
            "run",
            "--secret",
            "DB_PASSWORD=live/db/main#password",
            "--secret",
            "STRIPE=live/stripe",
            "--",
            "sh",
            "-c",
            "test \"$DB_PASSWORD\" = hunter2-run && test \"$STRIPE\" = sk_run_value && echo matched",
        ])
        .env("KEYWARD_URL", &url)
        .env("KEYWARD_TOKEN", &root)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "matched");
    assert!(!stderr.contains("hunter2") && !stdout.contains("hunter2"));
    // The command's exit status is passed through; a missing field is a one-line error.
    let out = Command::new(BIN)
        .args(["run", "--secret", "X=live/db/main#nope", "--", "true"])
        .env("KEYWARD_URL", &url)
        .env("KEYWARD_TOKEN", &root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no field") && !stderr.contains("hunter2"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args([
            "run",
            "--secret",
            "X=live/stripe",
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .env("KEYWARD_URL", &url)
        .env("KEYWARD_TOKEN", &root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    // The command gets its secrets, not keyward's own keys, unless asked for.
    let env_of = |extra: &[&str]| {
        let mut args = vec!["run", "--secret", "X=live/stripe"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "env"]);
        let out = Command::new(BIN)
            .args(&args)
            .env("KEYWARD_URL", &url)
            .env("KEYWARD_TOKEN", &root)
            .env("KEYWARD_UNSEAL_KEY", "kwunseal1-not-used-here")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = env_of(&[]);
    assert!(plain.contains("X=sk_run_value"));
    assert!(
        !plain.contains("KEYWARD_TOKEN") && !plain.contains(&root),
        "{plain}"
    );
    assert!(!plain.contains("KEYWARD_UNSEAL_KEY"));
    let kept = env_of(&["--keep-keyward-env"]);
    assert!(kept.contains(&format!("KEYWARD_TOKEN={root}")));
}

#[test]
fn a_failed_init_leaves_nothing_and_serve_never_adopts_a_half_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A refused init leaves no store behind; the dir then serves as a fresh one.
    let out = Command::new(BIN)
        .args([
            "init",
            "--key-shares",
            "3",
            "--key-threshold",
            "5",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!data.join("keyward.db").exists());
    assert!(!data.join("keyward.db.init").exists());
    // What a killed init leaves (a staging store) is discarded by the next start.
    std::fs::write(data.join("keyward.db.init"), b"half written").unwrap();
    let server = Server::start(&data);
    assert!(server.root_key.is_some());
    assert!(!data.join("keyward.db.init").exists());
    server.terminate();
    // A store without a vault is never turned into the embedded default.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    sql(&other.join("keyward.db"), "CREATE TABLE t (x);");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no vault"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!other.join("unseal.key").exists());
}

#[test]
fn an_unseal_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Server::start(&data).terminate();
    std::fs::set_permissions(
        data.join("unseal.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
    // Restored, it serves again, and warns again that the key sits beside the data.
    std::fs::set_permissions(
        data.join("unseal.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.starts_with("keyward listening on ") {
            break;
        }
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("development convenience"));
}

fn cli_stdin(args: &[&str], url: &str, token: &str, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("KEYWARD_URL", url)
        .env("KEYWARD_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn cli_secrets_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let root = server.root_key.clone().unwrap();
    let url = server.url.clone();
    // A value from stdin stays out of the command line.
    let out = cli_stdin(
        &["secrets", "put", "live/db/main", "user=app", "password=-"],
        &url,
        &root,
        "s3cret-from-stdin\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "version 1");
    let out = cli(
        &["secrets", "get", "live/db/main", "--field", "password"],
        &url,
        &root,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "s3cret-from-stdin"
    );
    let out = cli_stdin(
        &["secrets", "put", "live/db/main", "--cas", "0"],
        &url,
        &root,
        r#"{"password":"other"}"#,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CONFLICT") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let out = cli_stdin(
        &["secrets", "put", "live/db/main", "--cas", "1"],
        &url,
        &root,
        r#"{"password":"v2"}"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["secrets", "list", "live", "--prefix", "db/"], &url, &root);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db/main  v2");
    assert!(
        cli(&["secrets", "delete", "live/db/main"], &url, &root)
            .status
            .success()
    );
    let out = cli(&["secrets", "get", "live/db/main"], &url, &root);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    assert!(
        cli(
            &["secrets", "undelete", "live/db/main", "--version", "2"],
            &url,
            &root
        )
        .status
        .success()
    );
    let out = cli(&["secrets", "get", "live/db/main"], &url, &root);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"password":"v2"}"#
    );
    let out = cli(
        &[
            "secrets",
            "get",
            "live/db/main",
            "--version",
            "1",
            "--field",
            "user",
        ],
        &url,
        &root,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
    assert!(
        cli(
            &["secrets", "destroy", "live/db/main", "--version", "1"],
            &url,
            &root
        )
        .status
        .success()
    );
    let out = cli(&["secrets", "metadata", "live/db/main"], &url, &root);
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["versions"][0]["destroyed"], true);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
}

#[test]
fn cli_rotation_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let root = server.root_key.clone().unwrap();
    let url = server.url.clone();
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (status, body) = post(
        &format!("{url}/v1/environments"),
        &root,
        json!({"name": "ci", "policy": {"require_expiry": true}}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, created) = post(
        &format!("{url}/v1/keys"),
        &root,
        json!({"environment": "ci", "name": "n", "owner": "o", "ttl_s": 86400}),
    );
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();

    let out = cli(&["rotation", "show", id], &url, &root);
    assert!(ok(&out).contains("no rotation policy"));
    ok(&cli(
        &[
            "rotation",
            "set",
            "--environment",
            "ci",
            "--every-days",
            "30",
            "--grace-hours",
            "48",
            "--notice-days",
            "7",
        ],
        &url,
        &root,
    ));
    // The environment's other rules stay as they were.
    let env = get(&format!("{url}/v1/environments/ci"), &root);
    assert_eq!(env["policy"]["require_expiry"], true);
    assert_eq!(env["policy"]["rotation"]["every_days"], 30);
    let shown: Value =
        serde_json::from_str(&ok(&cli(&["rotation", "show", id, "--json"], &url, &root))).unwrap();
    assert_eq!(shown["source"], "environment");
    assert_eq!(shown["policy"]["grace_hours"], 48);
    let out = ok(&cli(&["rotation", "show", id], &url, &root));
    assert!(
        out.contains("every 30 days") && out.contains("next rotation:"),
        "{out}"
    );

    ok(&cli(
        &["rotation", "set", "--key", id, "--every-days", "10"],
        &url,
        &root,
    ));
    let shown: Value =
        serde_json::from_str(&ok(&cli(&["rotation", "show", id, "--json"], &url, &root))).unwrap();
    assert_eq!(shown["source"], "key");
    ok(&cli(&["rotation", "clear", "--key", id], &url, &root));
    ok(&cli(
        &["rotation", "clear", "--environment", "ci"],
        &url,
        &root,
    ));
    let env = get(&format!("{url}/v1/environments/ci"), &root);
    assert!(env["policy"].get("rotation").is_none(), "{env}");
    assert_eq!(env["policy"]["require_expiry"], true);

    // A role keeps its permissions when its policy is set.
    let (status, _) = post(
        &format!("{url}/v1/roles"),
        &root,
        json!({"name": "ops", "permissions": ["deploy:run"]}),
    );
    assert_eq!(status, 201);
    ok(&cli(
        &["rotation", "set", "--role", "ops", "--every-days", "60"],
        &url,
        &root,
    ));
    let role = get(&format!("{url}/v1/roles/ops"), &root);
    assert_eq!(role["permissions"], json!(["deploy:run"]));
    assert_eq!(role["rotation"]["every_days"], 60);

    // Bad input: one line naming the field; a target is required.
    let out = cli(
        &["rotation", "set", "--key", id, "--every-days", "0"],
        &url,
        &root,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INVALID_FIELD") && err.contains("every_days"),
        "{err}"
    );
    assert!(
        !cli(&["rotation", "set", "--every-days", "5"], &url, &root)
            .status
            .success()
    );

    // The key itself: outside any window, refused, and the key is never printed.
    let out = cli(&["rotation", "self-rotate"], &url, key);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POLICY_VIOLATION"), "{err}");
    assert!(!err.contains(key));

    // Versions after a roll by hand.
    let (status, rolled) = post(
        &format!("{url}/v1/keys/{id}/roll"),
        &root,
        json!({"grace_period_s": 60}),
    );
    assert_eq!(status, 201);
    let out = ok(&cli(&["keys", "versions", id], &url, &root));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID"));
    assert!(lines[1].starts_with(rolled["id"].as_str().unwrap()) && lines[1].ends_with("current"));
    assert!(
        lines[2].starts_with(id) && lines[2].ends_with("rolled_by_hand"),
        "{out}"
    );
}

/// A blocking webhook receiver on `port`: the bodies it answered 200 to.
fn receive_on(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<Value>>> {
    use std::io::{BufRead, Read, Write};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let seen = std::sync::Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let seen = std::sync::Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim_end().to_ascii_lowercase();
                        if header.is_empty() {
                            break;
                        }
                        if let Some(v) = header.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(value) = serde_json::from_slice(&body) {
                        seen.lock().unwrap().push(value);
                    }
                    if writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    got
}

#[test]
fn kill_9_between_a_change_and_its_delivery_loses_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("keyward.toml");
    std::fs::write(&config, "webhook_allowed_cidrs = [\"127.0.0.1/32\"]\n").unwrap();
    let start = || Server::start_with(&data, Some(&config));
    // The receiver's port, closed for now: every attempt before the kill fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = start();
    let root = server.root_key.clone().unwrap();
    let url = server.url.clone();
    let (status, hook) = post(
        &format!("{url}/v1/webhooks"),
        &root,
        json!({"url": format!("http://127.0.0.1:{port}/hook"), "event_types": ["key.revoked"]}),
    );
    assert_eq!(status, 201, "{hook}");
    // Internal addresses other than the allowed one are still refused.
    let (status, _) = post(
        &format!("{url}/v1/webhooks"),
        &root,
        json!({"url": "http://127.0.0.2:1/hook"}),
    );
    assert_eq!(status, 400);
    let (status, key) = post(
        &format!("{url}/v1/keys"),
        &root,
        json!({"environment": "live", "name": "n", "owner": "o"}),
    );
    assert_eq!(status, 201);
    let id = key["id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &format!("{url}/v1/keys/{id}/revoke"),
        &root,
        json!({"reason": "leaked"}),
    );
    assert_eq!(status, 200);
    server.kill9();

    let got = receive_on(port);
    let server = start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let events = got.lock().unwrap().clone();
        if let Some(event) = events.iter().find(|e| e["data"]["key_id"] == id.as_str()) {
            assert_eq!(event["type"], "key.revoked");
            assert_eq!(event["data"]["reason"], "leaked");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the event never arrived: {events:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(server);
}

#[test]
fn cli_webhooks_commands_and_their_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("keyward.toml");
    std::fs::write(&config, "webhook_allowed_cidrs = [\"127.0.0.1/32\"]\n").unwrap();
    let server = Server::start_with(&data, Some(&config));
    let root = server.root_key.clone().unwrap();
    let url = server.url.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let got = receive_on(port);
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let hook = format!("http://127.0.0.1:{port}/hook");
    let out = ok(&cli(
        &[
            "webhooks",
            "create",
            "--endpoint",
            &hook,
            "--event",
            "key.revoked",
        ],
        &url,
        &root,
    ));
    assert!(
        out.contains("signing secret (shown only this once): whsec_"),
        "{out}"
    );
    let listed: Value =
        serde_json::from_str(&ok(&cli(&["webhooks", "list", "--json"], &url, &root))).unwrap();
    let id = listed["webhooks"][0]["id"].as_str().unwrap().to_owned();
    assert!(ok(&cli(&["webhooks", "list"], &url, &root)).contains(&id));
    let out = ok(&cli(&["webhooks", "test", &id], &url, &root));
    assert!(out.contains("test event queued: msg_"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while got.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the test event never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(got.lock().unwrap()[0]["type"], "webhook.test");
    let out = ok(&cli(&["webhooks", "deliveries", &id], &url, &root));
    assert!(
        out.contains("webhook.test") && out.contains("delivered"),
        "{out}"
    );

    // Bad input: one line naming the field.
    let out = cli(
        &["webhooks", "create", "--endpoint", "ftp://example.com/x"],
        &url,
        &root,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INVALID_FIELD") && err.contains("url"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The dispatcher's figures are on /metrics.
    let metrics = client()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "keyward_outbox_pending 0",
        "keyward_webhook_deliveries_total{outcome=\"delivered\"} 1",
        "keyward_rotations_total{outcome=\"rotated\"}",
        "keyward_rotations_due",
        "keyward_outbox_oldest_pending_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    ok(&cli(&["webhooks", "delete", &id], &url, &root));
    drop(server);
}

#[test]
fn cli_emergency_revocation_confirms_the_count_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let root = server.root_key.clone().unwrap();
    let url = server.url.clone();
    let mut keys = Vec::new();
    for (owner, env) in [
        ("gone", "live"),
        ("gone", "live"),
        ("gone", "test"),
        ("kept", "live"),
    ] {
        let (status, created) = post(
            &format!("{url}/v1/keys"),
            &root,
            json!({"environment": env, "name": "n", "owner": owner}),
        );
        assert_eq!(status, 201, "{created}");
        keys.push(created);
    }
    let code = |key: &Value| {
        let (_, verdict) = post(
            &format!("{url}/v1/verify"),
            &root,
            json!({"key": key["key"]}),
        );
        verdict["code"].as_str().unwrap().to_owned()
    };
    let revoke = [
        "keys",
        "revoke",
        "--owner",
        "gone",
        "--reason",
        "offboarded",
    ];

    // Anything but yes at the prompt revokes nothing; the count is shown first.
    let out = cli_stdin(&revoke, &url, &root, "no\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke 3 keys"));
    assert!(keys.iter().all(|k| code(k) == "VALID"));

    // Selectors combine: the owner's live keys only.
    let out = cli_stdin(
        &[&revoke[..], &["--environment", "live"]].concat(),
        &url,
        &root,
        "yes\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 2 keys"));
    assert_eq!(
        keys.iter().map(code).collect::<Vec<_>>(),
        ["REVOKED", "REVOKED", "VALID", "VALID"]
    );

    // --yes skips the question; --json prints the server's answer.
    let out = cli(&[&revoke[..], &["--yes", "--json"]].concat(), &url, &root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["revoked"], 1);
    assert_eq!(code(&keys[2]), "REVOKED");
    let out = cli(&[&revoke[..], &["--yes"]].concat(), &url, &root);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no key matches"));

    // A leaked key found by its start; a bulk revocation with no selector cannot be spelled.
    let start = get(
        &format!("{url}/v1/keys/{}", keys[3]["id"].as_str().unwrap()),
        &root,
    )["start"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cli(&["keys", "list", "--start", &start], &url, &root);
    assert!(String::from_utf8_lossy(&out.stdout).contains(keys[3]["id"].as_str().unwrap()));
    let out = cli(&["keys", "revoke", "--reason", "r", "--yes"], &url, &root);
    assert!(!out.status.success());
    assert_eq!(code(&keys[3]), "VALID");
}
