//! A simulated gateway and a recording webhook receiver, both real servers on 127.0.0.1.
//!
//! They stand in for the Baileys gateway and the Flask backend in the `demo` command and in the
//! tests. The gateway is a real WebSocket server speaking the frames of SPEC section 3; the
//! receiver is a real HTTP server that records every call and answers as scripted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The key the gateway files shared-mode connections (`/ws` without a tenant) under.
pub const SHARED: &str = "*";

/// A Baileys `connection.update` frame for an open session.
pub fn baileys_open() -> String {
    r#"{"event":"connection.update","data":{"connection":"open"}}"#.to_string()
}

/// A Baileys `connection.update` frame for a session that is reconnecting.
pub fn baileys_connecting() -> String {
    r#"{"event":"connection.update","data":{"connection":"connecting"}}"#.to_string()
}

/// A Baileys close frame as a gateway serialises it: the Boom error through `JSON.stringify`.
pub fn baileys_close(code: u16, message: &str) -> String {
    let error = serde_json::json!({
        "data": null,
        "isBoom": true,
        "isServer": code >= 500,
        "output": {
            "statusCode": code,
            "payload": {"statusCode": code, "error": "Unknown", "message": message},
            "headers": {}
        }
    });
    serde_json::json!({
        "event": "connection.update",
        "data": {
            "connection": "close",
            "lastDisconnect": {"error": error, "date": "2026-11-25T10:00:00.000Z"}
        }
    })
    .to_string()
}

/// A Baileys frame showing a QR code: the session is not linked.
pub fn baileys_qr() -> String {
    r#"{"event":"connection.update","data":{"qr":"2@sim,qr,code=="}}"#.to_string()
}

enum Command {
    Send(Message),
    Close,
    /// Stop reading the socket: pings go unanswered, like a half-open link.
    Silence,
}

#[derive(Default)]
struct GatewayState {
    /// The frames sent first to every new link of a tenant, in order.
    snapshots: HashMap<String, Vec<String>>,
    links: HashMap<String, Vec<mpsc::UnboundedSender<Command>>>,
    accepted: HashMap<String, usize>,
    refusing: bool,
}

/// A simulated gateway: `ws://127.0.0.1:PORT/ws/{tenant}` per tenant, `/ws` for shared mode.
#[derive(Clone)]
pub struct SimGateway {
    addr: SocketAddr,
    state: Arc<Mutex<GatewayState>>,
    connected: Arc<Notify>,
    stop: CancellationToken,
}

