//! Settling a decided batch, after its commit: acknowledgements, naks and dead letters, then its
//! events handed to the publisher.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::batch::Disposition;
use crate::context::Context;
use crate::dlq;
use crate::metrics;
use crate::outbox::{Publisher, Row};

/// Acknowledges each message as decided; everything here runs after the commit. A plain ack
/// only queues a publish on the connection, so those are sent in a loop; naks and dead letters
/// settle concurrently: a batch of malformed messages waits for its dead letters' acks all at
/// once, not one round trip after another.
pub(super) async fn settle(
    ctx: &Context,
    function: &str,
    msgs: &[Message],
    dispositions: &[Disposition],
) {
    let mut others = Vec::new();
    for (m, d) in msgs.iter().zip(dispositions) {
        match d {
            Disposition::Ack => settle_one(ctx, function, m, *d).await,
            _ => others.push(settle_one(ctx, function, m, *d)),
        }
    }
    futures::stream::iter(others)
        .buffer_unordered(SETTLING_AT_ONCE)
        .collect::<()>()
        .await;
}

async fn settle_one(ctx: &Context, function: &str, m: &Message, d: Disposition) {
    let result = match d {
        Disposition::Ack => m.ack().await,
        Disposition::Nak(delay) => m.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::DeadLetter(reason) => {
            match dlq::publish(
                &ctx.js,
                &ctx.names,
                (function, ctx.config.shard.as_deref()),
                m,
                reason,
            )
            .await
            {
                Ok(()) => m.ack_with(AckKind::Term).await,
                // Not stored (the DLQ full, or refusing the letter): the command is kept, and
                // comes back to be dead-lettered again; JetStream never runs out of deliveries.
                Err(e) => {
                    metrics::dead_letter_refused(function);
                    tracing::error!(function, reason, error = %e, "dead letter refused by the DLQ; the command is kept and tried again");
                    m.ack_with(AckKind::Nak(Some(DEAD_LETTER_AGAIN))).await
                }
            }
        }
    };
    if let Err(e) = result {
        // The effect is committed; a lost ack only means a redelivery that dedup absorbs.
        tracing::debug!(error = %e, "acknowledgement not sent");
    }
}

/// How long a command whose dead letter was refused waits before it is dead-lettered again.
const DEAD_LETTER_AGAIN: Duration = Duration::from_secs(10);

/// Acknowledgements and dead letters of one batch in flight at once.
pub(super) const SETTLING_AT_ONCE: usize = 256;

/// Publishes committed batches' events, up to `at_once` batches at a time.
pub(super) async fn publish_committed(
    publisher: Publisher,
    mut pending: mpsc::Receiver<Vec<Row>>,
    at_once: usize,
) {
    futures::stream::poll_fn(|cx| pending.poll_recv(cx))
        .for_each_concurrent(at_once, |rows| {
            let publisher = &publisher;
            async move {
                if let Err(e) = publisher.publish(rows).await {
                    crate::outbox::left_to_relay(&e);
                }
            }
        })
        .await;
}
