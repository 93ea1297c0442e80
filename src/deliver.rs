//! The delivery side's I/O: the shared handle to the [`Outbox`] and the dispatcher task that
//! turns its jobs into webhook calls.
//!
//! [`Deliveries`] wraps the pure outbox in a mutex. Every call locks it, runs one outbox method,
//! hands the records it wants persisted to the journal writer (in order, under the lock, so the
//! sequence numbers reach the writer in order) and wakes the dispatcher. Nothing under that lock
//! waits on the disk or the network: the registry calls it while holding a tenant's map shard
//! (lock order: shard, then outbox; the dispatcher never takes a shard).
//!
//! The dispatcher ([`run`]) is one task for the process: it starts what the outbox says may go
//! (at most `backend.max_in_flight`), sleeps until the outbox's next deadline, a webhook answer,
//! or a wake-up (a decision, the journal catching up, a reload), and feeds every outcome back.
//! On shutdown it gives each owed delivery one more try within [`SHUTDOWN_FLUSH`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox::{Job, Outbox, Settled, SlotView};
use crate::store::{Delivery, Owed, Store};
use crate::webhook::{Delivery as Request, Outcome, Webhook};
use crate::{Now, TenantId};

/// How long the shutdown flush may take before what is still owed is persisted for next time.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The webhook client, swapped whole on reload so in-flight requests finish with the old one.
pub type SharedWebhook = Arc<RwLock<Arc<Webhook>>>;

/// The outbox, shared by the registry (decisions, lifecycle), the dispatcher and the admin API.
pub struct Deliveries {
    outbox: Mutex<Outbox>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Wakes the dispatcher; also notified by the journal writer as it catches up.
    wake: Arc<Notify>,
    max_in_flight: AtomicUsize,
}

impl Deliveries {
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        max_in_flight: usize,
    ) -> Self {
        Deliveries {
            outbox: Mutex::new(Outbox::new()),
            store,
            metrics,
            wake,
            max_in_flight: AtomicUsize::new(max_in_flight),
        }
    }

    /// Runs `f` on the outbox, then hands the journal writer what it asks to persist.
    fn with<R>(&self, f: impl FnOnce(&mut Outbox) -> R) -> R {
        let mut outbox = self.outbox.lock().unwrap();
        let result = f(&mut outbox);
        while let Some(p) = outbox.poll_persist() {
            self.store.delivery(p.seq, &p.tenant, p.delivery);
        }
        self.metrics.owed.set(outbox.owed() as i64);
        result
    }

    /// [`Deliveries::with`], then wakes the dispatcher: for changes made from outside it.
    fn change<R>(&self, f: impl FnOnce(&mut Outbox) -> R) -> R {
        let result = self.with(f);
        self.wake.notify_one();
        result
    }

    /// Reads the outbox without changing it.
    fn read<R>(&self, f: impl FnOnce(&Outbox) -> R) -> R {
        f(&self.outbox.lock().unwrap())
    }

    pub fn restore(&self, now: Now, tenant: &TenantId, delivery: Delivery, configured: bool) {
        self.change(|o| o.restore(now, tenant, delivery, configured));
    }

    pub fn added(&self, tenant: &TenantId) {
        self.change(|o| o.added(tenant));
    }

    pub fn removed(&self, tenant: &TenantId) {
        self.change(|o| o.removed(tenant));
    }

    pub fn decided(&self, now: Now, tenant: &TenantId, owed: Owed) {
        self.change(|o| o.decided(now, tenant, owed));
    }

    /// After a reload: the new in-flight cap and webhook URL; see [`Outbox::reloaded`] for what
    /// is tried at once.
    pub fn reloaded(&self, max_in_flight: usize, webhook_url: &str) {
        self.max_in_flight.store(max_in_flight, Ordering::Relaxed);
        self.change(|o| o.reloaded(webhook_url));
    }

    pub fn set_webhook_url(&self, url: &str) {
        self.with(|o| o.set_webhook_url(url));
    }

    pub fn view(&self, tenant: &str) -> Option<SlotView> {
        self.read(|o| o.view(tenant))
    }

    /// Tenants no longer configured that still owe a delivery.
    pub fn unconfigured(&self) -> Vec<TenantId> {
        self.read(|o| o.unconfigured().cloned().collect())
    }

    pub fn owed(&self) -> usize {
        self.read(Outbox::owed)
    }

    pub fn oldest_owed(&self, now: Instant) -> Option<Duration> {
        self.read(|o| o.oldest_owed(now))
    }

    pub fn not_ready_reasons(&self, now: Instant) -> Vec<String> {
        self.read(|o| o.not_ready_reasons(now))
    }
}

/// Runs the dispatcher until `stop` fires, then gives each owed delivery one more try within
/// [`SHUTDOWN_FLUSH`] and returns.
pub async fn run(deliveries: Arc<Deliveries>, webhook: SharedWebhook, stop: CancellationToken) {
    let mut d = Dispatcher {
        deliveries,
        webhook,
        in_flight: JoinSet::new(),
        jobs: HashMap::new(),
        journal_wait: None,
    };
    loop {
        let deadline = d.start_ready();
        if d.wait_for_journal() == Journal::Written {
            // The line was written since `start_ready` looked: send it now, not when the
            // writer's wake-up comes.
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(done) = d.in_flight.join_next_with_id(), if !d.in_flight.is_empty() => {
                d.finished(done);
            }
            _ = async { d.journal_wait.as_mut().expect("checked").await }, if d.journal_wait.is_some() => {
                d.journal_wait = None;
            }
            _ = d.deliveries.wake.notified() => {}
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {}
        }
    }
    d.flush().await;
}

