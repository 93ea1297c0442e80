//! The sidecar's configuration: the TOML file (SPEC section 5), its environment overrides, and
//! the validation that turns both into a typed [`Config`].
//!
//! Loading has two steps. The text is parsed into a plain `toml::Table`, then walked key by key
//! into [`Config`]. Walking the table by hand, instead of serde with `deny_unknown_fields` (which
//! stops at the first error), lets one run collect every problem (unknown keys, wrong types, bad
//! values, missing keys), each with its key path, so an operator fixes them all in one go
//! (`wa-status-sidecar check`).
//!
//! Environment, read through [`Env`] so tests never touch the process environment:
//! - `BACKEND_INTERNAL_URL` overrides `backend.url`.
//! - The backend's shared secret comes from `INTERNAL_SHARED_SECRET`, else the file named by
//!   `backend.secret_file`, else `$CREDENTIALS_DIRECTORY/internal-secret` (systemd
//!   `LoadCredential=`). It is never written in the config file itself.
//! - `STATE_DIRECTORY` (systemd `StateDirectory=`) is the default of `state.dir`.
//! - `gateway.token_env` names the variable that holds the gateway token.
//!
//! An empty (or all-blank) variable counts as unset: container tooling often sets `VAR=` for
//! "not given". Relative paths in the file (`tenants.file`, `backend.secret_file`, `state.dir`)
//! resolve against the directory of the config file, so a config behaves the same whatever the
//! working directory of the process.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};
use url::Url;

use crate::debounce::Policy;

/// Env var that overrides `backend.url`: one config file can then serve several deployments.
pub const ENV_BACKEND_URL: &str = "BACKEND_INTERNAL_URL";
/// Env var holding the backend's shared secret (first of the three places a secret may come from).
pub const ENV_SHARED_SECRET: &str = "INTERNAL_SHARED_SECRET";
/// Set by systemd for a unit with `LoadCredential=`; the secret is then the file [`CREDENTIAL_NAME`] in it.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// Name of the systemd credential holding the shared secret (`LoadCredential=internal-secret:/path`).
pub const CREDENTIAL_NAME: &str = "internal-secret";
/// Set by systemd for a unit with `StateDirectory=`; the default of `state.dir` when present.
pub const ENV_STATE_DIRECTORY: &str = "STATE_DIRECTORY";

/// One link per session is how Baileys gateways are usually built.
pub const DEFAULT_GATEWAY_MODE: GatewayMode = GatewayMode::PerTenant;
/// Well under the 60 s idle cut-off of common proxies and load balancers in front of a gateway.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Two pings plus slack: tolerates one lost pong, still catches a half-open link within a minute.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// 1 MiB: status frames are a few KiB; anything bigger is a bug or an attack, not a status.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 20;
/// Smallest frame limit accepted: a Baileys close frame with its Boom error is already ~0.5 KiB.
pub const MIN_MAX_FRAME_SIZE: usize = 1024;
/// Brings 10,000 links up within seconds without a thundering herd of TLS handshakes on the gateway.
pub const DEFAULT_HANDSHAKE_CONCURRENCY: usize = 64;
/// The backend's existing route (SPEC section 2).
pub const DEFAULT_BACKEND_PATH: &str = "/api/internal/whatsapp/status-webhook";
/// SPEC section 2: a webhook call slower than this counts as failed and is retried.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// SPEC section 2: a backend that cannot accept a connection within 5 s is down; retry later.
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// SPEC section 2: bounds the load a recovering fleet puts on the backend.
pub const DEFAULT_BACKEND_MAX_IN_FLIGHT: usize = 16;
/// The FHS place for a daemon's state, used when systemd provides no `STATE_DIRECTORY`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/wa-status-sidecar";
/// Loopback only, since the admin API lists tenant ids; 9464 is in the range of Prometheus exporters.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));
/// Text reads best on a terminal and in journald; JSON is opt-in for log shippers.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// Longest tenant id accepted: real ids are short, and the bound keeps log lines and state small.
pub const MAX_TENANT_ID_LEN: usize = 128;
/// How many tenant ids [`Config::summary`] lists before it only counts them.
const SUMMARY_TENANTS_SHOWN: usize = 10;

/// The validated configuration. Built only by [`Config::load`] / [`Config::from_toml_str`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub backend: BackendConfig,
    pub debounce: Policy,
    pub tenants: TenantsConfig,
    pub state: StateConfig,
    pub admin: AdminConfig,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// How the gateway exposes sessions (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayMode {
    /// One WebSocket per tenant, its URL made from the `gateway.url` template.
    PerTenant,
    /// One WebSocket carrying the events of every tenant; the tenant comes from each event.
    Shared,
}

impl GatewayMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayMode::PerTenant => "per-tenant",
            GatewayMode::Shared => "shared",
        }
    }
}

/// `[gateway]`: where the session events come from.
#[derive(Clone, PartialEq)]
pub struct GatewayConfig {
    pub mode: GatewayMode,
    /// `ws://` or `wss://` URL; in per-tenant mode a template where `{tenant}` is replaced by the
    /// percent-encoded tenant id. Use [`Config::gateway_url`] rather than reading this directly.
    pub url: String,
    /// Optional `http(s)://` template fetched (GET, JSON) after every (re)connect to learn the
    /// session's current state. Use [`Config::state_url`].
    pub state_url: Option<String>,
    /// Sent as `Authorization: Bearer <token>` when present.
    pub token: Option<Secret>,
    /// The env var the token was read from (`gateway.token_env`); `None` when the token was
    /// written in the file (`gateway.token`) or there is no token.
    pub token_env: Option<String>,
    /// Extra handshake headers, names validated as HTTP header names. Values may be credentials
    /// (e.g. WAHA's `X-Api-Key`), so `Debug` and [`Config::summary`] never show them.
    pub headers: Vec<(String, String)>,
    pub ping_interval: Duration,
    /// No frame of any kind for this long means the link is dead (half-open). Exceeds `ping_interval`.
    pub idle_timeout: Duration,
    /// Largest accepted frame in bytes; a bigger one closes that link (1009) and it reconnects.
    pub max_frame_size: usize,
    /// Most WebSocket handshakes in progress at once, so thousands of links start spread out.
    pub handshake_concurrency: usize,
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, _)| (name.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("GatewayConfig")
            .field("mode", &self.mode)
            .field("url", &self.url)
            .field("state_url", &self.state_url)
            .field("token", &self.token)
            .field("token_env", &self.token_env)
            .field("headers", &headers)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_frame_size", &self.max_frame_size)
            .field("handshake_concurrency", &self.handshake_concurrency)
            .finish()
    }
}

/// `[backend]`: the webhook that receives transitions (SPEC section 2).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Base URL (`http(s)://host[:port][/prefix]`), from env `BACKEND_INTERNAL_URL` or the file.
    pub url: Url,
    /// Path appended to `url`; starts with `/`.
    pub path: String,
    /// Sent as `X-INTERNAL-SECRET`.
    pub secret: Secret,
    /// Where `secret` was found, so `check` and the logs can say so without showing it.
    pub secret_source: SecretSource,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Global cap on webhook requests in flight.
    pub max_in_flight: usize,
}

/// Where the backend's shared secret was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Env var `INTERNAL_SHARED_SECRET`.
    Env,
    /// The file named by `backend.secret_file` (resolved path).
    File(PathBuf),
    /// The systemd credential `$CREDENTIALS_DIRECTORY/internal-secret` (resolved path).
    Credential(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env => f.write_str(ENV_SHARED_SECRET),
            SecretSource::File(path) => write!(f, "backend.secret_file {}", path.display()),
            SecretSource::Credential(path) => {
                write!(f, "systemd credential {}", path.display())
            }
        }
    }
}

/// `[tenants]`: the businesses whose sessions are watched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
pub struct StateConfig {
    pub dir: PathBuf,
}

/// `[admin]`: the HTTP endpoint for health, metrics and tenant status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// A secret string (the backend's shared secret, a gateway token). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
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
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_string())
    }
}

/// One thing wrong with the config, at a key path such as `gateway.url` or `tenants.ids[2]`.
/// The path is empty for a problem with the file as a whole (unreadable, not TOML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config, reported together.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_error(.source_name, .problems))]
pub struct ConfigError {
    /// The config file's path (or `<inline config>` for [`Config::from_toml_str`]).
    pub source_name: String,
    pub problems: Vec<Problem>,
}

fn render_error(source_name: &str, problems: &[Problem]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let mut out = format!("{source_name}: {} {noun}:", problems.len());
    for problem in problems {
        out.push_str("\n  - ");
        out.push_str(&problem.to_string());
    }
    out
}

