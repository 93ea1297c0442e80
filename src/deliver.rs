//! The delivery dispatcher: turns owed transitions into webhook calls.
//!
//! One task for the whole process. It keeps at most `backend.max_in_flight` requests running, at
//! most one per tenant (the registry's `in_flight` flag), so a tenant's transitions reach the
//! backend in order. Retries wait in a time-ordered set; tenants that are ready while the cap is
//! reached wait in a FIFO queue, so no tenant starves during a storm.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::registry::{Job, Now, Registry, Settled, TenantId};
use crate::webhook::{self, Delivery, Outcome, Webhook};

/// How long the shutdown flush may take before what is still owed is persisted for next time.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The webhook client, swapped whole on reload so in-flight requests finish with the old one.
pub type SharedWebhook = Arc<RwLock<Arc<Webhook>>>;

/// Runs the dispatcher until `stop` fires, then gives each owed delivery one more try within
/// [`SHUTDOWN_FLUSH`] and returns.
pub async fn run(
    registry: Arc<Registry>,
    webhook: SharedWebhook,
    mut wake: UnboundedReceiver<TenantId>,
    stop: CancellationToken,
) {
    let mut d = Dispatcher {
        registry,
        webhook,
        in_flight: JoinSet::new(),
        ready: VecDeque::new(),
        queued: HashSet::new(),
        retries: BTreeSet::new(),
    };
    loop {
        d.fill(Now::read());
        let next_retry = d.retries.first().map(|(at, _)| *at);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(done) = d.in_flight.join_next(), if !d.in_flight.is_empty() => {
                if let Ok((job, outcome)) = done {
                    d.finished(job, outcome, Now::read(), true);
                }
            }
            Some(tenant) = wake.recv() => d.enqueue(tenant),
            _ = sleep_until(next_retry.unwrap_or_else(far_future)), if next_retry.is_some() => {
                let now = Instant::now();
                while d.retries.first().is_some_and(|(at, _)| *at <= now) {
                    let (_, tenant) = d.retries.pop_first().expect("checked non-empty");
                    d.enqueue(tenant);
                }
            }
        }
    }
    d.flush().await;
}

/// An instant no timer will reach, for a `select!` branch that is disabled anyway.
pub fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

struct Dispatcher {
    registry: Arc<Registry>,
    webhook: SharedWebhook,
    in_flight: JoinSet<(Job, Outcome)>,
    /// Tenants with something to send, in the order they became ready.
    ready: VecDeque<TenantId>,
    queued: HashSet<TenantId>,
    /// Tenants waiting for a backoff, by the instant they may go again.
    retries: BTreeSet<(Instant, TenantId)>,
}

impl Dispatcher {
    fn enqueue(&mut self, tenant: TenantId) {
        if self.queued.insert(tenant.clone()) {
            self.ready.push_back(tenant);
        }
    }

    /// Starts requests for ready tenants up to the in-flight cap.
    fn fill(&mut self, now: Now) {
        let cap = self.registry.config().backend.max_in_flight;
        while self.in_flight.len() < cap {
            let Some(tenant) = self.ready.pop_front() else {
                break;
            };
            self.queued.remove(&tenant);
            self.start(&tenant, now);
        }
    }

    fn start(&mut self, tenant: &TenantId, now: Now) {
        match self.registry.take_job(tenant, now) {
            Some(job) => {
                let webhook = self.webhook.read().unwrap().clone();
                self.in_flight.spawn(async move {
                    let delivery = Delivery {
                        tenant: &job.tenant,
                        status: job.status,
                        reason: job.reason.as_deref(),
                        idempotency_key: &job.idempotency_key,
                        changed_at: job.changed_at,
                    };
                    let outcome = webhook.send(&delivery).await;
                    (job, outcome)
                });
            }
            None => {
                if let Some(at) = self.registry.not_before(tenant).filter(|at| *at > now.mono) {
                    self.retries.insert((at, tenant.clone()));
                }
            }
        }
    }

