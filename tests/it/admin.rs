//! The operator's side: the admin API over real HTTP, SIGHUP-style reloads, and the demo.

use std::time::Duration;

use crate::common::{config, eventually, expect_call, DEFAULT_DEBOUNCE, SECRET};
use wa_status_sidecar::sim::{self, Reply, SimBackend, SimGateway};
use wa_status_sidecar::Sidecar;

const MINUTE: Duration = Duration::from_secs(60);

async fn get(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", sidecar.admin_addr());
    let response = reqwest::get(&url).await.expect("the admin API answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of one metric series in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(start_paused = true)]
async fn the_admin_api_serves_liveness_readiness_metrics_and_tenants() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    gateway.set_snapshot("business_1", sim::baileys_open());
    let cfg = config(
        "per-tenant",
        &gateway.url_template(),
        &backend,
        dir.path(),
        &["business_1", "business_2"],
        DEFAULT_DEBOUNCE,
    );
    let sidecar = Sidecar::start(cfg).await.unwrap();

    assert_eq!(get(&sidecar, "/livez").await, (200, "ok\n".to_string()));
    let (status, body) = get(&sidecar, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));

    assert_eq!(expect_call(&backend, MINUTE).await.tenant_id, "business_1");
    let metrics_text = eventually_metric(
        &sidecar,
        r#"wa_sidecar_webhook_requests_total{outcome="delivered"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &metrics_text,
            r#"wa_sidecar_transitions_total{status="connected"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics_text, r#"wa_sidecar_links{state="up"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics_text, r#"wa_sidecar_tenants{state="connected"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics_text, r#"wa_sidecar_tenants{state="unknown"}"#),
        Some(1.0)
    );
    assert!(metrics_text.contains("wa_sidecar_webhook_latency_seconds_bucket"));
    assert!(
        !metrics_text.contains("business_"),
        "tenant ids never appear in metric labels"
    );

    let (status, body) = get(&sidecar, "/tenants").await;
    assert_eq!(status, 200);
    let tenants: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["business_1", "business_2"]);

    let (status, body) = get(&sidecar, "/tenants/business_1").await;
    assert_eq!(status, 200);
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["link"], "up");
    assert_eq!(one["stable"], "connected");
    assert_eq!(one["reported"]["status"], "connected");
    assert_eq!(one["owed"], serde_json::Value::Null);
    assert_eq!(one["last_observation"], "up");
    assert!(one["flap_penalty"].is_number());

    let (status, _) = get(&sidecar, "/tenants/nobody").await;
    assert_eq!(status, 404);
    sidecar.shutdown().await;
}

