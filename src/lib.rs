//! wa-status-sidecar: watches WhatsApp gateway sessions and tells the backend, exactly once per
//! real change, when a session is connected or disconnected.
//!
//! The binary (`src/main.rs`) only parses the CLI, sets up logging, loads the config and drives
//! a [`Sidecar`]; everything else lives here so tests can drive it.
//!
//! # Layout
//! - [`config`]: the TOML config, validated into typed settings with every problem listed at once.
//! - [`summary`]: what `check` prints of a valid config, credentials redacted.
//! - [`secret`]: credential types that never print.
//! - [`observe`]: gateway frame -> observation (Baileys wrapped/bare, native, WAHA, Evolution).
//! - [`debounce`]: the pure per-tenant state machine deciding real transitions (no I/O, no clock).
//! - [`registry`]: the concurrent map of configured tenants where frames, link events and timers
//!   meet the debouncer; decided transitions go to the outbox.
//! - [`link`]: one gateway WebSocket: connect, read, keepalive, reconnect with backoff.
//! - [`timers`]: one task waking each tenant's debouncer at its next deadline.
//! - [`outbox`]: the pure delivery state machine: what each tenant owes, supersession, retry
//!   policy, the removed-but-owing lifecycle, readiness that heals.
//! - [`deliver`]: the outbox's shared handle and the dispatcher task that sends its jobs.
//! - [`webhook`]: the backend HTTP client; the only code that calls the backend.
//! - [`tls`]: TLS client settings: the system's roots plus a configured private CA.
//! - [`status`]: the `status` command's table of tenants.
//! - [`storm`]: the mass-outage hold: the fleet-level detector of WhatsApp-wide outages.
//! - [`store`]: durable records under `state.dir`: the journal writer thread (group commit,
//!   compaction that cannot drop an append) and the validated restore.
//! - [`metrics`]: Prometheus metrics.
//! - [`admin`]: the admin HTTP API (`/livez`, `/readyz`, `/metrics`, `/tenants`).
//! - [`system`]: systemd notify and the open-files limit.
//! - [`logging`]: the log subscriber; control characters escaped in the text format.
//! - [`demo`]: the `demo` command: the real engine against the simulated gateway and receiver.
//! - [`sim`]: a simulated gateway and webhook receiver (real servers on loopback) for `demo` and tests.

// Most modules are crate-private (so the compiler reports dead code), and these docs are read
// with `cargo doc --document-private-items`: links to private items are meant.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod config;
pub mod debounce;
pub(crate) mod deliver;
pub mod demo;
pub(crate) mod link;
pub mod logging;
pub(crate) mod metrics;
pub mod observe;
pub(crate) mod outbox;
pub mod registry;
pub(crate) mod secret;
pub mod sim;
pub mod status;
pub(crate) mod store;
pub mod storm;
pub(crate) mod summary;
pub mod system;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub(crate) mod timers;
pub(crate) mod tls;
pub(crate) mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, GatewayMode};
use crate::deliver::{Deliveries, SharedWebhook};
use crate::link::{LinkContext, Target};
use crate::metrics::Metrics;
use crate::registry::{Registry, TenantView};
use crate::store::Store;
use crate::webhook::Webhook;

/// A tenant id, shared between the map, the timer wheel and the outbox without copying.
pub type TenantId = Arc<str>;

/// Longest tenant id accepted: real ids are short, and the bound keeps log lines and state small.
pub(crate) const MAX_TENANT_ID_LEN: usize = 128;

