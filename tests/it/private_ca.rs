//! TLS with a private CA (SPEC 2 rev 12, issue 12): a CA made in the test with `rcgen` signs an
//! `https://` backend, a `wss://` gateway and an `https://` `state_url` on 127.0.0.1. Each is
//! reached with `backend.ca_file` / `gateway.ca_file` and refused without it; a reload naming a
//! bad CA file is refused with the old config kept. Real servers (rustls) on loopback.
//!
//! Real time with short graces and bounded polling, not the paused clock: a TLS handshake takes
//! several loopback round trips, and the paused clock jumps to the next timer (the 10 s
//! handshake timeout) whenever the runtime is idle for an instant between them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{env, expect_call};
use crate::pki::pki;
use wa_status_sidecar::config::Config;
use wa_status_sidecar::sim::{self, SimBackend, SimGateway};
use wa_status_sidecar::Sidecar;

/// Bound of every wait; a passing run waits well under a second for each.
const WITHIN: Duration = Duration::from_secs(20);
/// Short graces, so a session seen open is reported within a fraction of a second.
const DEBOUNCE: &str = "[debounce]\nconnect_grace = \"100ms\"\ndisconnect_grace = \"1s\"";

/// Polls `condition` (real time, every 20 ms) until it holds; panics naming `what` after [`WITHIN`].
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTPS server on loopback.
struct Https {
    addr: SocketAddr,
    /// The path of every request served (a refused handshake serves none).
    requests: mpsc::UnboundedReceiver<String>,
    /// TCP connections accepted, handshakes refused included.
    connections: Arc<AtomicUsize>,
}

/// An HTTPS server answering every request with `answer`.
async fn https(server: Arc<rustls::ServerConfig>, answer: &'static str) -> Https {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let (tx, requests) = mpsc::unbounded_channel();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = request.uri().path().to_string();
                        let _ = request.into_body().collect().await;
                        let _ = tx.send(path);
                        Ok::<_, std::convert::Infallible>(Response::new(answer.to_string()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Https {
        addr,
        requests,
        connections,
    }
}

/// A `wss://` gateway that sends `frame` on every link and keeps it open.
async fn wss_gateway(server: Arc<rustls::ServerConfig>, frame: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, frame) = (acceptor.clone(), frame.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                if ws.send(Message::text(frame)).await.is_err() {
                    return;
                }
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
            });
        }
    });
    addr
}

fn write_ca(dir: &Path, pem: &str) -> PathBuf {
    let path = dir.join("private-ca.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn config(dir: &Path, gateway: &str, backend: &str) -> Config {
    let text = format!(
        r#"
[gateway]
{gateway}

[backend]
{backend}

{DEBOUNCE}

[tenants]
ids = ["business_1"]

[state]
dir = "{state}"

[admin]
listen = "127.0.0.1:0"
"#,
        state = dir.join("state").display(),
    );
    Config::from_toml_str(&text, dir, &env()).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn an_https_backend_signed_by_a_private_ca_is_reached_with_backend_ca_file_only() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &pki.ca_pem);
    let gateway = SimGateway::start().await.unwrap();
    gateway.set_snapshot("business_1", sim::baileys_open());
    let mut backend = https(pki.server.clone(), r#"{"ok": true}"#).await;
    let gateway_lines = format!("url = \"{}\"", gateway.url_template());
    let url = format!("url = \"https://127.0.0.1:{}\"", backend.addr.port());

    // Without the CA: the certificate is refused, nothing arrives, the error says why.
    let sidecar = Sidecar::start(config(dir.path(), &gateway_lines, &url))
        .await
        .unwrap();
    let error = || sidecar.tenant("business_1").unwrap().last_error;
    until("a failed delivery", || error().is_some()).await;
    let error = error().unwrap();
    assert!(error.contains("certificate"), "{error}");
    assert!(backend.connections.load(Ordering::SeqCst) >= 1);
    assert!(
        backend.requests.try_recv().is_err(),
        "a call crossed an untrusted TLS"
    );
    sidecar.shutdown().await;

    // With it: the owed delivery goes out over TLS.
    let with = format!("{url}\nca_file = \"{}\"", ca.display());
    let sidecar = Sidecar::start(config(dir.path(), &gateway_lines, &with))
        .await
        .unwrap();
    let path = tokio::time::timeout(WITHIN, backend.requests.recv())
        .await
        .expect("a call")
        .unwrap();
    assert_eq!(path, "/api/internal/whatsapp/status-webhook");
    until("the delivery settled", || {
        sidecar.tenant("business_1").unwrap().owed.is_none()
    })
    .await;
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_wss_gateway_signed_by_a_private_ca_is_reached_with_gateway_ca_file_only() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &pki.ca_pem);
    let gateway = wss_gateway(pki.server.clone(), sim::baileys_open()).await;
    let backend = SimBackend::start().await.unwrap();
    let url = format!("url = \"wss://127.0.0.1:{}/ws/{{tenant}}\"", gateway.port());
    let backend_lines = format!("url = \"{}\"", backend.url());

    let sidecar = Sidecar::start(config(dir.path(), &url, &backend_lines))
        .await
        .unwrap();
    let error = || sidecar.tenant("business_1").unwrap().link_error;
    until("a refused handshake", || error().is_some()).await;
    let error = error().unwrap();
    assert!(
        error.contains("TLS handshake") && error.contains("certificate"),
        "{error}"
    );
    assert_ne!(sidecar.tenant("business_1").unwrap().link, "up");
    assert!(backend.try_next_call().is_none());
    sidecar.shutdown().await;

    let with = format!("{url}\nca_file = \"{}\"", ca.display());
    let sidecar = Sidecar::start(config(dir.path(), &with, &backend_lines))
        .await
        .unwrap();
    let call = expect_call(&backend, WITHIN).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("business_1", "connected")
    );
    assert_eq!(sidecar.tenant("business_1").unwrap().link, "up");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn an_https_state_url_signed_by_a_private_ca_is_trusted_with_gateway_ca_file_only() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &pki.ca_pem);
    // A plain ws:// gateway that sends no snapshot: only the state_url tells the state.
    let gateway = SimGateway::start().await.unwrap();
    let mut states = https(pki.server.clone(), r#"{"status": "WORKING"}"#).await;
    let backend = SimBackend::start().await.unwrap();
    let lines = format!(
        "url = \"{}\"\nstate_url = \"https://127.0.0.1:{}/api/sessions/{{tenant}}\"",
        gateway.url_template(),
        states.addr.port()
    );
    let backend_lines = format!("url = \"{}\"", backend.url());

    let sidecar = Sidecar::start(config(dir.path(), &lines, &backend_lines))
        .await
        .unwrap();
    until("a fetch attempt", || {
        states.connections.load(Ordering::SeqCst) >= 1
    })
    .await;
    // Far longer than the fetch and the 100 ms grace take.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        states.requests.try_recv().is_err(),
        "a fetch crossed an untrusted TLS"
    );
    assert!(backend.try_next_call().is_none());
    sidecar.shutdown().await;

    let with = format!("{lines}\nca_file = \"{}\"", ca.display());
    let sidecar = Sidecar::start(config(dir.path(), &with, &backend_lines))
        .await
        .unwrap();
    let call = expect_call(&backend, WITHIN).await;
    assert_eq!(call.status, "connected");
    assert_eq!(
        states.requests.recv().await.unwrap(),
        "/api/sessions/business_1"
    );
    sidecar.shutdown().await;
}

