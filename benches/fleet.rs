//! The fleet benchmark (issue 6): the release sidecar, as a child process, against a load gateway
//! with N per-tenant WebSocket links and a recording backend that answers in about 1 ms, all on
//! 127.0.0.1. It prints one line of figures per run and checks them against the bars of SPEC
//! section 6.
//!
//! ```text
//! cargo bench --bench fleet -- --tenants 10000        # the full run (about a minute)
//! cargo bench --bench fleet -- --tenants 1000 --ci    # scripts/bench-ci: exits 1 on a regression
//! ```
//!
//! Phases, each bounded by a deadline, in one sidecar process:
//! 1. start: time from spawning the sidecar until the gateway holds all N links open (confirmed
//!    with the admin `/metrics` gauge `wa_sidecar_links{state="up"}`), then until the backend has
//!    the N first `connected` reports;
//! 2. steady: RSS (VmRSS) after a short settle, and CPU (utime + stime) over an idle window
//!    (default 20 s, one ping interval, so every link pings once in it) in which only pings flow;
//! 3. latency: terminal closes (401) to distinct tenants at a fixed rate (default 1,000 a second),
//!    time from the gateway sending each to the backend receiving its `disconnected` call; the
//!    sessions are then re-opened and their `connected` calls awaited;
//! 4. storm 1 (gateway restart): the gateway closes every link; the links reconnect and find their
//!    sessions open within `disconnect_grace`: backend calls must be 0; CPU over the storm;
//! 5. storm 2 (mass logout): every session logs out at once: time until the backend has all N
//!    `disconnected` calls (`max_in_flight` default 16), then RSS with every tenant logged out,
//!    and the peak RSS (VmHWM) of the whole run.
//!
//! Options: `--tenants N` (1000), `--idle-secs S` (20), `--events M` and `--rate R` for the
//! latency phase (1000, 1000 a second), `--bin PATH` (another sidecar binary, e.g. an older build
//! to compare), `--hold-secs S` (keep the sidecar running at the end, to attach a profiler),
//! `--ci` (exit 1 when memory per tenant or the restart storm's call count breaks its bar),
//! `--strict` (exit 1 when any bar breaks). The sidecar logs (RUST_LOG, default info) to a file in
//! a temporary directory; its warnings and errors are printed when a bar breaks.
//!
//! Run under `cargo test` (no `--bench` argument) it only says how to run it: it measures nothing
//! useful in a debug build.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// SPEC section 6 bars, for 10,000 tenants on 2 cores.
const BAR_LINKS_UP: Duration = Duration::from_secs(15);
const BAR_RSS_KIB: u64 = 64 * 1024;
const BAR_IDLE_CPU_PCT: f64 = 2.0;
const BAR_P99: Duration = Duration::from_millis(10);
const BAR_LOGOUT_STORM: Duration = Duration::from_secs(20);
/// The CI bar for memory: 64 MiB for 10,000 tenants is 6.5 KiB a tenant, above a fixed base for
/// the process itself: 9.8 MiB measured with 10 tenants (code, runtime, TLS roots, admin server),
/// plus 2 MiB for the backend connection pool and allocator slack.
const BAR_KIB_PER_TENANT: f64 = 6.5;
const BASE_KIB: u64 = 12 * 1024;

/// How long the backend takes to answer each call.
const BACKEND_DELAY: Duration = Duration::from_millis(1);
/// `debounce.connect_grace` for the run: short, so the first reports and the recoveries of the
/// latency phase do not make the run long. Storms are unaffected (a drop healed within
/// `disconnect_grace`, 60 s by default, is never reported; a logout is reported at once).
const CONNECT_GRACE: Duration = Duration::from_secs(2);
/// How often a waiting phase looks at its condition.
const POLL: Duration = Duration::from_millis(5);

const OPEN: &str = r#"{"event":"connection.update","data":{"connection":"open"}}"#;
/// Never printed or logged; the child reads it from its environment.
const SECRET: &str = "fleet-bench-secret";

struct Args {
    tenants: usize,
    idle: Duration,
    events: usize,
    rate: u32,
    ci: bool,
    strict: bool,
    /// Keeps the sidecar running this long after the run, to attach a profiler or debugger.
    hold: Duration,
    bin: PathBuf,
}

