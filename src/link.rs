//! One gateway WebSocket: connect, read frames, keep it alive, reconnect.
//!
//! A link is one long-lived task. It is the only place that reads the clock for gateway events:
//! it stamps each frame and link event with [`Now`] and hands it to the registry, which decides.
//!
//! Memory matters here more than anywhere (10,000 links in one process, see PERF-NOTES and
//! `benches/fleet.rs`): a task's future is as large as its largest await point for its whole
//! life, so the handshake (boxed only once a handshake permit is held) and the state fetch run in
//! boxed futures, and the established stream is boxed too: the task itself is 0.8 KiB. Links do
//! their own HTTP upgrade (over TCP, or over rustls for `wss://`) so that their read buffer is
//! 1 KiB rather than the 4 KiB that tungstenite's handshake hands over. About 5 KiB per tenant in
//! all for `ws://`, registry record included.
//!
//! A hostile gateway cannot make a link keep memory (SPEC 3 rev 12): tungstenite grows its read
//! buffer to the size of the largest frame and keeps it, so every link reads through a [`Fenced`]
//! stream that stops a read at the end of a large message; once that message is handed over the
//! WebSocket holds no unread byte, and the link rebuilds it with a fresh 1 KiB buffer.
//!
//! `wss://` trusts the system's roots plus `gateway.ca_file` ([`crate::tls`]), as does
//! `state_url`, whose client never follows a redirect and reads at most 64 KiB.

use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{
    generate_request, Request as ClientRequest,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GatewayConfig};
use crate::logging::redact_url;
use crate::observe::Ignored;
use crate::registry::Registry;
use crate::webhook::full_jitter;
use crate::{Now, TenantId};

/// A `wss://` link. Kept apart from [`PlainWs`] so a plain link does not pay for a stream sized
/// for TLS (a rustls connection is over 1 KiB inline).
type TlsWs = WebSocketStream<Fenced<tokio_rustls::client::TlsStream<TcpStream>>>;
type PlainWs = WebSocketStream<Fenced<TcpStream>>;

/// An established link, boxed: the link task then holds a pointer, not inline copies of the
/// stream (the `Result`, the binding and the read loop's argument each keep their own slot in
/// the task's future for its whole life).
enum Established {
    Plain(Box<PlainWs>),
    Tls(Box<TlsWs>),
}

/// First reconnect delay bound; full jitter spreads a fleet's reconnects over [0, this].
pub const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// Longest reconnect delay, so a gateway that comes back is found within half a minute.
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// A link up this long has proven itself: its next drop starts the backoff from the base again.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// A handshake (TCP, TLS, HTTP upgrade) that takes longer than this is abandoned and retried.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A state fetch after a (re)connect gives up after this long.
const STATE_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Most `state_url` fetches in progress at once, process-wide (SPEC 3 rev 12).
pub const STATE_FETCH_CONCURRENCY: usize = 16;
/// Largest `state_url` answer read (SPEC 2 rev 12); a state is a few hundred bytes.
pub const STATE_BODY_LIMIT: usize = 64 * 1024;
/// Read buffer per link. Gateway frames are a few hundred bytes; the buffer grows for a rare
/// large one. tungstenite zero-fills the whole buffer on every read, so all of it is resident:
/// 1 KiB instead of 4 KiB saves 30 MiB at 10,000 links (128 KiB, the default, would cost 1.3 GiB).
/// Not less: `bytes` remembers a buffer's original capacity only from 1 KiB up, and below that a
/// buffer split for a frame is re-allocated at a few bytes and grown again read by read.
const READ_BUFFER: usize = 1024;
/// Largest answer to the WebSocket upgrade accepted; a gateway's 101 is a few hundred bytes.
const MAX_UPGRADE_RESPONSE: usize = 16 * 1024;
/// A message with a frame larger than this grew the read buffer; the WebSocket is rebuilt with
/// a fresh [`READ_BUFFER`] after it. Real gateway frames are a few hundred bytes. It must exceed
/// what one read can bring (tungstenite reads at most [`READ_BUFFER`] bytes at a time), so the
/// read that brings such a frame's header can never also bring its end.
const LARGE_FRAME: u64 = 4 * READ_BUFFER as u64;
/// The longest text kept from a close frame's reason (SPEC 3 rev 12).
const MAX_REASON_CHARS: usize = 256;
/// At most one WARN line a minute about links that cannot connect, for all links together.
const CONNECT_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// What the links share.
pub struct LinkContext {
    pub registry: Arc<Registry>,
    /// Bounds concurrent handshakes so 10,000 links start as a spread, not a thundering herd.
    pub handshakes: Arc<Semaphore>,
    /// Bounds `state_url` fetches in progress across all links.
    pub state_fetches: Arc<Semaphore>,
    /// The TLS settings and the `state_url` client, replaced by a reload.
    clients: RwLock<Arc<GatewayClients>>,
    /// When a failed connect was last logged at WARN, by any link.
    connect_warned: Mutex<Option<Instant>>,
}