    /// Applies one request's outcome. With `requeue`, a tenant that still owes something goes
    /// back in line (not during the shutdown flush, where each delivery gets one try).
    fn finished(&mut self, job: Job, outcome: Outcome, now: Now, requeue: bool) {
        let registry = &self.registry;
        registry.metrics.webhook_outcome(outcome.label());
        // A configuration fault answered to a request sent before a reload says nothing about
        // the new config: try again at once rather than in 30 s.
        let fault_retry = if job.epoch == registry.epoch() {
            now.mono + webhook::CONFIG_FAULT_RETRY
        } else {
            now.mono
        };
        let settled = match outcome {
            Outcome::Delivered { .. } => Settled::Delivered,
            Outcome::Retry { after, error } => {
                let wait = after.unwrap_or_else(|| {
                    webhook::full_jitter(
                        job.attempt.saturating_sub(1),
                        webhook::RETRY_BASE,
                        webhook::RETRY_CAP,
                        fastrand::f64(),
                    )
                });
                // Log the first failure and then every doubling, so a long backend outage
                // with thousands of owed tenants does not flood the journal.
                if job.attempt.is_power_of_two() {
                    tracing::warn!(tenant = %job.tenant, attempt = job.attempt, error = %error, retry_in = ?wait, "webhook call failed; will retry");
                }
                Settled::RetryAt(now.mono + wait, error)
            }
            Outcome::Credentials { status } => {
                registry.set_credentials_fault(format!(
                    "backend answered {status} to X-INTERNAL-SECRET: make INTERNAL_SHARED_SECRET (or backend.secret_file) match the backend's shared secret, then reload (SIGHUP)"
                ));
                Settled::RetryAt(
                    fault_retry,
                    format!("backend refused the credentials ({status})"),
                )
            }
            Outcome::WrongUrl { status } => {
                let url = self.webhook.read().unwrap().url().to_string();
                registry.set_credentials_fault(format!(
                    "backend answered {status} for POST {url}: check backend.url (or BACKEND_INTERNAL_URL) and backend.path, then reload (SIGHUP)"
                ));
                Settled::RetryAt(
                    fault_retry,
                    format!("backend answered {status}: wrong webhook URL"),
                )
            }
            Outcome::Refused { status, body } => {
                tracing::error!(tenant = %job.tenant, status, body = %body, "backend refused the payload; this delivery is dropped");
                Settled::Dropped(format!("refused by the backend ({status}): {body}"))
            }
        };
        let owes = registry.settle_job(&job, settled, now);
        if owes && requeue {
            self.enqueue(job.tenant);
        }
    }

    /// The shutdown flush: every owed delivery gets one more try, all within SHUTDOWN_FLUSH.
    async fn flush(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        self.retries.clear();
        // A request in flight at the signal was sent before it: when it leaves its tenant still
        // owing (it failed, or a newer transition superseded it), that tenant gets its try after.
        let mut carried: HashSet<TenantId> = HashSet::new();
        for tenant in self.registry.retry_now() {
            if self.registry.in_flight(&tenant) {
                carried.insert(tenant.clone());
            }
            self.enqueue(tenant);
        }
        let owed = self.ready.len() + self.in_flight.len();
        if owed > 0 {
            tracing::info!(owed, "delivering what is owed before exit (at most 10s)");
        }
        loop {
            self.fill(Now::read());
            if self.in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = self.in_flight.join_next() => {
                    if let Ok((job, outcome)) = done {
                        let tenant = job.tenant.clone();
                        self.finished(job, outcome, Now::read(), false);
                        if carried.remove(&tenant) && self.registry.retry_tenant_now(&tenant) {
                            self.enqueue(tenant);
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    tracing::warn!(in_flight = self.in_flight.len(), "shutdown flush timed out; what is still owed is kept for the next start");
                    self.in_flight.abort_all();
                    break;
                }
            }
        }
    }
}
