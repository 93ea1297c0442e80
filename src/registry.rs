//! The concurrent map of tenants: where gateway frames, link events and timers meet each tenant's
//! debouncer, and where decided transitions become owed deliveries.
//!
//! Every entry point takes the current time from its caller (the link driver, the timer wheel or
//! the delivery dispatcher), so this module never reads the clock either. Each call locks exactly
//! one tenant's map shard, does its work without awaiting, and releases it: a slow backend or a
//! slow disk never holds a gateway link up.
//!
//! Lock order: a map shard, then the store mutex. Nothing takes them the other way round.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::config::Config;
use crate::debounce::{self, Debouncer, Policy, Report, Restored, Status};
use crate::metrics::Metrics;
use crate::observe::{self, Ignored, Observation, SessionView};
use crate::store::{self, Owed, Record, Reported, Store};

/// A tenant id, shared between the map, the timer wheel and the dispatcher without copying.
pub type TenantId = Arc<str>;

/// Ignored frames are logged at most this often per tenant, so a gateway that sends thousands of
/// unknown events cannot flood the journal.
const IGNORED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A point in time on both clocks: monotonic for deadlines, wall-clock for what is persisted or
/// sent. Drivers read it once per event and pass it down.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn read() -> Self {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The wall-clock time of an earlier monotonic instant.
    fn wall_of(&self, earlier: Instant) -> SystemTime {
        self.wall - self.mono.saturating_duration_since(earlier)
    }
}

/// One tenant's live state.
pub struct Tenant {
    debounce: Debouncer,
    /// Merged Baileys partial updates.
    session: SessionView,
    /// What is persisted: reported state, owed delivery, flap penalty.
    record: Record,
    /// `None` until the first connect attempt ends, then whether the gateway link is up.
    link_up: Option<bool>,
    link_since: Instant,
    link_error: Option<String>,
    /// The most recent observation and when it arrived.
    last_observation: Option<(Observation, Instant)>,
    /// Delivery bookkeeping (not persisted: attempts restart after a restart).
    delivery: DeliveryState,
    /// The deadline last handed to the timer wheel.
    scheduled: Option<Instant>,
    last_ignored_log: Option<Instant>,
    /// False once the tenant is removed from the config; its owed delivery still completes.
    configured: bool,
    /// The stable state this tenant is counted under in the tenants gauge.
    counted: Option<Status>,
}

impl Tenant {
    /// Copies the debouncer's current flap penalty into the record about to be stored, so it
    /// decays from the right wall-clock time after a restart.
    fn stamp_penalty(&mut self, policy: &Policy, now: Now) {
        self.record.penalty = self.debounce.penalty(now.mono, policy);
        self.record.penalty_at_ms = store::unix_ms(now.wall);
        self.record.flapping = self.debounce.is_flapping();
    }
}

#[derive(Default)]
struct DeliveryState {
    in_flight: bool,
    attempts: u32,
    /// Not before this instant (backoff, Retry-After, configuration-fault pause).
    not_before: Option<Instant>,
    last_error: Option<String>,
    /// When the owed transition was decided, for the latency histogram.
    decided: Option<Instant>,
}

/// A delivery the dispatcher should send now.
#[derive(Debug, Clone)]
pub struct Job {
    pub tenant: TenantId,
    pub status: Status,
    pub reason: Option<String>,
    pub idempotency_key: String,
    pub changed_at: SystemTime,
    pub attempt: u32,
    /// The config epoch the job was sent under (see [`Registry::epoch`]).
    pub epoch: u64,
}

/// What the dispatcher learned from one request, in the registry's terms.
#[derive(Debug, Clone)]
pub enum Settled {
    Delivered,
    /// Try again at this instant.
    RetryAt(Instant, String),
    /// The backend refused this payload; it is dropped.
    Dropped(String),
}

/// Why the sidecar is not ready; empty when ready.
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub credentials_fault: Option<String>,
    /// Since when every webhook call has failed to get an answer (connection error, timeout, 5xx).
    pub backend_failing_since: Option<Instant>,
    pub backend_error: Option<String>,
    pub store_error: Option<String>,
}

