//! Every bell is true (issue 10): the reproductions of the false and lost bells found by running
//! the release binary as an operator would, each at the level where it happened (a real `Sidecar`
//! against the simulated gateway and backend on real sockets, under tokio's paused clock).

use std::time::Duration;

use crate::common::{config, evolution, expect_call, expect_no_call, rig, waha, DEFAULT_DEBOUNCE};
use wa_status_sidecar::sim::{self, Reply};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// Reproduction 1: a restart with a tenant removed from the config. The old code restored the
/// removed tenant's record, started its debouncer with the link "not connected yet" and, after
/// `gateway_down_grace`, reported it disconnected: "gateway unreachable for 5m: not connected yet".
#[tokio::test(start_paused = true)]
async fn a_tenant_removed_across_a_restart_is_never_reported_and_its_record_goes() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1", "b2"]).await;
    sidecar.shutdown().await;

    let sidecar = rig.start(&["b1"]).await;
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    let ids: Vec<String> = sidecar.tenants().into_iter().map(|v| v.tenant).collect();
    assert_eq!(
        ids,
        ["b1"],
        "nothing owed: the removed tenant's record is gone"
    );
    sidecar.shutdown().await;

    // Gone for good: added back, it is first-seen and its first stable state is reported once.
    rig.gateway.set_snapshot("b2", sim::baileys_open());
    let sidecar = rig.start(&["b1", "b2"]).await;
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("b2", "connected")
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

/// Reproduction 2: shared mode started with no tenants, tenants then added by a reload. The old
/// code only marked added tenants linked when some configured tenant's link was already up, so
/// with none they were never linked: never reported connected, and after the grace each got
/// "gateway unreachable ... not connected yet".
#[tokio::test(start_paused = true)]
async fn shared_mode_started_with_no_tenants_links_the_tenants_a_reload_adds() {
    let rig = rig().await;
    let shared = |tenants: &[&str]| {
        config(
            "shared",
            &rig.gateway.shared_url(),
            &rig.backend,
            rig.dir.path(),
            tenants,
            DEFAULT_DEBOUNCE,
        )
    };
    let sidecar = wa_status_sidecar::Sidecar::start(shared(&[]))
        .await
        .unwrap();
    rig.gateway.wait_accepted(sim::SHARED, 1).await;
    // The sidecar runs a while with its shared link up and no tenant to carry.
    tokio::time::sleep(MINUTE).await;

    sidecar.reload(shared(&["b1", "b2"])).unwrap();
    rig.gateway.send(sim::SHARED, &waha("b1", "WORKING"));
    rig.gateway.send(sim::SHARED, &waha("b2", "WORKING"));
    let mut seen: Vec<(String, String)> = Vec::new();
    for _ in 0..2 {
        let call = expect_call(&rig.backend, MINUTE).await;
        seen.push((call.tenant_id, call.status));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("b1".into(), "connected".into()),
            ("b2".into(), "connected".into())
        ]
    );
    for view in sidecar.tenants() {
        assert_eq!(
            view.link, "up",
            "{} is carried by the shared link",
            view.tenant
        );
    }
    // Nothing more: no "gateway unreachable" for tenants the shared link carries.
    expect_no_call(&rig.backend, 10 * MINUTE).await;

    // A third tenant added later is linked at once too; one removed stops being reported.
    sidecar.reload(shared(&["b2", "b3"])).unwrap();
    rig.gateway.send(sim::SHARED, &waha("b3", "WORKING"));
    rig.gateway.send(sim::SHARED, &waha("b1", "FAILED"));
    let call = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("b3", "connected")
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    sidecar.shutdown().await;
}

