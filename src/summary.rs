//! What `check` prints of a valid config (SPEC section 5): every setting, credentials shown only
//! as `<redacted>` with where they came from, URLs through [`redact_url`], every line escaped. The
//! config types' `Debug` shows the same lines, so no credential reaches a log through it either.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    BackendConfig, Config, GatewayConfig, Headers, SecretSource, SigningSource, TenantsConfig,
    ENV_SHARED_SECRET, ENV_SIGNING_SECRET,
};
use crate::logging::{escaped, redact_url};

/// How many tenant ids [`Config::summary`] lists before it only counts them.
const SUMMARY_TENANTS_SHOWN: usize = 10;
/// How the summary shows a setting that is not set.
const NONE: &str = "(none)";

impl Config {
    /// A multi-line human summary of every setting, for `check`. Secrets, tokens, header values
    /// and the credentials in URLs are shown only as `<redacted>`, with where they came from.
    pub fn summary(&self) -> String {
        let mut gateway = self.gateway.rows();
        if let Some(first) = self.tenants.ids.first() {
            let example = format!("{} (for {first})", redact_url(&self.gateway_url(first)));
            gateway.insert(2, ("url example", example));
        }
        let (d, s) = (&self.debounce, &self.storm);
        let down_grace = d.gateway_down_grace.map_or("never (0s)".to_string(), human);
        let format = self.log.format.as_str().to_string();
        let fraction = match s.fraction {
            0.0 => "0 (off: no mass-outage hold)".to_string(),
            f => f.to_string(),
        };
        let debounce = vec![
            ("disconnect_grace", human(d.disconnect_grace)),
            ("connect_grace", human(d.connect_grace)),
            ("terminal_codes", format!("{:?}", d.terminal_codes)),
            ("gateway_down_grace", down_grace),
            ("flap_half_life", human(d.flap_half_life)),
            ("flap_suppress", d.flap_suppress.to_string()),
            ("flap_reuse", d.flap_reuse.to_string()),
            ("flap_max_suppress", human(d.flap_max_suppress)),
            ("storm_fraction", fraction),
            ("storm_min_tenants", s.min_tenants.to_string()),
            ("storm_window", human(s.window)),
            ("storm_hold", human(s.hold)),
        ];
        let sections = [
            ("gateway", gateway),
            ("backend", self.backend.rows()),
            ("debounce", debounce),
            ("tenants", self.tenants.rows()),
            ("state", vec![("dir", self.state.dir.display().to_string())]),
            ("admin", vec![("listen", self.admin.listen.to_string())]),
            ("log", vec![("format", format)]),
        ];
        let mut out = String::new();
        for (section, rows) in sections {
            out += &format!("[{section}]\n");
            for (key, value) in rows {
                out += &format!("  {key:<23} {value}\n");
            }
        }
        if !self.warnings.is_empty() {
            out += "warnings:\n";
            for warning in &self.warnings {
                out += &format!("  - {warning}\n");
            }
        }
        // Ids and paths are the operator's, but a control character must not reach a terminal.
        out.split_inclusive('\n')
            .map(|line| match line.strip_suffix('\n') {
                Some(text) => escaped(text) + "\n",
                None => escaped(line),
            })
            .collect()
    }
}

impl GatewayConfig {
    /// The `[gateway]` lines of the summary.
    fn rows(&self) -> Vec<(&'static str, String)> {
        let token = match (&self.token, &self.token_env, &self.token_file) {
            (None, _, _) => NONE.to_string(),
            (Some(_), Some(var), _) => format!("<redacted> (from env {var})"),
            (Some(_), None, Some(file)) => {
                format!("<redacted> (from gateway.token_file {})", file.display())
            }
            (Some(_), None, None) => "<redacted> (from gateway.token)".to_string(),
        };
        let state_url = self.state_url.as_deref().map_or(NONE.into(), redact_url);
        let handshakes = self.handshake_concurrency.to_string();
        vec![
            ("mode", self.mode.as_str().to_string()),
            ("url", redact_url(&self.url)),
            ("state_url", state_url),
            ("token", token),
            ("headers", list(&self.headers.shown())),
            ("ca_file", path(&self.ca_file, "(system roots only)")),
            ("ping_interval", human(self.ping_interval)),
            ("idle_timeout", human(self.idle_timeout)),
            ("max_frame_size", format!("{} bytes", self.max_frame_size)),
            ("handshake_concurrency", handshakes),
        ]
    }
}

