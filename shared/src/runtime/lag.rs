//! The consumer's backlog as metrics: what KEDA scales on, seen from inside.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio_util::sync::CancellationToken;

use super::connect::pause;
use crate::metrics;

/// Exports the consumer's backlog (what KEDA scales on) every few seconds.
pub(super) async fn watch_lag(
    function: &'static str,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) {
    loop {
        if let Ok(info) = consumer.get_info().await {
            metrics::lag(
                function,
                info.num_pending,
                info.num_ack_pending,
                info.num_redelivered,
            );
        }
        if !pause(Duration::from_secs(5), &shutdown).await {
            return;
        }
    }
}
