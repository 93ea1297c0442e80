//! `wa-status-sidecar demo`: the real engine against an embedded simulated Baileys gateway and an
//! embedded webhook receiver, with short graces so a newcomer sees the debouncing within a minute.
//!
//! Four tenants tell the story:
//! - `acme-bakery` stays connected: one `connected` call, then silence.
//! - `bistro-42` is logged out (401): a `disconnected` call at once.
//! - `cafe-flap` drops and re-opens in a 515 loop: nothing for the first drops, then one
//!   "flapping" `disconnected`, and one `connected` once it has been quiet long enough.
//! - `dental-care` starts disconnected (428) and recovers: `disconnected` after the grace, then
//!   `connected` after it has held for the connect grace.
//! - `shop-1` to `shop-5` meet two WhatsApp-wide outages: all five drop together and come back
//!   after 8 s, longer than the disconnect grace but inside the mass-outage hold: no call; then
//!   they drop together again and stay down: one `disconnected` each when the hold ends, with the
//!   outage as the reason.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::config::Config;
use crate::sim::{self, SimBackend, SimGateway};
use crate::Sidecar;

/// The shortened debounce settings of the demo (production defaults are 60s / 10s / 10m).
const DEMO_DEBOUNCE: &str = r#"
[debounce]
disconnect_grace = "6s"
connect_grace = "3s"
gateway_down_grace = "0s"
flap_half_life = "10s"
flap_suppress = 3000
flap_reuse = 750
flap_max_suppress = "60s"
storm_fraction = 0.5
storm_min_tenants = 5
storm_window = "5s"
storm_hold = "10s"
"#;

/// The tenants the mass outages hit.
const SHOPS: [&str; 5] = ["shop-1", "shop-2", "shop-3", "shop-4", "shop-5"];

/// One scripted gateway event.
struct Step {
    at: Duration,
    tenant: &'static str,
    frame: String,
    note: &'static str,
}

fn script() -> Vec<Step> {
    let s = |secs: f64, tenant, frame, note| Step {
        at: Duration::from_secs_f64(secs),
        tenant,
        frame,
        note,
    };
    let mut steps = vec![
        s(
            5.0,
            "bistro-42",
            sim::baileys_close(401, "Connection Failure"),
            "bistro-42 is logged out from the phone (401)",
        ),
        s(
            16.0,
            "dental-care",
            sim::baileys_connecting(),
            "dental-care is reconnecting",
        ),
        s(
            17.0,
            "dental-care",
            sim::baileys_open(),
            "dental-care is back",
        ),
    ];
    // cafe-flap: a 515 loop, one drop every 2 s, each re-opened after 1 s.
    for i in 0..5 {
        let t = 6.0 + 2.0 * f64::from(i);
        steps.push(s(
            t,
            "cafe-flap",
            sim::baileys_close(515, "Stream Errored (restart required)"),
            "cafe-flap drops (515 restart required)",
        ));
        steps.push(s(
            t + 1.0,
            "cafe-flap",
            sim::baileys_open(),
            "cafe-flap re-opens",
        ));
    }
    // Two WhatsApp-wide outages hit the shops: a short one, absorbed by the hold, and a long one.
    for (i, shop) in SHOPS.iter().enumerate() {
        let first = i == 0;
        steps.push(s(
            18.0,
            shop,
            sim::baileys_close(428, "Connection Closed"),
            if first {
                "WhatsApp hiccup: shop-1 to shop-5 drop together (428): a mass outage, held"
            } else {
                ""
            },
        ));
        steps.push(s(
            26.0,
            shop,
            sim::baileys_open(),
            if first { "shop-1 to shop-5 are back after 8s (past the 6s grace, inside the 10s hold): no call" } else { "" },
        ));
        steps.push(s(
            29.0,
            shop,
            sim::baileys_close(428, "Connection Closed"),
            if first {
                "a longer WhatsApp outage: shop-1 to shop-5 drop together again and stay down"
            } else {
                ""
            },
        ));
    }
    steps.sort_by_key(|s| s.at);
    steps
}

