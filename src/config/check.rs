//! The one validation pass: from the raw serde value (plus the environment and the files it
//! names) to a typed [`Config`], collecting every problem with its key path on the way.
//!
//! Each helper records a problem and returns `None` for a value it refuses, so a cross-key rule
//! runs only on values that are valid themselves, and the `Config` is built (with `?` on every
//! field) only once the whole pass has run.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use toml::{Table, Value};
use url::{Host, Url};

use super::raw::{self, article, describe, key_path, Humane, RawConfig, Setting};
use super::*;
use crate::storm::{self, StormPolicy};

/// A key's path (`"gateway.url"`) and its raw setting.
type Key<'r, T> = (&'static str, &'r Setting<T>);

/// `key!(raw.gateway.url)`: the path `"gateway.url"` and the setting, the name written once.
macro_rules! key {
    ($raw:ident . $section:ident . $key:ident) => {
        (
            concat!(stringify!($section), ".", stringify!($key)),
            &$raw.$section.$key,
        )
    };
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

pub(super) fn parse(
    text: &str,
    source_name: &str,
    base_dir: &Path,
    env: &dyn Env,
) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        source_name: source_name.to_string(),
        problems,
    };
    let mut root: Table = text
        .parse()
        .map_err(|e| fail(vec![syntax_problem(text, &e)]))?;
    let (not_tables, unknown) = raw::take_unknown_keys(&mut root);
    let mut c = Check {
        problems: not_tables,
        warnings: Vec::new(),
        env,
        base_dir,
    };
    let config = match RawConfig::deserialize(Value::Table(root)) {
        Ok(raw) => c.config(&raw),
        Err(err) => c.bad("", format!("invalid configuration: {}", err.message())),
    };
    let mut problems = c.problems;
    problems.extend(unknown);
    match config {
        Some(config) if problems.is_empty() => Ok(Config {
            warnings: c.warnings,
            ..config
        }),
        // Every refused value comes with a problem; stay total should that ever not hold.
        _ if problems.is_empty() => Err(fail(vec![Problem::new("", "invalid configuration")])),
        _ => {
            // Group by section in file order; a stable sort keeps the pass order within each.
            let sections = raw::sections();
            problems.sort_by_key(|problem| {
                let head = match problem.path.as_str() {
                    path if path.starts_with("env ") => "backend", // BACKEND_INTERNAL_URL, ...
                    path => path.split(['.', '[']).next().unwrap_or(""),
                };
                sections
                    .iter()
                    .position(|s| *s == head)
                    .unwrap_or(sections.len())
            });
            Err(fail(problems))
        }
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
    Problem::new("", message)
}

/// The pass's state: what it found so far, and where it reads files and variables.
struct Check<'a> {
    problems: Vec<Problem>,
    warnings: Vec<String>,
    env: &'a dyn Env,
    base_dir: &'a Path,
}

