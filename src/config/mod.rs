//! The sidecar's configuration: the TOML file (SPEC section 5), its environment overrides, and
//! the validation that turns both into a typed [`Config`].
//!
//! Loading has three steps, so that one run lists every problem (unknown keys, wrong types, bad
//! values, missing keys), each with its key path, and the operator fixes them all in one go
//! (`wa-status-sidecar check`):
//! 1. [`raw`]: the text is parsed into a `toml::Table`; keys the serde types do not take are
//!    reported with "did you mean" hints and set aside; the rest is deserialized into the raw
//!    serde types (every section and key declared once, in one table), whose fields never fail
//!    on their own (a value of the wrong type is kept for step 2 to report), so one bad key
//!    never hides another.
//! 2. [`check`]: one validation pass over the typed value: types, bounds (SPEC section 5
//!    [rev 12]), cross-key rules, files and environment, every problem collected. A refused
//!    value stands in as its key's default so the pass goes on.
//! 3. The typed [`Config`] the pass built, returned only when it found nothing.
//!
//! Environment, read through [`Env`] so tests never touch the process environment:
//! - `BACKEND_INTERNAL_URL` overrides `backend.url`.
//! - The backend's shared secret comes from `INTERNAL_SHARED_SECRET`, else the file named by
//!   `backend.secret_file`, else `$CREDENTIALS_DIRECTORY/internal-secret` (systemd
//!   `LoadCredential=`). It is never written in the config file itself.
//! - `WEBHOOK_SIGNING_SECRET` (Standard Webhooks signing secrets) overrides
//!   `backend.signing_secret_file`.
//! - `STATE_DIRECTORY` (systemd `StateDirectory=`) is the default of `state.dir`.
//! - `gateway.token_env` and `[gateway.headers_env]` name the variables that hold gateway
//!   credentials.
//!
//! An empty (or all-blank) variable counts as unset: container tooling often sets `VAR=` for
//! "not given". Relative paths in the file (`tenants.file`, the secret, token and CA files,
//! `state.dir`) resolve against the directory of the config file, so a config behaves the same
//! whatever the working directory of the process.
//!
//! Credentials never reach `Debug`, [`Config::summary`] or a problem message: secrets and header
//! values are shown as `<redacted>`, and every URL goes through [`redact_url`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use crate::debounce::Policy;
use crate::logging::redact_url;
use crate::secret::{Secret, SigningSecret};
use crate::storm::StormPolicy;
use crate::validate_tenant_id;

mod check;
mod raw;
#[cfg(test)]
mod tests;

/// Env var that overrides `backend.url`: one config file can then serve several deployments.
pub(crate) const ENV_BACKEND_URL: &str = "BACKEND_INTERNAL_URL";
/// Env var holding the backend's shared secret (first of the three places a secret may come from).
pub(crate) const ENV_SHARED_SECRET: &str = "INTERNAL_SHARED_SECRET";
/// Env var holding the webhook signing secrets (whitespace-separated); beats `signing_secret_file`.
pub(crate) const ENV_SIGNING_SECRET: &str = "WEBHOOK_SIGNING_SECRET";
/// Set by systemd for a unit with `LoadCredential=`; the secret is then the file [`CREDENTIAL_NAME`] in it.
pub(crate) const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// Name of the systemd credential holding the shared secret (`LoadCredential=internal-secret:/path`).
pub(crate) const CREDENTIAL_NAME: &str = "internal-secret";
/// Set by systemd for a unit with `StateDirectory=`; the default of `state.dir` when present.
pub(crate) const ENV_STATE_DIRECTORY: &str = "STATE_DIRECTORY";

