//! The backend webhook client: the only code in the sidecar that calls the backend.
//!
//! One [`Webhook`] holds one pooled `reqwest` client (rustls, redirects never followed, connect
//! and total timeouts) and sends one [`Delivery`] per call as SPEC section 2 fixes it:
//!
//! ```text
//! POST {url}
//! Content-Type: application/json
//! X-INTERNAL-SECRET: <shared secret>          (a sensitive header value)
//! User-Agent: wa-status-sidecar/<version>
//! Idempotency-Key: <id, the same on every retry of one transition>
//! X-Status-Changed-At: <RFC 3339 UTC, millisecond precision>
//!
//! {"tenant_id":"business_1","status":"disconnected","reason":"..."}
//! ```
//!
//! With signing secrets configured (`backend.signing_secret_file` or env
//! `WEBHOOK_SIGNING_SECRET`), every request also carries the Standard Webhooks headers, so any
//! Standard Webhooks library can verify it:
//!
//! ```text
//! webhook-id: <the Idempotency-Key>
//! webhook-timestamp: <Unix seconds of this attempt>
//! webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> [v1,<...> per further secret]
//! ```
//!
//! TLS trusts the system's roots plus `backend.ca_file` ([`crate::tls`]); redirects are never
//! followed and at most [`BODY_PREFIX_LIMIT`] bytes of an answer are read.
//!
//! [`Webhook::send`] never fails: every answer (or the lack of one) is an [`Outcome`] the caller
//! branches on, because a backend that is down or misconfigured is an expected state of the
//! world, not a bug. Scheduling retries is the caller's job; this module supplies the numbers
//! ([`full_jitter`], [`RETRY_BASE`], [`RETRY_CAP`], [`CONFIG_FAULT_RETRY`]) and parses
//! `Retry-After` ([`parse_retry_after`]).
//!
//! The shared secret never reaches an error string, a `Debug` output or a log line: it lives in
//! a `HeaderValue` marked sensitive, and errors are built from `reqwest` errors stripped of
//! their URL.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use sha2::Sha256;

use crate::config::Config;
use crate::debounce::Status;
use crate::secret::{Secret, SigningSecret};

/// First retry delay bound after a transient failure (SPEC 2: base 1 s).
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay, also the most of a `Retry-After` we honour (SPEC 2: cap 5 min), so a
/// backend that asks for a day still hears from us within minutes of coming back.
pub const RETRY_CAP: Duration = Duration::from_secs(5 * 60);
/// Retry interval while the backend refuses our secret or our URL (SPEC 2: every 30 s). Fixed,
/// not backed off: the operator is expected to fix the config, and the next try should follow soon.
pub const CONFIG_FAULT_RETRY: Duration = Duration::from_secs(30);
/// How much of a response body is kept (SPEC 2: "first 512 bytes"); reading stops there, so a
/// misbehaving backend cannot make us buffer an endless body.
pub const BODY_PREFIX_LIMIT: usize = 512;

/// Sent on every request so the backend's logs say who called.
const USER_AGENT: &str = concat!("wa-status-sidecar/", env!("CARGO_PKG_VERSION"));
const SECRET_HEADER: &str = "x-internal-secret";
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
const CHANGED_AT_HEADER: &str = "x-status-changed-at";
const WEBHOOK_ID_HEADER: &str = "webhook-id";
const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

/// Why a [`Webhook`] could not be built. The messages never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("backend URL {url} is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "the backend shared secret cannot be sent as an HTTP header: it is empty or holds a \
         character other than printable ASCII (a trailing newline in the secret file?)"
    )]
    InvalidSecret,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("backend.ca_file: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// One transition to report. Borrowed, so the caller keeps ownership of its queued job and a
/// retry sends exactly the same bytes.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub tenant: &'a str,
    pub status: Status,
    /// Ignored (sent as `null`) for `Connected`, as the backend contract requires.
    pub reason: Option<&'a str>,
    /// Generated once per transition; the backend deduplicates on it.
    pub idempotency_key: &'a str,
    /// When the episode began (the first Down of a drop, the first Up of a recovery).
    pub changed_at: SystemTime,
}

/// What became of one call. Every variant is an expected state of the world, hence not an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx: the backend now has this status.
    Delivered { status: u16 },
    /// Connection error, timeout, 408, 429, 5xx: try again later (after = Retry-After if given,
    /// which can only lengthen the backoff). `status` is the HTTP status when the backend
    /// answered (408, 429, 5xx), None for a transport failure.
    Retry {
        after: Option<Duration>,
        error: String,
        status: Option<u16>,
        /// No answer came, but the request may have reached the backend and been applied (a
        /// timeout, or a connection lost once the request was on it): the backend's state is
        /// not known until a later call is acknowledged. False for an answer, and for a
        /// connection that was never made.
        maybe_applied: bool,
    },
    /// 401/403: the shared secret is wrong — a configuration fault.
    Credentials { status: u16 },
    /// 404, 405, a redirect or another unexpected 4xx/3xx: the URL is wrong — a configuration fault.
    WrongUrl { status: u16 },
    /// 400/422: the backend refused this payload; body = first 512 bytes (lossy UTF-8).
    ///
    /// `status` 0 means the request was refused before it was sent: the idempotency key cannot
    /// be an HTTP header value. Retrying would fail the same way, so it is dropped like a 400.
    Refused { status: u16, body: String },
}