/// Whether the journal line a decided transition waits for is written yet.
#[derive(PartialEq)]
enum Journal {
    /// Written: the dispatcher looks again at once.
    Written,
    /// Not written, or nothing waits: a wake-up (or the blocking wait) will come.
    Waiting,
}

/// How long one wait for the journal writer lasts before the dispatcher looks again.
const JOURNAL_WAIT: Duration = Duration::from_secs(1);

/// An instant no timer will reach, for a `select!` branch that is disabled anyway.
pub fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

struct Dispatcher {
    deliveries: Arc<Deliveries>,
    webhook: SharedWebhook,
    in_flight: JoinSet<Outcome>,
    /// The job of each request in flight, by task id, so even a panicking request settles.
    jobs: HashMap<Id, Job>,
    /// A blocking wait for the journal writer to write what a decided transition needs.
    journal_wait: Option<tokio::task::JoinHandle<u64>>,
}

impl Dispatcher {
    /// Starts every request the outbox allows now; returns its next deadline.
    fn start_ready(&mut self) -> Option<Instant> {
        let now = Now::read();
        let written = self.deliveries.store.written();
        let cap = self.deliveries.max_in_flight.load(Ordering::Relaxed);
        let mut jobs = Vec::new();
        let deadline = self.deliveries.with(|o| {
            o.journal_written(written);
            o.on_timeout(now.mono);
            while let Some(job) = o.poll_job(now, cap) {
                jobs.push(job);
            }
            o.next_deadline()
        });
        for job in jobs {
            self.start(job);
        }
        deadline
    }

    /// When a decided transition waits for its journal line, waits for the writer in a blocking
    /// task (woken the moment the line is written), so it is sent as soon as it is durable.
    fn wait_for_journal(&mut self) -> Journal {
        if self.journal_wait.is_some() {
            return Journal::Waiting;
        }
        let Some(seq) = self.deliveries.read(Outbox::awaiting_journal) else {
            return Journal::Waiting;
        };
        if self.deliveries.store.written() >= seq {
            return Journal::Written;
        }
        let store = self.deliveries.store.clone();
        self.journal_wait = Some(tokio::task::spawn_blocking(move || {
            store.wait_written(seq, JOURNAL_WAIT)
        }));
        Journal::Waiting
    }

    fn start(&mut self, job: Job) {
        let webhook = self.webhook.read().unwrap().clone();
        let request = job.clone();
        let handle = self.in_flight.spawn(async move {
            let delivery = Request {
                tenant: &request.tenant,
                status: request.status,
                reason: request.reason.as_deref(),
                idempotency_key: &request.idempotency_key,
                changed_at: request.changed_at,
            };
            webhook.send(&delivery).await
        });
        self.jobs.insert(handle.id(), job);
    }

    fn finished(&mut self, done: Result<(Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, outcome),
            Err(e) => {
                // A request that panicked (or was aborted) is a failed attempt like any other:
                // its tenant must not stay "in flight" for ever.
                let id = e.id();
                if e.is_panic() {
                    tracing::error!("a webhook request panicked; it will be retried");
                }
                (
                    id,
                    Outcome::Retry {
                        after: None,
                        error: "the request was interrupted".into(),
                        status: None,
                        // It may have been sent before it was cut short.
                        maybe_applied: true,
                    },
                )
            }
        };
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        let now = Now::read();
        let metrics = &self.deliveries.metrics;
        metrics.webhook_outcome(outcome.label());
        let settled = self
            .deliveries
            .with(|o| o.on_outcome(now, &job, &outcome, fastrand::f64()));
        log_outcome(&job, &outcome, &settled);
        if let Some(latency) = settled.latency {
            metrics.webhook_latency.observe(latency.as_secs_f64());
        }
    }

    /// The shutdown flush: every owed delivery gets one more try, all within SHUTDOWN_FLUSH.
    async fn flush(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        self.deliveries.with(Outbox::begin_flush);
        let owed = self.deliveries.owed();
        if owed > 0 {
            tracing::info!(owed, "delivering what is owed before exit (at most 10s)");
        }
        loop {
            self.start_ready();
            if self.in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = self.in_flight.join_next_with_id() => self.finished(done),
                _ = sleep_until(deadline) => {
                    tracing::warn!(in_flight = self.in_flight.len(), "shutdown flush timed out; what is still owed is kept for the next start");
                    self.in_flight.abort_all();
                    break;
                }
            }
        }
    }
}

fn log_outcome(job: &Job, outcome: &Outcome, settled: &Settled) {
    match outcome {
        Outcome::Delivered { .. } => {
            tracing::info!(tenant = %job.tenant, status = job.status.as_str(), "backend acknowledged the transition");
        }
        Outcome::Retry { error, .. } => {
            // The first failure and then every doubling, so a long backend outage with thousands
            // of owed tenants does not flood the journal.
            if job.attempt.is_power_of_two() {
                tracing::warn!(tenant = %job.tenant, attempt = job.attempt, error = %error, retry_in = ?settled.retry_in, "webhook call failed; will retry");
            }
        }
        Outcome::Credentials { .. } | Outcome::WrongUrl { .. } => {
            if let Some(fault) = &settled.new_fault {
                tracing::error!(problem = %fault, "the backend refuses the sidecar's configuration; deliveries retry every 30s and after a reload (SIGHUP)");
            }
        }
        Outcome::Refused { status, body } => {
            tracing::error!(tenant = %job.tenant, status, body = %body, "backend refused the payload; this delivery is dropped");
        }
    }
    if settled.deleted {
        tracing::info!(tenant = %job.tenant, "removed tenant delivered what it owed; its record is deleted");
    }
}