impl LinkContext {
    pub fn new(
        registry: Arc<Registry>,
        handshakes: Arc<Semaphore>,
        state_fetches: Arc<Semaphore>,
        clients: GatewayClients,
    ) -> LinkContext {
        LinkContext {
            registry,
            handshakes,
            state_fetches,
            clients: RwLock::new(Arc::new(clients)),
            connect_warned: Mutex::new(None),
        }
    }

    /// Whether a failed connect is logged at WARN now: at most once a minute for all the links
    /// together, so an operator sees a gateway that cannot be reached (a certificate the private
    /// CA does not sign, a wrong port) without waiting for `gateway_down_grace`, and a gateway
    /// restart under 10,000 links is one line, not 10,000.
    fn warn_connect_failure(&self, now: Instant) -> bool {
        let mut last = self.connect_warned.lock().unwrap();
        let due = last.is_none_or(|at| now.saturating_duration_since(at) >= CONNECT_WARN_INTERVAL);
        if due {
            *last = Some(now);
        }
        due
    }

    /// What the next connect and the next state fetch use.
    pub fn clients(&self) -> Arc<GatewayClients> {
        self.clients.read().unwrap().clone()
    }

    /// Applies a reloaded `[gateway]` to the next connects and fetches; links up stay up.
    pub fn set_clients(&self, clients: GatewayClients) {
        *self.clients.write().unwrap() = Arc::new(clients);
    }
}

/// The clients the links use to reach the gateway, built from `[gateway]`.
pub struct GatewayClients {
    /// For `wss://`: the system's roots plus `gateway.ca_file`.
    pub tls: Arc<rustls::ClientConfig>,
    /// For `gateway.state_url`: the same roots; never follows a redirect (the gateway's
    /// credentials must not travel to wherever a redirect points).
    pub http: reqwest::Client,
}

