//! The mass-outage hold (SPEC section 4, "Mass-outage hold" [rev 12]): when WhatsApp itself drops
//! many sessions at once, their transient drops are held instead of each becoming a bell.
//!
//! This module holds the fleet-level decision, pure like the per-tenant debouncer: no I/O, no
//! clock; every call takes `now`.
//!
//! # Model
//!
//! A [`Detector`] watches the transient drops of the tenants whose gateway links are up and keeps
//! three things:
//!
//! - **The window**: the tenants that dropped within the last `window` and are still down, each
//!   counted once from its first drop. A tenant that came back (or whose link went down, or that
//!   was removed) before a storm began leaves the window: a storm is about sessions that are down,
//!   and a session that reconnected by itself needs no hold. Counting it would let Baileys' routine
//!   churn (515 "restart required", quick 428s) declare outages that hold nothing.
//! - **The storms**: the one in progress, if any, and older ones whose hold still covers tenants.
//! - **Membership**: which storm a tenant belongs to, and whether it is down.
//!
//! The decisions:
//!
//! - A storm begins at the drop that makes the window hold at least [`threshold`] tenants:
//!   `fraction` of the linked tenants (the count the caller passes with the drop) and at least
//!   `min_tenants`. `fraction = 0` turns the hold off. The tenants in the window are its members;
//!   the window starts empty again.
//! - While the storm lasts, every transient drop joins it (a member that came back and drops again
//!   is down again). Nothing is counted towards another storm meanwhile.
//! - A member's drop is held until `hold` after the storm began. At that instant the members still
//!   down are released, once, in one [`Event::Released`] with the outage reason, e.g.
//!   `"WhatsApp-wide outage: 8123 of 10000 sessions dropped within 60s; last: Connection Closed
//!   (code 428)"`: N members (joiners included) of M tenants linked when it began (at least N),
//!   the window it was detected with, and the last close reason a member's drop carried. A member
//!   that came back within the hold is never released; a drop after the hold is not held.
//! - The storm ends when fewer than half of its members are still down. Its members **stay its
//!   members until the hold ends**: those still down stay held, and one that comes back and drops
//!   again before then is held again. An outage's sessions come back over a minute or two and
//!   bounce while WhatsApp recovers; the moment half of them are back is exactly when the rest are
//!   seconds away, and releasing them then (or counting their bounces as new drops, or as flaps)
//!   would ring the thousands of bells the hold exists to prevent. The hold stays what the SPEC
//!   promises: a drop made during a storm is reported at the latest `hold` after the storm began.
//!   After the end, drops fill the window again, and a new storm can begin while the old one's
//!   hold still runs; each storm releases its own members at its own hold end.
//! - A removed tenant leaves the window and its storm at once and is never released: nothing new
//!   is decided for a tenant that is not configured. It no longer counts among the members.
//! - A tenant whose link goes down leaves the window (detection is over linked tenants), but a
//!   member stays a member, down and held: losing the link to our gateway says nothing new about
//!   WhatsApp, and `gateway_down_grace` is the debouncer's separate rule for that.
//!
//! # Reloads
//!
//! The policy is passed to every call, as with the debouncer. A storm keeps its `since`; its hold
//! end is `since + hold` under the current policy, so a reload that grows or shrinks `hold` moves
//! every hold at once (one already released stays released). `window`, `fraction` and
//! `min_tenants` govern detection, so they apply to the next storm; a drop already expired from the
//! window is not brought back by a longer one. `fraction = 0` ends the storm in progress and
//! releases everyone held, at the next call (its deadline becomes due at once).
//!
//! # Timers are data
//!
//! No deadline is stored: [`Detector::next_deadline`] derives the earliest hold end from the
//! storms and the policy. The driver sleeps until then and calls [`Detector::on_timeout`], which
//! tolerates being early, late or repeated. Every other call that takes `now` first does what is
//! due, so a late driver decides what a punctual one would have.
//!
//! # Meeting the per-tenant debouncer
//!
//! The detector never sees a frame; the registry feeds it, under one lock for the fleet:
//!
//! - [`Detector::would_hold`] before a transient observation: if its drop would be held, the
//!   debouncer is told so with the observation, so the drop is held from the start and is not
//!   counted as a flap.
//! - [`Detector::dropped`] on each Up -> Down(transient) change the debouncer sees on an
//!   established link, the changes that count as flaps. The first state a link learns after it
//!   (re)connects is not a drop, so a gateway restart is not a storm. `linked` is the number of
//!   tenants whose links are up now; `reason` the drop's close (`describe`), None for a bare
//!   `connecting`, which never replaces a close. Terminal downs are never fed: they are never held.
//! - [`Detector::recovered`] on every Up observation (idempotent and cheap), so a member that
//!   comes back within the hold is not released.
//! - [`Detector::unlinked`] when a tenant's link goes down (in shared mode, every tenant's when
//!   the shared link does), [`Detector::removed`] when it leaves the config.
//! - `next_deadline` is one more entry on the timer wheel; after every call the registry
//!   reschedules it and drains [`Detector::poll_event`]. After a reload it calls `on_timeout` with
//!   the new policy.
//!
//! And it defers the debouncer's decisions:
//!
//! - When a tenant's disconnect grace runs out and [`Detector::held_until`] is Some, the
//!   transient `disconnected` is not made owed: it waits for the [`Event::Released`] that lists the
//!   tenant, and is then reported with that event's reason (its `X-Status-Changed-At` still the
//!   first Down of the drop). If the session comes back first, the debouncer decides `connected`,
//!   which is what the backend already has: no call.
//! - The detector guarantees: `held_until` is Some only for a tenant it counts as down in a storm
//!   whose hold has not lifted; it turns None only through a `Released` event listing the tenant,
//!   `recovered` or `removed`; and every tenant held when a hold lifts (its end, `fraction = 0`) is
//!   listed in exactly one `Released`. A tenant that is up when its hold lifts and drops again
//!   later is not held any more: a decision still deferred for it is due at once.
//! - A drop that joins a storm is not the tenant flapping: the registry should not count it as a
//!   flap (the drops made before the storm began were already counted).
//!
//! # Restarts
//!
//! The hold survives a restart if the registry stores [`Detector::saved`] (with `since` as
//! wall-clock time) and seeds the next process with [`Detector::resume`]. A resumed storm has
//! ended: its held members stay held until their original hold end (and at least a settle time,
//! the disconnect grace, after the restart, so their links can show them back first) and are
//! released with their original reason, unless they come back first; the up members, and
//! whether the storm was still in progress, are not carried over. The registry seeds each held
//! member's debouncer with the held drop ([`Detector::held_since`]): it is the tenant's last
//! known state, reported at the release even when the gateway tells the new process nothing. Without it the hold is lost: the first state each link
//! learns after the restart is not a drop, so no storm forms again, and every held drop is
//! reported at its own `disconnect_grace` with its own reason.
//!
//! # Cost
//!
//! Every call is amortised O(1) in the number of tenants (hash maps and queues; a tenant's storm
//! is found by binary search among the few still holding), except that beginning, ending or
//! releasing a storm walks and sorts its members once. The window remembers at most two entries
//! per tenant in it (plus a constant), a storm one per member (twice that with removal churn), so
//! memory is bounded by the number of tenants. Outside a storm nothing is allocated once the
//! window's buffers have grown.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Default share of the linked tenants whose transient drops within the window make a storm.
pub(crate) const DEFAULT_FRACTION: f64 = 0.2;
/// Default least number of drops for a storm: a handful of tenants is not an outage.
pub(crate) const DEFAULT_MIN_TENANTS: usize = 20;
/// Default window in which the drops must fall.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Default hold: how long after a storm began its drops are held before being reported.
pub(crate) const DEFAULT_HOLD: Duration = Duration::from_secs(15 * 60);

/// The reason's last close when no member's drop carried one (only `connecting` was seen).
const RECONNECTING: &str = "session reconnecting";

/// The longest close reason kept, as the debouncer keeps it: it ends up in a bell, a log line and
/// the state file.
const MAX_REASON_CHARS: usize = 256;

/// A hold whose end would overflow the clock (an absurd configured `hold`) ends this long after
/// its storm began instead, which is never in practice.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The `[debounce] storm_*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StormPolicy {
    /// Share (0 to 1) of the linked tenants that must go Down(transient) within `window`;
    /// 0 turns the hold off.
    pub fraction: f64,
    /// Least number of such tenants.
    pub min_tenants: usize,
    pub window: Duration,
    pub hold: Duration,
}

impl Default for StormPolicy {
    fn default() -> Self {
        StormPolicy {
            fraction: DEFAULT_FRACTION,
            min_tenants: DEFAULT_MIN_TENANTS,
            window: DEFAULT_WINDOW,
            hold: DEFAULT_HOLD,
        }
    }
}

