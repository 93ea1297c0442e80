//! The whole engine against a small reference model (issue 10): random sequences of gateway
//! frames (foreign ones too), link drops, backend answers, reloads that add, remove and re-add
//! tenants, kill -9 and graceful restarts with the state files kept, and clock moves, in both
//! gateway modes, on real sockets under tokio's paused clock.
//!
//! The model decides, per tenant, the stable-state changes of SPEC section 4 from the states the
//! test gives the gateway: a terminal down at once, a transient down after `disconnect_grace`, an
//! up after `connect_grace`, a tenant added (again) first-seen, a restart re-learning every
//! session from its snapshot, and, in half of the cases, the mass-outage hold (SPEC 4 rev 12): the
//! model feeds the fleet's drops to a `storm::Detector` exactly as the registry must (the detector
//! itself is checked against its own reference model in `tests/fuzz.rs`), holds what it holds and
//! reports what it releases with the outage reason, across reloads that turn the hold on and off
//! and across restarts. Flap damping is configured out (the debouncer's property test covers it),
//! and so is the gateway-down grace, whose timing depends on random reconnect backoff.
//!
//! What the backend sees is then checked against the model:
//! - every transition the backend receives (each idempotency key) is the newest change the model
//!   had decided for that tenant when it was first sent, with the same status and reason, so
//!   nothing is invented: not for a foreign frame, not for a removed tenant, not after a restart;
//! - every change decided while the backend was healthy reaches it within a second, with its
//!   reason;
//! - a transition is settled once: nothing is sent with its key after the backend acknowledged it,
//!   unless the sidecar was killed in between (the acknowledgement may not have been written);
//! - in the end, with the backend healthy, the backend has every configured tenant's last decided
//!   state (nothing decided is lost across a kill -9), and nothing is owed.
//!
//! `PROPTEST_CASES` sets the number of cases (default 300, about a minute in a debug build).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use tokio::time::Instant;

use crate::common::config;
use wa_status_sidecar::debounce::Status;
use wa_status_sidecar::sim::{self, Call, Reply, SimBackend, SimGateway};
use wa_status_sidecar::storm::{Detector, Event, Saved, StormPolicy};
use wa_status_sidecar::Sidecar;

const TENANTS: [&str; 4] = ["t0", "t1", "t2", "t3"];
const CONNECT_GRACE: Duration = Duration::from_millis(2500);
const DISCONNECT_GRACE: Duration = Duration::from_millis(5500);

/// The storm hold of the cases that have one: two of the four tenants within 10 s, held 40 s.
fn storm_policy(on: bool) -> StormPolicy {
    StormPolicy {
        fraction: if on { 0.5 } else { 0.0 },
        min_tenants: 2,
        window: Duration::from_secs(10),
        hold: Duration::from_secs(40),
    }
}

/// Graces off the whole-second grid the steps move on, so no event lands near a deadline;
/// flapping out of reach; the gateway-down grace off; the storm hold as `storm_policy` says.
fn debounce(storm: bool) -> String {
    let p = storm_policy(storm);
    format!(
        r#"
[debounce]
connect_grace = "2500ms"
disconnect_grace = "5500ms"
gateway_down_grace = "0s"
flap_suppress = 1000000000
flap_reuse = 100000000
storm_fraction = {}
storm_min_tenants = {}
storm_window = "{}s"
storm_hold = "{}s"
"#,
        p.fraction,
        p.min_tenants,
        p.window.as_secs(),
        p.hold.as_secs()
    )
}

/// What a session's gateway says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Open,
    Connecting,
    /// A transient close with this code.
    Closed(u16),
    LoggedOut,
    Qr,
}

impl St {
    fn terminal(self) -> bool {
        matches!(self, St::LoggedOut | St::Qr)
    }
}

fn st() -> impl Strategy<Value = St> {
    prop_oneof![
        4 => Just(St::Open),
        1 => Just(St::Connecting),
        3 => prop::sample::select(vec![428u16, 515, 408]).prop_map(St::Closed),
        2 => Just(St::LoggedOut),
        1 => Just(St::Qr),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Ok,
    Fail(u16, Option<&'static str>),
    Credentials,
    Refuse,
    Slow,
}

impl Backend {
    fn reply(self) -> Reply {
        match self {
            Backend::Ok => Reply::ok(),
            Backend::Fail(status, None) => Reply::status(status),
            Backend::Fail(status, Some(after)) => {
                Reply::status(status).with_header("retry-after", after)
            }
            Backend::Credentials => Reply::status(401),
            Backend::Refuse => Reply::status(400),
            // Longer than the request timeout (10 s): the sidecar gives up and retries.
            Backend::Slow => Reply::ok().with_delay(Duration::from_secs(12)),
        }
    }
}

fn backend() -> impl Strategy<Value = Backend> {
    prop_oneof![
        4 => Just(Backend::Ok),
        2 => (
            prop::sample::select(vec![500u16, 503, 429]),
            prop::sample::select(vec![None, Some("0"), Some("-1"), Some("3"), Some("400"),
                Some("Wed, 21 Oct 2015 07:28:00 GMT")]),
        )
            .prop_map(|(s, a)| Backend::Fail(s, a)),
        1 => Just(Backend::Credentials),
        1 => Just(Backend::Refuse),
        1 => Just(Backend::Slow),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    /// The gateway's state for a tenant changes (`variant` picks the frame shape).
    Set(usize, St, u8),
    /// The gateway's state changes for every tenant of the mask at once (a WhatsApp-wide drop or
    /// recovery).
    SetMany(u8, St),
    /// A frame naming tenant `.1`, on tenant `.0`'s link (per-tenant mode) or for a tenant that
    /// is not configured (shared mode).
    Foreign(usize, usize, St),
    /// The gateway closes a link (shared mode: the shared one).
    DropLink(usize),
    Backend(Backend),
    /// A reload with this set of configured tenants (a bit mask of `TENANTS`), turning the storm
    /// hold on or off in the cases that have one.
    Reload(u8, bool),
    /// kill -9, then a new process on the same state directory.
    Crash,
    /// SIGTERM (one more try for what is owed, persisted), then a new process.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
                10 => (0..4usize, st(), any::<u8>()).prop_map(|(t, s, v)| Step::Set(t, s, v)),
                6 => (
            1u8..16,
            prop_oneof![5 => Just(St::Open), 1 => Just(St::Connecting), 4 => Just(St::Closed(428))]
        )
            .prop_map(|(m, s)| Step::SetMany(m, s)),
        2 => (0..4usize, 0..4usize, st()).prop_map(|(a, b, s)| Step::Foreign(a, b, s)),
        1 => (0..4usize).prop_map(Step::DropLink),
        3 => backend().prop_map(Step::Backend),
        2 => (0u8..16, prop::bool::weighted(0.8)).prop_map(|(m, s)| Step::Reload(m, s)),
        1 => Just(Step::Crash),
        1 => Just(Step::Restart),
    ]
}

/// Seconds of clock after a step.
fn wait() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..4, 2 => 4u64..12, 1 => Just(20u64), 1 => Just(60u64)]
}