impl Config {
    /// Reads and validates the config file at `path`. Relative paths inside it resolve against
    /// the file's directory.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            source_name: source_name.clone(),
            problems: vec![Problem {
                path: String::new(),
                message: format!(
                    "cannot read the config file: {err}; pass an existing file with --config or WA_SIDECAR_CONFIG"
                ),
            }],
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        parse(&text, &source_name, base_dir, env)
    }

    /// Validates config text; relative paths inside it resolve against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        parse(text, "<inline config>", base_dir, env)
    }

    /// The WebSocket URL for `tenant`: its `[tenants.urls]` override, else the template with
    /// `{tenant}` replaced by the percent-encoded id. In shared mode: `gateway.url` as is.
    pub fn gateway_url(&self, tenant: &str) -> String {
        match self.gateway.mode {
            GatewayMode::Shared => self.gateway.url.clone(),
            GatewayMode::PerTenant => match self.tenants.urls.get(tenant) {
                Some(url) => url.clone(),
                None => fill_template(&self.gateway.url, tenant),
            },
        }
    }

    /// The state URL for `tenant` (`{tenant}` replaced, percent-encoded), if one is configured.
    pub fn state_url(&self, tenant: &str) -> Option<String> {
        self.gateway
            .state_url
            .as_deref()
            .map(|template| fill_template(template, tenant))
    }

    /// The full webhook URL: `backend.url` without its trailing `/`, then `backend.path`.
    pub fn webhook_url(&self) -> String {
        format!(
            "{}{}",
            self.backend.url.as_str().trim_end_matches('/'),
            self.backend.path
        )
    }

    /// A multi-line human summary of every setting, for `check`. Secrets, the gateway token and
    /// header values are shown only as `<redacted>` with where they came from.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Section headers flush left, settings indented under them.
        let mut line = |key: &str, value: &dyn fmt::Display| {
            if key.starts_with('[') {
                out.push_str(&format!("{key}\n"));
            } else {
                out.push_str(&format!("  {key:<23} {value}\n"));
            }
        };
        let g = &self.gateway;
        let (b, d) = (&self.backend, &self.debounce);

        line("[gateway]", &"");
        line("mode", &g.mode.as_str());
        line("url", &redact_userinfo(&g.url));
        if let Some(first) = self.tenants.ids.first() {
            let example = format!(
                "{} (for {first})",
                redact_userinfo(&self.gateway_url(first))
            );
            line("url example", &example);
        }
        line(
            "state_url",
            &opt(g.state_url.as_deref().map(redact_userinfo)),
        );
        let token = match (&g.token, &g.token_env) {
            (None, _) => "(none)".to_string(),
            (Some(_), Some(var)) => format!("<redacted> (from env {var})"),
            (Some(_), None) => "<redacted> (from gateway.token)".to_string(),
        };
        line("token", &token);
        let headers = if g.headers.is_empty() {
            "(none)".to_string()
        } else {
            let names: Vec<String> = g
                .headers
                .iter()
                .map(|(name, _)| format!("{name}: <redacted>"))
                .collect();
            names.join(", ")
        };
        line("headers", &headers);
        line(
            "ping_interval",
            &humantime::format_duration(g.ping_interval),
        );
        line("idle_timeout", &humantime::format_duration(g.idle_timeout));
        line("max_frame_size", &format!("{} bytes", g.max_frame_size));
        line("handshake_concurrency", &g.handshake_concurrency);

        line("[backend]", &"");
        line("url", &redact_userinfo(b.url.as_str()));
        line("path", &b.path);
        line("webhook", &redact_userinfo(&self.webhook_url()));
        line("secret", &format!("<redacted> (from {})", b.secret_source));
        line("timeout", &humantime::format_duration(b.timeout));
        line(
            "connect_timeout",
            &humantime::format_duration(b.connect_timeout),
        );
        line("max_in_flight", &b.max_in_flight);

        line("[debounce]", &"");
        line(
            "disconnect_grace",
            &humantime::format_duration(d.disconnect_grace),
        );
        line(
            "connect_grace",
            &humantime::format_duration(d.connect_grace),
        );
        let codes: Vec<String> = d.terminal_codes.iter().map(u16::to_string).collect();
        line("terminal_codes", &format!("[{}]", codes.join(", ")));
        let down_grace = match d.gateway_down_grace {
            Some(grace) => humantime::format_duration(grace).to_string(),
            None => "never (0s)".to_string(),
        };
        line("gateway_down_grace", &down_grace);
        line(
            "flap_half_life",
            &humantime::format_duration(d.flap_half_life),
        );
        line("flap_suppress", &d.flap_suppress);
        line("flap_reuse", &d.flap_reuse);
        line(
            "flap_max_suppress",
            &humantime::format_duration(d.flap_max_suppress),
        );

        let t = &self.tenants;
        line("[tenants]", &"");
        let shown: Vec<&str> = t
            .ids
            .iter()
            .take(SUMMARY_TENANTS_SHOWN)
            .map(String::as_str)
            .collect();
        let more = t.ids.len().saturating_sub(SUMMARY_TENANTS_SHOWN);
        let ids = match (shown.is_empty(), more) {
            (true, _) => "(none)".to_string(),
            (false, 0) => shown.join(", "),
            (false, more) => format!("{}, ... ({more} more)", shown.join(", ")),
        };
        line("count", &t.ids.len());
        line("ids", &ids);
        line(
            "file",
            &opt(t.file.as_ref().map(|p| p.display().to_string())),
        );
        let urls = if t.urls.is_empty() {
            "(none)".to_string()
        } else {
            let keys: Vec<&str> = t.urls.keys().map(String::as_str).collect();
            format!("{} override(s): {}", t.urls.len(), keys.join(", "))
        };
        line("urls", &urls);

        line("[state]", &"");
        line("dir", &self.state.dir.display());
        line("[admin]", &"");
        line("listen", &self.admin.listen);
        line("[log]", &"");
        line("format", &self.log.format.as_str());

        if !self.warnings.is_empty() {
            out.push_str("warnings:\n");
            for warning in &self.warnings {
                out.push_str(&format!("  - {warning}\n"));
            }
        }
        out
    }
}

/// Checks a tenant id: non-empty, at most [`MAX_TENANT_ID_LEN`] bytes, no whitespace or control
/// characters. The error says what is wrong.
pub fn validate_tenant_id(id: &str) -> Result<(), String> {
    const RULE: &str =
        "a tenant id is non-empty, at most 128 bytes, with no whitespace or control characters";
    if id.is_empty() {
        return Err(format!("empty tenant id; {RULE}"));
    }
    if id.len() > MAX_TENANT_ID_LEN {
        return Err(format!(
            "tenant id `{}...` is {} bytes long; {RULE}",
            id.chars().take(16).collect::<String>(),
            id.len()
        ));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "tenant id {id:?} contains whitespace or a control character; {RULE}"
        ));
    }
    Ok(())
}

/// Replaces every `{tenant}` in `template` with the percent-encoded tenant id.
fn fill_template(template: &str, tenant: &str) -> String {
    template.replace(TENANT_PLACEHOLDER, &percent_encode(tenant))
}

const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Percent-encodes everything but RFC 3986 unreserved characters, so the result is safe in a
/// path segment, a query value or a host label alike (unlike form encoding, which writes `+`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Hides the password of `scheme://user:password@host/...` for display.
fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let password = if userinfo.contains(':') {
                ":<redacted>"
            } else {
                ""
            };
            format!("{}{user}{password}{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_string(),
    }
}

fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "(none)".to_string())
}

// ---------------------------------------------------------------------------------------------
// Walking the table.

/// The sections of the file, in the order problems are reported.
const SECTIONS: [&str; 7] = [
    "gateway", "backend", "debounce", "tenants", "state", "admin", "log",
];

