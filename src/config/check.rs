//! The one validation pass: from the raw serde value (plus the environment and the files it
//! names) to a typed [`Config`], collecting every problem with its key path on the way.
//!
//! A helper that refuses a value records a problem and goes on with the key's default, so the
//! pass always runs to the end; the `Config` it builds is returned only when it found nothing.
//! A cross-key rule runs only on keys that are valid themselves ([`Check::fine`]), so that a
//! default standing in for a refused value cannot cause a second, misleading problem.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use http::header::HeaderName;
use humantime::format_duration as human;
use serde::Deserialize;
use toml::{Table, Value};
use url::Host;

use super::raw::*;
use super::*;
use crate::storm;
use crate::tls::TlsError;

/// Header names the WebSocket handshake sets itself; overriding them would break it.
const RESERVED_HEADERS: &str = "host connection upgrade content-length transfer-encoding \
    sec-websocket-key sec-websocket-version sec-websocket-accept sec-websocket-extensions";

/// Which numbers a key takes, and the words that say so.
type Rule = (fn(f64) -> bool, &'static str);
const ABOVE_0: Rule = (|x| x > 0.0, "a number above 0");
const SHARE: Rule = (|x| (0.0..=1.0).contains(&x), SHARE_RULE);
const SHARE_RULE: &str = "a share from 0 to 1 (0 turns the mass-outage hold off)";

/// The gateway token, and the env var or the file it came from.
type Token = (Option<Secret>, Option<String>, Option<PathBuf>);

/// What [`Check::leaf`] makes of a key's value.
type Checker<'c, T, U> = &'c dyn Fn(&T) -> Result<U, String>;

/// Parses and checks config text; relative paths in it resolve against `base_dir`.
pub(super) fn parse(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, Vec<Problem>> {
    let mut root: Table = text.parse().map_err(|err| syntax(text, err))?;
    let (problems, unknown) = take_unknown_keys(&mut root);
    let warnings = Vec::new();
    let mut c = Check {
        problems,
        warnings,
        env,
        base_dir,
    };
    let config = match RawConfig::deserialize(Value::Table(root)) {
        Ok(raw) => c.config(&raw),
        Err(err) => c.bad("", format!("invalid configuration: {}", err.message())),
    };
    let (mut problems, warnings) = (c.problems, c.warnings);
    problems.extend(unknown);
    match config {
        Some(config) if problems.is_empty() => return Ok(Config { warnings, ..config }),
        // Every refused value comes with a problem; stay total should that ever not hold.
        _ if problems.is_empty() => problems.push(Problem::new("", "invalid configuration")),
        _ => {}
    }
    // Group by section in file order (an env var with the section it overrides); a stable sort
    // keeps the pass order within each.
    let sections = sections();
    problems.sort_by_key(|problem| {
        let head = problem.path.split(['.', '[']).next().unwrap_or_default();
        let env = head.starts_with("env ");
        let head = if env { "backend" } else { head };
        let at = sections.iter().position(|section| *section == head);
        at.unwrap_or(sections.len())
    });
    Err(problems)
}

/// The one problem of text that is not TOML, with where it is.
fn syntax(text: &str, err: toml::de::Error) -> Vec<Problem> {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return vec![Problem::new("", format!("invalid TOML: {message}"))];
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let message = format!("invalid TOML at line {line}, column {column}: {message}");
    vec![Problem::new("", message)]
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
        let tenants = self.tenants(&raw.tenants);
        let gateway = self.gateway(&raw.gateway, &tenants);
        let backend = self.backend(&raw.backend);
        // Fields are evaluated in order: every check runs before `backend?` can return.
        Some(Config {
            gateway,
            debounce: self.debounce(&raw.debounce),
            storm: self.storm(&raw.debounce),
            state: self.state(&raw.state),
            admin: self.admin(&raw.admin),
            log: self.log(&raw.log),
            warnings: Vec::new(),
            tenants,
            backend: backend?,
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

    /// The value, or `None` and a problem at `path` with the message.
    fn take<T>(&mut self, path: impl Into<String>, value: Result<T, String>) -> Option<T> {
        value.map_err(|message| self.problem(path, message)).ok()
    }

    /// No problem was found at any of `paths`: a cross-key rule may trust their values.
    fn fine(&self, paths: &[&str]) -> bool {
        let at = |problem: &Problem| paths.contains(&problem.path.as_str());
        !self.problems.iter().any(at)
    }

    /// The key's value when it is set and of type `T`; a problem saying what was `expected`
    /// when it is of another type.
    fn get<'r, T>(&mut self, (path, setting): Key<'r, T>, expected: &str) -> Option<&'r T> {
        let found = match setting {
            Setting::Unset => return None,
            Setting::Set(value) => return Some(value),
            Setting::Bad(value) => describe(value),
        };
        self.bad(path, format!("expected {expected}, found {found}"))
    }

    /// What `check` makes of the key's value; `default` when the key is absent, or (with a
    /// problem) when its value is of another type or `check` refuses it.
    fn leaf<T, U>(&mut self, key: Key<T>, default: U, expected: &str, check: Checker<T, U>) -> U {
        let value = self.get(key, expected).map(check);
        let value = value.and_then(|value| self.take(key.0, value));
        value.unwrap_or(default)
    }

    fn text<'r>(&mut self, key: Key<'r, String>) -> Option<&'r str> {
        self.get(key, "a string").map(String::as_str)
    }

    fn table<'r>(&mut self, key: Key<'r, Table>) -> Option<&'r Table> {
        let expected = format!("a table (`[{}]` with one `name = \"value\"` a line)", key.0);
        self.get(key, &expected)
    }

    /// A file named by the key, resolved against the config's directory.
    fn file(&mut self, key: Key<String>, what: &str) -> Option<PathBuf> {
        let empty = format!("empty; name the file that holds {what}, or remove the key");
        let base = self.base_dir;
        let file = |name: &String| match name.trim() {
            "" => Err(empty.clone()),
            _ => Ok(Some(base.join(name))),
        };
        self.leaf(key, None, "a string", &file)
    }

    /// A humane duration up to [`MAX_DURATION`], longer than 0 unless a `grace` period; `default`
    /// when absent.
    fn duration(&mut self, key: Key<Span>, default: Duration, grace: bool) -> Duration {
        let expected = "a duration string such as \"60s\" or \"5m\"";
        self.leaf(key, default, expected, &|span| match span {
            Span::Bare(n) => Err(format!("a bare number has no unit; write a duration string, e.g. \"{n}s\" or \"{n}ms\"")),
            Span::Text(s) => match humantime::parse_duration(s.trim()) {
                Err(err) => Err(format!("`{s}` is not a duration ({err}); write e.g. \"60s\", \"5m\", \"1h 30m\" or \"500ms\"")),
                Ok(d) if d > MAX_DURATION => Err(format!("{} is too long; every duration is at most 30 days (\"30d\")", human(d))),
                Ok(d) if d.is_zero() && !grace => Err("must be longer than 0s".to_string()),
                Ok(d) => Ok(d),
            },
        })
    }

    /// A whole number in `range`; `default` when absent.
    fn count(&mut self, key: Key<i64>, default: usize, range: RangeInclusive<usize>) -> usize {
        let (min, max) = (*range.start(), *range.end());
        self.leaf(key, default, &format!("a whole number (e.g. {default})"), &|n| match usize::try_from(*n) {
            Ok(n) if range.contains(&n) => Ok(n),
            Ok(n) if n > max => Err(format!("{n} is too large; the maximum is {max} (allowed {min} to {max}, default {default})")),
            _ => Err(format!("{n} is too small; the minimum is {min} (default {default})")),
        })
    }

    /// A finite number (integer or float) that the rule accepts; `default` when absent.
    fn number(&mut self, key: Key<f64>, default: f64, (ok, rule): Rule) -> f64 {
        let expected = format!("a number (e.g. {default})");
        let refused = |x: f64| format!("{x} is not allowed; it must be {rule} (default {default})");
        let number = |&x: &f64| match x.is_finite() && ok(x) {
            true => Ok(x),
            false => Err(refused(x)),
        };
        self.leaf(key, default, &expected, &number)
    }

    /// Reads a file that holds one secret (trimmed); `what` names it in the messages.
    fn read_secret(&mut self, key: &str, path: &Path, what: &str) -> Option<String> {
        let (shown, text) = (path.display(), read_file(path));
        let secret = match text.as_deref().map(str::trim) {
            Ok("") => Err(format!("{shown} is empty; write {what} into it")),
            Ok(secret) => Ok(secret.to_string()),
            Err(err) => Err(format!("cannot read {shown}: {err}")),
        };
        self.take(key, secret)
    }

    #[cfg_attr(not(unix), allow(unused_variables))]
    fn warn_if_world_readable(&mut self, key: &str, path: &Path) {
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o004 != 0 {
                self.warnings.push(format!("{key} {} is readable by every user; chmod 600 it (or 640 with the service's group)", path.display()));
            }
        }
    }

    fn tenants(&mut self, t: &RawTenants) -> TenantsConfig {
        let mut ids = Vec::new();
        let items = self.get(t.ids(), "an array");
        for (i, item) in items.into_iter().flatten().enumerate() {
            let expected = || format!("expected a tenant id string, found {}", describe(item));
            let id = item.as_str().ok_or_else(expected);
            let id = id.and_then(|id| validate_tenant_id(id).map(|()| id.to_string()));
            ids.extend(self.take(format!("tenants.ids[{i}]"), id));
        }
        let file = self.file(t.file(), "the tenant ids");
        match file.as_deref().map(|path| (path.display(), read_file(path))) {
            Some((path, Ok(text))) => {
                for (n, line) in entries(&text) {
                    // An id has no whitespace, so anything after the first blank must be a comment.
                    let id = match line.split_once(char::is_whitespace) {
                        Some((id, rest)) if rest.trim_start().starts_with('#') => id,
                        _ => line,
                    };
                    let id = validate_tenant_id(id).map(|()| id.to_string());
                    let id = id.map_err(|message| format!("{path} line {n}: {message}"));
                    ids.extend(self.take("tenants.file", id));
                }
            }
            Some((path, Err(err))) if err.kind() == std::io::ErrorKind::NotFound => self.problem("tenants.file", format!("cannot read {path}: {err}; create it (one tenant id a line; it may be empty) or remove the key")),
            Some((path, Err(err))) => self.problem("tenants.file", format!("cannot read {path}: {err}")),
            None => {}
        }
        let mut seen = HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        let mut urls = BTreeMap::new();
        for (tenant, value) in self.table(t.urls()).into_iter().flatten() {
            let url = check_override(tenant, value, &seen);
            if let Some(url) = self.take(key_path("tenants.urls", tenant), url) {
                urls.insert(tenant.clone(), url);
            }
        }
        if ids.is_empty() {
            self.warnings.push("no tenants configured: nothing is watched until tenants.ids or tenants.file lists some (re-read on SIGHUP)".to_string());
        }
        TenantsConfig { ids, file, urls }
    }

    fn gateway(&mut self, g: &RawGateway, tenants: &TenantsConfig) -> GatewayConfig {
        let mode = |mode: &String| choose(mode, "mode", GatewayMode::NAMES);
        let mode = self.leaf(g.mode(), DEFAULT_GATEWAY_MODE, "a string", &mode);
        let known_mode = self.fine(&["gateway.mode"]).then_some(mode);
        if known_mode == Some(GatewayMode::Shared) && !tenants.urls.is_empty() {
            self.problem("tenants.urls", "per-tenant URL overrides only apply with gateway.mode = \"per-tenant\"; remove [tenants.urls] or change the mode");
        }
        if let (_, Setting::Unset) = g.url() {
            self.problem("gateway.url", "missing; set the gateway's WebSocket URL, e.g. url = \"ws://127.0.0.1:3001/ws/{tenant}\"");
        }
        let url = |url: &String| check_gateway_url(url.trim(), known_mode, tenants);
        let url = self.leaf(g.url(), String::new(), "a string", &url);
        let state_url = |url: &String| check_template(url.trim(), &["http", "https"]).map(Some);
        let state_url = self.leaf(g.state_url(), None, "a string", &state_url);
        let (token, token_env, token_file) = self.token(g).unwrap_or_default();
        let headers = self.headers(g, token.is_some());
        let ping_interval = self.duration(g.ping_interval(), DEFAULT_PING_INTERVAL, false);
        let idle_timeout = self.duration(g.idle_timeout(), DEFAULT_IDLE_TIMEOUT, false);
        let (idle, ping) = (idle_timeout, ping_interval);
        if ping < MIN_PING_INTERVAL && self.fine(&["gateway.ping_interval"]) {
            self.problem("gateway.ping_interval", format!("{} is too short: every link would ping the gateway that often (\"1ns\" kept a gateway core busy for two links); the minimum is {}, the default {}", human(ping), human(MIN_PING_INTERVAL), human(DEFAULT_PING_INTERVAL)));
        }
        if idle <= ping && self.fine(&["gateway.ping_interval", "gateway.idle_timeout"]) {
            self.problem("gateway.idle_timeout", format!("{} must be longer than ping_interval ({}), or a healthy link would be dropped between pings; e.g. idle_timeout = \"{}\"", human(idle), human(ping), human(ping * 2 + ping / 4)));
        }
        let frames = MIN_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE;
        let handshakes = 1..=MAX_HANDSHAKE_CONCURRENCY;
        let handshake = DEFAULT_HANDSHAKE_CONCURRENCY;
        GatewayConfig {
            mode,
            url,
            state_url,
            token,
            token_env,
            token_file,
            headers,
            ca_file: self.ca_file(g.ca_file()),
            ping_interval,
            idle_timeout,
            max_frame_size: self.count(g.max_frame_size(), DEFAULT_MAX_FRAME_SIZE, frames),
            handshake_concurrency: self.count(g.handshake_concurrency(), handshake, handshakes),
        }
    }

    /// The gateway token from at most one of `token`, `token_env` and `token_file`, with the
    /// env var or the file it came from.
    fn token(&mut self, g: &RawGateway) -> Option<Token> {
        // A token of the wrong type is not echoed, not even its length.
        let found = |value: &Value| format!("expected a string, found {}", article(value));
        let inline = match g.token().1 {
            Setting::Set(token) => Some(token.trim()),
            Setting::Bad(value) => self.bad("gateway.token", found(value)),
            Setting::Unset => None,
        };
        let var = self.text(g.token_env()).map(str::trim);
        let file = self.file(g.token_file(), "the gateway token");
        if !self.fine(&["gateway.token", "gateway.token_env", "gateway.token_file"]) {
            return None;
        }
        let set = [inline.is_some(), var.is_some(), file.is_some()];
        let given = ["token", "token_env", "token_file"].into_iter().zip(set);
        let given: Vec<&str> = given.filter_map(|(key, set)| set.then_some(key)).collect();
        if let [a, .., b] = given[..] {
            let message = match given.len() {
                2 => format!("set either gateway.{a} or gateway.{b}, not both"),
                _ => {
                    "set only one of gateway.token, gateway.token_env and gateway.token_file".into()
                }
            };
            return self.bad(format!("gateway.{b}"), message);
        }
        let (path, token) = match (inline, var, &file) {
            (Some(token), ..) => ("gateway.token", token.to_string()),
            (_, Some(""), _) => return self.bad("gateway.token_env", "empty; name the env var that holds the gateway token, e.g. \"GATEWAY_TOKEN\""),
            (_, Some(var), _) => match env_var(self.env, var) {
                Some(token) => ("gateway.token_env", token),
                None => return self.bad("gateway.token_env", format!("env var {var} is not set (or is empty); export it with the gateway token, or remove token_env")),
            },
            (.., Some(file)) => {
                let token = self.read_secret("gateway.token_file", file, "the gateway token")?;
                self.warn_if_world_readable("gateway.token_file", file);
                ("gateway.token_file", token)
            }
            _ => return Some((None, None, None)),
        };
        // The token goes into `Authorization: Bearer <token>`: visible ASCII only.
        let problem = match () {
            _ if token.is_empty() => "the gateway token is empty; give one or remove the key",
            _ if !token.bytes().all(|b| b.is_ascii_graphic()) => {
                "the gateway token must be printable ASCII without spaces"
            }
            _ => return Some((Some(Secret::new(token)), var.map(str::to_string), file)),
        };
        let from = var.map(|var| format!("env var {var}: "));
        self.bad(path, format!("{}{problem}", from.unwrap_or_default()))
    }

    /// `[gateway.headers]` (values inline) and `[gateway.headers_env]` (values from env vars).
    fn headers(&mut self, g: &RawGateway, has_token: bool) -> Headers {
        let mut headers = Headers::default();
        for (key, from_env) in [(g.headers(), false), (g.headers_env(), true)] {
            for (name, value) in self.table(key).into_iter().flatten() {
                let added = add_header(&mut headers, self.env, (name, value), from_env, has_token);
                self.take(key_path(key.0, name), added);
            }
        }
        headers
    }

    /// A PEM CA file that the TLS clients will load: readable, every certificate in it a
    /// usable trust anchor, at least one.
    fn ca_file(&mut self, key: Key<String>) -> Option<PathBuf> {
        let path = self.file(key, "the CA certificate(s)")?;
        let shown = path.display();
        let problem = match crate::tls::ca_roots(&path) {
            Ok(_) => return Some(path),
            Err(TlsError::Read { error, .. }) => format!("cannot read {shown}: {error}"),
            Err(TlsError::Empty { .. }) => format!("{shown} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block); give the CA certificate(s) in PEM form"),
            Err(other) => format!("{other}; give the CA certificate(s) in PEM form"),
        };
        self.bad(key.0, problem)
    }

    fn backend(&mut self, b: &RawBackend) -> Option<BackendConfig> {
        let from_file = self.text(b.url());
        let allow_plain_http = self.get(b.allow_plain_http(), "true or false") == Some(&true);
        let env_url = env_var(self.env, ENV_BACKEND_URL);
        let url_key = env_url
            .as_ref()
            .map_or("backend.url".into(), |_| format!("env {ENV_BACKEND_URL}"));
        let overrides = |m| format!("{m} (this env var overrides backend.url)");
        let url = match (env_url, from_file, b.url().1) {
            (Some(url), ..) => Some(check_url(&url, &["http", "https"], true).map_err(overrides)),
            (None, Some(url), _) => Some(check_url(url, &["http", "https"], true)),
            (None, None, Setting::Unset) => Some(Err(format!(
                "missing; set backend.url = \"http://127.0.0.1:8000\" or env {ENV_BACKEND_URL}"
            ))),
            (None, None, _) => None,
        };
        let url = url.and_then(|url| self.take(url_key.as_str(), url));
        let plain = url.as_ref().filter(|url| url.scheme() == "http");
        let plain = plain.filter(|url| !is_loopback(url));
        if let Some(shown) = plain.map(|url| redact_url(url.as_str())) {
            if allow_plain_http {
                self.warnings.push(format!("backend.allow_plain_http: the shared secret goes to {shown} in clear (http:// to a host that is not loopback); use https:// unless this network is trusted"));
            } else if self.fine(&["backend.allow_plain_http"]) {
                self.problem(url_key, format!("`{shown}` would send the shared secret in clear to a host that is not loopback; use https:// (with backend.ca_file for a private CA), or set backend.allow_plain_http = true if this network is trusted"));
            }
        }
        let path = self.leaf(b.path(), DEFAULT_BACKEND_PATH.to_string(), "a string", &|path| {
            let fine = path.starts_with('/') && !path.contains(|c: char| c.is_whitespace() || c.is_control());
            let problem = || format!("`{path}` must start with `/` and contain no whitespace, e.g. \"{DEFAULT_BACKEND_PATH}\"");
            fine.then(|| path.clone()).ok_or_else(problem)
        });
        let (tail, url_path) = (path.trim_end_matches('/'), url.as_ref().map(Url::path));
        if path != "/" && url_path.is_some_and(|url| url.trim_end_matches('/').ends_with(tail)) {
            let url = url.as_ref().map(|url| redact_url(url.as_str()));
            self.warnings.push(format!("backend.url {} already ends with backend.path {path}; the webhook URL would repeat it: give backend.url as the base URL only", url.unwrap_or_default()));
        }
        let secret_file = self.file(b.secret_file(), "the shared secret");
        let fine = self.fine(&["backend.secret_file"]);
        let secret = fine.then(|| self.shared_secret(secret_file)).flatten();
        let (signing_secrets, signing_source) = self.signing_secrets(b.signing_secret_file());
        let timeout = self.duration(b.timeout(), DEFAULT_BACKEND_TIMEOUT, false);
        let connect_timeout =
            self.duration(b.connect_timeout(), DEFAULT_BACKEND_CONNECT_TIMEOUT, false);
        if connect_timeout > timeout {
            self.warnings.push(format!("backend.connect_timeout ({}) exceeds backend.timeout ({}), which bounds the whole request including the connect", human(connect_timeout), human(timeout)));
        }
        let (in_flight, default) = (1..=MAX_BACKEND_MAX_IN_FLIGHT, DEFAULT_BACKEND_MAX_IN_FLIGHT);
        let ca_file = self.ca_file(b.ca_file());
        let max_in_flight = self.count(b.max_in_flight(), default, in_flight);
        let ((secret, secret_source), url) = (secret?, url?);
        Some(BackendConfig {
            url,
            path,
            secret,
            secret_source,
            signing_secrets,
            signing_source,
            ca_file,
            allow_plain_http,
            timeout,
            connect_timeout,
            max_in_flight,
        })
    }

    /// Finds the shared secret: env, else `secret_file`, else the systemd credential. A configured
    /// `secret_file` that cannot be read is a problem of its own (no silent fallback past it).
    fn shared_secret(&mut self, secret_file: Option<PathBuf>) -> Option<(Secret, SecretSource)> {
        let credentials = env_var(self.env, ENV_CREDENTIALS_DIRECTORY);
        let credential = credentials.map(|dir| Path::new(&dir).join(CREDENTIAL_NAME));
        let (key, secret, source) = if let Some(secret) = env_var(self.env, ENV_SHARED_SECRET) {
            ("backend.secret", secret, SecretSource::Env)
        } else if let Some(path) = secret_file {
            let secret = self.read_secret("backend.secret_file", &path, "the shared secret")?;
            self.warn_if_world_readable("backend.secret_file", &path);
            ("backend.secret_file", secret, SecretSource::File(path))
        } else if let Some(path) = credential.filter(|path| path.exists()) {
            let secret = self.read_secret("backend.secret", &path, "the shared secret")?;
            ("backend.secret", secret, SecretSource::Credential(path))
        } else {
            return self.no_shared_secret();
        };
        // It travels as the X-INTERNAL-SECRET header. Other bytes would reach the backend (WSGI
        // reads headers as Latin-1) as a different string, and `run` refuses them.
        if !secret.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            let from = match &source {
                SecretSource::Env => format!("env {ENV_SHARED_SECRET}"),
                SecretSource::File(path) | SecretSource::Credential(path) => {
                    path.display().to_string()
                }
            };
            return self.bad(key, format!("the shared secret in {from} must be printable ASCII (it is sent as the X-INTERNAL-SECRET header); write it without accents, other non-ASCII letters or control characters"));
        }
        Some((Secret::new(secret), source))
    }

    fn no_shared_secret(&mut self) -> Option<(Secret, SecretSource)> {
        let blank = self.env.var(ENV_SHARED_SECRET);
        let blank = blank.map(|_| format!(" ({ENV_SHARED_SECRET} is set but empty)"));
        self.bad("backend.secret", format!(
            "no shared secret found{}; set env {ENV_SHARED_SECRET}, or backend.secret_file = \"/path/to/secret\", \
             or pass the systemd credential `{CREDENTIAL_NAME}` (LoadCredential={CREDENTIAL_NAME}:/path, read from ${ENV_CREDENTIALS_DIRECTORY}/{CREDENTIAL_NAME})",
            blank.unwrap_or_default()
        ))
    }

    /// The Standard Webhooks signing secrets: env `WEBHOOK_SIGNING_SECRET` (whitespace-separated),
    /// else `backend.signing_secret_file` (one a line, `#` comments). No value is ever echoed.
    fn signing_secrets(&mut self, key: Key<String>) -> (Vec<SigningSecret>, Option<SigningSource>) {
        let file = self.file(key, "the signing secrets");
        // Each secret with how a message names it, and where a problem with one goes.
        let signing = env_var(self.env, ENV_SIGNING_SECRET);
        let (source, entries, path): (_, Vec<(String, String)>, _) = match (signing, file) {
            _ if !self.fine(&[key.0]) => return Default::default(),
            (Some(text), _) => {
                let n = text.split_whitespace().count();
                let name = |(i, word): (usize, &str)| (word.into(), format!("secret {i} of {n}"));
                let entries = (1..).zip(text.split_whitespace()).map(name).collect();
                (
                    SigningSource::Env,
                    entries,
                    format!("env {ENV_SIGNING_SECRET}"),
                )
            }
            (None, Some(file)) => {
                let (shown, text) = (file.display(), read_file(&file));
                let lines = text.as_deref().map(entries).into_iter().flatten();
                let entries: Vec<_> = lines
                    .map(|(n, line)| (line.to_string(), format!("{shown} line {n}")))
                    .collect();
                let problem = match text {
                    Err(err) => format!("cannot read {shown}: {err}"),
                    Ok(_) if entries.is_empty() => format!("{shown} holds no secret; write one `whsec_...` secret a line, or remove the key"),
                    Ok(_) => String::new(),
                };
                if !problem.is_empty() {
                    return self.bad(key.0, problem).unwrap_or_default();
                }
                self.warn_if_world_readable(key.0, &file);
                (SigningSource::File(file), entries, key.0.to_string())
            }
            (None, None) => return Default::default(),
        };
        let parse = |(text, at): &(String, String)| {
            SigningSecret::parse(text).map_err(|m| format!("{at}: {m}"))
        };
        let secrets = entries.iter().map(parse);
        let secrets = secrets.filter_map(|secret| self.take(path.as_str(), secret));
        (secrets.collect(), Some(source))
    }

    fn debounce(&mut self, r: &RawDebounce) -> Policy {
        let d = Policy::default();
        let down_grace = d.gateway_down_grace.unwrap_or_default();
        let down_grace = self.duration(r.gateway_down_grace(), down_grace, true);
        let p = Policy {
            disconnect_grace: self.duration(r.disconnect_grace(), d.disconnect_grace, true),
            connect_grace: self.duration(r.connect_grace(), d.connect_grace, true),
            terminal_codes: self.terminal_codes(r.terminal_codes(), d.terminal_codes),
            gateway_down_grace: Some(down_grace).filter(|grace| !grace.is_zero()),
            flap_half_life: self.duration(r.flap_half_life(), d.flap_half_life, false),
            flap_suppress: self.number(r.flap_suppress(), d.flap_suppress, ABOVE_0),
            flap_reuse: self.number(r.flap_reuse(), d.flap_reuse, ABOVE_0),
            flap_max_suppress: self.duration(r.flap_max_suppress(), d.flap_max_suppress, false),
        };
        let (suppress, reuse) = (p.flap_suppress, p.flap_reuse);
        let (half_life, max) = (p.flap_half_life, p.flap_max_suppress);
        // SPEC section 4: the penalty is capped at reuse * 2^(max / half_life). A cap below the
        // suppress threshold would make flapping impossible to detect.
        let cap = reuse * (max.as_secs_f64() / half_life.as_secs_f64()).exp2();
        let capped = ["debounce.flap_half_life", "debounce.flap_max_suppress"];
        if !self.fine(&["debounce.flap_suppress", "debounce.flap_reuse"]) {
        } else if reuse >= suppress {
            self.problem("debounce.flap_reuse", format!("{reuse} must be below flap_suppress ({suppress}), or a flapping tenant would never recover (defaults 750 and 3000)"));
        } else if cap < suppress && self.fine(&capped) {
            self.problem("debounce.flap_max_suppress", format!("{} is too short for flap_half_life {}: the penalty cap (flap_reuse * 2^(flap_max_suppress / flap_half_life) = {cap:.0}) is below flap_suppress ({suppress}), so flapping could never be detected; raise flap_max_suppress", human(max), human(half_life)));
        }
        p
    }

    fn terminal_codes(&mut self, key: Key<Vec<Value>>, default: Vec<u16>) -> Vec<u16> {
        let Some(items) = self.get(key, "an array") else {
            return default;
        };
        let mut codes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let code = match item.as_integer() {
                Some(n @ 100..=999) => Ok(n as u16),
                Some(n) => Err(format!(
                    "{n} is not a status code; codes are 100..=999 (e.g. 401)"
                )),
                None => Err(format!(
                    "expected a status code number (e.g. 401), found {}",
                    describe(item)
                )),
            };
            let code = self.take(format!("{}[{i}]", key.0), code);
            codes.extend(code.filter(|code| !codes.contains(code)));
        }
        codes
    }

    /// The mass-outage hold (`[debounce] storm_*`).
    fn storm(&mut self, r: &RawDebounce) -> StormPolicy {
        let (tenants, default) = (1..=MAX_STORM_MIN_TENANTS, storm::DEFAULT_MIN_TENANTS);
        StormPolicy {
            fraction: self.number(r.storm_fraction(), storm::DEFAULT_FRACTION, SHARE),
            min_tenants: self.count(r.storm_min_tenants(), default, tenants),
            window: self.duration(r.storm_window(), storm::DEFAULT_WINDOW, false),
            hold: self.duration(r.storm_hold(), storm::DEFAULT_HOLD, false),
        }
    }

    fn state(&mut self, r: &RawState) -> StateConfig {
        // systemd joins several StateDirectory= entries with ':'; ours is the first.
        let from_env = env_var(self.env, ENV_STATE_DIRECTORY);
        let from_env = from_env.map(|dirs| dirs.split(':').next().unwrap_or("").into());
        let (default, base) = (from_env.unwrap_or(DEFAULT_STATE_DIR.into()), self.base_dir);
        let dir = |dir: &String| match dir.trim() {
            "" => Err("must not be empty; remove the key to use the default".to_string()),
            _ => Ok(base.join(dir)),
        };
        let dir = self.leaf(r.dir(), default, "a string", &dir);
        StateConfig { dir }
    }

    fn admin(&mut self, r: &RawAdmin) -> AdminConfig {
        let listen = self.leaf(r.listen(), DEFAULT_ADMIN_LISTEN, "a string", &|text| {
            text.trim().parse().map_err(|_| format!("`{text}` is not a socket address; write an IP and a port, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\""))
        });
        if !listen.ip().is_loopback() {
            self.warnings.push(format!("admin.listen {listen} is not a loopback address: the admin API (tenant ids, metrics) is reachable from the network"));
        }
        AdminConfig { listen }
    }

    fn log(&mut self, r: &RawLog) -> LogConfig {
        let format = |format: &String| choose(format, "log format", LogFormat::NAMES);
        let format = self.leaf(r.format(), DEFAULT_LOG_FORMAT, "a string", &format);
        LogConfig { format }
    }
}

