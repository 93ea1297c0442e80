//! The outbox: what each tenant owes the backend, and when to send it (SPEC section 2).
//!
//! # Model
//!
//! Pure, like the debouncer: no I/O, no clock. The async driver (`deliver`) feeds it decided
//! transitions, webhook outcomes, the time and the journal's progress, and drains three kinds
//! of output: [`Job`]s to send ([`Outbox::poll_job`]), [`Persist`] records for the journal
//! writer ([`Outbox::poll_persist`]), and its next deadline ([`Outbox::next_deadline`]).
//!
//! One [`Slot`] per tenant holds the delivery half of its stored record: what the backend last
//! acknowledged (`reported`) and the transition still owed to it (`owed`), plus bookkeeping that
//! is not persisted (attempts, backoff, the request in flight).
//!
//! The rules:
//! - **One request per tenant in flight**, so a tenant's transitions arrive in order.
//! - **A newer transition supersedes a queued one.** If the newest state equals what the backend
//!   already has, nothing is sent (checked again just before sending, since the request in flight
//!   when it was decided may have failed). "Already has" means known to have: once a request
//!   went unanswered after it may have reached the backend (a timeout, a connection lost
//!   mid-request), or a transition still owed was restored at start (it may have been delivered
//!   just before a kill -9, its acknowledgement not yet written), the backend's state is unsure
//!   until a call is acknowledged, and the newest state is sent even when it equals `reported`
//!   (the backend is idempotent; a missed call would leave the business with a false bell).
//! - **Durable before sent.** Every change of a slot's record becomes a [`Persist`] with a sequence
//!   number; an owed transition is sent only once the journal writer has written (or tried to
//!   write and reported itself degraded) the line that holds it.
//! - **Nothing owed is dropped** except on a 400/422 (the backend refused that payload).
//!   Connection errors, timeouts, 408, 429 and 5xx are retried for ever with full-jitter backoff
//!   (1 s to 5 min) that `Retry-After` can only lengthen, and that no reload shortens (unless it
//!   changes the webhook URL); 401/403/404 are configuration faults, retried every 30 s and at
//!   once after a reload.
//! - **Lifecycle.** A slot of a tenant that is no longer configured (removed by a reload, or found
//!   in the state file at start) still delivers a transition it owes (it was true), and is then
//!   deleted, its record with it. A tenant configured again is configured again: if its old
//!   slot still exists, its history (what the backend has) is kept, so re-adding neither loses
//!   nor repeats a call.
//! - **Readiness heals**: a configuration fault or a failing backend clears as soon as its cause is
//!   gone: an answer that is not that fault, or nothing owed any more.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::debounce::Status;
use crate::store::{self, Delivery, Owed, Reported};
use crate::webhook::{self, Outcome};
use crate::{Now, TenantId};

/// A backend failing for this long makes the sidecar not ready: brief outages are retried
/// quietly, a long one is worth an orchestrator's attention.
pub const BACKEND_UNREACHABLE_UNREADY: Duration = Duration::from_secs(300);

/// One tenant's delivery state.
#[derive(Debug, Default)]
struct Slot {
    /// What the backend last acknowledged with a 2xx.
    reported: Option<Reported>,
    /// The transition still owed to the backend.
    owed: Option<Owed>,
    /// The sequence number of the journal line holding `owed`: sent once the journal got it.
    owed_seq: u64,
    /// The request in flight, if any.
    sending: Option<Sending>,
    /// Attempts at the owed transition since it was decided.
    attempts: u32,
    /// The backend may have a state other than `reported`: a request since the last 2xx may
    /// have been applied unanswered, or the owed transition restored at start may have been
    /// delivered before the stop. Supersession back to `reported` then still sends.
    unsure: bool,
    /// Not before this instant (backoff, Retry-After, configuration-fault pause).
    not_before: Option<Instant>,
    /// `not_before` is a configuration-fault pause (401, 403, 404), which a reload ends: the
    /// fix may be in it. A backoff or a `Retry-After` is the backend's to end, never a reload's.
    fault_pause: bool,
    /// Until when the backend's last `Retry-After` (capped at 5 min) asked for no call for this
    /// tenant: a new transition waits for it too, not only a retry.
    asked_until: Option<Instant>,
    last_error: Option<String>,
    /// False once the tenant is no longer configured: it delivers what it owes, then goes.
    configured: bool,
    /// In the ready queue.
    queued: bool,
    /// When the owed transition was decided (or restored), for latency and the oldest-owed age.
    decided: Option<Instant>,
    /// During the shutdown flush: still entitled to its one more try.
    flush_try: bool,
}

impl Slot {
    /// The backend is known to have `status`: it acknowledged it last, and nothing sent since
    /// may have changed that.
    fn backend_has(&self, status: Status) -> bool {
        !self.unsure && self.reported.as_ref().map(|r| r.status) == Some(status)
    }
}

#[derive(Debug)]
struct Sending {
    key: Box<str>,
}

/// A delivery the driver should send now.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub tenant: TenantId,
    pub status: Status,
    pub reason: Option<String>,
    pub idempotency_key: String,
    pub changed_at: SystemTime,
    /// 1 for the first try of this transition.
    pub attempt: u32,
    /// The config epoch the job was sent under (see [`Outbox::reloaded`]).
    pub epoch: u64,
}

/// A change of one tenant's stored delivery record, for the journal writer, in sequence order.
#[derive(Debug, Clone, PartialEq)]
pub struct Persist {
    pub seq: u64,
    pub tenant: TenantId,
    /// The new delivery half of the record; None deletes the whole record (the tenant is gone).
    pub delivery: Option<Delivery>,
}

/// What one outcome meant, for the driver's metrics and logs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settled {
    /// Delivered: decided-to-acknowledged time of the transition that was owed.
    pub latency: Option<Duration>,
    /// Retried: after this long.
    pub retry_in: Option<Duration>,
    /// A configuration fault just began (or changed): log it.
    pub new_fault: Option<String>,
    /// The record was deleted (a removed tenant finished).
    pub deleted: bool,
}

/// Why the backend side is not ready.
#[derive(Debug, Default, Clone)]
struct Health {
    /// The backend refuses our credentials or our URL, with the fix, and the epoch it was seen in.
    fault: Option<String>,
    /// Since when calls have failed without a usable answer.
    failing_since: Option<Instant>,
    failing_error: Option<String>,
}

