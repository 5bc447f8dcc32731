//! `/healthz` (the process is alive), `/readyz` (connected to NATS, PostgreSQL and Redis) and
//! `/metrics` (Prometheus text).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Context;

#[derive(Clone)]
struct Shared {
    ctx: Arc<OnceLock<Arc<Context>>>,
    metrics: PrometheusHandle,
}

/// Serves on `listener` until `shutdown`. `ctx` is filled once the connections exist; until
/// then the process is alive but not ready.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<OnceLock<Arc<Context>>>,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move { s.metrics.render() }),
        )
        .with_state(Shared { ctx, metrics });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "http server failed");
    }
}

async fn ready(State(s): State<Shared>) -> (StatusCode, String) {
    let Some(ctx) = s.ctx.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
    };
    let (nats, pg, redis) = check(ctx).await;
    let body = format!("nats: {nats}\npostgres: {pg}\nredis: {redis}\n");
    let ok = [nats, pg, redis].iter().all(|s| *s == "ok");
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// The state of each dependency: `ok` or why not.
pub async fn check(ctx: &Context) -> (String, String, String) {
    let limit = Duration::from_secs(2);
    let nats = match ctx.nats.connection_state() {
        async_nats::connection::State::Connected => "ok".to_owned(),
        other => format!("{other:?}"),
    };
    let pg = async {
        let client = ctx.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let (pg, redis) = tokio::join!(
        tokio::time::timeout(limit, pg),
        tokio::time::timeout(limit, ctx.cache.ping())
    );
    let pg = match pg {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e,
        Err(_) => "timeout".to_owned(),
    };
    let redis = match redis {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timeout".to_owned(),
    };
    (nats, pg, redis)
}