/// The option named `name`, or a problem saying it is not a `what` and listing the options.
fn choose<T: Copy>(name: &str, what: &str, options: &[(&str, T)]) -> Result<T, String> {
    let chosen = options.iter().find(|(option, _)| *option == name);
    let names: Vec<String> = options
        .iter()
        .map(|(option, _)| format!("\"{option}\""))
        .collect();
    let problem = || format!("`{name}` is not a {what}; write {}", names.join(" or "));
    chosen.map(|(_, value)| *value).ok_or_else(problem)
}

/// Reads an env var, treating an empty or all-blank value as unset.
fn env_var(env: &dyn Env, name: &str) -> Option<String> {
    let value = env.var(name).map(|value| value.trim().to_string());
    value.filter(|value| !value.is_empty())
}

/// The lines of a list file that hold something: their number and their trimmed text, blank
/// lines and `#` comments left out.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let lines = (1..).zip(text.lines().map(str::trim));
    lines.filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// Parses `url` and checks its scheme is one of `schemes` and it has a host, and, `bare` (the
/// backend's base URL), that it has no query, fragment, user or password. Messages show the URL
/// redacted.
fn check_url(url: &str, schemes: &[&str], bare: bool) -> Result<Url, String> {
    let shown = redact_url(url);
    let wanted: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
    let example = &wanted[0];
    let invalid = |err| {
        format!("`{shown}` is not a valid URL ({err}); write e.g. \"{example}host:port/...\"")
    };
    let parsed = Url::parse(url.trim()).map_err(invalid)?;
    let problem = match parsed.scheme() {
        scheme if !schemes.contains(&scheme) => format!(
            "has scheme `{scheme}`; it must start with {}",
            wanted.join(" or ")
        ),
        _ if parsed.host_str().is_none_or(str::is_empty) => "has no host".to_string(),
        _ if bare && (parsed.query().is_some() || parsed.fragment().is_some()) => {
            "has a query or fragment; give only the base URL (backend.path is appended to it)"
                .to_string()
        }
        _ if bare && (!parsed.username().is_empty() || parsed.password().is_some()) => {
            "carries a user or password; remove them (the shared secret goes in X-INTERNAL-SECRET)"
                .to_string()
        }
        _ => return Ok(parsed),
    };
    Err(format!("`{shown}` {problem}"))
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

/// Checks a URL template: `{tenant}` is the only placeholder and the URL parses with it filled
/// in. Gives back the template.
fn check_template(template: &str, schemes: &[&str]) -> Result<String, String> {
    if template
        .replace(TENANT_PLACEHOLDER, "")
        .contains(['{', '}'])
    {
        let shown = redact_url(template);
        return Err(format!(
            "`{shown}` has an unknown placeholder; the only one is `{{tenant}}`"
        ));
    }
    let filled = template.replace(TENANT_PLACEHOLDER, "tenant");
    check_url(&filled, schemes, false).map(|_| template.to_string())
}

/// Checks the gateway URL template against the mode and the tenants' overrides.
fn check_gateway_url(
    url: &str,
    mode: Option<GatewayMode>,
    urls: &TenantsConfig,
) -> Result<String, String> {
    let url = check_template(url, &["ws", "wss"])?;
    let has_placeholder = url.contains(TENANT_PLACEHOLDER);
    let lacking = urls.ids.iter().filter(|id| !urls.urls.contains_key(*id));
    let lacking: Vec<&str> = lacking.map(String::as_str).take(5).collect();
    match mode {
        Some(GatewayMode::Shared) if has_placeholder => Err("shared mode uses one link for every tenant, so the URL must not contain `{tenant}`; remove it or set mode = \"per-tenant\"".to_string()),
        // With no tenants at all, "every tenant has an override" holds only vacuously: the
        // first tenant added later would have no URL, so that is refused too.
        Some(GatewayMode::PerTenant) if !has_placeholder && (urls.ids.is_empty() || !lacking.is_empty()) => {
            let which = match lacking.join(", ") {
                none if none.is_empty() => none,
                some => format!(" (tenants without one: {some})"),
            };
            Err(format!("per-tenant mode needs `{{tenant}}` in the URL (e.g. \"ws://127.0.0.1:3001/ws/{{tenant}}\") unless every tenant has a [tenants.urls] override{which}; or set mode = \"shared\""))
        }
        _ => Ok(url),
    }
}

/// A `[tenants.urls]` entry: a complete ws(s) URL for a configured tenant.
fn check_override(tenant: &str, value: &Value, seen: &HashSet<String>) -> Result<String, String> {
    let Value::String(url) = value else {
        return Err(format!(
            "expected a ws:// or wss:// URL string, found {}",
            describe(value)
        ));
    };
    validate_tenant_id(tenant)?;
    if !seen.contains(tenant) {
        return Err(format!("`{tenant}` is not a configured tenant; add it to tenants.ids or tenants.file, or remove this override"));
    }
    if url.contains(['{', '}']) {
        return Err("an override is a complete URL: `{tenant}` and other placeholders are not replaced here".to_string());
    }
    check_url(url, &["ws", "wss"], false).map(|_| url.clone())
}

/// Adds one header of `[gateway.headers]` (or, `from_env`, of `[gateway.headers_env]`, whose
/// values name env vars), its value marked sensitive. The message never echoes the value.
fn add_header(
    headers: &mut Headers,
    env: &dyn Env,
    (name, value): (&str, &Value),
    from_env: bool,
    has_token: bool,
) -> Result<(), String> {
    let invalid = |_| {
        format!(
            "`{name}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        )
    };
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(invalid)?;
    let reserved = RESERVED_HEADERS.split_whitespace().any(|r| r == header);
    let problem = match header {
        _ if reserved => format!("`{name}` is set by the WebSocket handshake itself; remove it"),
        AUTHORIZATION if has_token => {
            "conflicts with gateway.token / token_env, which already send Authorization; keep one"
                .to_string()
        }
        _ if headers.map.contains_key(&header) => {
            format!("`{name}` is given twice (header names ignore case); keep one")
        }
        _ => match (value, from_env) {
            (Value::String(_), _) => String::new(),
            (other, true) => format!(
                "expected the name of an env var (a string), found {}",
                describe(other)
            ),
            (other, false) => format!("expected a string value, found {}", article(other)),
        },
    };
    let (Value::String(written), true) = (value, problem.is_empty()) else {
        return Err(problem);
    };
    let var = from_env.then(|| written.trim());
    let text = match var {
        Some(var) => env_var(env, var).ok_or_else(|| format!("env var {var} is not set (or is empty); export it with the header's value, or remove this entry"))?,
        None => written.clone(),
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        let var = var
            .map(|var| format!("env var {var}: "))
            .unwrap_or_default();
        format!("{var}the value must be printable ASCII (no line breaks or control characters)")
    })?;
    value.set_sensitive(true);
    headers.map.insert(header, value);
    headers.sources.push((name.into(), var.map(str::to_string)));
    Ok(())
}
