//! The admin HTTP server (loopback by default, `admin.listen`).
//!
//! Endpoints:
//! - `GET /livez`: 200 `ok` while the process answers: the runtime is not wedged.
//! - `GET /readyz`: 200 `{"ready":true}` once the config is loaded, the state restored and the
//!   backend accepts our credentials; otherwise 503 `{"ready":false,"reasons":[...]}` naming each
//!   cause (credentials refused, backend unreachable for long, state directory not writable).
//! - `GET /metrics`: Prometheus text exposition, prefix `wa_sidecar_`, no tenant ids in labels.
//! - `GET /tenants`: JSON array of every tenant: link state, last observation, stable state,
//!   pending change, reported state, owed delivery, attempts, last error, flap penalty.
//! - `GET /tenants/{id}`: the same for one tenant; 404 JSON when it is not known.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::registry::{Now, Registry};

/// The backend may fail this long before readiness reports it: brief outages are retried
/// quietly, a long one is worth an orchestrator's attention.
pub const BACKEND_UNREACHABLE_UNREADY: Duration = Duration::from_secs(300);

/// Binds the admin listener. Kept apart from [`serve`] so a bind error stops start-up with a
/// clear message before anything else runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin API until `stop` fires.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, stop: CancellationToken) {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/tenants", get(tenants))
        .route("/tenants/{id}", get(tenant))
        .with_state(registry);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn livez() -> &'static str {
    "ok\n"
}

/// The reasons the sidecar is not ready; empty when it is.
pub fn not_ready_reasons(registry: &Registry, now: Now) -> Vec<String> {
    let health = registry.health();
    // The config is loaded and the state restored before this server is started, so those two
    // readiness conditions hold by construction; what can still go wrong at run time is below.
    let mut reasons = Vec::new();
    if let Some(fault) = health.credentials_fault {
        reasons.push(fault);
    }
    if let Some(since) = health.backend_failing_since {
        let failing = now.mono.saturating_duration_since(since);
        if failing >= BACKEND_UNREACHABLE_UNREADY {
            reasons.push(format!(
                "backend unreachable for {}s: {}",
                failing.as_secs(),
                health.backend_error.as_deref().unwrap_or("unknown error")
            ));
        }
    }
    if let Some(error) = health.store_error {
        reasons.push(format!(
            "state directory not writable (running from memory): {error}"
        ));
    }
    reasons
}

async fn readyz(State(registry): State<Arc<Registry>>) -> Response {
    let reasons = not_ready_reasons(&registry, Now::read());
    if reasons.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        registry.metrics.encode(),
    )
        .into_response()
}

async fn tenants(State(registry): State<Arc<Registry>>) -> Response {
    Json(registry.views(Now::read())).into_response()
}

async fn tenant(State(registry): State<Arc<Registry>>, Path(id): Path<String>) -> Response {
    match registry.tenant_view(&id, Now::read()) {
        Some(view) => Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("unknown tenant {id:?}")})),
        )
            .into_response(),
    }
}