impl Check<'_> {
    fn config(&mut self, raw: &RawConfig) -> Option<Config> {
        // Tenants first: the gateway URL checks depend on them.
        let tenants = self.tenants(raw);
        let gateway = self.gateway(raw, &tenants);
        let backend = self.backend(raw);
        let debounce = self.debounce(raw);
        let storm = self.storm(raw);
        let (dir, listen, format) = (self.state_dir(raw), self.admin(raw), self.log(raw));
        Some(Config {
            gateway: gateway?,
            backend: backend?,
            debounce: debounce?,
            storm: storm?,
            tenants,
            state: StateConfig { dir: dir? },
            admin: AdminConfig { listen: listen? },
            log: LogConfig { format: format? },
            warnings: Vec::new(),
        })
    }

    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// Records a problem; `None` for the value it refused.
    fn bad<T>(&mut self, path: impl Into<String>, message: impl Into<String>) -> Option<T> {
        self.problem(path, message);
        None
    }

    /// `Some(None)` when absent, `Some(Some(value))` when of the right type, else a problem
    /// saying what was `expected` and what was `found`.
    fn typed<'r, T>(
        &mut self,
        (path, setting): Key<'r, T>,
        expected: &str,
        found: fn(&Value) -> String,
    ) -> Option<Option<&'r T>> {
        match setting {
            Setting::Unset => Some(None),
            Setting::Set(value) => Some(Some(value)),
            Setting::Bad(value) => {
                self.bad(path, format!("expected {expected}, found {}", found(value)))
            }
        }
    }

    fn text<'r>(&mut self, key: Key<'r, String>) -> Option<Option<&'r str>> {
        Some(self.typed(key, "a string", describe)?.map(String::as_str))
    }

    /// Like [`Check::text`], but a wrong-type message does not echo the value.
    fn secret_text<'r>(&mut self, key: Key<'r, String>) -> Option<Option<&'r str>> {
        let found = |v: &Value| article(v.type_str());
        Some(self.typed(key, "a string", found)?.map(String::as_str))
    }

    fn table<'r>(&mut self, key: Key<'r, Table>) -> Option<Option<&'r Table>> {
        let expected = format!("a table (`[{}]` with one `name = \"value\"` a line)", key.0);
        self.typed(key, &expected, describe)
    }

    /// A file named by the key, resolved against the config's directory.
    fn file(&mut self, key: Key<'_, String>, what: &str) -> Option<Option<PathBuf>> {
        match self.text(key)? {
            Some(name) if name.trim().is_empty() => {
                let message = format!("empty; name the file that holds {what}, or remove the key");
                self.bad(key.0, message)
            }
            name => Some(name.map(|name| self.base_dir.join(name))),
        }
    }

    /// A humane duration from 0 to [`MAX_DURATION`]; `default` when absent.
    fn grace(&mut self, (path, setting): Key<'_, Humane>, default: Duration) -> Option<Duration> {
        let value = match setting {
            Setting::Unset => return Some(default),
            Setting::Set(Humane(value)) => *value,
            Setting::Bad(Value::String(s)) => {
                let err = humantime::parse_duration(s.trim()).err();
                let err = err.map(|e| e.to_string()).unwrap_or_default();
                return self.bad(path, format!(
                    "`{s}` is not a duration ({err}); write e.g. \"60s\", \"5m\", \"1h 30m\" or \"500ms\""
                ));
            }
            Setting::Bad(Value::Integer(n)) => {
                return self.bad(
                    path,
                    format!(
                    "a bare number has no unit; write a duration string, e.g. \"{n}s\" or \"60s\""
                ),
                )
            }
            Setting::Bad(other) => {
                return self.bad(
                    path,
                    format!(
                        "expected a duration string such as \"60s\" or \"5m\", found {}",
                        describe(other)
                    ),
                )
            }
        };
        if value > MAX_DURATION {
            let value = humantime::format_duration(value);
            return self.bad(
                path,
                format!("{value} is too long; every duration is at most 30 days (\"30d\")"),
            );
        }
        Some(value)
    }

    /// Like [`Check::grace`], but 0 is refused.
    fn duration(&mut self, key: Key<'_, Humane>, default: Duration) -> Option<Duration> {
        match self.grace(key, default)? {
            value if value.is_zero() => self.bad(key.0, "must be longer than 0s"),
            value => Some(value),
        }
    }

    /// A whole number in `range`; `default` when absent.
    fn count(
        &mut self,
        (path, setting): Key<'_, i64>,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> Option<usize> {
        let (min, max) = (*range.start(), *range.end());
        let n = match setting {
            Setting::Unset => return Some(default),
            Setting::Set(n) => *n,
            Setting::Bad(other) => {
                let other = describe(other);
                let message = format!("expected a whole number (e.g. {default}), found {other}");
                return self.bad(path, message);
            }
        };
        match usize::try_from(n) {
            Ok(n) if range.contains(&n) => Some(n),
            Ok(n) if n > max => self.bad(
                path,
                format!(
                "{n} is too large; the maximum is {max} (allowed {min} to {max}, default {default})"
            ),
            ),
            _ => self.bad(
                path,
                format!("{n} is too small; the minimum is {min} (default {default})"),
            ),
        }
    }

    /// A finite number (integer or float) that `ok` accepts, `rule` saying which; `default`
    /// when absent.
    fn number(
        &mut self,
        (path, setting): Key<'_, f64>,
        default: f64,
        (ok, rule): (fn(f64) -> bool, &str),
    ) -> Option<f64> {
        match setting {
            Setting::Unset => Some(default),
            Setting::Set(value) if value.is_finite() && ok(*value) => Some(*value),
            Setting::Set(value) => self.bad(
                path,
                format!("{value} is not allowed; it must be {rule} (default {default})"),
            ),
            Setting::Bad(other) => self.bad(
                path,
                format!(
                    "expected a number (e.g. {default}), found {}",
                    describe(other)
                ),
            ),
        }
    }

    /// Reads a file that holds one secret (trimmed); `what` names it in the messages.
    fn read_secret(&mut self, key: &str, path: &Path, what: &str) -> Option<String> {
        match read_file(path) {
            Ok(text) if text.trim().is_empty() => self.bad(
                key,
                format!("{} is empty; write {what} into it", path.display()),
            ),
            Ok(text) => Some(text.trim().to_string()),
            Err(err) => self.bad(key, format!("cannot read {}: {err}", path.display())),
        }
    }

    #[cfg_attr(not(unix), allow(unused_variables))]
    fn warn_if_world_readable(&mut self, key: &str, path: &Path) {
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o004 != 0 {
                self.warnings.push(format!(
                    "{key} {} is readable by every user; chmod 600 it (or 640 with the service's group)",
                    path.display()
                ));
            }
        }
    }

    fn tenants(&mut self, raw: &RawConfig) -> TenantsConfig {
        let (mut ids, mut seen) = (Vec::new(), HashSet::new());
        let mut add = |id: &str| {
            if seen.insert(id.to_string()) {
                ids.push(id.to_string());
            }
        };
        let items = self
            .typed(key!(raw.tenants.ids), "an array", describe)
            .flatten();
        for (i, item) in items.into_iter().flatten().enumerate() {
            match item.as_str().map(|id| (id, validate_tenant_id(id))) {
                Some((id, Ok(()))) => add(id),
                Some((_, Err(message))) => self.problem(format!("tenants.ids[{i}]"), message),
                None => self.problem(
                    format!("tenants.ids[{i}]"),
                    format!("expected a tenant id string, found {}", describe(item)),
                ),
            }
        }

        let file = self
            .file(key!(raw.tenants.file), "the tenant ids")
            .flatten();
        match file.as_deref().map(|path| (path.display(), read_file(path))) {
            Some((path, Ok(text))) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    // An id has no whitespace, so anything after the first blank must be a comment.
                    let (id, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
                    let rest = rest.trim_start();
                    let whole = !rest.is_empty() && !rest.starts_with('#');
                    match validate_tenant_id(if whole { line } else { id }) {
                        Ok(()) => add(id),
                        Err(message) => {
                            let message = format!("{path} line {}: {message}", n + 1);
                            self.problem("tenants.file", message);
                        }
                    }
                }
            }
            Some((path, Err(err))) => self.problem("tenants.file", format!(
                "cannot read {path}: {err}; create it (one tenant id a line; it may be empty) or remove the key"
            )),
            None => {}
        }

        let mut urls = BTreeMap::new();
        for (tenant, value) in self
            .table(key!(raw.tenants.urls))
            .flatten()
            .into_iter()
            .flatten()
        {
            let checked = match value {
                Value::String(url) => validate_tenant_id(tenant).and_then(|()| {
                    if !seen.contains(tenant.as_str()) {
                        Err(format!("`{tenant}` is not a configured tenant; add it to tenants.ids or tenants.file, or remove this override"))
                    } else if url.contains(['{', '}']) {
                        Err("an override is a complete URL: `{tenant}` and other placeholders are not replaced here".to_string())
                    } else {
                        check_url(url, &["ws", "wss"]).map(|_| url.clone())
                    }
                }),
                other => Err(format!(
                    "expected a ws:// or wss:// URL string, found {}",
                    describe(other)
                )),
            };
            match checked {
                Ok(url) => drop(urls.insert(tenant.clone(), url)),
                Err(message) => self.problem(key_path("tenants.urls", tenant), message),
            }
        }

        if ids.is_empty() {
            self.warnings.push("no tenants configured: nothing is watched until tenants.ids or tenants.file lists some (re-read on SIGHUP)".to_string());
        }
        TenantsConfig { ids, file, urls }
    }

    fn gateway(&mut self, raw: &RawConfig, tenants: &TenantsConfig) -> Option<GatewayConfig> {
        let mode = match self
            .text(key!(raw.gateway.mode))
            .map(|m| m.unwrap_or("per-tenant"))
        {
            Some("per-tenant") => Some(GatewayMode::PerTenant),
            Some("shared") => Some(GatewayMode::Shared),
            Some(other) => self.bad(
                "gateway.mode",
                format!("`{other}` is not a mode; write \"per-tenant\" or \"shared\""),
            ),
            None => None,
        };
        if mode == Some(GatewayMode::Shared) && !tenants.urls.is_empty() {
            self.problem("tenants.urls", "per-tenant URL overrides only apply with gateway.mode = \"per-tenant\"; remove [tenants.urls] or change the mode");
        }
        let url = match self.text(key!(raw.gateway.url)) {
            Some(Some(url)) => match check_gateway_url(url.trim(), mode, tenants) {
                Ok(()) => Some(url.trim().to_string()),
                Err(message) => self.bad("gateway.url", message),
            },
            Some(None) => self.bad("gateway.url", "missing; set the gateway's WebSocket URL, e.g. url = \"ws://127.0.0.1:3001/ws/{tenant}\""),
            None => None,
        };
        let state_url = match self.text(key!(raw.gateway.state_url)) {
            Some(Some(url)) => match check_template(url.trim(), &["http", "https"]) {
                Ok(()) => Some(Some(url.trim().to_string())),
                Err(message) => self.bad("gateway.state_url", message),
            },
            state_url => state_url.map(|_| None),
        };
        let token = self.token(raw);
        let has_token = matches!(token, Some((Some(_), _, _)));
        let headers = self.headers(raw, has_token);
        let ca_file = self.ca_file(key!(raw.gateway.ca_file));

        let ping = self.duration(key!(raw.gateway.ping_interval), DEFAULT_PING_INTERVAL);
        let mut idle = self.duration(key!(raw.gateway.idle_timeout), DEFAULT_IDLE_TIMEOUT);
        if let (Some(ping), Some(short)) = (ping, idle.filter(|idle| Some(*idle) <= ping)) {
            let fmt = humantime::format_duration;
            idle = self.bad("gateway.idle_timeout", format!(
                "{} must be longer than ping_interval ({}), or a healthy link would be dropped between pings; e.g. idle_timeout = \"{}\"",
                fmt(short), fmt(ping), fmt(ping * 2 + ping / 4),
            ));
        }
        let max_frame_size = self.count(
            key!(raw.gateway.max_frame_size),
            DEFAULT_MAX_FRAME_SIZE,
            MIN_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE,
        );
        let handshake_concurrency = self.count(
            key!(raw.gateway.handshake_concurrency),
            DEFAULT_HANDSHAKE_CONCURRENCY,
            1..=MAX_HANDSHAKE_CONCURRENCY,
        );
        let (token, token_env, token_file) = token?;
        Some(GatewayConfig {
            mode: mode?,
            url: url?,
            state_url: state_url?,
            token,
            token_env,
            token_file,
            headers: headers?,
            ca_file: ca_file?,
            ping_interval: ping?,
            idle_timeout: idle?,
            max_frame_size: max_frame_size?,
            handshake_concurrency: handshake_concurrency?,
        })
    }

    /// The gateway token from at most one of `token`, `token_env` and `token_file`:
    /// `(token, env var, file)`.
    #[allow(clippy::type_complexity)]
    fn token(
        &mut self,
        raw: &RawConfig,
    ) -> Option<(Option<Secret>, Option<String>, Option<PathBuf>)> {
        let inline = self.secret_text(key!(raw.gateway.token));
        let var = self.text(key!(raw.gateway.token_env));
        let file = self.file(key!(raw.gateway.token_file), "the gateway token");
        let (inline, var, file) = (inline?, var?, file?);
        let given = [
            ("token", inline.is_some()),
            ("token_env", var.is_some()),
            ("token_file", file.is_some()),
        ];
        let given: Vec<&str> = given
            .iter()
            .filter(|(_, given)| *given)
            .map(|(k, _)| *k)
            .collect();
        if let [a, .., b] = given[..] {
            let message = match given.len() {
                2 => format!("set either gateway.{a} or gateway.{b}, not both"),
                _ => "set only one of gateway.token, gateway.token_env and gateway.token_file"
                    .to_string(),
            };
            return self.bad(format!("gateway.{b}"), message);
        }
        let (path, token, var) = match (inline, var, &file) {
            (Some(token), ..) => ("gateway.token", token.trim().to_string(), None),
            (_, Some(var), _) if var.trim().is_empty() => {
                return self.bad("gateway.token_env", "empty; name the env var that holds the gateway token, e.g. \"GATEWAY_TOKEN\"")
            }
            (_, Some(var), _) => match env_var(self.env, var.trim()) {
                Some(token) => ("gateway.token_env", token, Some(var.trim())),
                None => return self.bad("gateway.token_env", format!(
                    "env var {} is not set (or is empty); export it with the gateway token, or remove token_env",
                    var.trim()
                )),
            },
            (.., Some(file)) => {
                let token = self.read_secret("gateway.token_file", file, "the gateway token")?;
                self.warn_if_world_readable("gateway.token_file", file);
                ("gateway.token_file", token, None)
            }
            _ => return Some((None, None, None)),
        };
        match check_token(&token) {
            Ok(()) => Some((Some(Secret::new(token)), var.map(str::to_string), file)),
            Err(message) => match var {
                Some(var) => self.bad(path, format!("env var {var}: {message}")),
                None => self.bad(path, message),
            },
        }
    }

    /// `[gateway.headers]` (values inline) and `[gateway.headers_env]` (values from env vars).
    fn headers(&mut self, raw: &RawConfig, has_token: bool) -> Option<Headers> {
        let before = self.problems.len();
        let tables = [
            ("gateway.headers", self.table(key!(raw.gateway.headers))),
            (
                "gateway.headers_env",
                self.table(key!(raw.gateway.headers_env)),
            ),
        ];
        let mut headers = Headers::default();
        for (section, table) in tables {
            for (name, value) in table.flatten().into_iter().flatten() {
                let from_env = section == "gateway.headers_env";
                match self.header(name, value, from_env, has_token, &headers) {
                    Ok((header, value, var)) => {
                        headers.map.insert(header, value);
                        headers.sources.push((name.clone(), var));
                    }
                    Err(message) => self.problem(key_path(section, name), message),
                }
            }
        }
        (self.problems.len() == before).then_some(headers)
    }

    /// One header: its parsed name, its value (marked sensitive) and the env var it came from.
    fn header(
        &self,
        name: &str,
        value: &Value,
        from_env: bool,
        has_token: bool,
        so_far: &Headers,
    ) -> Result<(HeaderName, HeaderValue, Option<String>), String> {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            return Err(format!("`{name}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"));
        };
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "`{name}` is set by the WebSocket handshake itself; remove it"
            ));
        }
        if header == AUTHORIZATION && has_token {
            return Err("conflicts with gateway.token / token_env, which already send Authorization; keep one".to_string());
        }
        if so_far.contains_key(&header) {
            return Err(format!(
                "`{name}` is given twice (header names ignore case); keep one"
            ));
        }
        let (text, var) = match value {
            Value::String(var) if from_env => match env_var(self.env, var.trim()) {
                Some(text) => (text, Some(var.trim().to_string())),
                None => return Err(format!(
                    "env var {} is not set (or is empty); export it with the header's value, or remove this entry",
                    var.trim()
                )),
            },
            Value::String(text) => (text.clone(), None),
            other if from_env => return Err(format!(
                "expected the name of an env var (a string), found {}",
                describe(other)
            )),
            other => return Err(format!("expected a string value, found {}", article(other.type_str()))),
        };
        let Ok(mut value) = HeaderValue::from_str(&text) else {
            let var = var
                .map(|var| format!("env var {var}: "))
                .unwrap_or_default();
            return Err(format!(
                "{var}the value must be printable ASCII (no line breaks or control characters)"
            ));
        };
        value.set_sensitive(true);
        Ok((header, value, var))
    }

    /// A PEM CA file: readable, with at least one certificate.
    fn ca_file(&mut self, key: Key<'_, String>) -> Option<Option<PathBuf>> {
        let Some(path) = self.file(key, "the CA certificate(s)")? else {
            return Some(None);
        };
        match read_file(&path) {
            Ok(text) if pem_certificates(&text) > 0 => Some(Some(path)),
            Ok(_) => self.bad(key.0, format!(
                "{} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block); give the CA certificate(s) in PEM form",
                path.display()
            )),
            Err(err) => self.bad(key.0, format!("cannot read {}: {err}", path.display())),
        }
    }

    fn backend(&mut self, raw: &RawConfig) -> Option<BackendConfig> {
        let from_file = self.text(key!(raw.backend.url));
        let allow = self.typed(
            key!(raw.backend.allow_plain_http),
            "true or false",
            describe,
        );
        let allow_plain_http = allow.map(|allow| allow.copied().unwrap_or(false));
        let (url_key, url) = match (env_var(self.env, ENV_BACKEND_URL), from_file) {
            (Some(url), _) => (
                format!("env {ENV_BACKEND_URL}"),
                Some(
                    check_backend_url(&url)
                        .map_err(|m| format!("{m} (this env var overrides backend.url)")),
                ),
            ),
            (None, Some(Some(url))) => ("backend.url".to_string(), Some(check_backend_url(url))),
            (None, Some(None)) => (
                "backend.url".to_string(),
                Some(Err(format!(
                    "missing; set backend.url = \"http://127.0.0.1:8000\" or env {ENV_BACKEND_URL}"
                ))),
            ),
            (None, None) => ("backend.url".to_string(), None),
        };
        let url = match url {
            Some(Ok(url)) => Some(url),
            Some(Err(message)) => self.bad(url_key.as_str(), message),
            None => None,
        };
        let plain = url
            .as_ref()
            .filter(|url| url.scheme() == "http" && !is_loopback(url));
        match (plain.map(|url| redact_url(url.as_str())), allow_plain_http) {
            (Some(shown), Some(true)) => self.warnings.push(format!(
                "backend.allow_plain_http: the shared secret goes to {shown} in clear (http:// to a host that is not loopback); use https:// unless this network is trusted"
            )),
            (Some(shown), Some(false)) => self.problem(url_key, format!(
                "`{shown}` would send the shared secret in clear to a host that is not loopback; use https:// (with backend.ca_file for a private CA), or set backend.allow_plain_http = true if this network is trusted"
            )),
            _ => {}
        }

        let path = match self.text(key!(raw.backend.path)) {
            Some(None) => Some(DEFAULT_BACKEND_PATH.to_string()),
            Some(Some(path)) if path.starts_with('/') && !path.contains(char::is_whitespace) && !path.contains(char::is_control) => {
                Some(path.to_string())
            }
            Some(Some(path)) => self.bad("backend.path", format!(
                "`{path}` must start with `/` and contain no whitespace, e.g. \"{DEFAULT_BACKEND_PATH}\""
            )),
            None => None,
        };
        if let (Some(url), Some(path)) = (&url, &path) {
            if url
                .path()
                .trim_end_matches('/')
                .ends_with(path.trim_end_matches('/'))
                && path != "/"
            {
                self.warnings.push(format!(
                    "backend.url {} already ends with backend.path {path}; the webhook URL would repeat it: give backend.url as the base URL only",
                    redact_url(url.as_str())
                ));
            }
        }

        let secret_file = self.file(key!(raw.backend.secret_file), "the shared secret");
        let secret = secret_file.and_then(|file| self.shared_secret(file));
        let signing = self.signing_secrets(key!(raw.backend.signing_secret_file));
        let ca_file = self.ca_file(key!(raw.backend.ca_file));
        let timeout = self.duration(key!(raw.backend.timeout), DEFAULT_BACKEND_TIMEOUT);
        let connect = self.duration(
            key!(raw.backend.connect_timeout),
            DEFAULT_BACKEND_CONNECT_TIMEOUT,
        );
        if let (Some(timeout), Some(connect)) = (timeout, connect.filter(|c| Some(*c) > timeout)) {
            let fmt = humantime::format_duration;
            self.warnings.push(format!(
                "backend.connect_timeout ({}) exceeds backend.timeout ({}), which bounds the whole request including the connect",
                fmt(connect), fmt(timeout)
            ));
        }
        let max_in_flight = self.count(
            key!(raw.backend.max_in_flight),
            DEFAULT_BACKEND_MAX_IN_FLIGHT,
            1..=MAX_BACKEND_MAX_IN_FLIGHT,
        );
        let ((secret, secret_source), (signing_secrets, signing_source)) = (secret?, signing?);
        Some(BackendConfig {
            url: url?,
            path: path?,
            secret,
            secret_source,
            signing_secrets,
            signing_source,
            ca_file: ca_file?,
            allow_plain_http: allow_plain_http?,
            timeout: timeout?,
            connect_timeout: connect?,
            max_in_flight: max_in_flight?,
        })
    }

    /// Finds the shared secret: env, else `secret_file`, else the systemd credential. A configured
    /// `secret_file` that cannot be read is a problem of its own (no silent fallback past it).
    fn shared_secret(&mut self, secret_file: Option<PathBuf>) -> Option<(Secret, SecretSource)> {
        if let Some(secret) = env_var(self.env, ENV_SHARED_SECRET) {
            return Some((Secret::new(secret), SecretSource::Env));
        }
        if let Some(path) = secret_file {
            let secret = self.read_secret("backend.secret_file", &path, "the shared secret")?;
            self.warn_if_world_readable("backend.secret_file", &path);
            return Some((Secret::new(secret), SecretSource::File(path)));
        }
        if let Some(dir) = env_var(self.env, ENV_CREDENTIALS_DIRECTORY) {
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            if path.exists() {
                let secret = self.read_secret("backend.secret", &path, "the shared secret")?;
                return Some((Secret::new(secret), SecretSource::Credential(path)));
            }
        }
        let note = match self.env.var(ENV_SHARED_SECRET) {
            Some(_) => format!(" ({ENV_SHARED_SECRET} is set but empty)"),
            None => String::new(),
        };
        self.bad("backend.secret", format!(
            "no shared secret found{note}; set env {ENV_SHARED_SECRET}, or backend.secret_file = \"/path/to/secret\", \
             or pass the systemd credential `{CREDENTIAL_NAME}` (LoadCredential={CREDENTIAL_NAME}:/path, read from ${ENV_CREDENTIALS_DIRECTORY}/{CREDENTIAL_NAME})"
        ))
    }

    /// The Standard Webhooks signing secrets: env `WEBHOOK_SIGNING_SECRET` (whitespace-separated),
    /// else `backend.signing_secret_file` (one a line, `#` comments). No value is ever echoed.
    #[allow(clippy::type_complexity)]
    fn signing_secrets(
        &mut self,
        key: Key<'_, String>,
    ) -> Option<(Vec<SigningSecret>, Option<SigningSource>)> {
        let file = self.file(key, "the signing secrets");
        // Each secret's text, where a problem with it goes and how the message names it.
        let (source, entries): (_, Vec<(String, String, String)>) = match (
            env_var(self.env, ENV_SIGNING_SECRET),
            file?,
        ) {
            (Some(text), _) => {
                let words: Vec<&str> = text.split_whitespace().collect();
                let entries = (words.iter().enumerate())
                    .map(|(i, word)| {
                        (
                            word.to_string(),
                            format!("env {ENV_SIGNING_SECRET}"),
                            format!("secret {} of {}", i + 1, words.len()),
                        )
                    })
                    .collect();
                (SigningSource::Env, entries)
            }
            (None, None) => return Some((Vec::new(), None)),
            (None, Some(path)) => {
                let text = match read_file(&path) {
                    Ok(text) => text,
                    Err(err) => {
                        return self.bad(key.0, format!("cannot read {}: {err}", path.display()))
                    }
                };
                let entries: Vec<_> = (text.lines().enumerate())
                    .map(|(n, line)| (line.trim(), n + 1))
                    .filter(|(line, _)| !line.is_empty() && !line.starts_with('#'))
                    .map(|(line, n)| {
                        (
                            line.to_string(),
                            key.0.to_string(),
                            format!("{} line {n}", path.display()),
                        )
                    })
                    .collect();
                if entries.is_empty() {
                    return self.bad(key.0, format!(
                        "{} holds no secret; write one `whsec_...` secret a line, or remove the key",
                        path.display()
                    ));
                }
                self.warn_if_world_readable(key.0, &path);
                (SigningSource::File(path), entries)
            }
        };
        let before = self.problems.len();
        let secrets = (entries.into_iter())
            .filter_map(|(text, path, at)| match SigningSecret::parse(&text) {
                Ok(secret) => Some(secret),
                Err(message) => self.bad(path, format!("{at}: {message}")),
            })
            .collect();
        (self.problems.len() == before).then_some((secrets, Some(source)))
    }

    fn debounce(&mut self, raw: &RawConfig) -> Option<Policy> {
        let d = Policy::default();
        let disconnect_grace = self.grace(key!(raw.debounce.disconnect_grace), d.disconnect_grace);
        let connect_grace = self.grace(key!(raw.debounce.connect_grace), d.connect_grace);
        let down_grace = d.gateway_down_grace.unwrap_or_default();
        let gateway_down_grace = self.grace(key!(raw.debounce.gateway_down_grace), down_grace);
        let half_life = self.duration(key!(raw.debounce.flap_half_life), d.flap_half_life);
        let max = self.duration(key!(raw.debounce.flap_max_suppress), d.flap_max_suppress);
        let above_0: (fn(f64) -> bool, &str) = (|x| x > 0.0, "a number above 0");
        let suppress = self.number(key!(raw.debounce.flap_suppress), d.flap_suppress, above_0);
        let mut reuse = self.number(key!(raw.debounce.flap_reuse), d.flap_reuse, above_0);
        let mut max_ok = Some(());
        if let (Some(suppress), Some(r)) = (suppress, reuse) {
            if r >= suppress {
                reuse = self.bad("debounce.flap_reuse", format!(
                    "{r} must be below flap_suppress ({suppress}), or a flapping tenant would never recover (defaults 750 and 3000)"
                ));
            } else if let (Some(half_life), Some(max)) = (half_life, max) {
                // SPEC section 4: the penalty is capped at reuse * 2^(max / half_life). A cap below
                // the suppress threshold would make flapping impossible to detect.
                let cap = r * (max.as_secs_f64() / half_life.as_secs_f64()).exp2();
                if cap < suppress {
                    let fmt = humantime::format_duration;
                    max_ok = self.bad("debounce.flap_max_suppress", format!(
                        "{} is too short for flap_half_life {}: the penalty cap (flap_reuse * 2^(flap_max_suppress / flap_half_life) = {cap:.0}) is below flap_suppress ({suppress}), so flapping could never be detected; raise flap_max_suppress",
                        fmt(max), fmt(half_life)
                    ));
                }
            }
        }
        let before = self.problems.len();
        let mut codes = Vec::new();
        let items = self.typed(key!(raw.debounce.terminal_codes), "an array", describe);
        for (i, item) in items.flatten().into_iter().flatten().enumerate() {
            let path = format!("debounce.terminal_codes[{i}]");
            match item.as_integer() {
                Some(n @ 100..=999) if codes.contains(&(n as u16)) => {}
                Some(n @ 100..=999) => codes.push(n as u16),
                Some(n) => self.problem(
                    path,
                    format!("{n} is not a status code; codes are 100..=999 (e.g. 401)"),
                ),
                None => self.problem(
                    path,
                    format!(
                        "expected a status code number (e.g. 401), found {}",
                        describe(item)
                    ),
                ),
            }
        }
        let terminal_codes = match items {
            Some(None) => Some(d.terminal_codes),
            _ => (self.problems.len() == before && items.is_some()).then_some(codes),
        };
        max_ok?;
        Some(Policy {
            disconnect_grace: disconnect_grace?,
            connect_grace: connect_grace?,
            terminal_codes: terminal_codes?,
            gateway_down_grace: Some(gateway_down_grace?).filter(|grace| !grace.is_zero()),
            flap_half_life: half_life?,
            flap_suppress: suppress?,
            flap_reuse: reuse?,
            flap_max_suppress: max?,
        })
    }

    /// The mass-outage hold (`[debounce] storm_*`).
    fn storm(&mut self, raw: &RawConfig) -> Option<StormPolicy> {
        let share: (fn(f64) -> bool, &str) = (
            |x| (0.0..=1.0).contains(&x),
            "a share from 0 to 1 (0 turns the mass-outage hold off)",
        );
        let fraction = self.number(
            key!(raw.debounce.storm_fraction),
            storm::DEFAULT_FRACTION,
            share,
        );
        let min_tenants = self.count(
            key!(raw.debounce.storm_min_tenants),
            storm::DEFAULT_MIN_TENANTS,
            1..=MAX_STORM_MIN_TENANTS,
        );
        let window = self.duration(key!(raw.debounce.storm_window), storm::DEFAULT_WINDOW);
        let hold = self.duration(key!(raw.debounce.storm_hold), storm::DEFAULT_HOLD);
        Some(StormPolicy {
            fraction: fraction?,
            min_tenants: min_tenants?,
            window: window?,
            hold: hold?,
        })
    }

    fn state_dir(&mut self, raw: &RawConfig) -> Option<PathBuf> {
        match self.text(key!(raw.state.dir))? {
            Some(dir) if dir.trim().is_empty() => self.bad(
                "state.dir",
                "must not be empty; remove the key to use the default",
            ),
            Some(dir) => Some(self.base_dir.join(dir)),
            // systemd joins several StateDirectory= entries with ':'; ours is the first.
            None => Some(match env_var(self.env, ENV_STATE_DIRECTORY) {
                Some(dirs) => PathBuf::from(dirs.split(':').next().unwrap_or(&dirs)),
                None => PathBuf::from(DEFAULT_STATE_DIR),
            }),
        }
    }

    fn admin(&mut self, raw: &RawConfig) -> Option<SocketAddr> {
        let Some(text) = self.text(key!(raw.admin.listen))? else {
            return Some(DEFAULT_ADMIN_LISTEN);
        };
        match text.trim().parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(addr),
            Ok(addr) => {
                self.warnings.push(format!(
                    "admin.listen {addr} is not a loopback address: the admin API (tenant ids, metrics) is reachable from the network"
                ));
                Some(addr)
            }
            Err(_) => self.bad("admin.listen", format!(
                "`{text}` is not a socket address; write an IP and a port, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\""
            )),
        }
    }

    fn log(&mut self, raw: &RawConfig) -> Option<LogFormat> {
        match self.text(key!(raw.log.format))? {
            None => Some(DEFAULT_LOG_FORMAT),
            Some("text") => Some(LogFormat::Text),
            Some("json") => Some(LogFormat::Json),
            Some(other) => self.bad(
                "log.format",
                format!("`{other}` is not a log format; write \"text\" or \"json\""),
            ),
        }
    }
}