impl GatewayClients {
    /// Reads `gateway.ca_file` now: a reload naming a bad one fails here, before anything changes.
    pub fn from_config(config: &Config) -> Result<GatewayClients, String> {
        let gateway = &config.gateway;
        let tls_used = gateway.url.starts_with("wss:")
            || gateway
                .state_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https:"))
            || config.tenants.urls.values().any(|u| u.starts_with("wss:"));
        let tls = crate::tls::client_config(gateway.ca_file.as_deref(), tls_used)
            .map_err(|e| format!("gateway.ca_file: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(GatewayClients { tls, http })
    }
}

/// Which tenants a link carries.
#[derive(Clone)]
pub enum Target {
    /// `per-tenant` mode: one link, one tenant.
    Tenant(TenantId),
    /// `shared` mode: one link, the tenant named in each frame.
    Shared,
}

impl Target {
    fn label(&self) -> &str {
        match self {
            Target::Tenant(t) => t,
            Target::Shared => "(shared link)",
        }
    }

    fn url(&self, config: &Config) -> String {
        match self {
            Target::Tenant(t) => config.gateway_url(t),
            Target::Shared => config.gateway.url.clone(),
        }
    }

    fn tenants(&self, registry: &Registry) -> Vec<TenantId> {
        match self {
            Target::Tenant(t) => vec![t.clone()],
            Target::Shared => registry.tenant_ids(),
        }
    }
}

/// Runs one link until `stop` fires: connect, read, and on any drop report it and reconnect
/// after a full-jitter backoff.
pub async fn run(ctx: Arc<LinkContext>, target: Target, stop: CancellationToken) {
    let mut attempt: u32 = 0;
    loop {
        let config = ctx.registry.config();
        let url = target.url(&config);
        if attempt > 0 {
            ctx.registry.metrics.reconnects.inc();
        }
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            result = connect(&ctx, &url, &config.gateway) => result,
        };
        let error = match connected {
            Ok(ws) => {
                let up_at = Instant::now();
                tracing::debug!(tenant = %target.label(), "gateway link up");
                match &target {
                    Target::Tenant(t) => ctx.registry.link_up(t, Now::read()),
                    Target::Shared => ctx.registry.shared_link_up(Now::read()),
                }
                // Fetched beside the read loop, never in its way (SPEC 3 rev 12).
                let fetches = stop.child_token();
                spawn_state_fetches(&ctx, target.tenants(&ctx.registry), &config, &fetches);
                let reason = match ws {
                    Established::Plain(ws) => {
                        read_loop(&ctx, &target, ws, &config.gateway, &stop).await
                    }
                    Established::Tls(ws) => {
                        read_loop(&ctx, &target, ws, &config.gateway, &stop).await
                    }
                };
                fetches.cancel();
                if stop.is_cancelled() {
                    return;
                }
                if up_at.elapsed() >= BACKOFF_RESET {
                    attempt = 0;
                }
                reason
            }
            Err(error) => {
                if ctx.warn_connect_failure(Instant::now()) {
                    tracing::warn!(tenant = %target.label(), error = %error, "cannot connect to the gateway; retrying with backoff (logged at most once a minute for all links: /tenants shows each link's error)");
                }
                error
            }
        };
        tracing::debug!(tenant = %target.label(), error = %error, attempt, "gateway link down");
        match &target {
            Target::Tenant(t) => ctx.registry.link_down(t, &error, Now::read()),
            Target::Shared => ctx.registry.shared_link_down(&error, Now::read()),
        }
        let wait = full_jitter(attempt, RECONNECT_BASE, RECONNECT_CAP, fastrand::f64());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(wait) => {}
        }
    }
}

/// The WebSocket settings for one link: small buffers, eager writes, the frame size limit.
pub fn ws_config(max_frame_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_frame_size))
        .max_frame_size(Some(max_frame_size))
}

/// Waits for a handshake permit, then connects.
///
/// The handshake future (about 9 KiB: TCP connect, TLS, HTTP upgrade) is boxed only once the
/// permit is held. Boxed before the wait, 10,000 links starting at once held 10,000 of them
/// (90 MiB) while 64 handshakes ran, and the freed memory stayed in the allocator's arenas.
async fn connect(
    ctx: &LinkContext,
    url: &str,
    gateway: &GatewayConfig,
) -> Result<Established, String> {
    // The permit bounds handshakes in progress, not links: it is released once the link is up.
    let _permit = ctx
        .handshakes
        .acquire()
        .await
        .map_err(|_| "shutting down".to_string())?;
    let tls = ctx.clients().tls.clone();
    Box::pin(handshake(url, gateway, tls)).await
}