fn parse_args() -> Option<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if !raw.iter().any(|a| a == "--bench") {
        return None;
    }
    let mut args = Args {
        tenants: 1000,
        // One full ping interval (20 s by default): every link sends exactly one ping in it.
        idle: Duration::from_secs(20),
        events: 1000,
        rate: 1000,
        ci: false,
        strict: false,
        hold: Duration::ZERO,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_wa-status-sidecar")),
    };
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--bench" => {}
            "--tenants" => args.tenants = number(&value("--tenants")),
            "--idle-secs" => args.idle = Duration::from_secs(number(&value("--idle-secs")) as u64),
            "--events" => args.events = number(&value("--events")),
            "--rate" => args.rate = number(&value("--rate")).max(1) as u32,
            "--bin" => args.bin = PathBuf::from(value("--bin")),
            "--hold-secs" => args.hold = Duration::from_secs(number(&value("--hold-secs")) as u64),
            "--ci" => args.ci = true,
            "--strict" => args.strict = true,
            other => fail(&format!(
                "unknown argument {other}; usage: cargo bench --bench fleet -- [--tenants N] \
                 [--idle-secs S] [--events M] [--rate PER_SEC] [--bin PATH] [--ci] [--strict] \
                 [--hold-secs S]"
            )),
        }
    }
    if args.tenants == 0 {
        fail("--tenants must be at least 1");
    }
    args.events = args.events.min(args.tenants);
    Some(args)
}

fn number(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("{s} is not a number")))
}

fn fail(message: &str) -> ! {
    eprintln!("fleet: {message}");
    std::process::exit(2)
}

fn main() {
    let Some(args) = parse_args() else {
        println!("fleet: a benchmark; run it with `cargo bench --bench fleet -- --tenants 10000`");
        return;
    };
    // The gateway side of every link is a socket in this process (the sidecar raises its own).
    match wa_status_sidecar::system::raise_nofile_limit() {
        Ok(limit) if limit < args.tenants as u64 + 256 => fail(&format!(
            "the open-files limit is {limit}, too low for {} links; raise the hard limit \
             (ulimit -Hn, LimitNOFILE=)",
            args.tenants
        )),
        Ok(_) => {}
        Err(e) => fail(&format!("cannot raise the open-files limit: {e}")),
    }
    if !args.bin.exists() {
        fail(&format!(
            "{} is missing; build it with `cargo build --release`",
            args.bin.display()
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the runtime starts");
    let passed = runtime.block_on(run(&args));
    std::process::exit(if passed { 0 } else { 1 });
}

// ---------------------------------------------------------------------------------------------
// The load gateway: one small task per link, small WebSocket buffers, commands by tenant index.

enum Cmd {
    Send(Utf8Bytes),
    Close,
}

struct Gateway {
    addr: SocketAddr,
    links: Mutex<Vec<Option<mpsc::UnboundedSender<Cmd>>>>,
    /// Links whose handshake completed (all time) and links open now.
    accepted: AtomicUsize,
    open: AtomicUsize,
}

impl Gateway {
    async fn start(tenants: usize) -> Arc<Gateway> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let gateway = Arc::new(Gateway {
            addr: listener.local_addr().expect("gateway address"),
            links: Mutex::new((0..tenants).map(|_| None).collect()),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        let accept = gateway.clone();
        tokio::spawn(async move {
            // Ends with the runtime at the end of the run.
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(accept.clone().serve(stream));
                }
            }
        });
        gateway
    }

    fn send(&self, tenant: usize, frame: &Utf8Bytes) {
        if let Some(link) = &self.links.lock().unwrap()[tenant] {
            let _ = link.send(Cmd::Send(frame.clone()));
        }
    }

    /// A gateway restart: every link is closed.
    fn close_all(&self) {
        for link in self.links.lock().unwrap().iter_mut() {
            if let Some(link) = link.take() {
                let _ = link.send(Cmd::Close);
            }
        }
    }

    async fn serve(self: Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut path = String::new();
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            path = request.uri().path().to_string();
            Ok(response)
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let Ok(mut ws) =
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
        else {
            return;
        };
        let Some(index) = path
            .strip_prefix("/ws/tenant_")
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.links.lock().unwrap().len())
        else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.links.lock().unwrap()[index] = Some(tx);
        // The snapshot: the session is open.
        if ws.send(Message::text(OPEN)).await.is_err() {
            return;
        }
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Cmd::Send(frame)) => {
                        if ws.send(Message::Text(frame)).await.is_err() {
                            break;
                        }
                    }
                    Some(Cmd::Close) | None => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                        break;
                    }
                },
                // Reading answers the sidecar's pings.
                incoming = ws.next() => if !matches!(incoming, Some(Ok(_))) {
                    break;
                },
            }
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The recording backend: answers 200 after BACKEND_DELAY, keeps connections alive.