/// The CA file is read again at a reload: one that rustls cannot use refuses the reload (both
/// `backend.ca_file` and `gateway.ca_file`) and the old settings keep working.
#[tokio::test]
async fn a_reload_naming_a_bad_ca_file_is_refused_and_the_old_config_kept() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &pki.ca_pem);
    let gateway = SimGateway::start().await.unwrap();
    gateway.set_snapshot("business_1", sim::baileys_open());
    let mut backend = https(pki.server.clone(), r#"{"ok": true}"#).await;
    let gateway_lines = format!("url = \"{}\"", gateway.url_template());
    let port = backend.addr.port();
    let backend_lines = |ca: &Path| {
        format!(
            "url = \"https://127.0.0.1:{port}\"\nca_file = \"{}\"",
            ca.display()
        )
    };
    let sidecar = Sidecar::start(config(dir.path(), &gateway_lines, &backend_lines(&ca)))
        .await
        .unwrap();
    tokio::time::timeout(WITHIN, backend.requests.recv())
        .await
        .expect("the first call")
        .unwrap();
    until("the delivery settled", || {
        sidecar.tenant("business_1").unwrap().owed.is_none()
    })
    .await;

    // The configs are loaded while the file holds the CA, and the file goes bad before the
    // reload: a block of base64 that decodes to a DER SEQUENCE, but no certificate.
    std::fs::create_dir(dir.path().join("bad")).unwrap();
    let bad = write_ca(&dir.path().join("bad"), &pki.ca_pem);
    let bad_gateway = format!("{gateway_lines}\nca_file = \"{}\"", bad.display());
    let bad_backend = config(dir.path(), &gateway_lines, &backend_lines(&bad));
    let bad_gateway = config(dir.path(), &bad_gateway, &backend_lines(&ca));
    let not_a_certificate = "-----BEGIN CERTIFICATE-----\nMAMBAgM=\n-----END CERTIFICATE-----\n";
    std::fs::write(&bad, not_a_certificate).unwrap();
    for (config, key) in [
        (bad_backend, "backend.ca_file"),
        (bad_gateway, "gateway.ca_file"),
    ] {
        let error = sidecar.reload(config).unwrap_err().to_string();
        assert!(
            error.contains(key) && error.contains(&bad.display().to_string()),
            "{error}"
        );
    }
    // Loaded now, the config itself is refused: `check` and SIGHUP say so before any reload.
    let text = format!("[backend]\nca_file = \"{}\"", bad.display());
    let error = Config::from_toml_str(&text, dir.path(), &env()).unwrap_err();
    assert!(
        error.problems.iter().any(|p| p.path == "backend.ca_file"),
        "{error}"
    );

    // The old client still trusts the CA: the next transition is delivered over TLS.
    gateway.send("business_1", &sim::baileys_close(401, "Connection Failure"));
    tokio::time::timeout(WITHIN, backend.requests.recv())
        .await
        .expect("the logout call")
        .unwrap();
    sidecar.shutdown().await;
}