impl Outcome {
    /// The metric label; a fixed set, so it is safe as a Prometheus label value.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Credentials { .. } => "credentials",
            Outcome::WrongUrl { .. } => "wrong_url",
            Outcome::Refused { .. } => "refused",
        }
    }
}

/// The backend client. Cheap to clone (the connection pool is shared); build a new one to
/// apply a reloaded config.
#[derive(Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: url::Url,
    /// Pre-built and marked sensitive, so hyper's HPACK never indexes it and `Debug` hides it.
    secret: HeaderValue,
    timeout: Duration,
    connect_timeout: Duration,
    /// Standard Webhooks keys: one signature per key on every request; none, no signature.
    signing: Arc<[SigningSecret]>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url.as_str())
            .field("secret", &"<redacted>")
            .field("user_agent", &USER_AGENT)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("signing_secrets", &self.signing.len())
            .finish()
    }
}

/// The body, in the backend's key order. Borrowed: serializing allocates only the output.
#[derive(Serialize)]
struct Body<'a> {
    tenant_id: &'a str,
    status: Status,
    reason: Option<Cow<'a, str>>,
}

/// The text with every control character a space. Reasons are built without them; this makes
/// sure of it on the wire, since a backend may refuse one (the Flask kit answers 400, and a 400
/// drops the delivery: a lost bell).
fn without_controls(text: &str) -> Cow<'_, str> {
    match text.contains(char::is_control) {
        false => Cow::Borrowed(text),
        true => Cow::Owned(text.replace(char::is_control, " ")),
    }
}

