//! The per-tenant debounce state machine: decides which of a session's ups and downs are real
//! `connected` / `disconnected` transitions (SPEC section 4).
//!
//! # Model
//!
//! Baileys drops and re-opens sockets all the time, so a single gateway observation means little.
//! A [`Debouncer`] holds four small pieces of state per tenant:
//!
//! - **The raw run**: the current uninterrupted run of Up observations, or of Down observations,
//!   and the instant it began. That instant is the episode start the backend receives as
//!   `X-Status-Changed-At` (the first Down of a drop, the first Up of a recovery). A Down run also
//!   keeps the reason of the drop: the last close seen in it, because a later `connecting` says
//!   nothing about why the session went down.
//! - **The stable state**: what has been decided. It changes only through a [`Report`], and a
//!   report is only made when it changes, so a restart seeded from [`Restored`] with unchanged
//!   sessions reports nothing.
//! - **The gateway link**: up (and whether it has carried an observation since it connected), or
//!   down since an instant with the last connect error.
//! - **Flap damping** (RFC 2439 style): a penalty stored as a value and the instant it had that
//!   value, decayed analytically, plus the `flapping` flag.
//!
//! The decisions:
//!
//! - Down(terminal) ([`is_terminal`]) is reported as disconnected at once.
//! - A Down(transient) run that lasts `disconnect_grace` is reported as disconnected.
//! - An Up run that lasts `connect_grace` is reported as connected; while the tenant is flapping,
//!   also not before the penalty has decayed to `flap_reuse`.
//! - An Up->Down change seen on an established link adds a flap to the penalty. On reaching
//!   `flap_suppress` the tenant is flapping and is reported as disconnected at once.
//! - A gateway link down for `gateway_down_grace` is reported as disconnected at once.
//!
//! # Timers are data
//!
//! No deadline is stored: [`Debouncer::next_deadline`] derives the earliest one from the state and
//! the [`Policy`] on every call, so a reloaded policy moves every running timer at once and there
//! is nothing to cancel. The driver sleeps until that instant and calls [`Debouncer::on_timeout`],
//! which fires whatever is due, in deadline order, and tolerates being called early, late or twice.
//!
//! # Purity
//!
//! This module does no I/O and never reads the clock: every call takes `now` from its caller, so
//! tests move time by hand and the async driver is the only place that knows what time it is.

use std::time::Duration;

use tokio::time::Instant;

use crate::observe::{DownCause, DownKind, Observation};

/// What one flap adds to the penalty: RFC 2439's unit, in which the spec's thresholds (3000 to
/// suppress, 750 to reuse) are expressed.
const FLAP_PENALTY: f64 = 1000.0;

/// A drop made below this penalty starts a new flapping episode, whose drops the flapping reason
/// counts: `flap_reuse`, but never above three quarters of one flap. With a `flap_reuse` of 1000
/// or more a single fresh flap is already below it, and the count would restart at every drop
/// until the penalty crossed `flap_reuse` ("3 disconnects" for four). 750 is the default reuse.
const EPISODE_FLOOR: f64 = 0.75 * FLAP_PENALTY;

/// The reason of a drop in which the gateway only ever said `connecting`.
const RECONNECTING: &str = "session reconnecting";

/// Baileys' message when a session gave up waiting for a QR scan: terminal whatever its code.
const QR_REFS_ENDED: &str = "QR refs attempts ended";

/// The longest gateway-supplied text kept in a reason. A misbehaving gateway can send a message
/// of a megabyte, and a reason ends up in a bell notification, a log line and the state file.
const MAX_TEXT_CHARS: usize = 256;

/// A stable session state, as reported to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Connected,
    Disconnected,
}

impl Status {
    /// The wire name, as in the webhook body.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::Disconnected => "disconnected",
        }
    }
}

/// The debounce settings (SPEC section 4 / config `[debounce]`). Passed by reference to every
/// call so 10,000 tenants share one copy and a reload applies at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How long a transient drop may last before it is reported. Default 60 s.
    pub disconnect_grace: std::time::Duration,
    /// How long Up must hold before it is reported. Default 10 s.
    pub connect_grace: std::time::Duration,
    /// Close codes reported at once. Default 401 loggedOut, 403 forbidden, 411 multideviceMismatch.
    pub terminal_codes: Vec<u16>,
    /// How long the gateway link may stay down before the tenant is reported disconnected.
    /// None = never (config value "0s"). Default 5 m.
    pub gateway_down_grace: Option<std::time::Duration>,
    /// The penalty halves every this long. Default 10 m.
    pub flap_half_life: std::time::Duration,
    /// At or above this penalty the tenant is flapping. Default 3000.
    pub flap_suppress: f64,
    /// A flapping tenant may be reported connected again once the penalty is down to this. Default 750.
    pub flap_reuse: f64,
    /// The longest a flapping tenant stays suppressed after its last flap. Default 60 m.
    pub flap_max_suppress: std::time::Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            disconnect_grace: Duration::from_secs(60),
            connect_grace: Duration::from_secs(10),
            terminal_codes: vec![401, 403, 411],
            gateway_down_grace: Some(Duration::from_secs(5 * 60)),
            flap_half_life: Duration::from_secs(10 * 60),
            flap_suppress: 3000.0,
            flap_reuse: 750.0,
            flap_max_suppress: Duration::from_secs(60 * 60),
        }
    }
}

/// A tenant's decided state from the state file, to seed a new [`Debouncer`] after a restart.
/// `Restored::default()` is a tenant seen for the first time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// The state the backend has (or is owed); None for a new tenant, whose first stable state is
    /// reported once.
    pub stable: Option<Status>,
    /// The flap penalty, already decayed to the moment passed to [`Debouncer::new`].
    pub penalty: f64,
    /// Whether the tenant was flapping.
    pub flapping: bool,
    /// A drop held by a mass-outage hold that this process resumed: when the storm began and its
    /// last close. The tenant's last known state is that drop, held until the hold lifts, unless
    /// what its link learns first says otherwise.
    pub held: Option<(Instant, String)>,
}

/// A decided change of stable state, to be delivered to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub(crate) status: Status,
    /// Why the session is down; None for `connected`.
    pub(crate) reason: Option<String>,
    /// When the episode began: the first Down observation of the drop, or the first Up of the
    /// recovery (the webhook's `X-Status-Changed-At`).
    pub(crate) since: Instant,
}

/// The last observation, summarised for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Seen {
    Up,
    DownTransient,
    DownTerminal,
}

/// A tenant's debounce state for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    /// Whether the gateway link is up, as last told by `link_up` / `link_down`.
    pub(crate) link_up: bool,
    /// The last observation, if any arrived since the debouncer was created.
    pub(crate) last: Option<Seen>,
    /// The decided state.
    pub(crate) stable: Option<Status>,
    /// The change of stable state a running timer will decide, and when, unless something
    /// intervenes.
    pub(crate) pending: Option<(Status, Instant)>,
    /// The decayed flap penalty.
    pub(crate) penalty: f64,
    pub(crate) flapping: bool,
}

/// One tenant's debounce state machine. See the module documentation for the model.
///
/// Kept small on purpose: a process holds one per tenant, 10,000 of them.
#[derive(Debug, Clone)]
pub struct Debouncer {
    stable: Option<Status>,
    last: Option<Seen>,
    run: Run,
    link: Link,
    damping: Damping,
    /// A mass-outage hold (SPEC 4 rev 12) defers the current drop: see [`Debouncer::hold`].
    held: bool,
    /// Decided reports not yet drained. Usually empty (an empty `Vec` does not allocate); more
    /// than one only when a late `on_timeout` fires several deadlines at once.
    reports: Vec<Report>,
}

/// The current uninterrupted run of raw observations.
#[derive(Debug, Clone)]
enum Run {
    /// Nothing observed since the debouncer was created.
    Unknown,
    Up {
        since: Instant,
    },
    Down {
        since: Instant,
        /// The reason of the drop; None while only `connecting` was seen.
        reason: Option<Box<str>>,
    },
}