async fn handshake(
    url: &str,
    gateway: &GatewayConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Established, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad gateway URL {}: {e}", redact_url(url)))?;
    // Validated once at load: the token's Authorization and the configured headers.
    request.headers_mut().extend(gateway.request_headers());
    let config = ws_config(gateway.max_frame_size);
    let upgrade = async move {
        if request.uri().scheme_str() == Some("ws") {
            plain_upgrade(request, config)
                .await
                .map(|ws| Established::Plain(Box::new(ws)))
        } else {
            tls_upgrade(request, config, tls)
                .await
                .map(|ws| Established::Tls(Box::new(ws)))
        }
    };
    match timeout(HANDSHAKE_TIMEOUT, upgrade).await {
        Ok(Ok(ws)) => Ok(ws),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "handshake timed out after {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}

fn io_error(e: std::io::Error) -> String {
    describe_ws_error(&WsError::Io(e))
}

/// The host (without IPv6 brackets) and port of a `ws://` or `wss://` request.
fn host_and_port(request: &ClientRequest, default_port: u16) -> (String, u16) {
    let uri = request.uri();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    (host, uri.port_u16().unwrap_or(default_port))
}

async fn tcp_connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let stream = TcpStream::connect((host, port)).await.map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    Ok(stream)
}

/// A `ws://` link: TCP, then the upgrade.
async fn plain_upgrade(request: ClientRequest, config: WebSocketConfig) -> Result<PlainWs, String> {
    let (host, port) = host_and_port(&request, 80);
    let stream = tcp_connect(&host, port).await?;
    upgrade(stream, request, config).await
}

/// A `wss://` link: TCP, TLS trusting `tls`'s roots (the system's plus `gateway.ca_file`) and
/// checking the certificate against the URL's host, then the upgrade over it.
async fn tls_upgrade(
    request: ClientRequest,
    config: WebSocketConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsWs, String> {
    let (host, port) = host_and_port(&request, 443);
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| format!("the gateway host {host:?} is not a valid TLS server name"))?;
    let stream = tcp_connect(&host, port).await?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with the gateway failed: {e}"))?;
    upgrade(stream, request, config).await
}

/// The WebSocket upgrade, done here rather than by tungstenite's client handshake, which hands
/// its 4 KiB response buffer to the WebSocket as the read buffer for the life of the link
/// (whatever `read_buffer_size` says): 40 MiB at 10,000 links. Here the WebSocket starts with
/// only the bytes that followed the response (often the gateway's snapshot frame), so its buffer
/// is [`READ_BUFFER`].
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: ClientRequest,
    config: WebSocketConfig,
) -> Result<WebSocketStream<Fenced<S>>, String> {
    let io = io_error;
    let (bytes, key) = generate_request(request).map_err(|e| describe_ws_error(&e))?;
    stream.write_all(&bytes).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut response = Vec::with_capacity(1024);
    let end = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if response.len() >= MAX_UPGRADE_RESPONSE {
            return Err("the gateway's answer to the WebSocket upgrade is too large".into());
        }
        if stream.read_buf(&mut response).await.map_err(io)? == 0 {
            return Err("connection closed by the gateway".into());
        }
    };
    let not_http = || "the gateway's answer to the WebSocket upgrade is not HTTP".to_string();
    let head = std::str::from_utf8(&response[..end]).map_err(|_| not_http())?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(not_http)?;
    if status != 101 {
        return Err(format!(
            "gateway answered HTTP {status} to the WebSocket upgrade"
        ));
    }
    let accept = derive_accept_key(key.as_bytes());
    let accepted = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        });
    if !accepted {
        return Err(
            "the gateway's answer to the WebSocket upgrade has a wrong Sec-WebSocket-Accept".into(),
        );
    }
    let tail = response[end..].to_vec();
    let mut fenced = Fenced::new(stream);
    // The bytes after the answer are frames the WebSocket reads first; the fence follows them.
    fenced.tracker.passed(&tail);
    fenced.tracker.reached = false;
    Ok(WebSocketStream::from_partially_read(fenced, tail, Role::Client, Some(config)).await)
}

/// A stream that follows the WebSocket frames read through it and never lets one read run past
/// the end of a message that had a large frame (over [`LARGE_FRAME`]).
///
/// tungstenite reserves a frame's whole length in its read buffer and keeps that allocation for
/// the life of the WebSocket: a gateway that sends each link one 1 MiB frame would make 10,000
/// links hold 10 GiB. With the fence, when such a message is handed over the WebSocket has read
/// nothing after it, so [`renew`] can swap it for a fresh one without losing a byte.
pub struct Fenced<S> {
    inner: S,
    tracker: FrameTracker,
}

impl<S> Fenced<S> {
    fn new(inner: S) -> Fenced<S> {
        Fenced {
            inner,
            tracker: FrameTracker::default(),
        }
    }

    /// True once, after the last byte of a large message was read and nothing after it.
    fn take_reached(&mut self) -> bool {
        std::mem::take(&mut self.tracker.reached)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Fenced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match this.tracker.read_limit() {
            Some(limit) if limit < buf.remaining() => {
                // As tokio's `Take` does: read into a view of at most `limit` bytes, then count
                // them in the caller's buffer.
                let mut view = buf.take(limit);
                let start = view.filled().as_ptr();
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut view))?;
                assert_eq!(start, view.filled().as_ptr(), "the view was not swapped");
                let n = view.filled().len();
                // SAFETY: the inner reader initialised `n` bytes of the view, which are the
                // first `n` unfilled bytes of `buf`.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
            }
            _ => ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?,
        }
        this.tracker.passed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Fenced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where the bytes read so far stand in the frame stream (RFC 6455 section 5.2).
