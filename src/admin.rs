//! The admin server: Prometheus metrics and health probes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::{Router, routing::get};

use crate::metrics::Metrics;

/// Whether the operator can do its work: it has the objects and a recent view of EC2.
pub type ReadyCheck = Arc<dyn Fn() -> bool + Send + Sync>;

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, ready: ReadyCheck) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
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
