//! The one rig of the integration tests: a simulated gateway and a recording backend (real servers
//! on 127.0.0.1) and a state directory, driving either a library [`Sidecar`] (under tokio's paused
//! clock) or the real binary as a child process ([`Proc`], real time, every wait bounded).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use wa_status_sidecar::config::Config;
use wa_status_sidecar::sim::{self, Call, SimBackend, SimGateway};
use wa_status_sidecar::Sidecar;

pub const SECRET: &str = "test-secret-3f9a";

/// The environment the tests load configs with (the library reads a map as one), so tests
/// never touch the process environment.
pub fn env() -> HashMap<String, String> {
    HashMap::from([("INTERNAL_SHARED_SECRET".to_string(), SECRET.to_string())])
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

/// The sidecar binary built with these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_wa-status-sidecar");

/// A simulated gateway, a recording backend and a state directory for one test.
pub struct Rig {
    pub gateway: SimGateway,
    pub backend: SimBackend,
    pub dir: tempfile::TempDir,
    /// The admin port of a child process started by [`Rig::spawn`].
    pub admin_port: u16,
}

/// A free port on 127.0.0.1 (for a child process, which cannot report a port 0 back easily).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub async fn rig() -> Rig {
    let rig = Rig {
        gateway: SimGateway::start().await.unwrap(),
        backend: SimBackend::start().await.unwrap(),
        dir: tempfile::tempdir().unwrap(),
        admin_port: free_port(),
    };
    // The secret file of the process configs (`backend.secret_file = "secret"`).
    std::fs::write(rig.dir.path().join("secret"), SECRET).unwrap();
    rig
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

/// The process side of the rig: the real binary with a config file in the temp dir, short graces.
impl Rig {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sidecar.toml")
    }

    /// Writes the process config: per-tenant links to the gateway, pings every second, a 2 s
    /// disconnect grace, the secret from the `secret` file, the admin API on `admin_port`.
    pub fn write_config(&self, tenants: &[String]) {
        self.write_config_with(tenants, "");
    }

    /// [`Rig::write_config`] with extra lines at the end (after `[admin]`: start them with a
    /// section header).
    pub fn write_config_with(&self, tenants: &[String], extra: &str) {
        let gateway = format!(
            "url = \"{}\"\nping_interval = \"1s\"\nidle_timeout = \"5s\"",
            self.gateway.url_template()
        );
        self.write_config_for(&gateway, tenants, extra);
    }

    /// [`Rig::write_config_with`] with `gateway` as the body of the `[gateway]` section.
    pub fn write_config_for(&self, gateway: &str, tenants: &[String], extra: &str) {
        let ids: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
        let text = format!(
            r#"
[gateway]
{gateway}

[backend]
url = "{backend}"
secret_file = "secret"
timeout = "2s"

[debounce]
disconnect_grace = "2s"
connect_grace = "300ms"

[tenants]
ids = [{ids}]

[state]
dir = "state"

[admin]
listen = "127.0.0.1:{port}"
{extra}"#,
            backend = self.backend.url(),
            ids = ids.join(", "),
            port = self.admin_port,
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// The `run` command for the `n`-th process of a test, in a clean environment, its log
    /// (stderr) going to `run-N.log` in the temp dir.
    pub fn command(&self, n: usize) -> Command {
        let log = std::fs::File::create(self.log_path(n)).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env_remove("INTERNAL_SHARED_SECRET")
            .env_remove("BACKEND_INTERNAL_URL")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .env_remove("WA_SIDECAR_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// Starts the `n`-th process of a test.
    pub fn spawn(&self, n: usize) -> Proc {
        self.spawn_command(n, self.command(n))
    }

    /// Starts a command made by [`Rig::command`] and adjusted by the test.
    pub fn spawn_command(&self, n: usize, mut command: Command) -> Proc {
        Proc {
            child: command.spawn().expect("the binary starts"),
            log: self.log_path(n),
        }
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("run-{n}.log"))
    }

    /// The log of the `n`-th process.
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.log_path(n)).unwrap_or_default()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub async fn readyz(&self) -> Option<u16> {
        let response = reqwest::get(self.admin_url("/readyz")).await.ok()?;
        Some(response.status().as_u16())
    }

    /// Polls /readyz until it answers `status`.
    pub async fn wait_readyz(&self, status: u16, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.readyz().await == Some(status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A sidecar child process; killed if the test ends (or fails) before it exits.
pub struct Proc {
    pub child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child we spawned and have not yet waited for.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then asserts a clean exit (status 0) within 15 s.
    pub async fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "{status:?}; log:\n{}", self.log());
    }

    /// The process's log so far (stderr), for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (polling, bounded) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sidecar did not exit within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `Idempotency-Key` of a call.
pub fn key(call: &Call) -> String {
    call.header("idempotency-key").unwrap().to_string()
}

/// Every call arriving until none has come for `quiet` (bounded by `max`).
pub async fn calls_until_quiet(backend: &SimBackend, quiet: Duration, max: Duration) -> Vec<Call> {
    let deadline = tokio::time::Instant::now() + max;
    let mut calls = Vec::new();
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(quiet, backend.next_call()).await {
            Ok(Some(call)) => calls.push(call),
            _ => break,
        }
    }
    calls
}

/// A WAHA `session.status` event.
pub fn waha(tenant: &str, status: &str) -> String {
    serde_json::json!({
        "event": "session.status",
        "session": tenant,
        "me": null,
        "payload": {"status": status},
    })
    .to_string()
}

/// An Evolution API `connection.update` event.
pub fn evolution(tenant: &str, state: &str, status_reason: u16) -> String {
    serde_json::json!({
        "event": "connection.update",
        "instance": tenant,
        "data": {"instance": tenant, "state": state, "statusReason": status_reason},
        "server_url": "http://127.0.0.1:8080",
    })
    .to_string()
}

/// Every journal line in a state directory, oldest journal first.
pub fn journal_text(dir: &Path) -> String {
    let mut journals: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let gen = name
                .strip_prefix("journal-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()?;
            Some((gen, e.path()))
        })
        .collect();
    journals.sort();
    journals
        .into_iter()
        .map(|(_, p)| std::fs::read_to_string(p).unwrap())
        .collect()
}
