//! Compatibility with other gateways: the sidecar in `shared` mode (one WebSocket for every
//! tenant) against WAHA `session.status` and Evolution API `connection.update` events, and in
//! `per-tenant` mode against a gateway that sends no snapshot but serves `gateway.state_url`.
//! Real servers on 127.0.0.1 (the simulated gateway, the recording backend, a small state
//! server), tokio's paused clock for the graces, as in tests/core.rs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{config, evolution, expect_call, expect_no_call, waha, DEFAULT_DEBOUNCE};
use wa_status_sidecar::config::Config;
use wa_status_sidecar::sim::{self, SimBackend, SimGateway};
use wa_status_sidecar::Sidecar;

const MINUTE: Duration = Duration::from_secs(60);
/// "At once": a terminal state is reported without waiting for any grace.
const AT_ONCE: Duration = Duration::from_secs(1);
const TENANTS: [&str; 3] = ["b1", "b2", "b3"];

type Seen = (String, String, Option<String>);

/// The next `n` calls as (tenant, status, reason), sorted by tenant: the order across tenants
/// is not specified.
async fn calls(backend: &SimBackend, n: usize, within: Duration) -> Vec<Seen> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let call = expect_call(backend, within).await;
        seen.push((call.tenant_id, call.status, call.reason));
    }
    seen.sort();
    seen
}

fn seen(tenant: &str, status: &str, reason: Option<&str>) -> Seen {
    (
        tenant.to_string(),
        status.to_string(),
        reason.map(str::to_string),
    )
}

struct Shared {
    gateway: SimGateway,
    backend: SimBackend,
    _dir: tempfile::TempDir,
    sidecar: Sidecar,
}

/// A sidecar in shared mode for [`TENANTS`], its one link already accepted by the gateway.
async fn shared() -> Shared {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        "shared",
        &gateway.shared_url(),
        &backend,
        dir.path(),
        &TENANTS,
        DEFAULT_DEBOUNCE,
    );
    let sidecar = Sidecar::start(config).await.unwrap();
    gateway.wait_accepted(sim::SHARED, 1).await;
    Shared {
        gateway,
        backend,
        _dir: dir,
        sidecar,
    }
}

impl Shared {
    fn send(&self, frame: &str) {
        self.gateway.send(sim::SHARED, frame);
    }

