//! Hostile peers against the real binary (issue 12): a gateway that floods flaps and 1 MiB close
//! messages, gateway and backend text with line breaks and terminal escapes, and admin clients
//! that try to take the descriptors the links need. `wa-status-sidecar run` as a child process
//! against servers in this test process; real time, every wait a bounded poll.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::common::{expect_call, rig, Proc, Rig};
use wa_status_sidecar::sim::{self, Reply};

const SECOND: Duration = Duration::from_secs(1);

/// A server WebSocket frame (unmasked): FIN, `opcode`, the shortest length encoding.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend(payload);
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(1, payload.as_bytes())
}

/// A gateway that answers each `/ws/{tenant}` upgrade with `script(tenant, nth connection)` as
/// raw bytes, then reads (and drops) whatever the sidecar sends until it hangs up.
struct HostileGateway {
    addr: SocketAddr,
    connections: Arc<Mutex<HashMap<String, usize>>>,
    /// Bytes written so far, all links together.
    written: Arc<AtomicUsize>,
}

impl HostileGateway {
    async fn start(script: impl Fn(&str, usize) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (counts, total) = (connections.clone(), written.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counts, total, script) = (counts.clone(), total.clone(), script.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
                        if stream.read_buf(&mut request).await.unwrap_or(0) == 0 {
                            return;
                        }
                    }
                    let request = String::from_utf8_lossy(&request).into_owned();
                    let tenant = request
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.strip_prefix("/ws/"))
                        .unwrap_or_default()
                        .to_string();
                    let key = request
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-key"))
                        .map(|(_, value)| value.trim().to_string())
                        .unwrap_or_default();
                    let nth = {
                        let mut counts = counts.lock().unwrap();
                        let n = counts.entry(tenant.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let head = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        derive_accept_key(key.as_bytes())
                    );
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let bytes = script(&tenant, nth);
                    for chunk in bytes.chunks(256 * 1024) {
                        if stream.write_all(chunk).await.is_err() {
                            return;
                        }
                        total.fetch_add(chunk.len(), Ordering::SeqCst);
                    }
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        HostileGateway {
            addr,
            connections,
            written,
        }
    }