/// One link per session is how Baileys gateways are usually built.
pub(crate) const DEFAULT_GATEWAY_MODE: GatewayMode = GatewayMode::PerTenant;
/// Well under the 60 s idle cut-off of common proxies and load balancers in front of a gateway.
pub(crate) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Shortest `gateway.ping_interval`: each link pings that often, so a mistaken "1ms" would
/// flood the gateway. Tests and demos use 1 s.
pub(crate) const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);
/// Two pings plus slack: tolerates one lost pong, still catches a half-open link within a minute.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// 1 MiB: status frames are a few KiB; anything bigger is a bug or an attack, not a status.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 20;
/// Smallest frame limit accepted: a Baileys close frame with its Boom error is already ~0.5 KiB.
pub(crate) const MIN_MAX_FRAME_SIZE: usize = 1024;
/// Largest frame limit accepted (SPEC section 5 [rev 12]): a frame is held whole in memory.
pub(crate) const MAX_MAX_FRAME_SIZE: usize = 16 << 20;
/// Brings 10,000 links up within seconds without a thundering herd of TLS handshakes on the gateway.
pub(crate) const DEFAULT_HANDSHAKE_CONCURRENCY: usize = 64;
/// Most handshakes at once accepted (SPEC section 5 [rev 12]): each holds a socket and buffers.
pub(crate) const MAX_HANDSHAKE_CONCURRENCY: usize = 4096;
/// The backend's existing route (SPEC section 2).
pub(crate) const DEFAULT_BACKEND_PATH: &str = "/api/internal/whatsapp/status-webhook";
/// SPEC section 2: a webhook call slower than this counts as failed and is retried.
pub(crate) const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// SPEC section 2: a backend that cannot accept a connection within 5 s is down; retry later.
pub(crate) const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// SPEC section 2: bounds the load a recovering fleet puts on the backend.
pub(crate) const DEFAULT_BACKEND_MAX_IN_FLIGHT: usize = 16;
/// Most webhook requests in flight accepted (SPEC section 5 [rev 12]).
pub(crate) const MAX_BACKEND_MAX_IN_FLIGHT: usize = 1024;
/// Largest `storm_min_tenants` accepted: far above any fleet one process can hold.
pub(crate) const MAX_STORM_MIN_TENANTS: usize = 1_000_000;
/// Longest duration accepted anywhere in the file (SPEC section 5 [rev 12]): 30 days. Longer
/// values are mistakes, and unbounded ones overflow the arithmetic done on them.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The FHS place for a daemon's state, used when systemd provides no `STATE_DIRECTORY`.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/wa-status-sidecar";
/// Loopback only, since the admin API lists tenant ids; 9464 is in the range of Prometheus exporters.
pub(crate) const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));
/// Text reads best on a terminal and in journald; JSON is opt-in for log shippers.
pub(crate) const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Largest file read for the config (the config itself, tenants, secrets, CAs): a mistaken
/// log file must give a problem, not exhaust memory (a device such as `/dev/zero` is refused
/// before reading, [`crate::system::open_regular`]).
const MAX_FILE_BYTES: u64 = 16 << 20;
/// What a template's `{tenant}` is replaced by.
pub(crate) const TENANT_PLACEHOLDER: &str = "{tenant}";
/// RFC 3986 unreserved characters stay; everything else in a tenant id is percent-encoded, so the
/// result is safe in a path segment, a query value or a host label alike.
const TENANT_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The validated configuration. Built only by [`Config::load`] / [`Config::from_toml_str`].
/// `Debug` shows what [`Config::summary`] shows, credentials redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) gateway: GatewayConfig,
    pub(crate) backend: BackendConfig,
    pub(crate) debounce: Policy,
    /// The mass-outage hold (`[debounce] storm_*`, SPEC section 4 [rev 12]).
    pub(crate) storm: StormPolicy,
    pub tenants: TenantsConfig,
    pub(crate) state: StateConfig,
    pub(crate) admin: AdminConfig,
    pub log: LogConfig,
    /// Things that are allowed but probably not what the operator wants (e.g. no tenants yet).
    /// Logged at startup and shown by `check`.
    pub warnings: Vec<String>,
}

/// `[log]`: how log lines are written. The level comes from `RUST_LOG` (default info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// An enum of a key that takes one of a few names, with those names (for the file and the
/// summary) written once.
macro_rules! named {
    ($(#[$doc:meta])* $Enum:ident { $($(#[$vdoc:meta])* $Variant:ident = $name:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $Enum { $($(#[$vdoc])* $Variant,)* }
        impl $Enum {
            /// Every variant, with its name.
            const NAMES: &'static [(&'static str, $Enum)] = &[$(($name, $Enum::$Variant)),*];
            pub(crate) fn as_str(self) -> &'static str {
                match self { $($Enum::$Variant => $name,)* }
            }
        }
    };
}

named! {
    /// `[log] format`.
    LogFormat { Text = "text", Json = "json", }
}

named! {
    /// How the gateway exposes sessions (SPEC section 3).
    GatewayMode {
        /// One WebSocket per tenant, its URL made from the `gateway.url` template.
        PerTenant = "per-tenant",
        /// One WebSocket carrying the events of every tenant; the tenant comes from each event.
        Shared = "shared",
    }
}