impl Webhook {
    /// `url` is the full endpoint (`backend.url` joined with `backend.path`). `timeout` bounds a
    /// whole call, body included; `connect_timeout` bounds the TCP and TLS handshake.
    ///
    /// Trusts the system's roots and signs nothing: for the tests; [`Webhook::from_config`] is
    /// what the sidecar uses.
    #[cfg(test)]
    pub fn new(
        url: &str,
        secret: Secret,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, WebhookError> {
        let url = parse_url(url)?;
        let tls = crate::tls::client_config(None, url.scheme() == "https")?;
        Self::build(url, secret, timeout, connect_timeout, &tls, Vec::new())
    }

    /// The client `[backend]` describes: its URL, secret and timeouts, the system's roots plus
    /// `backend.ca_file` (read now), and its signing secrets.
    pub fn from_config(config: &Config) -> Result<Self, WebhookError> {
        let backend = &config.backend;
        let url = parse_url(&config.webhook_url())?;
        let tls = crate::tls::client_config(backend.ca_file.as_deref(), url.scheme() == "https")?;
        Self::build(
            url,
            backend.secret.clone(),
            backend.timeout,
            backend.connect_timeout,
            &tls,
            backend.signing_secrets.clone(),
        )
    }

    fn build(
        url: url::Url,
        secret: Secret,
        timeout: Duration,
        connect_timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
        signing: Vec<SigningSecret>,
    ) -> Result<Self, WebhookError> {
        // Printable ASCII only: HTTP would carry other bytes, but the backend (WSGI decodes
        // headers as Latin-1) would then compare a different string and answer 401, a far
        // harder fault to find than this error at start-up.
        let printable = |b: u8| (0x20..0x7f).contains(&b);
        let raw = secret.expose();
        if raw.is_empty() || !raw.bytes().all(printable) {
            return Err(WebhookError::InvalidSecret);
        }
        let mut secret = HeaderValue::from_str(raw).map_err(|_| WebhookError::InvalidSecret)?;
        secret.set_sensitive(true);
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // A redirect means the URL is wrong; following it would also carry the secret to
            // wherever the redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .use_preconfigured_tls(rustls::ClientConfig::clone(tls))
            .build()
            .map_err(|e| WebhookError::Client(describe(e.without_url())))?;
        Ok(Webhook {
            client,
            url,
            secret,
            timeout,
            connect_timeout,
            signing: signing.into(),
        })
    }

    /// The endpoint, for log lines and operator messages (it never holds credentials: `new`
    /// refuses a URL with a user or password).
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// Sends one delivery and classifies the answer. Never panics, never fails.
    pub async fn send(&self, d: &Delivery<'_>) -> Outcome {
        let Ok(idempotency_key) = HeaderValue::from_str(d.idempotency_key) else {
            return Outcome::Refused {
                status: 0,
                body: "not sent: the idempotency key is not a valid HTTP header value".into(),
            };
        };
        let body = Body {
            tenant_id: d.tenant,
            status: d.status,
            reason: match d.status {
                Status::Connected => None,
                Status::Disconnected => d.reason.map(without_controls),
            },
        };
        // Serializing a struct of strings cannot fail; `expect` documents that rather than
        // inventing an outcome for it.
        let body = serde_json::to_vec(&body).expect("a struct of strings always serializes");

        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(SECRET_HEADER, self.secret.clone());
        headers.insert(IDEMPOTENCY_KEY_HEADER, idempotency_key);
        headers.insert(
            CHANGED_AT_HEADER,
            HeaderValue::from_str(&format_changed_at(d.changed_at))
                .expect("an RFC 3339 timestamp is ASCII"),
        );
        if !self.signing.is_empty() {
            // The time of this attempt, not of the transition: a retry an hour later must still
            // fall within the receiver's tolerance (Standard Webhooks: 5 minutes).
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let signatures: Vec<String> = self
                .signing
                .iter()
                .map(|secret| sign(secret.key(), d.idempotency_key, timestamp, &body))
                .collect();
            // The key was a valid header value above; a number and base64 always are.
            headers.insert(WEBHOOK_ID_HEADER, headers[IDEMPOTENCY_KEY_HEADER].clone());
            headers.insert(WEBHOOK_TIMESTAMP_HEADER, HeaderValue::from(timestamp));
            headers.insert(
                WEBHOOK_SIGNATURE_HEADER,
                HeaderValue::from_str(&signatures.join(" ")).expect("base64 is ASCII"),
            );
        }

        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        match response {
            Ok(response) => self.classify(response).await,
            Err(e) => Outcome::Retry {
                after: None,
                maybe_applied: !e.is_connect(),
                error: self.describe_failure(e),
                status: None,
            },
        }
    }

    async fn classify(&self, response: reqwest::Response) -> Outcome {
        let status = response.status().as_u16();
        // Take the header before `read_prefix` consumes the response, and measure "now" when
        // the answer arrived, not after a slow body.
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Read (a bounded prefix of) the body on every answer, not only the ones we log: a
        // small body read to its end lets the connection go back to the pool.
        let body = self.redact(read_prefix(response, BODY_PREFIX_LIMIT).await);
        match status {
            200..=299 => Outcome::Delivered { status },
            401 | 403 => Outcome::Credentials { status },
            400 | 422 => Outcome::Refused { status, body },
            // Anything from 500 up, including codes no standard defines, is the server's
            // trouble, not our configuration's.
            408 | 429 | 500.. => Outcome::Retry {
                after: retry_after,
                error: answered(status, &body),
                status: Some(status),
                maybe_applied: false,
            },
            _ => Outcome::WrongUrl { status },
        }
    }

    /// `body` without our credentials: a backend or proxy whose error page echoes the request's
    /// headers would otherwise put the shared secret in the log and `/tenants`. Each signing
    /// key is looked for in its base64 text too, and each credential also as a JSON string
    /// writes it (`\"`, `\\`, and `\/` as some encoders do: base64 secrets hold `/`).
    fn redact(&self, body: String) -> String {
        let base64 = base64::engine::general_purpose::STANDARD;
        let signing = self.signing.iter().map(|s| base64.encode(s.key()));
        let secret = String::from_utf8_lossy(self.secret.as_bytes()).into_owned();
        let json = |c: &String| c.replace('\\', "\\\\").replace('"', "\\\"");
        std::iter::once(secret)
            .chain(signing)
            .flat_map(|c| {
                let json = json(&c);
                [json.replace('/', "\\/"), json, c]
            })
            .fold(body, |body, credential| without(body, &credential))
    }

    /// A transport failure as one line for logs and `/tenants`: what kind, then the cause chain.
    fn describe_failure(&self, e: reqwest::Error) -> String {
        let what = if e.is_connect() && e.is_timeout() {
            format!(
                "connect timeout: no connection to the backend within {}",
                humantime::format_duration(self.connect_timeout)
            )
        } else if e.is_timeout() {
            format!(
                "timeout: no complete answer from the backend within {}",
                humantime::format_duration(self.timeout)
            )
        } else if e.is_connect() {
            "cannot connect to the backend".to_string()
        } else {
            "request to the backend failed".to_string()
        };
        // reqwest's own top line ("error sending request") says less than `what`; the
        // sources carry the cause ("tcp connect error: Connection refused").
        let e = e.without_url();
        let cause = match std::error::Error::source(&e) {
            Some(source) => describe(source),
            None => e.to_string(),
        };
        format!("{what}: {cause}")
    }
}

/// One Standard Webhooks signature: `v1,` then the base64 HMAC-SHA256, keyed with the secret's
/// decoded bytes, of `"{id}.{timestamp}.{body}"`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

fn parse_url(raw: &str) -> Result<url::Url, WebhookError> {
    let invalid = |shown: &str, reason: &str| WebhookError::InvalidUrl {
        url: shown.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(raw).map_err(|e| {
        // An unparsable URL may still hold a password; show it only when it cannot.
        let shown = if raw.contains('@') { "<redacted>" } else { raw };
        invalid(shown, &e.to_string())
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(invalid(
            shown.as_str(),
            "it must not carry a user or password (the shared secret goes in X-INTERNAL-SECRET)",
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            url.as_str(),
            "it must be an http:// or https:// URL with a host",
        ));
    }
    Ok(url)
}

/// RFC 3339 UTC with milliseconds. The time comes from the state file, which may hold anything:
/// humantime panics before 1970 and fails from the year 10000, so clamp into its range.
fn format_changed_at(t: SystemTime) -> String {
    // 9999-12-31T23:59:59.999Z, the last instant humantime can format.
    let last = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    let t = t.clamp(UNIX_EPOCH, last);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads at most `limit` bytes of the body, then drops the response (and with it the rest).
/// A failed read keeps what arrived: the status already said what matters.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// `text` with every occurrence of `credential` replaced by `<redacted>`, and so is a beginning
/// of it (4 bytes or more) that `text` ends with: a body cut at its 512th byte may end inside one.
fn without(text: String, credential: &str) -> String {
    const SHOWN: &str = "<redacted>";
    if credential.is_empty() {
        return text;
    }
    let mut text = match text.contains(credential) {
        true => text.replace(credential, SHOWN),
        false => text,
    };
    // No beginning longer than the text can end it: a secret file of megabytes costs nothing.
    let cut = (4..credential.len().min(text.len() + 1))
        .rev()
        .find(|&n| credential.is_char_boundary(n) && text.ends_with(&credential[..n]));
    if let Some(n) = cut {
        text.truncate(text.len() - n);
        text.push_str(SHOWN);
    }
    text
}

fn answered(status: u16, body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        format!("backend answered {status}")
    } else {
        format!("backend answered {status}: {body}")
    }
}

/// An error and its sources as "a: b: c", skipping a source that repeats its parent's text.
fn describe(e: impl std::error::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = s.source();
    }
    out
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)]; `unit` in [0,1) is the random draw so it is testable.
///
/// Full jitter (rather than equal or no jitter) spreads thousands of tenants that failed
/// together, so a recovering backend is not hit by one synchronized wave. Saturates instead of
/// overflowing for any `attempt`; a `unit` outside [0, 1] (or NaN) is clamped.
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let ceiling = base.saturating_mul(2u32.saturating_pow(attempt)).min(cap);
    let unit = if unit.is_nan() {
        0.0
    } else {
        unit.clamp(0.0, 1.0)
    };
    // Via f64 seconds with a checked conversion: `Duration::mul_f64` panics when rounding
    // pushes a huge ceiling past `Duration::MAX`, and `min` keeps rounding from exceeding it.
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit)
        .unwrap_or(ceiling)
        .min(ceiling)
}

