//! Logs and metrics, set up once per process.
//!
//! Logs: `tracing-subscriber`, filtered by `RUST_LOG` (default `info`), JSON lines when
//! `LOG_FORMAT=json`. Metrics: the `metrics` facade with a Prometheus recorder that `/metrics`
//! renders.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

/// The log filter from `RUST_LOG`; a value that does not parse is a configuration error.
pub fn filter() -> Result<EnvFilter, ConfigError> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).map_err(|e| ConfigError {
            var: "RUST_LOG",
            message: e.to_string(),
        }),
        _ => Ok(EnvFilter::new("info")),
    }
}

pub fn init_logs(filter: EnvFilter, json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // A second init (tests running the runtime in-process) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn init_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let sizes = [
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("wallet_batch_size".into()), &sizes)
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => handle,
                // Another recorder is installed (a test binary): render an empty, private one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}
