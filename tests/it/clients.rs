//! Every client of the sidecar refuses redirects and caps what it reads (SPEC 2 rev 12, issue 12):
//! `state_url` and the `status` command against real loopback servers that redirect (with a
//! credential header that must not travel) and that send huge bodies. The webhook's own cases
//! are unit tests in `src/webhook.rs` (`a_redirect_is_a_wrong_url_and_is_not_followed`,
//! `an_endless_body_is_not_read_past_the_limit`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::{config_with, expect_no_call, DEFAULT_DEBOUNCE};
use wa_status_sidecar::sim::{SimBackend, SimGateway};
use wa_status_sidecar::{status, Sidecar};

const MINUTE: Duration = Duration::from_secs(60);
const API_KEY: &str = "waha-key-6d1f";

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A server that records the headers of every request and answers `answer`.
async fn recording(answer: &'static str) -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(headers);
            answer
        }
    });
    (serve(app).await, seen)
}

/// A server that answers every request with a redirect to `target`, recording the headers.
async fn redirecting(target: String) -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let (log, target) = (log.clone(), target.clone());
        async move {
            log.lock().unwrap().push(headers);
            (StatusCode::FOUND, [("location", target)], "")
        }
    });
    (serve(app).await, seen)
}

/// A raw server that answers each connection with `head` and then streams `chunk` until the
/// client hangs up (or `limit` bytes); returns its address and the body bytes it got out.
async fn streaming(head: &'static str, limit: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
                let mut sent = 0;
                while sent < limit && stream.write_all(chunk.as_bytes()).await.is_ok() {
                    sent += 0x10000;
                    counter.fetch_add(0x10000, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, written)
}

fn state_url_config(
    gateway: &SimGateway,
    backend: &SimBackend,
    dir: &std::path::Path,
    state_url: &str,
) -> wa_status_sidecar::config::Config {
    config_with(
        "per-tenant",
        &gateway.url_template(),
        &format!("state_url = \"{state_url}\"\n[gateway.headers]\nX-Api-Key = \"{API_KEY}\""),
        backend,
        dir,
        &["business_1"],
        DEFAULT_DEBOUNCE,
    )
}

#[tokio::test(start_paused = true)]
async fn a_state_url_redirect_is_not_followed_and_the_gateway_key_does_not_travel() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Were it reached, the target would say the session is up: a call the rules never decided.
    let (target, stolen) = recording(r#"{"status": "WORKING"}"#).await;
    let (redirect, asked) = redirecting(format!("http://{target}/steal")).await;
    let config = state_url_config(
        &gateway,
        &backend,
        dir.path(),
        &format!("http://{redirect}/api/sessions/{{tenant}}"),
    );
    let sidecar = Sidecar::start(config).await.unwrap();

    expect_no_call(&backend, 2 * MINUTE).await;
    let first = asked.lock().unwrap().first().cloned();
    let first = first.expect("the state_url was fetched");
    assert_eq!(
        first["x-api-key"], API_KEY,
        "the configured host gets the key"
    );
    assert!(
        stolen.lock().unwrap().is_empty(),
        "the redirect target got a request"
    );
    assert_eq!(sidecar.tenant("business_1").unwrap().stable, None);
    sidecar.shutdown().await;
}

/// The finding of issue 12: four answers of 100 MiB made a 484 MiB peak. Now each read stops
/// at 64 KiB and the connection is dropped.
#[tokio::test(start_paused = true)]
async fn a_huge_state_url_answer_is_cut_at_64_kib_and_ignored() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n";
    let (addr, written) = streaming(head, 100 << 20).await;
    let config = state_url_config(
        &gateway,
        &backend,
        dir.path(),
        &format!("http://{addr}/api/sessions/{{tenant}}"),
    );
    let sidecar = Sidecar::start(config).await.unwrap();
    gateway.wait_accepted("business_1", 1).await;
    for connects in 2..=4 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        gateway.drop_links("business_1");
        gateway.wait_accepted("business_1", connects).await;
    }
    expect_no_call(&backend, MINUTE).await;
    let out = written.load(Ordering::SeqCst);
    assert!(out >= 4 * 0x10000, "four fetches each got at least a chunk");
    // What the kernel's socket buffers took before the sidecar hung up, for four fetches; far
    // below the 400 MiB offered.
    assert!(out < 32 << 20, "the server got {} MiB out", out >> 20);
    assert_eq!(sidecar.tenant("business_1").unwrap().stable, None);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn status_does_not_follow_a_redirect() {
    let (target, reached) = recording("[]").await;
    let (redirect, _) = redirecting(format!("http://{target}/tenants")).await;
    let error = status::fetch(&format!("http://{redirect}"))
        .await
        .unwrap_err();
    assert!(
        error.contains("302") && error.contains("redirect"),
        "{error}"
    );
    assert!(reached.lock().unwrap().is_empty());
}

#[tokio::test]
async fn status_reads_at_most_16_mib() {
    // Announced too large: refused before reading.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let announced = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n[",
                status::BODY_LIMIT + 1
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.read(&mut request).await;
        }
    });
    let error = status::fetch(&format!("http://{announced}"))
        .await
        .unwrap_err();
    assert!(error.contains("larger than 16 MiB"), "{error}");

    // Streamed without a length: cut at the limit.
    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n[\r\n";
    let (streamed, written) = streaming(head, 200 << 20).await;
    let error = status::fetch(&format!("http://{streamed}"))
        .await
        .unwrap_err();
    assert!(error.contains("larger than 16 MiB"), "{error}");
    assert!(written.load(Ordering::SeqCst) < 64 << 20);
}

/// The finding of issue 12: a password in the gateway URL ended up in a disconnect reason, i.e.
/// in the backend and the browser. Every link error is built without the URL.
#[tokio::test(start_paused = true)]
async fn a_password_or_key_in_the_gateway_url_never_reaches_a_reason() {
    let backend = SimBackend::start().await.unwrap();
    let gateway = SimGateway::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let plain = gateway.url_template().replace("ws://", "");
    // A refused connection, and a TLS handshake with a server that speaks no TLS.
    let urls = format!(
        "[tenants.urls]\nbusiness_1 = \"ws://admin:hunter2@{refused}/ws/business_1?api_key=k3y-9\"\n\
         business_2 = \"wss://admin:hunter2@{}?api_key=k3y-9\"",
        plain.replace("{tenant}", "business_2")
    );
    let config = config_with(
        "per-tenant",
        &gateway.url_template(),
        "",
        &backend,
        dir.path(),
        &["business_1", "business_2"],
        &format!("[debounce]\ngateway_down_grace = \"1m\"\n{urls}"),
    );
    let sidecar = Sidecar::start(config).await.unwrap();
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let call = crate::common::expect_call(&backend, 3 * MINUTE).await;
        assert_eq!(call.status, "disconnected");
        reasons.push(call.reason.unwrap_or_default());
    }
    assert!(
        reasons.iter().any(|r| r.ends_with("connection refused"))
            && reasons.iter().any(|r| r.contains("TLS handshake")),
        "{reasons:?}"
    );
    let shown = format!("{reasons:?} {:?}", sidecar.tenants());
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("gateway unreachable for 1m")),
        "{shown}"
    );
    assert!(
        !shown.contains("hunter2") && !shown.contains("k3y-9"),
        "{shown}"
    );
    sidecar.shutdown().await;
}
