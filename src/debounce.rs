#![allow(dead_code, unused)]
use tokio::time::Instant; use std::time::Duration;
use crate::observe::*;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status { Connected, Disconnected }
impl Status { pub fn as_str(self) -> &'static str { match self { Status::Connected => "connected", Status::Disconnected => "disconnected" } } }
#[derive(Debug, Clone, PartialEq)]
pub struct Policy { pub disconnect_grace: Duration, pub connect_grace: Duration, pub terminal_codes: Vec<u16>, pub gateway_down_grace: Option<Duration>, pub flap_half_life: Duration, pub flap_suppress: f64, pub flap_reuse: f64, pub flap_max_suppress: Duration }
pub struct Debouncer;
#[derive(Default)] pub struct Restored { pub stable: Option<Status>, pub penalty: f64, pub flapping: bool }
pub struct Report { pub status: Status, pub reason: Option<String>, pub since: Instant }
pub struct View { pub stable: Option<Status>, pub pending: Option<(Status, Instant)>, pub penalty: f64, pub flapping: bool }
impl Debouncer {
 pub fn new(now: Instant, r: Restored) -> Self { todo!() }
 pub fn link_up(&mut self, now: Instant, p: &Policy) {}
 pub fn link_down(&mut self, now: Instant, p: &Policy, e: &str) {}
 pub fn observe(&mut self, now: Instant, p: &Policy, o: &Observation) {}
 pub fn on_timeout(&mut self, now: Instant, p: &Policy) {}
 pub fn next_deadline(&self, p: &Policy) -> Option<Instant> { todo!() }
 pub fn poll_report(&mut self) -> Option<Report> { todo!() }
 pub fn penalty(&self, now: Instant, p: &Policy) -> f64 { todo!() }
 pub fn is_flapping(&self) -> bool { todo!() }
 pub fn stable(&self) -> Option<Status> { todo!() }
 pub fn view(&self, now: Instant, p: &Policy) -> View { todo!() }
}
pub fn is_terminal(p: &Policy, c: &DownCause) -> bool { todo!() }
pub fn describe(p: &Policy, c: &DownCause) -> String { todo!() }