    /// Every tenant WORKING and reported connected once.
    async fn all_connected(&self, frame: impl Fn(&str) -> String) {
        for t in TENANTS {
            self.send(&frame(t));
        }
        let expected: Vec<Seen> = TENANTS.iter().map(|t| seen(t, "connected", None)).collect();
        assert_eq!(calls(&self.backend, 3, MINUTE).await, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn waha_session_status_events_over_one_socket() {
    let rig = shared().await;
    rig.all_connected(|t| waha(t, "WORKING")).await;
    assert_eq!(
        rig.gateway.accepted(sim::SHARED),
        1,
        "one socket for all tenants"
    );

    // FAILED, SCAN_QR_CODE and STOPPED are terminal: reported at once, each for its tenant.
    rig.send(&waha("b1", "FAILED"));
    rig.send(&waha("b2", "SCAN_QR_CODE"));
    rig.send(&waha("b3", "STOPPED"));
    assert_eq!(
        calls(&rig.backend, 3, AT_ONCE).await,
        [
            seen("b1", "disconnected", Some("WAHA session status FAILED")),
            seen(
                "b2",
                "disconnected",
                Some("not linked: waiting for QR code scan")
            ),
            seen("b3", "disconnected", Some("WAHA session status STOPPED")),
        ]
    );

    // STARTING is transient: a session that comes back WORKING is reported connected after the
    // connect grace; one that stays STARTING stays disconnected (nothing new to say).
    rig.send(&waha("b1", "STARTING"));
    rig.send(&waha("b3", "STARTING"));
    tokio::time::sleep(Duration::from_secs(30)).await;
    rig.send(&waha("b1", "WORKING"));
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str(), call.reason),
        ("b1", "connected", None)
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;

    // A connected session restarting (STARTING, then WORKING within the grace): no call.
    rig.send(&waha("b1", "STARTING"));
    tokio::time::sleep(Duration::from_secs(20)).await;
    rig.send(&waha("b1", "WORKING"));
    expect_no_call(&rig.backend, 10 * MINUTE).await;

    // STARTING that lasts the grace is a real drop.
    rig.send(&waha("b1", "STARTING"));
    let call = expect_call(&rig.backend, 2 * MINUTE).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("b1", "disconnected")
    );
    assert_eq!(call.reason.as_deref(), Some("session reconnecting"));
    rig.sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn evolution_connection_update_events_over_one_socket() {
    let rig = shared().await;
    rig.all_connected(|t| evolution(t, "open", 200)).await;

    // A close with a terminal code and `refused` are reported at once.
    rig.send(&evolution("b1", "close", 401));
    rig.send(&evolution("b2", "refused", 401));
    assert_eq!(
        calls(&rig.backend, 2, AT_ONCE).await,
        [
            seen("b1", "disconnected", Some("logged out (code 401)")),
            seen("b2", "disconnected", Some("connection refused (code 401)")),
        ]
    );

    // A transient close (428) re-opened within the grace: no call.
    rig.send(&evolution("b3", "close", 428));
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.send(&evolution("b3", "connecting", 200));
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.send(&evolution("b3", "open", 200));
    expect_no_call(&rig.backend, 10 * MINUTE).await;

    // A transient close that lasts the grace is reported with its code, once.
    rig.send(&evolution("b3", "close", 440));
    let asked_at = tokio::time::Instant::now();
    let call = expect_call(&rig.backend, 2 * MINUTE).await;
    assert!(asked_at.elapsed() >= MINUTE, "{:?}", asked_at.elapsed());
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen("b3", "disconnected", Some("connection closed (code 440)"))
    );

    // Back open: connected after the connect grace.
    rig.send(&evolution("b1", "open", 200));
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen("b1", "connected", None)
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    rig.sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn events_for_unconfigured_tenants_are_ignored_and_counted() {
    let rig = shared().await;
    rig.all_connected(|t| waha(t, "WORKING")).await;

    rig.send(&waha("stranger", "FAILED"));
    rig.send(&evolution("stranger", "refused", 401));
    rig.send(&waha("b1x", "STOPPED"));
    // A Baileys frame names no tenant: a shared link cannot route it.
    rig.send(&sim::baileys_close(401, "Connection Failure"));
    // The configured tenants are untouched, and a frame after the ignored ones still counts.
    rig.send(&waha("b2", "FAILED"));
    let call = expect_call(&rig.backend, AT_ONCE).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("b2", "disconnected")
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;

    let metrics = rig.sidecar.metrics();
    assert_eq!(metrics.frames_unknown_tenant.get(), 3);
    assert_eq!(metrics.frames_of("unknown_shape"), 1);
    assert_eq!(
        rig.sidecar
            .tenants()
            .iter()
            .filter(|v| v.configured)
            .count(),
        TENANTS.len(),
        "no tenant added"
    );
    assert_eq!(
        rig.gateway.accepted(sim::SHARED),
        1,
        "ignored frames never drop the link"
    );
    rig.sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shared_link_drop_healed_within_the_grace_makes_no_call() {
    let rig = shared().await;
    rig.all_connected(|t| waha(t, "WORKING")).await;

    // The gateway restarts: the one socket drops, the sidecar reconnects, the sessions come back
    // STARTING and then WORKING within the grace.
    rig.gateway.drop_all();
    rig.gateway.wait_accepted(sim::SHARED, 2).await;
    for t in TENANTS {
        rig.send(&waha(t, "STARTING"));
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    for t in TENANTS {
        rig.send(&waha(t, "WORKING"));
    }
    expect_no_call(&rig.backend, 10 * MINUTE).await;

    // A drop where the gateway says nothing after the reconnect keeps the last known state.
    rig.gateway.drop_all();
    rig.gateway.wait_accepted(sim::SHARED, 3).await;
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    let metrics = rig.sidecar.metrics();
    assert!(metrics.reconnects.get() >= 2);
    assert_eq!(metrics.links_of("up"), TENANTS.len() as i64);
    rig.sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shared_link_down_past_the_gateway_grace_reports_every_tenant() {
    let rig = shared().await;
    rig.all_connected(|t| waha(t, "WORKING")).await;

    rig.gateway.set_refusing(true);
    let down_at = tokio::time::Instant::now();
    rig.gateway.drop_all();
    let dropped = calls(&rig.backend, 3, 10 * MINUTE).await;
    let waited = down_at.elapsed();
    assert!(
        waited >= 5 * MINUTE && waited <= 5 * MINUTE + Duration::from_secs(1),
        "{waited:?}"
    );
    for (t, (tenant, status, reason)) in TENANTS.iter().zip(&dropped) {
        assert_eq!((tenant.as_str(), status.as_str()), (*t, "disconnected"));
        let reason = reason.as_deref().unwrap();
        assert!(
            reason.starts_with("gateway unreachable for 5m: ") && reason.contains("503"),
            "{reason}"
        );
    }

    // The gateway comes back and says the sessions are working.
    rig.gateway.set_refusing(false);
    let accepted = rig.gateway.accepted(sim::SHARED);
    rig.gateway.wait_accepted(sim::SHARED, accepted + 1).await;
    rig.all_connected(|t| waha(t, "WORKING")).await;
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    rig.sidecar.shutdown().await;
}

/// A gateway's `GET /sessions/{tenant}/status`: the merged Baileys state as JSON, 404 for a
/// tenant it does not know (like the Baileys kit).
#[derive(Clone, Default)]
struct StateServer {
    states: Arc<Mutex<HashMap<String, String>>>,
    fetches: Arc<Mutex<Vec<String>>>,
}

impl StateServer {
    async fn start(&self) -> std::net::SocketAddr {
        let server = self.clone();
        let handler = move |axum::extract::Path(tenant): axum::extract::Path<String>| {
            let server = server.clone();
            async move {
                server.fetches.lock().unwrap().push(tenant.clone());
                match server.states.lock().unwrap().get(&tenant) {
                    Some(state) => (
                        axum::http::StatusCode::OK,
                        [("content-type", "application/json")],
                        state.clone(),
                    ),
                    None => (
                        axum::http::StatusCode::NOT_FOUND,
                        [("content-type", "application/json")],
                        r#"{"error":"unknown tenant"}"#.to_string(),
                    ),
                }
            }
        };
        let app =
            axum::Router::new().route("/sessions/{tenant}/status", axum::routing::get(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    fn set(&self, tenant: &str, state: serde_json::Value) {
        self.states
            .lock()
            .unwrap()
            .insert(tenant.to_string(), state.to_string());
    }

    fn fetched(&self, tenant: &str) -> usize {
        self.fetches
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == tenant)
            .count()
    }
}

/// The `data` of a sim Baileys frame: the bare merged state a state endpoint serves.
fn bare(frame: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(frame).unwrap();
    value["data"].take()
}

/// A config in `mode` ("per-tenant" or "shared") whose `state_url` is the [`StateServer`] at
/// `state_addr`.
fn with_state_url(
    mode: &str,
    gateway: &SimGateway,
    state_addr: std::net::SocketAddr,
    backend: &SimBackend,
    dir: &Path,
    tenants: &[&str],
) -> Config {
    let url = match mode {
        "shared" => gateway.shared_url(),
        _ => gateway.url_template(),
    };
    crate::common::config_with(
        mode,
        &url,
        &format!("state_url = \"http://{state_addr}/sessions/{{tenant}}/status\""),
        backend,
        dir,
        tenants,
        DEFAULT_DEBOUNCE,
    )
}

#[tokio::test(start_paused = true)]
async fn per_tenant_links_learn_the_state_from_the_state_url_after_each_connect() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let states = StateServer::default();
    let state_addr = states.start().await;
    // No snapshots on the WebSocket: the state endpoint is the only source after a connect.
    let open = serde_json::json!({"connection": "open", "receivedPendingNotifications": true});
    states.set("b1", open.clone());
    let config = with_state_url(
        "per-tenant",
        &gateway,
        state_addr,
        &backend,
        dir.path(),
        &["b1", "b2"],
    );
    let sidecar = Sidecar::start(config).await.unwrap();

    // b1's state comes from the endpoint; b2 is unknown there (404) and stays unknown.
    let call = expect_call(&backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen("b1", "connected", None)
    );
    expect_no_call(&backend, 10 * MINUTE).await;
    assert!(states.fetched("b2") >= 1);
    let b2 = sidecar.tenant("b2");
    assert_eq!(b2.unwrap().stable, None);

    // Frames on the link still count: b2's session opens.
    gateway.send("b2", &sim::baileys_open());
    let call = expect_call(&backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen("b2", "connected", None)
    );

    // b1's session logs out while its link is down; the fetch after the reconnect tells.
    states.set("b1", bare(&sim::baileys_close(401, "Connection Failure")));
    let fetched = states.fetched("b1");
    gateway.drop_links("b1");
    gateway.wait_accepted("b1", 2).await;
    let call = expect_call(&backend, Duration::from_secs(5)).await;
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen(
            "b1",
            "disconnected",
            Some("logged out (code 401): Connection Failure")
        )
    );
    assert!(states.fetched("b1") > fetched);

    // The session is linked again while the link is down: the next connect's fetch says open.
    states.set("b1", open);
    gateway.drop_links("b1");
    gateway.wait_accepted("b1", 3).await;
    let call = expect_call(&backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen("b1", "connected", None)
    );

    // A state endpoint that forgot the tenant (404) keeps the last known state: no call.
    states.states.lock().unwrap().remove("b1");
    gateway.drop_links("b1");
    gateway.wait_accepted("b1", 4).await;
    expect_no_call(&backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

/// Shared mode: a tenant a reload adds while the shared link stays up has no connect of its own,
/// yet its state is fetched from `state_url` at once (the lifecycle probe saw it never fetched,
/// so a gateway that sends no snapshot never told its first state).
#[tokio::test(start_paused = true)]
async fn a_tenant_added_to_an_up_shared_link_learns_its_state_from_the_state_url() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let states = StateServer::default();
    let state_addr = states.start().await;
    let open = serde_json::json!({"connection": "open", "receivedPendingNotifications": true});
    states.set("b1", open.clone());
    states.set("b2", open);
    let shared = |tenants: &[&str]| {
        with_state_url(
            "shared",
            &gateway,
            state_addr,
            &backend,
            dir.path(),
            tenants,
        )
    };
    let sidecar = Sidecar::start(shared(&["b1"])).await.unwrap();
    let call = expect_call(&backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen("b1", "connected", None)
    );
    assert_eq!(states.fetched("b2"), 0);

    sidecar.reload(shared(&["b1", "b2"])).unwrap();
    let call = expect_call(&backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id, call.status, call.reason),
        seen("b2", "connected", None)
    );
    assert_eq!(
        gateway.accepted(sim::SHARED),
        1,
        "the shared link stayed up"
    );
    assert_eq!(states.fetched("b2"), 1);
    expect_no_call(&backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}
