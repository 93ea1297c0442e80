//! One gateway WebSocket: connect, read frames, keep it alive, reconnect.
//!
//! A link is one long-lived task. It is the only place that reads the clock for gateway events:
//! it stamps each frame and link event with [`Now`] and hands it to the registry, which decides.
//!
//! Memory matters here more than anywhere (10,000 links in one process, see PERF-NOTES and
//! `benches/fleet.rs`): a task's future is as large as its largest await point for its whole
//! life, so the handshake (boxed only once a handshake permit is held) and the state fetch run in
//! boxed futures, and the established stream is boxed too: the task itself is 0.8 KiB. Plain
//! `ws://` links do their own HTTP upgrade so that their read buffer is 1 KiB rather than the
//! 4 KiB that tungstenite's handshake hands over, and hold a bare `TcpStream` rather than a
//! `MaybeTlsStream` sized for TLS. About 5 KiB per tenant in all, registry record included.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, Config, GatewayConfig};
use crate::observe::Ignored;
use crate::registry::Registry;
use crate::webhook::full_jitter;
use crate::{Now, TenantId};

/// A `wss://` link. A `MaybeTlsStream` is sized for its TLS variant (1.1 KiB) even when it holds
/// plain TCP, so plain links use [`PlainWs`] (0.3 KiB).
type TlsWs = WebSocketStream<MaybeTlsStream<TcpStream>>;
type PlainWs = WebSocketStream<TcpStream>;

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

/// What the links share.
pub struct LinkContext {
    pub registry: Arc<Registry>,
    /// Bounds concurrent handshakes so 10,000 links start as a spread, not a thundering herd.
    pub handshakes: Arc<Semaphore>,
    /// Bounds `state_url` fetches in progress across all links.
    pub state_fetches: Arc<Semaphore>,
    /// For `gateway.state_url`: never follows a redirect (the gateway's credentials must not
    /// travel to wherever a redirect points).
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
            result = connect(&ctx.handshakes, &url, &config.gateway) => result,
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
            Err(error) => error,
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
    handshakes: &Semaphore,
    url: &str,
    gateway: &GatewayConfig,
) -> Result<Established, String> {
    // The permit bounds handshakes in progress, not links: it is released once the link is up.
    let _permit = handshakes
        .acquire()
        .await
        .map_err(|_| "shutting down".to_string())?;
    Box::pin(handshake(url, gateway)).await
}

async fn handshake(url: &str, gateway: &GatewayConfig) -> Result<Established, String> {
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
            tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, None)
                .await
                .map(|(ws, _response)| Established::Tls(Box::new(ws)))
                .map_err(|e| describe_ws_error(&e))
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

/// A plain `ws://` upgrade done here rather than by tungstenite's client handshake, which hands
/// its 4 KiB response buffer to the WebSocket as the read buffer for the life of the link
/// (whatever `read_buffer_size` says): 40 MiB at 10,000 links. Here the WebSocket starts with
/// only the bytes that followed the response (often the gateway's snapshot frame), so its buffer
/// is [`READ_BUFFER`]. `wss://` links keep tungstenite's handshake (and its 4 KiB) for the TLS.
async fn plain_upgrade(request: ClientRequest, config: WebSocketConfig) -> Result<PlainWs, String> {
    let io = |e: std::io::Error| describe_ws_error(&WsError::Io(e));
    let uri = request.uri();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let mut stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let (bytes, key) = generate_request(request).map_err(|e| describe_ws_error(&e))?;
    stream.write_all(&bytes).await.map_err(io)?;
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
    Ok(WebSocketStream::from_partially_read(stream, tail, Role::Client, Some(config)).await)
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
    mut ws: Box<WebSocketStream<S>>,
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
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
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
        let Ok(Established::Plain(mut ws)) = handshake(&url, &config.gateway).await else {
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