#[derive(Debug, Default)]
struct FrameTracker {
    /// The header being read: 2 to 14 bytes.
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A frame of the data message in progress is large.
    large_message: bool,
    /// The end of the current frame's payload ends a large message: the fence.
    fence: bool,
    /// The fence was reached at the end of a read.
    reached: bool,
}

impl FrameTracker {
    /// How many bytes the next read may bring: none beyond the current header or payload while a
    /// large message is in progress, so its end is never read together with what follows.
    fn read_limit(&self) -> Option<usize> {
        if !(self.large_message || self.fence) {
            return None;
        }
        let left = if self.payload_left > 0 {
            self.payload_left
        } else {
            (self.head_needed() - usize::from(self.head_len)) as u64
        };
        Some(usize::try_from(left).unwrap_or(usize::MAX).max(1))
    }

    /// The length of the header being read, as far as its bytes so far tell (2 until known).
    fn head_needed(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// Follows `bytes`, just read.
    fn passed(&mut self, mut bytes: &[u8]) {
        self.reached = false;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
            } else {
                self.head[usize::from(self.head_len)] = bytes[0];
                self.head_len += 1;
                bytes = &bytes[1..];
                if usize::from(self.head_len) < self.head_needed() {
                    continue;
                }
                self.frame_header();
            }
            if self.fence && self.payload_left == 0 && self.head_len == 0 {
                self.fence = false;
                // Fenced only if nothing after the message came with it.
                self.reached = bytes.is_empty();
            }
        }
    }

    /// A whole header has been read: the frame's length, and whether it ends a large message.
    fn frame_header(&mut self) {
        let head = &self.head[..usize::from(self.head_len)];
        let length = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        let fin = head[0] & 0x80 != 0;
        let data = matches!(head[0] & 0x0f, 0..=2);
        self.head_len = 0;
        self.payload_left = length;
        if data {
            self.large_message |= length > LARGE_FRAME;
            if fin {
                self.fence = std::mem::take(&mut self.large_message);
            }
        }
    }
}

/// Replaces a WebSocket that has just handed over a large message with a fresh one on the same
/// stream, dropping the read buffer that message grew. Only when the fence says nothing after
/// the message has been read ([`Fenced::take_reached`]); a pending pong is flushed first.
async fn renew<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: Box<WebSocketStream<Fenced<S>>>,
    config: WebSocketConfig,
) -> Box<WebSocketStream<Fenced<S>>> {
    let _ = timeout(Duration::from_secs(1), ws.flush()).await;
    let stream = ws.into_inner();
    Box::new(WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await)
}

/// A close frame's reason as kept and logged: control characters escaped, cut at
/// [`MAX_REASON_CHARS`] characters.
fn close_reason(reason: &str) -> String {
    let mut out = String::new();
    for (i, c) in reason.chars().enumerate() {
        if i == MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A short, operator-readable cause, as it appears in "gateway unreachable for 5m: <cause>".
pub fn describe_ws_error(e: &WsError) -> String {
    match e {
        WsError::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            std::io::ErrorKind::TimedOut => "connection timed out".into(),
            std::io::ErrorKind::UnexpectedEof => "connection closed by the gateway".into(),
            _ => io.to_string(),
        },
        WsError::Http(response) => format!(
            "gateway answered HTTP {} to the WebSocket upgrade",
            response.status().as_u16()
        ),
        WsError::Capacity(_) => "frame over the size limit".into(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "connection closed".into(),
        other => other.to_string(),
    }
}

/// Reads frames until the link drops; returns why it dropped.
async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &LinkContext,
    target: &Target,
    mut ws: Box<WebSocketStream<Fenced<S>>>,
    gateway: &GatewayConfig,
    stop: &CancellationToken,
) -> String {
    let idle = sleep_until(Instant::now() + gateway.idle_timeout);
    tokio::pin!(idle);
    let mut ping = tokio::time::interval_at(
        Instant::now() + gateway.ping_interval,
        gateway.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                close(&mut ws, CloseCode::Away, "sidecar shutting down").await;
                return "sidecar shutting down".into();
            }
            message = ws.next() => {
                // Any frame, a pong included, proves the link is alive.
                idle.as_mut().reset(Instant::now() + gateway.idle_timeout);
                match message {
                                        Some(Ok(Message::Text(text))) => {
                        let now = Now::read();
                        match target {
                            Target::Tenant(t) => ctx.registry.frame(t, text.as_str(), now),
                            Target::Shared => ctx.registry.shared_frame(text.as_str(), now),
                        }
                                            }
                    Some(Ok(Message::Binary(_))) => {
                        ctx.registry.ignored(target.label(), Ignored::Binary, Now::read());
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                                                        Some(f) => format!("closed by the gateway ({} {})", u16::from(f.code), close_reason(&f.reason)),
                            None => "closed by the gateway".into(),
                        };
                    }
                    None => return "connection closed".into(),
                    Some(Err(WsError::Capacity(e))) => {
                        ctx.registry.metrics.frames_oversize.inc();
                        tracing::warn!(tenant = %target.label(), error = %e, "gateway frame over the size limit; closing this link (1009) and reconnecting");
                        close(&mut ws, CloseCode::Size, "frame over the size limit").await;
                        return "frame over the size limit".into();
                    }
                                        Some(Err(e)) => return describe_ws_error(&e),
                }
                // After a large message (already dropped: it shares the grown buffer), a fresh
                // WebSocket. Boxed: this rare path must not grow every link's task.
                if ws.get_mut().take_reached() {
                    ws = Box::pin(renew(ws, ws_config(gateway.max_frame_size))).await;
                }
            }
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                    return describe_ws_error(&e);
                }
            }
            () = &mut idle => {
                return format!("no frame for {}s (half-open link)", gateway.idle_timeout.as_secs());
            }
        }
    }
}

