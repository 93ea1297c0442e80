//! Fault injection at library level (issue 5): a real sidecar against the simulated gateway (real
//! WebSocket server) and the recording backend (real HTTP server), all on 127.0.0.1, under
//! tokio's paused clock so outages of minutes pass instantly and deterministically.
//!
//! Each test injects one fault and asserts that nothing owed is lost, that the order per tenant
//! holds and the newest state wins, and that nothing the gateway sends can change state wrongly
//! or bring the sidecar down. RELIABILITY.md at the repository root maps each fault to its test.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{
    config, eventually, expect_call, expect_no_call, key, rig, waha, DEFAULT_DEBOUNCE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wa_status_sidecar::debounce::Status;
use wa_status_sidecar::registry::TenantView;
use wa_status_sidecar::sim::{self, Call, Reply, SimBackend};
use wa_status_sidecar::Sidecar;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

fn view(sidecar: &Sidecar, tenant: &str) -> TenantView {
    sidecar
        .tenant(tenant)
        .unwrap_or_else(|| panic!("tenant {tenant} is in the registry"))
}

fn stable_is(sidecar: &Sidecar, tenant: &str, status: Status) -> bool {
    view(sidecar, tenant).stable == Some(status)
}

/// Every call that arrives within `window` (virtual time).
async fn calls_within(backend: &SimBackend, window: Duration) -> Vec<Call> {
    let deadline = Instant::now() + window;
    let mut calls = Vec::new();
    while let Ok(Some(call)) = tokio::time::timeout_at(deadline, backend.next_call()).await {
        calls.push(call);
    }
    calls
}