#[derive(Debug, Clone)]
struct Case {
    shared: bool,
    /// The mass-outage hold is on (and reloads may turn it off and on again).
    storm: bool,
    configured: u8,
    initial: [Option<St>; 4],
    steps: Vec<(Step, u64)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        // The hold on in most cases: a storm needs it, and luck besides.
        prop::bool::weighted(0.7),
        1u8..16,
        prop::array::uniform4(prop::option::weighted(
            0.8,
            prop_oneof![2 => Just(St::Open), 1 => st()],
        )),
        prop::collection::vec((step(), wait()), 5..30),
    )
        .prop_map(|(shared, storm, configured, initial, steps)| Case {
            shared,
            storm,
            configured,
            initial,
            steps,
        })
}

/// The frame a gateway sends for `st`, and the reason it gives the drop (None: it keeps the
/// reason of the close before it, as a `connecting` does).
fn frame(shared: bool, tenant: &str, st: St, variant: u8) -> (String, Option<String>) {
    let native = |status: &str, reason: Option<&str>, with_id: bool| {
        let mut v = serde_json::json!({ "status": status });
        if let Some(r) = reason {
            v["reason"] = r.into();
        }
        if with_id || shared {
            v["tenant_id"] = tenant.into();
        }
        v.to_string()
    };
    let waha = |status: &str| crate::common::waha(tenant, status);
    let evolution = |state: &str, code: u16| crate::common::evolution(tenant, state, code);
    let close_message = |code: u16| match code {
        428 => "Connection Closed",
        515 => "Stream Errored (restart required)",
        _ => "Connection Lost",
    };
    if shared {
        match (st, variant % 3) {
            (St::Open, 0) => (waha("WORKING"), None),
            (St::Open, 1) => (evolution("open", 200), None),
            (St::Open, _) => (native("connected", None, true), None),
            (St::Connecting, 0) => (waha("STARTING"), None),
            (St::Connecting, _) => (evolution("connecting", 200), None),
            (St::Closed(code), _) => (
                evolution("close", code),
                Some(format!("connection closed (code {code})")),
            ),
            (St::LoggedOut, 0) => (waha("FAILED"), Some("WAHA session status FAILED".into())),
            (St::LoggedOut, 1) => (
                evolution("refused", 401),
                Some("connection refused (code 401)".into()),
            ),
            (St::LoggedOut, _) => (
                native("disconnected", Some("logged out on the phone"), true),
                Some("logged out on the phone".into()),
            ),
            (St::Qr, _) => (
                waha("SCAN_QR_CODE"),
                Some("not linked: waiting for QR code scan".into()),
            ),
        }
    } else {
        match (st, variant % 3) {
            (St::Open, 0) => (sim::baileys_open(), None),
            (St::Open, v) => (native("connected", None, v == 2), None),
            (St::Connecting, _) => (sim::baileys_connecting(), None),
            (St::Closed(code), _) => (
                sim::baileys_close(code, close_message(code)),
                Some(format!("{} (code {code})", close_message(code))),
            ),
            (St::LoggedOut, 0) => (
                sim::baileys_close(401, "Connection Failure"),
                Some("logged out (code 401): Connection Failure".into()),
            ),
            (St::LoggedOut, v) => (
                native("disconnected", Some("logged out on the phone"), v == 2),
                Some("logged out on the phone".into()),
            ),
            (St::Qr, _) => (
                sim::baileys_qr(),
                Some("not linked: waiting for QR code scan".into()),
            ),
        }
    }
}

/// A change of stable state the model decided.
#[derive(Debug, Clone)]
struct Decision {
    at: Instant,
    status: Status,
    reason: Option<String>,
    /// How much earlier the sidecar may decide it: a hold carried over a restart ends at its
    /// stored wall-clock time, which moved by the real time the restart took (the paused test
    /// clock did not see it).
    early: Duration,
}

#[derive(Debug, Clone)]
enum Run {
    None,
    Up(Instant),
    Down(Instant, Option<String>),
}

/// The model of one tenant's debouncer: the SPEC 4 rules without flapping or a gateway-down grace.
#[derive(Debug, Clone)]
struct TenantModel {
    configured: bool,
    /// The gateway's session state, the reason its frame gives, and the frame.
    gateway: Option<(St, Option<String>, String)>,
    /// The tenant's gateway link is up.
    linked: bool,
    /// The link (re)connected and has not carried an observation yet: the next one is what the
    /// link learns, never a drop.
    fresh: bool,
    /// A mass-outage hold defers the current drop.
    held: bool,
    stable: Option<Status>,
    run: Run,
    decisions: Vec<Decision>,
}

impl TenantModel {
    fn decide(&mut self, at: Instant, status: Status, reason: Option<String>) {
        self.decide_within(at, Duration::ZERO, status, reason);
    }

    fn decide_within(
        &mut self,
        at: Instant,
        early: Duration,
        status: Status,
        reason: Option<String>,
    ) {
        if self.stable == Some(status) {
            return;
        }
        self.stable = Some(status);
        self.decisions.push(Decision {
            at,
            status,
            reason: (status == Status::Disconnected).then(|| reason.unwrap_or_default()),
            early,
        });
    }

    /// The next grace to end, if any.
    fn deadline(&self) -> Option<Instant> {
        if !self.configured {
            return None;
        }
        match &self.run {
            Run::Up(since) if self.stable != Some(Status::Connected) => {
                Some(*since + CONNECT_GRACE)
            }
            Run::Down(since, _) if self.stable != Some(Status::Disconnected) && !self.held => {
                Some(*since + DISCONNECT_GRACE)
            }
            _ => None,
        }
    }

    /// Decides what its grace decides at `at` (up to `early` before it in the engine).
    fn fire(&mut self, at: Instant, early: Duration) {
        match self.run.clone() {
            Run::Up(_) => self.decide_within(at, early, Status::Connected, None),
            Run::Down(_, reason) => self.decide_within(
                at,
                early,
                Status::Disconnected,
                Some(reason.unwrap_or("session reconnecting".into())),
            ),
            Run::None => {}
        }
    }
}