/// Reads an env var, treating an empty or all-blank value as unset.
fn env_var(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// Parses `url` and checks its scheme is one of `schemes` and it has a host. Messages show the
/// URL redacted.
fn check_url(url: &str, schemes: &[&str]) -> Result<Url, String> {
    let shown = redact_url(url);
    let wanted: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
    let parsed = Url::parse(url.trim()).map_err(|err| {
        format!(
            "`{shown}` is not a valid URL ({err}); write e.g. \"{}host:port/...\"",
            wanted[0]
        )
    })?;
    if !schemes.contains(&parsed.scheme()) {
        let (scheme, wanted) = (parsed.scheme(), wanted.join(" or "));
        return Err(format!(
            "`{shown}` has scheme `{scheme}`; it must start with {wanted}"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{shown}` has no host"));
    }
    Ok(parsed)
}

/// The backend's base URL: http(s), with a host, and no query or fragment.
fn check_backend_url(url: &str) -> Result<Url, String> {
    let parsed = check_url(url, &["http", "https"])?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "`{}` has a query or fragment; give only the base URL (backend.path is appended to it)",
            redact_url(url)
        ));
    }
    Ok(parsed)
}

/// 127.0.0.0/8, ::1 or `localhost`: the hosts where a plain `http://` never crosses a network.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Checks a URL template: `{tenant}` is the only placeholder and the URL parses with it filled in.
fn check_template(template: &str, schemes: &[&str]) -> Result<(), String> {
    if template
        .replace(TENANT_PLACEHOLDER, "")
        .contains(['{', '}'])
    {
        let shown = redact_url(template);
        return Err(format!(
            "`{shown}` has an unknown placeholder; the only one is `{{tenant}}`"
        ));
    }
    check_url(&template.replace(TENANT_PLACEHOLDER, "tenant"), schemes).map(|_| ())
}

/// Checks the gateway URL template against the mode and the tenants' overrides.
fn check_gateway_url(
    url: &str,
    mode: Option<GatewayMode>,
    tenants: &TenantsConfig,
) -> Result<(), String> {
    check_template(url, &["ws", "wss"])?;
    let has_placeholder = url.contains(TENANT_PLACEHOLDER);
    let lacking: Vec<&str> = (tenants.ids.iter())
        .filter(|id| !tenants.urls.contains_key(*id))
        .map(String::as_str)
        .collect();
    match mode {
        Some(GatewayMode::Shared) if has_placeholder => Err(
            "shared mode uses one link for every tenant, so the URL must not contain `{tenant}`; remove it or set mode = \"per-tenant\"".to_string(),
        ),
        // With no tenants at all, "every tenant has an override" holds only vacuously: the
        // first tenant added later would have no URL, so that is refused too.
        Some(GatewayMode::PerTenant) if !has_placeholder && (tenants.ids.is_empty() || !lacking.is_empty()) => {
            let which = match lacking.len() {
                0 => String::new(),
                _ => format!(" (tenants without one: {})", lacking[..lacking.len().min(5)].join(", ")),
            };
            Err(format!(
                "per-tenant mode needs `{{tenant}}` in the URL (e.g. \"ws://127.0.0.1:3001/ws/{{tenant}}\") unless every tenant has a [tenants.urls] override{which}; or set mode = \"shared\""
            ))
        }
        _ => Ok(()),
    }
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

/// How many PEM `CERTIFICATE` blocks in `text` hold base64 that decodes to a DER sequence.
fn pem_certificates(text: &str) -> usize {
    let base64 = base64::engine::general_purpose::STANDARD;
    (text.split("-----BEGIN CERTIFICATE-----").skip(1))
        .filter_map(|block| block.split_once("-----END CERTIFICATE-----"))
        .filter(|(body, _)| {
            let body: String = body.split_whitespace().collect();
            base64
                .decode(body)
                .is_ok_and(|der| der.first() == Some(&0x30))
        })
        .count()
}
