//! The admin HTTP server (loopback by default, `admin.listen`).
//!
//! Endpoints:
//! - `GET /livez`: 200 `ok` while the process answers: the runtime is not wedged.
//! - `GET /readyz`: 200 `{"ready":true}` once the config is loaded, the state restored and the
//!   backend accepts our credentials; otherwise 503 `{"ready":false,"reasons":[...]}` naming each
//!   cause (credentials refused, backend unreachable for long, state directory not writable).
//! - `GET /metrics`: Prometheus text exposition, prefix `wa_sidecar_`, no tenant ids in labels.
//! - `GET /tenants`: JSON array of every tenant: link state, last observation, stable state,
//!   pending change, reported state, owed delivery, attempts, last error, flap penalty.
//! - `GET /tenants/{id}`: the same for one tenant; 404 JSON when it is not known.
//! - `GET /storm`: `{"storm": {...}}`, the mass outage in progress or still holding drops (SPEC 4
//!   rev 12), or `{"storm": null}`. Each tenant of `/tenants` carries the same object, and
//!   `held` when its own drop is held.
//!
//! A browser's request for a page of the same site (`Sec-Fetch-Site: same-origin` or
//! `same-site`) is refused with 403: only a page that DNS rebinding pointed at this port makes
//! one, to read `/tenants` as its own origin.
//!
//! # Whoever reaches the port cannot hold it (SPEC 5 rev 12)
//!
//! The server is hyper's HTTP/1.1 connection driven here (not `axum::serve`) so each connection
//! is watched:
//! - a request's head must arrive within [`HEADER_READ_TIMEOUT`] (5 s) of its first byte, or of
//!   the accept for a new connection, however slowly it trickles in;
//! - a connection with no byte read or written for [`IDLE_TIMEOUT`] (30 s), between requests or
//!   while a response waits for a reader, is closed;
//! - at most [`MAX_CONNECTIONS`] (64) are open at once, fewer when the open-files limit leaves
//!   less after the gateway links and the webhook client ([`crate::system::admin_connection_budget`]):
//!   the admin port can never take a descriptor a link or a backend call needs.
//!
//! When a new connection arrives and the budget is used up, the open connection that has waited
//! longest for a request (headers still coming, or idle between requests) is closed to make room
//! (not one that has sent nothing yet within [`FIRST_BYTE_GRACE`] of its connect),
//! as nginx does with keep-alive connections when it runs out: a health probe is answered at once
//! whatever a hundred slow clients hold. Only when every connection is in the middle of a
//! request (a response being written) does a new one wait, in the kernel's accept queue, where
//! it holds none of the process's descriptors, until one finishes or times out.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::GatewayMode;
use crate::{Engine, Now};

/// Most admin connections open at once (SPEC 5 rev 12).
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request's head, from its first byte (or the accept): a client that
/// trickles its headers cannot hold a connection longer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection with no byte read or written this long is closed, so an idle keep-alive or a
/// client that stopped reading its response frees its slot.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a request head may take in memory; the admin API's requests are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// After `stop`, how long requests in progress get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of descriptors), so it is not retried in a hot loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A new connection that has sent nothing yet cannot be closed to make room for this long: a
/// probe's request may come a moment after its connect, and clients reconnecting as fast as they
/// can would otherwise cycle it out before its request arrives. One that stays silent can be
/// closed after this (and times out at [`HEADER_READ_TIMEOUT`] anyway).
const FIRST_BYTE_GRACE: Duration = Duration::from_millis(250);

/// Binds the admin listener. Kept apart from [`serve`] so a bind error stops start-up with a
/// clear message before anything else runs.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/tenants", get(tenants))
        .route("/tenants/{id}", get(tenant))
        .route("/storm", get(storm))
        .layer(axum::middleware::from_fn(no_page_of_this_site))
        .with_state(engine)
}

/// Refuses a request a browser makes for a page of the same site. The admin API serves no page,
/// so such a request can only come from a page that DNS rebinding gave our address to: a name
/// its attacker controls, first resolving to the attacker's server and then to 127.0.0.1, makes
/// `/tenants` the page's own origin, readable by its script. Tools (curl, Prometheus, `status`)
/// send no `Sec-Fetch-Site`; a person typing the URL sends `none`; a cross-site request cannot
/// read the answer (no CORS header is ever sent).
async fn no_page_of_this_site(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let site = request.headers().get("sec-fetch-site");
    if site.is_some_and(|site| site == "same-origin" || site == "same-site") {
        let refused = serde_json::json!({
            "error": "a request from a web page of the same site is refused (DNS rebinding); open the URL directly or use curl",
        });
        return (StatusCode::FORBIDDEN, Json(refused)).into_response();
    }
    next.run(request).await
}