/// The model of the whole engine: the tenants and the fleet's storm detector, fed as the registry
/// must feed it.
struct Model {
    tenants: Vec<TenantModel>,
    detector: Detector<usize>,
    policy: StormPolicy,
    /// When the holds were last stored (a storm began, ended or released): a restart resumes
    /// them from their wall-clock start, which the paused test clock does not move.
    last_saved: Instant,
    /// Storms that began.
    storms: u32,
    /// Tenants held by a hold carried over a restart.
    resumed: std::collections::HashSet<usize>,
    /// The holds as the sidecar has stored them: whole at each storm event, then each tenant as
    /// it joins. A restart resumes these.
    stored: Vec<(u64, Saved<usize>)>,
}

impl Model {
    fn linked(&self) -> usize {
        self.tenants
            .iter()
            .filter(|t| t.linked && t.configured)
            .count()
    }

    /// Acts on what the detector decided: a released drop still down is decided now, with the
    /// outage reason.
    fn storm_events(&mut self, now: Instant) {
        if self.detector.has_events() {
            // The sidecar stores the holds whole whenever the detector decided something.
            self.stored = self.detector.saved_with_ids();
        }
        while let Some(event) = self.detector.poll_event() {
            self.last_saved = now;
            if matches!(event, Event::Began { .. }) {
                self.storms += 1;
            }
            if let Event::Released { tenants, reason } = event {
                for t in tenants {
                    let model = &mut self.tenants[t];
                    if !std::mem::take(&mut model.held) {
                        self.resumed.remove(&t);
                        continue;
                    }
                    if model.deadline().is_some_and(|at| at <= now) {
                        let early = if self.resumed.remove(&t) {
                            Duration::from_secs(1)
                        } else {
                            Duration::ZERO
                        };
                        let reason = Some(reason.to_string());
                        model.decide_within(now, early, Status::Disconnected, reason);
                    }
                    // Not due yet: decided at its grace, still with a resumed member's slack.
                }
            }
        }
    }

    /// Fires every deadline due by `to`, the tenants' and the detector's, in time order.
    fn advance(&mut self, to: Instant) {
        loop {
            let storm = self.detector.next_deadline(&self.policy);
            let tenant = (0..4)
                .filter_map(|i| Some((self.tenants[i].deadline()?, i)))
                .min();
            let next = match (storm, tenant) {
                (Some(s), Some((t, _))) if s <= t => (s, None),
                (_, Some((t, i))) => (t, Some(i)),
                (Some(s), None) => (s, None),
                (None, None) => return,
            };
            if next.0 > to {
                return;
            }
            let at = next.0;
            match next.1 {
                None => {
                    self.detector.on_timeout(at, &self.policy);
                    self.storm_events(at);
                }
                Some(i) => {
                    // A drop of a storm member whose grace ran out waits for the storm.
                    let is_down = matches!(self.tenants[i].run, Run::Down(..));
                    if is_down && self.detector.held_until(&self.policy, &i).is_some() {
                        self.tenants[i].held = true;
                    } else {
                        // A drop seeded from a resumed hold starts at the storm's start as the
                        // wall clock carried it over, a few milliseconds off the model's.
                        let early = if is_down && self.resumed.remove(&i) {
                            Duration::from_secs(1)
                        } else {
                            Duration::ZERO
                        };
                        self.tenants[i].fire(at, early);
                    }
                }
            }
        }
    }

    /// Tenant `i`'s session is observed in the gateway's current state at `now`.
    fn observe(&mut self, i: usize, now: Instant) {
        self.advance(now);
        let model = &mut self.tenants[i];
        let Some((st, reason, _)) = model.gateway.clone() else {
            return;
        };
        if !model.configured {
            return;
        }
        let established = model.linked && !model.fresh;
        if model.linked {
            model.fresh = false;
        }
        if st == St::Open {
            let was_down = !matches!(model.run, Run::Up(_));
            if was_down {
                model.run = Run::Up(now);
            }
            model.held = false;
            self.detector.recovered(now, &self.policy, &i);
            self.storm_events(now);
            self.advance(now);
            return;
        }
        let transient = !st.terminal();
        let outage = transient && model.linked && self.detector.would_hold(&self.policy, &i);
        let dropped = matches!(model.run, Run::Up(_)) && established;
        if dropped && outage {
            model.held = true;
        }
        match &mut model.run {
            Run::Down(_, kept) => {
                if reason.is_some() {
                    kept.clone_from(&reason);
                }
            }
            _ => model.run = Run::Down(now, reason.clone()),
        }
        if !transient {
            // Decided now; the episode (X-Status-Changed-At) began at the run's start.
            model.decide(now, Status::Disconnected, reason.clone());
        }
        if dropped && transient && model.linked {
            let linked = self.linked();
            DROPS.fetch_add(1, Ordering::Relaxed);
            let close = reason.filter(|_| st != St::Connecting);
            self.detector
                .dropped(now, &self.policy, &i, linked, close.as_deref());
            match self.detector.membership(&i) {
                Some((id, last)) => {
                    if let Some((_, hold)) = self.stored.iter_mut().find(|(s, _)| *s == id) {
                        if !hold.held.contains(&i) {
                            hold.held.push(i);
                        }
                        hold.last_reason = last.to_string();
                    }
                }
                None => self.tenants[i].held = false,
            }
            self.storm_events(now);
        }
        self.advance(now);
    }

    /// Tenant `i`'s link (re)connected: the next observation is what it learns.
    fn link_up(&mut self, i: usize) {
        let model = &mut self.tenants[i];
        if model.configured {
            model.linked = true;
            model.fresh = true;
        }
    }

    /// Tenant `i`'s link dropped.
    fn link_down(&mut self, i: usize) {
        let model = &mut self.tenants[i];
        if model.linked {
            model.linked = false;
            self.detector.unlinked(&i);
        }
    }

