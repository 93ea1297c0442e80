#![allow(dead_code, unused)]
use std::time::Duration; use std::path::{Path, PathBuf}; use std::net::SocketAddr; use std::collections::BTreeMap;
use crate::debounce::Policy;
#[derive(Clone, PartialEq, Eq)] pub struct Secret(String);
impl Secret { pub fn new(s: impl Into<String>) -> Self { Secret(s.into()) } pub fn expose(&self) -> &str { &self.0 } }
impl std::fmt::Debug for Secret { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("Secret(<redacted>)") } }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum GatewayMode { PerTenant, Shared }
#[derive(Debug, Clone, Copy, PartialEq, Eq)] pub enum LogFormat { Text, Json }
#[derive(Debug, Clone)] pub struct GatewayConfig { pub mode: GatewayMode, pub url: String, pub state_url: Option<String>, pub token: Option<Secret>, pub headers: Vec<(String, String)>, pub ping_interval: Duration, pub idle_timeout: Duration, pub max_frame_size: usize, pub handshake_concurrency: usize }
#[derive(Debug, Clone)] pub struct BackendConfig { pub url: url::Url, pub path: String, pub secret: Secret, pub timeout: Duration, pub connect_timeout: Duration, pub max_in_flight: usize }
#[derive(Debug, Clone)] pub struct TenantsConfig { pub ids: Vec<String>, pub file: Option<PathBuf>, pub urls: BTreeMap<String, String> }
#[derive(Debug, Clone)] pub struct StateConfig { pub dir: PathBuf }
#[derive(Debug, Clone)] pub struct AdminConfig { pub listen: SocketAddr }
#[derive(Debug, Clone)] pub struct LogConfig { pub format: LogFormat }
#[derive(Debug, Clone)] pub struct Config { pub gateway: GatewayConfig, pub backend: BackendConfig, pub debounce: Policy, pub tenants: TenantsConfig, pub state: StateConfig, pub admin: AdminConfig, pub log: LogConfig, pub warnings: Vec<String> }
pub trait Env { fn var(&self, name: &str) -> Option<String>; }
pub struct ProcessEnv; impl Env for ProcessEnv { fn var(&self, n: &str) -> Option<String> { std::env::var(n).ok() } }
#[derive(Debug, thiserror::Error)] #[error("bad")] pub struct ConfigError;
impl Config {
 pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> { todo!() }
 pub fn gateway_url(&self, t: &str) -> String { todo!() }
 pub fn state_url(&self, t: &str) -> Option<String> { todo!() }
 pub fn webhook_url(&self) -> String { todo!() }
 pub fn summary(&self) -> String { todo!() }
}