/// The delivery side of one tenant, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotView {
    pub configured: bool,
    pub reported: Option<Reported>,
    pub owed: Option<Owed>,
    pub attempts: u32,
    pub in_flight: bool,
    pub not_before: Option<Instant>,
    pub last_error: Option<String>,
}

/// Every tenant's delivery state. See the module documentation.
#[derive(Debug, Default)]
pub struct Outbox {
    slots: HashMap<TenantId, Slot>,
    /// Tenants that may be able to send, in the order they became so.
    ready: VecDeque<TenantId>,
    /// Tenants waiting for their journal line, by sequence number (increasing).
    awaiting: VecDeque<(u64, TenantId)>,
    /// Tenants waiting for a backoff; exactly one entry per slot with a `not_before`.
    waits: BTreeSet<(Instant, TenantId)>,
    in_flight: usize,
    owed: usize,
    next_seq: u64,
    durable: u64,
    persists: VecDeque<Persist>,
    health: Health,
    epoch: u64,
    flushing: bool,
    /// The webhook URL (redacted), named in the readiness reason of a wrong-URL fault.
    webhook_url: String,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox::default()
    }

    /// A stored record found at start. `configured` says whether the tenant is in the config;
    /// an unconfigured one delivers what it owes and is deleted (at once if it owes nothing).
    pub fn restore(&mut self, now: Now, tenant: &TenantId, delivery: Delivery, configured: bool) {
        let owes = delivery.owed.is_some();
        let slot = Slot {
            reported: delivery.reported,
            owed: delivery.owed,
            // Whether it was sent, even acknowledged, before the stop is not known.
            unsure: owes,
            configured,
            decided: owes.then_some(now.mono),
            ..Slot::default()
        };
        self.slots.insert(tenant.clone(), slot);
        if owes {
            self.owed += 1;
            self.enqueue(tenant);
        } else if !configured {
            self.delete(tenant);
        }
    }

    /// The webhook URL to name when the backend answers that it is wrong.
    pub fn set_webhook_url(&mut self, url: &str) {
        self.webhook_url = url.to_string();
    }

    /// The tenant is configured (at start, or added by a reload).
    pub fn added(&mut self, tenant: &TenantId) {
        self.slots.entry(tenant.clone()).or_default().configured = true;
    }

    /// The tenant is no longer configured: it keeps what it owes until delivered, then goes.
    pub fn removed(&mut self, tenant: &TenantId) {
        let Some(slot) = self.slots.get_mut(tenant) else {
            return;
        };
        slot.configured = false;
        if slot.owed.is_none() && slot.sending.is_none() {
            self.delete(tenant);
        }
    }

    /// A transition decided by the tenant's debouncer, with a fresh idempotency key.
    pub fn decided(&mut self, now: Now, tenant: &TenantId, owed: Owed) {
        // Only a configured tenant's debouncer decides anything.
        let slot = self.slots.entry(tenant.clone()).or_insert_with(|| Slot {
            configured: true,
            ..Slot::default()
        });
        if slot.sending.is_none() && slot.backend_has(owed.status) {
            // The newest state is what the backend already has: nothing to send, and any queued
            // opposite transition is void.
            if slot.owed.take().is_some() {
                self.owed -= 1;
                Self::clear_wait(&mut self.waits, tenant, slot);
                self.persist(tenant);
                self.nothing_owed_heals();
            }
            return;
        }
        // The status it already owes, decided again: a newer reason (a logout during a drop), or
        // a tenant re-added by a reload while it owed it (its debouncer new). The newest goes,
        // but after the backoff the backend earned: a reload must not make a failing backend's
        // retries come at once.
        let again = slot.owed.as_ref().is_some_and(|o| o.status == owed.status);
        if slot.owed.is_none() {
            self.owed += 1;
        }
        slot.owed = Some(owed);
        slot.decided = Some(now.mono);
        if !again {
            slot.attempts = 0;
            // A superseded transition's backoff does not apply to the new one, which is no
            // retry; but no call goes while the backend's own Retry-After runs.
            Self::clear_wait(&mut self.waits, tenant, slot);
            if let Some(until) = slot.asked_until.filter(|until| *until > now.mono) {
                Self::set_wait(&mut self.waits, tenant, slot, until);
            }
        }
        let seq = self.persist(tenant);
        self.slots.get_mut(tenant).expect("just inserted").owed_seq = seq;
        self.awaiting.push_back((seq, tenant.clone()));
        self.journal_written(self.durable);
    }

    /// The journal writer has written every line up to `seq` (or reported itself degraded).
    pub fn journal_written(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
        while self
            .awaiting
            .front()
            .is_some_and(|(s, _)| *s <= self.durable)
        {
            let (_, tenant) = self.awaiting.pop_front().expect("checked");
            self.enqueue(&tenant);
        }
    }

    /// The highest journal sequence number a decided transition waits for, if any.
    pub fn awaiting_journal(&self) -> Option<u64> {
        self.awaiting.back().map(|(seq, _)| *seq)
    }

    /// The next request to start now, if the in-flight cap allows one.
    pub fn poll_job(&mut self, now: Now, cap: usize) -> Option<Job> {
        while self.in_flight < cap {
            let tenant = self.ready.pop_front()?;
            let Some(slot) = self.slots.get_mut(&tenant) else {
                continue;
            };
            slot.queued = false;
            let waiting = if self.flushing {
                // The flush gives each owed delivery its one try at once, backoff or not.
                !slot.flush_try
            } else {
                slot.not_before.is_some_and(|at| at > now.mono)
            };
            if slot.sending.is_some() || waiting || slot.owed_seq > self.durable {
                // Its backoff, its journal line or its request in flight requeues it.
                continue;
            }
            let Some(owed) = &slot.owed else {
                continue;
            };
            if slot.backend_has(owed.status) {
                // Superseded back to what the backend has while a request was in flight.
                slot.owed = None;
                self.owed -= 1;
                self.persist(&tenant);
                self.after_settle(&tenant);
                continue;
            }
            slot.flush_try = false;
            slot.attempts += 1;
            slot.sending = Some(Sending {
                key: owed.idempotency_key.as_str().into(),
            });
            self.in_flight += 1;
            return Some(Job {
                tenant,
                status: owed.status,
                reason: owed.reason.clone(),
                idempotency_key: owed.idempotency_key.clone(),
                changed_at: store::system_time(owed.changed_at_ms),
                attempt: slot.attempts,
                epoch: self.epoch,
            });
        }
        None
    }

    /// Records what became of a job. `unit` is a random draw in [0, 1) for the backoff jitter.
    pub fn on_outcome(&mut self, now: Now, job: &Job, outcome: &Outcome, unit: f64) -> Settled {
        let mut settled = Settled::default();
        let Some(slot) = self.slots.get_mut(&job.tenant) else {
            return settled;
        };
        if slot
            .sending
            .as_ref()
            .is_none_or(|s| *s.key != *job.idempotency_key)
        {
            // Not the request this slot has in flight: nothing to settle.
            return settled;
        }
        slot.sending = None;
        self.in_flight -= 1;
        let current = slot
            .owed
            .as_ref()
            .map(|o| o.idempotency_key == job.idempotency_key);
        match outcome {
            Outcome::Delivered { .. } => {
                if current == Some(true) {
                    settled.latency = slot.decided.map(|d| now.mono.saturating_duration_since(d));
                }
                slot.reported = Some(Reported {
                    status: job.status,
                    reason: job.reason.clone(),
                    at_ms: store::unix_ms(now.wall),
                });
                slot.attempts = 0;
                slot.last_error = None;
                slot.unsure = false;
                slot.asked_until = None;
                let owed_now = slot.owed.as_ref().map(|o| o.status);
                if current == Some(true) || owed_now == Some(job.status) {
                    // Delivered, or superseded by a transition back to what was just delivered.
                    slot.owed = None;
                    self.owed -= 1;
                }
                self.persist(&job.tenant);
                self.answered();
            }
            Outcome::Retry {
                after,
                error,
                status,
                maybe_applied,
            } => {
                slot.unsure |= *maybe_applied;
                let asked = after.unwrap_or_default().min(webhook::RETRY_CAP);
                slot.asked_until = (!asked.is_zero()).then_some(now.mono + asked);
                let wait = retry_wait(*after, job.attempt, unit);
                settled.retry_in = Some(wait);
                slot.last_error = Some(error.clone());
                Self::set_wait(&mut self.waits, &job.tenant, slot, now.mono + wait);
                if status.is_some() {
                    // An answer, even a failing one, says our credentials and URL are fine.
                    self.health.fault = None;
                }
                let health = &mut self.health;
                health.failing_since.get_or_insert(now.mono);
                health.failing_error = Some(error.clone());
            }
            Outcome::Credentials { status } | Outcome::WrongUrl { status } => {
                // A fault answered to a request sent before a reload says nothing about the new
                // config: try again at once rather than in 30 s.
                let at = if job.epoch == self.epoch {
                    now.mono + webhook::CONFIG_FAULT_RETRY
                } else {
                    now.mono
                };
                let (fault, error) = if matches!(outcome, Outcome::Credentials { .. }) {
                    (
                        format!("backend answered {status} to X-INTERNAL-SECRET: make INTERNAL_SHARED_SECRET (or backend.secret_file) match the backend's shared secret, then reload (SIGHUP)"),
                        format!("backend refused the credentials ({status})"),
                    )
                } else {
                    (
                        format!("backend answered {status} for POST {}: check backend.url (or BACKEND_INTERNAL_URL) and backend.path, then reload (SIGHUP)", self.webhook_url),
                        format!("backend answered {status}: wrong webhook URL"),
                    )
                };
                slot.last_error = Some(error);
                Self::set_wait(&mut self.waits, &job.tenant, slot, at);
                slot.fault_pause = true;
                if self.health.fault.as_deref() != Some(fault.as_str()) {
                    settled.new_fault = Some(fault.clone());
                }
                self.health.fault = Some(fault);
                // The backend answered: it is reachable.
                self.health.failing_since = None;
                self.health.failing_error = None;
            }
            Outcome::Refused { status, body } => {
                slot.last_error = Some(format!("refused by the backend ({status}): {body}"));
                slot.attempts = 0;
                if current == Some(true) {
                    slot.owed = None;
                    self.owed -= 1;
                    self.persist(&job.tenant);
                }
                self.answered();
            }
        }
        settled.deleted = self.after_settle(&job.tenant);
        settled
    }

    /// Fires due backoffs.
    pub fn on_timeout(&mut self, now: Instant) {
        while let Some((at, tenant)) = self.waits.first().cloned() {
            if at > now {
                break;
            }
            self.waits.pop_first();
            if let Some(slot) = self.slots.get_mut(&tenant) {
                slot.not_before = None;
            }
            self.enqueue(&tenant);
        }
    }

    /// The earliest backoff to wait for, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waits.first().map(|(at, _)| *at)
    }

    /// The next record for the journal writer, in sequence order.
    pub fn poll_persist(&mut self) -> Option<Persist> {
        self.persists.pop_front()
    }

    /// A reload happened: answers to requests sent before it say nothing about the new config.
    /// What a configuration fault paused is tried at once (the credentials or the URL may have
    /// been fixed), and everything owed when the webhook URL changed (the new backend asked for
    /// no wait). A backoff or `Retry-After` the same backend asked for still holds (SPEC 2 rev
    /// 12): a reload, however often, never makes the sidecar hammer a backend that is failing.
    pub fn reloaded(&mut self, webhook_url: &str) {
        self.epoch += 1;
        if self.webhook_url != webhook_url {
            self.set_webhook_url(webhook_url);
            self.retry_now(|_| true);
        } else {
            self.retry_now(|slot| slot.fault_pause);
        }
    }

    /// The shutdown flush begins: every owed delivery gets exactly one more try, at once (a
    /// request in flight now gets its try after it, if it leaves the tenant still owing).
    pub fn begin_flush(&mut self) {
        self.flushing = true;
        for slot in self.slots.values_mut() {
            slot.flush_try = slot.owed.is_some();
        }
        self.retry_now(|_| true);
    }

    /// Requests in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Tenants owing a delivery.
    pub fn owed(&self) -> usize {
        self.owed
    }

    /// How long the oldest owed delivery has waited since it was decided (or restored).
    pub fn oldest_owed(&self, now: Instant) -> Option<Duration> {
        self.slots
            .values()
            .filter(|s| s.owed.is_some())
            .filter_map(|s| s.decided)
            .min()
            .map(|d| now.saturating_duration_since(d))
    }

    /// Why the backend side is not ready; empty when it is.
    pub fn not_ready_reasons(&self, now: Instant) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(fault) = &self.health.fault {
            reasons.push(fault.clone());
        }
        if let Some(since) = self.health.failing_since {
            let failing = now.saturating_duration_since(since);
            if failing >= BACKEND_UNREACHABLE_UNREADY {
                reasons.push(format!(
                    "backend unreachable for {}s: {}",
                    failing.as_secs(),
                    self.health
                        .failing_error
                        .as_deref()
                        .unwrap_or("unknown error")
                ));
            }
        }
        reasons
    }

    /// One tenant's delivery state.
    pub fn view(&self, tenant: &str) -> Option<SlotView> {
        self.slots.get(tenant).map(|s| SlotView {
            configured: s.configured,
            reported: s.reported.clone(),
            owed: s.owed.clone(),
            attempts: s.attempts,
            in_flight: s.sending.is_some(),
            not_before: s.not_before,
            last_error: s.last_error.clone(),
        })
    }

    /// Tenants no longer configured that still owe a delivery.
    pub fn unconfigured(&self) -> impl Iterator<Item = &TenantId> {
        self.slots
            .iter()
            .filter(|(_, s)| !s.configured)
            .map(|(t, _)| t)
    }

    /// Tries at once every owed delivery whose slot `pick` chooses, whatever it waits for.
    fn retry_now(&mut self, pick: impl Fn(&Slot) -> bool) {
        let chosen: Vec<TenantId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.owed.is_some() && pick(s))
            .map(|(t, _)| t.clone())
            .collect();
        for tenant in chosen {
            let slot = self.slots.get_mut(&tenant).expect("listed");
            Self::clear_wait(&mut self.waits, &tenant, slot);
            slot.asked_until = None;
            self.enqueue(&tenant);
        }
    }

    /// After a request settled: requeue what is still owed, delete a finished removed tenant.
    /// Returns whether the slot was deleted.
    fn after_settle(&mut self, tenant: &TenantId) -> bool {
        let Some(slot) = self.slots.get(tenant) else {
            return false;
        };
        if slot.owed.is_some() {
            let may_go = if self.flushing {
                slot.flush_try
            } else {
                slot.not_before.is_none()
            };
            if may_go {
                self.enqueue(tenant);
            }
            return false;
        }
        let finished = !slot.configured && slot.sending.is_none();
        self.nothing_owed_heals();
        if finished {
            self.delete(tenant);
            return true;
        }
        false
    }

    /// An answer from the backend that is neither a failure nor a configuration fault.
    fn answered(&mut self) {
        self.health = Health::default();
    }

    /// With nothing owed, no reason about delivering can stand.
    fn nothing_owed_heals(&mut self) {
        if self.owed == 0 {
            self.health = Health::default();
        }
    }

    fn enqueue(&mut self, tenant: &TenantId) {
        if let Some(slot) = self.slots.get_mut(tenant) {
            if !slot.queued && slot.owed.is_some() {
                slot.queued = true;
                self.ready.push_back(tenant.clone());
            }
        }
    }

    fn delete(&mut self, tenant: &TenantId) {
        if let Some(slot) = self.slots.remove(tenant) {
            if let Some(at) = slot.not_before {
                self.waits.remove(&(at, tenant.clone()));
            }
        }
        self.next_seq += 1;
        self.persists.push_back(Persist {
            seq: self.next_seq,
            tenant: tenant.clone(),
            delivery: None,
        });
    }

    /// Queues the slot's current record for the journal; returns its sequence number.
    fn persist(&mut self, tenant: &TenantId) -> u64 {
        let slot = &self.slots[tenant];
        self.next_seq += 1;
        self.persists.push_back(Persist {
            seq: self.next_seq,
            tenant: tenant.clone(),
            delivery: Some(Delivery {
                reported: slot.reported.clone(),
                owed: slot.owed.clone(),
            }),
        });
        self.next_seq
    }

    fn set_wait(
        waits: &mut BTreeSet<(Instant, TenantId)>,
        tenant: &TenantId,
        slot: &mut Slot,
        at: Instant,
    ) {
        Self::clear_wait(waits, tenant, slot);
        slot.not_before = Some(at);
        waits.insert((at, tenant.clone()));
    }

    fn clear_wait(waits: &mut BTreeSet<(Instant, TenantId)>, tenant: &TenantId, slot: &mut Slot) {
        slot.fault_pause = false;
        if let Some(at) = slot.not_before.take() {
            waits.remove(&(at, tenant.clone()));
        }
    }
}

