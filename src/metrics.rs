//! Prometheus metrics, prefix `wa_sidecar_`.
//!
//! Every label value is drawn from a small fixed set (a frame kind, a status, a webhook outcome):
//! tenant ids never appear in labels, so the series count stays the same at 10 or 10,000 tenants.
//! Counters on the hot path are resolved once at start-up into plain handles, so counting a frame
//! is an atomic add, not a map lookup.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::debounce::Status;
use crate::observe::Ignored;

type Labels = [(&'static str, &'static str); 1];

/// The webhook outcomes, as `webhook::Outcome::label` names them.
pub const WEBHOOK_OUTCOMES: [&str; 5] =
    ["delivered", "retry", "credentials", "wrong_url", "refused"];

/// All metrics of one sidecar process.
pub struct Metrics {
    registry: Registry,
    frames: Family<Labels, Counter>,
    /// Frames that changed or confirmed a session's state.
    pub frames_state: Counter,
    /// Frames from tenants that are not configured (shared mode).
    pub frames_unknown_tenant: Counter,
    /// Frames over the size limit (the link is closed with 1009).
    pub frames_oversize: Counter,
    /// Frames on a per-tenant link that name another tenant (ignored: SPEC 3 rev 12).
    pub frames_foreign: Counter,
    transitions: Family<Labels, Counter>,
    /// Transient drops that healed within the grace, and flaps held back by damping.
    pub flaps_suppressed: Counter,
    webhook: Family<Labels, Counter>,
    /// Seconds from a transition being decided to the backend acknowledging it.
    pub webhook_latency: Histogram,
    /// Deliveries decided but not yet acknowledged by the backend.
    pub owed: Gauge,
    links: Family<Labels, Gauge>,
    tenants: Family<Labels, Gauge>,
    /// Gateway link (re)connect attempts after the first.
    pub reconnects: Counter,
    /// Failed writes to the state directory.
    pub store_errors: Counter,
    /// 1 while `/readyz` would answer 200.
    pub ready: Gauge,
    /// 1 while the state directory is not durable (running from memory).
    pub store_degraded: Gauge,
    /// Seconds the oldest owed delivery has waited since it was decided.
    pub owed_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while a mass-outage storm holds transient drops (SPEC 4 rev 12).
    pub storm_active: Gauge,
    /// Tenants of the current storm still down.
    pub storm_tenants_down: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wa_sidecar");
        let frames = Family::<Labels, Counter>::default();
        registry.register("frames", "Gateway frames received, by kind", frames.clone());
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "transitions",
            "Stable-state transitions decided, by status",
            transitions.clone(),
        );
        let flaps_suppressed = Counter::default();
        registry.register(
            "flaps_suppressed",
            "Drops that healed within the grace or were held back by flap damping",
            flaps_suppressed.clone(),
        );
        let webhook = Family::<Labels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Backend webhook requests, by outcome",
            webhook.clone(),
        );
        // From 250 us to about 65 s: covers a loopback backend and a slow one behind retries.
        let webhook_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 19),
        );
        registry.register(
            "webhook_latency_seconds",
            "Time from a transition being decided to the backend acknowledging it",
            webhook_latency.clone(),
        );
        let owed = Gauge::default();
        registry.register(
            "owed_deliveries",
            "Transitions decided but not yet acknowledged by the backend",
            owed.clone(),
        );
        let links = Family::<Labels, Gauge>::default();
        registry.register("links", "Gateway links, by state", links.clone());
        let tenants = Family::<Labels, Gauge>::default();
        registry.register("tenants", "Tenants, by stable state", tenants.clone());
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Gateway link reconnect attempts",
            reconnects.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed writes to the state directory",
            store_errors.clone(),
        );

        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while the sidecar is ready (GET /readyz answers 200), else 0",
            ready.clone(),
        );
        let store_degraded = Gauge::default();
        registry.register(
            "store_degraded",
            "1 while the state directory cannot be written and state lives in memory only",
            store_degraded.clone(),
        );
        let owed_oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "owed_oldest_seconds",
            "Age of the oldest delivery owed to the backend (0 when nothing is owed)",
            owed_oldest.clone(),
        );
        let storm_active = Gauge::default();
        registry.register(
            "storm_active",
            "1 while a mass outage (many sessions dropping at once) holds transient drops",
            storm_active.clone(),
        );
        let storm_tenants_down = Gauge::default();
        registry.register(
            "storm_tenants_down",
            "Tenants of the current mass outage that are still down",
            storm_tenants_down.clone(),
        );

        let frames_state = frames.get_or_create_owned(&[("kind", "state")]);
        let frames_foreign = frames.get_or_create_owned(&[("kind", "foreign")]);
        let frames_unknown_tenant = frames.get_or_create_owned(&[("kind", "unknown_tenant")]);
        let frames_oversize = frames.get_or_create_owned(&[("kind", "oversize")]);
        // Create every series up front so dashboards see zeros, not missing series.
        for kind in Ignored::ALL {
            frames.get_or_create_owned(&[("kind", kind.as_str())]);
        }
        for status in [Status::Connected, Status::Disconnected] {
            transitions.get_or_create_owned(&[("status", status.as_str())]);
        }
        for outcome in WEBHOOK_OUTCOMES {
            webhook.get_or_create_owned(&[("outcome", outcome)]);
        }
        for state in ["up", "down"] {
            links.get_or_create_owned(&[("state", state)]);
        }
        for state in ["connected", "disconnected", "unknown"] {
            tenants.get_or_create_owned(&[("state", state)]);
        }
        Metrics {
            registry,
            frames,
            frames_state,
            frames_unknown_tenant,
            frames_oversize,
            frames_foreign,
            transitions,
            flaps_suppressed,
            webhook,
            webhook_latency,
            owed,
            links,
            tenants,
            reconnects,
            store_errors,
            ready,
            store_degraded,
            owed_oldest,
            storm_active,
            storm_tenants_down,
        }
    }

    pub fn frame_ignored(&self, kind: Ignored) {
        self.frames.get_or_create(&[("kind", kind.as_str())]).inc();
    }

    pub fn transition(&self, status: Status) {
        self.transitions
            .get_or_create(&[("status", status.as_str())])
            .inc();
    }

    pub fn webhook_outcome(&self, label: &'static str) {
        self.webhook.get_or_create(&[("outcome", label)]).inc();
    }

    /// Moves one link between the `up` and `down` gauges (`None` = not counted yet).
    pub fn link_state(&self, from: Option<bool>, to: Option<bool>) {
        let name = |up: bool| if up { "up" } else { "down" };
        if let Some(from) = from {
            self.links.get_or_create(&[("state", name(from))]).dec();
        }
        if let Some(to) = to {
            self.links.get_or_create(&[("state", name(to))]).inc();
        }
    }

    /// Moves one tenant between the stable-state gauges (`None` = not counted).
    pub fn tenant_state(&self, from: Option<Option<Status>>, to: Option<Option<Status>>) {
        let name = |s: Option<Status>| s.map_or("unknown", Status::as_str);
        if let Some(from) = from {
            self.tenants.get_or_create(&[("state", name(from))]).dec();
        }
        if let Some(to) = to {
            self.tenants.get_or_create(&[("state", name(to))]).inc();
        }
    }

    /// The current value of one counter series, for tests and the status line.
    pub fn frames_of(&self, kind: &'static str) -> u64 {
        self.frames.get_or_create(&[("kind", kind)]).get()
    }

    pub fn transitions_of(&self, status: Status) -> u64 {
        self.transitions
            .get_or_create(&[("status", status.as_str())])
            .get()
    }

    pub fn webhook_of(&self, outcome: &'static str) -> u64 {
        self.webhook.get_or_create(&[("outcome", outcome)]).get()
    }

    pub fn links_of(&self, state: &'static str) -> i64 {
        self.links.get_or_create(&[("state", state)]).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