/// A problem was already recorded for this key; the caller just skips the value.
struct Invalid;

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// One `[section]` being walked: hands out its keys and remembers which ones it was asked for,
/// so the rest can be reported as unknown.
struct Section<'a> {
    name: &'static str,
    table: Option<&'a Table>,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(root: &'a Table, name: &'static str, p: &mut Problems) -> Self {
        let table = match root.get(name) {
            None => None,
            Some(Value::Table(table)) => Some(table),
            Some(other) => {
                p.push(
                    name,
                    format!(
                        "expected a table (a `[{name}]` section), found {}",
                        describe(other)
                    ),
                );
                None
            }
        };
        Section {
            name,
            table,
            known: Vec::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        key_path(self.name, key)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.table?.get(key)
    }

    /// The value at `key` if `pick` accepts its type; a problem saying what was `expected`
    /// otherwise. `found` describes the wrong value (secrets must not echo it).
    fn typed<T>(
        &mut self,
        key: &'static str,
        p: &mut Problems,
        pick: impl FnOnce(&'a Value) -> Option<T>,
        expected: impl FnOnce(&str) -> String,
        found: impl FnOnce(&Value) -> String,
    ) -> Result<Option<T>, Invalid> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match pick(value) {
            Some(v) => Ok(Some(v)),
            None => {
                p.push(
                    self.path(key),
                    format!("expected {}, found {}", expected(self.name), found(value)),
                );
                Err(Invalid)
            }
        }
    }

    fn string(&mut self, key: &'static str, p: &mut Problems) -> Result<Option<&'a str>, Invalid> {
        self.typed(key, p, Value::as_str, |_| "a string".into(), describe)
    }

    /// Like [`Section::string`], but a wrong-type message does not echo the value.
    fn secret_string(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Result<Option<&'a str>, Invalid> {
        self.typed(
            key,
            p,
            Value::as_str,
            |_| "a string".into(),
            |v| article(v.type_str()),
        )
    }

    fn table(&mut self, key: &'static str, p: &mut Problems) -> Result<Option<&'a Table>, Invalid> {
        self.typed(
            key,
            p,
            Value::as_table,
            |section| format!("a table (`[{section}.{key}]` with one `name = \"value\"` a line)"),
            describe,
        )
    }

    fn array(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Result<Option<&'a [Value]>, Invalid> {
        self.typed(
            key,
            p,
            |v| v.as_array().map(Vec::as_slice),
            |_| "an array".into(),
            describe,
        )
    }

    /// A humane duration; `default` when absent; `None` (problem recorded) when invalid or
    /// when zero and `allow_zero` is false.
    fn duration(
        &mut self,
        key: &'static str,
        default: Duration,
        allow_zero: bool,
        p: &mut Problems,
    ) -> Option<Duration> {
        let path = self.path(key);
        let value = match self.get(key) {
            None => return Some(default),
            Some(Value::String(s)) => match humantime::parse_duration(s.trim()) {
                Ok(value) => value,
                Err(err) => {
                    p.push(
                        path,
                        format!(
                            "`{s}` is not a duration ({err}); write e.g. \"60s\", \"5m\", \"1h 30m\" or \"500ms\""
                        ),
                    );
                    return None;
                }
            },
            Some(Value::Integer(n)) => {
                p.push(
                    path,
                    format!("a bare number has no unit; write a duration string, e.g. \"{n}s\" or \"60s\""),
                );
                return None;
            }
            Some(other) => {
                p.push(
                    path,
                    format!(
                        "expected a duration string such as \"60s\" or \"5m\", found {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        if value.is_zero() && !allow_zero {
            p.push(path, "must be longer than 0s");
            return None;
        }
        Some(value)
    }

    /// A whole number >= `min`; `default` when absent.
    fn count(
        &mut self,
        key: &'static str,
        default: usize,
        min: usize,
        p: &mut Problems,
    ) -> Option<usize> {
        let path = self.path(key);
        match self.get(key) {
            None => Some(default),
            Some(Value::Integer(n)) => match usize::try_from(*n) {
                Ok(n) if n >= min => Some(n),
                _ => {
                    p.push(
                        path,
                        format!("{n} is too small; the minimum is {min} (default {default})"),
                    );
                    None
                }
            },
            Some(other) => {
                p.push(
                    path,
                    format!(
                        "expected a whole number (e.g. {default}), found {}",
                        describe(other)
                    ),
                );
                None
            }
        }
    }

    /// A finite number > 0 (integer or float); `default` when absent.
    fn positive_number(
        &mut self,
        key: &'static str,
        default: f64,
        p: &mut Problems,
    ) -> Option<f64> {
        let path = self.path(key);
        let value = match self.get(key) {
            None => return Some(default),
            Some(Value::Integer(n)) => *n as f64,
            Some(Value::Float(x)) => *x,
            Some(other) => {
                p.push(
                    path,
                    format!(
                        "expected a number (e.g. {default}), found {}",
                        describe(other)
                    ),
                );
                return None;
            }
        };
        if value.is_finite() && value > 0.0 {
            Some(value)
        } else {
            p.push(
                path,
                format!("{value} is not allowed; it must be a number above 0 (default {default})"),
            );
            None
        }
    }
}

/// `prefix.key`, with the key quoted as TOML would need it when it is not a bare key.
fn key_path(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        format!("{prefix}.{key}")
    } else {
        format!("{prefix}.{key:?}")
    }
}

fn article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        other => format!("a {other}"),
    }
}

/// "an integer (60)", "a string (\"x\")", "a table": names the type and shows short scalars.
fn describe(value: &Value) -> String {
    let kind = article(value.type_str());
    match value {
        Value::Integer(n) => format!("{kind} ({n})"),
        Value::Float(x) => format!("{kind} ({x})"),
        Value::Boolean(b) => format!("{kind} ({b})"),
        Value::String(s) if s.chars().count() <= 40 => format!("{kind} ({s:?})"),
        _ => kind,
    }
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a plausible typo.
fn closest<'k>(name: &str, candidates: &[&'k str]) -> Option<&'k str> {
    let name = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|candidate| (edit_distance(&name, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(name.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Reports the keys of every walked section that no one asked for, plus unknown top-level keys.
fn report_unknown_keys(root: &Table, sections: &[Section<'_>], p: &mut Problems) {
    // Where else a key is valid, for "`secret_file` belongs in [backend]" hints.
    let elsewhere = |key: &str, except: &str| -> Vec<String> {
        sections
            .iter()
            .filter(|s| s.name != except && s.known.contains(&key))
            .map(|s| format!("`{}.{key}`", s.name))
            .collect()
    };
    for section in sections {
        let Some(table) = section.table else { continue };
        for key in table.keys() {
            if section.known.contains(&key.as_str()) {
                continue;
            }
            let path = section.path(key);
            if section.name == "backend" && key.to_ascii_lowercase().contains("secret") {
                p.push(path, format!("unknown key; {}", missing_secret_help()));
                continue;
            }
            let message = if let Some(hint) = closest(key, &section.known) {
                format!("unknown key; did you mean `{hint}`?")
            } else if section.name == "log" && key == "level" {
                "unknown key; the log level comes from env RUST_LOG (e.g. RUST_LOG=debug), default info"
                    .to_string()
            } else {
                let other = elsewhere(key, section.name);
                if other.is_empty() {
                    format!(
                        "unknown key; [{}] takes: {}",
                        section.name,
                        section.known.join(", ")
                    )
                } else {
                    format!(
                        "unknown key in [{}]; did you mean {}?",
                        section.name,
                        other.join(" or ")
                    )
                }
            };
            p.push(path, message);
        }
    }
    for key in root.keys() {
        if SECTIONS.contains(&key.as_str()) {
            continue;
        }
        let message = if let Some(hint) = closest(key, &SECTIONS) {
            format!("unknown section; did you mean `[{hint}]`?")
        } else {
            let other = elsewhere(key, "");
            if other.is_empty() {
                let kind = if root[key].is_table() {
                    "section"
                } else {
                    "top-level key"
                };
                format!("unknown {kind}; the sections are: {}", SECTIONS.join(", "))
            } else {
                format!(
                    "unknown top-level key; did you mean {} (under its section)?",
                    other.join(" or ")
                )
            }
        };
        p.push(
            key_path("", key).trim_start_matches('.').to_string(),
            message,
        );
    }
}

fn missing_secret_help() -> String {
    format!(
        "the shared secret is never written in the config file; give it as env {ENV_SHARED_SECRET}, \
         or in a file named by backend.secret_file, or as the systemd credential `{CREDENTIAL_NAME}` \
         (LoadCredential={CREDENTIAL_NAME}:/path, read from ${ENV_CREDENTIALS_DIRECTORY}/{CREDENTIAL_NAME})"
    )
}

/// Reads an env var, treating an empty or all-blank value as unset.
fn env_var(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

fn syntax_problem(text: &str, err: &toml::de::Error) -> Problem {
    let message = err.message().trim_end();
    let message = match err.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("invalid TOML at line {line}, column {column}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    };
    Problem {
        path: String::new(),
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// The sections.

fn parse(
    text: &str,
    source_name: &str,
    base_dir: &Path,
    env: &dyn Env,
) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        source_name: source_name.to_string(),
        problems,
    };
    let root: Table = text
        .parse()
        .map_err(|err| fail(vec![syntax_problem(text, &err)]))?;
    let mut p = Problems::default();
    let mut warnings = Vec::new();

    // Tenants first: the gateway URL checks depend on them.
    let (tenants_section, tenants) = walk_tenants(&root, base_dir, &mut p, &mut warnings);
    let (gateway_section, gateway) = walk_gateway(&root, env, &tenants, &mut p);
    let (backend_section, backend) = walk_backend(&root, base_dir, env, &mut p, &mut warnings);
    let (debounce_section, debounce) = walk_debounce(&root, &mut p);

    let mut state = Section::new(&root, "state", &mut p);
    let state_dir = match state.string("dir", &mut p) {
        Ok(Some(dir)) if dir.trim().is_empty() => {
            p.push(
                state.path("dir"),
                "must not be empty; remove the key to use the default",
            );
            None
        }
        Ok(Some(dir)) => Some(resolve(base_dir, dir)),
        Ok(None) => Some(match env_var(env, ENV_STATE_DIRECTORY) {
            // systemd joins several StateDirectory= entries with ':'; ours is the first.
            Some(dirs) => PathBuf::from(dirs.split(':').next().unwrap_or(&dirs)),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        }),
        Err(Invalid) => None,
    };

    let mut admin = Section::new(&root, "admin", &mut p);
    let listen = match admin.string("listen", &mut p) {
        Ok(Some(text)) => match text.trim().parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    warnings.push(format!(
                        "admin.listen {addr} is not a loopback address: the admin API (tenant ids, metrics) is reachable from the network"
                    ));
                }
                Some(addr)
            }
            Err(_) => {
                p.push(
                    admin.path("listen"),
                    format!("`{text}` is not a socket address; write an IP and a port, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\""),
                );
                None
            }
        },
        Ok(None) => Some(DEFAULT_ADMIN_LISTEN),
        Err(Invalid) => None,
    };

    let mut log = Section::new(&root, "log", &mut p);
    let format = match log.string("format", &mut p) {
        Ok(None) => Some(DEFAULT_LOG_FORMAT),
        Ok(Some("text")) => Some(LogFormat::Text),
        Ok(Some("json")) => Some(LogFormat::Json),
        Ok(Some(other)) => {
            p.push(
                log.path("format"),
                format!("`{other}` is not a log format; write \"text\" or \"json\""),
            );
            None
        }
        Err(Invalid) => None,
    };

    let sections = [
        gateway_section,
        backend_section,
        debounce_section,
        tenants_section,
        state,
        admin,
        log,
    ];
    report_unknown_keys(&root, &sections, &mut p);

    let mut problems = p.0;
    if !problems.is_empty() {
        // Group by section in file order; a stable sort keeps the walk order within each.
        problems.sort_by_key(|problem| {
            let head = match problem.path.as_str() {
                path if path.starts_with("env ") => "backend", // env BACKEND_INTERNAL_URL
                path => path.split(['.', '[']).next().unwrap_or(""),
            };
            SECTIONS
                .iter()
                .position(|s| *s == head)
                .unwrap_or(SECTIONS.len())
        });
        return Err(fail(problems));
    }
    match (gateway, backend, debounce, state_dir, listen, format) {
        (Some(gateway), Some(backend), Some(debounce), Some(dir), Some(listen), Some(format)) => {
            Ok(Config {
                gateway,
                backend,
                debounce,
                tenants,
                state: StateConfig { dir },
                admin: AdminConfig { listen },
                log: LogConfig { format },
                warnings,
            })
        }
        // Every `None` above comes with a problem, so this is unreachable; stay total anyway.
        _ => Err(fail(vec![Problem {
            path: String::new(),
            message: "invalid configuration".to_string(),
        }])),
    }
}

fn walk_tenants<'a>(
    root: &'a Table,
    base_dir: &Path,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Section<'a>, TenantsConfig) {
    let mut sec = Section::new(root, "tenants", p);
    let mut ids: Vec<String> = Vec::new();
    let add = |id: &str, ids: &mut Vec<String>| {
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_string());
        }
    };

    if let Ok(Some(items)) = sec.array("ids", p) {
        for (i, item) in items.iter().enumerate() {
            let path = format!("tenants.ids[{i}]");
            match item {
                Value::String(id) => match validate_tenant_id(id) {
                    Ok(()) => add(id, &mut ids),
                    Err(message) => p.push(path, message),
                },
                other => p.push(
                    path,
                    format!("expected a tenant id string, found {}", describe(other)),
                ),
            }
        }
    }

    let mut file = None;
    if let Ok(Some(name)) = sec.string("file", p) {
        let path = resolve(base_dir, name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    // An id has no whitespace, so anything after the first blank must be a comment.
                    let (id, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                    let rest = rest.trim_start();
                    let checked = if rest.is_empty() || rest.starts_with('#') {
                        validate_tenant_id(id)
                    } else {
                        validate_tenant_id(line)
                    };
                    match checked {
                        Ok(()) => add(id, &mut ids),
                        Err(message) => p.push(
                            "tenants.file",
                            format!("{} line {}: {message}", path.display(), n + 1),
                        ),
                    }
                }
            }
            Err(err) => p.push(
                "tenants.file",
                format!(
                    "cannot read {}: {err}; create it (one tenant id a line; it may be empty) or remove the key",
                    path.display()
                ),
            ),
        }
        file = Some(path);
    }

    let mut urls = BTreeMap::new();
    if let Ok(Some(table)) = sec.table("urls", p) {
        for (tenant, value) in table {
            let path = key_path("tenants.urls", tenant);
            let Value::String(url) = value else {
                p.push(
                    path,
                    format!(
                        "expected a ws:// or wss:// URL string, found {}",
                        describe(value)
                    ),
                );
                continue;
            };
            if !ids.iter().any(|id| id == tenant) {
                p.push(
                    path,
                    format!(
                        "`{tenant}` is not a configured tenant; add it to tenants.ids or tenants.file, or remove this override"
                    ),
                );
                continue;
            }
            if url.contains(['{', '}']) {
                p.push(
                    path,
                    "an override is a complete URL: `{tenant}` and other placeholders are not replaced here",
                );
                continue;
            }
            if let Err(message) = check_url(url, &["ws", "wss"]) {
                p.push(path, message);
                continue;
            }
            urls.insert(tenant.clone(), url.clone());
        }
    }

    if ids.is_empty() {
        warnings.push(
            "no tenants configured: nothing is watched until tenants.ids or tenants.file lists some (re-read on SIGHUP)"
                .to_string(),
        );
    }
    (sec, TenantsConfig { ids, file, urls })
}