// ---------------------------------------------------------------------------------------------
// Backend faults
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn backend_down_at_a_transition_gets_it_once_when_back_30s_later() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1"]).await;

    rig.backend.stop();
    rig.gateway
        .send("b1", &sim::baileys_close(401, "Connection Failure"));
    eventually(SECOND, "the logout is decided", || {
        stable_is(&sidecar, "b1", Status::Disconnected)
    })
    .await;
    tokio::time::sleep(30 * SECOND).await;
    let owed = view(&sidecar, "b1")
        .owed
        .expect("owed while the backend is down");
    assert!(view(&sidecar, "b1").delivery_attempts >= 1);
    rig.backend.resume().await.unwrap();

    // The retry backoff (full jitter, base 1 s) has reached at most 64 s by now.
    let call = expect_call(&rig.backend, 2 * MINUTE).await;
    assert_eq!(
        call.body,
        r#"{"tenant_id":"b1","status":"disconnected","reason":"logged out (code 401): Connection Failure"}"#
    );
    assert_eq!(key(&call), owed.idempotency_key);
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    let metrics = sidecar.metrics();
    assert!(metrics.webhook_of("retry") >= 1);
    assert_eq!(metrics.owed.get(), 0);
    assert_eq!(
        view(&sidecar, "b1").reported.map(|r| r.status),
        Some(Status::Disconnected)
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_slower_than_the_timeout_is_retried_with_the_same_key() {
    let rig = rig().await;
    // The first answer would come after 15 s; the request timeout is 10 s.
    rig.backend
        .push_replies([Reply::ok().with_delay(15 * SECOND)]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    let first = expect_call(&rig.backend, MINUTE).await;
    let sent_at = Instant::now();
    let second = expect_call(&rig.backend, 10 * MINUTE).await;
    let waited = sent_at.elapsed();
    assert!(
        waited >= 10 * SECOND,
        "retried after {waited:?}, before the 10 s timeout"
    );
    assert_eq!(second.body, first.body);
    assert_eq!(key(&second), key(&first));
    assert_eq!(
        second.header("x-status-changed-at"),
        first.header("x-status-changed-at")
    );
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    let metrics = sidecar.metrics();
    assert_eq!(metrics.webhook_of("retry"), 1);
    assert_eq!(metrics.webhook_of("delivered"), 1);
    assert_eq!(metrics.owed.get(), 0);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn five_minutes_of_500s_end_in_one_delivery_with_one_key() {
    let rig = rig().await;
    rig.backend.set_default(Reply::status(500));
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    let first = expect_call(&rig.backend, MINUTE).await;
    let failing = calls_within(&rig.backend, 5 * MINUTE).await;
    assert!(
        failing.len() >= 3,
        "retried {} times in 5 min of 500s",
        failing.len()
    );
    rig.backend.set_default(Reply::ok());
    // Retries are at most RETRY_CAP (5 min) apart.
    let last = expect_call(&rig.backend, 5 * MINUTE + SECOND).await;
    assert_eq!(last.answered, 200);
    for call in failing.iter().chain([&last]) {
        assert_eq!(call.body, first.body);
        assert_eq!(key(call), key(&first));
    }
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    let metrics = sidecar.metrics();
    assert_eq!(metrics.webhook_of("delivered"), 1);
    assert_eq!(metrics.webhook_of("retry") as usize, failing.len() + 1);
    assert_eq!(metrics.owed.get(), 0);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_every_time_and_capped_at_five_minutes() {
    let rig = rig().await;
    rig.backend.push_replies([
        Reply::status(429).with_header("retry-after", "90"),
        Reply::status(503).with_header("retry-after", "45"),
        // A day: the sidecar caps it at RETRY_CAP rather than stalling the tenant.
        Reply::status(429).with_header("retry-after", "86400"),
    ]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    let mut previous = expect_call(&rig.backend, MINUTE).await;
    for (asked, answered_next) in [(90, 503), (45, 429), (300, 200)] {
        let at = Instant::now();
        let call = expect_call(&rig.backend, 10 * MINUTE).await;
        let waited = at.elapsed();
        assert!(
            waited >= Duration::from_secs(asked) - SECOND
                && waited <= Duration::from_secs(asked) + 2 * SECOND,
            "after {} waited {waited:?}, expected ~{asked}s",
            previous.answered
        );
        assert_eq!(call.answered, answered_next);
        assert_eq!(key(&call), key(&previous));
        previous = call;
    }
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    assert_eq!(sidecar.metrics().owed.get(), 0);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_400_drops_only_that_delivery_and_the_next_transition_still_goes() {
    let rig = rig().await;
    rig.backend.push_replies([Reply::status(400)]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    assert_eq!(expect_call(&rig.backend, MINUTE).await.answered, 400);
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    let v = view(&sidecar, "b1");
    assert!(v.owed.is_none() && v.reported.is_none(), "{v:?}");
    assert!(v.last_error.unwrap().contains("400"));
    // Readiness is not affected by a refused payload.
    assert!(sidecar.not_ready_reasons().is_empty());

    rig.gateway
        .send("b1", &sim::baileys_close(401, "Connection Failure"));
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!((call.status.as_str(), call.answered), ("disconnected", 200));
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(sidecar.metrics().webhook_of("refused"), 1);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn transitions_while_the_backend_is_down_deliver_only_the_newest_state() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1", "b2"]).await;
    rig.backend.stop();

    // b1: logged out, then back: it ends where the backend already is.
    // b2: logged out, back, logged out again: the backend must end with the second logout.
    for t in ["b1", "b2"] {
        rig.gateway
            .send(t, &sim::baileys_close(401, "first logout"));
    }
    eventually(SECOND, "both logouts decided", || {
        stable_is(&sidecar, "b1", Status::Disconnected)
            && stable_is(&sidecar, "b2", Status::Disconnected)
    })
    .await;
    let first_key = view(&sidecar, "b2").owed.unwrap().idempotency_key;
    tokio::time::sleep(5 * SECOND).await;
    for t in ["b1", "b2"] {
        rig.gateway.send(t, &sim::baileys_open());
    }
    eventually(MINUTE, "both reconnects decided", || {
        stable_is(&sidecar, "b1", Status::Connected) && stable_is(&sidecar, "b2", Status::Connected)
    })
    .await;
    assert!(
        view(&sidecar, "b1").owed.is_none(),
        "back to what the backend has: nothing owed"
    );
    rig.gateway
        .send("b2", &sim::baileys_close(401, "second logout"));
    eventually(MINUTE, "the second logout is decided", || {
        stable_is(&sidecar, "b2", Status::Disconnected)
    })
    .await;
    let second_key = view(&sidecar, "b2").owed.unwrap().idempotency_key;
    assert_ne!(first_key, second_key, "a new transition has a new key");
    tokio::time::sleep(20 * SECOND).await;

    rig.backend.resume().await.unwrap();
    let calls = calls_within(&rig.backend, 30 * MINUTE).await;
    let summary: Vec<(&str, &str, Option<&str>)> = calls
        .iter()
        .map(|c| (c.tenant_id.as_str(), c.status.as_str(), c.reason.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [(
            "b2",
            "disconnected",
            Some("logged out (code 401): second logout")
        )]
    );
    assert_eq!(key(&calls[0]), second_key);
    assert_eq!(sidecar.metrics().owed.get(), 0);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_transition_decided_during_an_in_flight_call_is_sent_after_it() {
    let rig = rig().await;
    let debounce = r#"
[debounce]
disconnect_grace = "60s"
connect_grace = "2s"
"#;
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start_with("per-tenant", &["b1"], debounce).await;
    assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");

    // The logout's call hangs for 9 s (under the 10 s timeout); the session is back and decided
    // connected 3 s in, while that call is still in flight.
    rig.backend
        .push_replies([Reply::ok().with_delay(9 * SECOND)]);
    rig.gateway.send("b1", &sim::baileys_close(401, "logout"));
    let down = expect_call(&rig.backend, SECOND).await;
    assert_eq!(down.status, "disconnected");
    tokio::time::sleep(SECOND).await;
    rig.gateway.send("b1", &sim::baileys_open());
    eventually(5 * SECOND, "connected decided while in flight", || {
        stable_is(&sidecar, "b1", Status::Connected)
    })
    .await;
    assert!(view(&sidecar, "b1").delivery_in_flight);

    let up = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(up.status, "connected");
    assert_ne!(key(&up), key(&down));
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    assert_eq!(
        view(&sidecar, "b1").reported.map(|r| r.status),
        Some(Status::Connected)
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_an_in_flight_call_still_gives_the_delivery_one_more_try() {
    let rig = rig().await;
    // The first call is in flight for 2 s and then fails; the shutdown comes 1 s into it.
    rig.backend
        .push_replies([Reply::status(503).with_delay(2 * SECOND)]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;
    let first = expect_call(&rig.backend, MINUTE).await;
    tokio::time::sleep(SECOND).await;
    assert!(view(&sidecar, "b1").delivery_in_flight);
    let owed_gauge = sidecar.metrics().owed.clone();
    sidecar.shutdown().await;

    // SPEC 5: on SIGTERM each owed delivery gets one more try within 10 s. The call in flight
    // at the signal failed after it, so the flush tries again, with the same key.
    let second = rig
        .backend
        .try_next_call()
        .expect("one more try after the in-flight call failed");
    assert_eq!((second.answered, key(&second)), (200, key(&first)));
    assert_eq!(owed_gauge.get(), 0);
}

// ---------------------------------------------------------------------------------------------
// Gateway faults
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_gateway_restart_of_every_link_makes_no_call_and_no_flap() {
    let rig = rig().await;
    let tenants: Vec<String> = (0..10).map(|i| format!("business_{i}")).collect();
    let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let sidecar = rig.start_connected(&tenants).await;

    // The gateway goes away for 20 s; its sessions come back reconnecting, then open.
    for t in &tenants {
        rig.gateway.set_snapshot(t, sim::baileys_connecting());
    }
    rig.gateway.set_refusing(true);
    rig.gateway.drop_all();
    tokio::time::sleep(20 * SECOND).await;
    rig.gateway.set_refusing(false);
    for t in &tenants {
        rig.gateway.wait_accepted(t, 2).await;
    }
    for t in &tenants {
        rig.gateway.send(t, &sim::baileys_open());
    }
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    for t in &tenants {
        let v = view(&sidecar, t);
        assert_eq!(v.stable, Some(Status::Connected));
        assert_eq!(v.flap_penalty, 0.0, "a gateway restart is not a flap: {t}");
    }
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shared_link_gateway_restart_makes_no_call() {
    let rig = rig().await;
    let tenants = ["b1", "b2", "b3"];
    let sidecar = rig.start_with("shared", &tenants, DEFAULT_DEBOUNCE).await;
    rig.gateway.wait_accepted(sim::SHARED, 1).await;
    for t in tenants {
        rig.gateway.send(sim::SHARED, &waha(t, "WORKING"));
    }
    for _ in tenants {
        assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");
    }

    rig.gateway.drop_all();
    rig.gateway.wait_accepted(sim::SHARED, 2).await;
    for t in tenants {
        rig.gateway.send(sim::SHARED, &waha(t, "STARTING"));
    }
    tokio::time::sleep(30 * SECOND).await;
    for t in tenants {
        rig.gateway.send(sim::SHARED, &waha(t, "WORKING"));
    }
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    for t in tenants {
        assert_eq!(view(&sidecar, t).flap_penalty, 0.0);
    }
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_half_open_link_is_replaced_within_the_idle_timeout_without_a_call() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1", "b2"]).await;

    rig.gateway.silence("b1");
    let silenced_at = Instant::now();
    rig.gateway.wait_accepted("b1", 2).await;
    let replaced_after = silenced_at.elapsed();
    // idle_timeout is 45 s; the first reconnect attempt waits at most RECONNECT_BASE (500 ms).
    assert!(
        replaced_after <= 45 * SECOND + SECOND,
        "replaced after {replaced_after:?}"
    );
    assert_eq!(rig.gateway.accepted("b2"), 1, "the other link is untouched");
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(view(&sidecar, "b1").link, "up");
    sidecar.shutdown().await;
}

/// A gateway that answers every WebSocket upgrade with 503, recording when each attempt came
/// and for which tenant: like `SimGateway::set_refusing`, but every refused attempt is seen.
async fn refusing_gateway() -> (String, Arc<Mutex<Vec<(String, Instant)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let template = format!("ws://{}/ws/{{tenant}}", listener.local_addr().unwrap());
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let record = attempts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let at = Instant::now();
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let tenant = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/ws/"))
                    .unwrap_or("?")
                    .to_string();
                record.lock().unwrap().push((tenant, at));
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (template, attempts)
}

#[tokio::test(start_paused = true)]
async fn a_gateway_refusing_for_minutes_is_retried_within_the_cap_and_spread() {
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (template, attempts) = refusing_gateway().await;
    let tenants: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    let tenants: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let config = config(
        "per-tenant",
        &template,
        &backend,
        dir.path(),
        &tenants,
        DEFAULT_DEBOUNCE,
    );
    let started = Instant::now();
    let sidecar = Sidecar::start(config).await.unwrap();

    // Never linked: after gateway_down_grace (5 m) each tenant is reported disconnected, once.
    let calls = calls_within(&backend, 12 * MINUTE).await;
    assert_eq!(calls.len(), tenants.len(), "one report per tenant");
    for call in &calls {
        assert_eq!(call.status, "disconnected");
        let reason = call.reason.as_deref().unwrap();
        assert!(
            reason.starts_with("gateway unreachable for 5m: ") && reason.contains("503"),
            "{reason}"
        );
    }

    let attempts = attempts.lock().unwrap().clone();
    let mut per_tenant: HashMap<&str, Vec<Instant>> = HashMap::new();
    for (tenant, at) in &attempts {
        per_tenant.entry(tenant.as_str()).or_default().push(*at);
    }
    assert_eq!(per_tenant.len(), tenants.len());
    let mut tail_gaps = Vec::new();
    for (tenant, times) in &per_tenant {
        assert!(times.len() >= 15, "{tenant}: only {} attempts", times.len());
        for (i, pair) in times.windows(2).enumerate() {
            let gap = pair[1] - pair[0];
            // RECONNECT_CAP is 30 s; no handshake takes virtual time on loopback.
            assert!(gap <= 30 * SECOND + SECOND, "{tenant}: gap {gap:?}");
            if i >= 8 {
                tail_gaps.push(gap.as_secs_f64());
            }
        }
    }
    // At the cap, full jitter draws uniformly from [0, 30 s]: the mean gap is about 15 s, not 30 s
    // (no jitter) and not near 0 (hammering).
    let mean = tail_gaps.iter().sum::<f64>() / tail_gaps.len() as f64;
    assert!(
        (10.0..=20.0).contains(&mean),
        "mean gap at the cap {mean:.1}s"
    );
    // Spread: the tenants' attempts after the first minute are not synchronised. Without jitter
    // every attempt shares a 250 ms window with all the other tenants'; with it, a window holding
    // more than half the tenants' attempts is a rare chance (about one run in a thousand saw
    // one). Asserting that no window ever does made the test flaky, so it bounds how many
    // attempts fall into such crowds: a tenth, against all of them when synchronised.
    let mut late: Vec<Instant> = attempts
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > started + MINUTE)
        .collect();
    late.sort();
    let window = Duration::from_millis(250);
    let crowded = late
        .iter()
        .filter(|a| {
            let near = late
                .iter()
                .filter(|b| **b + window > **a && **b < **a + window)
                .count();
            near > tenants.len() / 2
        })
        .count();
    assert!(
        crowded * 10 <= late.len(),
        "{crowded} of {} attempts after the first minute came within 250 ms of more than half the tenants' attempts",
        late.len()
    );
    assert!(sidecar.metrics().reconnects.get() as usize >= attempts.len() - tenants.len());
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_gateway_refusing_for_four_minutes_then_back_makes_no_call() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1", "b2"]).await;

    rig.gateway.set_refusing(true);
    rig.gateway.drop_all();
    tokio::time::sleep(4 * MINUTE).await;
    assert!(!sidecar.tenants().iter().any(|v| v.link == "up"));
    rig.gateway.set_refusing(false);
    let back = Instant::now();
    rig.gateway.wait_accepted("b1", 2).await;
    rig.gateway.wait_accepted("b2", 2).await;
    // Backoff is capped at 30 s, so the links are back at most 30 s after the gateway.
    assert!(
        back.elapsed() <= 31 * SECOND,
        "back after {:?}",
        back.elapsed()
    );
    // Within gateway_down_grace (5 m): the sessions are still open, nothing to report.
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input over the wire
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn bad_frames_over_the_wire_change_nothing_and_are_counted() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1", "b2"]).await;
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    let deep_in_known_shape = format!(
        r#"{{"event":"connection.update","data":{{"connection":"open","x":{}0{}}}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let frames: Vec<(&str, &str)> = vec![
        ("not json", "not_json"),
        ("", "not_json"),
        (r#"{"connection":"close""#, "not_json"),
        // Valid JSON of no known shape: an unknown key's value is skipped, not interpreted.
        (r#"{"a":"\ud800"}"#, "unknown_shape"),
        (&deep_object, "unknown_shape"),
        ("[]", "not_an_object"),
        ("null", "not_an_object"),
        ("42", "not_an_object"),
        (r#""connection""#, "not_an_object"),
        ("{}", "unknown_shape"),
        (r#"{"hello":"world"}"#, "unknown_shape"),
        (r#"{"tenant_id":"b1","status":"maybe"}"#, "unknown_shape"),
        (r#"{"event":"messages.upsert","data":{}}"#, "unknown_event"),
        (
            r#"{"event":"presence.update","data":{"connection":"close"}}"#,
            "unknown_event",
        ),
        (
            r#"{"event":"connection.update","data":{"connection":42}}"#,
            "wrong_type",
        ),
        (
            r#"{"event":"connection.update","data":{"connection":["close"]}}"#,
            "wrong_type",
        ),
        (
            r#"{"event":"connection.update","data":"close"}"#,
            "wrong_type",
        ),
        (r#"{"tenant_id":"b1","status":7}"#, "wrong_type"),
        (r#"{"event":7}"#, "wrong_type"),
        (
            r#"{"connection":"close","connection":"open"}"#,
            "wrong_type",
        ),
        (
            r#"{"event":"connection.update","data":{"isOnline":true}}"#,
            "no_state",
        ),
        (r#"{"event":"session.status","session":"b1"}"#, "no_state"),
        (r#"{"event":"connection.update","data":{}}"#, "no_state"),
    ];
    let metrics = sidecar.metrics();
    let kinds = [
        "binary",
        "not_json",
        "not_an_object",
        "unknown_event",
        "unknown_shape",
        "wrong_type",
        "no_state",
    ];
    let before: HashMap<&str, u64> = kinds.iter().map(|k| (*k, metrics.frames_of(k))).collect();
    let mut expected: HashMap<&str, u64> = HashMap::new();
    for (frame, kind) in &frames {
        rig.gateway.send("b1", frame);
        *expected.entry(kind).or_default() += 1;
    }
    rig.gateway.send_binary("b1", vec![0xff, 0x00, 0x7b]);
    rig.gateway
        .send_binary("b1", br#"{"connection":"close"}"#.to_vec());
    *expected.entry("binary").or_default() += 2;
    // Valid frames after the garbage prove the link still reads, in order: a 50,000-deep
    // array under an unknown key of an `open` update is skipped without recursion.
    let state_frames = metrics.frames_state.get();
    rig.gateway.send("b1", &deep_in_known_shape);
    rig.gateway.send("b1", &sim::baileys_open());
    eventually(MINUTE, "every frame was read", || {
        metrics.frames_state.get() >= state_frames + 2 && {
            let seen: u64 = kinds.iter().map(|k| metrics.frames_of(k) - before[k]).sum();
            seen >= expected.values().sum::<u64>()
        }
    })
    .await;
    for kind in kinds {
        assert_eq!(
            metrics.frames_of(kind) - before[kind],
            expected.get(kind).copied().unwrap_or(0),
            "frames counted as {kind}"
        );
    }
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(
        rig.gateway.accepted("b1"),
        1,
        "garbage never drops the link"
    );
    let v = view(&sidecar, "b1");
    assert_eq!(v.stable, Some(Status::Connected));
    assert_eq!(v.flap_penalty, 0.0);

    // A frame over the size limit (1 MiB) closes that one link, which comes back; nothing else.
    let huge = format!(
        r#"{{"connection":"close","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    rig.gateway.send("b1", &huge);
    rig.gateway.wait_accepted("b1", 2).await;
    assert_eq!(rig.gateway.accepted("b2"), 1, "the other link is untouched");
    assert_eq!(metrics.frames_oversize.get(), 1);
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert!(sidecar.not_ready_reasons().is_empty());
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_boom_error_with_missing_fields_is_a_transient_drop_with_a_plain_reason() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1"]).await;

    let closes = [
        r#"{"connection":"close","lastDisconnect":{"error":{}}}"#,
        r#"{"connection":"close","lastDisconnect":{"error":{"isBoom":true,"output":{}}}}"#,
        r#"{"event":"connection.update","data":{"connection":"close","lastDisconnect":{"error":{"output":{"payload":{}}}}}}"#,
        r#"{"event":"connection.update","data":{"connection":"close","lastDisconnect":null}}"#,
        r#"{"event":"connection.update","data":{"connection":"close","lastDisconnect":{"date":"2026-11-25T10:00:00Z"}}}"#,
    ];
    let dropped_at = Instant::now();
    for frame in closes {
        rig.gateway.send("b1", frame);
    }
    // Not terminal: nothing for the disconnect grace, then one report.
    let call = expect_call(&rig.backend, 2 * MINUTE).await;
    let after = dropped_at.elapsed();
    assert!(
        after >= 59 * SECOND,
        "reported after {after:?}, before the grace"
    );
    assert_eq!(call.status, "disconnected");
    let reason = call.reason.unwrap();
    assert!(!reason.is_empty() && reason.len() < 300, "{reason}");
    assert_eq!(reason, "connection closed");
    expect_no_call(&rig.backend, 5 * MINUTE).await;
    rig.gateway.send("b1", &sim::baileys_open());
    assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");
    assert_eq!(rig.gateway.accepted("b1"), 1);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_tenants_on_the_shared_link_are_ignored_and_counted() {
    let rig = rig().await;
    let sidecar = rig.start_with("shared", &["b1"], DEFAULT_DEBOUNCE).await;
    rig.gateway.wait_accepted(sim::SHARED, 1).await;
    rig.gateway.send(sim::SHARED, &waha("b1", "WORKING"));
    assert_eq!(expect_call(&rig.backend, MINUTE).await.tenant_id, "b1");

    let metrics = sidecar.metrics();
    let intruders = [
        waha("intruder", "FAILED"),
        waha("B1", "STOPPED"),
        waha("b1 ", "FAILED"),
        r#"{"tenant_id":"intruder","status":"disconnected","reason":"x"}"#.to_string(),
        r#"{"event":"connection.update","instance":"intruder","data":{"state":"refused"}}"#
            .to_string(),
    ];
    for frame in &intruders {
        rig.gateway.send(sim::SHARED, frame);
    }
    // A frame naming no tenant on the shared link is ignored too.
    rig.gateway
        .send(sim::SHARED, &sim::baileys_close(401, "whose?"));
    eventually(MINUTE, "every frame was read", || {
        metrics.frames_unknown_tenant.get() as usize >= intruders.len()
    })
    .await;
    assert_eq!(
        metrics.frames_unknown_tenant.get() as usize,
        intruders.len()
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(
        sidecar.tenants().iter().filter(|v| v.configured).count(),
        1,
        "no tenant was added"
    );
    assert_eq!(view(&sidecar, "b1").stable, Some(Status::Connected));
    sidecar.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// State directory faults
// ---------------------------------------------------------------------------------------------

fn set_aside_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_state_file_is_set_aside_and_the_sidecar_starts() {
    let rig = rig().await;
    let garbage: &[u8] =
        b"{\"version\":1,\"generation\":3,\"tenants\":{\"b1\":{\"reported\":\x00\xff garbage";
    std::fs::write(rig.dir.path().join("state.json"), garbage).unwrap();
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    let aside = set_aside_files(rig.dir.path());
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        garbage,
        "kept for inspection"
    );
    // With no record left, the tenant counts as new: its first stable state is reported once.
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(call.status, "connected");
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert!(sidecar.not_ready_reasons().is_empty());
    sidecar.shutdown().await;

    // The file written by that run is good again: a restart sends nothing.
    let sidecar = rig.start(&["b1"]).await;
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(set_aside_files(rig.dir.path()).len(), 1);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_state_file_of_the_wrong_shape_is_set_aside_and_the_journal_still_applies() {
    let rig = rig().await;
    let dir = rig.dir.path();
    std::fs::write(
        dir.join("state.json"),
        r#"{"version":1,"generation":"x","tenants":[1,2,3]}"#,
    )
    .unwrap();
    // The journal (what a killed run left) owes b2's logout; its last line is torn.
    let owed_key = "0123456789abcdef0123456789abcdef";
    let line = format!(
        r#"{{"gen":0,"tenant":"b2","record":{{"reported":{{"status":"connected","reason":null,"at_ms":1}},"owed":{{"status":"disconnected","reason":"logged out (code 401): logout","changed_at_ms":1700000000000,"idempotency_key":"{owed_key}"}}}}}}"#
    );
    std::fs::write(
        dir.join("journal.jsonl"),
        format!("{line}\n{{\"gen\":0,\"tenant\":\"b1\",\"rec"),
    )
    .unwrap();
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    rig.gateway
        .set_snapshot("b2", sim::baileys_close(401, "logout"));
    let sidecar = rig.start(&["b1", "b2"]).await;

    assert_eq!(set_aside_files(dir).len(), 1);
    let mut calls = calls_within(&rig.backend, 10 * MINUTE).await;
    calls.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    let summary: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.tenant_id.as_str(), c.status.as_str()))
        .collect();
    // b1 has no record left: reported once as new. b2's owed logout goes with its stored key.
    assert_eq!(summary, [("b1", "connected"), ("b2", "disconnected")]);
    assert_eq!(key(&calls[1]), owed_key);
    let changed_at = calls[1].header("x-status-changed-at").unwrap();
    assert!(
        changed_at.starts_with("2023-11-14T22:13:20"),
        "{changed_at}"
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_state_dir_makes_the_sidecar_unready_but_it_keeps_delivering() {
    let rig = rig().await;
    // Root ignores permissions, so block the snapshot path instead: a non-empty directory where
    // the temp snapshot goes makes every snapshot write fail (EISDIR), as a read-only or full
    // disk would.
    let blocker = rig.dir.path().join("state.json.tmp");
    std::fs::create_dir_all(blocker.join("blocked")).unwrap();
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    let sidecar = rig.start(&["b1"]).await;

    eventually(5 * SECOND, "the store error reaches readiness", || {
        sidecar
            .not_ready_reasons()
            .iter()
            .any(|r| r.contains("state directory"))
    })
    .await;
    let reasons = sidecar.not_ready_reasons();
    assert!(
        reasons.iter().any(|r| r.contains("state.json.tmp")),
        "{reasons:?}"
    );
    let metrics = sidecar.metrics_text();
    assert!(metrics.contains("wa_sidecar_store_degraded 1"), "{metrics}");

    // Serving from memory: transitions are still decided and delivered.
    assert_eq!(expect_call(&rig.backend, MINUTE).await.status, "connected");
    rig.gateway.send("b1", &sim::baileys_close(401, "logout"));
    assert_eq!(
        expect_call(&rig.backend, SECOND).await.status,
        "disconnected"
    );

    // The operator fixes the disk and reloads: the compaction is retried at once and writes
    // everything from memory. (Without a reload the writer retries every second of real time
    // by itself: `process::a_full_disk_makes_the_sidecar_unready_while_it_keeps_delivering_from_memory`.)
    std::fs::remove_dir_all(&blocker).unwrap();
    let same = config(
        "per-tenant",
        &rig.gateway.url_template(),
        &rig.backend,
        rig.dir.path(),
        &["b1"],
        DEFAULT_DEBOUNCE,
    );
    sidecar.reload(same).unwrap();
    sidecar.settle_state().await;
    assert_eq!(sidecar.not_ready_reasons(), Vec::<String>::new());
    sidecar.shutdown().await;

    // Nothing was lost: a restart knows the backend has `disconnected` and sends nothing.
    rig.gateway
        .set_snapshot("b1", sim::baileys_close(401, "logout"));
    let sidecar = rig.start(&["b1"]).await;
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_state_dir_unusable_at_start_is_a_clear_error() {
    let rig = rig().await;
    // The journal path is a directory: the state cannot be read, so the sidecar refuses to start
    // rather than forget what it owes.
    std::fs::create_dir_all(rig.dir.path().join("journal.jsonl")).unwrap();
    let config = config(
        "per-tenant",
        &rig.gateway.url_template(),
        &rig.backend,
        rig.dir.path(),
        &["b1"],
        DEFAULT_DEBOUNCE,
    );
    let Err(error) = Sidecar::start(config).await else {
        panic!("started over an unusable state directory");
    };
    let message = error.to_string();
    assert!(message.contains("journal.jsonl"), "{message}");
    assert!(message.starts_with("state directory: "), "{message}");
}
