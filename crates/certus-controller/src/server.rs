//! `/metrics`, `/livez` and `/readyz` of the operator process (axum).
//!
//! - `/metrics`: the registry in the OpenMetrics text format (what prometheus-client
//!   encodes; Prometheus scrapes it as is).
//! - `/livez`: 200 while the supervisor loop is alive (it beats every second; see
//!   [`LeaderStatus::live`]), 503 otherwise.
//! - `/readyz`: 200 for a leader whose controllers are ready (CRDs established, watches
//!   started) and for a healthy standby (its last exchange with the Lease succeeded), 503
//!   otherwise; see [`LeaderStatus::ready`]. The body says which.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::leader::{LeaderStatus, Role};
use crate::metrics::Metrics;

/// The content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long the supervisor loop may go without a heartbeat before `/livez` fails.
pub const LIVENESS_SILENCE: Duration = Duration::from_secs(30);

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct Probes {
    /// Everything `/metrics` shows (controller metrics, `certus_leader`, Vault counters…).
    pub registry: Arc<Registry>,
    /// The controllers' metrics; [`Metrics::is_ready`] feeds `/readyz`.
    pub metrics: Arc<Metrics>,
    /// The supervisor's state.
    pub leader: Arc<LeaderStatus>,
}

/// The router of the three endpoints.
pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(probes)
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    probes: Probes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(probes))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(p): State<Probes>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &p.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn livez(State(p): State<Probes>) -> (StatusCode, &'static str) {
    if p.leader.live(LIVENESS_SILENCE) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor loop is not running\n",
        )
    }
}

async fn readyz(State(p): State<Probes>) -> (StatusCode, String) {
    let controllers_ready = p.metrics.is_ready();
    let ready = p.leader.ready(controllers_ready);
    let what = match (p.leader.role(), ready) {
        (Role::Leader, true) => "leader, controllers running",
        (Role::Leader, false) => {
            "leader, controllers not running yet (waiting for the CustomResourceDefinitions?)"
        }
        (Role::Standby, true) => "standby, the leader Lease is reachable",
        (Role::Standby, false) => "standby, the leader Lease cannot be reached",
        (Role::Stopping, _) => "shutting down",
        (Role::Stopped, _) => "stopped",
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        format!(
            "{}: {what} (identity {})\n",
            if ready { "ok" } else { "not ready" },
            p.leader.identity()
        ),
    )
}
