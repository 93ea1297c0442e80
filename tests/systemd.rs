//! The binary under systemd's notify protocol, as `systemd/wa-status-sidecar.service` runs it
//! (`Type=notify`, `WatchdogSec=`, `ExecReload=kill -HUP`): a real `wa-status-sidecar run`
//! process, with `NOTIFY_SOCKET` pointing at a datagram socket this test listens on, against the
//! simulated gateway and backend. Real time: this is a process test; every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::time::{timeout, Instant};

use wa_status_sidecar::sim::{SimBackend, SimGateway};

/// The longest any single step may take; the whole test normally runs in about a second.
const STEP: Duration = Duration::from_secs(5);
/// systemd's `WATCHDOG_USEC` for the test: the sidecar should ping every 100 ms.
const WATCHDOG_USEC: &str = "200000";
const SECRET: &str = "systemd-test-secret-71c2";

/// A running sidecar process; killed if the test fails before it exits.
struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill only sends a signal to our own child process.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// The process's log so far (stderr), for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits at most `within` for the process to exit.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not exit within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Receives notify datagrams in order, failing the test on a timeout.
struct Notifications {
    socket: UnixDatagram,
    /// Every message received so far, for failure messages.
    seen: Vec<String>,
}

impl Notifications {
    async fn next(&mut self, sidecar: &Sidecar, what: &str) -> String {
        let mut buf = [0u8; 4096];
        let n = match timeout(STEP, self.socket.recv(&mut buf)).await {
            Ok(received) => received.expect("recv on the notify socket"),
            Err(_) => panic!(
                "no notify message within {STEP:?} while waiting for {what}; received so far: \
                 {:?}; log:\n{}",
                self.seen,
                sidecar.log()
            ),
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(message.clone());
        message
    }

    /// Waits for `expected`, allowing only `WATCHDOG=1` pings before it.
    async fn expect(&mut self, sidecar: &Sidecar, expected: &str) {
        loop {
            let message = self.next(sidecar, expected).await;
            if message == expected {
                return;
            }
            assert_eq!(
                message, "WATCHDOG=1",
                "expected {expected} (or watchdog pings); received so far: {:?}",
                self.seen
            );
        }
    }
}

fn write_config(path: &Path, gateway: &SimGateway, backend: &SimBackend, tenants: &[&str]) {
    let ids: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
    let text = format!(
        r#"
[gateway]
url = "{gateway}"

[backend]
url = "{backend}"

[tenants]
ids = [{ids}]

[state]
dir = "{state}"

[admin]
listen = "127.0.0.1:0"
"#,
        gateway = gateway.url_template(),
        backend = backend.url(),
        ids = ids.join(", "),
        state = path.parent().unwrap().join("state").display(),
    );
    std::fs::write(path, text).unwrap();
}

/// The admin address from the "admin API listening" log line.
fn admin_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("admin API listening"))?;
    let start = line.find("admin=")? + "admin=".len();
    Some(line[start..].split_whitespace().next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_notify_protocol_from_ready_through_reload_to_stopping() {
    let gateway = SimGateway::start().await.unwrap();
    let backend = SimBackend::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let config = dir.path().join("sidecar.toml");
    write_config(&config, &gateway, &backend, &["alpha"]);

    let notify_path = dir.path().join("notify.sock");
    let mut notes = Notifications {
        socket: UnixDatagram::bind(&notify_path).unwrap(),
        seen: Vec::new(),
    };
    let log = dir.path().join("sidecar.log");
    // A clean environment: no WATCHDOG_PID (the watchdog is meant for us), no inherited
    // CREDENTIALS_DIRECTORY/STATE_DIRECTORY/RUST_LOG from whoever runs the tests.
    let child = Command::new(env!("CARGO_BIN_EXE_wa-status-sidecar"))
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env("INTERNAL_SHARED_SECRET", SECRET)
        .env("RUST_LOG", "info")
        // As the unit sets it: plain text for journald (the logger colors even when stderr is
        // not a terminal), which is also what admin_addr() parses.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the binary starts");
    let mut sidecar = Sidecar { child, log };

    // READY=1 comes first, and only once the admin API serves.
    let first = notes.next(&sidecar, "READY=1").await;
    assert_eq!(
        first,
        "READY=1",
        "the first message; log:\n{}",
        sidecar.log()
    );
    let admin = admin_addr(&sidecar.log())
        .unwrap_or_else(|| panic!("no admin address logged before READY=1:\n{}", sidecar.log()));
    let livez = timeout(STEP, reqwest::get(format!("http://{admin}/livez")))
        .await
        .expect("/livez answers in time")
        .expect("/livez is reachable once READY=1 was sent");
    assert_eq!(livez.status(), 200);
    timeout(STEP, gateway.wait_accepted("alpha", 1))
        .await
        .expect("the configured tenant's link reaches the gateway");

    // The watchdog: nothing but WATCHDOG=1 while running, at least twice (every 100 ms).
    for _ in 0..2 {
        let message = notes.next(&sidecar, "WATCHDOG=1").await;
        assert_eq!(message, "WATCHDOG=1", "received so far: {:?}", notes.seen);
    }

    // SIGHUP (ExecReload): RELOADING=1, the new config applied, READY=1.
    write_config(&config, &gateway, &backend, &["alpha", "beta"]);
    sidecar.signal(libc::SIGHUP);
    notes.expect(&sidecar, "RELOADING=1").await;
    notes.expect(&sidecar, "READY=1").await;
    timeout(STEP, gateway.wait_accepted("beta", 1))
        .await
        .unwrap_or_else(|_| panic!("the reload added tenant beta; log:\n{}", sidecar.log()));
    assert_eq!(
        gateway.accepted("alpha"),
        1,
        "the unchanged tenant's link was kept across the reload"
    );
    // The watchdog still runs after the reload.
    notes.expect(&sidecar, "WATCHDOG=1").await;

    // SIGTERM (systemctl stop): STOPPING=1, then a clean exit.
    sidecar.signal(libc::SIGTERM);
    notes.expect(&sidecar, "STOPPING=1").await;
    let status = sidecar.wait_exit(STEP).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        sidecar.log()
    );
    let log = sidecar.log();
    assert!(
        !log.contains(SECRET),
        "the secret must never reach the log:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "NO_COLOR=1 gives journald plain text, without ANSI escapes:\n{log}"
    );
}