struct Call {
    tenant: usize,
    connected: bool,
    at: Instant,
}

#[derive(Default)]
struct Backend {
    calls: Mutex<Vec<Call>>,
}

#[derive(serde::Deserialize)]
struct Body {
    tenant_id: String,
    status: String,
}

impl Backend {
    async fn start() -> (Arc<Backend>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let backend = Arc::new(Backend::default());
        let record = backend.clone();
        let handler = move |body: Bytes| {
            let record = record.clone();
            async move {
                let at = Instant::now();
                if let Ok(body) = serde_json::from_slice::<Body>(&body) {
                    let tenant = body
                        .tenant_id
                        .strip_prefix("tenant_")
                        .and_then(|i| i.parse().ok())
                        .unwrap_or(usize::MAX);
                    record.calls.lock().unwrap().push(Call {
                        tenant,
                        connected: body.status == "connected",
                        at,
                    });
                }
                sleep(BACKEND_DELAY).await;
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    r#"{"ok": true}"#,
                )
            }
        };
        let app = axum::Router::new().fallback(handler);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (backend, addr)
    }

    fn len(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// Calls from index `from` on with this status.
    fn count(&self, from: usize, connected: bool) -> usize {
        self.calls.lock().unwrap()[from..]
            .iter()
            .filter(|c| c.connected == connected)
            .count()
    }
}

// ---------------------------------------------------------------------------------------------
// The sidecar process.