#[derive(Debug, Clone)]
enum Link {
    Up {
        /// No observation has arrived since the link (re)connected. The first one only tells the
        /// state the link learns, so it is never counted as a flap: a gateway restart is not the
        /// session flapping.
        fresh: bool,
    },
    Down {
        /// When the outage began: the first `link_down` since the link was last up.
        since: Instant,
        /// The latest connect error, for the "gateway unreachable" reason.
        error: Box<str>,
        /// The gateway-down grace has run out (and was acted on).
        expired: bool,
    },
}

#[derive(Debug, Clone)]
struct Damping {
    /// The penalty at `at`; its value at any later instant is `value * 2^-(elapsed / half_life)`.
    value: f64,
    /// The instant of the last flap (or of the debouncer's creation).
    at: Instant,
    flapping: bool,
    /// Flaps counted since the penalty was last below [`EPISODE_FLOOR`] (or a lower `flap_reuse`),
    /// for the flapping reason.
    drops: u32,
    /// The first of those flaps.
    first_drop: Instant,
}

/// What one observation changed, for the fleet-level storm detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// Nothing the detector counts.
    None,
    /// Up -> Down on an established link: the change that counts as a flap.
    Dropped,
    /// The session is up.
    Up,
}

/// The deadlines a debouncer can have. The order of the variants breaks ties between equal
/// deadlines: a gateway outage is decided before a pending connect, so the tenant is not reported
/// connected and disconnected in the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    GatewayDown,
    Disconnect,
    Connect,
}

impl Debouncer {
    /// A tenant's debouncer, seeded from its stored state (`Restored::default()` for a new tenant).
    ///
    /// It starts as if its gateway link had just connected (no gateway-down timer, next
    /// observation not a flap); a driver whose link is not up yet calls [`Debouncer::link_down`]
    /// right away.
    pub fn new(now: Instant, restored: Restored) -> Self {
        let penalty = if restored.penalty.is_finite() && restored.penalty > 0.0 {
            restored.penalty
        } else {
            0.0
        };
        let held = restored
            .held
            .filter(|_| restored.stable != Some(Status::Disconnected));
        let run = match &held {
            Some((since, reason)) => Run::Down {
                since: *since,
                reason: clean(reason).map(Into::into),
            },
            None => Run::Unknown,
        };
        Debouncer {
            stable: restored.stable,
            last: None,
            run,
            link: Link::Up { fresh: true },
            damping: Damping {
                value: penalty,
                at: now,
                // A stored record that says both connected and flapping is inconsistent (flapping
                // ends exactly when connected is decided); trust the state the backend has, or the
                // flag could never clear.
                flapping: restored.flapping && restored.stable != Some(Status::Connected),
                drops: 0,
                first_drop: now,
            },
            reports: Vec::new(),
            held: held.is_some(),
        }
    }

    /// The gateway link (re)connected. Cancels the gateway-down timer; the session's last known
    /// state and its timers are kept until the link tells otherwise.
    pub fn link_up(&mut self, _now: Instant, _policy: &Policy) {
        self.link = Link::Up { fresh: true };
    }

    /// The gateway link is lost, or a connect attempt failed. The last known session state and its
    /// timers keep running; after `gateway_down_grace` with the link still down the tenant is
    /// reported disconnected. Repeated calls during one outage keep its start and update the
    /// error, so the reason names the latest failure.
    pub fn link_down(&mut self, now: Instant, _policy: &Policy, error: &str) {
        let error: Box<str> = clean(error)
            .unwrap_or_else(|| "link lost".to_string())
            .into();
        match &mut self.link {
            Link::Down { error: kept, .. } => *kept = error,
            Link::Up { .. } => {
                self.link = Link::Down {
                    since: now,
                    error,
                    expired: false,
                }
            }
        }
    }

    /// Feeds one observation of the session.
    ///
    /// An observation that arrives while the link is marked down (a race in the driver) is still
    /// news about the session and is applied, but it is never counted as a flap and leaves the
    /// link state to `link_up` / `link_down`.
    ///
    /// Returns what changed for the fleet-level storm detector: a drop that counts as a flap, or
    /// the session being up.
    pub fn observe(&mut self, now: Instant, policy: &Policy, obs: &Observation) -> Edge {
        self.observe_in_outage(now, policy, obs, false)
    }

    /// [`Debouncer::observe`] during a mass outage: with `outage`, a drop this observation makes
    /// is held from the start (see [`Debouncer::hold`]) and is not counted as a flap.
    pub(crate) fn observe_in_outage(
        &mut self,
        now: Instant,
        policy: &Policy,
        obs: &Observation,
        outage: bool,
    ) -> Edge {
        let established = matches!(self.link, Link::Up { fresh: false });
        if let Link::Up { fresh } = &mut self.link {
            *fresh = false;
        }
        let cause = match obs {
            Observation::Up => {
                self.last = Some(Seen::Up);
                if !matches!(self.run, Run::Up { .. }) {
                    self.run = Run::Up { since: now };
                }
                // The session is back: whatever held its drop is over.
                self.held = false;
                return Edge::Up;
            }
            Observation::Down(cause) => cause,
        };
        let terminal = is_terminal(policy, cause);
        self.last = Some(if terminal {
            Seen::DownTerminal
        } else {
            Seen::DownTransient
        });
        // A `connecting` says nothing about why the session dropped, so it never replaces the
        // reason a close gave.
        let reason = (cause.kind != DownKind::Connecting).then(|| describe(policy, cause));
        let was_up = matches!(self.run, Run::Up { .. });
        let since = match &mut self.run {
            Run::Down {
                since,
                reason: kept,
            } => {
                if let Some(reason) = &reason {
                    *kept = Some(reason.as_str().into());
                }
                *since
            }
            _ => {
                self.run = Run::Down {
                    since: now,
                    reason: reason.as_deref().map(Into::into),
                };
                now
            }
        };
        let dropped = was_up && established;
        if dropped && outage && !terminal {
            // WhatsApp's outage, not the session flapping: held, and not a flap.
            self.held = true;
        }
        if dropped && !self.held && self.flap(now, policy) {
            // The flapping report's episode is this drop, which the raw run began just now. The
            // reason keeps the drop's own cause after "last:", also when it is terminal.
            let damping = &self.damping;
            let text = format!(
                "flapping: {} in {}; last: {}",
                disconnects(damping.drops),
                humane(now.saturating_duration_since(damping.first_drop)),
                reason.as_deref().unwrap_or(RECONNECTING),
            );
            self.decide(Status::Disconnected, Some(text), since);
        }
        if terminal {
            self.decide(Status::Disconnected, reason, since);
        }
        if dropped {
            Edge::Dropped
        } else {
            Edge::None
        }
    }

    /// Holds the current drop for a mass outage (SPEC 4 rev 12): its disconnect is not decided
    /// at `disconnect_grace`, and a drop made while held is not a flap, until
    /// [`Debouncer::release`] or the session coming back. Terminal downs are decided at once
    /// regardless, and so is a gateway outage.
    pub(crate) fn hold(&mut self) {
        self.held = true;
    }

    /// Lifts the hold. A drop still down whose grace has run out is decided now, with `reason`,
    /// the outage's (its episode still began at its first Down); one that has not is decided at
    /// its grace, as any drop. Says whether a report was decided.
    pub(crate) fn release(&mut self, now: Instant, policy: &Policy, reason: &str) -> bool {
        if !std::mem::take(&mut self.held) {
            return false;
        }
        if let Some((at, _)) = self.timers(policy)[1] {
            if at <= now {
                if let Run::Down { since, .. } = self.run {
                    return self.decide(Status::Disconnected, Some(reason.to_string()), since);
                }
            }
        }
        false
    }

    /// Whether a mass-outage hold defers this tenant's disconnect now.
    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    /// Whether the disconnect grace of a transient drop has run out at `now`, so a fleet-level
    /// hold would have to defer it now.
    pub(crate) fn disconnect_due(&self, now: Instant, policy: &Policy) -> bool {
        matches!(self.timers(policy)[1], Some((at, _)) if at <= now)
    }