/// Runs the demo for `duration`, writing what happens to `out`.
pub async fn run(duration: Duration, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let gateway = SimGateway::start().await?;
    let backend = SimBackend::start().await?;
    let state = tempfile_dir()?;
    gateway.set_snapshot("acme-bakery", sim::baileys_open());
    gateway.set_snapshot("bistro-42", sim::baileys_open());
    gateway.set_snapshot("cafe-flap", sim::baileys_open());
    gateway.set_snapshot("dental-care", sim::baileys_close(428, "Connection Closed"));
    for shop in SHOPS {
        gateway.set_snapshot(shop, sim::baileys_open());
    }
    let config = demo_config(&gateway, &backend, &state)?;

    writeln!(out, "wa-status-sidecar demo: the real engine, a simulated Baileys gateway at {}, and a webhook receiver at {}.", gateway.url_template(), backend.url())?;
    writeln!(out, "Graces are shortened (disconnect 6s, connect 3s, flap half-life 10s, mass-outage hold 10s). Each webhook call is printed as it arrives.")?;
    writeln!(out)?;

    let sidecar = Sidecar::start(config).await?;
    let started = Instant::now();
    let end = started + duration;
    let mut steps = script().into_iter().peekable();
    let mut calls = 0usize;
    let stamp = |at: Instant| format!("[{:>5.1}s]", at.duration_since(started).as_secs_f64());
    loop {
        let next_step = steps.peek().map(|s| started + s.at);
        tokio::select! {
            _ = sleep_until(end) => break,
            _ = sleep_until(next_step.unwrap_or(end)), if next_step.is_some() => {
                                let step = steps.next().expect("peeked");
                gateway.send(step.tenant, &step.frame);
                if !step.note.is_empty() {
                    writeln!(out, "{} gateway  {}", stamp(Instant::now()), step.note)?;
                }
            }
            call = backend.next_call() => {
                let Some(call) = call else { break };
                calls += 1;
                let reason = call.reason.as_deref().map(|r| format!("  reason: {r}")).unwrap_or_default();
                writeln!(
                    out,
                    "{} WEBHOOK  POST {}  {} -> {}{}",
                    stamp(Instant::now()),
                    call.path,
                    call.tenant_id,
                    call.status.to_uppercase(),
                    reason,
                )?;
            }
        }
        out.flush()?;
    }
    let (absorbed, frames) = (
        sidecar.metrics().flaps_suppressed.get(),
        sidecar.metrics().frames_state.get(),
    );
    sidecar.shutdown().await;
    writeln!(out)?;
    writeln!(
        out,
        "demo over after {:.0}s: {calls} webhook calls; {} drops absorbed by the debouncer; {} frames seen.",
        started.elapsed().as_secs_f64(),
        absorbed,
        frames,
    )?;
    gateway.stop();
    backend.stop();
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "wa-status-sidecar-demo-{}-{}",
        std::process::id(),
        crate::store::new_idempotency_key()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn demo_config(
    gateway: &SimGateway,
    backend: &SimBackend,
    state: &std::path::Path,
) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[gateway]
url = "{gateway}"
[backend]
url = "{backend}"
{DEMO_DEBOUNCE}
[tenants]
ids = ["acme-bakery", "bistro-42", "cafe-flap", "dental-care", "shop-1", "shop-2", "shop-3", "shop-4", "shop-5"]
[state]
dir = "{state}"
[admin]
listen = "127.0.0.1:0"
"#,
        gateway = gateway.url_template(),
        backend = backend.url(),
        state = state.display(),
    );
    let env: HashMap<String, String> = HashMap::from([(
        "INTERNAL_SHARED_SECRET".to_string(),
        "demo-secret".to_string(),
    )]);
    Config::from_toml_str(&text, state, &env).map_err(|e| anyhow::anyhow!("{e}"))
}
