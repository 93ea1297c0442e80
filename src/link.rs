//! One gateway WebSocket: connect, read frames, keep it alive, reconnect.
//!
//! A link is one long-lived task. It is the only place that reads the clock for gateway events:
//! it stamps each frame and link event with [`Now`] and hands it to the registry, which decides.
//!
//! Memory matters here more than anywhere (10,000 links in one process, see PERF-NOTES): a task's
//! future is as large as its largest await point for its whole life, so the handshake and the
//! state fetch run in boxed futures and only the established stream lives in the read loop, and
//! the WebSocket buffers are a few KiB instead of tungstenite's 128 KiB defaults.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GatewayConfig};
use crate::observe::Ignored;
use crate::registry::{Now, Registry, TenantId};
use crate::webhook::full_jitter;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// First reconnect delay bound; full jitter spreads a fleet's reconnects over [0, this].
pub const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// Longest reconnect delay, so a gateway that comes back is found within half a minute.
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// A link up this long has proven itself: its next drop starts the backoff from the base again.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// A handshake (TCP, TLS, HTTP upgrade) that takes longer than this is abandoned and retried.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The state fetch after a (re)connect gives up after this long; frames wait meanwhile.
const STATE_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per link. Gateway frames are a few hundred bytes; the buffer grows for a rare
/// large one. 4 KiB instead of 128 KiB is what makes 10,000 links fit in tens of MiB.
const READ_BUFFER: usize = 4 * 1024;

/// What the links share.
pub struct LinkContext {
    pub registry: Arc<Registry>,
    /// Bounds concurrent handshakes so 10,000 links start as a spread, not a thundering herd.
    pub handshakes: Arc<Semaphore>,
    /// For `gateway.state_url`.
    pub http: reqwest::Client,
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
            result = Box::pin(connect(&ctx.handshakes, &url, &config.gateway)) => result,
        };
        let error = match connected {
            Ok(ws) => {
                let up_at = Instant::now();
                tracing::debug!(tenant = %target.label(), "gateway link up");
                for tenant in target.tenants(&ctx.registry) {
                    ctx.registry.link_up(&tenant, Now::read());
                }
                if config.gateway.state_url.is_some() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        () = Box::pin(fetch_states(&ctx, &target, &config)) => {}
                    }
                }
                let reason = read_loop(&ctx, &target, ws, &config.gateway, &stop).await;
                if stop.is_cancelled() {
                    return;
                }
                if up_at.elapsed() >= BACKOFF_RESET {
                    attempt = 0;
                }
                reason
            }
            Err(error) => error,
        };
        tracing::debug!(tenant = %target.label(), error = %error, attempt, "gateway link down");
        for tenant in target.tenants(&ctx.registry) {
            ctx.registry.link_down(&tenant, &error, Now::read());
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

async fn connect(handshakes: &Semaphore, url: &str, gateway: &GatewayConfig) -> Result<Ws, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad gateway URL {url}: {e}"))?;
    let headers = request.headers_mut();
    if let Some(token) = &gateway.token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| "gateway token is not a valid header value".to_string())?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    for (name, value) in &gateway.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name {name}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("bad value for header {name}"))?;
        headers.insert(name, value);
    }
    // The permit bounds handshakes in progress, not links: it is released once the link is up.
    let _permit = handshakes
        .acquire()
        .await
        .map_err(|_| "shutting down".to_string())?;
    let handshake = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config(gateway.max_frame_size)),
        true,
        None,
    );
    match timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(describe_ws_error(&e)),
        Err(_) => Err(format!(
            "handshake timed out after {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
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
async fn read_loop(
    ctx: &LinkContext,
    target: &Target,
    mut ws: Ws,
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
                            Some(f) => format!("closed by the gateway ({} {})", u16::from(f.code), f.reason),
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
async fn close(ws: &mut Ws, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

/// Fetches `gateway.state_url` for each tenant of the link and applies what it says, so a
/// gateway that sends no snapshot still tells the current state after a reconnect.
async fn fetch_states(ctx: &LinkContext, target: &Target, config: &Config) {
    for tenant in target.tenants(&ctx.registry) {
        let Some(url) = config.state_url(&tenant) else {
            return;
        };
        let mut request = ctx.http.get(&url).timeout(STATE_FETCH_TIMEOUT);
        if let Some(token) = &config.gateway.token {
            request = request.bearer_auth(token.expose());
        }
        for (name, value) in &config.gateway.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.and_then(|r| r.error_for_status());
        let body = match response {
            Ok(r) => r.text().await,
            Err(e) => Err(e),
        };
        match body {
            Ok(text) => ctx.registry.frame(&tenant, &text, Now::read()),
            Err(e) => {
                tracing::debug!(tenant = %tenant, error = %e, "state fetch failed; keeping the last known state")
            }
        }
    }
}
