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
//! - `GET /storm`: `{"storm": {...}}`, the mass outage in progress or still holding drops (SPEC 4
//!   rev 12), or `{"storm": null}`. Each tenant of `/tenants` carries the same object, and
//!   `held` when its own drop is held.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{Engine, Now};

/// Binds the admin listener. Kept apart from [`serve`] so a bind error stops start-up with a
/// clear message before anything else runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin API until `stop` fires.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, stop: CancellationToken) {
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/tenants", get(tenants))
        .route("/tenants/{id}", get(tenant))
        .route("/storm", get(storm))
        .with_state(engine);
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

async fn readyz(State(engine): State<Arc<Engine>>) -> Response {
    let reasons = engine.not_ready_reasons(Now::read());
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

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        engine.metrics_text(Now::read()),
    )
        .into_response()
}

async fn tenants(State(engine): State<Arc<Engine>>) -> Response {
    Json(engine.tenants(Now::read())).into_response()
}

async fn storm(State(engine): State<Arc<Engine>>) -> Response {
    Json(serde_json::json!({ "storm": engine.storm(Now::read()) })).into_response()
}

async fn tenant(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> Response {
    match engine.tenant(&id, Now::read()) {
        Some(view) => Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("unknown tenant {id:?}")})),
        )
            .into_response(),
    }
}