    /// Fires every timer due at `now`, in deadline order. Calling it early, late or repeatedly is
    /// harmless: a timer not yet due does nothing, and a fired timer is gone.
    pub fn on_timeout(&mut self, now: Instant, policy: &Policy) {
        // Each firing removes its own timer and can add none, so three rounds drain them all;
        // the bound only guards against a future mistake turning this into an endless loop.
        for _ in 0..4 {
            match self.next_timer(policy) {
                Some((at, timer)) if at <= now => self.fire(timer, policy),
                _ => break,
            }
        }
    }

    /// The earliest pending deadline, if any. Recomputed from the state and the policy on every
    /// call, so a reloaded policy applies at once.
    pub fn next_deadline(&self, policy: &Policy) -> Option<Instant> {
        self.next_timer(policy).map(|(at, _)| at)
    }

    /// The next decided change of stable state, oldest first.
    pub fn poll_report(&mut self) -> Option<Report> {
        if self.reports.is_empty() {
            return None;
        }
        let report = self.reports.remove(0);
        if self.reports.is_empty() {
            // Reports are rare; give the buffer back instead of keeping it for all 10,000 tenants.
            self.reports = Vec::new();
        }
        Some(report)
    }

    /// The flap penalty decayed to `now` (never below zero; `now` before the last flap counts as
    /// no decay).
    pub(crate) fn penalty(&self, now: Instant, policy: &Policy) -> f64 {
        let damping = &self.damping;
        if damping.value <= 0.0 {
            return 0.0;
        }
        decay(
            damping.value,
            now.saturating_duration_since(damping.at),
            policy.flap_half_life,
        )
    }

    /// Whether the tenant is flapping: reported disconnected until the penalty has decayed and Up
    /// has held.
    pub fn is_flapping(&self) -> bool {
        self.damping.flapping
    }

    /// The decided state; None until a new tenant's first stable state is decided.
    pub fn stable(&self) -> Option<Status> {
        self.stable
    }

    /// A snapshot for the admin API.
    pub(crate) fn view(&self, now: Instant, policy: &Policy) -> View {
        let pending = self
            .timers(policy)
            .into_iter()
            .flatten()
            .filter_map(|(at, timer)| {
                let status = match timer {
                    Timer::Connect => Status::Connected,
                    Timer::Disconnect | Timer::GatewayDown => Status::Disconnected,
                };
                // A gateway outage over an already disconnected tenant changes nothing visible.
                (self.stable != Some(status)).then_some((status, at))
            })
            .min_by_key(|(_, at)| *at);
        View {
            link_up: matches!(self.link, Link::Up { .. }),
            last: self.last,
            stable: self.stable,
            pending,
            penalty: self.penalty(now, policy),
            flapping: self.damping.flapping,
        }
    }

    /// Every pending deadline, in tie-break order (see [`Timer`]). An instant that would overflow
    /// (an absurd configured duration) means never.
    fn timers(&self, policy: &Policy) -> [Option<(Instant, Timer)>; 3] {
        let gateway = match (&self.link, policy.gateway_down_grace) {
            (
                Link::Down {
                    since,
                    expired: false,
                    ..
                },
                Some(grace),
            ) => since.checked_add(grace),
            _ => None,
        };
        let disconnect = match &self.run {
            Run::Down { .. } if self.held => None,
            Run::Down { since, .. } if self.stable != Some(Status::Disconnected) => {
                since.checked_add(policy.disconnect_grace)
            }
            _ => None,
        };
        let connect = match &self.run {
            Run::Up { since } if self.stable != Some(Status::Connected) => {
                let held = since.checked_add(policy.connect_grace);
                if self.damping.flapping {
                    held.zip(self.reuse_at(policy)).map(|(a, b)| a.max(b))
                } else {
                    held
                }
            }
            _ => None,
        };
        [
            gateway.map(|at| (at, Timer::GatewayDown)),
            disconnect.map(|at| (at, Timer::Disconnect)),
            connect.map(|at| (at, Timer::Connect)),
        ]
    }

    /// The earliest deadline; on a tie the first in [`Timer`] order (`min_by_key` keeps the first
    /// of equal minima).
    fn next_timer(&self, policy: &Policy) -> Option<(Instant, Timer)> {
        self.timers(policy)
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Acts on one due timer. Reports carry their episode's start, not the firing time, so a
    /// late call decides exactly what a punctual one would have.
    fn fire(&mut self, timer: Timer, policy: &Policy) {
        match timer {
            Timer::GatewayDown => {
                let Link::Down {
                    since: down_since,
                    error,
                    expired,
                } = &mut self.link
                else {
                    return;
                };
                *expired = true;
                let grace = policy.gateway_down_grace.unwrap_or_default();
                let reason = format!("gateway unreachable for {}: {error}", humane(grace));
                // With the link gone nothing more will be learnt: the session counts as down from
                // when the link went, or from the first Down of a drop already under way, and no
                // pending connect may be decided without a link.
                let since = match &self.run {
                    Run::Down { since, .. } => (*since).min(*down_since),
                    _ => *down_since,
                };
                self.run = Run::Down {
                    since,
                    reason: Some(reason.as_str().into()),
                };
                self.decide(Status::Disconnected, Some(reason), since);
            }
            Timer::Disconnect => {
                let Run::Down { since, reason } = &self.run else {
                    return;
                };
                let reason = reason.as_deref().unwrap_or(RECONNECTING).to_string();
                let since = *since;
                self.decide(Status::Disconnected, Some(reason), since);
            }
            Timer::Connect => {
                let Run::Up { since } = self.run else {
                    return;
                };
                self.decide(Status::Connected, None, since);
            }
        }
    }

    /// Records a flap at `now` and tells whether the tenant is now flapping.
    fn flap(&mut self, now: Instant, policy: &Policy) -> bool {
        let before = self.penalty(now, policy);
        let damping = &mut self.damping;
        if before < policy.flap_reuse.min(EPISODE_FLOOR) || damping.drops == 0 {
            damping.drops = 0;
            damping.first_drop = now;
        }
        damping.drops = damping.drops.saturating_add(1);
        // The cap bounds how long suppression can last: from the cap, the penalty decays to
        // `flap_reuse` in exactly `flap_max_suppress`. `f64::min` ignores a NaN cap (a zero
        // `flap_reuse`), which then means no cap; `reuse_at` still bounds the suppression.
        damping.value = (before + FLAP_PENALTY).min(max_penalty(policy));
        // Time never runs backwards for the penalty, even if a caller's does.
        damping.at = now.max(damping.at);
        if damping.value >= policy.flap_suppress {
            damping.flapping = true;
        }
        damping.flapping
    }

    /// When the penalty will have decayed to `flap_reuse`, computed analytically, and never later
    /// than `flap_max_suppress` after the last flap. That clamp is what the cap promises, so it
    /// holds exactly even where floating point would land a nanosecond late, and it also holds
    /// after a reload shortened `flap_max_suppress` below what the stored penalty implies.
    fn reuse_at(&self, policy: &Policy) -> Option<Instant> {
        let damping = &self.damping;
        if damping.value <= policy.flap_reuse {
            return Some(damping.at);
        }
        let wait = policy.flap_half_life.as_secs_f64() * (damping.value / policy.flap_reuse).log2();
        let wait = Duration::try_from_secs_f64(wait)
            .unwrap_or(policy.flap_max_suppress)
            .min(policy.flap_max_suppress);
        damping.at.checked_add(wait)
    }

    /// Moves the stable state to `status`, reporting it only when it changes.
    /// Decides `status`, reporting it unless it is already the stable one; says whether it did.
    fn decide(&mut self, status: Status, reason: Option<String>, since: Instant) -> bool {
        if self.stable == Some(status) {
            return false;
        }
        self.stable = Some(status);
        let reason = match status {
            Status::Connected => {
                // Connected is only decided once the penalty has decayed (see `timers`), which is
                // where flapping ends.
                self.damping.flapping = false;
                None
            }
            Status::Disconnected => reason,
        };
        self.reports.push(Report {
            status,
            reason,
            since,
        });
        true
    }
}

/// `value` after `elapsed` of exponential decay with `half_life`. A zero half-life forgets at
/// once (the division would give NaN); a value that is not a positive number decays to zero.
pub(crate) fn decay(value: f64, elapsed: Duration, half_life: Duration) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 0.0;
    }
    let elapsed = elapsed.as_secs_f64();
    let half_life = half_life.as_secs_f64();
    if half_life <= 0.0 {
        return if elapsed > 0.0 { 0.0 } else { value };
    }
    value * (-elapsed / half_life).exp2()
}

