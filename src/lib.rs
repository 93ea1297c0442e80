//! wa-status-sidecar: watches WhatsApp gateway sessions and tells the backend, exactly once per
//! real change, when a session is connected or disconnected.
//!
//! The binary (`src/main.rs`) only parses the CLI, sets up logging, loads the config and drives
//! a [`Sidecar`]; everything else lives here so tests can drive it.
//!
//! # Layout
//! - [`config`]: the TOML config, validated into typed settings with every problem listed at once.
//! - [`observe`]: gateway frame -> observation (Baileys wrapped/bare, native, WAHA, Evolution).
//! - [`debounce`]: the pure per-tenant state machine deciding real transitions (no I/O, no clock).
//! - [`registry`]: the concurrent tenant map where frames, link events and timers meet the
//!   debouncer and decided transitions become owed deliveries.
//! - [`link`]: one gateway WebSocket: connect, read, keepalive, reconnect with backoff.
//! - [`timers`]: one task waking each tenant's debouncer at its next deadline.
//! - [`deliver`]: the dispatcher sending owed transitions (ordering, in-flight cap, retries).
//! - [`webhook`]: the backend HTTP client; the only code that calls the backend.
//! - [`status`]: the `status` command's table of tenants.
//! - [`storm`]: the mass-outage hold: the fleet-level detector of WhatsApp-wide outages.
//! - [`store`]: durable records under `state.dir` (journal + atomic snapshot).
//! - [`metrics`]: Prometheus metrics.
//! - [`admin`]: the admin HTTP API (`/livez`, `/readyz`, `/metrics`, `/tenants`).
//! - [`system`]: systemd notify and the open-files limit.
//! - [`demo`]: the `demo` command: the real engine against the simulated gateway and receiver.
//! - [`sim`]: a simulated gateway and webhook receiver (real servers on loopback) for `demo` and tests.

pub mod admin;
pub mod config;
pub mod debounce;
pub mod deliver;
pub mod demo;
pub mod link;
pub mod metrics;
pub mod observe;
pub mod registry;
pub mod sim;
pub mod status;
pub mod store;
pub mod storm;
pub mod system;
pub mod timers;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, GatewayMode};
use crate::deliver::SharedWebhook;
use crate::link::{LinkContext, Target};
use crate::metrics::Metrics;
use crate::registry::{Now, Registry, TenantId};
use crate::store::Store;
use crate::webhook::Webhook;

/// How often the journal is synced to disk (and compacted when it has grown).
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

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