/// What the detector decided, drained with [`Detector::poll_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// A storm began: the drops of its members are held from now on.
    Began {
        since: Instant,
        members: usize,
        /// The linked tenants when it began (at least `members`).
        linked: usize,
        /// The outage reason as it reads now, for the WARN line.
        reason: Arc<str>,
    },
    /// These tenants' holds lifted while they were down: their deferred `disconnected` is
    /// reported now, with this reason. Sorted, each tenant once.
    Released { tenants: Vec<T>, reason: Arc<str> },
    /// The storm in progress ended: fewer than half of its members are still down (or the hold was
    /// turned off, or every member was removed).
    Ended {
        since: Instant,
        members: usize,
        still_down: usize,
        /// Ended because a reload turned the hold off, whatever was still down.
        turned_off: bool,
        /// Until when those still down stay held; None when nothing is held any more.
        held_until: Option<Instant>,
    },
}

/// The newest storm, for the admin API and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct View<'a> {
    /// The storm is in progress (drops join it); false once it ended but still holds members.
    pub active: bool,
    pub since: Instant,
    /// When its hold ends, or ended.
    pub hold_until: Instant,
    /// Its hold has lifted: its members' drops are reported as usual.
    pub released: bool,
    pub members: usize,
    pub still_down: usize,
    pub linked_at_start: usize,
    /// The last close reason seen among its members.
    pub last_reason: &'a str,
    /// Tenants whose drops are held now, over this storm and older ones still holding.
    pub held: usize,
}

/// A storm's hold as the state file keeps it, to carry it over a restart (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Saved<T> {
    /// When the storm began, on the clock of the process that resumes it (the registry stores
    /// wall-clock time and converts).
    pub since: Instant,
    pub linked: usize,
    pub members: usize,
    pub window: Duration,
    pub last_reason: String,
    /// The members whose drops are held.
    pub held: Vec<T>,
}

/// The fleet-level storm detector. See the module documentation for the model.
///
/// Generic over the tenant id so tests can use small integers; the engine uses `Arc<str>`.
#[derive(Debug, Clone)]
pub struct Detector<T = Arc<str>> {
    /// The window: tenants down after a counted drop, each with the sequence number of that drop.
    recent: HashMap<T, u64>,
    /// The counted drops in time order. An entry whose sequence number is no longer the tenant's
    /// in `recent` is stale (the tenant came back, left, or dropped again later) and is skipped.
    drops: VecDeque<(Instant, u64, T)>,
    /// The sequence number of the last counted drop.
    seq: u64,
    /// The latest close reason among the window's drops; it becomes the next storm's.
    last_reason: String,
    /// Membership: every member of the storm in progress (down or up) and the held members of
    /// ended storms. A tenant is in at most one storm, and never both here and in `recent`.
    members: HashMap<T, Member>,
    /// The storm in progress (the newest, not ended) and the ended ones still holding members,
    /// oldest first, so their hold ends come in order too.
    storms: VecDeque<Storm<T>>,
    next_id: u64,
    events: VecDeque<Event<T>>,
    /// The latest `now` seen: time never runs backwards for the window, even if a caller's does.
    clock: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Member {
    storm: u64,
    down: bool,
}

#[derive(Debug, Clone)]
struct Storm<T> {
    id: u64,
    since: Instant,
    linked: usize,
    /// The window it was detected with, for its reason.
    window: Duration,
    /// Its members; frozen when it ends, as its reason's N.
    members: usize,
    /// Its members that are down (held until `released`).
    down: usize,
    last_reason: String,
    /// Who joined (while in progress) or who is held (once ended), to list them without walking
    /// `members`. Entries of removed tenants linger until `compact`.
    tenants: Vec<T>,
    ended: bool,
    /// Its hold has lifted. An ended storm is dropped when released, so only the storm in
    /// progress can be released.
    released: bool,
    /// Its hold lasts at least until then: a hold resumed after a restart gives each link the
    /// time to learn its session first ([`Detector::resume`]); `since` for a storm of this process.
    settle_until: Instant,
}

/// How many tenants must be down within the window for a storm, with `linked` tenants linked;
/// None when the hold is off (`fraction` 0, negative or not a number).
pub(crate) fn threshold(policy: &StormPolicy, linked: usize) -> Option<usize> {
    if !is_on(policy) {
        return None;
    }
    // A share that is a whole number but comes out a hair above it in floating point
    // (0.1 * 30 = 3.0000000000000004) must not demand one tenant more.
    let share = (policy.fraction * linked as f64 * (1.0 - 1e-12)).ceil();
    // `as` saturates: an infinite share can never be met.
    Some((share as usize).max(policy.min_tenants).max(1))
}

impl<T> Default for Detector<T> {
    fn default() -> Self {
        Detector {
            recent: HashMap::new(),
            drops: VecDeque::new(),
            seq: 0,
            last_reason: String::new(),
            members: HashMap::new(),
            storms: VecDeque::new(),
            next_id: 0,
            events: VecDeque::new(),
            clock: None,
        }
    }
}

impl<T: Clone + Eq + Hash + Ord> Detector<T> {
    /// A detector with no storm, for a fresh start.
    pub fn new() -> Self {
        Self::default()
    }

    /// A detector continuing the holds of a previous process (see "Restarts" in the module doc).
    /// Each saved storm resumes as ended, holding its members until `since + hold`, and at least
    /// until `now + settle`: time for the links to learn which members are back (the disconnect
    /// grace), so a hold that ended while the process was down does not report them all at once.
    /// A `since` after `now` counts as `now`, and a tenant named twice is held once, by the older
    /// storm.
    pub fn resume(
        now: Instant,
        saved: impl IntoIterator<Item = Saved<T>>,
        settle: Duration,
    ) -> Self {
        let mut detector = Self {
            clock: Some(now),
            ..Self::default()
        };
        let mut saved: Vec<Saved<T>> = saved.into_iter().collect();
        saved.sort_by_key(|s| s.since);
        for s in saved {
            let id = detector.next_id;
            let mut tenants = Vec::new();
            for tenant in s.held {
                if !detector.members.contains_key(&tenant) {
                    let member = Member {
                        storm: id,
                        down: true,
                    };
                    detector.members.insert(tenant.clone(), member);
                    tenants.push(tenant);
                }
            }
            if tenants.is_empty() {
                continue;
            }
            detector.next_id += 1;
            let mut last_reason = String::new();
            keep_reason(&mut last_reason, &s.last_reason);
            let members = s.members.max(tenants.len());
            detector.storms.push_back(Storm {
                id,
                since: s.since.min(now),
                linked: s.linked.max(members),
                window: s.window,
                members,
                down: tenants.len(),
                last_reason,
                tenants,
                ended: true,
                released: false,
                // No settle time keeps the hold's own end, even one already past.
                settle_until: match settle.is_zero() {
                    true => s.since.min(now),
                    false => now.checked_add(settle).unwrap_or(now),
                },
            });
        }
        detector
    }

    /// A linked tenant went Down(transient): its session was up and is not any more. `linked` is
    /// the number of tenants whose links are up now; `reason` the drop's close, None for a bare
    /// `connecting`. A tenant already down counts once; a later close only updates the reason.
    pub fn dropped(
        &mut self,
        now: Instant,
        policy: &StormPolicy,
        tenant: &T,
        linked: usize,
        reason: Option<&str>,
    ) {
        self.on_timeout(now, policy);
        if !is_on(policy) {
            return;
        }
        let now = self.tick(now);
        if let Some(member) = self.members.get_mut(tenant) {
            // A member of a storm: down again, or still down in the same episode.
            let Some(i) = find(&self.storms, member.storm) else {
                debug_assert!(false, "a member's storm is kept");
                return;
            };
            let storm = &mut self.storms[i];
            if !member.down {
                member.down = true;
                storm.down += 1;
            }
            if let Some(reason) = reason {
                keep_reason(&mut storm.last_reason, reason);
            }
            return;
        }
        if let Some(storm) = self.storms.back_mut().filter(|s| !s.ended) {
            // A drop during a storm joins it.
            let member = Member {
                storm: storm.id,
                down: true,
            };
            self.members.insert(tenant.clone(), member);
            storm.tenants.push(tenant.clone());
            storm.members += 1;
            storm.down += 1;
            if let Some(reason) = reason {
                keep_reason(&mut storm.last_reason, reason);
            }
            compact(storm, &self.members);
            return;
        }
        self.expire(now, policy.window);
        if !self.recent.contains_key(tenant) {
            self.seq += 1;
            self.recent.insert(tenant.clone(), self.seq);
            self.drops.push_back((now, self.seq, tenant.clone()));
        }
        if let Some(reason) = reason {
            keep_reason(&mut self.last_reason, reason);
        }
        // Stale entries are skipped when they expire; sweep them when they could otherwise pile up
        // (one tenant flapping fast within the window), so the queue stays within twice the window.
        if self.drops.len() > 2 * self.recent.len() + 32 {
            let recent = &self.recent;
            self.drops
                .retain(|(_, seq, tenant)| recent.get(tenant) == Some(seq));
        }
        if threshold(policy, linked).is_some_and(|needed| self.recent.len() >= needed) {
            self.begin(now, policy, linked);
        }
    }