    /// A reload to the tenants of `mask` and the storm hold `storm`: removed tenants leave at
    /// once, added ones start first-seen (their links connect next), the new hold applies.
    fn reload(&mut self, now: Instant, mask: u8, storm: bool) -> Vec<usize> {
        self.advance(now);
        self.policy = storm_policy(storm);
        let mut added = Vec::new();
        for i in 0..4 {
            let wanted = mask & (1 << i) != 0;
            let model = &mut self.tenants[i];
            match (model.configured, wanted) {
                (true, false) => {
                    model.configured = false;
                    model.linked = false;
                    model.held = false;
                    // What the removal releases is acted on once every removed tenant is gone:
                    // nothing new is decided for any of them (SPEC 4, tenant lifecycle).
                    self.detector.removed(now, &self.policy, &i);
                }
                (false, true) => {
                    model.configured = true;
                    model.stable = None;
                    model.run = Run::None;
                    model.held = false;
                    added.push(i);
                }
                _ => {}
            }
        }
        self.detector.on_timeout(now, &self.policy);
        self.storm_events(now);
        added
    }

    /// A new process on the same state: new debouncers seeded with the stable states, the holds
    /// resumed (their start moved by the clock the wall clock did not see), every link fresh.
    /// The old one decided nothing after `stopped`.
    fn restart(&mut self, stopped: Instant, now: Instant) {
        self.advance(stopped);
        let moved = now - self.last_saved;
        let saved: Vec<Saved<usize>> = std::mem::take(&mut self.stored)
            .into_iter()
            .map(|(_, s)| Saved {
                since: s.since + moved,
                held: s
                    .held
                    .into_iter()
                    .filter(|i| self.tenants[*i].configured)
                    .collect(),
                ..s
            })
            .collect();
        self.resumed = saved.iter().flat_map(|s| s.held.clone()).collect();
        self.detector = Detector::resume(now, saved, DISCONNECT_GRACE);
        // The new process stores what it resumed, under its own ids, anchored to its own clock:
        // the next restart moves the holds by the time since this one.
        self.stored = self.detector.saved_with_ids();
        if self.detector.view(&self.policy).is_some() {
            self.last_saved = now;
        }
        let detector = &self.detector;
        for (i, model) in self.tenants.iter_mut().enumerate() {
            model.run = Run::None;
            model.held = false;
            model.linked = false;
            // A member still held is down as far as the new process knows (SPEC 3: the state
            // stays as last known): the drop the storm holds, from the storm's start.
            if let Some((since, reason)) = detector.held_since(&i) {
                if model.configured && model.stable != Some(Status::Disconnected) {
                    model.run = Run::Down(since, Some(reason.to_string()));
                    model.held = true;
                }
            }
        }
    }
}

/// Everything the harness drives, and what it learned.
struct World {
    shared: bool,
    gateway: SimGateway,
    backend: Arc<SimBackend>,
    dir: tempfile::TempDir,
    calls: Arc<Mutex<Vec<(Instant, Call)>>>,
    model: Model,
    /// The backend's answer mode and since when.
    modes: Vec<(Instant, Backend)>,
    /// When the sidecar was killed (-9) or restarted.
    crashes: Vec<Instant>,
}

impl World {
    fn configured_ids(&self) -> Vec<&'static str> {
        (0..4)
            .filter(|i| self.model.tenants[*i].configured)
            .map(|i| TENANTS[i])
            .collect()
    }

    fn config(&self) -> wa_status_sidecar::config::Config {
        let url = if self.shared {
            self.gateway.shared_url()
        } else {
            self.gateway.url_template()
        };
        let mode = if self.shared { "shared" } else { "per-tenant" };
        config(
            mode,
            &url,
            &self.backend,
            self.dir.path(),
            &self.configured_ids(),
            &debounce(self.model.policy.fraction > 0.0),
        )
    }

    /// The gateway's state of every tenant as every new link learns it first.
    fn set_snapshots(&self) {
        let tenants = &self.model.tenants;
        if self.shared {
            let frames = tenants
                .iter()
                .filter_map(|t| Some(t.gateway.as_ref()?.2.clone()))
                .collect();
            self.gateway.set_snapshot_frames(sim::SHARED, frames);
        } else {
            for (tenant, model) in TENANTS.iter().zip(tenants) {
                if let Some((_, _, text)) = &model.gateway {
                    self.gateway.set_snapshot(tenant, text.clone());
                }
            }
        }
    }

    /// The gateway's state for tenant `i` changes: the frame goes out and becomes its snapshot.
    fn set(&mut self, now: Instant, i: usize, st: St, variant: u8) {
        let (text, reason) = frame(self.shared, TENANTS[i], st, variant);
        self.model.tenants[i].gateway = Some((st, reason, text.clone()));
        self.set_snapshots();
        let link = if self.shared { sim::SHARED } else { TENANTS[i] };
        self.gateway.send(link, &text);
        self.model.observe(i, now);
    }

    /// Links `tenants` up in the model at `at` and lets each learn its session.
    fn linked_up(&mut self, at: Instant, tenants: &[usize]) {
        for &i in tenants {
            self.model.link_up(i);
        }
        for &i in tenants {
            self.model.observe(i, at);
        }
    }
}

/// The links the gateway has accepted so far, per link name.
fn accepted(world: &World) -> Vec<usize> {
    let mut names: Vec<&str> = TENANTS.to_vec();
    names.push(sim::SHARED);
    names.iter().map(|n| world.gateway.accepted(n)).collect()
}

/// Waits until every link that `before` lacks is up and has been sent its snapshot, so the
/// sessions are observed before the next step, as the model assumes. Returns when the links
/// were up: the model's instant of observation, never after the sidecar's.
async fn links_up(world: &World, before: &[usize], tenants: &[usize]) -> Instant {
    if world.shared {
        world
            .gateway
            .wait_accepted(sim::SHARED, before[4] + 1)
            .await;
    } else {
        for i in tenants {
            world
                .gateway
                .wait_accepted(TENANTS[*i], before[*i] + 1)
                .await;
        }
    }
    let up = Instant::now();
    // The snapshot travels right after the upgrade.
    tokio::time::sleep(Duration::from_millis(10)).await;
    up
}

async fn start(world: &mut World) -> Sidecar {
    let before = accepted(world);
    let sidecar = Sidecar::start(world.config()).await.expect("starts");
    let configured: Vec<usize> = (0..4)
        .filter(|i| world.model.tenants[*i].configured)
        .collect();
    let up = links_up(world, &before, &configured).await;
    world.linked_up(up, &configured);
    sidecar
}

async fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let backend = Arc::new(SimBackend::start().await.unwrap());
    let calls = Arc::new(Mutex::new(Vec::new()));
    {
        let (backend, calls) = (backend.clone(), calls.clone());
        tokio::spawn(async move {
            while let Some(call) = backend.next_call().await {
                calls.lock().unwrap().push((Instant::now(), call));
            }
        });
    }
    let tenants = (0..4)
        .map(|i| TenantModel {
            configured: case.configured & (1 << i) != 0,
            gateway: case.initial[i].map(|st| {
                let (text, reason) = frame(case.shared, TENANTS[i], st, 0);
                (st, reason, text)
            }),
            linked: false,
            fresh: false,
            held: false,
            stable: None,
            run: Run::None,
            decisions: Vec::new(),
        })
        .collect();
    let mut world = World {
        shared: case.shared,
        gateway: SimGateway::start().await.unwrap(),
        backend,
        dir: tempfile::tempdir().unwrap(),
        calls,
        model: Model {
            tenants,
            detector: Detector::new(),
            policy: storm_policy(case.storm),
            last_saved: Instant::now(),
            storms: 0,
            resumed: Default::default(),
            stored: Vec::new(),
        },
        modes: vec![(Instant::now(), Backend::Ok)],
        crashes: Vec::new(),
    };
    world.set_snapshots();
    let mut sidecar = Some(start(&mut world).await);

    for (step, wait) in &case.steps {
        let now = Instant::now();
        world.model.advance(now);
        let mut wait = Duration::from_secs(*wait);
        let mut relinked = Vec::new();
        match step {
            Step::Set(i, st, variant) => world.set(now, *i, *st, *variant),
            Step::SetMany(mask, st) => {
                for i in (0..4).filter(|i| mask & (1 << i) != 0) {
                    world.set(now, i, *st, i as u8);
                }
            }
            Step::Foreign(link, named, st) => {
                if world.shared {
                    world
                        .gateway
                        .send(sim::SHARED, &frame(true, "zz9", *st, 0).0);
                } else if link != named {
                    world.gateway.send(
                        TENANTS[*link],
                        &frame(true, TENANTS[*named], *st, *link as u8).0,
                    );
                }
            }
            Step::DropLink(i) => {
                let (link, dropped) = if world.shared {
                    (sim::SHARED, (0..4).collect())
                } else {
                    (TENANTS[*i], vec![*i])
                };
                world.gateway.drop_links(link);
                for &t in &dropped {
                    world.model.link_down(t);
                }
                // The link comes back after a backoff of up to 30 s, and learns its sessions,
                // unchanged meanwhile.
                wait = wait.max(Duration::from_secs(35));
                relinked = dropped
                    .into_iter()
                    .filter(|t| world.model.tenants[*t].configured)
                    .collect();
            }
            Step::Backend(mode) => {
                world.backend.set_default(mode.reply());
                world.modes.push((now, *mode));
            }
            Step::Reload(mask, storm) => {
                let mask = if *mask == 0 { 1 } else { *mask };
                let storm = case.storm && *storm;
                let added = world.model.reload(now, mask, storm);
                let before = accepted(&world);
                sidecar.as_ref().unwrap().reload(world.config()).unwrap();
                if world.shared {
                    // Carried by the shared link at once; it learns them from the gateway's next
                    // events.
                    world.linked_up(now, &[]);
                    for &i in &added {
                        world.model.link_up(i);
                        if let Some((_, _, text)) = &world.model.tenants[i].gateway {
                            world.gateway.send(sim::SHARED, text);
                        }
                        world.model.observe(i, now);
                    }
                } else {
                    let up = links_up(&world, &before, &added).await;
                    world.linked_up(up, &added);
                }
            }
            Step::Crash | Step::Restart => {
                let old = sidecar.take().unwrap();
                // A graceful stop closes the links and stops the timers first, then drains the
                // deliveries (a slow backend keeps it up to the request timeout): nothing is
                // decided after this instant.
                let stopped = Instant::now();
                if matches!(step, Step::Crash) {
                    if case.storm {
                        // The model cannot know which of the last holds the writer had written
                        // at the instant of a kill; the store's own crash tests cover that.
                        old.settle_state().await;
                    }
                    old.crash().await;
                } else {
                    old.shutdown().await;
                }
                let now = Instant::now();
                world.crashes.push(now);
                world.model.restart(stopped, now);
                sidecar = Some(start(&mut world).await);
            }
        }
        // A step's frames are read, and what it decides is sent, before the next step: a few
        // milliseconds of clock, far from any grace (those end half-way between seconds).
        let running = sidecar.as_ref().expect("running");
        tick(wait + Duration::from_millis(10), running, &mut world.model).await;
        if !relinked.is_empty() {
            let now = Instant::now();
            world.linked_up(now, &relinked);
        }
    }

    // The end: a healthy backend, long enough for every backoff (5 min at most) to run out.
    let now = Instant::now();
    world.model.advance(now);
    world.backend.set_default(Reply::ok());
    world.modes.push((now, Backend::Ok));
    let sidecar = sidecar.take().unwrap();
    tick(Duration::from_secs(400), &sidecar, &mut world.model).await;
    let views = sidecar.tenants();
    sidecar.shutdown().await;
    let calls = world.calls.lock().unwrap().clone();
    let result = check(&world, &calls, &views);
    // `MODEL_DEBUG=1` prints what the backend received against what the model decided, with
    // times from the case's start: the first thing to read when a case fails.
    if result.is_err() && std::env::var("MODEL_DEBUG").is_ok() {
        eprintln!("FAILED CASE {case:?}");
        for (at, c) in &calls {
            eprintln!(
                "CALL {:?} {} {} {:?} {} {:?}",
                *at - world.modes[0].0,
                c.tenant_id,
                c.status,
                c.reason,
                c.answered,
                c.header("idempotency-key")
            );
        }
        for (i, t) in world.model.tenants.iter().enumerate() {
            for d in &t.decisions {
                eprintln!(
                    "DEC {} {:?} {:?} {:?}",
                    TENANTS[i],
                    d.at - world.modes[0].0,
                    d.status,
                    d.reason
                );
            }
        }
    }
    STORMS.fetch_add(u64::from(world.model.storms > 0), Ordering::Relaxed);
    let outages = calls
        .iter()
        .filter(|(_, c)| {
            c.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("WhatsApp-wide outage"))
        })
        .count();
    OUTAGE_CALLS.fetch_add(outages as u64, Ordering::Relaxed);
    result
}

/// Cases in which a storm began, and calls reporting an outage: the property must exercise the
/// hold it claims to check.
static STORMS: AtomicU64 = AtomicU64::new(0);
static DROPS: AtomicU64 = AtomicU64::new(0);
static OUTAGE_CALLS: AtomicU64 = AtomicU64::new(0);