/// `[gateway]`: where the session events come from. `Debug` redacts credentials and URLs.
#[derive(Clone, PartialEq)]
pub(crate) struct GatewayConfig {
    pub(crate) mode: GatewayMode,
    /// `ws://` or `wss://` URL; in per-tenant mode a template where `{tenant}` is replaced by the
    /// percent-encoded tenant id. Use [`Config::gateway_url`] rather than reading this directly.
    pub(crate) url: String,
    /// Optional `http(s)://` template fetched (GET, JSON) after every (re)connect to learn the
    /// session's current state. Use [`Config::state_url`].
    pub(crate) state_url: Option<String>,
    /// Sent as `Authorization: Bearer <token>` when present (see [`GatewayConfig::request_headers`]).
    pub(crate) token: Option<Secret>,
    /// The env var the token was read from (`gateway.token_env`).
    pub(crate) token_env: Option<String>,
    /// The file the token was read from (`gateway.token_file`, resolved path).
    pub(crate) token_file: Option<PathBuf>,
    /// Extra request headers from `[gateway.headers]` and `[gateway.headers_env]`, validated once
    /// at load; every value is marked sensitive. The token is not among them.
    pub(crate) headers: Headers,
    /// A PEM file with the private CA(s) trusted for `wss://` and an `https://` state_url, on top
    /// of the system roots. Checked at load as the clients load it (`tls::ca_roots`).
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) ping_interval: Duration,
    /// No frame of any kind for this long means the link is dead (half-open). Exceeds `ping_interval`.
    pub(crate) idle_timeout: Duration,
    /// Largest accepted frame in bytes; a bigger one closes that link (1009) and it reconnects.
    pub(crate) max_frame_size: usize,
    /// Most WebSocket handshakes in progress at once, so thousands of links start spread out.
    pub(crate) handshake_concurrency: usize,
}

impl GatewayConfig {
    /// The headers of every gateway request (the WebSocket handshake and the `state_url` GET):
    /// `Authorization: Bearer <token>` when a token is configured, then [`GatewayConfig::headers`].
    pub(crate) fn request_headers(&self) -> HeaderMap {
        let mut headers = self.headers.map.clone();
        // The token was checked to be visible ASCII at load, so the value always builds.
        let bearer = (self.token.as_ref()).map(|token| format!("Bearer {}", token.expose()));
        if let Some(Ok(mut value)) = bearer.map(HeaderValue::try_from) {
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        headers
    }
}

/// Extra gateway request headers, names and values validated once at load, every value marked
/// sensitive (it may be a credential such as WAHA's `X-Api-Key`); requests get them through
/// [`GatewayConfig::request_headers`]. [`Headers::shown`] gives names only, and so does `Debug` (`HeaderValue` shows a sensitive
/// value as `Sensitive`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Headers {
    map: HeaderMap,
    /// Each header's name as written, and the env var its value came from, if it did.
    pub(crate) sources: Vec<(String, Option<String>)>,
}

/// `[backend]`: the webhook that receives transitions (SPEC section 2). `Debug` redacts.
#[derive(Clone, PartialEq)]
pub(crate) struct BackendConfig {
    /// Base URL (`http(s)://host[:port][/prefix]`), from env `BACKEND_INTERNAL_URL` or the file.
    pub(crate) url: Url,
    /// Path appended to `url`; starts with `/`.
    pub(crate) path: String,
    /// Sent as `X-INTERNAL-SECRET`.
    pub(crate) secret: Secret,
    /// Where `secret` was found, so `check` and the logs can say so without showing it.
    pub(crate) secret_source: SecretSource,
    /// Standard Webhooks signing secrets: every request carries one signature per secret (so a
    /// secret can be rotated). Empty: requests are not signed.
    pub(crate) signing_secrets: Vec<SigningSecret>,
    /// Where `signing_secrets` came from; `None` when there are none.
    pub(crate) signing_source: Option<SigningSource>,
    /// A PEM file with the private CA(s) trusted for an `https://` backend, on top of the
    /// system roots. Checked at load as the webhook client loads it (`tls::ca_roots`).
    pub(crate) ca_file: Option<PathBuf>,
    /// `backend.allow_plain_http`: an `http://` URL to a host that is not loopback was allowed
    /// explicitly (a warning says so). Otherwise such a URL is refused.
    pub(crate) allow_plain_http: bool,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// Global cap on webhook requests in flight.
    pub(crate) max_in_flight: usize,
}

impl BackendConfig {
    pub(crate) fn webhook_url(&self) -> String {
        format!("{}{}", self.url.as_str().trim_end_matches('/'), self.path)
    }
}

/// Where the backend's shared secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// Env var `INTERNAL_SHARED_SECRET`.
    Env,
    /// The file named by `backend.secret_file` (resolved path).
    File(PathBuf),
    /// The systemd credential `$CREDENTIALS_DIRECTORY/internal-secret` (resolved path).
    Credential(PathBuf),
}

/// Where the webhook signing secrets were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SigningSource {
    /// Env var `WEBHOOK_SIGNING_SECRET`.
    Env,
    /// The file named by `backend.signing_secret_file` (resolved path).
    File(PathBuf),
}

/// `[tenants]`: the businesses whose sessions are watched. `Debug` redacts the override URLs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TenantsConfig {
    /// `tenants.ids` then the ids of `tenants.file`, duplicates removed, first occurrence kept.
    pub ids: Vec<String>,
    /// The tenants file (resolved path), re-read on every reload.
    pub file: Option<PathBuf>,
    /// Per-tenant gateway URL overrides (per-tenant mode); every key is a configured tenant.
    pub urls: BTreeMap<String, String>,
}