/// A running sidecar: its links, timers, dispatcher and persister.
pub struct Sidecar {
    registry: Arc<Registry>,
    webhook: SharedWebhook,
    link_ctx: Arc<LinkContext>,
    links: Mutex<Links>,
    /// Stops the links (first) and the timers.
    stop_links: CancellationToken,
    /// Stops the dispatcher, which then flushes.
    stop_delivery: CancellationToken,
    /// Stops the persister.
    stop_persist: CancellationToken,
    link_tasks: TaskTracker,
    core_tasks: TaskTracker,
    delivery_wake: mpsc::UnboundedSender<TenantId>,
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
        let (store, restored) = Store::open(&config.state.dir)?;
        if let Some(aside) = &restored.set_aside {
            tracing::error!(path = %aside.display(), "the state file was unreadable and has been set aside; starting from the journal alone");
        }
        if restored.skipped_lines > 0 {
            tracing::warn!(
                skipped = restored.skipped_lines,
                "skipped unreadable journal lines"
            );
        }
        tracing::info!(
            tenants = restored.records.len(),
            dir = %config.state.dir.display(),
            "state restored"
        );
        let webhook = new_webhook(&config)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| StartError::Http(e.to_string()))?;

        let metrics = Arc::new(Metrics::new());
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let (delivery_tx, delivery_rx) = mpsc::unbounded_channel();
        let registry = Arc::new(Registry::new(
            config.clone(),
            store,
            restored.records,
            metrics,
            timer_tx,
            delivery_tx.clone(),
            Now::read(),
        ));
        let webhook: SharedWebhook = Arc::new(RwLock::new(Arc::new(webhook)));
        let link_ctx = Arc::new(LinkContext {
            registry: registry.clone(),
            handshakes: Arc::new(Semaphore::new(config.gateway.handshake_concurrency)),
            http,
        });
        let sidecar = Sidecar {
            registry: registry.clone(),
            webhook: webhook.clone(),
            link_ctx,
            links: Mutex::new(Links::default()),
            stop_links: CancellationToken::new(),
            stop_delivery: CancellationToken::new(),
            stop_persist: CancellationToken::new(),
            link_tasks: TaskTracker::new(),
            core_tasks: TaskTracker::new(),
            delivery_wake: delivery_tx,
            admin_addr,
            stop_admin: CancellationToken::new(),
            admin_task: TaskTracker::new(),
        };
        sidecar.admin_task.spawn(admin::serve(
            admin_listener,
            registry.clone(),
            sidecar.stop_admin.clone(),
        ));
        sidecar.core_tasks.spawn(timers::run(
            registry.clone(),
            timer_rx,
            sidecar.stop_links.clone(),
        ));
        sidecar.core_tasks.spawn(deliver::run(
            registry.clone(),
            webhook,
            delivery_rx,
            sidecar.stop_delivery.clone(),
        ));
        sidecar
            .core_tasks
            .spawn(persist(registry.clone(), sidecar.stop_persist.clone()));
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

    /// The tenant map, for the admin API and tests.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Applies a new config: tenants added and removed, new settings; links whose URL did not
    /// change stay up. A new backend client applies to the next request.
    pub fn reload(&self, config: Config) -> Result<(), StartError> {
        let config = Arc::new(config);
        let webhook = new_webhook(&config)?;
        let old = self.registry.config();
        if old.admin.listen != config.admin.listen {
            tracing::warn!(listen = %old.admin.listen, "admin.listen changes only at a restart; still listening on the old address");
        }
        if old.state.dir != config.state.dir {
            tracing::warn!(dir = %old.state.dir.display(), "state.dir changes only at a restart; still using the old directory");
        }
        if old.gateway.handshake_concurrency != config.gateway.handshake_concurrency {
            tracing::warn!("gateway.handshake_concurrency changes only at a restart");
        }
        *self.webhook.write().unwrap() = Arc::new(webhook);
        let shared_link_up = self.registry.any_link_up();
        let (added, removed) = self.registry.reload(config.clone(), Now::read());
        self.sync_links(&config);
        if config.gateway.mode == GatewayMode::Shared && shared_link_up {
            // Tenants added to a running shared link are carried by it from now on.
            for tenant in &added {
                self.registry.link_up(tenant, Now::read());
            }
        }
        // The credentials may have been fixed: try every owed delivery now.
        for tenant in self.registry.retry_now() {
            let _ = self.delivery_wake.send(tenant);
        }
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
                if links.shared.as_ref().is_some_and(|(u, _)| *u != url) {
                    links.shared.take().unwrap().1.cancel();
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
        self.stop_persist.cancel();
        self.core_tasks.close();
        self.core_tasks.wait().await;
        self.registry.flush_store(true, Now::read());
        self.stop_admin.cancel();
        self.admin_task.close();
        self.admin_task.wait().await;
        let owed = self.registry.owing().len();
        if owed > 0 {
            tracing::warn!(
                owed,
                "exiting with deliveries still owed; they resume at the next start"
            );
        }
        tracing::info!("stopped");
    }
}

fn new_webhook(config: &Config) -> Result<Webhook, StartError> {
    Webhook::new(
        &config.webhook_url(),
        config.backend.secret.clone(),
        config.backend.timeout,
        config.backend.connect_timeout,
    )
    .map_err(|e| StartError::Webhook(e.to_string()))
}

/// Syncs the journal about once a second and compacts it when it has grown, so a storm of
/// transitions costs appends, not 10,000 rewrites of the state file.
async fn persist(registry: Arc<Registry>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PERSIST_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let registry = registry.clone();
                // File I/O blocks; keep it off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || registry.flush_store(false, Now::read())).await;
            }
        }
    }
}
