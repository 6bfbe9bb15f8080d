//! Slow and idle clients cannot starve the server: a header-read timeout and a connection
//! limit, tried with thousands of half-sent requests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use keyward_server::ServerConfig;
use keyward_testkit::spawn_app_with;
use reqwest::Method;
use serde_json::json;

/// Opens `n` connections that each send half a request header and then nothing.
async fn slow_clients(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let half = b"POST /v1/verify HTTP/1.1\r\nhost: keyward\r\ncontent-type: appl";
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.writable().await.unwrap();
        stream.try_write(half).unwrap();
        out.push(stream);
    }
    out
}

/// Whether the server has closed `stream` (EOF or reset), waiting at most `within`.
async fn closed_by_server(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let mut buf = [0u8; 512];
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            // A 408 or 400 answer before the close counts as closed; read on to the EOF.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.readable()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_sent_headers_do_not_starve_health_or_verify() {
    let app = spawn_app_with(ServerConfig {
        header_read_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    })
    .await;
    let key = app.create_key("live", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let slow = slow_clients(app.addr, 2000).await;
    let started = Instant::now();
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let (status, verdict) = app
        .call(Method::POST, "/v1/verify", Some(json!({"key": key})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(verdict["code"], "VALID");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "health and verify took {took:?}"
    );
    // The slow clients are cut off once the header-read timeout has passed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut closed = 0;
    for stream in &slow {
        if closed_by_server(stream, Duration::from_secs(3)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, slow.len(), "slow clients left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_new_connections_push_out_idle_ones_never_a_serving_one() {
    let app = spawn_app_with(ServerConfig {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    })
    .await;
    // One connection with a request in flight: its body is still coming.
    let busy = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    busy.writable().await.unwrap();
    busy.try_write(
        b"POST /v1/verify HTTP/1.1\r\nhost: keyward\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"key\":",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Idle clients take every other slot, then as many again arrive: each pushes out the
    // oldest idle one, and the one serving stays.
    let first = slow_clients(app.addr, 63).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = slow_clients(app.addr, 63).await;
    let mut pushed_out = 0;
    for stream in &first {
        if closed_by_server(stream, Duration::from_secs(2)).await {
            pushed_out += 1;
        }
    }
    assert_eq!(
        pushed_out,
        first.len(),
        "the older idle connections made way"
    );
    assert!(
        !closed_by_server(&busy, Duration::from_millis(200)).await,
        "a connection serving a request is never pushed out"
    );
    // The server is full of idle clients, yet health and verify answer at once.
    let started = Instant::now();
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(second);
}