/// The tenant map and everything an entry point needs besides it.
pub struct Registry {
    /// Boxed: the map's tables keep about 40% of their slots empty, and a slot is a key and a
    /// pointer (24 bytes) rather than a 0.5 KiB record (3 MiB less at 10,000 tenants).
    tenants: DashMap<TenantId, Box<Tenant>>,
    config: RwLock<Arc<Config>>,
    /// Counts reloads, so an answer to a request sent under an older config can be told apart.
    epoch: std::sync::atomic::AtomicU64,
    store: Mutex<Store>,
    pub metrics: Arc<Metrics>,
    health: Mutex<Health>,
    timers: UnboundedSender<(Instant, TenantId)>,
    deliveries: UnboundedSender<TenantId>,
}

impl Registry {
    /// Builds the map from the restored records and the configured tenants. Tenants with a record
    /// but no longer configured are kept so their owed delivery completes.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        restored: std::collections::HashMap<String, Record>,
        metrics: Arc<Metrics>,
        timers: UnboundedSender<(Instant, TenantId)>,
        deliveries: UnboundedSender<TenantId>,
        now: Now,
    ) -> Self {
        let registry = Registry {
            tenants: DashMap::new(),
            config: RwLock::new(config.clone()),
            epoch: Default::default(),
            store: Mutex::new(store),
            metrics,
            health: Mutex::new(Health::default()),
            timers,
            deliveries,
        };
        for (id, record) in restored {
            let id: TenantId = id.into();
            registry.insert(id, record, false, now);
        }
        registry.set_tenants(&config.tenants.ids, now);
        registry
    }

    /// How many reloads have happened.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// Applies a reloaded config: new settings, tenants added and removed. Returns the tenant ids
    /// that were added and removed, so the caller can start and stop their links.
    pub fn reload(&self, config: Arc<Config>, now: Now) -> (Vec<TenantId>, Vec<TenantId>) {
        *self.config.write().unwrap() = config.clone();
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let changes = self.set_tenants(&config.tenants.ids, now);
        // New graces may move deadlines; re-arm every timer.
        for mut entry in self.tenants.iter_mut() {
            let id = entry.key().clone();
            entry.scheduled = None;
            self.reschedule(&id, &mut entry, &config.debounce);
        }
        changes
    }

    fn set_tenants(&self, ids: &[String], now: Now) -> (Vec<TenantId>, Vec<TenantId>) {
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for mut entry in self.tenants.iter_mut() {
            let is_wanted = wanted.contains(&**entry.key());
            if entry.configured && !is_wanted {
                removed.push(entry.key().clone());
                self.metrics.tenant_state(Some(entry.counted), None);
                self.metrics.link_state(entry.link_up, None);
                entry.configured = false;
            }
        }
        for id in ids {
            let configured = self.tenants.get(id.as_str()).map(|t| t.configured);
            match configured {
                Some(true) => {}
                Some(false) => {
                    let mut entry = self.tenants.get_mut(id.as_str()).unwrap();
                    entry.configured = true;
                    self.metrics.tenant_state(None, Some(entry.counted));
                    self.metrics.link_state(None, entry.link_up);
                    added.push(entry.key().clone());
                }
                None => {
                    let id: TenantId = id.as_str().into();
                    self.insert(id.clone(), Record::default(), true, now);
                    added.push(id);
                }
            }
        }
        // Removed tenants with nothing owed have nothing left to do here.
        for id in &removed {
            self.tenants
                .remove_if(id, |_, t| t.record.owed.is_none() && !t.delivery.in_flight);
        }
        (added, removed)
    }

    fn insert(&self, id: TenantId, record: Record, configured: bool, now: Now) {
        let config = self.config();
        let restored = restore_of(&record, &config.debounce, now);
        let mut debounce = Debouncer::new(now.mono, restored);
        // A tenant starts with its gateway link down: if the gateway stays unreachable, the
        // gateway-down grace runs from start-up.
        debounce.link_down(now.mono, &config.debounce, "not connected yet");
        let owed = record.owed.is_some();
        if owed {
            // The one place a record's owed delivery enters the map without `set_owed`.
            self.metrics.owed.inc();
        }
        if configured {
            self.metrics.tenant_state(None, Some(debounce.stable()));
        }
        let counted = debounce.stable();
        let mut tenant = Tenant {
            debounce,
            session: SessionView::default(),
            record,
            link_up: None,
            link_since: now.mono,
            link_error: None,
            last_observation: None,
            delivery: DeliveryState {
                decided: owed.then_some(now.mono),
                ..DeliveryState::default()
            },
            scheduled: None,
            last_ignored_log: None,
            configured,
            counted,
        };
        self.reschedule(&id, &mut tenant, &config.debounce);
        self.tenants.insert(id.clone(), Box::new(tenant));
        if owed {
            let _ = self.deliveries.send(id);
        }
    }

    /// Whether the tenant is configured (frames for others are counted and ignored).
    pub fn is_configured(&self, tenant: &str) -> bool {
        self.tenants.get(tenant).is_some_and(|t| t.configured)
    }

    /// Handles one text frame from a per-tenant link.
    pub fn frame(&self, tenant: &str, text: &str, now: Now) {
        match observe::parse(text) {
            Ok(frame) => self.apply(tenant, frame.update, now),
            Err(ignored) => self.ignored(tenant, ignored, now),
        }
    }

    /// Handles one text frame from a shared link: the tenant comes from the frame.
    pub fn shared_frame(&self, text: &str, now: Now) {
        match observe::parse(text) {
            Ok(frame) => match frame.tenant {
                Some(tenant) if self.is_configured(&tenant) => {
                    self.apply(&tenant, frame.update, now)
                }
                Some(tenant) => {
                    self.metrics.frames_unknown_tenant.inc();
                    tracing::debug!(tenant = %tenant, "frame for a tenant that is not configured; ignored");
                }
                None => {
                    self.metrics.frame_ignored(Ignored::UnknownShape);
                    tracing::debug!("frame without a tenant on the shared link; ignored");
                }
            },
            Err(ignored) => self.ignored("(shared link)", ignored, now),
        }
    }

    /// Counts an ignored frame and logs it at most once a minute per tenant.
    pub fn ignored(&self, tenant: &str, kind: Ignored, now: Now) {
        self.metrics.frame_ignored(kind);
        let due = match self.tenants.get_mut(tenant) {
            Some(mut t) => {
                let due = t
                    .last_ignored_log
                    .is_none_or(|at| now.mono.duration_since(at) >= IGNORED_LOG_INTERVAL);
                if due {
                    t.last_ignored_log = Some(now.mono);
                }
                due
            }
            None => true,
        };
        if due {
            tracing::info!(tenant = %tenant, kind = kind.as_str(), "ignored a gateway frame (logged at most once a minute per tenant)");
        }
    }

    fn apply(&self, tenant: &str, update: observe::Update, now: Now) {
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        let Some(obs) = entry.session.apply(update) else {
            self.metrics.frame_ignored(Ignored::NoState);
            return;
        };
        self.metrics.frames_state.inc();
        let config = self.config();
        let policy = &config.debounce;
        let before = entry.debounce.view(now.mono, policy);
        entry.debounce.observe(now.mono, policy, &obs);
        let after = entry.debounce.view(now.mono, policy);
        if before.pending.is_some_and(|p| p.0 == Status::Disconnected)
            && after.pending.is_none()
            && after.stable == before.stable
        {
            // A drop healed within its grace: exactly the flapping the sidecar exists to absorb.
            self.metrics.flaps_suppressed.inc();
        }
        tracing::debug!(tenant = %tenant, observation = ?obs, "observation");
        entry.last_observation = Some((obs, now.mono));
        let id = entry.key().clone();
        self.settle(&id, &mut entry, policy, now);
        if after.penalty > before.penalty + 0.5 {
            // A flap: the penalty must survive a kill -9 even when no transition was decided.
            self.persist(&id, &mut entry, policy, now);
        }
    }

    /// The gateway link of `tenant` (or of every tenant in shared mode) is up.
    pub fn link_up(&self, tenant: &str, now: Now) {
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        let config = self.config();
        entry.session.reset();
        entry.debounce.link_up(now.mono, &config.debounce);
        if entry.configured {
            self.metrics.link_state(entry.link_up, Some(true));
        }
        entry.link_up = Some(true);
        entry.link_since = now.mono;
        entry.link_error = None;
        let id = entry.key().clone();
        self.settle(&id, &mut entry, &config.debounce, now);
    }

    /// The gateway link of `tenant` is down (or a connect attempt failed).
    pub fn link_down(&self, tenant: &str, error: &str, now: Now) {
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        let config = self.config();
        entry.debounce.link_down(now.mono, &config.debounce, error);
        if entry.link_up != Some(false) {
            if entry.configured {
                self.metrics.link_state(entry.link_up, Some(false));
            }
            entry.link_up = Some(false);
            entry.link_since = now.mono;
        }
        entry.link_error = Some(error.to_string());
        let id = entry.key().clone();
        self.settle(&id, &mut entry, &config.debounce, now);
    }

    /// Whether any configured tenant's link is up (in shared mode: whether the shared link is).
    pub fn any_link_up(&self) -> bool {
        self.tenants
            .iter()
            .any(|t| t.configured && t.link_up == Some(true))
    }

    /// Every configured tenant, for shared-mode link events.
    pub fn tenant_ids(&self) -> Vec<TenantId> {
        self.tenants
            .iter()
            .filter(|t| t.configured)
            .map(|t| t.key().clone())
            .collect()
    }

    /// A timer of `tenant` is due.
    pub fn timeout(&self, tenant: &str, now: Now) {
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        let config = self.config();
        if entry
            .debounce
            .next_deadline(&config.debounce)
            .is_some_and(|d| d <= now.mono)
        {
            entry.debounce.on_timeout(now.mono, &config.debounce);
        }
        entry.scheduled = None;
        let id = entry.key().clone();
        self.settle(&id, &mut entry, &config.debounce, now);
    }

    /// Drains the debouncer's reports into the owed delivery and re-arms the tenant's timer.
    fn settle(&self, id: &TenantId, tenant: &mut Tenant, policy: &Policy, now: Now) {
        let mut changed = false;
        while let Some(report) = tenant.debounce.poll_report() {
            self.decided(id, tenant, report, now);
            changed = true;
        }
        if changed {
            let stable = tenant.debounce.stable();
            if tenant.configured && stable != tenant.counted {
                self.metrics
                    .tenant_state(Some(tenant.counted), Some(stable));
            }
            tenant.counted = stable;
            self.persist(id, tenant, policy, now);
            if tenant.record.owed.is_some() {
                let _ = self.deliveries.send(id.clone());
            }
        }
        self.reschedule(id, tenant, policy);
    }

    fn decided(&self, id: &TenantId, tenant: &mut Tenant, report: Report, now: Now) {
        self.metrics.transition(report.status);
        tracing::info!(
            tenant = %id,
            status = report.status.as_str(),
            reason = report.reason.as_deref().unwrap_or(""),
            "transition decided"
        );
        let reported = tenant.record.reported.as_ref().map(|r| r.status);
        if reported == Some(report.status) && !tenant.delivery.in_flight {
            // The newest state is what the backend already has: nothing to send, and any queued
            // opposite transition is void.
            self.set_owed(tenant, None);
        } else {
            self.set_owed(
                tenant,
                Some(Owed {
                    status: report.status,
                    reason: report.reason,
                    changed_at_ms: store::unix_ms(now.wall_of(report.since)),
                    idempotency_key: store::new_idempotency_key(),
                }),
            );
            tenant.delivery.decided = Some(now.mono);
            tenant.delivery.attempts = 0;
            // A superseded transition's backoff does not apply to the new one.
            tenant.delivery.not_before = None;
        }
    }

    /// Replaces the tenant's owed delivery, keeping the owed-deliveries gauge in step.
    fn set_owed(&self, tenant: &mut Tenant, owed: Option<Owed>) {
        match (tenant.record.owed.is_some(), owed.is_some()) {
            (false, true) => {
                self.metrics.owed.inc();
            }
            (true, false) => {
                self.metrics.owed.dec();
            }
            _ => {}
        }
        tenant.record.owed = owed;
    }

    fn persist(&self, id: &TenantId, tenant: &mut Tenant, policy: &Policy, now: Now) {
        tenant.stamp_penalty(policy, now);
        let result = self.store.lock().unwrap().append(id, &tenant.record);
        if let Err(e) = result {
            self.store_failed(&e.to_string());
        }
    }

    fn store_failed(&self, error: &str) {
        self.metrics.store_errors.inc();
        let mut health = self.health.lock().unwrap();
        if health.store_error.is_none() {
            tracing::error!(error = %error, "cannot write the state directory; running from memory until it is writable again (fix the disk or permissions; nothing owed is dropped)");
        }
        health.store_error = Some(error.to_string());
    }

    fn reschedule(&self, id: &TenantId, tenant: &mut Tenant, policy: &Policy) {
        let deadline = tenant.debounce.next_deadline(policy);
        if deadline != tenant.scheduled {
            tenant.scheduled = deadline;
            if let Some(deadline) = deadline {
                let _ = self.timers.send((deadline, id.clone()));
            }
        }
    }

    /// The delivery to send now for `tenant`, if any; marks it in flight.
    pub fn take_job(&self, tenant: &str, now: Now) -> Option<Job> {
        let mut entry = self.tenants.get_mut(tenant)?;
        let t = &mut *entry;
        if t.delivery.in_flight {
            return None;
        }
        let owed = t.record.owed.as_ref()?;
        if t.record.reported.as_ref().map(|r| r.status) == Some(owed.status) {
            // Superseded back to what the backend has (possible after a restart).
            self.set_owed(t, None);
            let id = entry.key().clone();
            let config = self.config();
            self.persist(&id, &mut entry, &config.debounce, now);
            return None;
        }
        if t.delivery.not_before.is_some_and(|at| at > now.mono) {
            return None;
        }
        t.delivery.in_flight = true;
        t.delivery.attempts += 1;
        let job = Job {
            tenant: TenantId::from(tenant),
            status: owed.status,
            reason: owed.reason.clone(),
            idempotency_key: owed.idempotency_key.clone(),
            changed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(owed.changed_at_ms),
            attempt: t.delivery.attempts,
            epoch: self.epoch(),
        };
        Some(job)
    }

    /// When `tenant` may be tried again, if it waits for a backoff.
    pub fn not_before(&self, tenant: &str) -> Option<Instant> {
        self.tenants.get(tenant).and_then(|t| t.delivery.not_before)
    }

    /// Records the result of a job. Returns true when the tenant owes another delivery.
    pub fn settle_job(&self, job: &Job, settled: Settled, now: Now) -> bool {
        let Some(mut entry) = self.tenants.get_mut(&*job.tenant) else {
            return false;
        };
        let config = self.config();
        let t = &mut *entry;
        t.delivery.in_flight = false;
        let current = t
            .record
            .owed
            .as_ref()
            .map(|o| o.idempotency_key == job.idempotency_key);
        match settled {
            Settled::Delivered => {
                if let Some(decided) = t.delivery.decided.filter(|_| current == Some(true)) {
                    self.metrics
                        .webhook_latency
                        .observe(now.mono.saturating_duration_since(decided).as_secs_f64());
                }
                t.record.reported = Some(Reported {
                    status: job.status,
                    reason: job.reason.clone(),
                    at_ms: store::unix_ms(now.wall),
                });
                t.delivery.last_error = None;
                t.delivery.attempts = 0;
                t.delivery.not_before = None;
                let owed_now = t.record.owed.as_ref().map(|o| o.status);
                if current == Some(true) || owed_now == Some(job.status) {
                    // Delivered, or superseded by a transition back to what was just delivered.
                    self.set_owed(t, None);
                }
                self.backend_answered();
                tracing::info!(tenant = %job.tenant, status = job.status.as_str(), "backend acknowledged the transition");
            }
            Settled::RetryAt(at, error) => {
                self.backend_failing(&error, now);
                t.delivery.not_before = Some(at);
                t.delivery.last_error = Some(error);
            }
            Settled::Dropped(error) => {
                t.delivery.last_error = Some(error);
                t.delivery.attempts = 0;
                if current == Some(true) {
                    self.set_owed(t, None);
                }
            }
        }
        let id = entry.key().clone();
        self.persist(&id, &mut entry, &config.debounce, now);
        let owes = entry.record.owed.is_some();
        if !owes && !entry.configured {
            drop(entry);
            self.tenants.remove_if(&*job.tenant, |_, t| {
                !t.configured && t.record.owed.is_none() && !t.delivery.in_flight
            });
        }
        owes
    }

    /// Tenants that owe a delivery, for the shutdown flush and after a reload.
    pub fn owing(&self) -> Vec<TenantId> {
        self.tenants
            .iter()
            .filter(|t| t.record.owed.is_some())
            .map(|t| t.key().clone())
            .collect()
    }

    /// Whether `tenant` has a request in flight now.
    pub fn in_flight(&self, tenant: &str) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|t| t.delivery.in_flight)
    }

    /// Lifts `tenant`'s delivery pause; returns whether it owes a delivery.
    pub fn retry_tenant_now(&self, tenant: &str) -> bool {
        let Some(mut t) = self.tenants.get_mut(tenant) else {
            return false;
        };
        t.delivery.not_before = None;
        t.record.owed.is_some()
    }

    /// Lifts every delivery pause (after a reload fixed the credentials, or at shutdown).
    pub fn retry_now(&self) -> Vec<TenantId> {
        let mut owing = Vec::new();
        for mut t in self.tenants.iter_mut() {
            if t.record.owed.is_some() {
                t.delivery.not_before = None;
                owing.push(t.key().clone());
            }
        }
        owing
    }

    pub fn set_credentials_fault(&self, fault: String) {
        let mut health = self.health.lock().unwrap();
        if health.credentials_fault.as_deref() != Some(&fault) {
            tracing::error!(problem = %fault, "the backend refuses the sidecar's configuration; deliveries retry every 30s and after a reload (SIGHUP)");
        }
        health.credentials_fault = Some(fault);
    }

    /// A call succeeded: the backend is reachable and accepts our credentials.
    fn backend_answered(&self) {
        let mut health = self.health.lock().unwrap();
        if health.credentials_fault.take().is_some() {
            tracing::info!("the backend accepts the sidecar's credentials again");
        }
        if health.backend_failing_since.take().is_some() {
            tracing::info!("the backend is reachable again");
        }
        health.backend_error = None;
    }

    fn backend_failing(&self, error: &str, now: Now) {
        let mut health = self.health.lock().unwrap();
        health.backend_failing_since.get_or_insert(now.mono);
        health.backend_error = Some(error.to_string());
    }

    pub fn health(&self) -> Health {
        self.health.lock().unwrap().clone()
    }

    /// Syncs the journal, and compacts it into a fresh snapshot when it has grown or a write failed.
    /// Called about once a second by the persister and once at shutdown (`force`).
    pub fn flush_store(&self, force: bool, now: Now) {
        let needs = self.store.lock().unwrap().needs_compaction();
        let result = if needs || force {
            let config = self.config();
            let records: Vec<(TenantId, Record)> = self
                .tenants
                .iter_mut()
                .map(|mut t| {
                    t.stamp_penalty(&config.debounce, now);
                    (t.key().clone(), t.record.clone())
                })
                .collect();
            let mut store = self.store.lock().unwrap();
            store.compact(records.iter().map(|(id, r)| (&**id, r)))
        } else {
            self.store.lock().unwrap().sync()
        };
        match result {
            Ok(()) => {
                let mut health = self.health.lock().unwrap();
                if health.store_error.take().is_some() {
                    tracing::info!("the state directory is writable again; state is durable");
                }
            }
            Err(e) => self.store_failed(&e.to_string()),
        }
    }

    /// One tenant's state for the admin API.
    pub fn tenant_view(&self, tenant: &str, now: Now) -> Option<TenantView> {
        let entry = self.tenants.get(tenant)?;
        let config = self.config();
        Some(view_of(entry.key(), &entry, &config.debounce, now))
    }

    /// Every tenant's state, sorted by id.
    pub fn views(&self, now: Now) -> Vec<TenantView> {
        let config = self.config();
        let mut views: BTreeMap<TenantId, TenantView> = BTreeMap::new();
        for entry in self.tenants.iter() {
            views.insert(
                entry.key().clone(),
                view_of(entry.key(), &entry, &config.debounce, now),
            );
        }
        views.into_values().collect()
    }

    /// The number of tenants in the map, configured or finishing a delivery.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// The debouncer's starting point from a stored record: the state the backend has (or is owed),