/// Sends a close frame, waiting briefly: a broken peer must not hold the link task.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<Fenced<S>>,
    code: CloseCode,
    reason: &'static str,
) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

/// Fetches `gateway.state_url` for `tenants` in a task of its own, at most
/// [`STATE_FETCH_CONCURRENCY`] at a time process-wide, so a gateway that sends no snapshot still
/// tells the current state after a (re)connect. The link keeps reading frames meanwhile; an
/// answer is applied only if no frame arrived for that tenant since its request was sent.
pub fn spawn_state_fetches(
    ctx: &Arc<LinkContext>,
    tenants: Vec<TenantId>,
    config: &Arc<Config>,
    stop: &CancellationToken,
) {
    if config.gateway.state_url.is_none() || tenants.is_empty() {
        return;
    }
    let (ctx, config, stop) = (ctx.clone(), config.clone(), stop.clone());
    tokio::spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        for tenant in tenants {
            // The permit first, so the tenants still waiting hold no request future.
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                permit = ctx.state_fetches.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (ctx, config, stop) = (ctx.clone(), config.clone(), stop.clone());
            running.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = Box::pin(fetch_state(&ctx, &tenant, &config)) => {}
                }
                drop(permit);
            });
            // Reap finished fetches as we go, so the set stays at the concurrency bound.
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    });
}

async fn fetch_state(ctx: &LinkContext, tenant: &TenantId, config: &Config) {
    let Some(url) = config.state_url(tenant) else {
        return;
    };
    let Some(mark) = ctx.registry.observations(tenant) else {
        return;
    };
    // The token's Authorization and the configured headers, validated once at load.
    let request = ctx
        .clients()
        .http
        .get(&url)
        .timeout(STATE_FETCH_TIMEOUT)
        .headers(config.gateway.request_headers());
    let body = match request.send().await {
        Ok(response) if response.status().is_success() => read_capped(response).await,
        Ok(response) => Err(format!("answered {}", response.status().as_u16())),
        // Without the URL: its query may hold a key (`?api_key=...`).
        Err(e) => Err(e.without_url().to_string()),
    };
    match body {
        Ok(text) => ctx.registry.state_fetched(tenant, &text, mark, Now::read()),
        Err(error) => {
            tracing::debug!(tenant = %tenant, error = %error, "state fetch failed; keeping the last known state")
        }
    }
}

