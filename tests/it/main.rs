//! The integration tests, in one crate so the library is linked once.
//!
//! - `basics`, `faults`, `compat`, `admin`: a real [`wa_status_sidecar::Sidecar`] against the
//!   simulated gateway and backend (real servers on 127.0.0.1) under tokio's paused clock.
//! - `admin_limits`, `clients`: the same, for the edges of issue 12 (slow admin clients,
//!   redirects, huge bodies, credentials in URLs); `private_ca`: TLS with a CA made in the test,
//!   in real time (a TLS handshake's round trips do not fit the paused clock).
//! - `process`, `systemd`, `hostile`: the real binary as a child process (kill -9, SIGTERM,
//!   SIGHUP, sd_notify; a hostile gateway's flood, log injection, a low open-files limit); real
//!   time, short graces, every wait bounded.
//! - `common`: the one rig both kinds share; `pki`: the private CA (the fleet benchmark's
//!   `--tls` run includes it too).
//!
//! The property tests (`tests/fuzz.rs`) are a separate crate so a long run can be asked of them
//! alone: `PROPTEST_CASES=200000 cargo test --release --test fuzz`.

mod admin;
mod admin_limits;
mod basics;
mod clients;
mod common;
mod compat;
mod faults;
mod hostile;
mod model;
mod pki;
mod private_ca;
mod process;
mod storm;
mod systemd;
mod trust;