/// Checks a tenant id (SPEC section 3 [rev 12]): 1 to [`MAX_TENANT_ID_LEN`] bytes, no whitespace
/// or control characters, no `/`, not `.` or `..`. The error says what is wrong and names the id,
/// escaped so that it cannot corrupt a terminal or a log line.
pub(crate) fn validate_tenant_id(id: &str) -> Result<(), String> {
    const RULE: &str =
        "a tenant id is non-empty, at most 128 bytes, with no whitespace or control characters";
    const PATH_RULE: &str = "a tenant id is 1 to 128 bytes, with no whitespace, control characters or `/`, and not `.` or `..` (it names a URL path segment and a record in the state dir)";
    let start: String = id.chars().take(16).flat_map(char::escape_debug).collect();
    let len = id.len();
    let problem = match id {
        "" => format!("empty tenant id; {RULE}"),
        _ if len > MAX_TENANT_ID_LEN => {
            format!("tenant id `{start}...` is {len} bytes long; {RULE}")
        }
        _ if id.contains(|c: char| c.is_whitespace() || c.is_control()) => {
            format!("tenant id {id:?} contains whitespace or a control character; {RULE}")
        }
        _ if id.contains('/') => format!("tenant id {id:?} contains `/`; {PATH_RULE}"),
        "." | ".." => format!("tenant id {id:?} is not allowed; {PATH_RULE}"),
        _ => return Ok(()),
    };
    Err(problem)
}

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
    pub fn wall_of(&self, earlier: Instant) -> SystemTime {
        self.wall - self.mono.saturating_duration_since(earlier)
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on admin.listen = {addr}: {error} (choose a free address:port in [admin] listen)")]
    Admin {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("state directory: {0}")]
    Store(#[from] store::StoreError),
    #[error("backend client: {0}")]
    Webhook(String),
    #[error("gateway client: {0}")]
    Http(String),
}

/// What the admin API and the `Sidecar` read: the tenant map, the outbox and the store.
pub struct Engine {
    registry: Arc<Registry>,
    deliveries: Arc<Deliveries>,
    store: Arc<Store>,
}

impl Engine {
    pub fn metrics(&self) -> &Metrics {
        &self.registry.metrics
    }

    /// Every tenant (configured, and removed but still owing), sorted by id.
    pub fn tenants(&self, now: Now) -> Vec<TenantView> {
        self.registry.views(now)
    }

    pub fn tenant(&self, id: &str, now: Now) -> Option<TenantView> {
        self.registry.tenant_view(id, now)
    }

    /// The mass outage in progress or still holding drops, if any.
    pub fn storm(&self, now: Now) -> Option<registry::StormView> {
        self.registry.storm(now)
    }

    /// Why the sidecar is not ready; empty when it is. The config is loaded and the state
    /// restored before anything serves, so what can still go wrong is the backend and the disk.
    pub fn not_ready_reasons(&self, now: Now) -> Vec<String> {
        let mut reasons = self.deliveries.not_ready_reasons(now.mono);
        if let Some(error) = self.store.failure() {
            reasons.push(format!(
                "state directory not writable (running from memory): {error}"
            ));
        }
        reasons
    }

    /// The metrics text, with the gauges that are read rather than counted brought up to date.
    pub fn metrics_text(&self, now: Now) -> String {
        let metrics = self.metrics();
        let reasons = self.not_ready_reasons(now);
        metrics.ready.set(i64::from(reasons.is_empty()));
        metrics
            .store_degraded
            .set(i64::from(self.store.failure().is_some()));
        let errors = self.store.errors();
        let counted = metrics.store_errors.get();
        if errors > counted {
            metrics.store_errors.inc_by(errors - counted);
        }
        metrics.owed_oldest.set(
            self.deliveries
                .oldest_owed(now.mono)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        metrics.encode()
    }
}

/// A running sidecar: its links, timers, dispatcher and journal writer.
pub struct Sidecar {
    engine: Arc<Engine>,
    webhook: SharedWebhook,
    link_ctx: Arc<LinkContext>,
    links: Mutex<Links>,
    /// Stops the links (first) and the timers.
    stop_links: CancellationToken,
    /// Stops the dispatcher, which then flushes.
    stop_delivery: CancellationToken,
    link_tasks: TaskTracker,
    core_tasks: TaskTracker,
    /// The timer wheel and the dispatcher, which a simulated crash stops without a flush.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    core_aborts: Vec<tokio::task::AbortHandle>,
    admin_addr: std::net::SocketAddr,
    /// Stops the admin server, last of all.
    stop_admin: CancellationToken,
    admin_task: TaskTracker,
}

/// The running links, keyed by what they carry, with the URL they were started with.
#[derive(Default)]
struct Links {
    shared: Option<(String, CancellationToken)>,
    tenants: HashMap<TenantId, (String, CancellationToken)>,
}

impl Sidecar {
    /// Restores the state directory and starts every task. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Sidecar, StartError> {
        let config = Arc::new(config);
        let admin_listener =
            admin::bind(config.admin.listen)
                .await
                .map_err(|error| StartError::Admin {
                    addr: config.admin.listen,
                    error,
                })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|error| StartError::Admin {
                addr: config.admin.listen,
                error,
            })?;
        let wake = Arc::new(Notify::new());
        let dir = config.state.dir.clone();
        let opened = {
            let wake = wake.clone();
            // Reading and compacting the state files blocks; keep it off the async workers.
            tokio::task::spawn_blocking(move || Store::open(&dir, wake))
                .await
                .map_err(|e| StartError::Http(e.to_string()))?
        };
        let (store, restored) = opened?;
        log_restored(&restored, &config);
        let webhook = new_webhook(&config)?;
        let gateway_clients =
            link::GatewayClients::from_config(&config).map_err(StartError::Http)?;

        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(store);
        let deliveries = Arc::new(Deliveries::new(
            store.clone(),
            metrics.clone(),
            wake,
            config.backend.max_in_flight,
        ));
        deliveries.set_webhook_url(webhook.url());
        let (timer_tx, timer_rx) = timers::channel();
        let registry = Arc::new(Registry::new(
            config.clone(),
            restored,
            metrics,
            deliveries.clone(),
            store.clone(),
            timer_tx,
            Now::read(),
        ));
        let engine = Arc::new(Engine {
            registry: registry.clone(),
            deliveries: deliveries.clone(),
            store,
        });
        let webhook: SharedWebhook = Arc::new(RwLock::new(Arc::new(webhook)));
        let link_ctx = Arc::new(LinkContext::new(
            registry.clone(),
            Arc::new(Semaphore::new(config.gateway.handshake_concurrency)),
            Arc::new(Semaphore::new(link::STATE_FETCH_CONCURRENCY)),
            gateway_clients,
        ));
        let mut sidecar = Sidecar {
            engine: engine.clone(),
            webhook: webhook.clone(),
            link_ctx,
            links: Mutex::new(Links::default()),
            stop_links: CancellationToken::new(),
            stop_delivery: CancellationToken::new(),
            link_tasks: TaskTracker::new(),
            core_tasks: TaskTracker::new(),
            core_aborts: Vec::new(),
            admin_addr,
            stop_admin: CancellationToken::new(),
            admin_task: TaskTracker::new(),
        };
        sidecar.admin_task.spawn(admin::serve(
            admin_listener,
            engine,
            sidecar.stop_admin.clone(),
        ));
        let timers = {
            let registry = registry.clone();
            sidecar.core_tasks.spawn(timers::run(
                timer_rx,
                move |tenant, now| registry.timeout(tenant, now),
                sidecar.stop_links.clone(),
            ))
        };
        let dispatcher = sidecar.core_tasks.spawn(deliver::run(
            deliveries,
            webhook,
            sidecar.stop_delivery.clone(),
        ));
        sidecar.core_aborts = vec![timers.abort_handle(), dispatcher.abort_handle()];
        sidecar.sync_links(&config);
        tracing::info!(
            tenants = config.tenants.ids.len(),
            mode = ?config.gateway.mode,
            "sidecar running"
        );
        Ok(sidecar)
    }

    /// The address the admin API listens on (useful with port 0).
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin_addr
    }

    /// The metrics, for tests and the benchmark.
    pub fn metrics(&self) -> &Metrics {
        self.engine.metrics()
    }

    /// Every tenant's state as `GET /tenants` shows it, sorted by id.
    pub fn tenants(&self) -> Vec<TenantView> {
        self.engine.tenants(Now::read())
    }

    /// One tenant's state as `GET /tenants/{id}` shows it.
    pub fn tenant(&self, id: &str) -> Option<TenantView> {
        self.engine.tenant(id, Now::read())
    }

    /// Why `GET /readyz` would answer 503; empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.engine.not_ready_reasons(Now::read())
    }

    /// The metrics as `GET /metrics` serves them.
    pub fn metrics_text(&self) -> String {
        self.engine.metrics_text(Now::read())
    }

    /// Applies a new config: tenants added and removed, new settings; links whose URL did not
    /// change stay up. A new backend client applies to the next request.
    pub fn reload(&self, config: Config) -> Result<(), StartError> {
        let config = Arc::new(config);
        // Both read their CA file now: a bad one refuses the reload before anything changes.
        let webhook = new_webhook(&config)?;
        let gateway_clients =
            link::GatewayClients::from_config(&config).map_err(StartError::Http)?;
        let registry = &self.engine.registry;
        let old = registry.config();
        if old.admin.listen != config.admin.listen {
            tracing::warn!(listen = %old.admin.listen, "admin.listen changes only at a restart; still listening on the old address");
        }
        if old.state.dir != config.state.dir {
            tracing::warn!(dir = %old.state.dir.display(), "state.dir changes only at a restart; still using the old directory");
        }
        if old.gateway.handshake_concurrency != config.gateway.handshake_concurrency {
            tracing::warn!("gateway.handshake_concurrency changes only at a restart");
        }
        let url = webhook.url().to_string();
        *self.webhook.write().unwrap() = Arc::new(webhook);
        self.link_ctx.set_clients(gateway_clients);
        let (added, removed) = registry.reload(config.clone(), Now::read());
        self.sync_links(&config);
        // A tenant added to a shared link that stays up has no connect of its own to fetch its
        // state after: fetch it now, or a gateway that sends no snapshot never tells it.
        if config.gateway.mode == GatewayMode::Shared && registry.shared_link_is_up() {
            if let Some((_, stop)) = &self.links.lock().unwrap().shared {
                link::spawn_state_fetches(&self.link_ctx, added.clone(), &config, stop);
            }
        }
        // A configuration fault's pause ends (the credentials or the URL may have been fixed;
        // see `Outbox::reloaded`); and the disk may have been: retry a failed compaction now.
        self.engine
            .deliveries
            .reloaded(config.backend.max_in_flight, &url);
        self.engine.store.retry();
        tracing::info!(
            added = added.len(),
            removed = removed.len(),
            tenants = config.tenants.ids.len(),
            "config reloaded"
        );
        Ok(())
    }

    /// Starts, stops and restarts links so they match the config.
    fn sync_links(&self, config: &Config) {
        let mut links = self.links.lock().unwrap();
        match config.gateway.mode {
            GatewayMode::Shared => {
                for (_, (_, stop)) in links.tenants.drain() {
                    stop.cancel();
                }
                let url = config.gateway.url.clone();
                if let Some((_, stop)) = links.shared.take_if(|(u, _)| *u != url) {
                    stop.cancel();
                }
                if links.shared.is_none() {
                    let stop = self.stop_links.child_token();
                    self.link_tasks.spawn(link::run(
                        self.link_ctx.clone(),
                        Target::Shared,
                        stop.clone(),
                    ));
                    links.shared = Some((url, stop));
                }
            }
            GatewayMode::PerTenant => {
                if let Some((_, stop)) = links.shared.take() {
                    stop.cancel();
                }
                let wanted: HashMap<&str, String> = config
                    .tenants
                    .ids
                    .iter()
                    .map(|t| (t.as_str(), config.gateway_url(t)))
                    .collect();
                links.tenants.retain(|tenant, (url, stop)| {
                    let keep = wanted.get(&**tenant) == Some(url);
                    if !keep {
                        stop.cancel();
                    }
                    keep
                });
                for (tenant, url) in wanted {
                    if links.tenants.contains_key(tenant) {
                        continue;
                    }
                    let tenant: TenantId = tenant.into();
                    let stop = self.stop_links.child_token();
                    self.link_tasks.spawn(link::run(
                        self.link_ctx.clone(),
                        Target::Tenant(tenant.clone()),
                        stop.clone(),
                    ));
                    links.tenants.insert(tenant, (url, stop));
                }
            }
        }
    }

    /// Graceful stop: close the links, give each owed delivery one more try within 10 s,
    /// persist what is still owed.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: closing gateway links");
        self.stop_links.cancel();
        self.link_tasks.close();
        self.link_tasks.wait().await;
        self.stop_delivery.cancel();
        self.core_tasks.close();
        self.core_tasks.wait().await;
        let store = self.engine.store.clone();
        // The last snapshot blocks on the disk; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        self.stop_admin.cancel();
        self.admin_task.close();
        self.admin_task.wait().await;
        let owed = self.engine.deliveries.owed();
        if owed > 0 {
            tracing::warn!(
                owed,
                "exiting with deliveries still owed; they resume at the next start"
            );
        }
        tracing::info!("stopped");
    }

    /// Whether a delivery is owed (waiting for its journal line, in flight or due: each of those
    /// is owed): a test under tokio's paused clock then lets the real-time parts (the journal
    /// writer, the sockets) catch up ([`Sidecar::settle_state`]) before it moves the clock on.
    #[cfg(feature = "testing")]
    pub fn delivering(&self) -> bool {
        self.engine.deliveries.owed() > 0
    }

    /// Waits until the journal writer has written everything decided so far (and finished a
    /// compaction it started), so a test can look at the files or the readiness it leads to.
    pub async fn settle_state(&self) {
        let store = self.engine.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.barrier()).await;
    }

    /// Stops everything the way a kill -9 would: no flush, no last snapshot; what the journal
    /// writer had not yet written is lost. For tests of what survives a crash.
    #[cfg(feature = "testing")]
    pub async fn crash(self) {
        for task in &self.core_aborts {
            task.abort();
        }
        self.stop_links.cancel();
        self.stop_admin.cancel();
        let store = self.engine.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.crash()).await;
        self.link_tasks.close();
        self.link_tasks.wait().await;
        self.admin_task.close();
        self.admin_task.wait().await;
        // Aborted above: no flush; requests in flight are cut, as the kernel would cut them.
        self.core_tasks.close();
        self.core_tasks.wait().await;
    }
}