/// Parses `url` and checks its scheme is one of `schemes` and it has a host.
fn check_url(url: &str, schemes: &[&str]) -> Result<Url, String> {
    let wanted = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let parsed = Url::parse(url.trim()).map_err(|err| {
        format!(
            "`{url}` is not a valid URL ({err}); write e.g. \"{}host:port/...\"",
            wanted.split(' ').next().unwrap_or("")
        )
    })?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(format!(
            "`{url}` has scheme `{}`; it must start with {wanted}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(parsed)
}

/// Checks a URL template: `{tenant}` is the only placeholder and the URL parses with it filled in.
fn check_template(template: &str, schemes: &[&str]) -> Result<(), String> {
    let without = template.replace(TENANT_PLACEHOLDER, "");
    if without.contains(['{', '}']) {
        return Err(format!(
            "`{template}` has an unknown placeholder; the only one is `{{tenant}}`"
        ));
    }
    check_url(&template.replace(TENANT_PLACEHOLDER, "tenant"), schemes).map(|_| ())
}

/// Header names the WebSocket handshake sets itself; overriding them would break it.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

fn walk_gateway<'a>(
    root: &'a Table,
    env: &dyn Env,
    tenants: &TenantsConfig,
    p: &mut Problems,
) -> (Section<'a>, Option<GatewayConfig>) {
    let mut sec = Section::new(root, "gateway", p);

    let mode = match sec.string("mode", p) {
        Ok(None) => Some(DEFAULT_GATEWAY_MODE),
        Ok(Some("per-tenant")) => Some(GatewayMode::PerTenant),
        Ok(Some("shared")) => Some(GatewayMode::Shared),
        Ok(Some(other)) => {
            p.push(
                sec.path("mode"),
                format!("`{other}` is not a mode; write \"per-tenant\" or \"shared\""),
            );
            None
        }
        Err(Invalid) => None,
    };
    if mode == Some(GatewayMode::Shared) && !tenants.urls.is_empty() {
        p.push(
            "tenants.urls",
            "per-tenant URL overrides only apply with gateway.mode = \"per-tenant\"; remove [tenants.urls] or change the mode",
        );
    }

    let url = match sec.string("url", p) {
        Ok(Some(url)) => match check_gateway_url(url.trim(), mode, tenants) {
            Ok(()) => Some(url.trim().to_string()),
            Err(message) => {
                p.push(sec.path("url"), message);
                None
            }
        },
        Ok(None) => {
            p.push(
                sec.path("url"),
                "missing; set the gateway's WebSocket URL, e.g. url = \"ws://127.0.0.1:3001/ws/{tenant}\"",
            );
            None
        }
        Err(Invalid) => None,
    };

    let state_url = match sec.string("state_url", p) {
        Ok(Some(template)) => match check_template(template.trim(), &["http", "https"]) {
            Ok(()) => Some(Some(template.trim().to_string())),
            Err(message) => {
                p.push(sec.path("state_url"), message);
                None
            }
        },
        Ok(None) => Some(None),
        Err(Invalid) => None,
    };

    let token = gateway_token(&mut sec, env, p);
    let has_token = matches!(token, Some((Some(_), _)));

    let headers = match sec.table("headers", p) {
        Ok(Some(table)) => gateway_headers(table, has_token, p),
        Ok(None) => Some(Vec::new()),
        Err(Invalid) => None,
    };

    let ping_interval = sec.duration("ping_interval", DEFAULT_PING_INTERVAL, false, p);
    let idle_timeout = sec.duration("idle_timeout", DEFAULT_IDLE_TIMEOUT, false, p);
    if let (Some(ping), Some(idle)) = (ping_interval, idle_timeout) {
        if idle <= ping {
            p.push(
                sec.path("idle_timeout"),
                format!(
                    "{} must be longer than ping_interval ({}), or a healthy link would be dropped between pings; e.g. idle_timeout = \"{}\"",
                    humantime::format_duration(idle),
                    humantime::format_duration(ping),
                    humantime::format_duration(ping * 2 + ping / 4),
                ),
            );
        }
    }
    let max_frame_size = sec.count(
        "max_frame_size",
        DEFAULT_MAX_FRAME_SIZE,
        MIN_MAX_FRAME_SIZE,
        p,
    );
    let handshake_concurrency =
        sec.count("handshake_concurrency", DEFAULT_HANDSHAKE_CONCURRENCY, 1, p);

    let config = match (
        mode,
        url,
        state_url,
        token,
        headers,
        ping_interval,
        idle_timeout,
        max_frame_size,
        handshake_concurrency,
    ) {
        (
            Some(mode),
            Some(url),
            Some(state_url),
            Some((token, token_env)),
            Some(headers),
            Some(ping_interval),
            Some(idle_timeout),
            Some(max_frame_size),
            Some(handshake_concurrency),
        ) if idle_timeout > ping_interval => Some(GatewayConfig {
            mode,
            url,
            state_url,
            token,
            token_env,
            headers,
            ping_interval,
            idle_timeout,
            max_frame_size,
            handshake_concurrency,
        }),
        _ => None,
    };
    (sec, config)
}

/// Checks the gateway URL template against the mode and the tenants' overrides.
fn check_gateway_url(
    url: &str,
    mode: Option<GatewayMode>,
    tenants: &TenantsConfig,
) -> Result<(), String> {
    check_template(url, &["ws", "wss"])?;
    let has_placeholder = url.contains(TENANT_PLACEHOLDER);
    match mode {
        Some(GatewayMode::Shared) if has_placeholder => Err(
            "shared mode uses one link for every tenant, so the URL must not contain `{tenant}`; remove it or set mode = \"per-tenant\"".to_string(),
        ),
        Some(GatewayMode::PerTenant) if !has_placeholder => {
            let lacking: Vec<&str> = tenants
                .ids
                .iter()
                .filter(|id| !tenants.urls.contains_key(*id))
                .map(String::as_str)
                .collect();
            // With no tenants at all, "every tenant has an override" holds only vacuously: the
            // first tenant added later would have no URL, so refuse that too.
            if !tenants.ids.is_empty() && lacking.is_empty() {
                return Ok(());
            }
            let which = if lacking.is_empty() {
                String::new()
            } else {
                let shown: Vec<&str> = lacking.iter().take(5).copied().collect();
                format!(" (tenants without one: {})", shown.join(", "))
            };
            Err(format!(
                "per-tenant mode needs `{{tenant}}` in the URL (e.g. \"ws://127.0.0.1:3001/ws/{{tenant}}\") unless every tenant has a [tenants.urls] override{which}; or set mode = \"shared\""
            ))
        }
        _ => Ok(()),
    }
}

/// The gateway token, inline (`token`) or from an env var (`token_env`), never both:
/// `Some((token, env var name))`, or `None` when a problem was recorded.
fn gateway_token(
    sec: &mut Section<'_>,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<(Option<Secret>, Option<String>)> {
    let inline = sec.secret_string("token", p);
    let from_env = sec.string("token_env", p);
    match (inline, from_env) {
        (Ok(Some(_)), Ok(Some(_))) => {
            p.push(
                sec.path("token_env"),
                "set either gateway.token or gateway.token_env, not both",
            );
            None
        }
        (Ok(Some(token)), Ok(None)) => match check_token(token.trim()) {
            Ok(()) => Some((Some(Secret::new(token.trim())), None)),
            Err(message) => {
                p.push(sec.path("token"), message);
                None
            }
        },
        (Ok(None), Ok(Some(var))) => {
            let var = var.trim();
            if var.is_empty() {
                p.push(
                    sec.path("token_env"),
                    "empty; name the env var that holds the gateway token, e.g. \"GATEWAY_TOKEN\"",
                );
                return None;
            }
            match env_var(env, var) {
                Some(token) => match check_token(&token) {
                    Ok(()) => Some((Some(Secret::new(token)), Some(var.to_string()))),
                    Err(message) => {
                        p.push(sec.path("token_env"), format!("env var {var}: {message}"));
                        None
                    }
                },
                None => {
                    p.push(
                        sec.path("token_env"),
                        format!("env var {var} is not set (or is empty); export it with the gateway token, or remove token_env"),
                    );
                    None
                }
            }
        }
        (Ok(None), Ok(None)) => Some((None, None)),
        _ => None,
    }
}

/// The `[gateway.headers]` table, each name and value checked; `None` when a problem was recorded.
fn gateway_headers(
    table: &Table,
    has_token: bool,
    p: &mut Problems,
) -> Option<Vec<(String, String)>> {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut ok = true;
    for (name, value) in table {
        let path = key_path("gateway.headers", name);
        let lower = name.to_ascii_lowercase();
        let problem = match value {
            _ if !is_header_name(name) => Some(format!(
                "`{name}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            )),
            _ if RESERVED_HEADERS.contains(&lower.as_str()) => Some(format!(
                "`{name}` is set by the WebSocket handshake itself; remove it"
            )),
            _ if lower == "authorization" && has_token => Some(
                "conflicts with gateway.token / token_env, which already send Authorization; keep one".to_string(),
            ),
            _ if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) => Some(format!(
                "`{name}` is given twice (header names ignore case); keep one"
            )),
            Value::String(value) if is_header_value(value) => {
                headers.push((name.clone(), value.clone()));
                None
            }
            Value::String(_) => Some(
                "the value must be printable ASCII (no line breaks or control characters)".to_string(),
            ),
            other => Some(format!(
                "expected a string value, found {}",
                article(other.type_str())
            )),
        };
        if let Some(message) = problem {
            p.push(path, message);
            ok = false;
        }
    }
    ok.then_some(headers)
}

/// A token goes into `Authorization: Bearer <token>`: visible ASCII only. Never echoes it.
fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        Err("the gateway token is empty; give one or remove the key".to_string())
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        Err("the gateway token must be printable ASCII without spaces".to_string())
    } else {
        Ok(())
    }
}