/// The backend's mode at `at`.
fn mode_at(world: &World, at: Instant) -> Backend {
    world
        .modes
        .iter()
        .rev()
        .find(|(since, _)| *since <= at)
        .map_or(Backend::Ok, |(_, m)| *m)
}

/// Moves the paused clock `total` forward in steps of at most 250 ms, the model with it. A
/// paused clock jumps to the next timer whenever the runtime looks idle, and it can look idle for
/// an instant while a blocking task hands its result back; short steps keep such a jump short.
///
/// While a delivery is owed, each step first lets the journal writer write everything handed to
/// it (a blocking wait, which holds the paused clock). The writer is a thread of its own and the
/// backend is a real socket, both running in real time: the paused clock would otherwise race
/// ahead, seconds at a step, while they take a few real milliseconds on a busy machine, and a
/// transition (durable before sent) would reach the backend seconds of paused clock after its
/// decision (about one run in ten under load). In a real process everything runs in real time.
async fn tick(total: Duration, sidecar: &Sidecar, model: &mut Model) {
    let end = Instant::now() + total;
    while Instant::now() < end {
        if sidecar.delivering() {
            sidecar.settle_state().await;
        }
        let step = (end - Instant::now()).min(Duration::from_millis(250));
        tokio::time::sleep(step).await;
        model.advance(Instant::now());
    }
}

/// Whether the sidecar got this call's 2xx: the receiver records its answer when the call
/// arrives, but in slow mode the sidecar gives up before it comes.
fn settles(world: &World, at: Instant, call: &Call) -> bool {
    (200..300).contains(&call.answered) && mode_at(world, at) != Backend::Slow
}

/// Until when the engine may hold decision `d` back: the `Retry-After` answered to the
/// tenant's last call before it (a new transition waits for it too; capped at 5 min; 0, negative
/// or a past date ask for nothing), or, when that call failed carrying the status `d` decides
/// again (a newer reason), the backoff that call earned (at most 5 min). `d.at` otherwise.
fn may_wait_until(world: &World, mine: &[&(Instant, Call)], d: &Decision) -> Instant {
    let Some((when, call)) = mine.iter().rfind(|(when, _)| *when <= d.at) else {
        return d.at;
    };
    let retried = !(200..300).contains(&call.answered) && call.status == d.status.as_str();
    let backoff = match retried {
        true => *when + Duration::from_secs(300),
        false => d.at,
    };
    asked_until(world, (when, call), d.at)
        .max(backoff)
        .max(d.at)
}

/// Until when the `Retry-After` answered to `call` (made `when`) asked for no call; `at` when
/// it asked for none.
fn asked_until(world: &World, (when, call): (&Instant, &Call), at: Instant) -> Instant {
    // The mode that gave the answer: the one in force then, or the one just before it when the
    // mode changed at that very instant (the paused clock does not order the two).
    let mut modes = world
        .modes
        .iter()
        .rev()
        .filter(|(since, _)| *since <= *when);
    let current = modes.next();
    let before = current
        .filter(|(since, _)| since == when)
        .and_then(|_| modes.next());
    let answered_by = [current, before]
        .into_iter()
        .flatten()
        .find_map(|(_, mode)| match mode {
            Backend::Fail(status, Some(after)) if *status == call.answered => Some(*after),
            _ => None,
        });
    let Some(after) = answered_by else {
        return at;
    };
    let asked = after.parse::<u64>().map_or(0, |secs| secs.min(300));
    *when + Duration::from_secs(asked)
}

/// The backend was answering 200 for the 12 s before `at` (no slow request still in flight) and
/// the second after it, and nothing restarted in that time.
fn healthy_around(world: &World, at: Instant, steps_end: Instant) -> bool {
    let from = at.checked_sub(Duration::from_secs(12)).unwrap_or(at);
    let to = at + Duration::from_secs(1);
    if to > steps_end {
        return false;
    }
    let ok_through = mode_at(world, from) == Backend::Ok
        && world
            .modes
            .iter()
            .all(|(since, m)| *since < from || *since > to || *m == Backend::Ok);
    let calm = world.crashes.iter().all(|c| *c < from || *c > to);
    ok_through && calm
}