/// the penalty decayed by the wall-clock time since it was stored.
fn restore_of(record: &Record, policy: &Policy, now: Now) -> Restored {
    let stable = record
        .owed
        .as_ref()
        .map(|o| o.status)
        .or(record.reported.as_ref().map(|r| r.status));
    let stored_at = SystemTime::UNIX_EPOCH + Duration::from_millis(record.penalty_at_ms);
    let elapsed = now.wall.duration_since(stored_at).unwrap_or_default();
    Restored {
        stable,
        penalty: debounce::decay(record.penalty, elapsed, policy.flap_half_life),
        flapping: record.flapping,
    }
}

/// One tenant as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantView {
    pub tenant: String,
    pub configured: bool,
    pub link: &'static str,
    pub link_since_secs: u64,
    pub link_error: Option<String>,
    pub last_observation: Option<String>,
    pub last_observation_secs_ago: Option<u64>,
    pub stable: Option<Status>,
    pub pending: Option<PendingView>,
    pub reported: Option<ReportedView>,
    pub owed: Option<OwedView>,
    pub delivery_attempts: u32,
    pub delivery_in_flight: bool,
    pub last_error: Option<String>,
    pub flap_penalty: f64,
    pub flapping: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingView {
    pub status: Status,
    pub in_secs: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportedView {
    pub status: Status,
    pub reason: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OwedView {
    pub status: Status,
    pub reason: Option<String>,
    pub changed_at: String,
    pub idempotency_key: String,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn view_of(id: &TenantId, t: &Tenant, policy: &Policy, now: Now) -> TenantView {
    let view = t.debounce.view(now.mono, policy);
    TenantView {
        tenant: id.to_string(),
        configured: t.configured,
        link: match t.link_up {
            None => "connecting",
            Some(true) => "up",
            Some(false) => "down",
        },
        link_since_secs: now.mono.saturating_duration_since(t.link_since).as_secs(),
        link_error: t.link_error.clone(),
        last_observation: t
            .last_observation
            .as_ref()
            .map(|(o, _)| describe_observation(policy, o)),
        last_observation_secs_ago: t
            .last_observation
            .as_ref()
            .map(|(_, at)| now.mono.saturating_duration_since(*at).as_secs()),
        stable: view.stable,
        pending: view.pending.map(|(status, at)| PendingView {
            status,
            in_secs: at.saturating_duration_since(now.mono).as_secs(),
        }),
        reported: t.record.reported.as_ref().map(|r| ReportedView {
            status: r.status,
            reason: r.reason.clone(),
            at: rfc3339(r.at_ms),
        }),
        owed: t.record.owed.as_ref().map(|o| OwedView {
            status: o.status,
            reason: o.reason.clone(),
            changed_at: rfc3339(o.changed_at_ms),
            idempotency_key: o.idempotency_key.clone(),
        }),
        delivery_attempts: t.delivery.attempts,
        delivery_in_flight: t.delivery.in_flight,
        last_error: t.delivery.last_error.clone(),
        flap_penalty: (view.penalty * 10.0).round() / 10.0,
        flapping: view.flapping,
    }
}

fn describe_observation(policy: &Policy, obs: &Observation) -> String {
    match obs {
        Observation::Up => "up".to_string(),
        Observation::Down(cause) => {
            let kind = if debounce::is_terminal(policy, cause) {
                "down (terminal)"
            } else {
                "down (transient)"
            };
            format!("{kind}: {}", debounce::describe(policy, cause))
        }
    }
}
