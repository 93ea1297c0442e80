//! One outage, not ten thousand bells (issue 15): the mass-outage hold, end to end on real
//! sockets under tokio's paused clock.

use std::time::Duration;

use crate::common::{calls_until_quiet, config, expect_call, expect_no_call, rig, waha, Rig};
use wa_status_sidecar::sim;
use wa_status_sidecar::Sidecar;

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);

/// The SPEC's graces, and a hold small enough to test: a storm is 5 tenants and a fifth of the
/// linked ones within 60 s, held 15 minutes.
const STORM_DEBOUNCE: &str = r#"
[debounce]
disconnect_grace = "60s"
connect_grace = "10s"
gateway_down_grace = "5m"
storm_fraction = 0.2
storm_min_tenants = 5
storm_window = "60s"
storm_hold = "15m"
"#;

fn tenants(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("b{i:02}")).collect()
}

async fn start(rig: &Rig, mode: &str, ids: &[String], debounce: &str) -> Sidecar {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let url = match mode {
        "shared" => rig.gateway.shared_url(),
        _ => rig.gateway.url_template(),
    };
    let cfg = config(mode, &url, &rig.backend, rig.dir.path(), &ids, debounce);
    Sidecar::start(cfg).await.unwrap()
}

/// 20 tenants, every one reported connected.
async fn connected(rig: &Rig, ids: &[String]) -> Sidecar {
    for t in ids {
        rig.gateway.set_snapshot(t, sim::baileys_open());
    }
    let sidecar = start(rig, "per-tenant", ids, STORM_DEBOUNCE).await;
    first_states(rig, ids.len()).await;
    sidecar
}

/// Takes the first state of `n` tenants, each call within 5 minutes: not "until quiet for 30 s",
/// which a loaded machine can cut short (the paused clock jumps while the journal writer, on
/// its own thread, is still at work), and then a call counted in a later step.
async fn first_states(rig: &Rig, n: usize) {
    for _ in 0..n {
        let call = expect_call(&rig.backend, 5 * MINUTE).await;
        assert_eq!(call.status, "connected", "every tenant's first state");
    }
    expect_no_call(&rig.backend, 30 * SECOND).await;
}