/// `[state]`: where delivered and owed transitions are persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateConfig {
    pub(crate) dir: PathBuf,
}

/// `[admin]`: the HTTP endpoint for health, metrics and tenant status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AdminConfig {
    pub(crate) listen: SocketAddr,
}

/// Environment lookups are injected so tests do not touch the process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment. A variable that is not valid Unicode counts as unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed environment, e.g. for tests and the demo.
impl<S: std::hash::BuildHasher> Env for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A fixed environment written inline: `&[("INTERNAL_SHARED_SECRET", "s3cret")]`.
impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        let found = self.iter().find(|(key, _)| *key == name);
        found.map(|(_, value)| value.to_string())
    }
}

/// One thing wrong with the config, at a key path such as `gateway.url` or `tenants.ids[2]`.
/// The path is empty for a problem with the file as a whole (unreadable, not TOML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    /// What is wrong and how to fix it. Control characters are escaped, so an id or value
    /// echoed from the file cannot corrupt the terminal or the log.
    pub message: String,
}

impl Problem {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        let (path, message) = (path.into(), crate::logging::escaped(&message.into()));
        Problem { path, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.as_str() {
            "" => f.write_str(&self.message),
            path => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in one config, reported together.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {}", render(.problems))]
pub struct ConfigError {
    /// The config file's path (or `<inline config>` for [`Config::from_toml_str`]).
    pub source_name: String,
    pub problems: Vec<Problem>,
}

/// "2 problems:" and the problems, one a line.
fn render(problems: &[Problem]) -> String {
    let s = if problems.len() == 1 { "" } else { "s" };
    let list: String = problems.iter().map(|p| format!("\n  - {p}")).collect();
    format!("{} problem{s}:{list}", problems.len())
}

impl Config {
    /// Reads and validates the config file at `path`. Relative paths inside it resolve against
    /// the file's directory.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let base_dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
        let config = read_file(path).map_err(|err| {
            let fix = match err.kind() {
                std::io::ErrorKind::NotFound => {
                    "; pass an existing file with --config or WA_SIDECAR_CONFIG"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "; make it readable by the user the sidecar runs as"
                }
                _ => "",
            };
            vec![Problem::new(
                "",
                format!("cannot read the config file: {err}{fix}"),
            )]
        });
        let config =
            config.and_then(|text| check::parse(&text, base_dir.unwrap_or(Path::new(".")), env));
        config.map_err(|problems| ConfigError {
            source_name: path.display().to_string(),
            problems,
        })
    }

    /// Validates config text; relative paths inside it resolve against `dir`.
    pub fn from_toml_str(text: &str, dir: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let source_name = "<inline config>".to_string();
        check::parse(text, dir, env).map_err(|problems| ConfigError {
            source_name,
            problems,
        })
    }

    /// The WebSocket URL for `tenant`: its `[tenants.urls]` override, else the template with
    /// `{tenant}` replaced by the percent-encoded id. In shared mode: `gateway.url` as is.
    pub(crate) fn gateway_url(&self, tenant: &str) -> String {
        match (self.gateway.mode, self.tenants.urls.get(tenant)) {
            (GatewayMode::Shared, _) => self.gateway.url.clone(),
            (GatewayMode::PerTenant, Some(url)) => url.clone(),
            (GatewayMode::PerTenant, None) => fill_template(&self.gateway.url, tenant),
        }
    }

    /// The state URL for `tenant` (`{tenant}` replaced, percent-encoded), if one is configured.
    pub(crate) fn state_url(&self, tenant: &str) -> Option<String> {
        let template = self.gateway.state_url.as_deref();
        template.map(|template| fill_template(template, tenant))
    }

    /// The full webhook URL: `backend.url` without its trailing `/`, then `backend.path`.
    pub(crate) fn webhook_url(&self) -> String {
        self.backend.webhook_url()
    }
}

/// Replaces every `{tenant}` in `template` with the percent-encoded tenant id.
fn fill_template(template: &str, tenant: &str) -> String {
    let encoded = utf8_percent_encode(tenant, TENANT_ENCODE).to_string();
    template.replace(TENANT_PLACEHOLDER, &encoded)
}

/// Reads a whole regular text file of at most [`MAX_FILE_BYTES`], so that a FIFO, a device or a
/// huge log file is a problem rather than a hang or all the memory.
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let mut bytes = Vec::new();
    let file = crate::system::open_regular(path)?;
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::other(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    String::from_utf8(bytes)
        .map_err(|_| Error::new(ErrorKind::InvalidData, "stream did not contain valid UTF-8"))
}