    /// The tenant's session is up. Idempotent: call it on every Up observation.
    pub fn recovered(&mut self, now: Instant, policy: &StormPolicy, tenant: &T) {
        self.on_timeout(now, policy);
        if self.leave_window(tenant) {
            return;
        }
        let Some(member) = self.members.get_mut(tenant) else {
            return;
        };
        if !member.down {
            return;
        }
        let Some(i) = find(&self.storms, member.storm) else {
            debug_assert!(false, "a member's storm is kept");
            return;
        };
        let storm = &mut self.storms[i];
        storm.down -= 1;
        member.down = false;
        if !storm.ended {
            self.check_end(policy);
        }
    }

    /// The tenant's gateway link went down: it is no longer linked, so a drop of it in the window
    /// no longer counts. A storm member stays held (see the module doc).
    pub fn unlinked(&mut self, tenant: &T) {
        self.leave_window(tenant);
    }

    /// The tenant is no longer configured: it leaves the window and its storm at once and is
    /// never released. The storm in progress counts one member fewer and may end.
    pub fn removed(&mut self, now: Instant, policy: &StormPolicy, tenant: &T) {
        self.on_timeout(now, policy);
        if self.leave_window(tenant) {
            return;
        }
        let Some(member) = self.members.remove(tenant) else {
            return;
        };
        let Some(i) = find(&self.storms, member.storm) else {
            debug_assert!(false, "a member's storm is kept");
            return;
        };
        let storm = &mut self.storms[i];
        if member.down {
            storm.down -= 1;
        }
        if storm.ended {
            // Its count of members stays as it ended (its reason's N); it goes at its hold end.
            compact(storm, &self.members);
        } else {
            storm.members -= 1;
            compact(storm, &self.members);
            self.check_end(policy);
        }
    }

    /// Does whatever is due at `now`: releases the storms whose hold ended, in order, and, when the
    /// hold is turned off, ends every storm and releases everyone held. Calling it early, late or
    /// repeatedly is harmless.
    pub fn on_timeout(&mut self, now: Instant, policy: &StormPolicy) {
        let now = self.tick(now);
        if !is_on(policy) {
            self.turn_off();
            return;
        }
        while let Some(storm) = self.storms.front() {
            if storm.released || hold_end(policy, storm) > now {
                break;
            }
            self.release_front();
        }
    }

    /// The earliest instant `on_timeout` has something to do, if any: the oldest hold end, or at
    /// once when the hold was turned off during a storm. Derived from the state and the policy on
    /// every call, so a reload applies at once.
    pub fn next_deadline(&self, policy: &StormPolicy) -> Option<Instant> {
        let oldest = self.storms.front()?;
        if !is_on(policy) {
            return Some(oldest.since);
        }
        (!oldest.released).then(|| hold_end(policy, oldest))
    }

    /// Until when the tenant's transient `disconnected` is held: Some while it is down in a storm
    /// whose hold has not lifted, even past that instant until `on_timeout` has released it.
    pub fn held_until(&self, policy: &StormPolicy, tenant: &T) -> Option<Instant> {
        let member = self.members.get(tenant).filter(|m| m.down)?;
        let storm = &self.storms[find(&self.storms, member.storm)?];
        (!storm.released).then(|| hold_end(policy, storm))
    }

    /// Whether a transient drop of `tenant` made now would be held: it would join the storm in
    /// progress, or the tenant is a member of a storm whose hold has not lifted.
    pub fn would_hold(&self, policy: &StormPolicy, tenant: &T) -> bool {
        if !is_on(policy) {
            return false;
        }
        match self.members.get(tenant) {
            Some(member) => {
                find(&self.storms, member.storm).is_some_and(|i| !self.storms[i].released)
            }
            None => self.storms.back().is_some_and(|s| !s.ended && !s.released),
        }
    }

    /// Whether decisions are waiting to be drained.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next decision, oldest first.
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    /// The newest storm, if one is in progress or still holds tenants.
    pub fn view(&self, policy: &StormPolicy) -> Option<View<'_>> {
        let storm = self.storms.back()?;
        Some(View {
            active: !storm.ended,
            since: storm.since,
            hold_until: hold_end(policy, storm),
            released: storm.released,
            members: storm.members,
            still_down: storm.down,
            linked_at_start: storm.linked,
            last_reason: last_reason(storm),
            held: self
                .storms
                .iter()
                .filter(|s| !s.released)
                .map(|s| s.down)
                .sum(),
        })
    }

    /// The holds to carry over a restart, oldest first (see "Restarts" in the module doc).
    pub fn saved(&self) -> Vec<Saved<T>> {
        self.saved_with_ids()
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| !s.held.is_empty())
            .collect()
    }

    /// Every hold still running, each with the id of its storm in this process, which
    /// [`Detector::membership`] names, so a store can add a tenant to the right hold as it joins
    /// (also a hold that holds nobody right now: a member that comes back may drop again).
    pub fn saved_with_ids(&self) -> Vec<(u64, Saved<T>)> {
        self.storms
            .iter()
            .filter(|s| !s.released)
            .map(|s| {
                let saved = Saved {
                    since: s.since,
                    linked: s.linked,
                    members: s.members,
                    window: s.window,
                    last_reason: s.last_reason.clone(),
                    held: held(s, &self.members),
                };
                (s.id, saved)
            })
            .collect()
    }

    /// When the storm holding the tenant's drop began, and its last close: what a restarted
    /// process seeds the tenant's debouncer with, as its last known state is that drop.
    pub fn held_since(&self, tenant: &T) -> Option<(Instant, &str)> {
        let member = self.members.get(tenant).filter(|m| m.down)?;
        let storm = &self.storms[find(&self.storms, member.storm)?];
        (!storm.released).then(|| (storm.since, last_reason(storm)))
    }

    /// The storm whose hold holds `tenant` now (its id in this process) and that storm's last
    /// close reason, to store as the tenant joins.
    pub fn membership(&self, tenant: &T) -> Option<(u64, &str)> {
        let member = self.members.get(tenant).filter(|m| m.down)?;
        let storm = &self.storms[find(&self.storms, member.storm)?];
        (!storm.released).then_some((storm.id, storm.last_reason.as_str()))
    }

    fn tick(&mut self, now: Instant) -> Instant {
        let now = self.clock.map_or(now, |clock| clock.max(now));
        self.clock = Some(now);
        now
    }

    /// Takes the tenant out of the window; tells whether it was in it.
    fn leave_window(&mut self, tenant: &T) -> bool {
        if self.recent.remove(tenant).is_none() {
            return false;
        }
        if self.recent.is_empty() {
            self.forget_window();
        }
        true
    }

    /// Forgets the drops older than `window`.
    fn expire(&mut self, now: Instant, window: Duration) {
        if let Some(cutoff) = now.checked_sub(window) {
            while self.drops.front().is_some_and(|(at, _, _)| *at < cutoff) {
                let Some((_, seq, tenant)) = self.drops.pop_front() else {
                    break;
                };
                if self.recent.get(&tenant) == Some(&seq) {
                    self.recent.remove(&tenant);
                }
            }
        }
        if self.recent.is_empty() {
            self.forget_window();
        }
    }

    /// An empty window keeps no stale entries and no reason: the next storm's last close must be
    /// one of its own drops'.
    fn forget_window(&mut self) {
        self.drops.clear();
        self.last_reason.clear();
    }

    fn begin(&mut self, now: Instant, policy: &StormPolicy, linked: usize) {
        let id = self.next_id;
        self.next_id += 1;
        let members = self.recent.len();
        let mut tenants = Vec::with_capacity(members);
        for (tenant, _) in self.recent.drain() {
            let member = Member {
                storm: id,
                down: true,
            };
            self.members.insert(tenant.clone(), member);
            tenants.push(tenant);
        }
        self.drops.clear();
        let storm = Storm {
            id,
            since: now,
            linked: linked.max(members),
            window: policy.window,
            members,
            down: members,
            last_reason: std::mem::take(&mut self.last_reason),
            tenants,
            ended: false,
            released: false,
            settle_until: now,
        };
        self.events.push_back(Event::Began {
            since: now,
            members,
            linked: storm.linked,
            reason: outage_reason(&storm),
        });
        self.storms.push_back(storm);
    }

    /// Ends the storm in progress when fewer than half of its members are still down.
    fn check_end(&mut self, policy: &StormPolicy) {
        let Some(storm) = self.storms.back().filter(|s| !s.ended) else {
            return;
        };
        if storm.members == 0 || storm.down.saturating_mul(2) < storm.members {
            self.end(policy);
        }
    }

    /// Ends the storm in progress. Its members still down stay held until its hold ends.
    fn end(&mut self, policy: &StormPolicy) {
        let Some(storm) = self.storms.back_mut().filter(|s| !s.ended) else {
            return;
        };
        let held_until = (!storm.released && storm.down > 0).then(|| hold_end(policy, storm));
        self.events.push_back(Event::Ended {
            since: storm.since,
            members: storm.members,
            still_down: storm.down,
            turned_off: false,
            held_until,
        });
        if storm.released {
            // Nothing held, nothing to hold: the storm is over.
            let id = storm.id;
            for tenant in &storm.tenants {
                if self.members.get(tenant).is_some_and(|m| m.storm == id) {
                    self.members.remove(tenant);
                }
            }
            self.storms.pop_back();
            return;
        }
        // Its members stay its members until its hold ends: the outage is WhatsApp's for that
        // long, so a member that drops again is held again (and is not flapping).
        storm.ended = true;
    }

    /// Lifts the oldest storm's hold: its members still down are released.
    fn release_front(&mut self) {
        let Some(storm) = self.storms.front_mut() else {
            return;
        };
        let tenants = held(storm, &self.members);
        let reason = outage_reason(storm);
        if storm.ended {
            let id = storm.id;
            for tenant in &storm.tenants {
                if self.members.get(tenant).is_some_and(|m| m.storm == id) {
                    self.members.remove(tenant);
                }
            }
            self.storms.pop_front();
        } else {
            // The storm goes on: its members still count for its end, but nothing is held.
            storm.released = true;
        }
        if !tenants.is_empty() {
            self.events.push_back(Event::Released { tenants, reason });
        }
    }

    /// The hold is off: every storm ends and everyone held is released.
    fn turn_off(&mut self) {
        if self.storms.is_empty() && self.recent.is_empty() {
            return;
        }
        for storm in std::mem::take(&mut self.storms) {
            if !storm.released {
                let tenants = held(&storm, &self.members);
                if !tenants.is_empty() {
                    let reason = outage_reason(&storm);
                    self.events.push_back(Event::Released { tenants, reason });
                }
            }
            if !storm.ended {
                self.events.push_back(Event::Ended {
                    since: storm.since,
                    members: storm.members,
                    still_down: storm.down,
                    turned_off: true,
                    held_until: None,
                });
            }
        }
        self.members.clear();
        self.recent.clear();
        self.forget_window();
    }
}

