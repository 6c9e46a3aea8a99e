//! The admin server: Prometheus metrics and health probes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::{Router, routing::get};

use crate::metrics::Metrics;

/// What `/metrics` serves: OpenMetrics text, as Prometheus negotiates it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the operator can do its work: it has the objects and a recent view of EC2.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, ready: ReadyCheck) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.render()) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: waiting for the first watch list and inventory poll",
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, app).await?;
    Ok(())
}
