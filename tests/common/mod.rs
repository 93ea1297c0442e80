//! Shared setup for the integration tests: a config pointing a sidecar at a simulated gateway and
//! a recording backend, both real servers on 127.0.0.1.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use wa_status_sidecar::config::{Config, Env};
use wa_status_sidecar::sim::{self, Call, SimBackend, SimGateway};
use wa_status_sidecar::Sidecar;

pub const SECRET: &str = "test-secret-3f9a";

/// Environment lookups from a map, so tests never touch the process environment.
pub struct MapEnv(pub HashMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub fn env() -> MapEnv {
    MapEnv(HashMap::from([(
        "INTERNAL_SHARED_SECRET".to_string(),
        SECRET.to_string(),
    )]))
}

/// The debounce settings of SPEC section 4 (the defaults), written out so a test reads them.
pub const DEFAULT_DEBOUNCE: &str = r#"
[debounce]
disconnect_grace = "60s"
connect_grace = "10s"
gateway_down_grace = "5m"
"#;

/// A config for `tenants` against `gateway_url` (per-tenant template or shared URL).
pub fn config(
    mode: &str,
    gateway_url: &str,
    backend: &SimBackend,
    state_dir: &Path,
    tenants: &[&str],
    debounce: &str,
) -> Config {
    config_with(mode, gateway_url, "", backend, state_dir, tenants, debounce)
}

/// [`config`] with extra `[gateway]` lines (e.g. a `state_url`).
pub fn config_with(
    mode: &str,
    gateway_url: &str,
    gateway_extra: &str,
    backend: &SimBackend,
    state_dir: &Path,
    tenants: &[&str],
    debounce: &str,
) -> Config {
    let ids: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        r#"
[gateway]
mode = "{mode}"
url = "{gateway_url}"
ping_interval = "20s"
idle_timeout = "45s"
{gateway_extra}

[backend]
url = "{backend}"
max_in_flight = 4

{debounce}

[tenants]
ids = [{ids}]

[state]
dir = "{dir}"

[admin]
listen = "127.0.0.1:0"
"#,
        backend = backend.url(),
        ids = ids.join(", "),
        dir = state_dir.display(),
    );
    Config::from_toml_str(&text, state_dir, &env()).unwrap_or_else(|e| panic!("{e}"))
}

/// The next webhook call, failing the test if none comes within `within` (virtual time).
pub async fn expect_call(backend: &SimBackend, within: Duration) -> Call {
    tokio::time::timeout(within, backend.next_call())
        .await
        .expect("a webhook call within the time limit")
        .expect("the receiver is running")
}

/// Asserts that no webhook call arrives within `window` (virtual time).
pub async fn expect_no_call(backend: &SimBackend, window: Duration) {
    if let Ok(Some(call)) = tokio::time::timeout(window, backend.next_call()).await {
        panic!("unexpected webhook call: {} {}", call.status, call.body);
    }
}

/// Waits (in virtual time, at most `within`) until `condition` holds; panics naming `what`.
/// For state the sidecar updates after the receiver has already recorded a call.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A simulated gateway, a recording backend and a state directory for one test.
pub struct Rig {
    pub gateway: SimGateway,
    pub backend: SimBackend,
    pub dir: tempfile::TempDir,
}

pub async fn rig() -> Rig {
    Rig {
        gateway: SimGateway::start().await.unwrap(),
        backend: SimBackend::start().await.unwrap(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Rig {
    /// Starts a per-tenant sidecar with the default debounce settings.
    pub async fn start(&self, tenants: &[&str]) -> Sidecar {
        self.start_with("per-tenant", tenants, DEFAULT_DEBOUNCE)
            .await
    }

    pub async fn start_with(&self, mode: &str, tenants: &[&str], debounce: &str) -> Sidecar {
        let url = match mode {
            "shared" => self.gateway.shared_url(),
            _ => self.gateway.url_template(),
        };
        let config = config(
            mode,
            &url,
            &self.backend,
            self.dir.path(),
            tenants,
            debounce,
        );
        Sidecar::start(config).await.unwrap()
    }

    /// Starts with every tenant open and takes the first `connected` report of each.
    pub async fn start_connected(&self, tenants: &[&str]) -> Sidecar {
        for t in tenants {
            self.gateway.set_snapshot(t, sim::baileys_open());
        }
        let sidecar = self.start(tenants).await;
        let mut seen: Vec<String> = Vec::new();
        for _ in tenants {
            let call = expect_call(&self.backend, Duration::from_secs(60)).await;
            assert_eq!(call.status, "connected");
            seen.push(call.tenant_id);
        }
        seen.sort();
        let mut want: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
        want.sort();
        assert_eq!(seen, want);
        sidecar
    }
}