fn is_on(policy: &StormPolicy) -> bool {
    // Written so that NaN is off.
    policy.fraction > 0.0
}

/// When a storm's hold ends under `policy`: at once when the hold is off.
fn hold_end<T>(policy: &StormPolicy, storm: &Storm<T>) -> Instant {
    if !is_on(policy) {
        return storm.since;
    }
    let end = (storm.since.checked_add(policy.hold))
        .or_else(|| storm.since.checked_add(FOREVER))
        .unwrap_or(storm.since);
    end.max(storm.settle_until)
}

fn find<T>(storms: &VecDeque<Storm<T>>, id: u64) -> Option<usize> {
    storms.binary_search_by_key(&id, |s| s.id).ok()
}

/// The storm's members that are down and held by it, sorted, each once.
fn held<T: Clone + Eq + Hash + Ord>(storm: &Storm<T>, members: &HashMap<T, Member>) -> Vec<T> {
    let mut held: Vec<T> = storm
        .tenants
        .iter()
        .filter(|t| {
            members.get(*t)
                == Some(&Member {
                    storm: storm.id,
                    down: true,
                })
        })
        .cloned()
        .collect();
    held.sort_unstable();
    held.dedup();
    held
}

/// Drops the entries of tenants that left the storm once they could outnumber the live ones (a
/// tenant removed and added again by reloads, dropping each time), so the list stays within twice
/// the storm's size.
fn compact<T: Clone + Eq + Hash + Ord>(storm: &mut Storm<T>, members: &HashMap<T, Member>) {
    if storm.tenants.len() <= 2 * storm.members + 16 {
        return;
    }
    let id = storm.id;
    storm
        .tenants
        .retain(|t| members.get(t).is_some_and(|m| m.storm == id));
    storm.tenants.sort_unstable();
    storm.tenants.dedup();
}

fn last_reason<T>(storm: &Storm<T>) -> &str {
    if storm.last_reason.is_empty() {
        RECONNECTING
    } else {
        &storm.last_reason
    }
}

/// `"WhatsApp-wide outage: 8123 of 10000 sessions dropped within 60s; last: Connection Closed
/// (code 428)"`.
fn outage_reason<T>(storm: &Storm<T>) -> Arc<str> {
    format!(
        "WhatsApp-wide outage: {} of {} sessions dropped within {}; last: {}",
        storm.members,
        storm.linked.max(storm.members),
        window_text(storm.window),
        last_reason(storm),
    )
    .into()
}