fn check(
    world: &World,
    calls: &[(Instant, Call)],
    views: &[wa_status_sidecar::registry::TenantView],
) -> Result<(), TestCaseError> {
    let steps_end = world.modes.last().unwrap().0;
    let mut by_key: HashMap<String, Vec<&(Instant, Call)>> = HashMap::new();
    for call in calls {
        prop_assert!(
            TENANTS.contains(&call.1.tenant_id.as_str()),
            "a call for {}",
            call.1.tenant_id
        );
        let key = call.1.header("idempotency-key").unwrap_or("").to_string();
        by_key.entry(key).or_default().push(call);
    }
    for (key, group) in &by_key {
        let (first_at, first) = group[0];
        let t = TENANTS.iter().position(|t| *t == first.tenant_id).unwrap();
        let model = &world.model.tenants[t];
        // The newest change decided for this tenant when the transition was first sent.
        let decided = model
            .decisions
            .iter()
            .rev()
            .find(|d| d.at <= *first_at + d.early + Duration::from_millis(5));
        let Some(decided) = decided else {
            return Err(TestCaseError::fail(format!(
                "{}: a call the model never decided: {} {:?} (key {key}); decisions {:?}",
                first.tenant_id, first.status, first.reason, model.decisions
            )));
        };
        prop_assert_eq!(
            (first.status.as_str(), first.reason.as_deref()),
            (decided.status.as_str(), decided.reason.as_deref()),
            "{}: the call is not the newest decided change (key {}); decisions {:?}",
            &first.tenant_id,
            key,
            &model.decisions
        );
        for (at, call) in group {
            prop_assert_eq!(&call.body, &first.body, "a retry changed the body");
            prop_assert_eq!(
                call.header("x-status-changed-at"),
                first.header("x-status-changed-at")
            );
            let _ = at;
        }
        // Settled once: after a 2xx (or a 400, which drops it), nothing more with this key,
        // unless the sidecar was killed or restarted in between.
        if let Some(settled) = group
            .iter()
            .position(|(at, c)| settles(world, *at, c) || c.answered == 400)
        {
            let settled_at = group[settled].0;
            for (at, _) in &group[settled + 1..] {
                prop_assert!(
                    world.crashes.iter().any(|c| *c >= settled_at && *c <= *at),
                    "{}: key {} sent again after it was settled: {:?}",
                    &first.tenant_id,
                    key,
                    group
                        .iter()
                        .map(|(at, c)| (*at - world.modes[0].0, c.status.clone(), c.answered))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    for (i, model) in world.model.tenants.iter().enumerate() {
        let tenant = TENANTS[i];
        let mine: Vec<&(Instant, Call)> =
            calls.iter().filter(|c| c.1.tenant_id == tenant).collect();
        // Every change decided while the backend was healthy reaches it within a second, unless
        // the backend already had that status (a 400 dropped the change before it). An answer at
        // the decision's very instant counts as before it: under the paused clock a retry that
        // was due then and the decision share one instant, and which ran first is not the
        // model's to say (the retry, then a newer reason for the status it just delivered,
        // which the backend has: nothing to send).
        for d in &model.decisions {
            if !healthy_around(world, d.at, steps_end) {
                continue;
            }
            let last_ack = mine
                .iter()
                .rfind(|(at, c)| *at <= d.at && settles(world, *at, c))
                .map(|(_, c)| c.status.clone());
            if last_ack.as_deref() == Some(d.status.as_str()) {
                continue;
            }
            let due = may_wait_until(world, &mine, d);
            // Waiting, it may be superseded by the tenant's next decision.
            if model
                .decisions
                .iter()
                .any(|next| next.at > d.at && next.at <= due)
            {
                continue;
            }
            let reached = mine.iter().any(|(at, c)| {
                *at + d.early >= d.at
                    && *at <= due + Duration::from_secs(1)
                    && c.status == d.status.as_str()
                    && c.reason == d.reason
            });
            prop_assert!(
                reached,
                "{}: {:?} decided while the backend was healthy never reached it; calls {:?}",
                tenant,
                d,
                mine.iter()
                    .map(|(at, c)| (*at - d.at, c.status.clone(), c.answered))
                    .collect::<Vec<_>>()
            );
        }
        // In the end the backend has the last decided state of every configured tenant.
        if model.configured {
            if let Some(last) = model.decisions.last() {
                let acked = mine
                    .iter()
                    .rfind(|(at, c)| settles(world, *at, c))
                    .map(|(_, c)| c.status.clone());
                let dropped = mine
                    .iter()
                    .any(|(at, c)| *at + last.early >= last.at && c.answered == 400);
                prop_assert!(
                    acked.as_deref() == Some(last.status.as_str()) || dropped,
                    "{}: the backend ends with {:?}, the model decided {:?}",
                    tenant,
                    acked,
                    last
                );
            }
        }
    }
    for view in views {
        prop_assert!(view.owed.is_none(), "still owed at the end: {:?}", view);
    }
    Ok(())
}

#[test]
fn the_engine_decides_and_delivers_what_the_model_decides() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&case(), |case| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run_case(&case))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (storms, outages) = (
        STORMS.load(Ordering::Relaxed),
        OUTAGE_CALLS.load(Ordering::Relaxed),
    );
    eprintln!(
        "{cases} cases: {} drops fed to the detector, {storms} with a storm, {outages} outage calls",
        DROPS.load(Ordering::Relaxed)
    );
    // About one case in eight has a storm (most have the hold on, and a drop of two of the
    // tenants within 10 s is needed): one in twenty is far below that at 300 cases, so the bound
    // holds whatever the seed, and still fails if the hold goes unexercised.
    assert!(
        storms * 20 >= u64::from(cases),
        "only {storms} cases had a storm"
    );
    assert!(
        outages * 20 >= u64::from(cases),
        "only {outages} outage calls"
    );
}

/// Cases this test found, kept so they run every time.
fn found() -> Vec<Case> {
    vec![
        // A newer reason for the drop a tenant owed while the backend answered 429 (a 408 after
        // a 428), decided once the backend was healthy again: it waits out the backoff the
        // failed calls earned, and the session came back first. The model wanted it within 1 s.
        // (Whether a run shows it depends on the backoff drawn: it failed 1 stressed run in 8.)
        Case {
            shared: false,
            storm: false,
            configured: 1,
            initial: [
                Some(St::LoggedOut),
                Some(St::Open),
                None,
                Some(St::Connecting),
            ],
            steps: vec![
                (Step::Set(2, St::LoggedOut, 60), 60),
                (Step::SetMany(15, St::Open), 2),
                (Step::Set(3, St::Qr, 243), 60),
                (Step::Set(2, St::Open, 191), 3),
                (Step::SetMany(13, St::Connecting), 3),
                (Step::SetMany(12, St::Open), 3),
                (Step::Backend(Backend::Fail(429, None)), 0),
                (Step::Set(3, St::Closed(515), 94), 10),
                (Step::Set(2, St::Closed(428), 12), 60),
                (Step::Set(2, St::Qr, 190), 5),
                (Step::Set(3, St::LoggedOut, 3), 8),
                (Step::Reload(7, true), 60),
                (Step::SetMany(15, St::Closed(428)), 0),
                (Step::Backend(Backend::Ok), 4),
                (Step::Set(2, St::Closed(408), 125), 11),
                (Step::Reload(10, true), 3),
                (Step::Set(3, St::LoggedOut, 154), 9),
                (Step::Set(0, St::Closed(428), 139), 20),
                (Step::Reload(4, false), 10),
                (Step::Backend(Backend::Slow), 20),
                (Step::SetMany(15, St::Open), 9),
            ],
        },
        // A call answered 500 with `Retry-After: 400` at the instant the backend turned healthy
        // and a drop was decided: the drop waits out the Retry-After (5 min, capped), and the
        // session came back before it, so the drop was superseded and never sent. The model
        // took the answer's mode from the switch's instant (Ok) and wanted the drop within 1 s.
        Case {
            shared: false,
            storm: false,
            configured: 1,
            initial: [None, None, None, None],
            steps: vec![
                (Step::Backend(Backend::Fail(500, Some("400"))), 0),
                (Step::Set(0, St::Open, 0), 4),
                (Step::Backend(Backend::Ok), 4),
                (Step::Set(0, St::Open, 0), 3),
                (Step::Set(0, St::Connecting, 0), 6),
                (Step::SetMany(3, St::Open), 1),
            ],
        },
        // A kill -9 during a storm, then a reload: the drop seeded from the resumed hold was
        // decided at its grace a few milliseconds before the model's (the storm's start crossed
        // the restart on the wall clock), so the model called it a call it never decided.
        Case {
            shared: false,
            storm: true,
            configured: 1,
            initial: [None, None, None, None],
            steps: vec![
                (Step::SetMany(10, St::Open), 0),
                (Step::Reload(10, true), 0),
                (Step::Set(0, St::Open, 0), 0),
                (Step::SetMany(10, St::Connecting), 0),
                (Step::Crash, 0),
                (Step::Reload(6, false), 0),
            ],
        },
        // A kill -9 came after the backend acknowledged `connected` but before the journal had
        // that written: the restart still owed it over a reported QR drop. Then the phone
        // logged out, and the outbox took "disconnected" for what the backend already had and
        // sent nothing; the backend kept `connected`. A transition owed at start (or a call that
        // went unanswered) now leaves the backend's state unsure until a call is acknowledged.
        // Timing decides whether the acknowledgement is written before the kill, so this case
        // failed only now and then: 2 runs of 45 with two busy loops beside them.
        Case {
            shared: false,
            storm: false,
            configured: 8,
            initial: [
                Some(St::Closed(408)),
                Some(St::Closed(428)),
                Some(St::Open),
                Some(St::Open),
            ],
            steps: vec![
                (Step::SetMany(8, St::Closed(428)), 0),
                (Step::Backend(Backend::Credentials), 7),
                (Step::SetMany(13, St::Open), 2),
                (Step::Backend(Backend::Ok), 2),
                (Step::Backend(Backend::Ok), 2),
                (Step::Set(3, St::Qr, 6), 8),
                (Step::Set(0, St::LoggedOut, 97), 1),
                (Step::Set(2, St::Qr, 195), 3),
                (Step::SetMany(8, St::Open), 60),
                (Step::Backend(Backend::Credentials), 0),
                (Step::Set(2, St::Closed(408), 27), 1),
                (Step::Crash, 20),
                (Step::SetMany(15, St::Open), 20),
                (Step::Foreign(3, 0, St::LoggedOut), 2),
                (Step::Set(3, St::LoggedOut, 75), 1),
                (Step::Reload(9, true), 11),
                (Step::SetMany(9, St::Connecting), 0),
            ],
        },
        // A 400 dropped a decided transition; a kill -9 later the restarted sidecar, seeing the
        // session unchanged, decided it again and called the backend. The decided state is now
        // stored with the flap penalty, not only what the backend took.
        Case {
            shared: false,
            storm: false,
            configured: 6,
            initial: [None, None, None, None],
            steps: vec![
                (Step::Set(0, St::Open, 0), 0),
                (Step::Backend(Backend::Refuse), 0),
                (Step::Set(1, St::Closed(428), 0), 0),
                (Step::Set(1, St::Connecting, 0), 6),
                (Step::Crash, 1),
            ],
        },
        // A storm member came back and dropped again before the hold ended, then a kill -9:
        // the hold it had rejoined was not stored, and the restarted sidecar reported it at its
        // own grace. Holds are now stored while they run, even when they hold nobody for a while.
        Case {
            shared: false,
            storm: true,
            configured: 10,
            initial: [None, Some(St::Open), None, Some(St::Open)],
            steps: vec![
                (Step::SetMany(10, St::Connecting), 0),
                (Step::Set(1, St::Open, 0), 0),
                (Step::SetMany(8, St::Open), 0),
                (Step::SetMany(2, St::Connecting), 0),
                (Step::Crash, 0),
            ],
        },
        // A tenant joined a storm with a new close reason, then a kill -9: the restarted sidecar
        // named the old last close in the outage reason. Joins now store the storm's last close.
        Case {
            shared: false,
            storm: true,
            configured: 1,
            initial: [None, None, None, None],
            steps: vec![
                (Step::SetMany(8, St::Open), 0),
                (Step::Reload(11, true), 0),
                (Step::SetMany(7, St::Open), 0),
                (Step::SetMany(14, St::Connecting), 0),
                (Step::Set(0, St::Closed(428), 0), 0),
                (Step::Crash, 0),
            ],
        },
        // Two held tenants removed by the reload that also turned the hold off: the model
        // released the second before removing it. Nothing new is decided for a removed tenant.
        Case {
            shared: false,
            storm: true,
            configured: 1,
            initial: [None, None, None, None],
            steps: vec![
                (Step::Set(0, St::Open, 0), 0),
                (Step::Reload(10, true), 0),
                (Step::SetMany(10, St::Open), 0),
                (Step::SetMany(10, St::Connecting), 6),
                (Step::Reload(4, false), 1),
            ],
        },
        // A hold resumed after a kill -9 ends a few milliseconds before the model's (the wall
        // clock it is stored in moves on), and its report was refused with a 400: the check
        // looked for the 400 only after the model's instant.
        Case {
            shared: false,
            storm: true,
            configured: 5,
            initial: [None, None, None, None],
            steps: vec![
                (Step::SetMany(7, St::Open), 0),
                (Step::SetMany(15, St::Connecting), 0),
                (Step::Crash, 0),
                (Step::Backend(Backend::Refuse), 60),
                (Step::Set(0, St::Open, 0), 0),
            ],
        },
        // Two kills -9 in a row during a hold: the model moved the hold's start by the time
        // before the first restart twice; the restarted sidecar stores the holds it resumed, so
        // the second restart moves them only by the time since the first.
        Case {
            shared: false,
            storm: true,
            configured: 12,
            initial: [None, None, Some(St::Open), Some(St::Open)],
            steps: vec![
                (Step::SetMany(12, St::Connecting), 0),
                (Step::Set(0, St::Open, 0), 1),
                (Step::Reload(8, true), 0),
                (Step::Set(3, St::Open, 0), 0),
                (Step::SetMany(8, St::Connecting), 1),
                (Step::Crash, 0),
                (Step::Crash, 0),
            ],
        },
        // A graceful restart while a slow backend kept the old process draining: the model went
        // on deciding through the drain (a grace ran out in it); the sidecar stops deciding
        // when it begins to stop, and the restarted one sees the session afresh.
        Case {
            shared: false,
            storm: false,
            configured: 14,
            initial: [None, None, None, None],
            steps: vec![
                (Step::Backend(Backend::Slow), 0),
                (Step::Set(2, St::Open, 0), 0),
                (Step::Set(0, St::Open, 0), 3),
                (Step::SetMany(2, St::Connecting), 0),
                (Step::Restart, 0),
                (Step::Set(1, St::Closed(428), 0), 0),
            ],
        },
    ]
}

#[test]
fn the_cases_it_found_stay_fixed() {
    for case in found() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        if let Err(e) = runtime.block_on(run_case(&case)) {
            panic!("{e}\n{case:#?}");
        }
    }
}
