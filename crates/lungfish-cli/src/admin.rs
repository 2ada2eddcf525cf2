//! The admin HTTP endpoint: `/metrics` (Prometheus text) and `/health`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder for the `metrics` facade the library reports to.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("lungfish_sink_write_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("lungfish_batch_events".into()),
            &[
                1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 100_000.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("lungfish_kafka_poll_gap_seconds".into()),
            &[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()?;
    Ok(handle)
}

/// Folds the samples histograms have gathered into their buckets every 5 s, until the
/// runtime stops. The recorder keeps every sample until this upkeep (or a scrape of
/// `/metrics`) runs, so without it memory would grow with the samples of a long run.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Binds the admin address, so a taken port fails the run at once.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("metrics address {address}: {e}"))
}

/// Serves `/metrics` and `/health` on `listener` until the runtime stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    handle.render()
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }));
    axum::serve(listener, app).await?;
    Ok(())
}