/// The wait before retrying a failed attempt (SPEC 2 rev 12): the full-jitter backoff, which a
/// `Retry-After` can only lengthen (capped at 5 min), and never less than 1 s.
pub fn retry_wait(retry_after: Option<Duration>, attempt: u32, unit: f64) -> Duration {
    let backoff = webhook::full_jitter(
        attempt.saturating_sub(1),
        webhook::RETRY_BASE,
        webhook::RETRY_CAP,
        unit,
    );
    let asked = retry_after.unwrap_or_default().min(webhook::RETRY_CAP);
    backoff.max(asked).max(webhook::RETRY_BASE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Record, MAX_UNIX_MS};
    use std::time::UNIX_EPOCH;

    const SECOND: Duration = Duration::from_secs(1);

    /// A hand-moved clock.
    struct Clock {
        start: Instant,
        at: Duration,
    }

    impl Clock {
        fn new() -> Self {
            Clock {
                start: Instant::now(),
                at: Duration::ZERO,
            }
        }
        fn now(&self) -> Now {
            Now {
                mono: self.start + self.at,
                wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000) + self.at,
            }
        }
        fn advance(&mut self, by: Duration) -> Now {
            self.at += by;
            self.now()
        }
    }

    fn t(id: &str) -> TenantId {
        id.into()
    }

    fn owed(status: Status, key: &str) -> Owed {
        Owed {
            status,
            reason: (status == Status::Disconnected).then(|| "logged out (code 401)".into()),
            changed_at_ms: 1,
            idempotency_key: key.into(),
        }
    }

    /// Drains the persists and marks them written, as the journal writer would.
    fn write(outbox: &mut Outbox) -> Vec<Persist> {
        let persists: Vec<Persist> = std::iter::from_fn(|| outbox.poll_persist()).collect();
        if let Some(last) = persists.last() {
            outbox.journal_written(last.seq);
        }
        persists
    }

    fn jobs(outbox: &mut Outbox, now: Now, cap: usize) -> Vec<Job> {
        std::iter::from_fn(|| outbox.poll_job(now, cap)).collect()
    }

    fn ok() -> Outcome {
        Outcome::Delivered { status: 200 }
    }

    fn retry(after: Option<Duration>) -> Outcome {
        Outcome::Retry {
            after,
            error: "backend answered 503".into(),
            status: Some(503),
            maybe_applied: false,
        }
    }

    #[test]
    fn a_decided_transition_is_sent_once_its_journal_line_is_written() {
        let clock = Clock::new();
        let mut o = Outbox::new();
        o.added(&t("b1"));
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k1"));
        assert_eq!(
            o.poll_job(clock.now(), 16),
            None,
            "not before it is durable"
        );
        let persists = write(&mut o);
        assert_eq!(persists.len(), 1);
        assert_eq!(
            persists[0]
                .delivery
                .as_ref()
                .unwrap()
                .owed
                .as_ref()
                .unwrap()
                .idempotency_key,
            "k1"
        );
        let job = o.poll_job(clock.now(), 16).expect("durable: sent");
        assert_eq!(
            (job.status, job.idempotency_key.as_str(), job.attempt),
            (Status::Connected, "k1", 1)
        );
        assert_eq!(o.poll_job(clock.now(), 16), None, "one request per tenant");
        let settled = o.on_outcome(clock.now(), &job, &ok(), 0.5);
        assert_eq!(settled.latency, Some(Duration::ZERO));
        let persists = write(&mut o);
        let delivered = persists[0].delivery.as_ref().unwrap();
        assert_eq!(delivered.owed, None);
        assert_eq!(
            delivered.reported.as_ref().unwrap().status,
            Status::Connected
        );
        assert_eq!(o.owed(), 0);
        assert_eq!(o.poll_job(clock.now(), 16), None);
    }

    #[test]
    fn the_in_flight_cap_holds_and_tenants_go_in_the_order_they_became_ready() {
        let clock = Clock::new();
        let mut o = Outbox::new();
        for id in ["a", "b", "c"] {
            o.decided(clock.now(), &t(id), owed(Status::Connected, id));
        }
        write(&mut o);
        let first = jobs(&mut o, clock.now(), 2);
        assert_eq!(
            first.iter().map(|j| &*j.tenant).collect::<Vec<_>>(),
            ["a", "b"]
        );
        o.on_outcome(clock.now(), &first[0], &ok(), 0.0);
        let next = jobs(&mut o, clock.now(), 2);
        assert_eq!(next.iter().map(|j| &*j.tenant).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn a_newer_transition_supersedes_a_queued_one_and_the_backends_state_voids_it() {
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k1"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(clock.now(), &job, &ok(), 0.0);
        write(&mut o);

        // Down while the backend is down: retried...
        o.decided(
            clock.advance(SECOND),
            &t("b1"),
            owed(Status::Disconnected, "k2"),
        );
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(clock.now(), &job, &retry(None), 0.5);
        // ...then back up before the retry: the newest state is what the backend has.
        o.decided(
            clock.advance(SECOND),
            &t("b1"),
            owed(Status::Connected, "k3"),
        );
        let persists = write(&mut o);
        assert_eq!(
            persists.last().unwrap().delivery.as_ref().unwrap().owed,
            None
        );
        assert_eq!(o.owed(), 0);
        clock.advance(10 * 60 * SECOND);
        o.on_timeout(clock.now().mono);
        assert_eq!(o.poll_job(clock.now(), 16), None, "nothing to send");

        // Down, then down again with a new reason while queued: only the newest goes.
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k4"));
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k5"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        assert_eq!(job.idempotency_key, "k5");
    }

    /// A request that got no answer after it may have reached the backend.
    fn unanswered() -> Outcome {
        Outcome::Retry {
            after: None,
            error: "timeout: no complete answer from the backend within 10s".into(),
            status: None,
            maybe_applied: true,
        }
    }

    /// The keys of the jobs the outbox starts once every backoff has run out; each is then
    /// acknowledged.
    fn sent_later(o: &mut Outbox, clock: &mut Clock) -> Vec<String> {
        o.on_timeout(clock.advance(600 * SECOND).mono);
        write(o);
        let sent = jobs(o, clock.now(), 16);
        for job in &sent {
            o.on_outcome(clock.now(), job, &ok(), 0.0);
        }
        sent.iter().map(|job| job.idempotency_key.clone()).collect()
    }

    #[test]
    fn a_return_to_the_reported_state_is_sent_while_the_backends_state_is_unsure() {
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k1"));
        assert_eq!(sent_later(&mut o, &mut clock), ["k1"]);
        let refused = Outcome::Retry {
            after: None,
            error: "cannot connect to the backend: connection refused".into(),
            status: None,
            maybe_applied: false,
        };
        // A connected tenant drops, the call gets this outcome, and the tenant is back before
        // the retry (or, `in_flight`, while the call is still out): is the return sent?
        let cases = [
            ("unanswered", unanswered(), false, true),
            ("unanswered, back while in flight", unanswered(), true, true),
            (
                "answered 503: the backend kept connected",
                retry(None),
                false,
                false,
            ),
            ("never connected", refused, false, false),
        ];
        for (n, (case, outcome, in_flight, sent)) in cases.into_iter().enumerate() {
            let (down, up) = (format!("down{n}"), format!("up{n}"));
            o.decided(
                clock.advance(SECOND),
                &t("b1"),
                owed(Status::Disconnected, &down),
            );
            write(&mut o);
            let job = o.poll_job(clock.now(), 16).unwrap();
            if !in_flight {
                o.on_outcome(clock.now(), &job, &outcome, 0.0);
            }
            o.decided(
                clock.advance(SECOND),
                &t("b1"),
                owed(Status::Connected, &up),
            );
            if in_flight {
                o.on_outcome(clock.now(), &job, &outcome, 0.0);
            }
            let want = if sent { vec![up] } else { vec![] };
            assert_eq!(sent_later(&mut o, &mut clock), want, "{case}");
            assert_eq!(o.owed(), 0, "{case}");
        }
    }

    /// b1 reported connected, then its drop ("k2") sent and left unanswered: the backend may
    /// have it or not.
    fn a_drop_left_unanswered(clock: &mut Clock) -> Outbox {
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k1"));
        assert_eq!(sent_later(&mut o, clock), ["k1"]);
        o.decided(
            clock.advance(SECOND),
            &t("b1"),
            owed(Status::Disconnected, "k2"),
        );
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(clock.now(), &job, &unanswered(), 0.0);
        o
    }

    #[test]
    fn an_unsure_tenant_removed_while_it_owes_the_return_delivers_it_then_goes() {
        let mut clock = Clock::new();
        let mut o = a_drop_left_unanswered(&mut clock);
        o.decided(
            clock.advance(SECOND),
            &t("b1"),
            owed(Status::Connected, "k3"),
        );
        // Removed by a reload: the return it owes was true, so it still goes, then the record.
        o.removed(&t("b1"));
        assert_eq!(sent_later(&mut o, &mut clock), ["k3"]);
        assert_eq!(o.view("b1"), None);
        assert_eq!(write(&mut o).last().unwrap().delivery, None);
        // Added again: first-seen, nothing reported, so its first decision is sent.
        o.added(&t("b1"));
        o.decided(
            clock.advance(SECOND),
            &t("b1"),
            owed(Status::Connected, "k4"),
        );
        assert_eq!(sent_later(&mut o, &mut clock), ["k4"]);
    }

    /// Removed while a drop is owed after an unanswered call, then added again by the next
    /// reload: its new debouncer decides the same drop again. The newest goes, after the backoff
    /// the failing backend earned, not at once.
    #[test]
    fn a_tenant_re_added_while_it_owes_a_transition_waits_out_its_backoff() {
        let mut clock = Clock::new();
        let mut o = a_drop_left_unanswered(&mut clock);
        o.removed(&t("b1"));
        o.added(&t("b1"));
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k3"));
        write(&mut o);
        assert_eq!(o.poll_job(clock.now(), 16), None, "still in its backoff");
        assert_eq!(sent_later(&mut o, &mut clock), ["k3"]);
    }

    #[test]
    fn a_transition_owed_at_start_may_have_been_delivered_so_a_return_is_still_sent() {
        // Killed right after the backend acknowledged connected, before that was written: the
        // restart finds connected still owed over a reported disconnected.
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        let record = Record {
            reported: Some(Reported {
                status: Status::Disconnected,
                reason: Some("not linked: waiting for QR code scan".into()),
                at_ms: 1,
            }),
            owed: Some(owed(Status::Connected, "k1")),
            ..Record::default()
        };
        o.restore(clock.now(), &t("b1"), record.delivery(), true);
        // The backend refuses our credentials for now; meanwhile the phone logs out.
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(
            clock.now(),
            &job,
            &Outcome::Credentials { status: 401 },
            0.0,
        );
        o.decided(
            clock.advance(SECOND),
            &t("b1"),
            owed(Status::Disconnected, "k2"),
        );
        assert_eq!(o.owed(), 1, "the backend may have connected");
        let persists = write(&mut o);
        let stored = persists.last().unwrap().delivery.as_ref().unwrap();
        assert_eq!(stored.owed.as_ref().unwrap().idempotency_key, "k2");
        assert_eq!(sent_later(&mut o, &mut clock), ["k2"]);

        // Restored with nothing owed, the reported state is what the backend has.
        let mut o = Outbox::new();
        let record = Record {
            owed: None,
            ..record
        };
        o.restore(clock.now(), &t("b1"), record.delivery(), true);
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k3"));
        assert_eq!(o.owed(), 0);
        assert!(sent_later(&mut o, &mut clock).is_empty());
    }

    #[test]
    fn a_transition_decided_during_a_request_waits_for_it_and_is_judged_after_it() {
        let clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k1"));
        write(&mut o);
        let sent = o.poll_job(clock.now(), 16).unwrap();
        // Decided while k1 is in flight.
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k2"));
        write(&mut o);
        assert_eq!(o.poll_job(clock.now(), 16), None, "in order: after k1");
        o.on_outcome(clock.now(), &sent, &ok(), 0.0);
        let next = o.poll_job(clock.now(), 16).unwrap();
        assert_eq!(next.idempotency_key, "k2");

        // And back to connected while k2 is in flight, which then fails: nothing to send,
        // since the backend still has connected.
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k3"));
        write(&mut o);
        o.on_outcome(clock.now(), &next, &retry(None), 0.0);
        let mut later = Clock {
            at: clock.at + 600 * SECOND,
            ..clock
        };
        o.on_timeout(later.advance(SECOND).mono);
        assert_eq!(o.poll_job(later.now(), 16), None);
        assert_eq!(o.owed(), 0);
    }

    #[test]
    fn retry_after_can_only_lengthen_the_backoff() {
        for attempt in 1..20 {
            for unit in [0.0, 0.3, 0.999] {
                let backoff = webhook::full_jitter(
                    attempt - 1,
                    webhook::RETRY_BASE,
                    webhook::RETRY_CAP,
                    unit,
                );
                for after in [
                    None,
                    Some(Duration::ZERO),
                    Some(SECOND / 2),
                    Some(90 * SECOND),
                    Some(Duration::MAX),
                ] {
                    let wait = retry_wait(after, attempt, unit);
                    assert!(wait >= SECOND, "a 1 s floor: {wait:?}");
                    assert!(wait >= backoff, "never shorter than the backoff");
                    assert!(wait <= webhook::RETRY_CAP, "capped at 5 min: {wait:?}");
                    if let Some(after) = after {
                        assert!(wait >= after.min(webhook::RETRY_CAP));
                    }
                }
            }
        }
        assert_eq!(retry_wait(Some(Duration::ZERO), 1, 0.0), SECOND);
        assert_eq!(retry_wait(Some(90 * SECOND), 1, 0.0), 90 * SECOND);
        assert_eq!(
            retry_wait(Some(86_400 * SECOND), 1, 0.0),
            webhook::RETRY_CAP
        );
    }

    #[test]
    fn a_failed_attempt_waits_and_retries_with_the_same_key() {
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k1"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        let settled = o.on_outcome(clock.now(), &job, &retry(Some(Duration::ZERO)), 0.999);
        let wait = settled.retry_in.unwrap();
        assert!(wait >= SECOND);
        assert_eq!(o.next_deadline(), Some(clock.now().mono + wait));
        o.on_timeout(clock.advance(wait - Duration::from_millis(1)).mono);
        assert_eq!(o.poll_job(clock.now(), 16), None, "not before the backoff");
        o.on_timeout(clock.advance(Duration::from_millis(1)).mono);
        let again = o.poll_job(clock.now(), 16).unwrap();
        assert_eq!((again.idempotency_key.as_str(), again.attempt), ("k1", 2));
    }

    /// A reload that keeps the webhook URL.
    fn reload(o: &mut Outbox) {
        let url = o.webhook_url.clone();
        o.reloaded(&url);
    }

    /// A backend that answered 429 with `Retry-After: 30` (or failed and earned a backoff) is
    /// not called again before that, however many reloads come (the lifecycle probe saw a
    /// retry 10 ms after each SIGHUP); a reload that changes the webhook URL sends at once, as
    /// the new backend asked for no wait.
    #[test]
    fn a_reload_keeps_the_wait_the_backend_asked_for_unless_the_url_changes() {
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        o.set_webhook_url("https://backend/hook");
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k1"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        let asked = retry(Some(30 * SECOND));
        let wait = o
            .on_outcome(clock.now(), &job, &asked, 0.0)
            .retry_in
            .unwrap();
        assert_eq!(wait, 30 * SECOND);
        for _ in 0..3 {
            reload(&mut o);
            o.on_timeout(clock.advance(2 * SECOND).mono);
            assert_eq!(o.poll_job(clock.now(), 16), None, "not before Retry-After");
        }
        o.reloaded("https://other-backend/hook");
        let job = o.poll_job(clock.now(), 16).expect("at once to a new URL");
        assert_eq!((job.idempotency_key.as_str(), job.attempt), ("k1", 2));
    }

    /// A new transition decided while the backend's `Retry-After: 30` runs waits it out too: the
    /// backend asked for no call, whatever its payload (the lifecycle probe saw one 2.5 s after a
    /// 429). It is then sent as its own first attempt. Our own backoff is the old transition's.
    #[test]
    fn a_new_transition_waits_out_the_retry_after_the_backend_asked_for() {
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k1"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(clock.now(), &job, &retry(Some(30 * SECOND)), 0.0);
        o.decided(
            clock.advance(10 * SECOND),
            &t("b1"),
            owed(Status::Connected, "k2"),
        );
        write(&mut o);
        o.on_timeout(clock.now().mono);
        assert_eq!(o.poll_job(clock.now(), 16), None, "inside Retry-After");
        o.on_timeout(clock.advance(20 * SECOND - Duration::from_millis(1)).mono);
        assert_eq!(o.poll_job(clock.now(), 16), None, "inside Retry-After");
        o.on_timeout(clock.advance(Duration::from_millis(1)).mono);
        let job = o.poll_job(clock.now(), 16).expect("once it is over");
        assert_eq!((job.idempotency_key.as_str(), job.attempt), ("k2", 1));

        // The backoff of a failure without Retry-After is the old transition's: the new one,
        // no retry, goes at once.
        o.on_outcome(clock.now(), &job, &retry(None), 0.999);
        assert!(o.next_deadline().is_some(), "k2 backs off");
        o.decided(
            clock.advance(Duration::from_millis(100)),
            &t("b1"),
            owed(Status::Disconnected, "k3"),
        );
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).expect("at once");
        assert_eq!((job.idempotency_key.as_str(), job.attempt), ("k3", 1));
    }

    #[test]
    fn a_credentials_fault_retries_every_30s_or_at_once_after_a_reload_and_heals() {
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Disconnected, "k1"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        let settled = o.on_outcome(
            clock.now(),
            &job,
            &Outcome::Credentials { status: 401 },
            0.0,
        );
        assert!(settled
            .new_fault
            .unwrap()
            .contains("INTERNAL_SHARED_SECRET"));
        assert_eq!(
            o.next_deadline(),
            Some(clock.now().mono + webhook::CONFIG_FAULT_RETRY)
        );
        assert_eq!(o.not_ready_reasons(clock.now().mono).len(), 1);

        // A reload: tried at once.
        reload(&mut o);
        let job = o
            .poll_job(clock.advance(SECOND), 16)
            .expect("at once after a reload");
        // An answer to a request sent before the next reload says nothing about the new config.
        reload(&mut o);
        o.on_outcome(
            clock.now(),
            &job,
            &Outcome::Credentials { status: 401 },
            0.0,
        );
        assert_eq!(o.next_deadline(), Some(clock.now().mono), "retried at once");
        o.on_timeout(clock.now().mono);
        let job = o.poll_job(clock.now(), 16).unwrap();

        // Any answer that is not the fault heals readiness, even a 503.
        o.on_outcome(clock.now(), &job, &retry(None), 0.0);
        assert!(o.not_ready_reasons(clock.now().mono).is_empty());
    }

    #[test]
    fn readiness_heals_when_nothing_is_owed_any_more() {
        let mut clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k1"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(clock.now(), &job, &Outcome::WrongUrl { status: 404 }, 0.0);
        assert!(o.not_ready_reasons(clock.now().mono)[0].contains("backend.path"));
        // The tenant is removed: what it owed is still owed (it was true)...
        o.removed(&t("b1"));
        assert_eq!(o.owed(), 1);
        // ...and a refusal drops it: nothing owed, no reason left.
        o.on_timeout(clock.advance(30 * SECOND).mono);
        let job = o.poll_job(clock.now(), 16).unwrap();
        let settled = o.on_outcome(
            clock.now(),
            &job,
            &Outcome::Refused {
                status: 400,
                body: "no".into(),
            },
            0.0,
        );
        assert!(
            settled.deleted,
            "a removed tenant's record goes once it owes nothing"
        );
        assert!(o.not_ready_reasons(clock.now().mono).is_empty());
        assert_eq!(write(&mut o).last().unwrap().delivery, None);

        // A failing backend is a reason after 5 minutes, gone once nothing is owed.
        o.decided(clock.now(), &t("b2"), owed(Status::Connected, "k2"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(
            clock.now(),
            &job,
            &Outcome::Retry {
                after: None,
                error: "refused".into(),
                status: None,
                maybe_applied: false,
            },
            0.0,
        );
        assert!(o
            .not_ready_reasons(clock.advance(299 * SECOND).mono)
            .is_empty());
        assert!(o.not_ready_reasons(clock.advance(SECOND).mono)[0]
            .starts_with("backend unreachable for 300s"));
        o.decided(clock.now(), &t("b2"), owed(Status::Connected, "k3"));
        o.removed(&t("b2"));
        o.on_timeout(clock.advance(600 * SECOND).mono);
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        o.on_outcome(clock.now(), &job, &ok(), 0.0);
        assert!(o.not_ready_reasons(clock.now().mono).is_empty());
        assert_eq!(o.view("b2"), None);
    }

    #[test]
    fn the_tenant_lifecycle_delivers_what_was_decided_then_forgets() {
        let clock = Clock::new();
        let mut o = Outbox::new();
        // Stored records at start: one configured, one owing but unconfigured, one neither.
        let connected = Record {
            reported: Some(Reported {
                status: Status::Connected,
                reason: None,
                at_ms: 1,
            }),
            ..Record::default()
        };
        o.restore(clock.now(), &t("kept"), connected.delivery(), true);
        o.restore(clock.now(), &t("idle"), connected.delivery(), false);
        let owing = Record {
            owed: Some(owed(Status::Disconnected, "k-old")),
            ..connected.clone()
        };
        o.restore(clock.now(), &t("owing"), owing.delivery(), false);
        let persists = write(&mut o);
        assert_eq!(persists.len(), 1);
        assert_eq!(
            (&*persists[0].tenant, &persists[0].delivery),
            ("idle", &None)
        );
        assert_eq!(
            o.unconfigured().map(|t| t.to_string()).collect::<Vec<_>>(),
            ["owing"]
        );

        // The unconfigured tenant's decided transition is still delivered, with its key...
        let job = o.poll_job(clock.now(), 16).unwrap();
        assert_eq!(
            (&*job.tenant, job.idempotency_key.as_str()),
            ("owing", "k-old")
        );
        // ...and re-adding it while in flight keeps it: no loss, no repeat, no crash.
        o.added(&t("owing"));
        o.decided(
            clock.now(),
            &t("owing"),
            owed(Status::Disconnected, "k-new"),
        );
        o.on_outcome(clock.now(), &job, &ok(), 0.0);
        assert_eq!(
            o.poll_job(clock.now(), 16),
            None,
            "the backend has disconnected already"
        );
        assert!(o.view("owing").unwrap().configured);

        // Removed with nothing owed: gone at once. Added again: first seen.
        o.removed(&t("kept"));
        assert_eq!(o.view("kept"), None);
        let persists = write(&mut o);
        assert!(persists
            .iter()
            .any(|p| &*p.tenant == "kept" && p.delivery.is_none()));
        o.added(&t("kept"));
        o.decided(clock.now(), &t("kept"), owed(Status::Connected, "k-first"));
        write(&mut o);
        assert_eq!(
            o.poll_job(clock.now(), 16).unwrap().idempotency_key,
            "k-first"
        );
    }

    #[test]
    fn the_shutdown_flush_gives_each_owed_delivery_one_more_try() {
        let clock = Clock::new();
        let mut o = Outbox::new();
        for id in ["a", "b"] {
            o.decided(clock.now(), &t(id), owed(Status::Connected, id));
        }
        write(&mut o);
        let a = o.poll_job(clock.now(), 1).unwrap();
        // b waits for the cap; a is in flight when the flush begins.
        o.begin_flush();
        let b = o.poll_job(clock.now(), 2).unwrap();
        assert_eq!(&*b.tenant, "b");
        o.on_outcome(clock.now(), &b, &retry(Some(300 * SECOND)), 0.0);
        assert_eq!(o.poll_job(clock.now(), 2), None, "b had its one try");
        o.on_outcome(clock.now(), &a, &retry(Some(300 * SECOND)), 0.0);
        let again = o
            .poll_job(clock.now(), 2)
            .expect("a's try after its in-flight request");
        assert_eq!(&*again.tenant, "a");
        o.on_outcome(clock.now(), &again, &retry(None), 0.0);
        assert_eq!(o.poll_job(clock.now(), 2), None);
        assert_eq!(o.owed(), 2, "still owed: persisted for the next start");
    }

    #[test]
    fn an_outcome_for_a_request_that_is_not_in_flight_changes_nothing() {
        let clock = Clock::new();
        let mut o = Outbox::new();
        o.decided(clock.now(), &t("b1"), owed(Status::Connected, "k1"));
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        let stale = Job {
            idempotency_key: "other".into(),
            ..job.clone()
        };
        assert_eq!(
            o.on_outcome(clock.now(), &stale, &ok(), 0.0),
            Settled::default()
        );
        assert_eq!(o.in_flight(), 1);
        o.on_outcome(clock.now(), &job, &ok(), 0.0);
        assert_eq!(
            o.on_outcome(clock.now(), &job, &ok(), 0.0),
            Settled::default()
        );
        assert_eq!(o.in_flight(), 0);
        // A stored time past what can be written is clamped, never a panic.
        o.decided(
            clock.now(),
            &t("b2"),
            Owed {
                changed_at_ms: u64::MAX,
                ..owed(Status::Connected, "k2")
            },
        );
        write(&mut o);
        let job = o.poll_job(clock.now(), 16).unwrap();
        assert_eq!(job.changed_at, store::system_time(MAX_UNIX_MS));
    }
}