fn metric(sidecar: &Sidecar, series: &str) -> f64 {
    let text = sidecar.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn an_outage_that_heals_within_the_hold_rings_no_bell() {
    let rig = rig().await;
    let ids = tenants(20);
    let sidecar = connected(&rig, &ids).await;

    // Eight of twenty drop with 428 within a few seconds: a storm (8 >= 5 and >= 20 %).
    for t in &ids[..8] {
        rig.gateway
            .send(t, &sim::baileys_close(428, "Connection Closed"));
        tokio::time::sleep(SECOND / 2).await;
    }
    tokio::time::sleep(SECOND).await;
    assert_eq!(metric(&sidecar, "wa_sidecar_storm_active"), 1.0);
    assert_eq!(metric(&sidecar, "wa_sidecar_storm_tenants_down"), 8.0);
    let view = sidecar.tenant("b00").unwrap();
    assert!(view.held, "{view:?}");
    // Well past disconnect_grace, still inside the hold: no call.
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    for t in &ids[..8] {
        rig.gateway.send(t, &sim::baileys_open());
    }
    // Back within the hold: the backend, which has `connected`, hears nothing.
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    assert_eq!(metric(&sidecar, "wa_sidecar_storm_active"), 0.0);
    assert!(!sidecar.tenant("b00").unwrap().flapping);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn drops_still_down_when_the_hold_ends_are_reported_once_with_the_outage_reason() {
    let rig = rig().await;
    let ids = tenants(20);
    let sidecar = connected(&rig, &ids).await;
    let began = tokio::time::Instant::now();
    for t in &ids[..6] {
        rig.gateway
            .send(t, &sim::baileys_close(428, "Connection Closed"));
    }
    tokio::time::sleep(10 * SECOND).await;
    // A tenant that drops after the storm began joins it.
    rig.gateway.send(
        &ids[6],
        &sim::baileys_close(515, "Stream Errored (restart required)"),
    );
    // A logout during the storm is never held: reported at once.
    rig.gateway
        .send(&ids[19], &sim::baileys_close(401, "Connection Failure"));
    let logout = expect_call(&rig.backend, SECOND).await;
    assert_eq!(
        (logout.tenant_id.as_str(), logout.status.as_str()),
        ("b19", "disconnected")
    );

    // Nothing during the hold (the grace, 60 s, passed long ago)...
    expect_no_call(&rig.backend, 14 * MINUTE).await;
    // ...then each drop still down, once, when the hold ends 15 minutes after the storm began.
    let calls = calls_until_quiet(&rig.backend, MINUTE, 10 * MINUTE).await;
    assert!(began.elapsed() >= 15 * MINUTE, "not before the hold ends");
    let mut got: Vec<&str> = calls.iter().map(|c| c.tenant_id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["b00", "b01", "b02", "b03", "b04", "b05", "b06"]);
    for call in &calls {
        assert_eq!(call.status, "disconnected");
        assert_eq!(
            call.reason.as_deref(),
            Some("WhatsApp-wide outage: 7 of 20 sessions dropped within 60s; last: Stream Errored (restart required) (code 515)"),
        );
    }
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_gateway_restart_is_not_a_storm() {
    let rig = rig().await;
    let ids = tenants(20);
    let sidecar = connected(&rig, &ids).await;
    // Every link drops; the sessions come back reconnecting, then open.
    for t in &ids {
        rig.gateway.set_snapshot(t, sim::baileys_connecting());
    }
    rig.gateway.drop_all();
    tokio::time::sleep(20 * SECOND).await;
    assert_eq!(metric(&sidecar, "wa_sidecar_storm_active"), 0.0);
    for t in &ids {
        rig.gateway.send(t, &sim::baileys_open());
    }
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn drops_during_a_storm_are_not_flaps() {
    let rig = rig().await;
    let ids = tenants(20);
    let sidecar = connected(&rig, &ids).await;
    for t in &ids[..5] {
        rig.gateway
            .send(t, &sim::baileys_close(428, "Connection Closed"));
    }
    tokio::time::sleep(SECOND).await;
    assert_eq!(metric(&sidecar, "wa_sidecar_storm_active"), 1.0);
    // WhatsApp's trouble makes the sessions bounce: up and down again, five times.
    for _ in 0..5 {
        for t in &ids[..5] {
            rig.gateway.send(t, &sim::baileys_open());
        }
        tokio::time::sleep(20 * SECOND).await;
        for t in &ids[..5] {
            rig.gateway
                .send(t, &sim::baileys_close(428, "Connection Closed"));
        }
        tokio::time::sleep(20 * SECOND).await;
    }
    for t in &ids[..5] {
        rig.gateway.send(t, &sim::baileys_open());
    }
    // Not one "flapping" bell: a storm is not a flap of each tenant.
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    for t in &ids[..5] {
        assert!(sidecar.tenant(t).unwrap().flap_penalty <= 1000.0);
    }
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_turns_the_hold_off_reports_the_held_drops_at_once() {
    let rig = rig().await;
    let ids = tenants(20);
    let sidecar = connected(&rig, &ids).await;
    for t in &ids[..5] {
        rig.gateway
            .send(t, &sim::baileys_close(428, "Connection Closed"));
    }
    expect_no_call(&rig.backend, 5 * MINUTE).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let off = STORM_DEBOUNCE.replace("storm_fraction = 0.2", "storm_fraction = 0");
    let cfg = config(
        "per-tenant",
        &rig.gateway.url_template(),
        &rig.backend,
        rig.dir.path(),
        &refs,
        &off,
    );
    sidecar.reload(cfg).unwrap();
    let calls = calls_until_quiet(&rig.backend, 10 * SECOND, MINUTE).await;
    assert_eq!(calls.len(), 5);
    assert!(calls.iter().all(|c| c
        .reason
        .as_deref()
        .unwrap()
        .starts_with("WhatsApp-wide outage: 5 of 20")));
    assert_eq!(metric(&sidecar, "wa_sidecar_storm_active"), 0.0);
    sidecar.shutdown().await;
}

/// What the gateway shows of the held sessions after the restart, and what the operator does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum AfterRestart {
    TheCloseAgain,
    Nothing,
    TheSessionBack,
    /// Nothing, and a reload removes three of the six held tenants before the hold ends.
    NothingThenThreeRemoved,
}

/// A frame that shows `tenant`'s session up (`true`) or dropped in `mode`, with the link it
/// goes on.
fn session_frame(mode: &str, tenant: &str, up: bool) -> (String, String) {
    match (mode, up) {
        ("shared", true) => (sim::SHARED.to_string(), waha(tenant, "WORKING")),
        // WAHA's STARTING is a transient drop.
        ("shared", false) => (sim::SHARED.to_string(), waha(tenant, "STARTING")),
        (_, true) => (tenant.to_string(), sim::baileys_open()),
        (_, false) => (
            tenant.to_string(),
            sim::baileys_close(428, "Connection Closed"),
        ),
    }
}

/// Sets what every new link shows first: for each tenant of `frames`, its frames in order.
fn set_first_frames(rig: &Rig, mode: &str, frames: &[(String, Vec<String>)]) {
    if mode == "shared" {
        let all = frames.iter().flat_map(|(_, f)| f.clone()).collect();
        rig.gateway.set_snapshot_frames(sim::SHARED, all);
    } else {
        for (tenant, f) in frames {
            rig.gateway.set_snapshot_frames(tenant, f.clone());
        }
    }
}

/// The hold survives a restart in both gateway modes, whatever the gateway tells the new
/// process: the drops still down are reported once, when the original hold ends, with the
/// outage reason, whether the gateway sends their close again or nothing at all (the last
/// known state is the held drop); drops whose sessions came back while the sidecar was down
/// ring no bell, and a held tenant that a reload removes before the hold ends is never
/// reported.
#[tokio::test(start_paused = true)]
async fn the_hold_survives_a_restart() {
    use AfterRestart::*;
    for mode in ["per-tenant", "shared"] {
        for after_restart in [
            TheCloseAgain,
            Nothing,
            TheSessionBack,
            NothingThenThreeRemoved,
        ] {
            hold_over_a_restart(mode, after_restart).await;
        }
    }
}

async fn hold_over_a_restart(mode: &str, after_restart: AfterRestart) {
    use AfterRestart::*;
    let case = format!("{mode}, {after_restart:?}");
    let rig = rig().await;
    let ids = tenants(20);
    let up: Vec<_> = ids
        .iter()
        .map(|t| (t.clone(), vec![session_frame(mode, t, true).1]))
        .collect();
    set_first_frames(&rig, mode, &up);
    let sidecar = start(&rig, mode, &ids, STORM_DEBOUNCE).await;
    first_states(&rig, ids.len()).await;
    let began = tokio::time::Instant::now();
    let held = &ids[..6];
    for t in held {
        let (link, frame) = session_frame(mode, t, false);
        rig.gateway.send(&link, &frame);
    }
    tokio::time::sleep(2 * MINUTE).await;
    assert_eq!(
        metric(&sidecar, "wa_sidecar_storm_active"),
        1.0,
        "{case}: the drops make a storm"
    );
    sidecar.shutdown().await;

    let shown: Vec<_> = held
        .iter()
        .map(|t| {
            let frames = match after_restart {
                TheCloseAgain => vec![session_frame(mode, t, false).1],
                Nothing | NothingThenThreeRemoved => vec![],
                TheSessionBack => vec![session_frame(mode, t, true).1],
            };
            (t.clone(), frames)
        })
        .collect();
    set_first_frames(&rig, mode, &shown);
    let sidecar = start(&rig, mode, &ids, STORM_DEBOUNCE).await;
    let mut kept: Vec<&str> = ids.iter().map(String::as_str).collect();
    // Not reported at their own grace (60 s after the restart): only when the hold ends.
    // (The paused clock moves no wall clock, so the hold resumes as if begun at the restart.)
    if after_restart == NothingThenThreeRemoved {
        expect_no_call(&rig.backend, 5 * MINUTE).await;
        kept.retain(|t| !held[..3].iter().any(|h| h == t));
        let url = match mode {
            "shared" => rig.gateway.shared_url(),
            _ => rig.gateway.url_template(),
        };
        let cfg = config(
            mode,
            &url,
            &rig.backend,
            rig.dir.path(),
            &kept,
            STORM_DEBOUNCE,
        );
        sidecar.reload(cfg).unwrap();
        expect_no_call(&rig.backend, 9 * MINUTE).await;
    } else {
        expect_no_call(&rig.backend, 14 * MINUTE).await;
    }
    let calls = calls_until_quiet(&rig.backend, 2 * MINUTE, 10 * MINUTE).await;
    assert!(began.elapsed() >= 15 * MINUTE);
    let reported: Vec<&str> = calls.iter().map(|c| c.tenant_id.as_str()).collect();
    let expected: Vec<&str> = match after_restart {
        TheSessionBack => vec![],
        NothingThenThreeRemoved => held[3..].iter().map(String::as_str).collect(),
        _ => held.iter().map(String::as_str).collect(),
    };
    let mut sorted = reported.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "{case}: {calls:?}");
    assert!(
        calls.iter().all(|c| c.status == "disconnected"
            && c.reason
                .as_deref()
                .unwrap()
                .starts_with("WhatsApp-wide outage: 6 of 20")),
        "{case}: {calls:?}"
    );
    // Nothing else follows: no late call for a removed tenant, no second report.
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_storm_over_a_shared_link() {
    let rig = rig().await;
    let ids = tenants(20);
    let sidecar = start(&rig, "shared", &ids, STORM_DEBOUNCE).await;
    rig.gateway.wait_accepted(sim::SHARED, 1).await;
    for t in &ids {
        rig.gateway.send(sim::SHARED, &waha(t, "WORKING"));
    }
    first_states(&rig, 20).await;
    // WAHA's STARTING is a transient drop.
    for t in &ids[..10] {
        rig.gateway.send(sim::SHARED, &waha(t, "STARTING"));
    }
    tokio::time::sleep(SECOND).await;
    assert_eq!(metric(&sidecar, "wa_sidecar_storm_active"), 1.0);
    expect_no_call(&rig.backend, 10 * MINUTE).await;
    for t in &ids[..10] {
        rig.gateway.send(sim::SHARED, &waha(t, "WORKING"));
    }
    expect_no_call(&rig.backend, 30 * MINUTE).await;
    sidecar.shutdown().await;
}