impl Headers {
    /// `Name: <redacted>` for each header, with the env var it came from, for display.
    fn shown(&self) -> Vec<String> {
        let shown = |(name, var): &(String, Option<String>)| match var {
            Some(var) => format!("{name}: <redacted> (from env {var})"),
            None => format!("{name}: <redacted>"),
        };
        self.sources.iter().map(shown).collect()
    }
}

impl BackendConfig {
    /// The `[backend]` lines of the summary.
    fn rows(&self) -> Vec<(&'static str, String)> {
        let signing = self.signing_source.as_ref().map(|from| {
            let n = self.signing_secrets.len();
            format!("{n} secret(s) <redacted> (from {from})")
        });
        let signing = signing.unwrap_or("(none: requests are not signed)".to_string());
        let secret = format!("<redacted> (from {})", self.secret_source);
        vec![
            ("url", redact_url(self.url.as_str())),
            ("path", self.path.clone()),
            ("webhook", redact_url(&self.webhook_url())),
            ("secret", secret),
            ("signing_secrets", signing),
            ("ca_file", path(&self.ca_file, "(system roots only)")),
            ("allow_plain_http", self.allow_plain_http.to_string()),
            ("timeout", human(self.timeout)),
            ("connect_timeout", human(self.connect_timeout)),
            ("max_in_flight", self.max_in_flight.to_string()),
        ]
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env => f.write_str(ENV_SHARED_SECRET),
            SecretSource::File(path) => write!(f, "backend.secret_file {}", path.display()),
            SecretSource::Credential(path) => write!(f, "systemd credential {}", path.display()),
        }
    }
}

impl fmt::Display for SigningSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningSource::Env => write!(f, "env {ENV_SIGNING_SECRET}"),
            SigningSource::File(path) => {
                write!(f, "backend.signing_secret_file {}", path.display())
            }
        }
    }
}

impl TenantsConfig {
    /// The `[tenants]` lines of the summary: the first ids, and the override URLs' tenants only.
    fn rows(&self) -> Vec<(&'static str, String)> {
        let shown = self.ids.iter().take(SUMMARY_TENANTS_SHOWN);
        let shown: Vec<&str> = shown.map(String::as_str).collect();
        let ids = match self.ids.len().saturating_sub(SUMMARY_TENANTS_SHOWN) {
            0 => list(&shown),
            more => format!("{}, ... ({more} more)", shown.join(", ")),
        };
        let keys: Vec<_> = self.urls.keys().collect();
        let urls = match keys.len() {
            0 => NONE.to_string(),
            n => format!("{n} override(s): {}", list(&keys)),
        };
        let (count, file) = (self.ids.len().to_string(), path(&self.file, NONE));
        vec![
            ("count", count),
            ("ids", ids),
            ("file", file),
            ("urls", urls),
        ]
    }
}

/// `Debug` as the summary's lines, so that no credential reaches a log through it.
macro_rules! debug_as_rows {
    ($($T:ty),*) => {$(
        impl fmt::Debug for $T {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.rows()).finish()
            }
        }
    )*};
}
debug_as_rows!(GatewayConfig, BackendConfig, TenantsConfig);

fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn path(path: &Option<PathBuf>, none: &str) -> String {
    path.as_ref()
        .map_or(none.to_string(), |path| path.display().to_string())
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    match items.is_empty() {
        true => NONE.to_string(),
        false => items.join(", "),
    }
}
