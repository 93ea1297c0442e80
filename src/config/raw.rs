//! The config file's shape as serde types, and the first pass over the TOML table: the keys
//! those types do not take are reported (with "did you mean" hints) and set aside, so that the
//! deserialization, with `deny_unknown_fields`, cannot fail on them and hide other problems.

use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use toml::{Table, Value};

use super::{Problem, CREDENTIAL_NAME, ENV_CREDENTIALS_DIRECTORY, ENV_SHARED_SECRET};

/// One key as written. Deserializing it never fails, so one wrong value cannot hide the others:
/// a value that is not a `T` is kept as it was, for the validation pass to report.
#[derive(Debug, Default)]
pub(super) enum Setting<T> {
    #[default]
    Unset,
    Set(T),
    Bad(Value),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Setting<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(T::deserialize(value.clone()).map_or(Setting::Bad(value), Setting::Set))
    }
}

/// A key's path (`"gateway.url"`) and its setting, for the validation pass to report against.
pub(super) type Key<'r, T> = (&'static str, &'r Setting<T>);

/// A duration as written: humane text ("60s", "1h 30m"), or a bare number, refused for its
/// missing unit with a message of its own.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Span {
    Text(String),
    Bare(i64),
}

/// Declares every section and key once: the serde types (each section also gets one method per
/// key returning its [`Key`]), and the key lists the hints, the sort and the tests read.
macro_rules! sections {
    ($($section:ident: $Raw:ident { $($key:ident: $T:ty,)* })*) => {
        /// The whole file. Every section and key may be omitted.
        #[derive(Debug, Default, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub(super) struct RawConfig { $(pub $section: $Raw,)* }
        $(
            #[derive(Debug, Default, Deserialize)]
            #[serde(default, deny_unknown_fields)]
            pub(super) struct $Raw { $($key: Setting<$T>,)* }
            impl $Raw {
                $(pub fn $key(&self) -> Key<'_, $T> {
                    (concat!(stringify!($section), ".", stringify!($key)), &self.$key)
                })*
            }
        )*
        /// The sections of the file, in the order problems are reported.
        pub(super) fn sections() -> &'static [&'static str] { &[$(stringify!($section)),*] }
        /// The keys a section takes.
        pub(super) fn section_keys(section: &str) -> &'static [&'static str] {
            match section { $(stringify!($section) => &[$(stringify!($key)),*],)* _ => &[] }
        }
    };
}

sections! {
    gateway: RawGateway {
        mode: String, url: String, state_url: String,
        token: String, token_env: String, token_file: String,
        headers: Table, headers_env: Table, ca_file: String,
        ping_interval: Span, idle_timeout: Span, max_frame_size: i64, handshake_concurrency: i64,
    }
    backend: RawBackend {
        url: String, path: String, secret_file: String, signing_secret_file: String,
        ca_file: String, allow_plain_http: bool,
        timeout: Span, connect_timeout: Span, max_in_flight: i64,
    }
    debounce: RawDebounce {
        disconnect_grace: Span, connect_grace: Span, terminal_codes: Vec<Value>,
        gateway_down_grace: Span, flap_half_life: Span, flap_suppress: f64, flap_reuse: f64,
        flap_max_suppress: Span,
        storm_fraction: f64, storm_min_tenants: i64, storm_window: Span, storm_hold: Span,
    }
    tenants: RawTenants { ids: Vec<Value>, file: String, urls: Table, }
    state: RawState { dir: String, }
    admin: RawAdmin { listen: String, }
    log: RawLog { format: String, }
}