/// The body of a `state_url` answer, refused past [`STATE_BODY_LIMIT`] bytes.
async fn read_capped(mut response: reqwest::Response) -> Result<String, String> {
    if response
        .content_length()
        .is_some_and(|n| n > STATE_BODY_LIMIT as u64)
    {
        return Err(format!("answer over {STATE_BODY_LIMIT} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > STATE_BODY_LIMIT {
            return Err(format!("answer over {STATE_BODY_LIMIT} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "answer is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};

    /// A one-shot gateway on loopback: reads the upgrade request, answers with `answer(key)` in a
    /// single write, and returns the request it saw.
    async fn gateway(
        answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws/business_1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                assert!(request.len() < 16 * 1024, "request without an end");
                assert_ne!(stream.read_buf(&mut request).await.unwrap(), 0);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, value)| value.trim().to_string())
                .unwrap_or_default();
            stream.write_all(&answer(&key)).await.unwrap();
            // Keep the socket open until the client has read what it needs.
            let mut rest = Vec::new();
            let _ = stream.read_buf(&mut rest).await;
            request
        });
        (url, server)
    }

    fn request(url: &str, token: &str) -> ClientRequest {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        request
    }

    fn switching(key: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn a_snapshot_sent_with_the_upgrade_answer_is_the_first_frame() {
        let snapshot = r#"{"event":"connection.update","data":{"connection":"open"}}"#;
        let (url, server) = gateway(move |key| {
            let mut bytes = switching(key);
            // An unmasked server text frame, in the same write as the 101.
            bytes.extend([0x81, snapshot.len() as u8]);
            bytes.extend(snapshot.as_bytes());
            bytes
        })
        .await;
        let mut ws = plain_upgrade(request(&url, "gw-token"), ws_config(1 << 20))
            .await
            .unwrap();
        let first = timeout(Duration::from_secs(5), ws.next()).await.unwrap();
        assert!(
            matches!(&first, Some(Ok(Message::Text(t))) if t.as_str() == snapshot),
            "{first:?}"
        );
        let _ = ws.close(None).await;
        let seen = server.await.unwrap();
        assert!(
            seen.starts_with("GET /ws/business_1 HTTP/1.1\r\n"),
            "{seen}"
        );
        assert!(
            seen.to_ascii_lowercase()
                .contains("authorization: bearer gw-token\r\n"),
            "{seen}"
        );
    }

    /// The token and the configured headers (inline and from the environment), validated once
    /// at load, reach the gateway with the handshake.
    #[tokio::test]
    async fn the_handshake_carries_the_token_and_the_configured_headers() {
        let (url, server) = gateway(switching).await;
        let text = format!(
            "[gateway]\nurl = \"{url}\"\nmode = \"shared\"\ntoken_env = \"GW_TOKEN\"\n\
             [gateway.headers]\nX-Plain = \"inline-1\"\n[gateway.headers_env]\nX-Api-Key = \"API_KEY\"\n\
             [backend]\nurl = \"http://127.0.0.1:1\"\n"
        );
        let env = [
            ("INTERNAL_SHARED_SECRET", "s"),
            ("GW_TOKEN", "gw-token-7"),
            ("API_KEY", "from-env-8"),
        ];
        let config = Config::from_toml_str(&text, std::path::Path::new("/"), &env).unwrap();
        let Ok(Established::Plain(mut ws)) = handshake(
            &url,
            &config.gateway,
            crate::tls::client_config(None, true).unwrap(),
        )
        .await
        else {
            panic!("no plain link");
        };
        let _ = ws.as_mut().close(None).await;
        let seen = server.await.unwrap().to_ascii_lowercase();
        for header in [
            "authorization: bearer gw-token-7\r\n",
            "x-plain: inline-1\r\n",
            "x-api-key: from-env-8\r\n",
        ] {
            assert!(seen.contains(header), "{header} not in {seen}");
        }
    }

    /// A server frame: FIN bit, opcode, the shortest length encoding, no mask (or `mask`).
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(masked | n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(masked | 126);
                out.extend((n as u16).to_be_bytes());
            }
            n => {
                out.push(masked | 127);
                out.extend((n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend(key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend(payload),
        }
        out
    }

    /// Reads a random stream of frames the way tungstenite does (at most `READ_BUFFER` bytes a
    /// read, within the tracker's limit) and checks that the fence is reached exactly at the end
    /// of every message that had a large frame, and nowhere else.
    #[test]
    fn the_fence_stops_reads_exactly_at_the_end_of_every_large_message() {
        let mut rng = fastrand::Rng::with_seed(12);
        for round in 0..200 {
            let mut stream = Vec::new();
            let mut large_ends = Vec::new();
            for _ in 0..rng.usize(1..12) {
                let fragments = rng.usize(1..4);
                let mut large = false;
                for i in 0..fragments {
                    if rng.bool() {
                        // A ping between fragments (or messages).
                        stream.extend(frame(true, 9, b"hi", None));
                    }
                    let len = match rng.u8(0..4) {
                        0 => rng.usize(0..126),
                        1 => rng.usize(126..4096),
                        2 => rng.usize(4096..70_000),
                        _ => rng.usize(0..10),
                    };
                    large |= len as u64 > LARGE_FRAME;
                    let opcode = if i == 0 { 1 + u8::from(rng.bool()) } else { 0 };
                    let mask = rng.bool().then_some([1, 2, 3, 4]);
                    stream.extend(frame(i + 1 == fragments, opcode, &vec![b'x'; len], mask));
                }
                if large {
                    large_ends.push(stream.len());
                }
            }
            let mut tracker = FrameTracker::default();
            let mut at = 0;
            let mut reached = Vec::new();
            while at < stream.len() {
                let mut n = rng.usize(1..=READ_BUFFER).min(stream.len() - at);
                if let Some(limit) = tracker.read_limit() {
                    n = n.min(limit);
                }
                tracker.passed(&stream[at..at + n]);
                at += n;
                if std::mem::take(&mut tracker.reached) {
                    reached.push(at);
                }
            }
            assert_eq!(reached, large_ends, "round {round}");
        }
    }

    /// A gateway sends a 1 MiB frame and, in the same write, a small one: the fence holds the
    /// small one back, the WebSocket is renewed after the large one, and no byte is lost.
    #[tokio::test]
    async fn a_large_message_renews_the_websocket_and_loses_nothing_after_it() {
        let big = format!(
            r#"{{"connection":"close","lastDisconnect":{{"error":{{"output":{{"statusCode":428,"payload":{{"message":"{}"}}}}}}}}}}"#,
            "m".repeat(1 << 20)
        );
        let small = r#"{"connection":"open"}"#;
        let (big_frame, small_frame) = (
            frame(true, 1, big.as_bytes(), None),
            frame(true, 1, small.as_bytes(), None),
        );
        let (url, _server) = gateway(move |key| {
            let mut bytes = switching(key);
            bytes.extend(&big_frame);
            bytes.extend(&small_frame);
            bytes
        })
        .await;
        let config = ws_config(2 << 20);
        let mut ws = Box::new(plain_upgrade(request(&url, "t"), config).await.unwrap());
        let first = timeout(Duration::from_secs(5), ws.next()).await.unwrap();
        assert!(matches!(&first, Some(Ok(Message::Text(t))) if t.as_str() == big));
        drop(first);
        assert!(ws.get_mut().take_reached(), "the fence was reached");
        let mut ws = renew(ws, config).await;
        let second = timeout(Duration::from_secs(5), ws.next()).await.unwrap();
        assert!(
            matches!(&second, Some(Ok(Message::Text(t))) if t.as_str() == small),
            "{second:?}"
        );
        assert!(
            !ws.get_mut().take_reached(),
            "a small message sets no fence"
        );
    }

    #[test]
    fn close_reasons_are_escaped_and_cut() {
        assert_eq!(close_reason("bye\n\u{1b}[31mred"), "bye\\n\\u{1b}[31mred");
        assert_eq!(close_reason("a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
        let long = "ש".repeat(300);
        assert_eq!(close_reason(&long).chars().count(), MAX_REASON_CHARS + 1);
    }

    #[tokio::test]
    async fn a_refused_upgrade_names_the_status() {
        let (url, _server) =
            gateway(|_| b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec())
                .await;
        let error = plain_upgrade(request(&url, "t"), ws_config(1 << 20))
            .await
            .err()
            .unwrap();
        assert_eq!(error, "gateway answered HTTP 503 to the WebSocket upgrade");
    }

    #[tokio::test]
    async fn a_wrong_accept_key_is_refused() {
        let (url, _server) = gateway(|_| switching("not the key we sent")).await;
        let error = plain_upgrade(request(&url, "t"), ws_config(1 << 20))
            .await
            .err()
            .unwrap();
        assert!(error.contains("Sec-WebSocket-Accept"), "{error}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_described() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws/x", listener.local_addr().unwrap());
        drop(listener);
        let error = plain_upgrade(request(&url, "t"), ws_config(1 << 20))
            .await
            .err()
            .unwrap();
        assert_eq!(error, "connection refused");
    }
}