fn walk_backend<'a>(
    root: &'a Table,
    base_dir: &Path,
    env: &dyn Env,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Section<'a>, Option<BackendConfig>) {
    let mut sec = Section::new(root, "backend", p);

    let check_base = |url: &str| -> Result<Url, String> {
        let parsed = check_url(url, &["http", "https"])?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!(
                "`{url}` has a query or fragment; give only the base URL (backend.path is appended to it)"
            ));
        }
        Ok(parsed)
    };
    let from_file = sec.string("url", p);
    let url = match (env_var(env, ENV_BACKEND_URL), from_file) {
        (Some(url), _) => match check_base(&url) {
            Ok(url) => Some(url),
            Err(message) => {
                p.push(
                    format!("env {ENV_BACKEND_URL}"),
                    format!("{message} (this env var overrides backend.url)"),
                );
                None
            }
        },
        (None, Ok(Some(url))) => match check_base(url) {
            Ok(url) => Some(url),
            Err(message) => {
                p.push(sec.path("url"), message);
                None
            }
        },
        (None, Ok(None)) => {
            p.push(
                sec.path("url"),
                format!(
                    "missing; set backend.url = \"http://127.0.0.1:8000\" or env {ENV_BACKEND_URL}"
                ),
            );
            None
        }
        (None, Err(Invalid)) => None,
    };

    let path = match sec.string("path", p) {
        Ok(None) => Some(DEFAULT_BACKEND_PATH.to_string()),
        Ok(Some(path))
            if path.starts_with('/')
                && !path.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Some(path.to_string())
        }
        Ok(Some(path)) => {
            p.push(
                sec.path("path"),
                format!("`{path}` must start with `/` and contain no whitespace, e.g. \"{DEFAULT_BACKEND_PATH}\""),
            );
            None
        }
        Err(Invalid) => None,
    };
    if let (Some(url), Some(path)) = (&url, &path) {
        if url
            .path()
            .trim_end_matches('/')
            .ends_with(path.trim_end_matches('/'))
            && path != "/"
        {
            warnings.push(format!(
                "backend.url {} already ends with backend.path {path}; the webhook URL would repeat it: give backend.url as the base URL only",
                redact_userinfo(url.as_str())
            ));
        }
    }

    let secret_file = match sec.string("secret_file", p) {
        Ok(Some(name)) if name.trim().is_empty() => {
            p.push(
                sec.path("secret_file"),
                "empty; name the file that holds the shared secret, or remove the key",
            );
            Err(Invalid)
        }
        Ok(Some(name)) => Ok(Some(resolve(base_dir, name))),
        Ok(None) => Ok(None),
        Err(Invalid) => Err(Invalid),
    };
    let secret = match secret_file {
        Ok(file) => resolve_secret(file, env, p, warnings),
        Err(Invalid) => None,
    };

    let timeout = sec.duration("timeout", DEFAULT_BACKEND_TIMEOUT, false, p);
    let connect_timeout =
        sec.duration("connect_timeout", DEFAULT_BACKEND_CONNECT_TIMEOUT, false, p);
    if let (Some(timeout), Some(connect)) = (timeout, connect_timeout) {
        if connect > timeout {
            warnings.push(format!(
                "backend.connect_timeout ({}) exceeds backend.timeout ({}), which bounds the whole request including the connect",
                humantime::format_duration(connect),
                humantime::format_duration(timeout)
            ));
        }
    }
    let max_in_flight = sec.count("max_in_flight", DEFAULT_BACKEND_MAX_IN_FLIGHT, 1, p);

    let config = match (url, path, secret, timeout, connect_timeout, max_in_flight) {
        (
            Some(url),
            Some(path),
            Some((secret, secret_source)),
            Some(timeout),
            Some(connect_timeout),
            Some(max_in_flight),
        ) => Some(BackendConfig {
            url,
            path,
            secret,
            secret_source,
            timeout,
            connect_timeout,
            max_in_flight,
        }),
        _ => None,
    };
    (sec, config)
}

/// Finds the shared secret: env, else `secret_file`, else the systemd credential. A configured
/// `secret_file` that cannot be read is a problem of its own (no silent fallback past it).
fn resolve_secret(
    secret_file: Option<PathBuf>,
    env: &dyn Env,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<(Secret, SecretSource)> {
    if let Some(secret) = env_var(env, ENV_SHARED_SECRET) {
        return Some((Secret::new(secret), SecretSource::Env));
    }
    let read = |path: &Path, p: &mut Problems, key: &str| -> Option<Secret> {
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => {
                p.push(
                    key,
                    format!(
                        "{} is empty; write the shared secret into it",
                        path.display()
                    ),
                );
                None
            }
            Ok(text) => Some(Secret::new(text.trim())),
            Err(err) => {
                p.push(key, format!("cannot read {}: {err}", path.display()));
                None
            }
        }
    };
    if let Some(path) = secret_file {
        let secret = read(&path, p, "backend.secret_file")?;
        warn_if_world_readable(&path, warnings);
        return Some((secret, SecretSource::File(path)));
    }
    if let Some(dir) = env_var(env, ENV_CREDENTIALS_DIRECTORY) {
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        if path.exists() {
            let secret = read(&path, p, "backend.secret")?;
            return Some((secret, SecretSource::Credential(path)));
        }
    }
    let set_but_empty = env.var(ENV_SHARED_SECRET).is_some();
    let note = if set_but_empty {
        format!(" ({ENV_SHARED_SECRET} is set but empty)")
    } else {
        String::new()
    };
    p.push(
        "backend.secret",
        format!(
            "no shared secret found{note}; set env {ENV_SHARED_SECRET}, or backend.secret_file = \"/path/to/secret\", \
             or pass the systemd credential `{CREDENTIAL_NAME}` (LoadCredential={CREDENTIAL_NAME}:/path, read from ${ENV_CREDENTIALS_DIRECTORY}/{CREDENTIAL_NAME})"
        ),
    );
    None
}