/// Serves the admin API until `stop` fires; then requests in progress get [`SHUTDOWN_GRACE`].
pub(crate) async fn serve(listener: TcpListener, engine: Arc<Engine>, stop: CancellationToken) {
    let app = router(engine.clone());
    let connections = Arc::new(Connections::default());
    let tasks = TaskTracker::new();
    loop {
        let budget = connection_budget(&engine);
        // Accept only with room for one more: a free slot, or a connection that may be closed
        // for it. Otherwise the new connection waits in the kernel's queue, not in ours.
        tokio::select! {
            _ = stop.cancelled() => break,
            () = connections.room(budget) => {}
        }
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let conn = loop {
            if let Some(conn) = connections.admit(connection_budget(&engine)) {
                break Some(conn);
            }
            // Every connection became busy meanwhile: this one waits for a slot.
            tokio::select! {
                _ = stop.cancelled() => break None,
                () = connections.room(connection_budget(&engine)) => {}
            }
        };
        let Some(conn) = conn else { break };
        tasks.spawn(serve_connection(
            stream,
            app.clone(),
            conn,
            connections.clone(),
            stop.clone(),
        ));
        // Give the new connection a turn to read its request before the next accept.
        tokio::task::yield_now().await;
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), tasks.wait())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open at exit");
    }
}

/// How many admin connections may be open now: [`MAX_CONNECTIONS`], or fewer when the
/// open-files limit leaves less after the links and the backend calls.
fn connection_budget(engine: &Engine) -> usize {
    let config = engine.registry.config();
    let links = match config.gateway.mode {
        GatewayMode::Shared => 1,
        GatewayMode::PerTenant => config.tenants.ids.len(),
    };
    match crate::system::nofile_limit() {
        Ok(limit) => crate::system::admin_connection_budget(
            limit,
            links as u64,
            config.backend.max_in_flight as u64,
            MAX_CONNECTIONS,
        ),
        Err(_) => MAX_CONNECTIONS,
    }
}

/// Serves one connection until it ends, times out, is evicted for a newer one, or `stop`.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    conn: Arc<Conn>,
    connections: Arc<Connections>,
    stop: CancellationToken,
) {
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
    });
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |request| {
            // The head is complete: a request is in progress until its response body is done.
            conn.request_started();
            let guard = RequestGuard(conn.clone());
            let app = app.clone();
            async move {
                let Ok(response) = app.oneshot(request.map(Body::new)).await;
                // The guard lives as long as the body: hyper drops it once it is written.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &guard;
                        frame
                    }))
                }))
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_HEAD_BYTES);
    let served = http.serve_connection(io, service);
    tokio::pin!(served);
    let mut stopping = false;
    loop {
        let deadline = conn.deadline();
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
                break;
            }
            _ = conn.evict.cancelled() => {
                tracing::debug!("admin connection closed to make room for a new one");
                break;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
                conn.shorten(Instant::now() + SHUTDOWN_GRACE);
            }
            () = conn.wake.notified() => {}
            () = sleep_until(deadline) => {
                if conn.deadline() <= Instant::now() {
                    tracing::debug!(phase = conn.phase_name(), "admin connection timed out; closed");
                    break;
                }
            }
        }
    }
    connections.remove(&conn);
}

/// The open admin connections, and a signal when one closes or goes idle.
#[derive(Default)]
struct Connections {
    open: Mutex<Vec<Arc<Conn>>>,
    changed: Arc<Notify>,
}

impl Connections {
    /// Returns once a connection could be admitted: fewer than `budget` open, or one of them
    /// waiting for a request (which [`Connections::admit`] would close).
    async fn room(&self, budget: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let grace_ends = {
                let open = self.open.lock().unwrap();
                if open.len() < budget || open.iter().any(|c| c.waiting_since().is_some()) {
                    return;
                }
                open.iter().filter_map(|c| c.grace_ends()).min()
            };
            tokio::select! {
                () = changed => {}
                () = sleep_until(grace_ends.unwrap_or_else(crate::deliver::far_future)), if grace_ends.is_some() => {}
            }
        }
    }

    /// Admits a new connection, closing the one that has waited longest for a request if
    /// `budget` connections are open; None when every open connection is busy.
    fn admit(&self, budget: usize) -> Option<Arc<Conn>> {
        let mut open = self.open.lock().unwrap();
        while open.len() >= budget.max(1) {
            let (oldest, _) = open
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((i, c.waiting_since()?)))
                .min_by_key(|(_, since)| *since)?;
            open.swap_remove(oldest).evict.cancel();
        }
        let conn = Arc::new(Conn::new(self.changed.clone()));
        open.push(conn.clone());
        Some(conn)
    }

    fn remove(&self, conn: &Arc<Conn>) {
        self.open.lock().unwrap().retain(|c| !Arc::ptr_eq(c, conn));
        self.changed.notify_waiters();
    }
}

/// One admin connection's progress, updated by its stream and its requests.
struct Conn {
    /// Not yet read from: it cannot be evicted until it has had the chance to read its request.
    /// A probe's head arrives with the connection and makes it busy at its first read; without
    /// this, clients reconnecting as fast as they can evicted it before its task first ran.
    fresh: AtomicBool,
    /// When it was accepted, and whether a byte has been read from it since: a connection that
    /// has sent nothing is not closed to make room within [`FIRST_BYTE_GRACE`] of its accept.
    accepted: Instant,
    heard: AtomicBool,
    state: Mutex<ConnState>,
    /// The deadline moved earlier (a new request began): the watcher recomputes it.
    wake: Notify,
    /// Closed to make room for a newer connection.
    evict: CancellationToken,
    /// [`Connections::changed`].
    changed: Arc<Notify>,
}