/// Removes from `root` every section that is not a table and every key no serde type takes, and
/// returns the problems with both (the second with a hint where one is plausible).
pub(super) fn take_unknown_keys(root: &mut Table) -> (Vec<Problem>, Vec<Problem>) {
    let (sections, all) = (self::sections(), self::sections().join(", "));
    // Where else a key is valid, for "`secret_file` belongs in [backend]" hints.
    let elsewhere = |key: &str, except: &str| {
        let found = sections
            .iter()
            .filter(|s| **s != except && section_keys(s).contains(&key));
        let found: Vec<String> = found.map(|s| format!("`{s}.{key}`")).collect();
        found.join(" or ")
    };
    let (mut not_tables, mut unknown) = (Vec::new(), Vec::new());
    root.retain(|key, value| {
        let known = section_keys(key);
        if known.is_empty() {
            let kind = if value.is_table() { "section" } else { "top-level key" };
            let message = match (closest(key, sections), elsewhere(key, "")) {
                (Some(hint), _) => format!("unknown section; did you mean `[{hint}]`?"),
                (_, also) if also.is_empty() => format!("unknown {kind}; the sections are: {all}"),
                (_, also) => format!("unknown top-level key; did you mean {also} (under its section)?"),
            };
            unknown.push(Problem::new(key_path("", key).split_off(1), message));
            return false;
        }
        let Value::Table(table) = value else {
            let found = describe(value);
            let message = format!("expected a table (a `[{key}]` section), found {found}");
            not_tables.push(Problem::new(key, message));
            return false;
        };
        table.retain(|name, _| {
            if known.contains(&name) {
                return true;
            }
            let message = match (closest(name, known), elsewhere(name, key)) {
                (Some(hint), _) => format!("unknown key; did you mean `{hint}`?"),
                _ if key == "backend" && name.to_ascii_lowercase().contains("secret") => format!(
                    "unknown key; the shared secret is never written in the config file; give it as env {ENV_SHARED_SECRET}, \
                     or in a file named by backend.secret_file, or as the systemd credential `{CREDENTIAL_NAME}` \
                     (LoadCredential={CREDENTIAL_NAME}:/path, read from ${ENV_CREDENTIALS_DIRECTORY}/{CREDENTIAL_NAME})"
                ),
                _ if key == "log" && name == "level" => "unknown key; the log level comes from env RUST_LOG (e.g. RUST_LOG=debug), default info".to_string(),
                (_, also) if also.is_empty() => format!("unknown key; [{key}] takes: {}", known.join(", ")),
                (_, also) => format!("unknown key in [{key}]; did you mean {also}?"),
            };
            unknown.push(Problem::new(key_path(key, name), message));
            false
        });
        true
    });
    (not_tables, unknown)
}

/// `prefix.key`, with the key quoted as TOML would need it when it is not a bare key.
pub(super) fn key_path(prefix: &str, key: &str) -> String {
    let bare = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    match !key.is_empty() && key.bytes().all(bare) {
        true => format!("{prefix}.{key}"),
        false => format!("{prefix}.{key:?}"),
    }
}

/// "an integer", "a string": the TOML type of a value, without the value.
pub(super) fn article(value: &Value) -> String {
    match value.type_str() {
        kind @ ("integer" | "array") => format!("an {kind}"),
        kind => format!("a {kind}"),
    }
}

/// "an integer (60)", "a string (\"x\")", "a table": names the type and shows short scalars.
pub(super) fn describe(value: &Value) -> String {
    let kind = article(value);
    match value {
        Value::Integer(n) => format!("{kind} ({n})"),
        Value::Float(x) => format!("{kind} ({x})"),
        Value::Boolean(b) => format!("{kind} ({b})"),
        Value::String(s) if s.chars().count() <= 40 => format!("{kind} ({s:?})"),
        _ => kind,
    }
}

/// The candidate closest to `name`, if it is close enough to be a plausible typo.
fn closest<'k>(name: &str, candidates: &[&'k str]) -> Option<&'k str> {
    // A key far longer than any candidate is no typo of one (and would cost a long comparison).
    if name.len() > 64 {
        return None;
    }
    let name = name.to_ascii_lowercase();
    (candidates.iter())
        .map(|candidate| (strsim::levenshtein(&name, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(name.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}