/// Whether a drop is terminal per `policy`: reported at once, not debounced. Closed with a code in
/// `terminal_codes` or with Baileys' "QR refs attempts ended"; a QR code shown; the session ended.
pub(crate) fn is_terminal(policy: &Policy, cause: &DownCause) -> bool {
    match cause.kind {
        DownKind::Closed => {
            cause
                .code
                .is_some_and(|code| policy.terminal_codes.contains(&code))
                || cause
                    .message
                    .as_deref()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case(QR_REFS_ENDED))
        }
        DownKind::Connecting => false,
        DownKind::QrShown | DownKind::Ended => true,
    }
}

/// The human reason for a drop, as sent to the backend:
///
/// - transient close: `"Stream Errored (conflict) (code 440)"`, `"connection closed (code 428)"`
///   without a message, the message alone without a code;
/// - terminal code: `"logged out (code 401): Connection Failure"` (401 "logged out", 403
///   "forbidden", 411 "multidevice mismatch", any other configured code "closed");
/// - `"QR refs attempts ended (code 408)"`;
/// - QR shown: `"not linked: waiting for QR code scan"`;
/// - ended: the message (with its code), or `"session ended"`;
/// - connecting: `"session reconnecting"`.
///
/// Gateway text is trimmed, its control characters become spaces, and it is cut at
/// 256 characters.
pub(crate) fn describe(policy: &Policy, cause: &DownCause) -> String {
    let message = cause.message.as_deref().and_then(clean);
    match cause.kind {
        DownKind::Closed => match cause.code {
            Some(code) if policy.terminal_codes.contains(&code) => {
                let label = match code {
                    401 => "logged out",
                    403 => "forbidden",
                    411 => "multidevice mismatch",
                    _ => "closed",
                };
                match message {
                    Some(message) => format!("{label} (code {code}): {message}"),
                    None => format!("{label} (code {code})"),
                }
            }
            code => with_code(message.as_deref().unwrap_or("connection closed"), code),
        },
        DownKind::Connecting => RECONNECTING.to_string(),
        DownKind::QrShown => "not linked: waiting for QR code scan".to_string(),
        DownKind::Ended => with_code(message.as_deref().unwrap_or("session ended"), cause.code),
    }
}

fn with_code(text: &str, code: Option<u16>) -> String {
    match code {
        Some(code) => format!("{text} (code {code})"),
        None => text.to_string(),
    }
}

/// The largest penalty a tenant can accumulate: the one that decays to `flap_reuse` in exactly
/// `flap_max_suppress`.
fn max_penalty(policy: &Policy) -> f64 {
    let half_lives = policy.flap_max_suppress.as_secs_f64() / policy.flap_half_life.as_secs_f64();
    policy.flap_reuse * half_lives.exp2()
}

/// Gateway text made fit for a reason: trimmed, control characters (newlines, escapes) turned
/// into spaces, cut at `MAX_TEXT_CHARS`. None when nothing is left.
fn clean(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len().min(MAX_TEXT_CHARS * 4));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_TEXT_CHARS {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    Some(out)
}

fn disconnects(n: u32) -> String {
    if n == 1 {
        "1 disconnect".to_string()
    } else {
        format!("{n} disconnects")
    }
}

