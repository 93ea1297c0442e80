//! The binary under systemd's notify protocol, as `systemd/wa-status-sidecar.service` runs it
//! (`Type=notify`, `WatchdogSec=`, `ExecReload=kill -HUP`): a real `wa-status-sidecar run`
//! process, with `NOTIFY_SOCKET` pointing at a datagram socket this test listens on, against the
//! simulated gateway and backend. Real time: this is a process test; every wait is bounded.

use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::time::timeout;

use crate::common::{rig, Proc};

/// The longest any single step may take; the whole test normally runs in about a second.
const STEP: Duration = Duration::from_secs(5);
/// systemd's `WATCHDOG_USEC` for the test: the sidecar should ping every 100 ms.
const WATCHDOG_USEC: &str = "200000";

/// Receives notify datagrams in order, failing the test on a timeout.
struct Notifications {
    socket: UnixDatagram,
    /// Every message received so far, for failure messages.
    seen: Vec<String>,
}

impl Notifications {
    async fn next(&mut self, sidecar: &Proc, what: &str) -> String {
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
    async fn expect(&mut self, sidecar: &Proc, expected: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_notify_protocol_from_ready_through_reload_to_stopping() {
    let rig = rig().await;
    rig.write_config(&["alpha".into()]);
    let notify_path = rig.dir.path().join("notify.sock");
    let mut notes = Notifications {
        socket: UnixDatagram::bind(&notify_path).unwrap(),
        seen: Vec::new(),
    };
    // A clean environment: no WATCHDOG_PID (the watchdog is meant for us), no inherited
    // CREDENTIALS_DIRECTORY/STATE_DIRECTORY/RUST_LOG from whoever runs the tests.
    let mut command = rig.command(1);
    command
        .env_clear()
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env("RUST_LOG", "info")
        // As the unit sets it: plain text for journald (the logger colors even when stderr is
        // not a terminal).
        .env("NO_COLOR", "1");
    let mut sidecar = rig.spawn_command(1, command);
    let gateway = &rig.gateway;
    let secret = std::fs::read_to_string(rig.dir.path().join("secret")).unwrap();

    // READY=1 comes first, and only once the admin API serves.
    let first = notes.next(&sidecar, "READY=1").await;
    assert_eq!(
        first,
        "READY=1",
        "the first message; log:\n{}",
        sidecar.log()
    );
    let livez = timeout(STEP, reqwest::get(rig.admin_url("/livez")))
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
    rig.write_config(&["alpha".into(), "beta".into()]);
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
        !log.contains(secret.as_str()),
        "the secret must never reach the log:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "NO_COLOR=1 gives journald plain text, without ANSI escapes:\n{log}"
    );
}
