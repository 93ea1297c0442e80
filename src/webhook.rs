#![allow(dead_code, unused)]
use std::time::{Duration, SystemTime};
use crate::debounce::Status; use crate::config::Secret;
pub struct Webhook;
pub struct Delivery<'a> { pub tenant: &'a str, pub status: Status, pub reason: Option<&'a str>, pub idempotency_key: &'a str, pub changed_at: SystemTime }
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome { Delivered { status: u16 }, Retry { after: Option<Duration>, error: String }, Credentials { status: u16 }, WrongUrl { status: u16 }, Refused { status: u16, body: String } }
impl Outcome { pub fn label(&self) -> &'static str { todo!() } }
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct WebhookError;
impl Webhook {
 pub fn new(url: &str, secret: Secret, timeout: Duration, ct: Duration) -> Result<Self, WebhookError> { todo!() }
 pub async fn send(&self, d: &Delivery<'_>) -> Outcome { todo!() }
 pub fn url(&self) -> &str { todo!() }
}
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration, unit: f64) -> Duration { todo!() }
pub const RETRY_BASE: Duration = Duration::from_secs(1); pub const RETRY_CAP: Duration = Duration::from_secs(300); pub const CONFIG_FAULT_RETRY: Duration = Duration::from_secs(30);