/// The window as an operator wrote it: in one unit, minutes only from two minutes on and hours
/// from two hours on, so the default reads "60s" as in the SPEC, not "1m".
fn window_text(window: Duration) -> String {
    if window.subsec_nanos() != 0 {
        return format!("{}ms", window.as_millis());
    }
    let secs = window.as_secs();
    if secs >= 2 * 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs >= 2 * 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Keeps a close reason in `buf`, reusing its memory: trimmed, control characters made spaces, cut
/// at [`MAX_REASON_CHARS`]. An empty text changes nothing.
fn keep_reason(buf: &mut String, text: &str) {
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    buf.clear();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_REASON_CHARS {
            buf.push('…');
            break;
        }
        buf.push(if c.is_control() { ' ' } else { c });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const CLOSED_428: &str = "Connection Closed (code 428)";
    const RESTART_515: &str = "Stream Errored (restart required) (code 515)";

    /// How long the clock keeps moving after the last event, so every hold ends.
    const HORIZON: Duration = Duration::from_secs(4 * 3600);

    /// One input, as a table row.
    #[derive(Debug, Clone)]
    enum Ev {
        /// The tenant drops with a 428 close.
        Drop(u32),
        /// The tenant drops with this close, or with none (a bare `connecting`).
        DropWith(u32, Option<&'static str>),
        Up(u32),
        Unlink(u32),
        Remove(u32),
        /// The number of linked tenants the next drops pass (10 at the start).
        Linked(usize),
        /// A new policy, applied as the registry does after a reload: `on_timeout` at once.
        Reload(StormPolicy),
        /// A spurious `on_timeout`, due or not.
        Wake,
    }

    /// The tests' usual policy: with 10 linked tenants, 3 drops within 60 s make a storm, held
    /// 15 minutes.
    fn small() -> StormPolicy {
        StormPolicy {
            fraction: 0.3,
            min_tenants: 3,
            window: Duration::from_secs(60),
            hold: Duration::from_secs(900),
        }
    }

    /// A hand-moved clock driving one detector.
    struct Sim {
        policy: StormPolicy,
        d: Detector<u32>,
        base: Instant,
        now: Instant,
        linked: usize,
        seen: BTreeSet<u32>,
        /// Every drained event with the second (from `base`) it was decided at.
        events: Vec<(f64, Event<u32>)>,
    }

    impl Sim {
        fn new(policy: StormPolicy) -> Self {
            let base = Instant::now();
            Sim {
                policy,
                d: Detector::new(),
                base,
                now: base,
                linked: 10,
                seen: BTreeSet::new(),
                events: Vec::new(),
            }
        }

        fn at(&self, secs: f64) -> Instant {
            self.base + Duration::from_secs_f64(secs)
        }

        fn secs(&self, t: Instant) -> f64 {
            t.saturating_duration_since(self.base).as_secs_f64()
        }

        /// Moves the clock to `to`, calling `on_timeout` exactly at each deadline on the way, as
        /// the timer wheel does.
        fn advance(&mut self, to: Instant) {
            while let Some(due) = self.d.next_deadline(&self.policy) {
                if due > to {
                    break;
                }
                self.now = due.max(self.now);
                self.d.on_timeout(self.now, &self.policy);
                self.drain();
                assert!(
                    !matches!(self.d.next_deadline(&self.policy), Some(n) if n <= self.now),
                    "on_timeout left a due deadline"
                );
                // A repeated call at the same instant must do nothing.
                self.d.on_timeout(self.now, &self.policy);
                assert_eq!(self.d.poll_event(), None, "a repeated on_timeout decided");
            }
            self.now = to.max(self.now);
        }

        fn apply(&mut self, ev: &Ev) {
            let now = self.now;
            let policy = &self.policy;
            match ev {
                Ev::Drop(t) => self
                    .d
                    .dropped(now, policy, t, self.linked, Some(CLOSED_428)),
                Ev::DropWith(t, reason) => self.d.dropped(now, policy, t, self.linked, *reason),
                Ev::Up(t) => self.d.recovered(now, policy, t),
                Ev::Unlink(t) => self.d.unlinked(t),
                Ev::Remove(t) => self.d.removed(now, policy, t),
                Ev::Linked(n) => self.linked = *n,
                Ev::Reload(new) => {
                    self.policy = new.clone();
                    self.d.on_timeout(now, &self.policy);
                }
                Ev::Wake => self.d.on_timeout(now, policy),
            }
            if let Ev::Drop(t) | Ev::DropWith(t, _) | Ev::Up(t) | Ev::Unlink(t) | Ev::Remove(t) = ev
            {
                self.seen.insert(*t);
            }
            self.drain();
        }

        fn drain(&mut self) {
            while let Some(event) = self.d.poll_event() {
                let at = self.secs(self.now);
                self.events.push((at, event));
            }
            // `held_until` and the view agree on who is held.
            let held = self
                .seen
                .iter()
                .filter(|t| self.d.held_until(&self.policy, t).is_some())
                .count();
            assert_eq!(held, self.d.view(&self.policy).map_or(0, |v| v.held));
        }

        fn run(&mut self, events: &[(f64, Ev)]) {
            for (secs, ev) in events {
                let at = self.at(*secs);
                self.advance(at);
                self.apply(ev);
            }
        }

        fn finish(&mut self) {
            let end = self.now + HORIZON;
            self.advance(end);
        }

        fn held_until(&self, tenant: u32) -> Option<f64> {
            self.d
                .held_until(&self.policy, &tenant)
                .map(|t| self.secs(t))
        }

        /// The events in a short form: "began 3 of 10", "released [1, 2]",
        /// "ended 1 of 4 down, held until 920".
        fn shown(&self) -> Vec<(f64, String)> {
            self.events
                .iter()
                .map(|(at, event)| (*at, self.show(event)))
                .collect()
        }

        fn show(&self, event: &Event<u32>) -> String {
            match event {
                Event::Began {
                    members, linked, ..
                } => format!("began {members} of {linked}"),
                Event::Released { tenants, .. } => format!("released {tenants:?}"),
                Event::Ended {
                    members,
                    still_down,
                    held_until,
                    turned_off,
                    ..
                } => match (held_until, turned_off) {
                    (Some(t), _) => format!(
                        "ended {still_down} of {members} down, held until {}",
                        self.secs(*t)
                    ),
                    (None, false) => format!("ended {still_down} of {members} down"),
                    (None, true) => format!("ended {still_down} of {members} down, turned off"),
                },
            }
        }

        /// The reasons of the releases, in order.
        fn released_reasons(&self) -> Vec<&str> {
            self.events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::Released { reason, .. } => Some(&**reason),
                    _ => None,
                })
                .collect()
        }
    }

    /// The table-test entry point: runs `events` (second, event), then the clock for `HORIZON`,
    /// and compares the decisions with `expected` (second, short form).
    fn check_with(policy: StormPolicy, events: &[(f64, Ev)], expected: &[(f64, &str)]) -> Sim {
        let mut sim = Sim::new(policy);
        sim.run(events);
        sim.finish();
        let got = sim.shown();
        let same = got.len() == expected.len()
            && got
                .iter()
                .zip(expected)
                .all(|(g, e)| (g.0 - e.0).abs() < 1e-6 && g.1 == e.1);
        assert!(same, "events differ\n got: {got:#?}\nwant: {expected:#?}");
        sim
    }

    fn check(events: &[(f64, Ev)], expected: &[(f64, &str)]) -> Sim {
        check_with(small(), events, expected)
    }

    /// Drops of `tenants`, one a second from `from`.
    fn drops(from: f64, tenants: impl IntoIterator<Item = u32>) -> Vec<(f64, Ev)> {
        tenants
            .into_iter()
            .enumerate()
            .map(|(i, t)| (from + i as f64, Ev::Drop(t)))
            .collect()
    }

    fn concat(parts: &[Vec<(f64, Ev)>]) -> Vec<(f64, Ev)> {
        parts.concat()
    }

    #[test]
    fn threshold_takes_the_larger_of_the_share_and_the_minimum() {
        let p = |fraction, min_tenants| StormPolicy {
            fraction,
            min_tenants,
            ..StormPolicy::default()
        };
        let cases = [
            (p(0.3, 3), 10, Some(3)),
            (p(0.3, 3), 5, Some(3)),
            (p(0.2, 20), 10_000, Some(2000)),
            (p(0.2, 20), 50, Some(20)),
            (p(0.25, 1), 10, Some(3)),
            (p(1.0, 1), 10, Some(10)),
            // Whole shares that floating point lands a hair above: 3.0000000000000004, 7.000000000000001.
            (p(0.1, 1), 30, Some(3)),
            (p(0.7, 1), 10, Some(7)),
            (p(0.2, 0), 0, Some(1)),
            // More than all the linked tenants can never be met.
            (p(2.0, 1), 10, Some(20)),
            (p(f64::INFINITY, 1), 10, Some(usize::MAX)),
            (p(0.0, 20), 100, None),
            (p(-0.5, 20), 100, None),
            (p(f64::NAN, 20), 100, None),
        ];
        for (policy, linked, want) in cases {
            assert_eq!(threshold(&policy, linked), want, "{policy:?} {linked}");
        }
    }

    #[test]
    fn three_of_ten_within_the_window_begin_a_storm() {
        let sim = check(
            &drops(0.0, [1, 2, 3]),
            &[(2.0, "began 3 of 10"), (902.0, "released [1, 2, 3]")],
        );
        assert_eq!(
            sim.released_reasons(),
            ["WhatsApp-wide outage: 3 of 10 sessions dropped within 60s; last: Connection Closed (code 428)"]
        );
    }

    #[test]
    fn one_short_of_the_threshold_is_no_storm() {
        let sim = check(&drops(0.0, [1, 2]), &[]);
        assert_eq!(sim.held_until(1), None);
        assert_eq!(sim.d.view(&sim.policy), None);
    }

    #[test]
    fn the_share_of_linked_tenants_and_min_tenants_both_apply() {
        // 100 linked: 30% is 30 tenants, more than min_tenants; 29 are not a storm.
        let mut events = vec![(0.0, Ev::Linked(100))];
        events.extend(drops(0.0, 1..=29));
        check(&events, &[]);
        events.extend(drops(29.0, [30]));
        check(
            &events,
            &[(29.0, "began 30 of 100"), (929.0, "released [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]")],
        );
        // 5 linked: 30% is 2 tenants, but min_tenants asks for 3.
        let mut events = vec![(0.0, Ev::Linked(5))];
        events.extend(drops(0.0, [1, 2]));
        check(&events, &[]);
        events.extend(drops(2.0, [3]));
        check(
            &events,
            &[(2.0, "began 3 of 5"), (902.0, "released [1, 2, 3]")],
        );
    }

    #[test]
    fn the_window_slides() {
        // The drop at 0 is 61 s old at 61: out. 30, 61 and 62 are within 60 s of 62.
        check(
            &[
                (0.0, Ev::Drop(1)),
                (30.0, Ev::Drop(2)),
                (61.0, Ev::Drop(3)),
                (62.0, Ev::Drop(4)),
            ],
            &[(62.0, "began 3 of 10"), (962.0, "released [2, 3, 4]")],
        );
        // Exactly `window` apart is within it.
        check(
            &[(0.0, Ev::Drop(1)), (30.0, Ev::Drop(2)), (60.0, Ev::Drop(3))],
            &[(60.0, "began 3 of 10"), (960.0, "released [1, 2, 3]")],
        );
    }

    #[test]
    fn a_tenant_counts_once() {
        let sim = check(
            &[
                (0.0, Ev::Drop(1)),
                // A later close in the same drop.
                (5.0, Ev::DropWith(1, Some(RESTART_515))),
                (10.0, Ev::Drop(2)),
                // Back and down again: still one tenant.
                (15.0, Ev::Up(2)),
                (20.0, Ev::Drop(2)),
                (25.0, Ev::Drop(2)),
            ],
            &[],
        );
        assert_eq!(sim.d.recent.len(), 2);
        check(
            &[
                (0.0, Ev::Drop(1)),
                (5.0, Ev::Drop(1)),
                (10.0, Ev::Drop(2)),
                (15.0, Ev::Up(2)),
                (20.0, Ev::Drop(2)),
                (30.0, Ev::Drop(3)),
            ],
            &[(30.0, "began 3 of 10"), (930.0, "released [1, 2, 3]")],
        );
    }

    #[test]
    fn a_tenant_back_before_the_storm_does_not_count() {
        let sim = check(
            &[
                (0.0, Ev::Drop(1)),
                (5.0, Ev::Drop(2)),
                (10.0, Ev::Up(1)),
                (20.0, Ev::Drop(3)),
                (30.0, Ev::Drop(4)),
            ],
            &[(30.0, "began 3 of 10"), (930.0, "released [2, 3, 4]")],
        );
        assert_eq!(sim.events.len(), 2);
        check(
            &[
                (0.0, Ev::Drop(1)),
                (5.0, Ev::Drop(2)),
                (10.0, Ev::Up(1)),
                (20.0, Ev::Drop(3)),
            ],
            &[],
        );
    }

    #[test]
    fn a_tenant_whose_link_went_down_leaves_the_window() {
        check(
            &[
                (0.0, Ev::Drop(1)),
                (5.0, Ev::Drop(2)),
                (10.0, Ev::Unlink(1)),
                (20.0, Ev::Drop(3)),
            ],
            &[],
        );
    }

    #[test]
    fn drops_after_the_begin_join_the_storm_and_are_held_with_it() {
        let events = concat(&[
            drops(0.0, [1, 2, 3]),
            vec![
                (100.0, Ev::Drop(4)),
                (800.0, Ev::DropWith(5, Some(RESTART_515))),
                // A bare `connecting` says nothing about why: the last close stays 515's.
                (801.0, Ev::DropWith(6, None)),
            ],
        ]);
        let mut sim = Sim::new(small());
        sim.run(&events);
        assert_eq!(sim.held_until(6), Some(902.0));
        assert_eq!(sim.held_until(1), Some(902.0));
        let view = sim.d.view(&sim.policy).expect("a storm");
        assert_eq!(
            (
                view.active,
                view.members,
                view.still_down,
                view.linked_at_start
            ),
            (true, 6, 6, 10)
        );
        assert_eq!((view.last_reason, view.held), (RESTART_515, 6));
        assert_eq!(sim.secs(view.since), 2.0);
        assert_eq!(sim.secs(view.hold_until), 902.0);
        sim.finish();
        assert_eq!(
            sim.shown(),
            [
                (2.0, "began 3 of 10".to_string()),
                (902.0, "released [1, 2, 3, 4, 5, 6]".to_string())
            ]
        );
        match &sim.events[0].1 {
            Event::Began { reason, .. } => assert_eq!(
                &**reason,
                "WhatsApp-wide outage: 3 of 10 sessions dropped within 60s; last: Connection Closed (code 428)"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            sim.released_reasons(),
            ["WhatsApp-wide outage: 6 of 10 sessions dropped within 60s; last: Stream Errored (restart required) (code 515)"]
        );
        // Released: nobody is held any more, though the storm goes on (all six are down).
        assert_eq!(sim.held_until(1), None);
        assert!(sim
            .d
            .view(&sim.policy)
            .is_some_and(|v| v.active && v.released));
    }

    #[test]
    fn a_storm_that_comes_back_within_the_hold_is_silent() {
        let sim = check(
            &concat(&[
                drops(0.0, [1, 2, 3, 4]),
                vec![
                    (100.0, Ev::Up(1)),
                    // Two of four down is half, not fewer than half.
                    (110.0, Ev::Up(2)),
                    (120.0, Ev::Up(3)),
                    (130.0, Ev::Up(4)),
                ],
            ]),
            &[
                (2.0, "began 3 of 10"),
                (120.0, "ended 1 of 4 down, held until 902"),
            ],
        );
        assert_eq!(sim.d.view(&sim.policy), None);
        assert!(sim.d.members.is_empty() && sim.d.storms.is_empty());
    }

    #[test]
    fn members_still_down_stay_held_past_the_end_until_the_hold_ends() {
        let mut sim = Sim::new(small());
        sim.run(&concat(&[
            drops(0.0, [1, 2, 3, 4]),
            vec![(100.0, Ev::Up(1)), (110.0, Ev::Up(2)), (120.0, Ev::Up(3))],
        ]));
        assert_eq!(sim.held_until(4), Some(902.0));
        assert_eq!(sim.held_until(1), None);
        let view = sim.d.view(&sim.policy).expect("still holding");
        assert_eq!((view.active, view.held, view.still_down), (false, 1, 1));
        sim.finish();
        assert_eq!(
            sim.shown(),
            [
                (2.0, "began 3 of 10".to_string()),
                (120.0, "ended 1 of 4 down, held until 902".to_string()),
                (902.0, "released [4]".to_string()),
            ]
        );
        assert_eq!(
            sim.released_reasons(),
            ["WhatsApp-wide outage: 4 of 10 sessions dropped within 60s; last: Connection Closed (code 428)"]
        );
    }

    #[test]
    fn a_new_storm_can_follow_while_the_old_hold_runs_and_old_members_stay_its_own() {
        let sim = check(
            &concat(&[
                drops(0.0, [1, 2, 3, 4]),
                vec![(100.0, Ev::Up(1)), (100.0, Ev::Up(2)), (100.0, Ev::Up(3))],
                // After the end, drops fill the window again.
                drops(200.0, [5, 6]),
                vec![(205.0, Ev::DropWith(7, Some(RESTART_515)))],
                // Tenant 1, back from the first storm, drops again while its hold runs: it is
                // still the first storm's member, held again, not a member of the second.
                vec![(210.0, Ev::Drop(1))],
            ]),
            &[
                (2.0, "began 3 of 10"),
                (100.0, "ended 1 of 4 down, held until 902"),
                (205.0, "began 3 of 10"),
                (902.0, "released [1, 4]"),
                (1105.0, "released [5, 6, 7]"),
            ],
        );
        assert_eq!(
            sim.released_reasons(),
            [
                "WhatsApp-wide outage: 4 of 10 sessions dropped within 60s; last: Connection Closed (code 428)",
                "WhatsApp-wide outage: 3 of 10 sessions dropped within 60s; last: Stream Errored (restart required) (code 515)",
            ]
        );
    }

    #[test]
    fn a_drop_after_the_hold_is_not_held_and_the_storm_still_ends() {
        let mut sim = Sim::new(small());
        sim.run(&concat(&[
            drops(0.0, [1, 2, 3]),
            vec![(1000.0, Ev::Drop(4))],
        ]));
        assert_eq!(sim.held_until(4), None);
        sim.run(&[
            (1100.0, Ev::Up(1)),
            (1110.0, Ev::Up(2)),
            (1120.0, Ev::Up(3)),
        ]);
        sim.finish();
        assert_eq!(
            sim.shown(),
            [
                (2.0, "began 3 of 10".to_string()),
                (902.0, "released [1, 2, 3]".to_string()),
                (1120.0, "ended 1 of 4 down".to_string()),
            ]
        );
        assert_eq!(sim.d.view(&sim.policy), None);
    }

    #[test]
    fn a_removed_tenant_leaves_the_window_and_its_storm_unreleased() {
        // From the window.
        check(
            &[
                (0.0, Ev::Drop(1)),
                (1.0, Ev::Drop(2)),
                (2.0, Ev::Remove(1)),
                (3.0, Ev::Drop(3)),
            ],
            &[],
        );
        // From the storm in progress: it counts one member fewer (3 of 3 down), so it goes on.
        let sim = check(
            &concat(&[drops(0.0, [1, 2, 3, 4]), vec![(50.0, Ev::Remove(4))]]),
            &[(2.0, "began 3 of 10"), (902.0, "released [1, 2, 3]")],
        );
        assert_eq!(
            sim.released_reasons()[0].split(';').next(),
            Some("WhatsApp-wide outage: 3 of 10 sessions dropped within 60s")
        );
        // Removing a down member can end it; removing the one still held releases nobody.
        check(
            &concat(&[
                drops(0.0, [1, 2, 3, 4]),
                vec![
                    (50.0, Ev::Up(1)),
                    (55.0, Ev::Up(2)),
                    (60.0, Ev::Remove(3)),
                    (80.0, Ev::Remove(4)),
                ],
            ]),
            &[
                (2.0, "began 3 of 10"),
                (60.0, "ended 1 of 3 down, held until 902"),
            ],
        );
        // Removing every member ends it.
        check(
            &concat(&[
                drops(0.0, [1, 2, 3]),
                vec![
                    (50.0, Ev::Remove(1)),
                    (51.0, Ev::Remove(2)),
                    (52.0, Ev::Remove(3)),
                ],
            ]),
            &[(2.0, "began 3 of 10"), (52.0, "ended 0 of 0 down")],
        );
    }

    #[test]
    fn a_member_whose_link_went_down_stays_held() {
        let mut sim = Sim::new(small());
        sim.run(&concat(&[
            drops(0.0, [1, 2, 3]),
            vec![(10.0, Ev::Unlink(1))],
        ]));
        assert_eq!(sim.held_until(1), Some(902.0));
        sim.finish();
        assert_eq!(
            sim.shown(),
            [
                (2.0, "began 3 of 10".to_string()),
                (902.0, "released [1, 2, 3]".to_string())
            ]
        );
    }

    #[test]
    fn a_reload_moves_the_hold() {
        let with_hold = |secs| StormPolicy {
            hold: Duration::from_secs(secs),
            ..small()
        };
        // Grown before it ends.
        check(
            &concat(&[
                drops(0.0, [1, 2, 3]),
                vec![(100.0, Ev::Reload(with_hold(1800)))],
            ]),
            &[(2.0, "began 3 of 10"), (1802.0, "released [1, 2, 3]")],
        );
        // Shrunk to an instant already past: released at the reload.
        check(
            &concat(&[
                drops(0.0, [1, 2, 3]),
                vec![(100.0, Ev::Reload(with_hold(60)))],
            ]),
            &[(2.0, "began 3 of 10"), (100.0, "released [1, 2, 3]")],
        );
        // Shrunk to an instant still ahead.
        check(
            &concat(&[
                drops(0.0, [1, 2, 3]),
                vec![(100.0, Ev::Reload(with_hold(300)))],
            ]),
            &[(2.0, "began 3 of 10"), (302.0, "released [1, 2, 3]")],
        );
        // Grown after the release: what was released stays released.
        let sim = check(
            &concat(&[
                drops(0.0, [1, 2, 3]),
                vec![(1000.0, Ev::Reload(with_hold(1800)))],
            ]),
            &[(2.0, "began 3 of 10"), (902.0, "released [1, 2, 3]")],
        );
        assert_eq!(sim.held_until(1), None);
        assert_eq!(sim.d.next_deadline(&sim.policy), None);
    }

    #[test]
    fn fraction_zero_ends_every_storm_and_releases_everyone() {
        let off = StormPolicy {
            fraction: 0.0,
            ..small()
        };
        let sim = check(
            &concat(&[
                drops(0.0, [1, 2, 3, 4]),
                vec![(100.0, Ev::Up(1)), (100.0, Ev::Up(2)), (100.0, Ev::Up(3))],
                drops(200.0, [5, 6, 7]),
                vec![(210.0, Ev::Drop(8)), (220.0, Ev::Reload(off.clone()))],
                // Off: nothing is counted or held.
                drops(300.0, 1..=10),
            ]),
            &[
                (2.0, "began 3 of 10"),
                (100.0, "ended 1 of 4 down, held until 902"),
                (202.0, "began 3 of 10"),
                (220.0, "released [4]"),
                (220.0, "released [5, 6, 7, 8]"),
                (220.0, "ended 4 of 4 down, turned off"),
            ],
        );
        assert!(sim.d.recent.is_empty() && sim.d.members.is_empty());
        assert_eq!(sim.d.view(&off), None);
        check_with(off, &drops(0.0, 1..=10), &[]);
        // Turned on again: only fresh drops count.
        check(
            &concat(&[
                drops(0.0, [1, 2]),
                vec![(
                    10.0,
                    Ev::Reload(StormPolicy {
                        fraction: 0.0,
                        ..small()
                    }),
                )],
                vec![(20.0, Ev::Reload(small()))],
                drops(30.0, [3, 4]),
            ]),
            &[],
        );
    }

    #[test]
    fn a_reload_of_the_window_applies_to_detection_not_to_a_storm_in_progress() {
        let window = |secs| StormPolicy {
            window: Duration::from_secs(secs),
            ..small()
        };
        let sim = check(
            &[
                (0.0, Ev::Drop(1)),
                (50.0, Ev::Drop(2)),
                (55.0, Ev::Reload(window(30))),
                // 1 dropped 70 s ago: out of the new window.
                (70.0, Ev::Drop(3)),
                (75.0, Ev::Drop(4)),
                (80.0, Ev::Reload(window(120))),
            ],
            &[(75.0, "began 3 of 10"), (975.0, "released [2, 3, 4]")],
        );
        assert_eq!(
            sim.released_reasons(),
            ["WhatsApp-wide outage: 3 of 10 sessions dropped within 30s; last: Connection Closed (code 428)"]
        );
    }

    #[test]
    fn a_restart_resumes_the_hold() {
        let mut sim = Sim::new(small());
        sim.run(&concat(&[
            drops(0.0, [1, 2, 3, 4]),
            vec![
                (100.0, Ev::Up(4)),
                (110.0, Ev::DropWith(5, Some(RESTART_515))),
            ],
        ]));
        let saved = sim.d.saved();
        assert_eq!(saved.len(), 1);
        assert_eq!(
            (
                saved[0].members,
                saved[0].linked,
                &*saved[0].held,
                &*saved[0].last_reason
            ),
            (5, 10, &[1, 2, 3, 5][..], RESTART_515)
        );
        // The next process starts at 500 s; the storm began at 2 s on its clock too.
        let mut next = Sim::new(small());
        next.base = sim.base;
        next.now = next.at(500.0);
        next.d = Detector::resume(next.now, saved, Duration::ZERO);
        next.seen.extend(1..=5);
        assert_eq!(next.held_until(1), Some(902.0));
        assert_eq!(next.held_until(4), None);
        let view = next.d.view(&next.policy).expect("resumed");
        assert_eq!((view.active, view.held, view.members), (false, 4, 5));
        next.run(&[(600.0, Ev::Up(2))]);
        next.finish();
        assert_eq!(next.shown(), [(902.0, "released [1, 3, 5]".to_string())]);
        assert_eq!(
            next.released_reasons(),
            ["WhatsApp-wide outage: 5 of 10 sessions dropped within 60s; last: Stream Errored (restart required) (code 515)"]
        );

        // A hold that ran out while the process was down is released at the first call.
        let mut late = Sim::new(small());
        late.base = sim.base;
        late.now = late.at(5000.0);
        late.d = Detector::resume(late.now, sim.d.saved(), Duration::ZERO);
        late.seen.extend(1..=5);
        late.run(&[(5000.0, Ev::Wake)]);
        assert_eq!(
            late.shown(),
            [(5000.0, "released [1, 2, 3, 5]".to_string())]
        );

        // A resumed storm has ended: new drops make a new one.
        let mut again = Sim::new(small());
        again.base = sim.base;
        again.now = again.at(500.0);
        again.d = Detector::resume(again.now, sim.d.saved(), Duration::ZERO);
        again.seen.extend(1..=5);
        again.run(&drops(510.0, [6, 7, 8]));
        again.finish();
        assert_eq!(
            again.shown(),
            [
                (512.0, "began 3 of 10".to_string()),
                (902.0, "released [1, 2, 3, 5]".to_string()),
                (1412.0, "released [6, 7, 8]".to_string()),
            ]
        );
    }

    /// A hold that ended while the process was down lasts, once resumed, until the links had
    /// the settle time to learn which members are back; one still running keeps its own end.
    /// Each held member is seeded from when its storm began, with its last close.
    #[test]
    fn a_resumed_hold_lasts_at_least_the_settle_time_after_the_restart() {
        let base = Instant::now();
        let now = base + Duration::from_secs(2000);
        let saved = |since: u64, held: Vec<u32>| Saved {
            since: base + Duration::from_secs(since),
            linked: 20,
            members: held.len(),
            window: Duration::from_secs(60),
            last_reason: "Connection Closed (code 428)".to_string(),
            held,
        };
        let settle = Duration::from_secs(60);
        let d = Detector::resume(now, [saved(0, vec![1]), saved(1500, vec![2])], settle);
        let policy = small();
        assert_eq!(
            d.held_until(&policy, &1),
            Some(now + settle),
            "ended while down"
        );
        assert_eq!(
            d.held_until(&policy, &2),
            Some(base + Duration::from_secs(1500) + policy.hold),
            "still running"
        );
        assert_eq!(
            d.held_since(&1),
            Some((base, "Connection Closed (code 428)"))
        );
        assert_eq!(d.held_since(&3), None);
    }

    #[test]
    fn resume_tolerates_odd_saved_state() {
        let base = Instant::now();
        let s = |since: u64, held: Vec<u32>, members| Saved {
            since: base + Duration::from_secs(since),
            linked: 0,
            members,
            window: Duration::from_secs(60),
            last_reason: "line\none".to_string(),
            held,
        };
        let now = base + Duration::from_secs(100);
        // Out of order, a tenant in two storms, an empty one, a since in the future, counts
        // smaller than the tenants held.
        let mut d = Detector::resume(
            now,
            [
                s(500, vec![3, 1], 0),
                s(10, vec![1, 2, 2], 1),
                s(20, vec![], 9),
            ],
            Duration::ZERO,
        );
        let policy = small();
        assert_eq!(
            d.held_until(&policy, &1),
            Some(base + Duration::from_secs(910))
        );
        assert_eq!(
            d.held_until(&policy, &3),
            Some(now + Duration::from_secs(900))
        );
        d.on_timeout(base + Duration::from_secs(4000), &policy);
        let reasons: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert_eq!(
            reasons,
            [
                Event::Released {
                    tenants: vec![1, 2],
                    reason:
                        "WhatsApp-wide outage: 2 of 2 sessions dropped within 60s; last: line one"
                            .into()
                },
                Event::Released {
                    tenants: vec![3],
                    reason:
                        "WhatsApp-wide outage: 1 of 1 sessions dropped within 60s; last: line one"
                            .into()
                },
            ]
        );
    }

    #[test]
    fn a_late_driver_decides_what_a_punctual_one_would() {
        let policy = small();
        let base = Instant::now();
        let at = |secs| base + Duration::from_secs(secs);
        let mut d: Detector<u32> = Detector::new();
        for t in 1..=3 {
            d.dropped(at(t.into()), &policy, &t, 10, Some(CLOSED_428));
        }
        // Nobody called on_timeout at 903; a drop at 1000 first releases, then is not held.
        d.dropped(at(1000), &policy, &4, 10, Some(CLOSED_428));
        let events: Vec<_> = std::iter::from_fn(|| d.poll_event()).collect();
        assert!(
            matches!(&events[..], [Event::Began { .. }, Event::Released { tenants, .. }] if tenants == &[1, 2, 3])
        );
        assert_eq!(d.held_until(&policy, &4), None);
        // A clock that runs backwards is taken as not moving.
        d.recovered(at(10), &policy, &1);
        assert_eq!(d.poll_event(), None);
    }

    #[test]
    fn reasons_are_cleaned_and_cut_and_connecting_never_replaces_a_close() {
        // Only `connecting`: "session reconnecting".
        let sim = check(
            &[
                (0.0, Ev::DropWith(1, None)),
                (1.0, Ev::DropWith(2, None)),
                (2.0, Ev::DropWith(3, Some("   "))),
            ],
            &[(2.0, "began 3 of 10"), (902.0, "released [1, 2, 3]")],
        );
        assert!(sim.released_reasons()[0].ends_with("; last: session reconnecting"));
        // A reason from drops that left the window is not the storm's.
        let sim = check(
            &[
                (0.0, Ev::DropWith(1, Some("old"))),
                (100.0, Ev::DropWith(2, None)),
                (101.0, Ev::DropWith(3, None)),
                (102.0, Ev::DropWith(4, None)),
            ],
            &[(102.0, "began 3 of 10"), (1002.0, "released [2, 3, 4]")],
        );
        assert!(sim.released_reasons()[0].ends_with("; last: session reconnecting"));
        // Control characters become spaces; a huge text is cut.
        let long: &'static str = Box::leak(format!("x\ny{}", "é".repeat(10_000)).into_boxed_str());
        let sim = check(
            &concat(&[drops(0.0, [1, 2]), vec![(2.0, Ev::DropWith(3, Some(long)))]]),
            &[(2.0, "began 3 of 10"), (902.0, "released [1, 2, 3]")],
        );
        let last = sim.released_reasons()[0]
            .split("; last: ")
            .nth(1)
            .unwrap()
            .to_string();
        assert!(last.starts_with("x yé"));
        assert_eq!(last.chars().count(), MAX_REASON_CHARS + 1);
        assert!(last.ends_with('…'));
    }

    #[test]
    fn windows_read_as_configured() {
        let cases = [
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(150), "150s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(3600), "60m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1500ms"),
        ];
        for (window, want) in cases {
            assert_eq!(window_text(window), want);
        }
    }

    #[test]
    fn the_spec_example_at_fleet_scale() {
        // 10,000 linked tenants under the default policy; 8,123 drop with 428 within 60 s.
        let policy = StormPolicy::default();
        let base = Instant::now();
        let ids: Vec<Arc<str>> = (0..10_000)
            .map(|i| Arc::from(format!("business_{i}")))
            .collect();
        let mut d: Detector = Detector::new();
        for (i, id) in ids.iter().take(8123).enumerate() {
            let at = base + Duration::from_millis(i as u64 * 7);
            d.dropped(at, &policy, id, 10_000, Some(CLOSED_428));
        }
        let began = d.poll_event();
        // 20% of 10,000: the 2,000th drop begins it, at 1999 * 7 ms.
        assert!(
            matches!(&began, Some(Event::Began { members: 2000, linked: 10_000, since, .. })
                if *since == base + Duration::from_millis(1999 * 7)),
            "{began:?}"
        );
        assert_eq!(d.poll_event(), None);
        let since = base + Duration::from_millis(1999 * 7);
        assert_eq!(d.next_deadline(&policy), Some(since + DEFAULT_HOLD));
        assert_eq!(
            d.held_until(&policy, &ids[8122]),
            Some(since + DEFAULT_HOLD)
        );
        assert_eq!(d.held_until(&policy, &ids[8123]), None);
        d.on_timeout(since + DEFAULT_HOLD, &policy);
        match d.poll_event() {
            Some(Event::Released { tenants, reason }) => {
                assert_eq!(tenants.len(), 8123);
                assert!(tenants.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(
                    &*reason,
                    "WhatsApp-wide outage: 8123 of 10000 sessions dropped within 60s; last: Connection Closed (code 428)"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.poll_event(), None);
    }

    #[test]
    fn the_window_stays_bounded_however_fast_a_tenant_flaps() {
        let policy = StormPolicy {
            window: Duration::from_secs(3600),
            ..small()
        };
        let base = Instant::now();
        let mut d: Detector<u32> = Detector::new();
        d.dropped(base, &policy, &1, 10, None);
        for i in 0..100_000u64 {
            let now = base + Duration::from_millis(i);
            d.dropped(now, &policy, &2, 10, None);
            d.recovered(now, &policy, &2);
            // Swept whenever a drop makes it longer than twice the window plus 32; the recovery
            // after it can shrink the window by one.
            assert!(
                d.drops.len() <= 2 * (d.recent.len() + 1) + 32,
                "{}",
                d.drops.len()
            );
        }
        assert_eq!(d.recent.len(), 1);
        assert_eq!(d.poll_event(), None);
    }

    #[test]
    fn a_storm_stays_bounded_under_removal_churn() {
        let policy = small();
        let base = Instant::now();
        let mut d: Detector<u32> = Detector::new();
        for t in 0..3 {
            d.dropped(base, &policy, &t, 10, None);
        }
        // A tenant removed and added again by reloads, dropping each time.
        for i in 0..10_000u64 {
            let now = base + Duration::from_millis(i);
            d.dropped(now, &policy, &7, 10, None);
            d.removed(now, &policy, &7);
            let storm = d.storms.back().expect("the storm goes on");
            assert!(storm.tenants.len() <= 2 * storm.members + 17);
        }
        let view = d.view(&policy).expect("a storm");
        assert_eq!((view.members, view.still_down), (3, 3));
    }

    #[test]
    fn absurd_policies_and_clocks_do_not_panic() {
        let huge = Duration::from_secs(u64::MAX / 4);
        let policies = [
            StormPolicy {
                fraction: f64::NAN,
                ..small()
            },
            StormPolicy {
                fraction: f64::INFINITY,
                ..small()
            },
            StormPolicy {
                fraction: 1e-9,
                min_tenants: 0,
                window: Duration::ZERO,
                hold: Duration::ZERO,
            },
            StormPolicy {
                window: huge,
                hold: huge,
                ..small()
            },
        ];
        for policy in policies {
            let mut sim = Sim::new(policy.clone());
            let events: Vec<(f64, Ev)> = (0..200u32)
                .map(|i| {
                    let t = i % 7;
                    let ev = match i % 5 {
                        0 | 1 => Ev::Drop(t),
                        2 => Ev::Up(t),
                        3 => Ev::Linked((i % 4) as usize),
                        _ => Ev::Remove(t),
                    };
                    (f64::from(i / 3), ev)
                })
                .collect();
            sim.run(&events);
            // Backwards in time.
            let back = sim.at(1.0);
            sim.d.dropped(back, &policy, &1, 0, Some("\u{0}"));
            sim.d.recovered(back, &policy, &1);
            sim.finish();
        }
        // A zero hold releases at the begin; a hold beyond the clock's range never ends.
        let zero = StormPolicy {
            hold: Duration::ZERO,
            ..small()
        };
        check_with(
            zero,
            &drops(0.0, [1, 2, 3]),
            &[(2.0, "began 3 of 10"), (2.0, "released [1, 2, 3]")],
        );
        let forever = StormPolicy {
            hold: huge,
            ..small()
        };
        let sim = check_with(forever, &drops(0.0, [1, 2, 3]), &[(2.0, "began 3 of 10")]);
        assert!(sim.held_until(1).is_some());
    }
}