/// A compact, humane duration for reasons: "45s", "6m", "6m 30s", "1h 2m", "2d 3h". The largest
/// unit and, when not zero, the next one; whole seconds, except "250ms" below one second.
fn humane(d: Duration) -> String {
    if d < Duration::from_secs(1) && !d.is_zero() {
        return format!("{}ms", d.as_millis().max(1));
    }
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    // `as` saturates, so an absurd duration prints as a large number instead of panicking.
    let secs = d.as_secs_f64().round() as u64;
    let Some(i) = UNITS.iter().position(|(unit, _)| secs >= *unit) else {
        return "0s".to_string();
    };
    let (unit, name) = UNITS[i];
    let mut out = format!("{}{name}", secs / unit);
    if let Some((next, next_name)) = UNITS.get(i + 1) {
        let rest = secs % unit / next;
        if rest > 0 {
            out.push_str(&format!(" {rest}{next_name}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_halves_per_half_life_and_never_yields_nan() {
        let s = Duration::from_secs;
        assert_eq!(decay(1000.0, s(600), s(600)), 500.0);
        assert_eq!(decay(1000.0, s(0), s(600)), 1000.0);
        // A zero half-life (a reload may set one) forgets at once instead of dividing by zero.
        assert_eq!(decay(1000.0, s(1), s(0)), 0.0);
        assert_eq!(decay(1000.0, s(0), s(0)), 1000.0);
        // A stored value that is not a positive number restores as no penalty.
        for bad in [f64::NAN, f64::INFINITY, -5.0] {
            assert_eq!(decay(bad, s(10), s(600)), 0.0);
        }
    }

    /// One input to the state machine, as a table row.
    #[derive(Debug, Clone)]
    enum Ev {
        LinkUp,
        LinkDown(&'static str),
        Open,
        Connecting,
        Close(Option<u16>, Option<&'static str>),
        Qr,
        Ended(Option<u16>, Option<&'static str>),
        /// A spurious `on_timeout` call at this instant, due or not.
        Wake,
    }

    impl Ev {
        fn observation(&self) -> Option<Observation> {
            let down = |kind, code: &Option<u16>, message: &Option<&str>| {
                Some(Observation::Down(DownCause {
                    kind,
                    code: *code,
                    message: message.map(str::to_string),
                }))
            };
            match self {
                Ev::Open => Some(Observation::Up),
                Ev::Connecting => down(DownKind::Connecting, &None, &None),
                Ev::Close(code, message) => down(DownKind::Closed, code, message),
                Ev::Qr => down(DownKind::QrShown, &None, &None),
                Ev::Ended(code, message) => down(DownKind::Ended, code, message),
                Ev::LinkUp | Ev::LinkDown(_) | Ev::Wake => None,
            }
        }
    }

    const CLOSED_428: Ev = Ev::Close(Some(428), Some("Connection Closed"));
    const RESTART_515: Ev = Ev::Close(Some(515), Some("Stream Errored (restart required)"));

    /// How long the driver keeps the clock moving after the last event, so every timer fires.
    const HORIZON: Duration = Duration::from_secs(4 * 3600);

    /// A hand-moved clock driving one debouncer.
    struct Sim {
        policy: Policy,
        d: Debouncer,
        base: Instant,
        now: Instant,
        /// Every drained report with the second (from `base`) it was decided at.
        reports: Vec<(f64, Report)>,
    }

    impl Sim {
        fn new(policy: Policy, restored: Restored) -> Self {
            let base = Instant::now();
            Sim {
                d: Debouncer::new(base, restored),
                policy,
                base,
                now: base,
                reports: Vec::new(),
            }
        }

        fn at(&self, secs: f64) -> Instant {
            self.base + Duration::from_secs_f64(secs)
        }

        fn secs(&self, t: Instant) -> f64 {
            t.saturating_duration_since(self.base).as_secs_f64()
        }

        /// Moves the clock to `to`, calling `on_timeout` exactly at each deadline that falls on
        /// the way, as the async driver does.
        fn advance(&mut self, to: Instant) {
            while let Some(due) = self.d.next_deadline(&self.policy) {
                if due > to {
                    break;
                }
                self.now = due.max(self.now);
                self.d.on_timeout(self.now, &self.policy);
                self.drain();
                let next = self.d.next_deadline(&self.policy);
                assert!(
                    !matches!(next, Some(n) if n <= self.now),
                    "on_timeout left a due deadline"
                );
                // A repeated call at the same instant must do nothing.
                self.d.on_timeout(self.now, &self.policy);
                assert_eq!(self.d.poll_report(), None, "a repeated on_timeout reported");
            }
            self.now = to.max(self.now);
        }

        fn apply(&mut self, ev: &Ev) {
            let now = self.now;
            match ev {
                Ev::LinkUp => self.d.link_up(now, &self.policy),
                Ev::LinkDown(error) => self.d.link_down(now, &self.policy, error),
                Ev::Wake => self.d.on_timeout(now, &self.policy),
                other => {
                    let obs = other.observation().expect("an observation");
                    self.d.observe(now, &self.policy, &obs);
                }
            }
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(report) = self.d.poll_report() {
                let at = self.secs(self.now);
                self.reports.push((at, report));
            }
        }

        fn penalty(&self) -> f64 {
            self.d.penalty(self.now, &self.policy)
        }

        /// The `since` of each report, in seconds from `base`.
        fn since(&self) -> Vec<f64> {
            self.reports
                .iter()
                .map(|(_, r)| self.secs(r.since))
                .collect()
        }
    }

    fn connected() -> Restored {
        Restored {
            stable: Some(Status::Connected),
            ..Restored::default()
        }
    }

    /// Runs `events` (seconds from start, event) and then the clock for `HORIZON` more.
    fn run(policy: Policy, restored: Restored, events: &[(f64, Ev)]) -> Sim {
        let mut sim = Sim::new(policy, restored);
        for (secs, ev) in events {
            let at = sim.at(*secs);
            sim.advance(at);
            sim.apply(ev);
        }
        let end = sim.now + HORIZON;
        sim.advance(end);
        sim
    }

    /// The table-test entry point: a tenant restored as connected (the usual case) under the
    /// default policy. `expected` rows are (second decided, status, reason).
    fn check(events: &[(f64, Ev)], expected: &[(f64, Status, Option<&str>)]) -> Sim {
        check_with(Policy::default(), connected(), events, expected)
    }

    fn check_with(
        policy: Policy,
        restored: Restored,
        events: &[(f64, Ev)],
        expected: &[(f64, Status, Option<&str>)],
    ) -> Sim {
        let sim = run(policy, restored, events);
        let got: Vec<(f64, Status, Option<&str>)> = sim
            .reports
            .iter()
            .map(|(at, r)| (*at, r.status, r.reason.as_deref()))
            .collect();
        let same = got.len() == expected.len()
            && got
                .iter()
                .zip(expected)
                .all(|(g, e)| (g.0 - e.0).abs() < 1e-3 && g.1 == e.1 && g.2 == e.2);
        assert!(same, "reports differ\n got: {got:#?}\nwant: {expected:#?}");
        sim
    }

    use Status::{Connected, Disconnected};

    #[test]
    fn restart_required_reopened_within_grace_is_not_reported() {
        let sim = check(
            &[
                (0.0, Ev::Open),
                (10.0, RESTART_515),
                (11.0, Ev::Connecting),
                (14.0, Ev::Open),
            ],
            &[],
        );
        // One drop is one flap: remembered, not acted on.
        assert!(sim.penalty() > 0.0 && !sim.d.is_flapping());
    }

    #[test]
    fn logged_out_is_reported_at_once() {
        check(
            &[
                (0.0, Ev::Open),
                (10.0, Ev::Close(Some(401), Some("Connection Failure"))),
            ],
            &[(
                10.0,
                Disconnected,
                Some("logged out (code 401): Connection Failure"),
            )],
        );
    }

    #[test]
    fn reconnect_loop_that_never_opens_is_reported_once_after_grace() {
        let sim = check(
            &[
                (0.0, Ev::Open),
                (10.0, Ev::Connecting),
                (12.0, CLOSED_428),
                (15.0, Ev::Connecting),
                (
                    40.0,
                    Ev::Close(Some(440), Some("Stream Errored (conflict)")),
                ),
                (45.0, Ev::Connecting),
                (80.0, RESTART_515),
                (81.0, Ev::Connecting),
                (120.0, CLOSED_428),
            ],
            &[(
                70.0,
                Disconnected,
                Some("Stream Errored (conflict) (code 440)"),
            )],
        );
        assert_eq!(sim.since(), [10.0]);
    }

    #[test]
    fn only_connecting_is_session_reconnecting() {
        check(
            &[
                (0.0, Ev::Open),
                (10.0, Ev::Connecting),
                (30.0, Ev::Connecting),
            ],
            &[(70.0, Disconnected, Some("session reconnecting"))],
        );
    }

    #[test]
    fn four_quick_drops_are_flapping_then_one_connected_after_decay() {
        let mut events = vec![(0.0, Ev::Open)];
        for k in 0..4 {
            let t = 10.0 + 60.0 * f64::from(k);
            events.push((t, CLOSED_428));
            events.push((t + 5.0, Ev::Open));
        }
        // Penalty at the fourth drop: ((1000 d + 1000) d + 1000) d + 1000 with d = 2^-(60/600),
        // about 3615.84; it decays to 750 after 600 * log2(3615.84 / 750) s, about 1361.62 s.
        let p = [1000.0; 3]
            .iter()
            .fold(1000.0, |p, add| p * (-0.1f64).exp2() + add);
        let reuse = 190.0 + 600.0 * (p / 750.0).log2();
        assert!((reuse - 1551.620).abs() < 1e-3);
        let sim = check(
            &events,
            &[
                (
                    190.0,
                    Disconnected,
                    Some("flapping: 4 disconnects in 3m; last: Connection Closed (code 428)"),
                ),
                (1551.620, Connected, None),
            ],
        );
        assert_eq!(sim.since(), [190.0, 195.0]);
        assert!(!sim.d.is_flapping());
    }

    #[test]
    fn the_flapping_reason_counts_every_drop_when_flap_reuse_is_above_one_flap() {
        // flap_reuse may be anything below flap_suppress; at 1500 a single fresh flap (1000) is
        // already below it, which must not restart the count at the second drop.
        let policy = Policy {
            flap_reuse: 1500.0,
            ..Policy::default()
        };
        let mut events = vec![(0.0, Ev::Open)];
        for k in 0..4 {
            let t = 10.0 + f64::from(k);
            events.push((t, RESTART_515));
            events.push((t + 0.5, Ev::Open));
        }
        // Penalty at the fourth drop: about 3993.08; it decays to 1500 at about 860.52 s.
        let p = [1000.0; 3]
            .iter()
            .fold(1000.0, |p, add| p * (-1.0f64 / 600.0).exp2() + add);
        let reuse = 13.0 + 600.0 * (p / 1500.0).log2();
        assert!((reuse - 860.523).abs() < 1e-3);
        check_with(
            policy,
            connected(),
            &events,
            &[
                (
                    13.0,
                    Disconnected,
                    Some("flapping: 4 disconnects in 3s; last: Stream Errored (restart required) (code 515)"),
                ),
                (reuse, Connected, None),
            ],
        );
    }

    #[test]
    fn flapping_waits_for_up_to_hold_after_decay() {
        // The session stays down long after the penalty has decayed: connected still needs
        // connect_grace of Up.
        let mut events = vec![(0.0, Ev::Open)];
        for k in 0..4 {
            let t = 10.0 + 60.0 * f64::from(k);
            events.push((t, CLOSED_428));
            if k < 3 {
                events.push((t + 5.0, Ev::Open));
            }
        }
        events.push((3000.0, Ev::Open));
        let sim = check(
            &events,
            &[
                (
                    190.0,
                    Disconnected,
                    Some("flapping: 4 disconnects in 3m; last: Connection Closed (code 428)"),
                ),
                (3010.0, Connected, None),
            ],
        );
        assert_eq!(sim.since(), [190.0, 3000.0]);
    }

    #[test]
    fn qr_shown_is_reported_at_once() {
        let not_linked = Some("not linked: waiting for QR code scan");
        check(
            &[(0.0, Ev::Open), (10.0, Ev::Qr)],
            &[(10.0, Disconnected, not_linked)],
        );
        // A new tenant whose first news is a QR code is reported at once too.
        check_with(
            Policy::default(),
            Restored::default(),
            &[(0.0, Ev::Qr)],
            &[(0.0, Disconnected, not_linked)],
        );
    }

    #[test]
    fn gateway_restart_is_neither_reported_nor_a_flap() {
        let sim = check(
            &[
                (0.0, Ev::Open),
                (100.0, Ev::LinkDown("connection reset")),
                (103.0, Ev::LinkDown("connection refused")),
                (110.0, Ev::LinkUp),
                (111.0, Ev::Connecting),
                (115.0, Ev::Open),
            ],
            &[],
        );
        assert_eq!(sim.d.penalty(sim.at(115.0), &sim.policy), 0.0);
        assert!(sim.d.view(sim.now, &sim.policy).link_up);
    }

    #[test]
    fn gateway_down_past_grace_is_reported_once() {
        let sim = check(
            &[
                (0.0, Ev::Open),
                (100.0, Ev::LinkDown("connection reset")),
                // Later failures keep the outage's start but name the latest error.
                (130.0, Ev::LinkDown("connection refused")),
                (500.0, Ev::LinkUp),
                (501.0, Ev::Open),
            ],
            &[
                (
                    400.0,
                    Disconnected,
                    Some("gateway unreachable for 5m: connection refused"),
                ),
                (511.0, Connected, None),
            ],
        );
        assert_eq!(sim.since(), [100.0, 501.0]);
        // Coming back from an outage is not a flap.
        assert_eq!(sim.penalty(), 0.0);
    }

    #[test]
    fn gateway_back_before_grace_cancels_its_timer() {
        check(
            &[
                (0.0, Ev::Open),
                (100.0, Ev::LinkDown("connection refused")),
                (399.0, Ev::LinkUp),
            ],
            &[],
        );
    }

    #[test]
    fn gateway_down_grace_none_never_reports() {
        let policy = Policy {
            gateway_down_grace: None,
            ..Policy::default()
        };
        let sim = check_with(
            policy,
            connected(),
            &[(0.0, Ev::Open), (100.0, Ev::LinkDown("connection refused"))],
            &[],
        );
        assert_eq!(sim.d.next_deadline(&sim.policy), None);
    }

    #[test]
    fn gateway_outage_during_a_drop_keeps_the_drop_start() {
        let policy = Policy {
            disconnect_grace: Duration::from_secs(600),
            ..Policy::default()
        };
        let sim = check_with(
            policy,
            connected(),
            &[
                (0.0, Ev::Open),
                (50.0, CLOSED_428),
                (60.0, Ev::LinkDown("connection refused")),
            ],
            &[(
                360.0,
                Disconnected,
                Some("gateway unreachable for 5m: connection refused"),
            )],
        );
        assert_eq!(sim.since(), [50.0]);
    }

    #[test]
    fn timers_keep_running_while_the_link_is_down() {
        // The last known state was a transient drop: its grace still runs out.
        let sim = check(
            &[
                (0.0, Ev::Open),
                (10.0, CLOSED_428),
                (20.0, Ev::LinkDown("connection refused")),
            ],
            &[(70.0, Disconnected, Some("Connection Closed (code 428)"))],
        );
        assert_eq!(sim.since(), [10.0]);
    }

    #[test]
    fn new_tenant_with_unreachable_gateway_is_reported_disconnected() {
        let sim = check_with(
            Policy::default(),
            Restored::default(),
            &[(0.0, Ev::LinkDown("not connected yet"))],
            &[(
                300.0,
                Disconnected,
                Some("gateway unreachable for 5m: not connected yet"),
            )],
        );
        assert_eq!(sim.since(), [0.0]);
    }

    #[test]
    fn restored_connected_and_still_up_reports_nothing() {
        check(&[(0.0, Ev::LinkUp), (0.5, Ev::Open), (60.0, Ev::Open)], &[]);
        // Restored disconnected and still down: nothing either.
        check_with(
            Policy::default(),
            Restored {
                stable: Some(Disconnected),
                ..Restored::default()
            },
            &[(0.0, Ev::Close(Some(401), None)), (30.0, Ev::Connecting)],
            &[],
        );
    }

    #[test]
    fn first_ever_tenant_is_reported_connected_once() {
        let sim = check_with(
            Policy::default(),
            Restored::default(),
            &[(0.0, Ev::Open), (5.0, Ev::Open), (30.0, Ev::Open)],
            &[(10.0, Connected, None)],
        );
        assert_eq!(sim.since(), [0.0]);
        assert_eq!(sim.d.stable(), Some(Connected));
    }

    #[test]
    fn first_ever_tenant_down_is_reported_after_grace() {
        check_with(
            Policy::default(),
            Restored::default(),
            &[(0.0, Ev::Connecting), (5.0, CLOSED_428)],
            &[(60.0, Disconnected, Some("Connection Closed (code 428)"))],
        );
    }

    #[test]
    fn penalty_cap_ends_suppression_within_max_suppress_of_the_last_flap() {
        // 80 drops 5 s apart would reach about 170,000 without the cap (48,000 by default).
        let mut events = vec![(0.0, Ev::Open)];
        for k in 0..80 {
            let t = 10.0 + 5.0 * f64::from(k);
            events.push((t, CLOSED_428));
            events.push((t + 2.0, Ev::Open));
        }
        let last_flap = 10.0 + 5.0 * 79.0;
        let sim = check(
            &events,
            &[
                (
                    25.0,
                    Disconnected,
                    Some("flapping: 4 disconnects in 15s; last: Connection Closed (code 428)"),
                ),
                (last_flap + 3600.0, Connected, None),
            ],
        );
        let cap = max_penalty(&sim.policy);
        assert_eq!(cap, 48_000.0);
        let at_last = sim.d.penalty(sim.at(last_flap), &sim.policy);
        assert!((at_last - cap).abs() < 1e-6, "penalty {at_last}");
    }

    #[test]
    fn first_observation_after_link_up_is_not_a_flap_but_the_next_change_is() {
        let sim = check(
            &[
                (0.0, Ev::Open),
                (10.0, Ev::LinkDown("connection reset")),
                (11.0, Ev::LinkUp),
                (12.0, CLOSED_428),
                (13.0, Ev::Open),
            ],
            &[],
        );
        assert_eq!(sim.d.penalty(sim.at(13.0), &sim.policy), 0.0);
        let sim = check(
            &[
                (0.0, Ev::Open),
                (10.0, Ev::LinkDown("connection reset")),
                (11.0, Ev::LinkUp),
                (12.0, Ev::Open),
                (13.0, CLOSED_428),
                (14.0, Ev::Open),
            ],
            &[],
        );
        assert_eq!(sim.d.penalty(sim.at(13.0), &sim.policy), 1000.0);
    }

    #[test]
    fn report_since_marks_the_episode_start() {
        let sim = check(
            &[
                (0.0, Ev::Open),
                (10.0, Ev::Connecting),
                (12.0, CLOSED_428),
                (30.0, Ev::Connecting),
                (200.0, Ev::Open),
                (205.0, Ev::Open),
                (300.0, Ev::Connecting),
                (305.0, Ev::Close(Some(403), None)),
            ],
            &[
                (70.0, Disconnected, Some("Connection Closed (code 428)")),
                (210.0, Connected, None),
                (305.0, Disconnected, Some("forbidden (code 403)")),
            ],
        );
        // A terminal close after a transient start belongs to the drop that began at 300.
        assert_eq!(sim.since(), [10.0, 200.0, 300.0]);
    }

    #[test]
    fn restored_flapping_waits_for_the_penalty_to_decay() {
        let restored = Restored {
            stable: Some(Disconnected),
            penalty: 1500.0,
            flapping: true,
            held: None,
        };
        // 1500 decays to 750 in one half-life.
        let sim = check_with(
            Policy::default(),
            restored,
            &[(0.0, Ev::Open)],
            &[(600.0, Connected, None)],
        );
        assert!(!sim.d.is_flapping());
        // A record claiming connected and flapping cannot be honoured; connected wins.
        let d = Debouncer::new(
            Instant::now(),
            Restored {
                stable: Some(Connected),
                penalty: 5000.0,
                flapping: true,
                held: None,
            },
        );
        assert!(!d.is_flapping());
    }

    #[test]
    fn on_timeout_early_does_nothing_and_late_fires_in_order() {
        let policy = Policy::default();
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut d = Debouncer::new(t0, Restored::default());
        d.observe(t0, &policy, &Observation::Up);
        assert_eq!(d.next_deadline(&policy), Some(s(10)));
        d.on_timeout(s(9), &policy);
        assert_eq!(d.poll_report(), None);
        d.link_down(s(11), &policy, "connection refused");
        // Nobody called on_timeout at 10 s; the late call decides both the connect due at 10 s
        // and the outage due at 311 s, in that order.
        d.on_timeout(s(1000), &policy);
        let first = d.poll_report().expect("connected");
        assert_eq!((first.status, first.since), (Connected, s(0)));
        let second = d.poll_report().expect("disconnected");
        assert_eq!((second.status, second.since), (Disconnected, s(11)));
        assert_eq!(d.poll_report(), None);
        assert_eq!(d.next_deadline(&policy), None);
        d.on_timeout(s(1000), &policy);
        d.on_timeout(s(5000), &policy);
        assert_eq!(d.poll_report(), None);
    }

    /// A drop a resumed mass-outage hold holds: reported when the hold lifts, with the outage
    /// reason and the storm's start, unless the link first shows the session back.
    #[test]
    fn a_drop_held_over_a_restart_is_reported_at_release_unless_the_session_is_back() {
        let policy = Policy::default();
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let held = |_| Restored {
            held: Some((t0, "Connection Closed (code 428)".to_string())),
            ..connected()
        };
        let outage = "WhatsApp-wide outage: 6 of 20 sessions dropped within 60s; last: …";

        let mut d = Debouncer::new(s(600), held(()));
        assert!(d.is_held());
        d.on_timeout(s(700), &policy);
        assert_eq!(d.poll_report(), None, "held: not at its own grace");
        assert!(d.release(s(900), &policy, outage), "says it reported");
        let report = d.poll_report().expect("reported at release");
        assert_eq!(
            (report.status, report.reason.as_deref(), report.since),
            (Disconnected, Some(outage), t0)
        );

        let mut back = Debouncer::new(s(600), held(()));
        back.link_up(s(600), &policy);
        back.observe(s(601), &policy, &Observation::Up);
        assert!(
            !back.release(s(900), &policy, outage),
            "says it reported nothing"
        );
        back.on_timeout(s(1000), &policy);
        assert_eq!(back.poll_report(), None, "back before the hold lifted");

        // A record already disconnected has nothing left to hold.
        let decided = Restored {
            stable: Some(Disconnected),
            ..held(())
        };
        assert!(!Debouncer::new(s(600), decided).is_held());
    }

    #[test]
    fn view_shows_the_pending_change() {
        let policy = Policy::default();
        let t0 = Instant::now();
        let mut d = Debouncer::new(t0, connected());
        d.observe(t0, &policy, &Observation::Up);
        let v = d.view(t0, &policy);
        assert_eq!(v.pending, None);
        assert_eq!(
            (v.stable, v.last, v.link_up),
            (Some(Connected), Some(Seen::Up), true)
        );
        let down = Observation::Down(DownCause {
            kind: DownKind::Closed,
            code: Some(428),
            message: None,
        });
        d.observe(t0 + Duration::from_secs(5), &policy, &down);
        let v = d.view(t0 + Duration::from_secs(5), &policy);
        assert_eq!(
            v.pending,
            Some((Disconnected, t0 + Duration::from_secs(65)))
        );
        assert_eq!(v.last, Some(Seen::DownTransient));
        assert!((v.penalty - 1000.0).abs() < 1e-9);
        d.link_down(t0 + Duration::from_secs(6), &policy, "connection refused");
        let v = d.view(t0 + Duration::from_secs(6), &policy);
        assert!(!v.link_up);
        assert_eq!(
            v.pending,
            Some((Disconnected, t0 + Duration::from_secs(65)))
        );
    }

    #[test]
    fn a_reloaded_policy_moves_running_timers() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(t0, connected());
        let policy = Policy::default();
        d.observe(t0, &policy, &Observation::Up);
        d.observe(t0, &policy, &CLOSED_428.observation().unwrap());
        assert_eq!(d.next_deadline(&policy), Some(t0 + Duration::from_secs(60)));
        let longer = Policy {
            disconnect_grace: Duration::from_secs(120),
            ..Policy::default()
        };
        assert_eq!(
            d.next_deadline(&longer),
            Some(t0 + Duration::from_secs(120))
        );
    }

    #[test]
    fn describe_formats_every_cause() {
        let policy = Policy {
            terminal_codes: vec![401, 403, 411, 500],
            ..Policy::default()
        };
        // (kind, code, message, reason, terminal)
        type Case = (
            DownKind,
            Option<u16>,
            Option<&'static str>,
            &'static str,
            bool,
        );
        let cases: &[Case] = &[
            (
                DownKind::Closed,
                Some(440),
                Some("Stream Errored (conflict)"),
                "Stream Errored (conflict) (code 440)",
                false,
            ),
            (
                DownKind::Closed,
                Some(428),
                None,
                "connection closed (code 428)",
                false,
            ),
            (
                DownKind::Closed,
                None,
                Some("Connection Closed"),
                "Connection Closed",
                false,
            ),
            (DownKind::Closed, None, None, "connection closed", false),
            (
                DownKind::Closed,
                Some(428),
                Some("  "),
                "connection closed (code 428)",
                false,
            ),
            (
                DownKind::Closed,
                Some(401),
                Some("Connection Failure"),
                "logged out (code 401): Connection Failure",
                true,
            ),
            (
                DownKind::Closed,
                Some(403),
                None,
                "forbidden (code 403)",
                true,
            ),
            (
                DownKind::Closed,
                Some(411),
                Some("x"),
                "multidevice mismatch (code 411): x",
                true,
            ),
            (DownKind::Closed, Some(500), None, "closed (code 500)", true),
            (
                DownKind::Closed,
                Some(408),
                Some("QR refs attempts ended"),
                "QR refs attempts ended (code 408)",
                true,
            ),
            (
                DownKind::Closed,
                Some(408),
                Some("WebSocket Error (getaddrinfo ENOTFOUND web.whatsapp.com)"),
                "WebSocket Error (getaddrinfo ENOTFOUND web.whatsapp.com) (code 408)",
                false,
            ),
            (
                DownKind::Connecting,
                Some(1),
                Some("x"),
                "session reconnecting",
                false,
            ),
            (
                DownKind::QrShown,
                None,
                None,
                "not linked: waiting for QR code scan",
                true,
            ),
            (DownKind::Ended, None, None, "session ended", true),
            (
                DownKind::Ended,
                Some(7),
                Some("STOPPED"),
                "STOPPED (code 7)",
                true,
            ),
            (DownKind::Ended, None, Some("line\none"), "line one", true),
        ];
        for (kind, code, message, want, terminal) in cases {
            let cause = DownCause {
                kind: *kind,
                code: *code,
                message: message.map(str::to_string),
            };
            assert_eq!(describe(&policy, &cause), *want, "{cause:?}");
            assert_eq!(is_terminal(&policy, &cause), *terminal, "{cause:?}");
        }
        let long = DownCause {
            kind: DownKind::Ended,
            code: None,
            message: Some("é".repeat(10_000)),
        };
        assert_eq!(describe(&policy, &long).chars().count(), MAX_TEXT_CHARS + 1);
    }

    #[test]
    fn humane_durations_are_compact() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (300, "5m"),
            (360, "6m"),
            (390, "6m 30s"),
            (3600, "1h"),
            (3723, "1h 2m"),
            (86_400 + 3 * 3600 + 5, "1d 3h"),
        ];
        for (secs, want) in cases {
            assert_eq!(humane(Duration::from_secs(secs)), want);
        }
        assert_eq!(humane(Duration::from_millis(250)), "250ms");
        assert_eq!(humane(Duration::from_millis(59_600)), "1m");
        assert_eq!(humane(Duration::MAX), format!("{}d 7h", u64::MAX / 86_400));
    }

    #[test]
    fn debouncer_stays_small() {
        // 10,000 tenants: a few hundred bytes each is fine, kilobytes are not.
        assert!(
            std::mem::size_of::<Debouncer>() <= 160,
            "{}",
            std::mem::size_of::<Debouncer>()
        );
    }

    #[test]
    fn absurd_policies_and_records_do_not_panic() {
        let huge = Duration::from_secs(u64::MAX / 4);
        let policies = [
            Policy {
                disconnect_grace: huge,
                connect_grace: huge,
                gateway_down_grace: Some(huge),
                flap_half_life: huge,
                flap_max_suppress: huge,
                ..Policy::default()
            },
            Policy {
                disconnect_grace: Duration::ZERO,
                connect_grace: Duration::ZERO,
                gateway_down_grace: Some(Duration::ZERO),
                flap_half_life: Duration::ZERO,
                flap_max_suppress: Duration::ZERO,
                flap_suppress: 0.0,
                flap_reuse: 0.0,
                ..Policy::default()
            },
            Policy {
                flap_reuse: -5.0,
                flap_suppress: f64::NAN,
                ..Policy::default()
            },
        ];
        for policy in policies {
            for penalty in [f64::NAN, f64::INFINITY, -1.0, 1e300] {
                let mut sim = Sim::new(
                    policy.clone(),
                    Restored {
                        stable: None,
                        penalty,
                        flapping: true,
                        held: None,
                    },
                );
                for (i, ev) in [
                    Ev::Open,
                    CLOSED_428,
                    Ev::Open,
                    Ev::LinkDown(""),
                    Ev::Open,
                    Ev::LinkUp,
                    Ev::Open,
                    CLOSED_428,
                    Ev::Open,
                ]
                .iter()
                .enumerate()
                {
                    let at = sim.at(i as f64);
                    sim.advance(at);
                    sim.apply(ev);
                    assert!(sim.penalty() >= 0.0);
                }
                let end = sim.now + HORIZON;
                sim.advance(end);
            }
        }
    }

    /// A tiny deterministic generator, so the randomized test needs no crate and replays exactly.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u32) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) as u32) % n
        }
    }

    fn random_event(rng: &mut Lcg) -> Ev {
        const TRANSIENT: [Option<u16>; 7] = [
            Some(428),
            Some(408),
            Some(440),
            Some(515),
            Some(500),
            Some(503),
            None,
        ];
        match rng.below(100) {
            0..=4 => Ev::LinkUp,
            5..=9 => Ev::LinkDown("connection refused"),
            10..=44 => Ev::Open,
            45..=59 => Ev::Connecting,
            60..=84 => Ev::Close(TRANSIENT[rng.below(7) as usize], Some("Connection Closed")),
            85..=87 => Ev::Close(Some(401), Some("Connection Failure")),
            88..=90 => Ev::Qr,
            91..=92 => Ev::Ended(None, None),
            _ => Ev::Wake,
        }
    }

    fn random_step(rng: &mut Lcg) -> f64 {
        match rng.below(20) {
            0..=1 => 0.0,
            2..=13 => f64::from(rng.below(20_000)) / 1000.0,
            14..=17 => f64::from(rng.below(300)),
            _ => f64::from(rng.below(7200)),
        }
    }

    fn random_policy(rng: &mut Lcg) -> Policy {
        match rng.below(3) {
            0 => Policy::default(),
            1 => Policy {
                disconnect_grace: Duration::from_secs(20),
                connect_grace: Duration::from_secs(5),
                gateway_down_grace: Some(Duration::from_secs(90)),
                flap_half_life: Duration::from_secs(60),
                flap_max_suppress: Duration::from_secs(300),
                ..Policy::default()
            },
            _ => Policy {
                gateway_down_grace: None,
                flap_half_life: Duration::from_secs(120),
                flap_max_suppress: Duration::from_secs(900),
                ..Policy::default()
            },
        }
    }

    use crate::testing::debounce::{Input, Model};

    /// The model's view of a test event.
    fn input<'a>(ev: &Ev, obs: &'a Option<Observation>) -> Input<'a> {
        match ev {
            Ev::LinkUp => Input::LinkUp,
            Ev::LinkDown(_) => Input::LinkDown,
            Ev::Wake => Input::Wake,
            _ => Input::Observed(obs.as_ref().expect("an observation event")),
        }
    }

    #[derive(Default)]
    struct Stats {
        bound_checks: u32,
        flapping_seen: u32,
    }

    /// The exact driver: deadlines fire exactly when due; checks every invariant.
    fn exact_run(policy: &Policy, events: &[(f64, Ev)], stats: &mut Stats) {
        let mut sim = Sim::new(policy.clone(), Restored::default());
        let mut model = Model::new(sim.now, &Restored::default());
        let mut checked = 0;
        let cap = max_penalty(policy);
        let mut steps: Vec<(Instant, Option<&Ev>)> = events
            .iter()
            .map(|(secs, ev)| (sim.at(*secs), Some(ev)))
            .collect();
        let end = sim.at(events.last().map_or(0.0, |e| e.0)) + HORIZON;
        steps.push((end, None));
        for (at, ev) in steps {
            sim.advance(at);
            for (_, report) in &sim.reports[checked..] {
                model.reported(report, at).unwrap();
            }
            checked = sim.reports.len();
            // Flapping ends (and connected is decided) within flap_max_suppress of the last flap
            // and connect_grace of the Up run, whichever is later, when Up holds on a live link.
            if let Some(bound) = model.settled_by(policy) {
                if sim.now >= bound {
                    stats.bound_checks += 1;
                    assert!(!sim.d.is_flapping(), "still flapping past the bound");
                    assert_eq!(sim.d.stable(), Some(Connected));
                }
            }
            stats.flapping_seen += u32::from(sim.d.is_flapping());
            assert!(sim.penalty() <= cap * (1.0 + 1e-9) + 1e-9);
            let Some(ev) = ev else { break };
            sim.apply(ev);
            model.apply(sim.now, input(ev, &ev.observation()));
            if matches!(ev, Ev::Wake) {
                assert_eq!(
                    sim.reports.len(),
                    checked,
                    "a wake-up with nothing due reported"
                );
            }
            for (_, report) in &sim.reports[checked..] {
                model.reported(report, sim.now).unwrap();
            }
            checked = sim.reports.len();
        }
    }

    /// A lazy driver that only calls `on_timeout` when the next event arrives (late by up to
    /// hours): reports must still alternate and never say connected over a down session.
    fn lazy_run(policy: &Policy, events: &[(f64, Ev)]) {
        let base = Instant::now();
        let mut d = Debouncer::new(base, Restored::default());
        let mut model = Model::new(base, &Restored::default());
        let at = |secs: f64| base + Duration::from_secs_f64(secs);
        fn drain(d: &mut Debouncer, model: &mut Model, now: Instant) {
            while let Some(report) = d.poll_report() {
                model.reported(&report, now).unwrap();
            }
        }
        for (secs, ev) in events {
            let now = at(*secs);
            d.on_timeout(now, policy);
            drain(&mut d, &mut model, now);
            match ev {
                Ev::LinkUp => d.link_up(now, policy),
                Ev::LinkDown(error) => d.link_down(now, policy, error),
                Ev::Wake => d.on_timeout(now, policy),
                other => {
                    d.observe(now, policy, &other.observation().unwrap());
                }
            }
            model.apply(now, input(ev, &ev.observation()));
            drain(&mut d, &mut model, now);
        }
        let end = at(events.last().map_or(0.0, |e| e.0)) + HORIZON;
        d.on_timeout(end, policy);
        drain(&mut d, &mut model, end);
    }

    #[test]
    fn random_sequences_keep_the_invariants() {
        let mut rng = Lcg(0x5eed);
        let mut stats = Stats::default();
        for _ in 0..5_000 {
            let policy = random_policy(&mut rng);
            let len = 5 + rng.below(60);
            let mut secs = 0.0;
            let events: Vec<(f64, Ev)> = (0..len)
                .map(|_| {
                    secs += random_step(&mut rng);
                    (secs, random_event(&mut rng))
                })
                .collect();
            exact_run(&policy, &events, &mut stats);
            lazy_run(&policy, &events);
        }
        // The bound must actually have been exercised, flapping included.
        assert!(stats.bound_checks > 10_000, "{}", stats.bound_checks);
        assert!(stats.flapping_seen > 1_000, "{}", stats.flapping_seen);
    }
}