#[cfg(unix)]
fn warn_if_world_readable(path: &Path, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            warnings.push(format!(
                "backend.secret_file {} is readable by every user; chmod 600 it (or 640 with the service's group)",
                path.display()
            ));
        }
    }
}

#[cfg(not(unix))]
fn warn_if_world_readable(_path: &Path, _warnings: &mut Vec<String>) {}

fn walk_debounce<'a>(root: &'a Table, p: &mut Problems) -> (Section<'a>, Option<Policy>) {
    let mut sec = Section::new(root, "debounce", p);
    let d = Policy::default();

    let disconnect_grace = sec.duration("disconnect_grace", d.disconnect_grace, true, p);
    let connect_grace = sec.duration("connect_grace", d.connect_grace, true, p);
    let gateway_down_grace = sec
        .duration(
            "gateway_down_grace",
            d.gateway_down_grace.unwrap_or(Duration::ZERO),
            true,
            p,
        )
        .map(|grace| (!grace.is_zero()).then_some(grace));
    let flap_half_life = sec.duration("flap_half_life", d.flap_half_life, false, p);
    let flap_max_suppress = sec.duration("flap_max_suppress", d.flap_max_suppress, false, p);
    let flap_suppress = sec.positive_number("flap_suppress", d.flap_suppress, p);
    let flap_reuse = sec.positive_number("flap_reuse", d.flap_reuse, p);

    if let (Some(suppress), Some(reuse)) = (flap_suppress, flap_reuse) {
        if reuse >= suppress {
            p.push(
                sec.path("flap_reuse"),
                format!("{reuse} must be below flap_suppress ({suppress}), or a flapping tenant would never recover (defaults 750 and 3000)"),
            );
        } else if let (Some(half_life), Some(max)) = (flap_half_life, flap_max_suppress) {
            // SPEC section 4: the penalty is capped at reuse * 2^(max / half_life). A cap below
            // the suppress threshold would make flapping impossible to detect.
            let cap = reuse * (max.as_secs_f64() / half_life.as_secs_f64()).exp2();
            if cap < suppress {
                p.push(
                    sec.path("flap_max_suppress"),
                    format!(
                        "{} is too short for flap_half_life {}: the penalty cap (flap_reuse * 2^(flap_max_suppress / flap_half_life) = {cap:.0}) is below flap_suppress ({suppress}), so flapping could never be detected; raise flap_max_suppress",
                        humantime::format_duration(max),
                        humantime::format_duration(half_life)
                    ),
                );
            }
        }
    }

    let terminal_codes = match sec.array("terminal_codes", p) {
        Ok(Some(items)) => {
            let mut codes = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let path = format!("debounce.terminal_codes[{i}]");
                match item {
                    Value::Integer(n) if (100..=999).contains(n) => {
                        let code = *n as u16;
                        if !codes.contains(&code) {
                            codes.push(code);
                        }
                    }
                    Value::Integer(n) => {
                        p.push(
                            path,
                            format!("{n} is not a status code; codes are 100..=999 (e.g. 401)"),
                        );
                        ok = false;
                    }
                    other => {
                        p.push(
                            path,
                            format!(
                                "expected a status code number (e.g. 401), found {}",
                                describe(other)
                            ),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(codes)
        }
        Ok(None) => Some(d.terminal_codes.clone()),
        Err(Invalid) => None,
    };

    let policy = match (
        disconnect_grace,
        connect_grace,
        terminal_codes,
        gateway_down_grace,
        flap_half_life,
        flap_suppress,
        flap_reuse,
        flap_max_suppress,
    ) {
        (
            Some(disconnect_grace),
            Some(connect_grace),
            Some(terminal_codes),
            Some(gateway_down_grace),
            Some(flap_half_life),
            Some(flap_suppress),
            Some(flap_reuse),
            Some(flap_max_suppress),
        ) => Some(Policy {
            disconnect_grace,
            connect_grace,
            terminal_codes,
            gateway_down_grace,
            flap_half_life,
            flap_suppress,
            flap_reuse,
            flap_max_suppress,
        }),
        _ => None,
    };
    (sec, policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const SECRET: &str = "s3cret-value-4f9a";
    const ENV: [(&str, &str); 1] = [(ENV_SHARED_SECRET, SECRET)];
    const MINIMAL: &str = r#"
        [gateway]
        url = "ws://gw:3001/ws/{tenant}"
        [backend]
        url = "http://backend:8000"
        [tenants]
        ids = ["t1"]
    "#;

    fn load_with(text: &str, env: &dyn Env) -> Config {
        Config::from_toml_str(text, Path::new("/nonexistent"), env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn load(text: &str) -> Config {
        load_with(text, &ENV)
    }

    fn fail_with(text: &str, env: &dyn Env) -> ConfigError {
        match Config::from_toml_str(text, Path::new("/nonexistent"), env) {
            Ok(config) => panic!("expected problems, got {config:#?}"),
            Err(err) => err,
        }
    }

    fn fail(text: &str) -> ConfigError {
        fail_with(text, &ENV)
    }

    fn paths(err: &ConfigError) -> BTreeSet<&str> {
        err.problems.iter().map(|p| p.path.as_str()).collect()
    }

    /// The message of the one problem at `path`.
    fn message<'e>(err: &'e ConfigError, path: &str) -> &'e str {
        match err.problems.iter().find(|p| p.path == path) {
            Some(problem) => &problem.message,
            None => panic!("no problem at {path}: {err}"),
        }
    }

    #[test]
    fn example_file_loads_and_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sidecar.toml");
        let config = Config::load(&path, &ENV).unwrap_or_else(|e| panic!("{e}"));
        let defaults = load(MINIMAL);
        // The example spells out the defaults; it must not drift from the code.
        assert_eq!(config.gateway.mode, defaults.gateway.mode);
        assert_eq!(config.gateway.ping_interval, DEFAULT_PING_INTERVAL);
        assert_eq!(config.gateway.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(config.gateway.max_frame_size, DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(
            config.gateway.handshake_concurrency,
            DEFAULT_HANDSHAKE_CONCURRENCY
        );
        assert_eq!(config.backend.path, DEFAULT_BACKEND_PATH);
        assert_eq!(config.backend.timeout, DEFAULT_BACKEND_TIMEOUT);
        assert_eq!(
            config.backend.connect_timeout,
            DEFAULT_BACKEND_CONNECT_TIMEOUT
        );
        assert_eq!(config.backend.max_in_flight, DEFAULT_BACKEND_MAX_IN_FLIGHT);
        assert_eq!(config.debounce, Policy::default());
        assert_eq!(config.admin.listen, DEFAULT_ADMIN_LISTEN);
        assert_eq!(config.log.format, DEFAULT_LOG_FORMAT);
        assert_eq!(config.state.dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.tenants.ids, ["business_1", "business_2"]);
        assert_eq!(config.backend.secret_source, SecretSource::Env);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert_eq!(
            config.webhook_url(),
            "http://127.0.0.1:8000/api/internal/whatsapp/status-webhook"
        );
    }

    #[test]
    fn omitted_keys_take_their_defaults() {
        let config = load(MINIMAL);
        let g = &config.gateway;
        assert_eq!(g.mode, GatewayMode::PerTenant);
        assert_eq!(
            (g.state_url.as_ref(), g.token.as_ref(), g.token_env.as_ref()),
            (None, None, None)
        );
        assert!(g.headers.is_empty());
        assert_eq!(g.ping_interval, Duration::from_secs(20));
        assert_eq!(g.idle_timeout, Duration::from_secs(45));
        assert_eq!(g.max_frame_size, 1_048_576);
        assert_eq!(g.handshake_concurrency, 64);
        let b = &config.backend;
        assert_eq!(b.path, "/api/internal/whatsapp/status-webhook");
        assert_eq!(b.secret.expose(), SECRET);
        assert_eq!(
            (b.timeout, b.connect_timeout),
            (Duration::from_secs(10), Duration::from_secs(5))
        );
        assert_eq!(b.max_in_flight, 16);
        assert_eq!(config.debounce, Policy::default());
        assert_eq!(
            config.tenants,
            TenantsConfig {
                ids: vec!["t1".into()],
                file: None,
                urls: BTreeMap::new()
            }
        );
        assert_eq!(config.state.dir, Path::new("/var/lib/wa-status-sidecar"));
        assert_eq!(config.admin.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn no_tenants_is_allowed_with_a_warning() {
        let config = load("[gateway]\nurl = \"ws://gw/{tenant}\"\n[backend]\nurl = \"http://b\"");
        assert!(config.tenants.ids.is_empty());
        assert!(
            config.warnings.iter().any(|w| w.contains("no tenants")),
            "{:?}",
            config.warnings
        );
    }

    #[test]
    fn env_overrides_backend_url_and_state_dir() {
        let env = [
            (ENV_SHARED_SECRET, SECRET),
            (ENV_BACKEND_URL, "https://internal.example:9443/app/"),
            (ENV_STATE_DIRECTORY, "/var/lib/sidecar-a:/var/lib/other"),
        ];
        let config = load_with(MINIMAL, &env);
        assert_eq!(
            config.backend.url.as_str(),
            "https://internal.example:9443/app/"
        );
        assert_eq!(
            config.webhook_url(),
            "https://internal.example:9443/app/api/internal/whatsapp/status-webhook"
        );
        assert_eq!(config.state.dir, Path::new("/var/lib/sidecar-a"));

        // backend.url may then be omitted; state.dir in the file beats STATE_DIRECTORY.
        let text = "[gateway]\nurl = \"ws://gw/{tenant}\"\n[state]\ndir = \"/srv/state\"";
        let config = load_with(text, &env);
        assert_eq!(config.backend.url.host_str(), Some("internal.example"));
        assert_eq!(config.state.dir, Path::new("/srv/state"));

        // A bad override is reported against the env var, which is where the fix goes.
        let env = [
            (ENV_SHARED_SECRET, SECRET),
            (ENV_BACKEND_URL, "backend:8000"),
        ];
        assert_eq!(
            paths(&fail_with(MINIMAL, &env)),
            BTreeSet::from(["env BACKEND_INTERNAL_URL"])
        );
    }

    #[test]
    fn secret_sources_in_order_of_precedence() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), "  from-file\n").unwrap();
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join(CREDENTIAL_NAME), "from-credential\n").unwrap();
        let creds_dir = creds.path().to_str().unwrap();
        let with_file = MINIMAL.replace("[backend]", "[backend]\nsecret_file = \"secret.txt\"");
        let parse = |text: &str, env: &dyn Env| {
            Config::from_toml_str(text, dir.path(), env).unwrap_or_else(|e| panic!("{e}"))
        };

        // 1. The env var wins over everything.
        let env = [
            (ENV_SHARED_SECRET, " from-env "),
            (ENV_CREDENTIALS_DIRECTORY, creds_dir),
        ];
        let config = parse(&with_file, &env);
        assert_eq!(
            (
                config.backend.secret.expose(),
                &config.backend.secret_source
            ),
            ("from-env", &SecretSource::Env)
        );

        // 2. Then secret_file, relative to the config's directory, trimmed. An empty env var is unset.
        let env = [
            (ENV_SHARED_SECRET, ""),
            (ENV_CREDENTIALS_DIRECTORY, creds_dir),
        ];
        let config = parse(&with_file, &env);
        assert_eq!(config.backend.secret.expose(), "from-file");
        assert_eq!(
            config.backend.secret_source,
            SecretSource::File(dir.path().join("secret.txt"))
        );

        // 3. Then the systemd credential.
        let env = [(ENV_CREDENTIALS_DIRECTORY, creds_dir)];
        let config = parse(MINIMAL, &env);
        assert_eq!(config.backend.secret.expose(), "from-credential");
        assert_eq!(
            config.backend.secret_source,
            SecretSource::Credential(creds.path().join(CREDENTIAL_NAME))
        );
        assert!(config
            .summary()
            .contains("<redacted> (from systemd credential"));

        // A named secret_file that cannot be read is its own problem, not a silent fallback.
        let missing = with_file.replace("secret.txt", "nope.txt");
        let err = Config::from_toml_str(&missing, dir.path(), &env).unwrap_err();
        assert_eq!(paths(&err), BTreeSet::from(["backend.secret_file"]));
        assert!(message(&err, "backend.secret_file").contains("nope.txt"));
    }

    #[test]
    fn missing_secret_names_the_three_ways() {
        let creds = tempfile::tempdir().unwrap(); // exists, but holds no credential
        let env = [(ENV_CREDENTIALS_DIRECTORY, creds.path().to_str().unwrap())];
        for env in [&env as &dyn Env, &[("X", "y")]] {
            let err = fail_with(MINIMAL, env);
            assert_eq!(paths(&err), BTreeSet::from(["backend.secret"]));
            let msg = message(&err, "backend.secret");
            for way in [
                ENV_SHARED_SECRET,
                "backend.secret_file",
                "CREDENTIALS_DIRECTORY",
                "internal-secret",
            ] {
                assert!(msg.contains(way), "{msg}");
            }
        }
        let blank = std::fs::write(creds.path().join(CREDENTIAL_NAME), " \n");
        blank.unwrap();
        let err = fail_with(MINIMAL, &env);
        assert!(
            message(&err, "backend.secret").contains("is empty"),
            "{err}"
        );
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let text = r#"
            [gateway]
            mode = "sharded"
            urll = "ws://gw/{tenant}"
            ping_interval = 20
            idle_timeout = "abc"
            max_frame_size = 10
            handshake_concurrency = "many"
            headers = { "bad header" = "x", Upgrade = "h2c" }
            [backend]
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
            [tenants.urls]
            ghost = "ws://gw-2/ws/ghost"
            [state]
            dir = 5
            [admin]
            listen = "localhost"
            [log]
            format = "xml"
            level = "debug"
            [extra]
        "#;
        let err = fail_with(text, &[("X", "y")]);
        let expected = BTreeSet::from([
            "gateway.mode",
            "gateway.url",
            "gateway.urll",
            "gateway.ping_interval",
            "gateway.idle_timeout",
            "gateway.max_frame_size",
            "gateway.handshake_concurrency",
            "gateway.headers.\"bad header\"",
            "gateway.headers.Upgrade",
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
            "tenants.urls.ghost",
            "state.dir",
            "admin.listen",
            "log.format",
            "log.level",
            "extra",
        ]);
        assert_eq!(paths(&err), expected, "{err}");
        // backend.secret appears twice: the unknown key, and no secret found.
        assert_eq!(err.problems.len(), expected.len() + 1, "{err}");
        // Grouped by section in file order, and the Display lists them all.
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "<inline config>: {} problems:\n  - gateway.",
                expected.len() + 1
            )),
            "{shown}"
        );
        assert!(
            shown.contains("\n  - log.level: unknown key; the log level comes from env RUST_LOG"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn unknown_keys_get_hints() {
        let text = format!("{MINIMAL}\n[gatway]\nurl = \"x\"\n[admin]\nlisen = \"127.0.0.1:1\"\nsecret_file = \"/s\"\n");
        let err = fail(&text);
        assert_eq!(
            paths(&err),
            BTreeSet::from(["gatway", "admin.lisen", "admin.secret_file"])
        );
        assert_eq!(
            message(&err, "gatway"),
            "unknown section; did you mean `[gateway]`?"
        );
        assert_eq!(
            message(&err, "admin.lisen"),
            "unknown key; did you mean `listen`?"
        );
        assert!(
            message(&err, "admin.secret_file").contains("`backend.secret_file`"),
            "{err}"
        );

        let err = fail(&MINIMAL.replace("url = \"ws", "urll = \"ws"));
        assert_eq!(
            message(&err, "gateway.urll"),
            "unknown key; did you mean `url`?"
        );
        assert!(message(&err, "gateway.url").starts_with("missing"));

        let err = fail(&format!("{MINIMAL}\n[log]\ncolour = true"));
        assert_eq!(
            message(&err, "log.colour"),
            "unknown key; [log] takes: format"
        );
    }

    #[test]
    fn durations_are_humane_strings() {
        let config = load(&format!(
            "{MINIMAL}\n[debounce]\ndisconnect_grace = \"1h 30m\"\nconnect_grace = \"0s\"\ngateway_down_grace = \"0s\"\nflap_half_life = \"500ms\""
        ));
        assert_eq!(
            config.debounce.disconnect_grace,
            Duration::from_secs(90 * 60)
        );
        assert_eq!(config.debounce.connect_grace, Duration::ZERO);
        assert_eq!(config.debounce.gateway_down_grace, None);
        assert_eq!(config.debounce.flap_half_life, Duration::from_millis(500));

        let text = format!(
            "{MINIMAL}\n[debounce]\ndisconnect_grace = 60\nconnect_grace = \"ten seconds\"\nflap_half_life = \"0s\"\nflap_max_suppress = 1.5"
        );
        let err = fail(&text);
        assert!(
            message(&err, "debounce.disconnect_grace").contains("\"60s\""),
            "{err}"
        );
        assert!(
            message(&err, "debounce.connect_grace").contains("not a duration"),
            "{err}"
        );
        assert!(
            message(&err, "debounce.flap_half_life").contains("longer than 0s"),
            "{err}"
        );
        assert!(
            message(&err, "debounce.flap_max_suppress").contains("duration string"),
            "{err}"
        );
        assert_eq!(err.problems.len(), 4, "{err}");

        let err = fail(&MINIMAL.replace(
            "[backend]",
            "ping_interval = \"30s\"\nidle_timeout = \"30s\"\n[backend]",
        ));
        assert!(
            message(&err, "gateway.idle_timeout").contains("longer than ping_interval"),
            "{err}"
        );
    }

    #[test]
    fn debounce_values_are_checked() {
        let config = load(&format!(
            "{MINIMAL}\n[debounce]\nterminal_codes = []\nflap_suppress = 2500.5"
        ));
        assert!(config.debounce.terminal_codes.is_empty());
        assert_eq!(config.debounce.flap_suppress, 2500.5);

        let err = fail(&format!(
            "{MINIMAL}\n[debounce]\nflap_reuse = 3000\nterminal_codes = [1000]"
        ));
        assert_eq!(
            paths(&err),
            BTreeSet::from(["debounce.flap_reuse", "debounce.terminal_codes[0]"])
        );
        // A penalty cap below flap_suppress would make flapping undetectable.
        let err = fail(&format!(
            "{MINIMAL}\n[debounce]\nflap_max_suppress = \"10m\""
        ));
        assert!(
            message(&err, "debounce.flap_max_suppress").contains("never be detected"),
            "{err}"
        );
    }

    #[test]
    fn tenants_file_is_merged_after_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tenants.txt"),
            "# the fleet\n\nt2\n  t1  \nt3 # trailing comment\nt2\n",
        )
        .unwrap();
        let text = MINIMAL.replace(
            "ids = [\"t1\"]",
            "ids = [\"t0\", \"t1\"]\nfile = \"tenants.txt\"",
        );
        let config =
            Config::from_toml_str(&text, dir.path(), &ENV).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.tenants.ids, ["t0", "t1", "t2", "t3"]);
        assert_eq!(
            config.tenants.file.as_deref(),
            Some(dir.path().join("tenants.txt").as_path())
        );

        std::fs::write(dir.path().join("tenants.txt"), "ok\nbad id here\n").unwrap();
        let err = Config::from_toml_str(&text, dir.path(), &ENV).unwrap_err();
        assert!(message(&err, "tenants.file").contains("line 2"), "{err}");

        let err = Config::from_toml_str(
            &text.replace("tenants.txt", "missing.txt"),
            dir.path(),
            &ENV,
        )
        .unwrap_err();
        assert!(
            message(&err, "tenants.file").contains("missing.txt"),
            "{err}"
        );

        let long = "x".repeat(129);
        let err = fail(&MINIMAL.replace("\"t1\"", &format!("\"t1\", \"{long}\", \"a\\tb\"")));
        assert_eq!(
            paths(&err),
            BTreeSet::from(["tenants.ids[1]", "tenants.ids[2]"])
        );
    }

    #[test]
    fn url_overrides_must_name_configured_tenants() {
        let err = fail(&format!(
            "{MINIMAL}\n[tenants.urls]\nghost = \"ws://gw-2/ws/ghost\"\nt1 = \"http://x\""
        ));
        assert_eq!(
            paths(&err),
            BTreeSet::from(["tenants.urls.ghost", "tenants.urls.t1"])
        );
        assert!(message(&err, "tenants.urls.ghost").contains("not a configured tenant"));

        let config = load(&format!(
            "{MINIMAL}\n[tenants.urls]\nt1 = \"wss://gw-2/ws/special\""
        ));
        assert_eq!(config.gateway_url("t1"), "wss://gw-2/ws/special");
        assert_eq!(config.gateway_url("t2"), "ws://gw:3001/ws/t2");
    }

    #[test]
    fn gateway_url_template_rules() {
        // Per-tenant mode needs {tenant} ...
        let no_placeholder = MINIMAL.replace("/ws/{tenant}", "/ws");
        let err = fail(&no_placeholder);
        assert_eq!(paths(&err), BTreeSet::from(["gateway.url"]));
        assert!(message(&err, "gateway.url").contains("{tenant}"), "{err}");
        // ... unless every tenant has an override.
        let config = load(&format!(
            "{no_placeholder}\n[tenants.urls]\nt1 = \"ws://gw-2/t1\""
        ));
        assert_eq!(config.gateway_url("t1"), "ws://gw-2/t1");

        // Shared mode must not have it, takes the URL as is, and has no overrides.
        let shared = MINIMAL.replace("[gateway]", "[gateway]\nmode = \"shared\"");
        assert!(message(&fail(&shared), "gateway.url").contains("shared mode"));
        let shared = shared.replace("/ws/{tenant}", "/ws?session=*&events=session.status");
        let config = load(&shared);
        assert_eq!(config.gateway.mode, GatewayMode::Shared);
        assert_eq!(
            config.gateway_url("t1"),
            "ws://gw:3001/ws?session=*&events=session.status"
        );
        let err = fail(&format!("{shared}\n[tenants.urls]\nt1 = \"ws://x/\""));
        assert_eq!(paths(&err), BTreeSet::from(["tenants.urls"]));

        // Wrong scheme, unknown placeholder.
        let err = fail(&MINIMAL.replace("ws://gw:3001/ws/{tenant}", "http://gw/{tenant_id}"));
        assert!(
            message(&err, "gateway.url").contains("only one is `{tenant}`"),
            "{err}"
        );
        let err = fail(&MINIMAL.replace("ws://gw:3001", "https://gw"));
        assert!(
            message(&err, "gateway.url").contains("ws:// or wss://"),
            "{err}"
        );
    }

    #[test]
    fn tenant_ids_are_percent_encoded() {
        let text = MINIMAL.replace(
            "[backend]",
            "state_url = \"https://gw/sessions/{tenant}/status?t={tenant}\"\n[backend]",
        );
        let config = load(&text);
        assert_eq!(config.gateway_url("a/b"), "ws://gw:3001/ws/a%2Fb");
        assert_eq!(
            config.gateway_url("ü?#%"),
            "ws://gw:3001/ws/%C3%BC%3F%23%25"
        );
        assert_eq!(
            config.gateway_url("Biz-1_x.y~z"),
            "ws://gw:3001/ws/Biz-1_x.y~z"
        );
        assert_eq!(
            config.state_url("a&b").as_deref(),
            Some("https://gw/sessions/a%26b/status?t=a%26b")
        );
        assert_eq!(load(MINIMAL).state_url("t1"), None);
    }

    #[test]
    fn gateway_token_and_headers() {
        let text = MINIMAL.replace(
            "[backend]",
            "token_env = \"GW_TOKEN\"\n[gateway.headers]\nX-Api-Key = \"header-secret-77\"\n[backend]",
        );
        let env = [
            (ENV_SHARED_SECRET, SECRET),
            ("GW_TOKEN", " token-secret-99 "),
        ];
        let config = load_with(&text, &env);
        assert_eq!(
            config.gateway.token.as_ref().map(Secret::expose),
            Some("token-secret-99")
        );
        assert_eq!(config.gateway.token_env.as_deref(), Some("GW_TOKEN"));
        assert_eq!(
            config.gateway.headers,
            [("X-Api-Key".to_string(), "header-secret-77".to_string())]
        );

        let err = fail(&text);
        assert!(
            message(&err, "gateway.token_env").contains("GW_TOKEN is not set"),
            "{err}"
        );

        let both = text.replace(
            "token_env = \"GW_TOKEN\"",
            "token_env = \"GW_TOKEN\"\ntoken = \"abc\"",
        );
        assert!(message(&fail_with(&both, &env), "gateway.token_env").contains("not both"));

        let clash = text.replace("X-Api-Key", "Authorization");
        assert_eq!(
            paths(&fail_with(&clash, &env)),
            BTreeSet::from(["gateway.headers.Authorization"])
        );
        let bad_value = text.replace("header-secret-77", "a\\nb");
        assert_eq!(
            paths(&fail_with(&bad_value, &env)),
            BTreeSet::from(["gateway.headers.X-Api-Key"])
        );
    }

    #[test]
    fn summary_and_debug_never_show_secrets() {
        let text = MINIMAL.replace(
            "[backend]",
            "token = \"token-secret-99\"\nheaders = { X-Api-Key = \"header-secret-77\" }\n[backend]",
        );
        let text = text.replace(
            "http://backend:8000",
            "http://user:url-pass-55@backend:8000",
        );
        let config = load(&text);
        let summary = config.summary();
        let debug = format!("{config:?}");
        for shown in [&summary, &debug] {
            for secret in [SECRET, "token-secret-99", "header-secret-77"] {
                assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
            }
        }
        assert!(!summary.contains("url-pass-55"), "{summary}");
        assert!(
            summary.contains("<redacted> (from INTERNAL_SHARED_SECRET)"),
            "{summary}"
        );
        assert!(
            summary.contains("<redacted> (from gateway.token)"),
            "{summary}"
        );
        assert!(summary.contains("X-Api-Key: <redacted>"), "{summary}");
        assert!(summary.contains("count                   1"), "{summary}");
        assert!(
            summary.contains("webhook                 http://user:<redacted>@backend:8000/api/"),
            "{summary}"
        );
    }

    #[test]
    fn summary_lists_the_first_tenants() {
        let ids: Vec<String> = (0..25).map(|i| format!("\"b{i}\"")).collect();
        let config = load(&MINIMAL.replace("[\"t1\"]", &format!("[{}]", ids.join(", "))));
        let summary = config.summary();
        assert!(summary.contains("count                   25"), "{summary}");
        assert!(summary.contains("b0, b1,"), "{summary}");
        assert!(
            summary.contains("(15 more)") && !summary.contains("b10"),
            "{summary}"
        );
    }

    #[test]
    fn file_level_problems() {
        let err = fail("[gateway]\nurl = \"ws://x/{tenant}\"\nping_interval = \n");
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.problems[0]
                .message
                .starts_with("invalid TOML at line 3, column 17"),
            "{err}"
        );

        let err = Config::load(Path::new("/nonexistent/sidecar.toml"), &ENV).unwrap_err();
        assert_eq!(err.source_name, "/nonexistent/sidecar.toml");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/sidecar.toml: 1 problem:\n  - cannot read"),
            "{err}"
        );

        let err = fail(&format!("log = \"json\"\n{MINIMAL}"));
        assert_eq!(paths(&err), BTreeSet::from(["log"]));
    }

    #[test]
    fn other_checks() {
        let config = load(&format!(
            "{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9464\"\n[log]\nformat = \"json\""
        ));
        assert_eq!(config.log.format, LogFormat::Json);
        assert!(config.warnings.iter().any(|w| w.contains("not a loopback")));

        let config = load(&MINIMAL.replace("http://backend:8000", "http://backend:8000/"));
        assert_eq!(
            config.webhook_url(),
            "http://backend:8000/api/internal/whatsapp/status-webhook"
        );

        let err = fail(&MINIMAL.replace("http://backend:8000", "http://backend:8000/?x=1"));
        assert!(message(&err, "backend.url").contains("query"), "{err}");

        let err = fail(&MINIMAL.replace(
            "[backend]",
            "max_frame_size = 1023\nhandshake_concurrency = 0\n[backend]",
        ));
        assert_eq!(
            paths(&err),
            BTreeSet::from(["gateway.max_frame_size", "gateway.handshake_concurrency"])
        );
    }
}