struct ConnState {
    phase: Phase,
    /// The last byte read or written.
    last_io: Instant,
    /// Bytes read while a request was in progress: the next request began then.
    read_while_busy: Option<Instant>,
    /// Set at shutdown: the connection closes by then whatever its phase.
    cutoff: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Phase {
    /// A request's head is being read, since then.
    Head(Instant),
    /// A request is being answered.
    Busy,
    /// Between requests.
    Idle,
}

impl Conn {
    fn new(changed: Arc<Notify>) -> Conn {
        let now = Instant::now();
        Conn {
            fresh: AtomicBool::new(true),
            accepted: now,
            heard: AtomicBool::new(false),
            state: Mutex::new(ConnState {
                phase: Phase::Head(now),
                last_io: now,
                read_while_busy: None,
                cutoff: None,
            }),
            wake: Notify::new(),
            evict: CancellationToken::new(),
            changed,
        }
    }

    /// When the connection is to be closed if nothing changes.
    fn deadline(&self) -> Instant {
        let state = self.state.lock().unwrap();
        let due = match state.phase {
            Phase::Head(since) => since + HEADER_READ_TIMEOUT,
            Phase::Busy | Phase::Idle => state.last_io + IDLE_TIMEOUT,
        };
        state.cutoff.map_or(due, |cutoff| due.min(cutoff))
    }

    fn shorten(&self, cutoff: Instant) {
        self.state.lock().unwrap().cutoff = Some(cutoff);
    }

    /// Since when the connection has been waiting for a request; None while one is answered,
    /// before its first read, or while silent within [`FIRST_BYTE_GRACE`] of its accept.
    fn waiting_since(&self) -> Option<Instant> {
        if self.fresh.load(Ordering::Acquire) || self.grace_ends().is_some() {
            return None;
        }
        let state = self.state.lock().unwrap();
        match state.phase {
            Phase::Head(since) => Some(since),
            Phase::Idle => Some(state.last_io),
            Phase::Busy => None,
        }
    }

    /// When its first-byte grace ends, while it runs: silent since its accept, and accepted
    /// less than [`FIRST_BYTE_GRACE`] ago.
    fn grace_ends(&self) -> Option<Instant> {
        let ends = self.accepted + FIRST_BYTE_GRACE;
        (!self.heard.load(Ordering::Acquire) && Instant::now() < ends).then_some(ends)
    }

    fn phase_name(&self) -> &'static str {
        match self.state.lock().unwrap().phase {
            Phase::Head(_) => "request head not complete within 5s",
            Phase::Busy => "response not read for 30s",
            Phase::Idle => "idle for 30s",
        }
    }

    /// The connection's stream is read for the first time (the request, if it came with the
    /// connection, is parsed before anything else runs).
    fn first_read_done(&self) {
        if self.fresh.swap(false, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
    }

    fn read(&self) {
        self.heard.store(true, Ordering::Release);
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.last_io = now;
        match state.phase {
            Phase::Idle => {
                state.phase = Phase::Head(now);
                drop(state);
                self.wake.notify_one();
            }
            Phase::Busy => {
                state.read_while_busy.get_or_insert(now);
            }
            Phase::Head(_) => {}
        }
    }

    fn wrote(&self) {
        self.state.lock().unwrap().last_io = Instant::now();
    }

    fn request_started(&self) {
        let mut state = self.state.lock().unwrap();
        state.phase = Phase::Busy;
        state.read_while_busy = None;
        drop(state);
        // Its request has been read. A client pipelining requests may never let a read come back
        // empty, the other sign of it: it would stay fresh, never to be closed for a newer one.
        self.first_read_done();
    }

    fn request_done(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.last_io = now;
        state.phase = match state.read_while_busy.take() {
            Some(since) => Phase::Head(since),
            None => Phase::Idle,
        };
        drop(state);
        self.wake.notify_one();
        self.changed.notify_waiters();
    }
}

/// Marks the request done when dropped with its response body.
struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// The connection's stream, reporting every byte read or written to its [`Conn`].
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.read();
        }
        if polled.is_pending() || buf.filled().len() == before {
            // Nothing more to read now: whatever came with the connection has been read (and a
            // complete head has made the connection busy).
            this.conn.first_read_done();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.conn.wrote();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(engine): State<Arc<Engine>>) -> Response {
    let reasons = engine.not_ready_reasons(Now::read());
    if reasons.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        engine.metrics_text(Now::read()),
    )
        .into_response()
}

async fn tenants(State(engine): State<Arc<Engine>>) -> Response {
    Json(engine.tenants(Now::read())).into_response()
}

async fn storm(State(engine): State<Arc<Engine>>) -> Response {
    Json(serde_json::json!({ "storm": engine.storm(Now::read()) })).into_response()
}

async fn tenant(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> Response {
    match engine.tenant(&id, Now::read()) {
        Some(view) => Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("unknown tenant {id:?}")})),
        )
            .into_response(),
    }
}
