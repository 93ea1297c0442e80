//! End-to-end tests of the library: a real sidecar against a simulated gateway (real WebSocket
//! server) and a recording backend (real HTTP server), all on 127.0.0.1, under tokio's paused
//! clock so graces and backoffs pass instantly and deterministically.

use std::time::Duration;

use crate::common::{eventually, expect_call, expect_no_call, rig, DEFAULT_DEBOUNCE, SECRET};
use wa_status_sidecar::sim::{self, Reply};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn a_transition_reaches_the_backend_with_the_exact_body_and_headers() {
    let rig = rig().await;
    rig.gateway.set_snapshot("business_1", sim::baileys_open());
    let sidecar = rig.start(&["business_1"]).await;

    // A tenant seen for the first time has its first stable state reported once.
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(call.path, "/api/internal/whatsapp/status-webhook");
    assert_eq!(
        call.body,
        r#"{"tenant_id":"business_1","status":"connected","reason":null}"#
    );
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.header("x-internal-secret"), Some(SECRET));
    assert_eq!(
        call.header("user-agent"),
        Some(concat!("wa-status-sidecar/", env!("CARGO_PKG_VERSION")))
    );
    let key = call.header("idempotency-key").unwrap();
    assert_eq!(key.len(), 32);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()));
    let changed_at = call.header("x-status-changed-at").unwrap();
    humantime::parse_rfc3339(changed_at).expect("X-Status-Changed-At is RFC 3339");

    // A logout is terminal: reported at once with the Boom message and code.
    rig.gateway
        .send("business_1", &sim::baileys_close(401, "Connection Failure"));
    let call = tokio::time::timeout(Duration::from_secs(1), rig.backend.next_call())
        .await
        .expect("a terminal close is reported at once")
        .unwrap();
    assert_eq!(
        call.body,
        r#"{"tenant_id":"business_1","status":"disconnected","reason":"logged out (code 401): Connection Failure"}"#
    );
    assert_ne!(call.header("idempotency-key"), Some(key));

    expect_no_call(&rig.backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_required_close_reopened_within_the_grace_makes_no_call() {
    let rig = rig().await;
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;
    assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");

    rig.gateway.send(
        "b1",
        &sim::baileys_close(515, "Stream Errored (restart required)"),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.gateway.send("b1", &sim::baileys_connecting());
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.gateway.send("b1", &sim::baileys_open());

    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert!(sidecar.metrics().flaps_suppressed.get() >= 1);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_500_then_200_delivers_the_transition_once_with_the_same_key() {
    let rig = rig().await;
    rig.backend
        .push_replies([Reply::status(500), Reply::status(503)]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    let first = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(first.answered, 500);
    let second = expect_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(second.answered, 503);
    let third = expect_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(third.answered, 200);
    for call in [&second, &third] {
        assert_eq!(call.body, first.body);
        assert_eq!(
            call.header("idempotency-key"),
            first.header("idempotency-key")
        );
        assert_eq!(
            call.header("x-status-changed-at"),
            first.header("x-status-changed-at")
        );
    }
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    let metrics = sidecar.metrics();
    assert_eq!(metrics.webhook_of("retry"), 2);
    assert_eq!(metrics.webhook_of("delivered"), 1);
    assert_eq!(metrics.owed.get(), 0);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let rig = rig().await;
    rig.backend
        .push_replies([Reply::status(429).with_header("retry-after", "120")]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    let first = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(first.answered, 429);
    let asked_at = tokio::time::Instant::now();
    let second = expect_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(second.answered, 200);
    let waited = asked_at.elapsed();
    assert!(
        waited >= Duration::from_secs(119) && waited <= Duration::from_secs(122),
        "retried after {waited:?}, Retry-After said 120s"
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_401_marks_a_credentials_fault_until_a_reload_fixes_it() {
    let rig = rig().await;
    rig.backend.set_default(Reply::status(401));
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    assert_eq!(expect_call(&rig.backend, MINUTE).await.answered, 401);
    eventually(
        Duration::from_secs(1),
        "the credentials fault is recorded",
        || {
            sidecar
                .not_ready_reasons()
                .iter()
                .any(|r| r.contains("X-INTERNAL-SECRET"))
        },
    )
    .await;
    let fault = sidecar
        .not_ready_reasons()
        .into_iter()
        .find(|r| r.contains("X-INTERNAL-SECRET"));
    let fault = fault.expect("a 401 is a credentials fault");
    assert!(fault.contains("INTERNAL_SHARED_SECRET"), "{fault}");
    assert!(
        !fault.contains(SECRET),
        "the secret must never appear: {fault}"
    );

    // Retried every 30 s while the fault lasts.
    let asked_at = tokio::time::Instant::now();
    assert_eq!(expect_call(&rig.backend, MINUTE).await.answered, 401);
    let waited = asked_at.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );

    // The operator fixes the secret and reloads: the delivery goes at once and readiness returns.
    rig.backend.set_default(Reply::ok());
    let config = crate::common::config(
        "per-tenant",
        &rig.gateway.url_template(),
        &rig.backend,
        rig.dir.path(),
        &["b1"],
        DEFAULT_DEBOUNCE,
    );
    sidecar.reload(config).unwrap();
    let call = tokio::time::timeout(Duration::from_secs(1), rig.backend.next_call())
        .await
        .expect("a reload retries at once")
        .unwrap();
    assert_eq!(call.answered, 200);
    eventually(
        Duration::from_secs(1),
        "readiness returns after a success",
        || {
            !sidecar
                .not_ready_reasons()
                .iter()
                .any(|r| r.contains("X-INTERNAL-SECRET"))
        },
    )
    .await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_400_drops_that_delivery_and_counts_it() {
    let rig = rig().await;
    rig.backend.push_replies([Reply::status(400)]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    assert_eq!(expect_call(&rig.backend, MINUTE).await.answered, 400);
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    let metrics = sidecar.metrics();
    assert_eq!(metrics.webhook_of("refused"), 1);
    assert_eq!(metrics.owed.get(), 0);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_state_file_written_by_one_run_is_honoured_by_the_next() {
    let rig = rig().await;
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    rig.gateway.set_snapshot("b2", sim::baileys_open());
    let sidecar = rig.start(&["b1", "b2"]).await;
    let mut seen = vec![
        expect_call(&rig.backend, MINUTE).await.tenant_id,
        expect_call(&rig.backend, MINUTE).await.tenant_id,
    ];
    seen.sort();
    assert_eq!(seen, ["b1", "b2"]);
    sidecar.shutdown().await;

    // Same sessions, second run: nothing changed, so nothing is sent.
    let sidecar = rig.start(&["b1", "b2"]).await;
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    // A real change is still reported.
    rig.gateway
        .send("b2", &sim::baileys_close(401, "Connection Failure"));
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("b2", "disconnected")
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_owed_delivery_survives_a_restart_with_the_same_key() {
    let rig = rig().await;
    rig.backend.set_default(Reply::status(503));
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;
    let first = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(first.answered, 503);
    // The shutdown flush tries once more; the backend is still failing.
    sidecar.shutdown().await;
    while rig.backend.try_next_call().is_some() {}

    rig.backend.set_default(Reply::ok());
    let sidecar = rig.start(&["b1"]).await;
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(call.answered, 200);
    assert_eq!(
        call.header("idempotency-key"),
        first.header("idempotency-key")
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_gateway_restart_within_the_grace_makes_no_call() {
    let rig = rig().await;
    let tenants = ["b1", "b2", "b3"];
    for t in tenants {
        rig.gateway.set_snapshot(t, sim::baileys_open());
    }
    let sidecar = rig.start(&tenants).await;
    for _ in tenants {
        assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");
    }

    // The gateway restarts: every link drops; sessions come back reconnecting, then open.
    for t in tenants {
        rig.gateway.set_snapshot(t, sim::baileys_connecting());
    }
    rig.gateway.drop_all();
    for t in tenants {
        rig.gateway.wait_accepted(t, 2).await;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    for t in tenants {
        rig.gateway.send(t, &sim::baileys_open());
    }
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_half_open_link_is_replaced_within_the_idle_timeout() {
    let rig = rig().await;
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;
    rig.gateway.wait_accepted("b1", 1).await;

    rig.gateway.silence("b1");
    let silenced_at = tokio::time::Instant::now();
    rig.gateway.wait_accepted("b1", 2).await;
    let replaced_after = silenced_at.elapsed();
    assert!(
        replaced_after <= Duration::from_secs(45) + Duration::from_secs(1),
        "replaced after {replaced_after:?}"
    );
    assert!(sidecar.metrics().reconnects.get() >= 1);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_oversize_frame_closes_only_that_link() {
    let rig = rig().await;
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    rig.gateway.set_snapshot("b2", sim::baileys_open());
    let sidecar = rig.start(&["b1", "b2"]).await;
    rig.gateway.wait_accepted("b1", 1).await;
    rig.gateway.wait_accepted("b2", 1).await;

    let huge = format!(
        r#"{{"event":"connection.update","data":{{"connection":"open","pad":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    rig.gateway.send("b1", &huge);
    rig.gateway.wait_accepted("b1", 2).await;
    assert_eq!(rig.gateway.accepted("b2"), 1, "the other link is untouched");
    assert_eq!(sidecar.metrics().frames_oversize.get(), 1);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn garbage_from_the_gateway_changes_nothing() {
    let rig = rig().await;
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;
    assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");

    for frame in [
        "not json",
        "[]",
        "{}",
        r#"{"event":"messages.upsert","data":{}}"#,
        r#"{"event":"connection.update","data":{"connection":42}}"#,
        r#"{"connection":"close","lastDisconnect":{"error":{}}}"#,
        &"[".repeat(10_000),
    ] {
        rig.gateway.send("b1", frame);
    }
    rig.gateway.send_binary("b1", vec![0, 159, 146, 150]);
    // A bare close with an empty error is a real (transient) drop; it heals within the grace.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.gateway.send("b1", &sim::baileys_open());
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    let metrics = sidecar.metrics();
    assert!(metrics.frames_of("not_json") >= 2);
    assert_eq!(metrics.frames_of("binary"), 1);
    assert_eq!(
        rig.gateway.accepted("b1"),
        1,
        "garbage never drops the link"
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_flap_penalty_is_journalled_at_once_and_survives_a_restart() {
    let rig = rig().await;
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;
    assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");

    // One drop healed within the grace: no call, but a flap.
    rig.gateway
        .send("b1", &sim::baileys_close(428, "Connection Closed"));
    eventually(Duration::from_secs(1), "the flap is seen", || {
        sidecar.tenant("b1").unwrap().flap_penalty > 900.0
    })
    .await;
    rig.gateway.send("b1", &sim::baileys_open());

    // Durable before any compaction: the journal's last line for b1 carries the penalty (once
    // the journal writer, a thread of its own, has written what it was handed).
    sidecar.settle_state().await;
    let journal = crate::common::journal_text(rig.dir.path());
    let last: serde_json::Value = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|l| l["tenant"] == "b1")
        .expect("a journal line for b1");
    let penalty = last["record"]["penalty"].as_f64().unwrap();
    assert!((900.0..=1000.0).contains(&penalty), "{penalty}");

    expect_no_call(&rig.backend, MINUTE).await;
    sidecar.shutdown().await;
    let sidecar = rig.start(&["b1"]).await;
    let restored = sidecar.tenant("b1").unwrap().flap_penalty;
    assert!(
        restored > 800.0,
        "the penalty survives a restart: {restored}"
    );
    sidecar.shutdown().await;
}