/// Polls `/metrics` until `series` reaches `value`; returns the exposition.
async fn eventually_metric(sidecar: &Sidecar, series: &str, value: f64) -> String {
    for _ in 0..200 {
        let (_, text) = get(sidecar, "/metrics").await;
        if metric(&text, series) == Some(value) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{series} never reached {value}");
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_when_the_backend_refuses_the_credentials() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    backend.set_default(Reply::status(401));
    gateway.set_snapshot("b1", sim::baileys_open());
    let cfg = config(
        "per-tenant",
        &gateway.url_template(),
        &backend,
        dir.path(),
        &["b1"],
        DEFAULT_DEBOUNCE,
    );
    let sidecar = Sidecar::start(cfg).await.unwrap();
    assert_eq!(get(&sidecar, "/readyz").await.0, 200);

    assert_eq!(expect_call(&backend, MINUTE).await.answered, 401);
    eventually(Duration::from_secs(1), "the fault is recorded", || {
        sidecar
            .not_ready_reasons()
            .iter()
            .any(|r| r.contains("X-INTERNAL-SECRET"))
    })
    .await;
    let (status, body) = get(&sidecar, "/readyz").await;
    assert_eq!(status, 503);
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    let reason = ready["reasons"][0].as_str().unwrap();
    assert!(
        reason.contains("401") && reason.contains("INTERNAL_SHARED_SECRET"),
        "{reason}"
    );
    assert!(!body.contains(SECRET));

    // The backend accepts again (the operator fixed its side): the next retry succeeds.
    backend.set_default(Reply::ok());
    assert_eq!(expect_call(&backend, MINUTE).await.answered, 200);
    eventually(Duration::from_secs(1), "readiness returns", || {
        !sidecar
            .not_ready_reasons()
            .iter()
            .any(|r| r.contains("X-INTERNAL-SECRET"))
    })
    .await;
    assert_eq!(get(&sidecar, "/readyz").await.0, 200);
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_tenants_without_dropping_unchanged_links() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for t in ["b1", "b2", "b3"] {
        gateway.set_snapshot(t, sim::baileys_open());
    }
    let cfg = |tenants: &[&str]| {
        config(
            "per-tenant",
            &gateway.url_template(),
            &backend,
            dir.path(),
            tenants,
            DEFAULT_DEBOUNCE,
        )
    };
    let sidecar = Sidecar::start(cfg(&["b1", "b2"])).await.unwrap();
    for _ in 0..2 {
        expect_call(&backend, MINUTE).await;
    }
    assert_eq!((gateway.accepted("b1"), gateway.accepted("b2")), (1, 1));

    sidecar.reload(cfg(&["b2", "b3"])).unwrap();
    gateway.wait_accepted("b3", 1).await;
    eventually(Duration::from_secs(5), "b1's link is closed", || {
        gateway.open_links("b1") == 0
    })
    .await;
    let call = expect_call(&backend, MINUTE).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("b3", "connected")
    );
    assert_eq!(gateway.accepted("b2"), 1, "b2's link was never dropped");
    assert_eq!(gateway.open_links("b2"), 1);

    let views = sidecar.tenants();
    let ids: Vec<&str> = views.iter().map(|v| v.tenant.as_str()).collect();
    assert_eq!(
        ids,
        ["b2", "b3"],
        "a removed tenant with nothing owed is forgotten"
    );
    sidecar.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_demo_prints_both_kinds_of_call() {
    let mut out = Vec::new();
    wa_status_sidecar::demo::run(Duration::from_secs(45), &mut out)
        .await
        .unwrap();
    let out = String::from_utf8(out).unwrap();
    let calls: Vec<&str> = out.lines().filter(|l| l.contains("WEBHOOK")).collect();
    let has = |tenant: &str, status: &str| {
        calls
            .iter()
            .any(|l| l.contains(&format!("{tenant} -> {status}")))
    };
    assert!(has("acme-bakery", "CONNECTED"), "{out}");
    assert!(has("bistro-42", "DISCONNECTED"), "{out}");
    assert!(
        out.contains("logged out (code 401): Connection Failure"),
        "{out}"
    );
    assert!(out.contains("flapping: 4 disconnects"), "{out}");
    assert!(
        has("dental-care", "DISCONNECTED") && has("dental-care", "CONNECTED"),
        "{out}"
    );
    // The flapping tenant is reported connected again once it has been quiet.
    assert_eq!(
        calls.iter().filter(|l| l.contains("cafe-flap")).count(),
        3,
        "{out}"
    );
    // acme-bakery never dropped: exactly one call.
    assert_eq!(
        calls.iter().filter(|l| l.contains("acme-bakery")).count(),
        1
    );
    // The shops: connected once each; the short outage absorbed by the hold; the long one
    // reported once each, after the hold, with the outage as the reason.
    for shop in ["shop-1", "shop-2", "shop-3", "shop-4", "shop-5"] {
        let mine: Vec<&&str> = calls.iter().filter(|l| l.contains(shop)).collect();
        assert_eq!(mine.len(), 2, "{shop}: {out}");
        assert!(mine[0].contains("-> CONNECTED"), "{out}");
        assert!(
            mine[1].contains(
                "-> DISCONNECTED  reason: WhatsApp-wide outage: 5 of 9 sessions dropped within 5s; last: Connection Closed (code 428)"
            ),
            "{out}"
        );
        let at: f64 = mine[1][1..6].trim().parse().unwrap();
        assert!(
            (39.0..40.0).contains(&at),
            "reported when the hold ends: {out}"
        );
    }
    assert!(out.contains("demo over after 45s"), "{out}");
}

#[test]
fn the_demo_command_runs_to_completion_with_duration() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wa-status-sidecar"))
        .args(["demo", "--duration", "6s"])
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{output:?}");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("-> CONNECTED"), "{out}");
    assert!(out.contains("bistro-42 -> DISCONNECTED"), "{out}");
    assert!(out.contains("demo over after 6s"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn a_reload_picks_up_tenants_added_to_the_tenants_file() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for t in ["b1", "b2"] {
        gateway.set_snapshot(t, sim::baileys_open());
    }
    let tenants_file = dir.path().join("tenants.txt");
    std::fs::write(&tenants_file, "# one id a line\nb1\n").unwrap();
    let config_file = dir.path().join("sidecar.toml");
    std::fs::write(
        &config_file,
        format!(
            "[gateway]\nurl = \"{}\"\n[backend]\nurl = \"{}\"\n[tenants]\nfile = \"tenants.txt\"\n\
             [state]\ndir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            gateway.url_template(),
            backend.url(),
            dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let load =
        || wa_status_sidecar::config::Config::load(&config_file, &crate::common::env()).unwrap();
    let sidecar = Sidecar::start(load()).await.unwrap();
    assert_eq!(expect_call(&backend, MINUTE).await.tenant_id, "b1");

    // The operator adds a tenant to the file and reloads (what SIGHUP does).
    std::fs::write(&tenants_file, "# one id a line\nb1\nb2\n").unwrap();
    sidecar.reload(load()).unwrap();
    gateway.wait_accepted("b2", 1).await;
    assert_eq!(expect_call(&backend, MINUTE).await.tenant_id, "b2");
    assert_eq!(gateway.accepted("b1"), 1, "b1's link was kept");
    sidecar.shutdown().await;
}

/// A page that DNS rebinding pointed at the admin port asks as its own origin
/// (`Sec-Fetch-Site: same-origin`, or `same-site`): refused, so its script cannot read the
/// tenants. A tool (no such header), a typed URL (`none`) and a cross-site request (which the
/// browser lets no script read) are answered.
#[tokio::test]
async fn a_rebound_web_page_cannot_read_the_admin_api() {
    let rig = crate::common::rig().await;
    let sidecar = rig.start(&["business_1"]).await;
    let client = reqwest::Client::new();
    for path in ["/tenants", "/tenants/business_1", "/metrics", "/livez"] {
        let url = format!("http://{}{path}", sidecar.admin_addr());
        for (site, want) in [
            (None, 200),
            (Some("none"), 200),
            (Some("cross-site"), 200),
            (Some("same-origin"), 403),
            (Some("same-site"), 403),
        ] {
            let mut request = client.get(&url).header("host", "rebound.example:9464");
            if let Some(site) = site {
                request = request.header("sec-fetch-site", site);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert_eq!(status, want, "{path} with {site:?}: {body}");
            if want == 403 {
                assert!(!body.contains("business_1"), "{body}");
            }
        }
    }
    sidecar.shutdown().await;
}