struct Sidecar {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Drop for Sidecar {
    /// A panic between start and `stop` must not leave the child running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Sidecar {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS and VmHWM in KiB.
    fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// utime + stime in seconds.
    fn cpu(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(11) + ticks(12)) as f64 / hz
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then up to 20 s for the graceful stop, then SIGKILL.
    async fn stop(mut self) {
        // SAFETY: signals our own child, by its pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.alive() && Instant::now() < deadline {
            sleep(Duration::from_millis(50)).await;
        }
        if self.alive() {
            eprintln!("fleet: the sidecar did not stop within 20 s of SIGTERM; killing it");
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// The last warnings and errors of the sidecar's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// Writes the sidecar's config; returns its path and the admin API's address.
fn write_config(
    dir: &Path,
    tenants: usize,
    gateway: SocketAddr,
    backend: SocketAddr,
) -> (PathBuf, SocketAddr) {
    let ids: Vec<String> = (0..tenants).map(|i| format!("\"tenant_{i}\"")).collect();
    let admin = free_port();
    let text = format!(
        r#"# Written by benches/fleet.rs.
[gateway]
url = "ws://{gateway}/ws/{{tenant}}"

[backend]
url = "http://{backend}"

[debounce]
connect_grace = "{grace}s"

[tenants]
ids = [{ids}]

[state]
dir = "{state}"

[admin]
listen = "{admin}"
"#,
        grace = CONNECT_GRACE.as_secs(),
        ids = ids.join(", "),
        state = dir.join("state").display(),
    );
    let path = dir.join("sidecar.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write the config");
    (path, admin)
}

/// Polls `done` until it holds or `within` passes; returns the time it took.
async fn wait_for(within: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        sleep(POLL).await;
    }
}

async fn links_up_metric(admin: SocketAddr) -> Option<u64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("wa_sidecar_links{state=\"up\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("timeout".into(), |d| format!("{:.2}", d.as_secs_f64()))
}

// ---------------------------------------------------------------------------------------------

async fn run(args: &Args) -> bool {
    let n = args.tenants;
    let dir = tempfile::tempdir().expect("a temp dir");
    let gateway = Gateway::start(n).await;
    let (backend, backend_addr) = Backend::start().await;
    let (config, admin) = write_config(dir.path(), n, gateway.addr, backend_addr);
    let log = dir.path().join("sidecar.log");
    let close_401: Utf8Bytes =
        wa_status_sidecar::sim::baileys_close(401, "Connection Failure").into();
    let open: Utf8Bytes = OPEN.into();
    let big = Duration::from_secs(120);

    // Phase 1: start.
    let started = Instant::now();
    let mut command = Command::new(&args.bin);
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("INTERNAL_SHARED_SECRET", SECRET)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create the sidecar log"));
    // If the bench itself dies (a panic, a SIGKILL from a timeout), the kernel stops the child:
    // an orphaned sidecar would keep 10,000 reconnect loops spinning on the machine.
    // SAFETY: prctl is async-signal-safe and only changes this child's own death signal.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start {}: {e}", args.bin.display())));
    let mut sidecar = Sidecar { child, admin, log };
    let links_up = wait_for(big, || gateway.open.load(Ordering::SeqCst) >= n)
        .await
        .map(|_| started.elapsed());
    let metric_up = links_up_metric(sidecar.admin).await;
    let first_reports = wait_for(big, || backend.count(0, true) >= n)
        .await
        .map(|_| started.elapsed());

    // Phase 2: steady memory and idle CPU.
    sleep(Duration::from_secs(2)).await;
    let (rss, _) = sidecar.memory();
    let cpu0 = sidecar.cpu();
    let calls0 = backend.len();
    sleep(args.idle).await;
    let idle_cpu_pct = (sidecar.cpu() - cpu0) / args.idle.as_secs_f64() * 100.0;
    let idle_calls = backend.len() - calls0;

    // Phase 3: latency of terminal closes at a fixed rate, then bring the sessions back.
    let m = args.events;
    let from = backend.len();
    let interval = Duration::from_secs(1) / args.rate;
    let mut sent_at = Vec::with_capacity(m);
    let t = Instant::now();
    for i in 0..m {
        sleep_until(t + interval * i as u32).await;
        sent_at.push(Instant::now());
        gateway.send(i, &close_401);
    }
    let delivered = wait_for(Duration::from_secs(30), || backend.count(from, false) >= m).await;
    let mut latencies: Vec<Duration> = {
        let calls = backend.calls.lock().unwrap();
        let mut first = vec![None; m];
        for c in calls[from..]
            .iter()
            .filter(|c| !c.connected && c.tenant < m)
        {
            first[c.tenant].get_or_insert(c.at);
        }
        first
            .iter()
            .zip(&sent_at)
            .filter_map(|(at, sent)| at.map(|at| at.saturating_duration_since(*sent)))
            .collect()
    };
    latencies.sort();
    let back_from = backend.len();
    for i in 0..m {
        gateway.send(i, &open);
    }
    let back = wait_for(CONNECT_GRACE + Duration::from_secs(30), || {
        backend.count(back_from, true) >= m
    })
    .await;

    // Phase 4: storm 1, a gateway restart inside the disconnect grace.
    sleep(Duration::from_secs(1)).await;
    let cpu0 = sidecar.cpu();
    let calls0 = backend.len();
    let accepted0 = gateway.accepted.load(Ordering::SeqCst);
    let storm1_started = Instant::now();
    gateway.close_all();
    let reconnected = wait_for(big, || {
        gateway.accepted.load(Ordering::SeqCst) >= accepted0 + n
            && gateway.open.load(Ordering::SeqCst) >= n
    })
    .await;
    // Anything the drop would wrongly cause is decided within the connect grace of the reopen.
    sleep(CONNECT_GRACE + Duration::from_secs(2)).await;
    let storm1_calls = backend.len() - calls0;
    let storm1_cpu = sidecar.cpu() - cpu0;
    let storm1_wall = storm1_started.elapsed().as_secs_f64();

    // Phase 5: storm 2, every session logs out at once.
    let cpu0 = sidecar.cpu();
    let from = backend.len();
    for i in 0..n {
        gateway.send(i, &close_401);
    }
    let logout = wait_for(big, || backend.count(from, false) >= n).await;
    let storm2_cpu = sidecar.cpu() - cpu0;
    // Every tenant now holds a reported disconnection with its reason: the fleet's other steady
    // state.
    sleep(Duration::from_secs(2)).await;
    let (rss_logged_out, peak) = sidecar.memory();
    if !args.hold.is_zero() {
        eprintln!(
            "fleet: holding the sidecar (pid {}) for {:?}",
            sidecar.pid(),
            args.hold
        );
        sleep(args.hold).await;
    }

    let alive = sidecar.alive();
    let tail = sidecar.log_tail();
    sidecar.stop().await;

    // The figures, and the bars.
    let rss_mib = rss as f64 / 1024.0;
    let kib_per_tenant = rss as f64 / n as f64;
    let kib_above_base = rss.saturating_sub(BASE_KIB) as f64 / n as f64;
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    let max = latencies.last().copied().unwrap_or_default();
    let mut failed: Vec<&str> = Vec::new();
    let mut ci_failed: Vec<&str> = Vec::new();
    if links_up.is_none_or(|d| d > BAR_LINKS_UP) || metric_up != Some(n as u64) {
        failed.push("links_up");
    }
    if first_reports.is_none() || back.is_none() || !alive {
        failed.push("run");
        ci_failed.push("run");
    }
    if rss > BAR_RSS_KIB {
        failed.push("rss");
    }
    if kib_above_base > BAR_KIB_PER_TENANT {
        failed.push("kib_per_tenant");
        ci_failed.push("kib_per_tenant");
    }
    if idle_cpu_pct > BAR_IDLE_CPU_PCT || idle_calls > 0 {
        failed.push("idle");
    }
    if delivered.is_none() || latencies.len() < m || p99 > BAR_P99 {
        failed.push("p99");
    }
    if reconnected.is_none() || storm1_calls > 0 {
        failed.push("restart_storm");
        ci_failed.push("restart_storm");
    }
    if logout.is_none_or(|d| d > BAR_LOGOUT_STORM) {
        failed.push("logout_storm");
    }
    println!(
        "fleet tenants={n} links_up_s={up} links_up_metric={metric} first_reports_s={first} \
         rss_mib={rss_mib:.1} kib_per_tenant={kib_per_tenant:.2} kib_above_base={kib_above_base:.2} \
         idle_cpu_pct={idle_cpu_pct:.2} events={m} rate={rate}/s p50_ms={p50} p99_ms={p99} \
         max_ms={max} restart_reconnect_s={reconnect} restart_calls={storm1_calls} \
         restart_cpu_s={storm1_cpu:.2}/{storm1_wall:.1}s logout_s={logout} \
         logout_cpu_s={storm2_cpu:.2} rss_logged_out_mib={rss_out:.1} peak_rss_mib={peak:.1} \
         bars={bars}",
        up = secs(links_up),
        metric = metric_up.map_or("?".into(), |v| v.to_string()),
        first = secs(first_reports),
        rate = args.rate,
        p50 = ms(p50),
        p99 = ms(p99),
        max = ms(max),
        reconnect = secs(reconnected),
        logout = secs(logout),
        peak = peak as f64 / 1024.0,
        rss_out = rss_logged_out as f64 / 1024.0,
        bars = if failed.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL({})", failed.join(","))
        },
    );
    if !failed.is_empty() && !tail.is_empty() {
        eprintln!("fleet: the sidecar's last warnings and errors:\n{tail}");
    }
    if args.ci && !ci_failed.is_empty() {
        eprintln!(
            "fleet: CI bars failed: {} (memory: at most {BAR_KIB_PER_TENANT} KiB a tenant above \
             a {} MiB base; gateway-restart storm: 0 backend calls)",
            ci_failed.join(", "),
            BASE_KIB / 1024
        );
        return false;
    }
    !args.strict || failed.is_empty()
}