/// Reproduction 3: a per-tenant link that receives a frame naming another tenant. The old code
/// applied it to the link's own tenant: one business's event became another business's bell.
#[tokio::test(start_paused = true)]
async fn a_frame_naming_another_tenant_changes_nothing_for_either_tenant() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1", "b2"]).await;

    let forged = [
        r#"{"tenant_id":"b2","status":"disconnected","reason":"forged logout"}"#.to_string(),
        waha("b2", "FAILED"),
        evolution("b2", "refused", 401),
        // A tenant that is not configured at all is foreign too.
        r#"{"tenant_id":"mallory","status":"disconnected","reason":"x"}"#.to_string(),
    ];
    for frame in &forged {
        rig.gateway.send("b1", frame);
    }
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    for view in sidecar.tenants() {
        assert_eq!(
            view.stable,
            Some(wa_status_sidecar::debounce::Status::Connected),
            "{}",
            view.tenant
        );
    }
    let metrics = sidecar.metrics_text();
    assert!(
        metrics.contains(r#"wa_sidecar_frames_total{kind="foreign"} 4"#),
        "{metrics}"
    );

    // A frame naming the link's own tenant is still news about it.
    rig.gateway.send(
        "b1",
        r#"{"tenant_id":"b1","status":"disconnected","reason":"logged out on the phone"}"#,
    );
    let call = expect_call(&rig.backend, SECOND).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("b1", "disconnected")
    );
    sidecar.shutdown().await;
}

/// Reproduction 4: a backend answering 503 with `Retry-After: 0` (or a negative or past value).
/// The old code waited exactly what was asked: thousands of requests a second. `Retry-After` can
/// only lengthen the jittered backoff, never shorten it below it or below 1 s.
#[tokio::test(start_paused = true)]
async fn retry_after_zero_negative_or_past_never_retries_faster_than_the_backoff() {
    for retry_after in ["0", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let rig = rig().await;
        let sidecar = rig.start_connected(&["b1"]).await;
        rig.backend
            .set_default(Reply::status(503).with_header("retry-after", retry_after));
        rig.gateway
            .send("b1", &sim::baileys_close(401, "Connection Failure"));

        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        while start.elapsed() < MINUTE && at.len() < 100 {
            match tokio::time::timeout(MINUTE, rig.backend.next_call()).await {
                Ok(Some(_)) => at.push(start.elapsed()),
                _ => break,
            }
        }
        // Full-jitter backoff from 1 s with a 1 s floor: at most one call a second, and far
        // fewer as the backoff doubles.
        assert!(
            at.len() <= 20,
            "Retry-After: {retry_after}: {} calls in a minute: {at:?}",
            at.len()
        );
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] >= SECOND - Duration::from_millis(5),
                "Retry-After: {retry_after}: retried after {:?}",
                pair[1] - pair[0]
            );
        }
        sidecar.shutdown().await;
    }
}

/// Found by the model test: a return to the state the backend last acknowledged was dropped as
/// "nothing to send" although the backend might no longer have it. Here the backend applies the
/// drop but answers after the 10 s timeout; the session comes back meanwhile. The old code took
/// the timeout for "not delivered", voided the return, and the business kept a false bell.
#[tokio::test(start_paused = true)]
async fn a_return_after_an_unanswered_call_is_still_sent() {
    let rig = rig().await;
    let sidecar = rig.start_connected(&["b1"]).await;

    // Logged out: decided at once; the backend takes the call but answers too late.
    rig.backend
        .push_replies([Reply::ok().with_delay(15 * SECOND)]);
    rig.gateway
        .send("b1", &sim::baileys_close(401, "Connection Failure"));
    let drop = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(drop.status, "disconnected");
    // Linked again within the request's timeout; connected after the 10 s connect grace.
    tokio::time::sleep(SECOND).await;
    rig.gateway.send("b1", &sim::baileys_open());

    let back = expect_call(&rig.backend, MINUTE).await;
    assert_eq!(
        (back.status.as_str(), back.answered),
        ("connected", 200),
        "the backend may have the drop: the return is sent"
    );
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    assert_eq!(sidecar.metrics().owed.get(), 0);
    sidecar.shutdown().await;
}