fn log_restored(restored: &store::Restored, config: &Config) {
    for (path, reason) in &restored.set_aside {
        tracing::error!(path = %path.display(), reason = %reason, "an unusable state file was set aside; starting without it");
    }
    if restored.skipped_lines > 0 {
        tracing::warn!(
            skipped = restored.skipped_lines,
            "skipped unreadable journal lines"
        );
    }
    if !restored.rejected.is_empty() {
        tracing::warn!(
            count = restored.rejected.len(),
            ids = %restored.rejected.join(", "),
            "state records with an invalid tenant id were dropped"
        );
    }
    if !restored.salvaged.is_empty() {
        // A hostile state file can name a million bad records: the line shows the first ten.
        let shown: Vec<&str> = restored
            .salvaged
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        tracing::warn!(
            count = restored.salvaged.len(),
            fields = %shown.join("; "),
            "state records with fields that do not parse were kept without them (those fields took their defaults; a lost owed transition is not sent)"
        );
    }
    if restored.repaired > 0 {
        tracing::warn!(
            count = restored.repaired,
            "state records with out-of-range values were repaired"
        );
    }
    for warning in &restored.warnings {
        tracing::warn!("{warning}");
    }
    let configured: std::collections::HashSet<&str> =
        config.tenants.ids.iter().map(String::as_str).collect();
    let unconfigured = restored
        .records
        .keys()
        .filter(|id| !configured.contains(id.as_str()))
        .count();
    tracing::info!(
        tenants = restored.records.len(),
        unconfigured,
        dir = %config.state.dir.display(),
        "state restored"
    );
}

fn new_webhook(config: &Config) -> Result<Webhook, StartError> {
    Webhook::from_config(config).map_err(|e| StartError::Webhook(e.to_string()))
}
