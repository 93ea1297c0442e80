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
//! - The storm ends when fewer than half of its members are still down. Its members still down
//!   **stay held until the hold ends**: an outage's sessions come back over a minute or two, and
//!   the moment half of them are back is exactly when the rest are seconds away; releasing them
//!   then would ring the thousands of bells the hold exists to prevent. The hold stays what the
//!   SPEC promises: a drop made during a storm is reported at the latest `hold` after it began.
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
//! - [`Detector::dropped`] on each Up -> Down(transient) change the debouncer sees on an
//!   established link, the changes that count as flaps. The first state a link learns after it
//!   (re)connects is not a drop, so a gateway restart is not a storm. `linked` is the number of
//!   tenants whose links are up now; `reason` the drop's close (`describe`), None for a bare
//!   `connecting`, which never replaces a close. Terminal downs are never fed: they are never held.
//! - [`Detector::recovered`] on every Up observation (idempotent and cheap), so a member that
//!   comes back within the hold is not released.
//! - [`Detector::unlinked`] when a tenant's link goes down, [`Detector::removed`] when it leaves
//!   the config.
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
//! - The Hebrew bell is the backend's: the reason is plain text in the webhook body.
//!
//! # Restarts
//!
//! The hold survives a restart if the registry stores [`Detector::saved`] (with `since` as
//! wall-clock time) and seeds the next process with [`Detector::resume`]. A resumed storm has
//! ended: its held members stay held until their original hold end and are released with their
//! original reason, unless they come back first; the up members, and whether the storm was still
//! in progress, are not carried over. Without it, the held drops are decided by their debouncers
//! again after the restart.
//!
//! # Cost
//!
//! Every call is amortised O(1) (hash maps and queues), except that beginning, ending or
//! releasing a storm is O(members). The window remembers at most two entries per tenant in it
//! (plus a constant), a storm one per member, so memory is bounded by the number of tenants.
//! Outside a storm nothing is allocated once the window's buffers have grown.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Default share of the linked tenants whose transient drops within the window make a storm.
pub const DEFAULT_FRACTION: f64 = 0.2;
/// Default least number of drops for a storm: a handful of tenants is not an outage.
pub const DEFAULT_MIN_TENANTS: usize = 20;
/// Default window in which the drops must fall.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Default hold: how long after a storm began its drops are held before being reported.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(15 * 60);

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
}

/// How many tenants must be down within the window for a storm, with `linked` tenants linked;
/// None when the hold is off (`fraction` 0, negative or not a number).
pub fn threshold(policy: &StormPolicy, linked: usize) -> Option<usize> {
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
    /// Each saved storm resumes as ended, holding its members until `since + hold`; a `since`
    /// after `now` counts as `now`, and a tenant named twice is held once, by the older storm.
    pub fn resume(now: Instant, saved: impl IntoIterator<Item = Saved<T>>) -> Self {
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
        if storm.ended {
            // An ended storm only keeps whom it holds; its count of members stays as it ended.
            self.members.remove(tenant);
            if storm.down == 0 {
                self.storms.remove(i);
            } else {
                compact(storm, &self.members);
            }
        } else {
            member.down = false;
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
            if storm.down == 0 {
                self.storms.remove(i);
            } else {
                compact(storm, &self.members);
            }
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
        self.storms
            .iter()
            .filter(|s| !s.released)
            .map(|s| Saved {
                since: s.since,
                linked: s.linked,
                members: s.members,
                window: s.window,
                last_reason: s.last_reason.clone(),
                held: held(s, &self.members),
            })
            .filter(|s| !s.held.is_empty())
            .collect()
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
            held_until,
        });
        let id = storm.id;
        let members = &mut self.members;
        if held_until.is_none() {
            for tenant in &storm.tenants {
                if members.get(tenant).is_some_and(|m| m.storm == id) {
                    members.remove(tenant);
                }
            }
            self.storms.pop_back();
            return;
        }
        storm.ended = true;
        // From now on the storm only keeps whom it holds.
        storm
            .tenants
            .retain(|tenant| match members.get(tenant).copied() {
                Some(Member {
                    storm: of,
                    down: true,
                }) => of == id,
                Some(Member {
                    storm: of,
                    down: false,
                }) if of == id => {
                    members.remove(tenant);
                    false
                }
                _ => false,
            });
        storm.tenants.sort_unstable();
        storm.tenants.dedup();
    }

    /// Lifts the oldest storm's hold: its members still down are released.
    fn release_front(&mut self) {
        let Some(storm) = self.storms.front_mut() else {
            return;
        };
        let tenants = held(storm, &self.members);
        let reason = outage_reason(storm);
        if storm.ended {
            for tenant in &tenants {
                self.members.remove(tenant);
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
    storm
        .since
        .checked_add(policy.hold)
        .or_else(|| storm.since.checked_add(FOREVER))
        .unwrap_or(storm.since)
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
    let live = if storm.ended {
        storm.down
    } else {
        storm.members
    };
    if storm.tenants.len() <= 2 * live + 16 {
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
    if secs >= 2 * 3600 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs >= 2 * 60 && secs % 60 == 0 {
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
