//! The concurrent map of configured tenants: where gateway frames, link events and timers meet
//! each tenant's debouncer, and where decided transitions are handed to the outbox.
//!
//! The map holds exactly the configured tenants (SPEC 4 rev 12, tenant lifecycle): removing a
//! tenant takes its entry out at once, so nothing new is ever decided for it (no "gateway
//! unreachable", no frame applied); what it already owes stays with the outbox until delivered.
//! A tenant added (again) starts first-seen.
//!
//! Every entry point takes the current time from its caller (a link, the timer wheel), so this
//! module never reads the clock. Each call locks one tenant's map shard, does its work without
//! awaiting and without touching the disk (records go to the journal writer's channel, decisions
//! to the outbox's mutex), and releases it. Lock order: the shared-link state, then a map shard,
//! then the outbox. Nothing takes them the other way round.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;

use tokio::time::Instant;

use crate::config::{Config, GatewayMode};
use crate::debounce::{self, Debouncer, Edge, Policy, Report, Restored, Status};
use crate::deliver::Deliveries;
use crate::metrics::Metrics;
use crate::observe::{self, Ignored, Observation, SessionView};
use crate::outbox::SlotView;
use crate::store::{self, Damping, Owed, Record, Store, StoredStorm};
use crate::storm::{self, Detector, StormPolicy};
use crate::timers;

pub use crate::{Now, TenantId};

/// Ignored and foreign frames are logged at most this often per link, so a gateway that sends
/// thousands of them cannot flood the log.
const NOISE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The reason of a link that has not connected yet, as "gateway unreachable" would name it.
const NOT_CONNECTED_YET: &str = "not connected yet";

/// The timer-wheel key of the storm detector's deadline. A control character makes it an
/// impossible tenant id, so it never collides with one.
const STORM_TIMER: &str = "\u{1}storm";

/// The fleet-level state: the mass-outage detector and what it needs to know.
struct Fleet {
    detector: Detector,
    /// Tenants whose gateway links are up.
    linked: usize,
    /// The detector's deadline last handed to the timer wheel.
    scheduled: Option<Instant>,
}

/// One configured tenant's live state.
struct Tenant {
    debounce: Debouncer,
    /// Merged Baileys partial updates.
    session: SessionView,
    /// `None` until the first connect attempt ends, then whether the gateway link is up.
    link_up: Option<bool>,
    link_since: Instant,
    link_error: Option<Box<str>>,
    /// The most recent observation and when it arrived.
    last_observation: Option<(Observation, Instant)>,
    /// Counts frames applied, so a `state_url` answer older than a frame is not applied over it.
    observations: u64,
    /// The deadline last handed to the timer wheel.
    scheduled: Option<Instant>,
    /// When an ignored or foreign frame of this link was last logged.
    last_noise_log: Option<Instant>,
    /// The stable state this tenant is counted under in the tenants gauge.
    counted: Option<Status>,
}

/// The state of the one link in shared mode, which every configured tenant shares.
#[derive(Debug, Clone)]
enum SharedLink {
    /// Per-tenant mode, or the shared link has not finished its first connect.
    Unknown,
    Up,
    Down(Box<str>),
}

/// The tenant map and everything an entry point needs besides it.
pub(crate) struct Registry {
    /// Boxed: the map's tables keep about 40% of their slots empty, and a slot is a key and a
    /// pointer (24 bytes) rather than a 0.5 KiB record (3 MiB less at 10,000 tenants).
    tenants: DashMap<TenantId, Box<Tenant>>,
    config: RwLock<Arc<Config>>,
    pub(crate) metrics: Arc<Metrics>,
    deliveries: Arc<Deliveries>,
    store: Arc<Store>,
    timers: timers::Sender,
    shared_link: Mutex<SharedLink>,
    /// When an ignored frame of the shared link was last logged.
    shared_noise_log: Mutex<Option<Instant>>,
    /// Taken after a tenant's shard when both are needed, never before.
    fleet: Mutex<Fleet>,
}

