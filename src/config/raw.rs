//! The config file's shape as serde types, and the first pass over the TOML table: the keys
//! those types do not take are reported (with "did you mean" hints) and set aside, so that the
//! deserialization, with `deny_unknown_fields`, cannot fail on them and hide other problems.

use std::time::Duration;

use serde::de::{DeserializeOwned, Deserializer, Error as _, Visitor};
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
        Ok(match T::deserialize(value.clone()) {
            Ok(typed) => Setting::Set(typed),
            Err(_) => Setting::Bad(value),
        })
    }
}

/// A humane duration string ("60s", "5m", "1h 30m", "500ms"), parsed by humantime.
#[derive(Debug, Clone, Copy)]
pub(super) struct Humane(pub Duration);

impl<'de> Deserialize<'de> for Humane {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(Humane)
            .map_err(D::Error::custom)
    }
}

/// The whole file. Every section and key may be omitted.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawConfig {
    pub gateway: RawGateway,
    pub backend: RawBackend,
    pub debounce: RawDebounce,
    pub tenants: RawTenants,
    pub state: RawState,
    pub admin: RawAdmin,
    pub log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawGateway {
    pub mode: Setting<String>,
    pub url: Setting<String>,
    pub state_url: Setting<String>,
    pub token: Setting<String>,
    pub token_env: Setting<String>,
    pub token_file: Setting<String>,
    pub headers: Setting<Table>,
    pub headers_env: Setting<Table>,
    pub ca_file: Setting<String>,
    pub ping_interval: Setting<Humane>,
    pub idle_timeout: Setting<Humane>,
    pub max_frame_size: Setting<i64>,
    pub handshake_concurrency: Setting<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawBackend {
    pub url: Setting<String>,
    pub path: Setting<String>,
    pub secret_file: Setting<String>,
    pub signing_secret_file: Setting<String>,
    pub ca_file: Setting<String>,
    pub allow_plain_http: Setting<bool>,
    pub timeout: Setting<Humane>,
    pub connect_timeout: Setting<Humane>,
    pub max_in_flight: Setting<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDebounce {
    pub disconnect_grace: Setting<Humane>,
    pub connect_grace: Setting<Humane>,
    pub terminal_codes: Setting<Vec<Value>>,
    pub gateway_down_grace: Setting<Humane>,
    pub flap_half_life: Setting<Humane>,
    pub flap_suppress: Setting<f64>,
    pub flap_reuse: Setting<f64>,
    pub flap_max_suppress: Setting<Humane>,
    pub storm_fraction: Setting<f64>,
    pub storm_min_tenants: Setting<i64>,
    pub storm_window: Setting<Humane>,
    pub storm_hold: Setting<Humane>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawTenants {
    pub ids: Setting<Vec<Value>>,
    pub file: Setting<String>,
    pub urls: Setting<Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawState {
    pub dir: Setting<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Setting<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Setting<String>,
}

/// The sections of the file, in the order problems are reported (the order of [`RawConfig`]).
pub(super) fn sections() -> &'static [&'static str] {
    keys_of::<RawConfig>()
}

/// The keys a section takes, as its serde type declares them: the one list of known keys.
pub(super) fn section_keys(section: &str) -> &'static [&'static str] {
    match section {
        "gateway" => keys_of::<RawGateway>(),
        "backend" => keys_of::<RawBackend>(),
        "debounce" => keys_of::<RawDebounce>(),
        "tenants" => keys_of::<RawTenants>(),
        "state" => keys_of::<RawState>(),
        "admin" => keys_of::<RawAdmin>(),
        "log" => keys_of::<RawLog>(),
        _ => &[],
    }
}

/// The field names a derived `Deserialize` struct passes to `deserialize_struct`.
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Removes from `root` every section that is not a table and every key no serde type takes, and
/// returns a problem for each (with a hint where one is plausible).
pub(super) fn take_unknown_keys(root: &mut Table) -> (Vec<Problem>, Vec<Problem>) {
    let sections = sections();
    // Where else a key is valid, for "`secret_file` belongs in [backend]" hints.
    let elsewhere = |key: &str, except: &str| -> Vec<String> {
        (sections.iter())
            .filter(|s| **s != except && section_keys(s).contains(&key))
            .map(|s| format!("`{s}.{key}`"))
            .collect()
    };
    let (mut not_tables, mut unknown) = (Vec::new(), Vec::new());
    root.retain(|key, value| {
        if !sections.contains(&key) {
            let message = if let Some(hint) = closest(key, sections) {
                format!("unknown section; did you mean `[{hint}]`?")
            } else {
                let other = elsewhere(key, "");
                if other.is_empty() {
                    let kind = if value.is_table() { "section" } else { "top-level key" };
                    format!("unknown {kind}; the sections are: {}", sections.join(", "))
                } else {
                    format!(
                        "unknown top-level key; did you mean {} (under its section)?",
                        other.join(" or ")
                    )
                }
            };
            let path = key_path("", key).trim_start_matches('.').to_string();
            unknown.push(Problem::new(path, message));
            return false;
        }
        let Value::Table(table) = value else {
            not_tables.push(Problem::new(
                key,
                format!("expected a table (a `[{key}]` section), found {}", describe(value)),
            ));
            return false;
        };
        let known = section_keys(key);
        table.retain(|name, _| {
            if known.contains(&name) {
                return true;
            }
            let message = if let Some(hint) = closest(name, known) {
                format!("unknown key; did you mean `{hint}`?")
            } else if key == "backend" && name.to_ascii_lowercase().contains("secret") {
                format!("unknown key; {}", missing_secret_help())
            } else if key == "log" && name == "level" {
                "unknown key; the log level comes from env RUST_LOG (e.g. RUST_LOG=debug), default info"
                    .to_string()
            } else {
                match elsewhere(name, key) {
                    other if other.is_empty() => {
                        format!("unknown key; [{key}] takes: {}", known.join(", "))
                    }
                    other => format!(
                        "unknown key in [{key}]; did you mean {}?",
                        other.join(" or ")
                    ),
                }
            };
            unknown.push(Problem::new(key_path(key, name), message));
            false
        });
        true
    });
    (not_tables, unknown)
}

pub(super) fn missing_secret_help() -> String {
    format!(
        "the shared secret is never written in the config file; give it as env {ENV_SHARED_SECRET}, \
         or in a file named by backend.secret_file, or as the systemd credential `{CREDENTIAL_NAME}` \
         (LoadCredential={CREDENTIAL_NAME}:/path, read from ${ENV_CREDENTIALS_DIRECTORY}/{CREDENTIAL_NAME})"
    )
}

/// `prefix.key`, with the key quoted as TOML would need it when it is not a bare key.
pub(super) fn key_path(prefix: &str, key: &str) -> String {
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

pub(super) fn article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        other => format!("a {other}"),
    }
}

/// "an integer (60)", "a string (\"x\")", "a table": names the type and shows short scalars.
pub(super) fn describe(value: &Value) -> String {
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
    // A key far longer than any candidate is no typo of one (and would cost a long comparison).
    if name.len() > 64 {
        return None;
    }
    let name = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|candidate| (edit_distance(&name, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(name.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}