impl SimGateway {
    /// Starts the gateway on a free loopback port.
    pub async fn start() -> std::io::Result<SimGateway> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let gateway = SimGateway {
            addr: listener.local_addr()?,
            state: Arc::default(),
            connected: Arc::default(),
            stop: CancellationToken::new(),
        };
        let accept = gateway.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = accept.stop.cancelled() => return,
                    conn = listener.accept() => {
                        if let Ok((stream, _)) = conn {
                            tokio::spawn(accept.clone().serve(stream));
                        }
                    }
                }
            }
        });
        Ok(gateway)
    }

    /// The per-tenant URL template for the sidecar's `gateway.url`.
    pub fn url_template(&self) -> String {
        format!("ws://{}/ws/{{tenant}}", self.addr)
    }

    /// The shared-mode URL.
    pub fn shared_url(&self) -> String {
        format!("ws://{}/ws?session=*&events=session.status", self.addr)
    }

    /// Sets the frame sent first to every new link of `tenant` (the gateway's snapshot).
    pub fn set_snapshot(&self, tenant: &str, frame: String) {
        self.set_snapshot_frames(tenant, vec![frame]);
    }

    /// Sets the frames sent first to every new link of `tenant`, in order (a shared link's
    /// snapshot of every session).
    pub fn set_snapshot_frames(&self, tenant: &str, frames: Vec<String>) {
        self.state
            .lock()
            .unwrap()
            .snapshots
            .insert(tenant.to_string(), frames);
    }

    /// Sends a text frame to every open link of `tenant` (or of the shared link, [`SHARED`]).
    pub fn send(&self, tenant: &str, frame: &str) {
        self.command(tenant, || Command::Send(Message::text(frame)));
    }

    /// Sends a binary frame.
    pub fn send_binary(&self, tenant: &str, bytes: Vec<u8>) {
        self.command(tenant, || Command::Send(Message::binary(bytes.clone())));
    }

    /// Closes every open link of `tenant`.
    pub fn drop_links(&self, tenant: &str) {
        self.command(tenant, || Command::Close);
    }

    /// Closes every open link (a gateway restart).
    pub fn drop_all(&self) {
        let mut state = self.state.lock().unwrap();
        for (_, links) in state.links.drain() {
            for link in links {
                let _ = link.send(Command::Close);
            }
        }
    }

    /// Stops answering on the links of `tenant` without closing them (a half-open link).
    pub fn silence(&self, tenant: &str) {
        self.command(tenant, || Command::Silence);
    }

    /// While true, WebSocket upgrades are answered with 503.
    pub fn set_refusing(&self, refusing: bool) {
        self.state.lock().unwrap().refusing = refusing;
    }

    /// How many links of `tenant` the gateway has accepted so far.
    pub fn accepted(&self, tenant: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .accepted
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    /// How many links of `tenant` are open now.
    pub fn open_links(&self, tenant: &str) -> usize {
        let mut state = self.state.lock().unwrap();
        let links = state.links.entry(tenant.to_string()).or_default();
        links.retain(|l| !l.is_closed());
        links.len()
    }

    /// Waits until the gateway has accepted at least `count` links of `tenant` in all.
    pub async fn wait_accepted(&self, tenant: &str, count: usize) {
        loop {
            let notified = self.connected.notified();
            if self.accepted(tenant) >= count {
                return;
            }
            notified.await;
        }
    }

    /// Stops accepting and closes every link.
    pub fn stop(&self) {
        self.stop.cancel();
        self.drop_all();
    }

    fn command(&self, tenant: &str, make: impl Fn() -> Command) {
        let mut state = self.state.lock().unwrap();
        if let Some(links) = state.links.get_mut(tenant) {
            links.retain(|l| l.send(make()).is_ok());
        }
    }

    async fn serve(self, stream: TcpStream) {
        // Frames go out as they are sent: with Nagle's algorithm a frame after an unacknowledged
        // pong waits for a delayed ACK (40 ms of real time, seconds of a paused test clock).
        let _ = stream.set_nodelay(true);
        let mut path = String::new();
        let refusing = self.state.lock().unwrap().refusing;
        // The Err type is tungstenite's, sized by its API; the callback runs once per handshake.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            path = request.uri().path().to_string();
            if refusing {
                let mut refusal = ErrorResponse::new(Some("gateway unavailable".into()));
                *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Err(refusal);
            }
            Ok(response)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        let tenant = match path.strip_prefix("/ws/") {
            Some(t) => percent_encoding::percent_decode_str(t)
                .decode_utf8_lossy()
                .into_owned(),
            None => SHARED.to_string(),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let snapshot = {
            let mut state = self.state.lock().unwrap();
            state.links.entry(tenant.clone()).or_default().push(tx);
            *state.accepted.entry(tenant.clone()).or_default() += 1;
            state.snapshots.get(&tenant).cloned().unwrap_or_default()
        };
        for frame in snapshot {
            if ws.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
        self.connected.notify_waiters();
        let mut silent = false;
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(Command::Send(message)) => {
                        if ws.send(message).await.is_err() {
                            return;
                        }
                    }
                    Some(Command::Silence) => silent = true,
                    Some(Command::Close) | None => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                        return;
                    }
                },
                incoming = ws.next(), if !silent => match incoming {
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    }
}

/// One webhook call as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: String,
    pub tenant_id: String,
    pub status: String,
    pub reason: Option<String>,
    /// The status code the receiver answered with.
    pub answered: u16,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How the receiver answers one call.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the receiver waits before answering (a slow backend). The call is recorded when
    /// it arrives, so a caller that gives up first still shows up in the record.
    pub delay: Duration,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn status(status: u16) -> Reply {
        let body = if (200..300).contains(&status) {
            r#"{"ok": true}"#
        } else {
            r#"{"ok": false}"#
        };
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// Answers only after `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

struct ReceiverState {
    script: VecDeque<Reply>,
    default: Reply,
}

/// A recording webhook receiver. Every response carries `Connection: close`, so stopping it
/// makes the next call fail to connect, like a backend that went down.
pub struct SimBackend {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    calls: tokio::sync::Mutex<mpsc::UnboundedReceiver<Call>>,
    calls_tx: mpsc::UnboundedSender<Call>,
    stop: Mutex<CancellationToken>,
}

impl SimBackend {
    /// Starts the receiver on a free loopback port, answering 200 unless scripted otherwise.
    pub async fn start() -> std::io::Result<SimBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let backend = SimBackend {
            addr: listener.local_addr()?,
            state: Arc::new(Mutex::new(ReceiverState {
                script: VecDeque::new(),
                default: Reply::ok(),
            })),
            calls: tokio::sync::Mutex::new(calls),
            calls_tx,
            stop: Mutex::new(CancellationToken::new()),
        };
        backend.serve(listener);
        Ok(backend)
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let calls = self.calls_tx.clone();
        let handler = move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            let calls = calls.clone();
            async move {
                let reply = {
                    let mut state = state.lock().unwrap();
                    state
                        .script
                        .pop_front()
                        .unwrap_or_else(|| state.default.clone())
                };
                let body_text = String::from_utf8_lossy(&body).into_owned();
                let parsed: serde_json::Value =
                    serde_json::from_str(&body_text).unwrap_or_default();
                let field = |k: &str| parsed.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let _ = calls.send(Call {
                    path: uri.path().to_string(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    tenant_id: field("tenant_id").unwrap_or_default(),
                    status: field("status").unwrap_or_default(),
                    reason: field("reason"),
                    body: body_text,
                    answered: reply.status,
                });
                if !reply.delay.is_zero() {
                    tokio::time::sleep(reply.delay).await;
                }
                let mut response = axum::response::Response::builder()
                    .status(reply.status)
                    .header("content-type", "application/json")
                    .header("connection", "close");
                for (name, value) in &reply.headers {
                    response = response.header(name.as_str(), value.as_str());
                }
                response
                    .body(axum::body::Body::from(reply.body))
                    .expect("valid response")
            }
        };
        let app = axum::Router::new().fallback(handler);
        let stop = self.stop.lock().unwrap().clone();
        tokio::spawn(async move {
            use axum::serve::ListenerExt;
            // Answers go out at once (see `SimGateway::serve` on Nagle's algorithm).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }

    /// The base URL for the sidecar's `backend.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next calls with these replies, in order, then with the default again.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Sets how calls are answered when nothing is scripted.
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = reply;
    }

    /// Stops listening: calls fail to connect until [`SimBackend::resume`].
    pub fn stop(&self) {
        self.stop.lock().unwrap().cancel();
    }

    /// Listens again on the same port.
    pub async fn resume(&self) -> std::io::Result<()> {
        *self.stop.lock().unwrap() = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// The next call, waiting for it.
    pub async fn next_call(&self) -> Option<Call> {
        self.calls.lock().await.recv().await
    }

    /// The next call if one has arrived.
    pub fn try_next_call(&self) -> Option<Call> {
        self.calls.try_lock().ok()?.try_recv().ok()
    }
}