impl Registry {
    /// Builds the map from the configured tenants, seeding each from its stored record, and
    /// hands every stored record to the outbox (those of unconfigured tenants to finish and go).
    pub(crate) fn new(
        config: Arc<Config>,
        restored: store::Restored,
        metrics: Arc<Metrics>,
        deliveries: Arc<Deliveries>,
        store: Arc<Store>,
        timers: timers::Sender,
        now: Now,
    ) -> Self {
        let registry = Registry {
            tenants: DashMap::new(),
            config: RwLock::new(config.clone()),
            metrics,
            deliveries,
            store,
            timers,
            shared_link: Mutex::new(SharedLink::Unknown),
            shared_noise_log: Mutex::new(None),
            fleet: Mutex::new(Fleet {
                detector: resume_storms(restored.storms, &config, now),
                linked: 0,
                scheduled: None,
            }),
        };
        let configured: HashSet<&str> = config.tenants.ids.iter().map(String::as_str).collect();
        let restored = restored.records;
        for (id, record) in &restored {
            let id: TenantId = id.as_str().into();
            let is_configured = configured.contains(&*id);
            registry
                .deliveries
                .restore(now, &id, record.delivery(), is_configured);
        }
        let shared = registry.shared_link.lock().unwrap();
        for id in &config.tenants.ids {
            let id: TenantId = id.as_str().into();
            let mut seed: Restored = restored
                .get(&*id)
                .map(|r| restore_of(r, &config.debounce, now))
                .unwrap_or_default();
            // A drop a resumed hold holds is what the tenant was last known to be: it is
            // reported when the hold lifts unless the link learns otherwise first (a gateway
            // that sends no state on connect would otherwise lose it).
            let fleet = registry.fleet.lock().unwrap();
            let held = fleet.detector.held_since(&id);
            seed.held = held.map(|(since, reason)| (since, reason.to_string()));
            drop(fleet);
            registry.deliveries.added(&id);
            registry.insert(&shared, id, seed, now);
        }
        drop(shared);
        registry.with_fleet(now, |fleet, _| {
            // The holds resumed carry this process's ids from now on, which joins name.
            if fleet.detector.view(&config.storm).is_some() {
                registry.store.storms(stored_storms(&fleet.detector, now));
            }
        });
        registry
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// Applies a reloaded config: new settings, tenants added and removed. Returns the tenants
    /// added and removed, so the caller can start and stop their links.
    pub(crate) fn reload(&self, config: Arc<Config>, now: Now) -> (Vec<TenantId>, Vec<TenantId>) {
        let old = std::mem::replace(&mut *self.config.write().unwrap(), config.clone());
        let mut shared = self.shared_link.lock().unwrap();
        if old.gateway.mode != config.gateway.mode || old.gateway.url != config.gateway.url {
            // A new link will tell; until it does, new tenants are "not connected yet".
            *shared = SharedLink::Unknown;
        }
        let wanted: HashSet<&str> = config.tenants.ids.iter().map(String::as_str).collect();
        let removed: Vec<TenantId> = self
            .tenants
            .iter()
            .filter(|t| !wanted.contains(&**t.key()))
            .map(|t| t.key().clone())
            .collect();
        for id in &removed {
            self.remove(id, now);
        }
        let mut added = Vec::new();
        for id in &config.tenants.ids {
            if self.tenants.contains_key(id.as_str()) {
                continue;
            }
            let id: TenantId = id.as_str().into();
            // First-seen: a tenant configured again starts with no stable state.
            self.deliveries.added(&id);
            self.insert(&shared, id.clone(), Restored::default(), now);
            added.push(id);
        }
        drop(shared);
        // A new storm policy applies at once (a hold turned off releases everyone).
        self.with_fleet(now, |fleet, policy| {
            fleet.detector.on_timeout(now.mono, policy)
        });
        self.storm_events(now);
        // New graces may move deadlines; re-arm every timer.
        for mut entry in self.tenants.iter_mut() {
            let id = entry.key().clone();
            entry.scheduled = None;
            self.reschedule(&id, &mut entry, &config.debounce);
        }
        (added, removed)
    }

    /// Adds a configured tenant. In shared mode it is linked exactly while the shared link is up.
    fn insert(&self, shared: &SharedLink, id: TenantId, seed: Restored, now: Now) {
        let config = self.config();
        let policy = &config.debounce;
        let mut debounce = Debouncer::new(now.mono, seed);
        let link_up = match (config.gateway.mode, shared) {
            (GatewayMode::Shared, SharedLink::Up) => Some(true),
            (GatewayMode::Shared, SharedLink::Down(error)) => {
                debounce.link_down(now.mono, policy, error);
                Some(false)
            }
            _ => {
                // The gateway-down grace runs from when the tenant was added.
                debounce.link_down(now.mono, policy, NOT_CONNECTED_YET);
                None
            }
        };
        let counted = debounce.stable();
        self.metrics.tenant_state(None, Some(counted));
        self.metrics.link_state(None, link_up);
        if link_up == Some(true) {
            self.fleet.lock().unwrap().linked += 1;
        }
        let mut tenant = Tenant {
            debounce,
            session: SessionView::default(),
            link_up,
            link_since: now.mono,
            link_error: None,
            last_observation: None,
            observations: 0,
            scheduled: None,
            last_noise_log: None,
            counted,
        };
        self.reschedule(&id, &mut tenant, policy);
        self.tenants.insert(id, Box::new(tenant));
    }

    /// Removes a tenant at once: its link is stopped by the caller, its debouncer and timer go
    /// here, and what it owes is left to the outbox.
    fn remove(&self, id: &TenantId, now: Now) {
        if let Some((_, tenant)) = self.tenants.remove(id) {
            self.metrics.tenant_state(Some(tenant.counted), None);
            self.metrics.link_state(tenant.link_up, None);
            if tenant.scheduled.is_some() {
                let _ = self.timers.send((id.clone(), None));
            }
            let linked = tenant.link_up == Some(true);
            self.with_fleet(now, |fleet, policy| {
                fleet.linked -= usize::from(linked);
                fleet.detector.removed(now.mono, policy, id);
            });
        }
        self.deliveries.removed(id);
    }

    /// Whether the tenant is configured.
    pub(crate) fn is_configured(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// Every configured tenant.
    pub(crate) fn tenant_ids(&self) -> Vec<TenantId> {
        self.tenants.iter().map(|t| t.key().clone()).collect()
    }

    /// Handles one text frame from `tenant`'s own link. A frame that names another tenant is
    /// foreign: it changes nothing, for either tenant (SPEC 3 rev 12).
    pub(crate) fn frame(&self, tenant: &str, text: &str, now: Now) {
        match observe::parse(text) {
            Ok(frame) => match frame.tenant {
                Some(named) if named != tenant => {
                    self.metrics.frames_foreign.inc();
                    self.noise(tenant, "foreign", now);
                }
                _ => self.apply(tenant, frame.update, now, None),
            },
            Err(ignored) => self.ignored(tenant, ignored, now),
        }
    }

    /// The state a `state_url` fetch returned for `tenant`, fetched when its frame count was
    /// `mark` (see [`Registry::observations`]): applied only if no frame arrived meanwhile,
    /// since a frame is newer news than an answer to a request sent before it.
    pub(crate) fn state_fetched(&self, tenant: &str, text: &str, mark: u64, now: Now) {
        match observe::parse_state(text) {
            Ok(frame) => match frame.tenant {
                Some(named) if named != tenant => {
                    self.metrics.frames_foreign.inc();
                    self.noise(tenant, "foreign", now);
                }
                _ => self.apply(tenant, frame.update, now, Some(mark)),
            },
            Err(ignored) => self.ignored(tenant, ignored, now),
        }
    }

    /// How many frames `tenant` has applied, to stamp a `state_url` fetch with.
    pub(crate) fn observations(&self, tenant: &str) -> Option<u64> {
        self.tenants.get(tenant).map(|t| t.observations)
    }

    /// Handles one text frame from the shared link: the tenant comes from the frame.
    pub(crate) fn shared_frame(&self, text: &str, now: Now) {
        match observe::parse(text) {
            Ok(frame) => match frame.tenant {
                Some(tenant) if self.is_configured(&tenant) => {
                    self.apply(&tenant, frame.update, now, None)
                }
                Some(tenant) => {
                    self.metrics.frames_unknown_tenant.inc();
                    tracing::debug!(tenant = %escape(&tenant), "frame for a tenant that is not configured; ignored");
                }
                None => self.ignored(SHARED_LABEL, Ignored::UnknownShape, now),
            },
            Err(ignored) => self.ignored(SHARED_LABEL, ignored, now),
        }
    }

    /// Counts an ignored frame and logs it at most once a minute per link.
    pub(crate) fn ignored(&self, link: &str, kind: Ignored, now: Now) {
        self.metrics.frame_ignored(kind);
        self.noise(link, kind.as_str(), now);
    }

    /// Logs an ignored or foreign frame, at most once a minute per link.
    fn noise(&self, link: &str, kind: &str, now: Now) {
        let due = |last: &mut Option<Instant>| {
            let due =
                last.is_none_or(|at| now.mono.saturating_duration_since(at) >= NOISE_LOG_INTERVAL);
            if due {
                *last = Some(now.mono);
            }
            due
        };
        let due = match self.tenants.get_mut(link) {
            Some(mut t) => due(&mut t.last_noise_log),
            None => due(&mut self.shared_noise_log.lock().unwrap()),
        };
        if due {
            tracing::info!(link = %escape(link), kind, "ignored a gateway frame (logged at most once a minute per link)");
        }
    }

    fn apply(&self, tenant: &str, update: observe::Update, now: Now, mark: Option<u64>) {
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        if mark.is_some_and(|m| m != entry.observations) {
            // A frame arrived while the state was being fetched: it is newer.
            return;
        }
        let Some(obs) = entry.session.apply(update) else {
            self.metrics.frame_ignored(Ignored::NoState);
            return;
        };
        entry.observations += 1;
        self.metrics.frames_state.inc();
        let config = self.config();
        let policy = &config.debounce;
        // A transient drop: the one kind of observation a mass outage holds.
        let transient = match &obs {
            Observation::Down(cause) if !debounce::is_terminal(policy, cause) => Some(cause),
            _ => None,
        };
        let id = entry.key().clone();
        let linked = entry.link_up == Some(true);
        // A drop that a storm would hold is held from the start, and is not a flap.
        let outage = transient.is_some()
            && linked
            && self
                .fleet
                .lock()
                .unwrap()
                .detector
                .would_hold(&config.storm, &id);
        let before = entry.debounce.view(now.mono, policy);
        let edge = entry
            .debounce
            .observe_in_outage(now.mono, policy, &obs, outage);
        let after = entry.debounce.view(now.mono, policy);
        if before.pending.is_some_and(|p| p.0 == Status::Disconnected)
            && after.pending.is_none()
            && after.stable == before.stable
        {
            // A drop healed within its grace: exactly the flapping the sidecar exists to absorb.
            self.metrics.flaps_suppressed.inc();
        }
        tracing::debug!(tenant = %tenant, observation = ?obs, "observation");
        match (edge, transient) {
            (Edge::Dropped, Some(cause)) if linked => {
                let reason = (cause.kind != observe::DownKind::Connecting)
                    .then(|| debounce::describe(policy, cause));
                let held = self.with_fleet(now, |fleet, storm| {
                    let linked = fleet.linked;
                    fleet
                        .detector
                        .dropped(now.mono, storm, &id, linked, reason.as_deref());
                    let membership = fleet.detector.membership(&id);
                    if let Some((storm, last_reason)) = membership {
                        // Carried over a restart: the holds stored at the storm's beginning and
                        // each tenant that joined since.
                        self.store.storm_held(storm, &id, last_reason);
                    }
                    membership.is_some()
                });
                if !held && entry.debounce.is_held() {
                    // The storm ended or lifted between the two looks: nothing holds this drop.
                    let _ = entry.debounce.release(now.mono, policy, "");
                }
            }
            (Edge::Up, _) => {
                self.with_fleet(now, |fleet, storm| {
                    fleet.detector.recovered(now.mono, storm, &id)
                });
            }
            _ => {}
        }
        entry.last_observation = Some((obs, now.mono));
        let decided = self.settle(&id, &mut entry, policy, now);
        if decided || after.penalty > before.penalty + 0.5 {
            // A flap: the penalty must survive a kill -9 even when no transition was decided.
            self.persist_damping(&id, &entry, policy, now);
        }
        drop(entry);
        self.storm_events(now);
    }

    /// Runs `f` on the fleet state, then keeps the storm metrics, the detector's timer and the
    /// stored holds up to date. Called with at most one tenant shard held (lock order: shard,
    /// then fleet); what the detector decided is acted on by [`Registry::storm_events`] once no
    /// shard is held.
    fn with_fleet<R>(&self, now: Now, f: impl FnOnce(&mut Fleet, &StormPolicy) -> R) -> R {
        let config = self.config();
        let policy = &config.storm;
        let mut fleet = self.fleet.lock().unwrap();
        let result = f(&mut fleet, policy);
        let view = fleet.detector.view(policy);
        self.metrics
            .storm_active
            .set(i64::from(view.as_ref().is_some_and(|v| v.active)));
        self.metrics
            .storm_tenants_down
            .set(view.as_ref().map_or(0, |v| v.still_down) as i64);
        let deadline = fleet.detector.next_deadline(policy);
        if deadline != fleet.scheduled {
            fleet.scheduled = deadline;
            let _ = self.timers.send((STORM_TIMER.into(), deadline));
        }
        // The holds survive a restart: stored whole when a storm begins, ends or releases (its
        // events are pending), and tenant by tenant as they join (`Store::storm_held`).
        if fleet.detector.has_events() {
            self.store.storms(stored_storms(&fleet.detector, now));
        }
        result
    }

    /// Acts on what the storm detector decided: logs a storm's beginning and end, and reports the
    /// released tenants' held drops with the outage reason. Takes tenant shards, so it is called
    /// with none held.
    fn storm_events(&self, now: Now) {
        loop {
            let Some(event) = self.fleet.lock().unwrap().detector.poll_event() else {
                return;
            };
            match event {
                storm::Event::Began {
                    members,
                    linked,
                    reason,
                    ..
                } => {
                    let hold = self.config().storm.hold;
                    tracing::warn!(
                        members,
                        linked,
                        hold = %humantime::format_duration(hold),
                        reason = %reason,
                        "mass outage: many sessions dropped at once; their transient drops are held instead of ringing a bell each"
                    );
                }
                storm::Event::Ended {
                    members,
                    still_down,
                    turned_off: false,
                    ..
                } => {
                    tracing::warn!(
                        members,
                        still_down,
                        "mass outage over: fewer than half of its sessions are still down"
                    );
                }
                storm::Event::Ended {
                    members,
                    still_down,
                    turned_off: true,
                    ..
                } => {
                    tracing::warn!(
                        members,
                        still_down,
                        "mass-outage hold turned off (storm_fraction = 0): the storm is forgotten and the sessions still down are reported"
                    );
                }
                storm::Event::Released { tenants, reason } => {
                    let config = self.config();
                    let held = tenants.len();
                    let mut reported = 0usize;
                    for id in tenants {
                        let Some(mut entry) = self.tenants.get_mut(&id) else {
                            continue;
                        };
                        if entry.debounce.release(now.mono, &config.debounce, &reason) {
                            reported += 1;
                        }
                        if self.settle(&id, &mut entry, &config.debounce, now) {
                            self.persist_damping(&id, &entry, &config.debounce, now);
                        }
                    }
                    // Counted, not assumed: a held member that logged out was reported already.
                    tracing::info!(
                        held,
                        reported,
                        reason = %reason,
                        "mass-outage hold lifted: the sessions still down are reported"
                    );
                }
            }
        }
    }

    /// The gateway link of `tenant` is up.
    pub(crate) fn link_up(&self, tenant: &str, now: Now) {
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        self.tenant_link_up(&mut entry, now);
        let config = self.config();
        let id = entry.key().clone();
        self.settle(&id, &mut entry, &config.debounce, now);
    }

    fn tenant_link_up(&self, tenant: &mut Tenant, now: Now) {
        let config = self.config();
        tenant.session.reset();
        tenant.debounce.link_up(now.mono, &config.debounce);
        if tenant.link_up != Some(true) {
            self.fleet.lock().unwrap().linked += 1;
        }
        self.metrics.link_state(tenant.link_up, Some(true));
        tenant.link_up = Some(true);
        tenant.link_since = now.mono;
        tenant.link_error = None;
    }

    /// The gateway link of `tenant` is down (or a connect attempt failed).
    pub(crate) fn link_down(&self, tenant: &str, error: &str, now: Now) {
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        let id = entry.key().clone();
        self.tenant_link_down(&id, &mut entry, error, now);
        let config = self.config();
        self.settle(&id, &mut entry, &config.debounce, now);
    }

    fn tenant_link_down(&self, id: &TenantId, tenant: &mut Tenant, error: &str, now: Now) {
        let config = self.config();
        tenant.debounce.link_down(now.mono, &config.debounce, error);
        if tenant.link_up == Some(true) {
            let mut fleet = self.fleet.lock().unwrap();
            fleet.linked -= 1;
            fleet.detector.unlinked(id);
        }
        if tenant.link_up != Some(false) {
            self.metrics.link_state(tenant.link_up, Some(false));
            tenant.link_up = Some(false);
            tenant.link_since = now.mono;
        }
        tenant.link_error = Some(error.into());
    }

    /// Whether the shared link is up now (shared mode).
    pub(crate) fn shared_link_is_up(&self) -> bool {
        matches!(*self.shared_link.lock().unwrap(), SharedLink::Up)
    }

    /// The shared link is up: every configured tenant is linked, now and as they are added.
    pub(crate) fn shared_link_up(&self, now: Now) {
        let mut shared = self.shared_link.lock().unwrap();
        *shared = SharedLink::Up;
        let config = self.config();
        for mut entry in self.tenants.iter_mut() {
            self.tenant_link_up(&mut entry, now);
            let id = entry.key().clone();
            self.settle(&id, &mut entry, &config.debounce, now);
        }
    }

    /// The shared link is down: every configured tenant is unlinked, now and as they are added.
    pub(crate) fn shared_link_down(&self, error: &str, now: Now) {
        let mut shared = self.shared_link.lock().unwrap();
        *shared = SharedLink::Down(error.into());
        let config = self.config();
        for mut entry in self.tenants.iter_mut() {
            let id = entry.key().clone();
            self.tenant_link_down(&id, &mut entry, error, now);
            self.settle(&id, &mut entry, &config.debounce, now);
        }
    }

    /// A timer of `tenant` is due.
    pub(crate) fn timeout(&self, tenant: &str, now: Now) {
        if tenant == STORM_TIMER {
            self.with_fleet(now, |fleet, policy| {
                fleet.scheduled = None;
                fleet.detector.on_timeout(now.mono, policy);
            });
            self.storm_events(now);
            return;
        }
        let Some(mut entry) = self.tenants.get_mut(tenant) else {
            return;
        };
        let config = self.config();
        if entry.debounce.disconnect_due(now.mono, &config.debounce) {
            // A drop of a storm member whose grace ran out: held until the storm releases it.
            let held = self
                .fleet
                .lock()
                .unwrap()
                .detector
                .held_until(&config.storm, entry.key())
                .is_some();
            if held {
                entry.debounce.hold();
            }
        }
        entry.debounce.on_timeout(now.mono, &config.debounce);
        entry.scheduled = None;
        let id = entry.key().clone();
        if self.settle(&id, &mut entry, &config.debounce, now) {
            self.persist_damping(&id, &entry, &config.debounce, now);
        }
    }

    /// Hands the debouncer's reports to the outbox and re-arms the tenant's timer. Returns
    /// whether a transition was decided.
    fn settle(&self, id: &TenantId, tenant: &mut Tenant, policy: &Policy, now: Now) -> bool {
        let mut decided = false;
        while let Some(report) = tenant.debounce.poll_report() {
            self.decided(id, report, now);
            decided = true;
        }
        if decided {
            let stable = tenant.debounce.stable();
            if stable != tenant.counted {
                self.metrics
                    .tenant_state(Some(tenant.counted), Some(stable));
                tenant.counted = stable;
            }
        }
        self.reschedule(id, tenant, policy);
        decided
    }

    fn decided(&self, id: &TenantId, report: Report, now: Now) {
        self.metrics.transition(report.status);
        tracing::info!(
            tenant = %id,
            status = report.status.as_str(),
            reason = report.reason.as_deref().unwrap_or(""),
            "transition decided"
        );
        let owed = Owed {
            status: report.status,
            reason: report.reason,
            changed_at_ms: store::unix_ms(now.wall_of(report.since)),
            idempotency_key: store::new_idempotency_key(),
        };
        self.deliveries.decided(now, id, owed);
    }

    /// Hands the debouncer's flap penalty to the journal writer, so it decays from the right
    /// wall-clock time after a restart.
    fn persist_damping(&self, id: &TenantId, tenant: &Tenant, policy: &Policy, now: Now) {
        self.store.damping(
            id,
            Damping {
                penalty: tenant.debounce.penalty(now.mono, policy),
                penalty_at_ms: store::unix_ms(now.wall),
                flapping: tenant.debounce.is_flapping(),
                stable: tenant.debounce.stable(),
            },
        );
    }

    fn reschedule(&self, id: &TenantId, tenant: &mut Tenant, policy: &Policy) {
        let deadline = tenant.debounce.next_deadline(policy);
        if deadline != tenant.scheduled {
            tenant.scheduled = deadline;
            let _ = self.timers.send((id.clone(), deadline));
        }
    }

    /// One tenant's state for the admin API: configured, or removed and still owing.
    pub(crate) fn tenant_view(&self, tenant: &str, now: Now) -> Option<TenantView> {
        let config = self.config();
        let slot = self.deliveries.view(tenant);
        let mut view = match self.tenants.get(tenant) {
            Some(entry) => view_of(entry.key(), Some(&entry), slot, &config.debounce, now),
            None => view_of(tenant, None, Some(slot?), &config.debounce, now),
        };
        let fleet = self.fleet.lock().unwrap();
        let id = TenantId::from(tenant);
        view.held = view.configured && fleet.detector.held_until(&config.storm, &id).is_some();
        view.storm = storm_view(&fleet.detector, &config.storm, now);
        Some(view)
    }

    /// The mass outage in progress or still holding drops, if any.
    pub(crate) fn storm(&self, now: Now) -> Option<StormView> {
        let config = self.config();
        storm_view(&self.fleet.lock().unwrap().detector, &config.storm, now)
    }

    /// Every tenant's state (configured, and removed but still owing), sorted by id.
    pub(crate) fn views(&self, now: Now) -> Vec<TenantView> {
        let mut ids: Vec<TenantId> = self.tenant_ids();
        ids.extend(self.deliveries.unconfigured());
        let views: BTreeMap<TenantId, TenantView> = ids
            .into_iter()
            .filter_map(|id| Some((id.clone(), self.tenant_view(&id, now)?)))
            .collect();
        views.into_values().collect()
    }
}

/// The label of the shared link in logs.
const SHARED_LABEL: &str = "(shared link)";

/// Text from the gateway (a tenant id from a frame) made safe for a log line: control
/// characters escaped, cut at 128 characters.
fn escape(text: &str) -> String {
    let cut: String = text.chars().take(128).collect();
    crate::logging::escaped(&cut)
}

/// The debouncer's starting point from a stored record: the state the backend has (or is owed),
/// the penalty decayed by the wall-clock time since it was stored.
fn restore_of(record: &Record, policy: &Policy, now: Now) -> Restored {
    // What is owed is the newest decision; else the last decided state (the backend may have
    // refused it); else what the backend acknowledged (records from before `stable` was kept).
    let stable = record
        .owed
        .as_ref()
        .map(|o| o.status)
        .or(record.stable)
        .or(record.reported.as_ref().map(|r| r.status));
    let stored_at = store::system_time(record.penalty_at_ms);
    let elapsed = now.wall.duration_since(stored_at).unwrap_or_default();
    Restored {
        stable,
        penalty: debounce::decay(record.penalty, elapsed, policy.flap_half_life),
        flapping: record.flapping,
        held: None,
    }
}

/// One tenant as the admin API shows it, and as `status` reads it back (a field the answer
/// lacks, from another version, takes its default).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TenantView {
    pub tenant: String,
    pub configured: bool,
    /// `up`, `down`, `connecting` (no connect attempt has ended yet) or `removed`.
    pub link: String,
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
    /// This tenant's drop is held by a mass outage.
    pub held: bool,
    /// The mass outage in progress or still holding drops, if any (the same for every tenant).
    pub storm: Option<StormView>,
}

/// A mass outage, for the admin API (`/tenants`, `/storm`) and `status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StormView {
    /// In progress: transient drops join it.
    pub(crate) active: bool,
    pub(crate) since_secs_ago: u64,
    /// When the hold ends (or ended: 0), in seconds from now.
    pub(crate) hold_ends_in_secs: u64,
    /// Its hold has lifted: drops are reported as usual.
    pub(crate) released: bool,
    pub(crate) members: usize,
    pub(crate) still_down: usize,
    pub(crate) linked_at_start: usize,
    /// Drops held now, over every storm still holding.
    pub(crate) held: usize,
    pub(crate) last_reason: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingView {
    pub status: Status,
    pub in_secs: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReportedView {
    pub status: Status,
    pub reason: Option<String>,
    pub at: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OwedView {
    pub status: Status,
    pub reason: Option<String>,
    pub changed_at: String,
    #[serde(default)]
    pub idempotency_key: String,
}

/// RFC 3339 with milliseconds; the time is clamped into the range that can be written.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(store::system_time(ms)).to_string()
}

fn view_of(
    id: &str,
    tenant: Option<&Tenant>,
    slot: Option<SlotView>,
    policy: &Policy,
    now: Now,
) -> TenantView {
    let slot = slot.unwrap_or_else(|| SlotView {
        configured: tenant.is_some(),
        reported: None,
        owed: None,
        attempts: 0,
        in_flight: false,
        not_before: None,
        last_error: None,
    });
    let view = tenant.map(|t| t.debounce.view(now.mono, policy));
    TenantView {
        tenant: id.to_string(),
        configured: tenant.is_some(),
        link: match tenant.map(|t| t.link_up) {
            None => "removed",
            Some(None) => "connecting",
            Some(Some(true)) => "up",
            Some(Some(false)) => "down",
        }
        .to_string(),
        link_since_secs: tenant.map_or(0, |t| {
            now.mono.saturating_duration_since(t.link_since).as_secs()
        }),
        link_error: tenant.and_then(|t| t.link_error.as_deref().map(str::to_string)),
        last_observation: tenant
            .and_then(|t| t.last_observation.as_ref())
            .map(|(o, _)| describe_observation(policy, o)),
        last_observation_secs_ago: tenant
            .and_then(|t| t.last_observation.as_ref())
            .map(|(_, at)| now.mono.saturating_duration_since(*at).as_secs()),
        stable: view.as_ref().and_then(|v| v.stable),
        pending: view
            .as_ref()
            .and_then(|v| v.pending)
            .map(|(status, at)| PendingView {
                status,
                in_secs: at.saturating_duration_since(now.mono).as_secs(),
            }),
        reported: slot.reported.map(|r| ReportedView {
            status: r.status,
            reason: r.reason,
            at: rfc3339(r.at_ms),
        }),
        owed: slot.owed.map(|o| OwedView {
            status: o.status,
            reason: o.reason,
            changed_at: rfc3339(o.changed_at_ms),
            idempotency_key: o.idempotency_key,
        }),
        delivery_attempts: slot.attempts,
        delivery_in_flight: slot.in_flight,
        last_error: slot.last_error,
        flap_penalty: view
            .as_ref()
            .map_or(0.0, |v| (v.penalty * 10.0).round() / 10.0),
        flapping: view.as_ref().is_some_and(|v| v.flapping),
        held: false,
        storm: None,
    }
}

fn storm_view(detector: &Detector, policy: &StormPolicy, now: Now) -> Option<StormView> {
    let v = detector.view(policy)?;
    Some(StormView {
        active: v.active,
        since_secs_ago: now.mono.saturating_duration_since(v.since).as_secs(),
        hold_ends_in_secs: v.hold_until.saturating_duration_since(now.mono).as_secs(),
        released: v.released,
        members: v.members,
        still_down: v.still_down,
        linked_at_start: v.linked_at_start,
        held: v.held,
        last_reason: v.last_reason.to_string(),
    })
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

/// The stored form of the detector's holds: `since` on the wall clock.
fn stored_storms(detector: &Detector, now: Now) -> Vec<StoredStorm> {
    detector
        .saved_with_ids()
        .into_iter()
        .map(|(id, s)| StoredStorm {
            id,
            since_ms: store::unix_ms(now.wall_of(s.since)),
            linked: s.linked,
            members: s.members,
            window_ms: u64::try_from(s.window.as_millis()).unwrap_or(u64::MAX),
            last_reason: s.last_reason,
            held: s.held.iter().map(|t| t.to_string()).collect(),
        })
        .collect()
}

/// A detector continuing the holds stored by the previous process (SPEC 4 rev 12: a restart
/// during a storm does not release its held drops early, nor turn them into one bell each).
/// Holds of tenants no longer configured are dropped.
fn resume_storms(storms: Vec<StoredStorm>, config: &Config, now: Now) -> Detector {
    let configured: HashSet<&str> = config.tenants.ids.iter().map(String::as_str).collect();
    let saved = storms.into_iter().map(|s| {
        let ago = now
            .wall
            .duration_since(store::system_time(s.since_ms))
            .unwrap_or_default();
        storm::Saved {
            since: now.mono.checked_sub(ago).unwrap_or(now.mono),
            linked: s.linked,
            members: s.members,
            window: Duration::from_millis(s.window_ms),
            last_reason: s.last_reason,
            held: s
                .held
                .iter()
                .filter(|t| configured.contains(t.as_str()))
                .map(|t| TenantId::from(t.as_str()))
                .collect(),
        }
    });
    Detector::resume(now.mono, saved, config.debounce.disconnect_grace)
}
