//! `/healthz`, `/readyz` and `/metrics` of the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::ControllerMetrics;

/// Lifecycle of the process, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

/// Phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Connecting, syncing the caches.
    Starting = 0,
    /// Waiting for the leader lease (healthy, not writing).
    Standby = 1,
    /// Leading: caches synced, passes running.
    Leading = 2,
    /// Shutting down.
    Stopping = 3,
}

impl Health {
    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Relaxed) {
            1 => Phase::Standby,
            2 => Phase::Leading,
            3 => Phase::Stopping,
            _ => Phase::Starting,
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<ControllerMetrics>,
    health: Arc<Health>,
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.get() {
        Phase::Leading => (StatusCode::OK, "leading\n"),
        Phase::Standby => (StatusCode::OK, "standby: waiting for the leader lease\n"),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Phase::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
}

/// The router (also used by tests without a socket).
pub fn router(metrics: Arc<ControllerMetrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(AppState { metrics, health })
}

/// Binds `addr` (fails fast when it cannot) and serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<ControllerMetrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(addr).await?;
    let app = router(metrics, health);
    Ok(tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await }))
}