    fn connections(&self, tenant: &str) -> usize {
        self.connections
            .lock()
            .unwrap()
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

/// A process config against `gateway_url` (pings every 20 s, idle timeout 60 s); `extra` goes at
/// the end.
fn write_config(rig: &Rig, gateway_url: &str, tenants: &[String], extra: &str) {
    let gateway =
        format!("url = \"{gateway_url}\"\nping_interval = \"20s\"\nidle_timeout = \"60s\"");
    rig.write_config_for(&gateway, tenants, extra);
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The sum of every series of a metric in the admin API's exposition.
async fn metric_sum(rig: &Rig, name: &str) -> Option<f64> {
    let text = reqwest::get(rig.admin_url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Polls `condition` every 100 ms until it holds; panics naming `what` after `within`.
async fn until<F, Fut>(within: Duration, what: &str, child: &Proc, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out: {what}; log:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The acceptance test of issue 12: 40 links, 300,000 open/close pairs and three close messages
/// of (almost) 1 MiB on each; the sidecar's resident memory stays under 64 MiB throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_gateway_cannot_grow_the_sidecar_past_64_mib() {
    const LINKS: usize = 40;
    const PAIRS_PER_LINK: usize = 300_000 / LINKS;
    const BIG_PER_LINK: usize = 3;
    let close = text(&sim::baileys_close(428, "Connection Closed"));
    let open = text(&sim::baileys_open());
    // The largest close message that fits the default 1 MiB frame limit.
    let envelope = sim::baileys_close(428, "").len();
    let big = text(&sim::baileys_close(428, &"x".repeat((1 << 20) - envelope)));
    assert!(big.len() - 10 <= 1 << 20);
    let gateway = HostileGateway::start(move |_, nth| {
        if nth > 1 {
            // A reconnect (there should be none) gets a quiet link.
            return text(&sim::baileys_open());
        }
        let mut bytes = Vec::with_capacity(PAIRS_PER_LINK * (close.len() + open.len()));
        for i in 0..PAIRS_PER_LINK {
            if i % (PAIRS_PER_LINK / BIG_PER_LINK) == PAIRS_PER_LINK / BIG_PER_LINK / 2 {
                bytes.extend(&big);
            }
            bytes.extend(&close);
            bytes.extend(&open);
        }
        bytes
    })
    .await;
    let rig = rig().await;
    let tenants: Vec<String> = (0..LINKS).map(|i| format!("business_{i}")).collect();
    write_config(
        &rig,
        &format!("ws://{}/ws/{{tenant}}", gateway.addr),
        &tenants,
        "",
    );
    let mut child = rig.spawn(1);
    let pid = child.child.id();

    let frames = (LINKS * (2 * PAIRS_PER_LINK + BIG_PER_LINK)) as f64;
    let mut peak_rss = 0;
    let started = Instant::now();
    until(Duration::from_secs(240), "every frame read", &child, || {
        let rig = &rig;
        let (rss, _) = memory_kib(pid);
        peak_rss = peak_rss.max(rss);
        async move { metric_sum(rig, "wa_sidecar_frames_total").await >= Some(frames) }
    })
    .await;
    let flood = started.elapsed();
    let (rss, hwm) = memory_kib(pid);
    eprintln!(
        "hostile flood: {frames} frames ({} MiB) in {flood:?}; VmRSS {} KiB after, VmHWM {hwm} KiB, \
         highest VmRSS sampled {peak_rss} KiB",
        gateway.written.load(Ordering::SeqCst) >> 20,
        rss,
    );
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB");
    for tenant in &tenants {
        assert_eq!(gateway.connections(tenant), 1, "{tenant}: the link held");
    }
    // Everything but the 1 MiB frames' buffers is back: the read buffers shrank.
    assert!(rss < 40 * 1024, "RSS after the flood {rss} KiB");
    child.terminate().await;
}

/// Text from the gateway (a close reason, a frame) and from the backend (an error body) with a
/// line break and an ANSI escape never reaches the log unescaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_the_gateway_and_the_backend_are_escaped_in_the_log() {
    const FORGED: &str = "\nINFO wa_status_sidecar: FORGED \x1b[31mred\x1b[0m";
    let reason_frame = {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend(format!("bye{FORGED}").as_bytes().iter().take(120));
        frame(8, &payload)
    };
    let gateway = HostileGateway::start(move |tenant, nth| {
        match (tenant, nth) {
            // A logout whose message carries the forgery, then a close frame with it.
            ("business_1", 1) => {
                let mut bytes = text(&sim::baileys_close(401, &format!("logout{FORGED}")));
                bytes.extend(&reason_frame);
                bytes
            }
            _ => text(&sim::baileys_open()),
        }
    })
    .await;
    let rig = rig().await;
    // The backend refuses the payload with a body that carries the forgery too.
    rig.backend.set_default(Reply {
        body: format!("refused{FORGED}"),
        ..Reply::status(400)
    });
    write_config(
        &rig,
        &format!("ws://{}/ws/{{tenant}}", gateway.addr),
        &["business_1".to_string()],
        "",
    );
    let mut command = rig.command(1);
    command.env("RUST_LOG", "debug");
    let mut child = rig.spawn_command(1, command);
    let call = expect_call(&rig.backend, 20 * SECOND).await;
    assert!(call.body.contains("logged out"), "{}", call.body);
    until(
        20 * SECOND,
        "the refusal and the close logged",
        &child,
        || {
            let log = child.log();
            async move {
                log.contains("backend refused the payload")
                    && log.contains("closed by the gateway (1000 bye")
            }
        },
    )
    .await;
    child.terminate().await;
    let log = child.log();
    assert!(!log.contains('\x1b'), "an escape reached the log:\n{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("INFO wa_status_sidecar: FORGED"),
            "a forged line:\n{log}"
        );
    }
    let escaped = r"\nINFO wa_status_sidecar: FORGED \u{1b}[31mred";
    assert!(
        log.lines()
            .any(|l| l.contains("backend refused the payload") && l.contains(escaped)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("closed by the gateway (1000 bye") && l.contains(r"\n")),
        "{log}"
    );
}

/// `RUST_LOG=trace` does not put a credential in the log, in either format: tungstenite's TRACE
/// line prints the whole handshake, the token and the header values with it, and no other
/// crate's TRACE line is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stay_out_of_the_log_even_at_trace() {
    const TOKEN: &str = "gateway-token-3f9a";
    const HEADER: &str = "header-value-7c2e";
    let rig = rig().await;
    rig.gateway.set_snapshot("business_1", sim::baileys_open());
    let gateway = format!(
        "url = \"{}\"\ntoken = \"{TOKEN}\"\n[gateway.headers]\nX-Api-Key = \"{HEADER}\"",
        rig.gateway.url_template()
    );
    for (n, format) in [(1, "text"), (2, "json")] {
        let log_section = format!("[log]\nformat = \"{format}\"\n");
        rig.write_config_for(&gateway, &["business_1".to_string()], &log_section);
        let mut command = rig.command(n);
        command.env("RUST_LOG", "trace");
        let mut child = rig.spawn_command(n, command);
        if n == 1 {
            let call = expect_call(&rig.backend, 20 * SECOND).await;
            assert_eq!(call.status, "connected");
        }
        // Logged once the handshake, whose request tungstenite traces, is done.
        until(20 * SECOND, "the link up", &child, || {
            let log = child.log();
            async move { log.contains("gateway link up") }
        })
        .await;
        child.terminate().await;
        let log = rig.log(n);
        for credential in [TOKEN, HEADER, crate::common::SECRET] {
            assert!(
                !log.contains(credential),
                "{credential} in the {format} log:\n{log}"
            );
        }
    }
}

/// A gateway that cannot be reached is said at WARN at once, naming a tenant and the error, and
/// at most once a minute for all the links together, however often they retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_be_reached_is_warned_once_a_minute_for_all_links() {
    let rig = rig().await;
    // A port nobody listens on: every connect is refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let gateway = format!("url = \"ws://{refused}/ws/{{tenant}}\"");
    let ids: Vec<String> = (1..=3).map(|i| format!("business_{i}")).collect();
    rig.write_config_for(&gateway, &ids, "");
    let mut child = rig.spawn(1);
    const WARNED: &str = "cannot connect to the gateway";
    until(20 * SECOND, "the warning", &child, || {
        let log = child.log();
        async move { log.contains(WARNED) }
    })
    .await;
    // Three links, each retrying from 0.5 s: at least 9 attempts in a few seconds.
    until(30 * SECOND, "nine connect attempts", &child, || async {
        metric_sum(&rig, "wa_sidecar_reconnects")
            .await
            .unwrap_or(0.0)
            >= 9.0
    })
    .await;
    child.terminate().await;
    let log = rig.log(1);
    let warned: Vec<&str> = log.lines().filter(|l| l.contains(WARNED)).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("business_") && warned[0].contains("refused"),
        "{}",
        warned[0]
    );
}