/// Retry-After as delta-seconds or HTTP-date, relative to now; capped at RETRY_CAP; garbage -> None.
///
/// A date in the past means "now" (zero). A delta too large for a `u64` is still a valid,
/// very long delay, so it is capped rather than ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let delay = if value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().map_or(RETRY_CAP, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(RETRY_CAP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::body::Bytes;
    use axum::extract::ConnectInfo;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const PATH: &str = "/api/internal/whatsapp/status-webhook";
    const SECRET: &str = "s3cr3t-shared-value";

    /// Serves `app` on an ephemeral loopback port for the rest of the test; returns the endpoint.
    async fn serve(app: Router) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}{PATH}")
    }

    /// A backend that answers every POST with `status`, `headers` and `body`.
    async fn answering(status: u16, headers: &[(&'static str, String)], body: String) -> String {
        let mut map = AxumHeaders::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        let status = StatusCode::from_u16(status).unwrap();
        serve(Router::new().route(PATH, post(move || async move { (status, map, body) }))).await
    }

    fn webhook(url: &str, timeout: Duration) -> Webhook {
        Webhook::new(url, Secret::new(SECRET), timeout, Duration::from_secs(2)).unwrap()
    }

    /// 2024-05-01T12:34:56.789Z
    fn changed_at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_714_566_896_789)
    }

    fn delivery(status: Status, reason: Option<&str>) -> Delivery<'_> {
        Delivery {
            tenant: "business_1",
            status,
            reason,
            idempotency_key: "0190f1c2-7d3e-7a41-9b7c-2f1e5d6c4b3a",
            changed_at: changed_at(),
        }
    }

    async fn send_to(status: u16, headers: &[(&'static str, String)], body: &str) -> Outcome {
        let url = answering(status, headers, body.to_string()).await;
        webhook(&url, Duration::from_secs(5))
            .send(&delivery(Status::Disconnected, Some("x")))
            .await
    }

    /// A backend that records each request's headers and body, and answers `200 {"ok": true}`.
    async fn recording() -> (String, mpsc::UnboundedReceiver<(AxumHeaders, Bytes)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            PATH,
            post(move |headers: AxumHeaders, body: Bytes| async move {
                tx.send((headers, body)).unwrap();
                r#"{"ok": true}"#
            }),
        );
        (serve(app).await, rx)
    }

    fn header<'h>(headers: &'h AxumHeaders, name: &str) -> &'h str {
        let all: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(all.len(), 1, "header {name} sent {} times", all.len());
        all[0].to_str().unwrap()
    }

    #[tokio::test]
    async fn sends_the_exact_request_of_the_backend_contract() {
        let (url, mut rx) = recording().await;
        let hook = webhook(&url, Duration::from_secs(5));
        let reason = "Stream Errored (conflict) (code 440)";

        let outcome = hook
            .send(&delivery(Status::Disconnected, Some(reason)))
            .await;

        assert_eq!(outcome, Outcome::Delivered { status: 200 });
        let (headers, body) = rx.recv().await.unwrap();
        assert_eq!(header(&headers, "content-type"), "application/json");
        assert_eq!(header(&headers, "x-internal-secret"), SECRET);
        assert_eq!(
            header(&headers, "user-agent"),
            format!("wa-status-sidecar/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            header(&headers, "idempotency-key"),
            "0190f1c2-7d3e-7a41-9b7c-2f1e5d6c4b3a"
        );
        assert_eq!(
            header(&headers, "x-status-changed-at"),
            "2024-05-01T12:34:56.789Z"
        );
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"tenant_id":"business_1","status":"disconnected","reason":"Stream Errored (conflict) (code 440)"}"#
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 3, "exactly three keys: {object:?}");
        assert_eq!(object["tenant_id"], "business_1");
        assert_eq!(object["status"], "disconnected");
        assert_eq!(object["reason"], reason);
    }

    /// A control character never reaches the wire, whatever the reason holds: a backend may
    /// refuse it with a 400, which would drop the delivery.
    #[tokio::test]
    async fn a_reason_never_carries_a_control_character() {
        let (url, mut rx) = recording().await;
        let hook = webhook(&url, Duration::from_secs(5));
        let reason = "line one\nline two\u{0}\u{1b}[31m\u{85}end";
        let outcome = hook
            .send(&delivery(Status::Disconnected, Some(reason)))
            .await;
        assert_eq!(outcome, Outcome::Delivered { status: 200 });
        let (_, body) = rx.recv().await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["reason"], "line one line two  [31m end");
    }

    /// The published test vector of Standard Webhooks (standard-webhooks/standard-webhooks,
    /// `libraries/python/tests/test_webhooks.py::test_sign_function`).
    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                secret.key(),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[tokio::test]
    async fn with_signing_secrets_every_request_carries_one_signature_per_secret() {
        let (url, mut rx) = recording().await;
        let secrets = [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_c2Vjb25kLWtleQ==",
        ];
        let signing = secrets
            .iter()
            .map(|s| SigningSecret::parse(s).unwrap())
            .collect::<Vec<_>>();
        let t = Duration::from_secs(5);
        let tls = crate::tls::client_config(None, false).unwrap();
        let url = parse_url(&url).unwrap();
        let hook = Webhook::build(url, Secret::new(SECRET), t, t, &tls, signing.clone()).unwrap();
        assert!(format!("{hook:?}").contains("signing_secrets: 2"));

        for attempt in 0..2 {
            let before = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let outcome = hook
                .send(&delivery(Status::Disconnected, Some("logged out")))
                .await;
            let after = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            assert_eq!(outcome, Outcome::Delivered { status: 200 }, "{attempt}");
            let (headers, body) = rx.recv().await.unwrap();
            let id = header(&headers, "webhook-id");
            assert_eq!(id, header(&headers, "idempotency-key"));
            let timestamp: u64 = header(&headers, "webhook-timestamp").parse().unwrap();
            assert!((before..=after).contains(&timestamp), "{timestamp}");
            let signatures: Vec<&str> = header(&headers, "webhook-signature").split(' ').collect();
            let expected: Vec<String> = signing
                .iter()
                .map(|s| sign(s.key(), id, timestamp, &body))
                .collect();
            assert_eq!(signatures, expected);
            assert!(signatures.iter().all(|s| s.starts_with("v1,")));
            assert_eq!(header(&headers, "x-internal-secret"), SECRET);
        }
    }

    #[tokio::test]
    async fn without_signing_secrets_no_signature_headers_are_sent() {
        let (url, mut rx) = recording().await;
        let hook = webhook(&url, Duration::from_secs(5));
        hook.send(&delivery(Status::Connected, None)).await;
        let (headers, _) = rx.recv().await.unwrap();
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            assert!(headers.get(name).is_none(), "{name}");
        }
    }

    #[tokio::test]
    async fn connected_always_sends_a_null_reason() {
        let (url, mut rx) = recording().await;
        let hook = webhook(&url, Duration::from_secs(5));

        let outcome = hook.send(&delivery(Status::Connected, Some("stale"))).await;

        assert_eq!(outcome, Outcome::Delivered { status: 200 });
        let (_, body) = rx.recv().await.unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"tenant_id":"business_1","status":"connected","reason":null}"#
        );
    }

    #[tokio::test]
    async fn reuses_the_pooled_connection() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            PATH,
            post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                    tx.send(peer).unwrap();
                    r#"{"ok": true}"#
                },
            ),
        );
        let hook = webhook(&serve(app).await, Duration::from_secs(5));

        for _ in 0..2 {
            let outcome = hook.send(&delivery(Status::Connected, None)).await;
            assert_eq!(outcome, Outcome::Delivered { status: 200 });
        }

        assert_eq!(rx.recv().await.unwrap(), rx.recv().await.unwrap());
    }

    #[tokio::test]
    async fn classifies_status_codes() {
        let cases = [
            (200, Outcome::Delivered { status: 200 }),
            (204, Outcome::Delivered { status: 204 }),
            (401, Outcome::Credentials { status: 401 }),
            (403, Outcome::Credentials { status: 403 }),
            (404, Outcome::WrongUrl { status: 404 }),
            (405, Outcome::WrongUrl { status: 405 }),
            (410, Outcome::WrongUrl { status: 410 }),
        ];
        for (status, expected) in cases {
            assert_eq!(send_to(status, &[], "nope").await, expected, "{status}");
        }
    }

    #[tokio::test]
    async fn server_errors_and_throttling_are_retried() {
        for status in [408, 429, 500, 502, 503] {
            let outcome = send_to(status, &[], "busy").await;
            assert_eq!(
                outcome,
                Outcome::Retry {
                    after: None,
                    error: format!("backend answered {status}: busy"),
                    status: Some(status),
                    maybe_applied: false,
                }
            );
        }
    }

    #[tokio::test]
    async fn a_503_honours_retry_after_seconds() {
        let outcome = send_to(503, &[("retry-after", "7".into())], "").await;
        assert_eq!(
            outcome,
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                error: "backend answered 503".into(),
                status: Some(503),
                maybe_applied: false,
            }
        );
    }

    #[tokio::test]
    async fn a_429_honours_retry_after_as_an_http_date() {
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let outcome = send_to(429, &[("retry-after", at)], "slow down").await;
        let Outcome::Retry {
            after: Some(after),
            error,
            status: Some(429),
            maybe_applied: false,
        } = outcome
        else {
            panic!("expected a retry with a delay, got {outcome:?}");
        };
        // The date has whole seconds and some time passed since it was written.
        assert!(
            (Duration::from_secs(118)..=Duration::from_secs(120)).contains(&after),
            "{after:?}"
        );
        assert_eq!(error, "backend answered 429: slow down");
    }

    #[tokio::test]
    async fn a_redirect_is_a_wrong_url_and_is_not_followed() {
        let followed = Arc::new(AtomicUsize::new(0));
        let counter = followed.clone();
        let app = Router::new()
            .route(
                PATH,
                post(|| async { (StatusCode::FOUND, [("location", "/elsewhere")], "") }),
            )
            .route(
                "/elsewhere",
                post(move || async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "followed"
                })
                .get(|| async { "followed" }),
            );
        let hook = webhook(&serve(app).await, Duration::from_secs(5));

        let outcome = hook.send(&delivery(Status::Connected, None)).await;

        assert_eq!(outcome, Outcome::WrongUrl { status: 302 });
        assert_eq!(followed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refusal_keeps_the_first_512_bytes_of_the_body() {
        let body = format!("{{\"error\": \"{}\"}}", "x".repeat(10_000));
        let outcome = send_to(400, &[], &body).await;
        assert_eq!(
            outcome,
            Outcome::Refused {
                status: 400,
                body: body[..512].to_string(),
            }
        );
        let outcome = send_to(422, &[], "bad status").await;
        assert_eq!(
            outcome,
            Outcome::Refused {
                status: 422,
                body: "bad status".into(),
            }
        );
    }

    /// A backend (or a proxy's error page) that echoes the request's headers: the secret never
    /// reaches the outcome, which the log and `/tenants` show, not even cut off at the limit.
    #[tokio::test]
    async fn an_answer_echoing_the_secret_keeps_it_out_of_the_outcome() {
        let echo = format!("<pre>x-internal-secret: {SECRET}\nagain {SECRET}</pre>");
        let outcome = send_to(503, &[], &echo).await;
        let Outcome::Retry { error, .. } = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            error,
            "backend answered 503: <pre>x-internal-secret: <redacted>\nagain <redacted></pre>"
        );
        // The 512-byte prefix ends 6 bytes into the secret.
        let cut = format!("{}{SECRET}", "x".repeat(BODY_PREFIX_LIMIT - 6));
        let outcome = send_to(400, &[], &cut).await;
        let Outcome::Refused { body, .. } = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            body,
            &format!("{}<redacted>", "x".repeat(BODY_PREFIX_LIMIT - 6))
        );
        assert!(!body.contains(&SECRET[..6]));
    }

    /// A secret with `/`, `"` and `\` echoed inside JSON, with or without `/` escaped, is
    /// redacted too.
    #[tokio::test]
    async fn a_secret_echoed_as_a_json_string_is_redacted_too() {
        let secret = r#"ab/c"d\e+f="#;
        let url = answering(
            503,
            &[],
            [
                r#"{"x-internal-secret": "ab\/c\"d\\e+f=", "#,
                r#""again": "ab/c\"d\\e+f="}"#,
            ]
            .concat(),
        )
        .await;
        let hook = Webhook::new(
            &url,
            Secret::new(secret),
            Duration::from_secs(5),
            Duration::from_secs(2),
        );
        // `"` and `\` are visible ASCII: the secret is a valid header value.
        let outcome = hook
            .unwrap()
            .send(&delivery(Status::Disconnected, Some("x")))
            .await;
        let Outcome::Retry { error, .. } = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            error,
            r#"backend answered 503: {"x-internal-secret": "<redacted>", "again": "<redacted>"}"#
        );
    }

    #[test]
    fn without_redacts_whole_and_cut_off_credentials_only() {
        let w = |text: &str| without(text.to_string(), "s3cr3t-key");
        assert_eq!(w("a s3cr3t-key b s3cr3t-key"), "a <redacted> b <redacted>");
        assert_eq!(w("ends in s3cr"), "ends in <redacted>");
        // Three bytes could be anything.
        assert_eq!(w("ends in s3c"), "ends in s3c");
        assert_eq!(w("nothing here"), "nothing here");
        assert_eq!(without("kept".into(), ""), "kept");
        // A credential far longer than the text: only its beginnings up to the text's length.
        let long = format!("s3cr{}", "x".repeat(1 << 20));
        assert_eq!(without("ends in s3cr".into(), &long), "ends in <redacted>");
    }

    #[tokio::test]
    async fn an_endless_body_is_not_read_past_the_limit() {
        // A raw server that streams a chunked 400 body until the client hangs up. If the client
        // read to the end, the call would run into its timeout instead.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let head = "HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("400\r\n{}\r\n", "y".repeat(0x400));
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let hook = webhook(&format!("http://{addr}{PATH}"), Duration::from_secs(30));

        let outcome = hook.send(&delivery(Status::Connected, None)).await;

        assert_eq!(
            outcome,
            Outcome::Refused {
                status: 400,
                body: "y".repeat(512),
            }
        );
    }

    #[tokio::test]
    async fn connection_refused_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let hook = webhook(&format!("http://{addr}{PATH}"), Duration::from_secs(5));

        let outcome = hook.send(&delivery(Status::Connected, None)).await;

        let Outcome::Retry {
            after: None,
            error,
            status: None,
            maybe_applied: false,
        } = outcome
        else {
            panic!("expected a retry, got {outcome:?}");
        };
        assert!(
            error.starts_with("cannot connect to the backend: client error (Connect)"),
            "{error}"
        );
        assert!(error.contains("refused"), "{error}");
        assert!(!error.contains(SECRET));
    }

    #[tokio::test]
    async fn a_backend_that_never_answers_times_out_and_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept and hold every connection, never answering.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let hook = webhook(&format!("http://{addr}{PATH}"), Duration::from_millis(200));

        let outcome = hook.send(&delivery(Status::Connected, None)).await;

        let Outcome::Retry {
            after: None,
            error,
            status: None,
            maybe_applied: true,
        } = outcome
        else {
            panic!("expected a retry, got {outcome:?}");
        };
        assert!(
            error
                == "timeout: no complete answer from the backend within 200ms: operation timed out",
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_idempotency_key_that_is_no_header_value_is_refused_unsent() {
        let (url, mut rx) = recording().await;
        let hook = webhook(&url, Duration::from_secs(5));
        let d = Delivery {
            idempotency_key: "bad\nkey",
            ..delivery(Status::Connected, None)
        };

        let outcome = hook.send(&d).await;

        assert!(
            matches!(outcome, Outcome::Refused { status: 0, .. }),
            "{outcome:?}"
        );
        assert!(rx.try_recv().is_err(), "nothing may reach the backend");
    }

    #[test]
    fn new_validates_the_url_and_the_secret_without_echoing_secrets() {
        let t = Duration::from_secs(1);
        let build = |url: &str, secret: &str| Webhook::new(url, Secret::new(secret), t, t);

        assert_eq!(
            build("https://backend.internal/hook", SECRET)
                .unwrap()
                .url(),
            "https://backend.internal/hook"
        );
        for bad in ["not a url", "ftp://host/x", "unix:/run/backend.sock"] {
            let err = build(bad, SECRET).unwrap_err();
            assert!(
                matches!(err, WebhookError::InvalidUrl { .. }),
                "{bad}: {err}"
            );
        }
        let err = build("http://admin:hunter2@backend/x", SECRET).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = build("http://admin:hunter2@[bad/x", SECRET).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");

        for bad in ["", "line\n", "nul\0", "caf\u{e9}"] {
            let err = build("http://backend/x", bad).unwrap_err();
            assert!(matches!(err, WebhookError::InvalidSecret), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let hook = webhook("http://backend/x", Duration::from_secs(1));
        let shown = format!("{hook:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("http://backend/x"), "{shown}");
    }

    #[test]
    fn changed_at_is_rfc3339_millis_and_clamped_to_what_can_be_formatted() {
        assert_eq!(format_changed_at(changed_at()), "2024-05-01T12:34:56.789Z");
        assert_eq!(
            format_changed_at(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format_changed_at(far), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn labels() {
        let cases = [
            (Outcome::Delivered { status: 200 }, "delivered"),
            (
                Outcome::Retry {
                    after: None,
                    error: String::new(),
                    status: None,
                    maybe_applied: false,
                },
                "retry",
            ),
            (Outcome::Credentials { status: 401 }, "credentials"),
            (Outcome::WrongUrl { status: 404 }, "wrong_url"),
            (
                Outcome::Refused {
                    status: 400,
                    body: String::new(),
                },
                "refused",
            ),
        ];
        for (outcome, label) in cases {
            assert_eq!(outcome.label(), label);
        }
    }

    #[test]
    fn full_jitter_stays_within_its_bounds() {
        let (base, cap) = (RETRY_BASE, RETRY_CAP);
        for attempt in 0..=40 {
            let ceiling = if attempt < 9 {
                base * 2u32.pow(attempt)
            } else {
                cap
            };
            assert_eq!(full_jitter(attempt, base, cap, 0.0), Duration::ZERO);
            for unit in [0.25, 0.5, 0.999_999_999] {
                let d = full_jitter(attempt, base, cap, unit);
                assert!(
                    d <= ceiling && d <= cap,
                    "attempt {attempt}, unit {unit}: {d:?}"
                );
                assert!(d >= ceiling.mul_f64(unit) - Duration::from_micros(1));
            }
        }
        assert_eq!(full_jitter(0, base, cap, 0.5), Duration::from_millis(500));
        assert_eq!(full_jitter(3, base, cap, 0.5), Duration::from_secs(4));
        // Saturation instead of overflow, and out-of-range draws clamped.
        assert_eq!(full_jitter(u32::MAX, Duration::MAX, cap, 1.0), cap);
        assert_eq!(
            full_jitter(u32::MAX, base, Duration::MAX, 0.0),
            Duration::ZERO
        );
        assert_eq!(
            full_jitter(u32::MAX, Duration::MAX, Duration::MAX, 1.0),
            Duration::MAX
        );
        assert_eq!(full_jitter(40, base, cap, 7.0), cap);
        assert_eq!(full_jitter(40, base, cap, -1.0), Duration::ZERO);
        assert_eq!(full_jitter(40, base, cap, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn parse_retry_after_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000); // Tue, 14 Nov 2023 22:13:20 GMT
        let s = Duration::from_secs;
        let cases: &[(&str, Option<Duration>)] = &[
            ("7", Some(s(7))),
            (" 7 ", Some(s(7))),
            ("0", Some(s(0))),
            ("300", Some(s(300))),
            ("301", Some(RETRY_CAP)),
            ("99999999999999999999999999", Some(RETRY_CAP)),
            ("Tue, 14 Nov 2023 22:14:20 GMT", Some(s(60))),
            ("Tuesday, 14-Nov-23 22:14:20 GMT", Some(s(60))),
            ("Tue Nov 14 22:14:20 2023", Some(s(60))),
            ("Tue, 14 Nov 2023 22:13:20 GMT", Some(s(0))),
            ("Mon, 13 Nov 2023 22:13:20 GMT", Some(s(0))),
            ("Wed, 15 Nov 2023 22:13:20 GMT", Some(RETRY_CAP)),
            ("", None),
            ("   ", None),
            ("-1", None),
            ("+5", None),
            ("1.5", None),
            ("7s", None),
            ("soon", None),
            ("Tue, 32 Nov 2023 22:14:20 GMT", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), *expected, "{value:?}");
        }
    }
}
