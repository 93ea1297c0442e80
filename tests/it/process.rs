//! Fault injection against the real binary (issue 5): `wa-status-sidecar run` as a child process,
//! killed with SIGKILL, stopped with SIGTERM, reloaded with SIGHUP, against the simulated gateway
//! and the recording backend running in this test process. Real time, short graces; every wait
//! is a poll with a deadline.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::common::{calls_until_quiet, expect_call, key, rig, BIN, SECRET};
use wa_status_sidecar::sim::{self, Call, Reply};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_hanging_delivery_then_restart_delivers_with_the_same_key() {
    let rig = rig().await;
    rig.write_config(&["b1".into()]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    // The backend accepts the request and never answers in time.
    rig.backend
        .set_default(Reply::ok().with_delay(Duration::from_secs(3600)));
    let mut child = rig.spawn(1);
    let first = expect_call(&rig.backend, 20 * SECOND).await;
    assert_eq!(first.status, "connected");
    child.kill9();

    rig.backend.set_default(Reply::ok());
    let mut child = rig.spawn(2);
    let again = expect_call(&rig.backend, 20 * SECOND).await;
    assert_eq!(again.body, first.body);
    assert_eq!(
        key(&again),
        key(&first),
        "the same transition, the same key"
    );
    assert_eq!(
        again.header("x-status-changed-at"),
        first.header("x-status-changed-at")
    );
    rig.wait_readyz(200, 10 * SECOND).await;
    let more = calls_until_quiet(&rig.backend, 3 * SECOND, 10 * SECOND).await;
    assert!(more.is_empty(), "delivered once more than needed: {more:?}");
    child.terminate().await;

    // Delivered and acknowledged: a third run sends nothing.
    let mut child = rig.spawn(3);
    rig.wait_readyz(200, 10 * SECOND).await;
    let more = calls_until_quiet(&rig.backend, 3 * SECOND, 10 * SECOND).await;
    assert!(more.is_empty(), "{more:?}");
    child.terminate().await;
}

/// Records each tenant's key; a resend of a tenant's report must carry the key it had.
fn record(calls: Vec<Call>, keys: &mut HashMap<String, String>) {
    for call in calls {
        assert_eq!(call.status, "connected");
        let k = key(&call);
        let first = keys.entry(call.tenant_id.clone()).or_insert(k.clone());
        assert_eq!(*first, k, "{}: a resend must reuse the key", call.tenant_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_heavy_state_writes_loses_nothing_and_resends_nothing_unchanged() {
    let rig = rig().await;
    let tenants: Vec<String> = (0..300).map(|i| format!("tenant_{i:03}")).collect();
    rig.write_config(&tenants);
    for t in &tenants {
        rig.gateway.set_snapshot(t, sim::baileys_open());
    }
    // Every tenant's key, as the backend saw it first; and what it acknowledged.
    let mut keys: HashMap<String, String> = HashMap::new();

    // Each call takes 50 ms, 16 in flight: the storm of 300 first reports lasts about a second.
    rig.backend
        .set_default(Reply::ok().with_delay(Duration::from_millis(50)));
    // Kill the process again and again while the first reports are decided, appended to the
    // journal, delivered and compacted into the state file (at every start).
    let mut run = 0;
    for delay_ms in [300u64, 100, 500, 200, 0] {
        run += 1;
        let mut child = rig.spawn(run);
        // Kill a little after the storm (re)starts: the first call of this run, or 3 s if
        // nothing is left to send.
        let mut calls = Vec::new();
        if let Ok(Some(call)) = tokio::time::timeout(3 * SECOND, rig.backend.next_call()).await {
            calls.push(call);
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill9();
        while let Some(call) = rig.backend.try_next_call() {
            calls.push(call);
        }
        record(calls, &mut keys);
        if run == 1 {
            assert!(
                !keys.is_empty() && keys.len() < tenants.len(),
                "the first kill should interrupt the storm: {} reports",
                keys.len()
            );
        }
    }
    rig.backend.set_default(Reply::ok());

    // A clean run finishes what is owed: every tenant is reported, each with its one key.
    run += 1;
    let mut child = rig.spawn(run);
    let calls = calls_until_quiet(&rig.backend, 3 * SECOND, 60 * SECOND).await;
    record(calls, &mut keys);
    assert_eq!(keys.len(), tenants.len(), "a first report was lost");
    rig.wait_readyz(200, 10 * SECOND).await;
    child.terminate().await;

    // Nothing changed: nothing is sent. Then one tenant changes: only it is sent.
    run += 1;
    rig.gateway
        .set_snapshot("tenant_007", sim::baileys_close(401, "logged out"));
    let mut child = rig.spawn(run);
    let calls = calls_until_quiet(&rig.backend, 4 * SECOND, 30 * SECOND).await;
    let summary: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.tenant_id.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(summary, [("tenant_007", "disconnected")]);
    child.terminate().await;
    let log = rig.log(run);
    assert!(!log.contains("set aside"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_owed_delivery_tries_once_more_exits_0_and_resumes_later() {
    let rig = rig().await;
    rig.write_config(&["b1".into()]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    // Failing, and asking for a 5-minute pause: only the shutdown flush tries again soon.
    rig.backend
        .set_default(Reply::status(503).with_header("retry-after", "300"));
    let mut child = rig.spawn(1);
    let first = expect_call(&rig.backend, 20 * SECOND).await;
    assert_eq!(first.answered, 503);

    child.signal(libc::SIGTERM);
    let flush = expect_call(&rig.backend, 11 * SECOND).await;
    assert_eq!(
        key(&flush),
        key(&first),
        "the flush retries the same transition"
    );
    let status = child.wait_exit(15 * SECOND).await;
    assert!(status.success(), "{status:?}");
    assert!(
        rig.backend.try_next_call().is_none(),
        "exactly one more try"
    );
    let log = rig.log(1);
    assert!(log.contains("deliveries still owed"), "{log}");
    assert!(!log.contains(SECRET), "the secret reached the log");

    rig.backend.set_default(Reply::ok());
    let mut child = rig.spawn(2);
    let delivered = expect_call(&rig.backend, 20 * SECOND).await;
    assert_eq!((delivered.answered, key(&delivered)), (200, key(&first)));
    child.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_for_a_wrong_secret_is_fixed_by_editing_the_secret_and_sighup() {
    let rig = rig().await;
    std::fs::write(rig.dir.path().join("secret"), "the-wrong-secret").unwrap();
    rig.write_config(&["b1".into()]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    rig.backend.set_default(Reply::status(401));
    let mut child = rig.spawn(1);

    let refused = expect_call(&rig.backend, 20 * SECOND).await;
    assert_eq!(
        refused.header("x-internal-secret"),
        Some("the-wrong-secret")
    );
    rig.wait_readyz(503, 10 * SECOND).await;
    let body = reqwest::get(rig.admin_url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("INTERNAL_SHARED_SECRET"), "{body}");

    // The operator fixes the secret file and reloads; the retry goes at once, not in 30 s.
    std::fs::write(rig.dir.path().join("secret"), SECRET).unwrap();
    rig.backend.set_default(Reply::ok());
    let reloaded_at = tokio::time::Instant::now();
    child.signal(libc::SIGHUP);
    let call = expect_call(&rig.backend, 10 * SECOND).await;
    assert!(reloaded_at.elapsed() < 10 * SECOND);
    assert_eq!(call.header("x-internal-secret"), Some(SECRET));
    assert_eq!((call.answered, key(&call)), (200, key(&refused)));
    rig.wait_readyz(200, 10 * SECOND).await;

    child.terminate().await;
    let log = rig.log(1);
    assert!(!log.contains(SECRET), "the secret reached the log");
}

#[test]
fn check_lists_every_mistake_of_a_bad_config_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[gateway]
mode = "sharded"
urll = "ws://gw/{tenant}"
ping_interval = 20
idle_timeout = "abc"
[backend]
url = "ftp://backend"
path = "api/webhook"
timeout = "0s"
max_in_flight = 0
secret = "hunter2"
[debounce]
connect_grace = true
flap_suppress = 500
flap_reuse = 750
terminal_codes = [401, 42, "x"]
[tenants]
ids = ["ok", "has space", ""]
[state]
dir = 5
[admin]
listen = "localhost"
[log]
format = "xml"
[extra]
"#,
    )
    .unwrap();
    let output = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("INTERNAL_SHARED_SECRET")
        .env_remove("BACKEND_INTERNAL_URL")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for path in [
        "gateway.mode",
        "gateway.url",
        "gateway.urll",
        "gateway.ping_interval",
        "gateway.idle_timeout",
        "backend.url",
        "backend.path",
        "backend.timeout",
        "backend.max_in_flight",
        "backend.secret",
        "debounce.connect_grace",
        "debounce.flap_reuse",
        "debounce.terminal_codes[1]",
        "debounce.terminal_codes[2]",
        "tenants.ids[1]",
        "tenants.ids[2]",
        "state.dir",
        "admin.listen",
        "log.format",
        "extra",
    ] {
        assert!(
            stderr.contains(&format!("\n  - {path}:")),
            "{path} missing from:\n{stderr}"
        );
    }
    assert!(stderr.contains(" problems:"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the secret was printed");
    assert!(output.stdout.is_empty());

    // The same binary accepts a good config and exits 0.
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(
        &path,
        "[gateway]\nurl = \"ws://127.0.0.1:1/ws/{tenant}\"\n[backend]\nurl = \"http://127.0.0.1:2\"\nsecret_file = \"secret\"\n[tenants]\nids = [\"b1\"]\n[state]\ndir = \"state\"\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("INTERNAL_SHARED_SECRET")
        .env_remove("BACKEND_INTERNAL_URL")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains(SECRET));
}

/// SPEC section 5 [rev 12]: nothing in a config file can panic the process. A duration that
/// overflows every arithmetic on it is a problem with exit 2, not a panic (exit 101).
#[test]
fn check_refuses_an_absurd_duration_with_exit_2_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absurd.toml");
    std::fs::write(
        &path,
        "[gateway]\nurl = \"ws://127.0.0.1:1/ws/{tenant}\"\nping_interval = \"400000000000y\"\n\
         [backend]\nurl = \"http://127.0.0.1:2\"\n[tenants]\nids = [\"b1\"]\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("INTERNAL_SHARED_SECRET", SECRET)
        .env_remove("BACKEND_INTERNAL_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\n  - gateway.ping_interval: ") && stderr.contains("30 days"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `check` shows every rev 12 setting with each credential redacted: the token from a file, a
/// header from the environment, the signing secrets, a URL's password and query key.
#[test]
fn check_summarises_the_credentials_without_showing_any() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    private("token", "token-file-61\n");
    private(
        "signing",
        "# current\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
    );
    private("ca.pem", &crate::pki::pki().ca_pem);
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        "[gateway]\nurl = \"wss://user:url-pass-63@127.0.0.1:1/ws/{tenant}?apikey=query-key-62\"\n\
         token_file = \"token\"\nca_file = \"ca.pem\"\n[gateway.headers_env]\nX-Api-Key = \"API_KEY\"\n\
         [backend]\nurl = \"https://127.0.0.1:2\"\nsigning_secret_file = \"signing\"\n\
         [debounce]\nstorm_fraction = 0.3\n[tenants]\nids = [\"b1\"]\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("INTERNAL_SHARED_SECRET", SECRET)
        .env("API_KEY", "env-header-64")
        .env_remove("BACKEND_INTERNAL_URL")
        .env_remove("WEBHOOK_SIGNING_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    for shown in [
        "token                   <redacted> (from gateway.token_file",
        "headers                 X-Api-Key: <redacted> (from env API_KEY)",
        "signing_secrets         1 secret(s) <redacted> (from backend.signing_secret_file",
        "apikey=<redacted>",
        "wss://user:<redacted>@127.0.0.1:1/ws/",
        "ca_file                 /",
        "storm_fraction          0.3",
    ] {
        assert!(stdout.contains(shown), "{shown} not in:\n{stdout}");
    }
    let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for secret in [
        SECRET,
        "token-file-61",
        "MfKQ9r8G",
        "query-key-62",
        "url-pass-63",
        "env-header-64",
    ] {
        assert!(!all.contains(secret), "{secret} shown:\n{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_sidecar_unready_while_it_keeps_delivering_from_memory() {
    use std::os::unix::process::CommandExt;
    let rig = rig().await;
    let tenants: Vec<String> = (0..100).map(|i| format!("tenant_{i:03}")).collect();
    rig.write_config(&tenants);
    for t in &tenants {
        rig.gateway.set_snapshot(t, sim::baileys_open());
    }
    // A disk that fills up after 8 KiB (less than the 100 records need): RLIMIT_FSIZE makes every write past it fail with EFBIG
    // (SIGXFSZ ignored, as a daemon would see ENOSPC). It applies to files the child writes: its
    // journal and snapshot; its log goes nowhere so that it is not limited.
    const LIMIT: libc::rlim_t = 8 * 1024;
    let mut command = rig.command(1);
    command.stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = rig.spawn_command(1, command);

    // Every first report is still delivered, from memory.
    let calls = calls_until_quiet(&rig.backend, 3 * SECOND, 60 * SECOND).await;
    let mut seen: Vec<&str> = calls.iter().map(|c| c.tenant_id.as_str()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), tenants.len());
    rig.wait_readyz(503, 10 * SECOND).await;
    let body = reqwest::get(rig.admin_url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("File too large") || body.contains("disk"),
        "{body}"
    );
    // Still serving: a new transition is delivered while the disk is full.
    rig.gateway
        .send("tenant_042", &sim::baileys_close(401, "logged out"));
    let call = expect_call(&rig.backend, 10 * SECOND).await;
    assert_eq!(
        (call.tenant_id.as_str(), call.status.as_str()),
        ("tenant_042", "disconnected")
    );

    // The operator frees space: the next compaction writes everything from memory, ready again.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit(2) on our own child's pid with a valid rlimit.
    let rc = unsafe {
        libc::prlimit(
            child.child.id() as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &unlimited,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0);
    rig.wait_readyz(200, 10 * SECOND).await;
    child.terminate().await;

    // Nothing was lost: a restart sends nothing, not even for tenant_042.
    rig.gateway
        .set_snapshot("tenant_042", sim::baileys_close(401, "logged out"));
    let mut child = rig.spawn(2);
    rig.wait_readyz(200, 10 * SECOND).await;
    let more = calls_until_quiet(&rig.backend, 3 * SECOND, 10 * SECOND).await;
    assert!(more.is_empty(), "{more:?}");
    child.terminate().await;
}

/// A loopback HTTP server, on its own thread, that gives every connection `answer`; returns its
/// port and how many connections it took.
fn answering(answer: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = taken.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.read(&mut [0u8; 4096]);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, taken)
}

/// `healthcheck` prints no password from its `--admin` URL (container engines keep its output)
/// and, like every client of the sidecar (SPEC 2 rev 12), follows no redirect.
#[test]
fn healthcheck_shows_no_password_and_follows_no_redirect() {
    let healthcheck = |admin: &str| {
        let output = Command::new(BIN)
            .args(["healthcheck", "--admin", admin])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };
    let (code, stderr) = healthcheck("http://probe:hunter2@127.0.0.1:1");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password was printed: {stderr}"
    );
    assert!(
        stderr.contains("http://probe:<redacted>@127.0.0.1:1/livez"),
        "{stderr}"
    );

    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n";
    let (target, reached) = answering(ok.to_string());
    let (redirect, _) = answering(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{target}/livez\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    ));
    let (code, stderr) = healthcheck(&format!("http://127.0.0.1:{redirect}"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("302"), "{stderr}");
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The same target asked directly passes.
    let (code, stderr) = healthcheck(&format!("http://127.0.0.1:{target}"));
    assert_eq!(code, Some(0), "{stderr}");
}

/// A reload whose config names a FIFO (here as `tenants.file`) is refused and the old config
/// kept; the process still answers the next SIGHUP and exits 0 on SIGTERM. Before, opening the
/// FIFO waited for ever on the signal loop: the next SIGHUP and SIGTERM were never handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_a_fifo_is_refused_and_signals_are_still_handled() {
    let rig = rig().await;
    std::fs::write(rig.dir.path().join("secret"), SECRET).unwrap();
    rig.write_config(&["b1".into()]);
    rig.gateway.set_snapshot("b1", sim::baileys_open());
    rig.gateway.set_snapshot("b2", sim::baileys_open());
    let mut child = rig.spawn(1);
    assert_eq!(expect_call(&rig.backend, 20 * SECOND).await.tenant_id, "b1");

    let fifo = rig.dir.path().join("tenants.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo has no memory effects.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let text = std::fs::read_to_string(rig.config_path()).unwrap();
    let with_fifo = text.replace("[tenants]\n", "[tenants]\nfile = \"tenants.fifo\"\n");
    std::fs::write(rig.config_path(), with_fifo).unwrap();
    child.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + 10 * SECOND;
    while !child.log().contains("not a regular file") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the FIFO was not refused; log:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next reload, with a good config adding b2, is handled.
    rig.write_config(&["b1".into(), "b2".into()]);
    child.signal(libc::SIGHUP);
    assert_eq!(expect_call(&rig.backend, 20 * SECOND).await.tenant_id, "b2");
    child.terminate().await;
}