/// `backend.allow_plain_http` is a risk the operator took: it is said at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_plain_http_is_warned_at_start() {
    let rig = rig().await;
    rig.write_config_with(&["business_1".to_string()], "");
    // The same config, but the backend named by a non-loopback address of this machine's
    // loopback range is not possible; use a private address that is never contacted here.
    let text = std::fs::read_to_string(rig.config_path())
        .unwrap()
        .replace(&rig.backend.url(), "http://10.255.255.1:9")
        .replace(
            "timeout = \"2s\"",
            "timeout = \"2s\"\nallow_plain_http = true",
        );
    std::fs::write(rig.config_path(), text).unwrap();
    let mut child = rig.spawn(1);
    until(20 * SECOND, "the warning", &child, || {
        let log = child.log();
        async move { log.contains("allow_plain_http") }
    })
    .await;
    let log = child.log();
    let line = log
        .lines()
        .find(|l| l.contains("allow_plain_http"))
        .unwrap();
    assert!(line.contains("WARN") && line.contains("in clear"), "{line}");
    child.terminate().await;
}

/// Slow admin clients against a sidecar whose open-files limit barely fits its links: the
/// admin server takes only what the links and the backend calls leave, so after a gateway
/// restart every link reconnects and a logout is delivered, while 100 clients keep trying to
/// hold admin connections. (Before: held admin connections stopped the links from reconnecting
/// and produced a false "gateway unreachable" bell.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clients_cannot_take_the_descriptors_the_links_need() {
    const TENANTS: usize = 20;
    // 20 links, 16 backend and 16 state-fetch connections and 32 for the process leave 12 for
    // the admin API; the process itself needs about 12 plus its links.
    const LIMIT: u64 = 96;
    let rig = rig().await;
    let tenants: Vec<String> = (0..TENANTS).map(|i| format!("t{i}")).collect();
    for t in &tenants {
        rig.gateway.set_snapshot(t, sim::baileys_open());
    }
    rig.write_config(&tenants);
    let mut command = rig.command(1);
    // SAFETY: setrlimit is async-signal-safe; the closure runs in the child before exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = rig.spawn_command(1, command);
    let pid = child.child.id();
    for _ in 0..TENANTS {
        let call = expect_call(&rig.backend, 20 * SECOND).await;
        assert_eq!(call.status, "connected");
    }

    // 100 clients, each holding a half-sent request head and opening a new one whenever the
    // server closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let addr: SocketAddr = format!("127.0.0.1:{}", rig.admin_port).parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..100 {
        let (stop, closed) = (stop.clone(), closed_by_server.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.write_all(b"GET /tenants HTTP/1.1\r\nHost: a").await;
                let mut buf = [0u8; 64];
                loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let read =
                        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf));
                    if let Ok(Ok(0) | Err(_)) = read.await {
                        closed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(SECOND).await;

    // A gateway restart: every link drops and must reconnect (a new socket each); one session
    // comes back logged out, which must reach the backend (a webhook connection).
    rig.gateway
        .set_snapshot("t0", sim::baileys_close(401, "Connection Failure"));
    rig.gateway.drop_all();
    let logout = expect_call(&rig.backend, 20 * SECOND).await;
    assert_eq!(
        (logout.tenant_id.as_str(), logout.status.as_str()),
        ("t0", "disconnected")
    );
    let mut most_fds = 0;
    until(20 * SECOND, "every link back up", &child, || {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        most_fds = most_fds.max(fds);
        let back = tenants
            .iter()
            .all(|t| rig.gateway.accepted(t) >= 2 && rig.gateway.open_links(t) == 1);
        async move { back }
    })
    .await;
    // A probe still gets through while the clients keep at it.
    let livez = tokio::time::timeout(2 * SECOND, reqwest::get(rig.admin_url("/livez")))
        .await
        .expect("/livez answered within 2 s")
        .unwrap();
    assert_eq!(livez.status(), 200);
    tokio::time::sleep(6 * SECOND).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    assert!(
        closed_by_server.load(Ordering::SeqCst) >= 100,
        "the admin server closed the slow clients (evicted or timed out): {}",
        closed_by_server.load(Ordering::SeqCst)
    );
    assert!(most_fds as u64 <= LIMIT, "{most_fds} descriptors");
    eprintln!("open-files limit {LIMIT}: at most {most_fds} descriptors seen in use");
    let more: Vec<_> = std::iter::from_fn(|| rig.backend.try_next_call()).collect();
    assert!(
        more.iter().all(|c| c.status != "disconnected"),
        "a false bell: {more:?}"
    );
    child.terminate().await;
    let log = child.log();
    assert!(!log.contains("Too many open files"), "{log}");
}
